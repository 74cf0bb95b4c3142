//! Gate behaviour: same-compartment calls, crossings, counting, validation,
//! callbacks and component state.

use flexos_gate::layout::Component;
use flexos_gate::{Callback, Caller, Entry, Identity, SharedBuf, SharedRef, call, cross_fcall, stats, with_state};
use flexos_platform::compartment;

/// This test binary allocates like an image: from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

/// The test's caller, in the default compartment.
struct App;
/// The test's callee, in a compartment (3) that only `cross_fcall` reaches.
struct Fs;

// SAFETY: test identities, the trusted test code's own.
unsafe impl Identity for App {
    const COMPONENT: Component = Component { id: 20, name: "test-app", compartment: 0, hardening: &[], package: "" };
    const PACKAGE: &'static str = "flexos-gate";
}
// SAFETY: as above.
unsafe impl Identity for Fs {
    const COMPONENT: Component = Component { id: 21, name: "test-fs", compartment: 3, hardening: &[], package: "" };
    const PACKAGE: &'static str = "flexos-gate";
}

/// The owner of the tests' callbacks, in compartment 5.
struct Owner;

// SAFETY: as above.
unsafe impl Identity for Owner {
    const COMPONENT: Component = Component { id: 22, name: "test-owner", compartment: 5, hardening: &[], package: "" };
    const PACKAGE: &'static str = "flexos-gate";
}

fn owner() -> Caller<Owner> {
    // SAFETY: as above.
    unsafe { Caller::new() }
}

fn app() -> Caller<App> {
    // SAFETY: the test's own identity.
    unsafe { Caller::new() }
}

fn fs() -> Caller<Fs> {
    // SAFETY: as above.
    unsafe { Caller::new() }
}

/// Declares test entries: `entry!(Name: Callee, function: fn(..) -> ..)`.
macro_rules! entry {
    ($name:ident: $callee:ty, $f:ident: $ty:ty) => {
        struct $name;
        // SAFETY: a test entry whose function is this file's own.
        unsafe impl Entry for $name {
            type Callee = $callee;
            const INDEX: u32 = 0;
            type Function = $ty;
            const FUNCTION: Self::Function = $f;
        }
    };
}

fn where_am_i(x: u32) -> (u32, usize) {
    (x + 1, compartment::current())
}

fn heap_of_new_allocation() -> usize {
    let b = Box::new(5u64);
    flexos_alloc::owner_of(&*b as *const u64 as usize).unwrap()
}

fn sum(buf: SharedRef<'_>) -> u64 {
    buf.to_vec().iter().map(|&b| b as u64).sum()
}

fn run(cb: Callback) -> usize {
    let me = compartment::current();
    cb.call();
    me
}

entry!(AppWhere: App, where_am_i: fn(u32) -> (u32, usize));
entry!(FsWhere: Fs, where_am_i: fn(u32) -> (u32, usize));
entry!(FsHeap: Fs, heap_of_new_allocation: fn() -> usize);
entry!(FsSum: Fs, sum: fn(SharedRef<'_>) -> u64);
entry!(FsRun: Fs, run: fn(Callback) -> usize);

#[test]
fn same_compartment_is_a_plain_call() {
    let before = stats::crossings(App::COMPONENT, App::COMPONENT);
    let (r, c) = call::<0, 0, App, AppWhere, _, _>(app(), (41u32,));
    assert_eq!((r, c), (42, 0));
    assert_eq!(stats::crossings(App::COMPONENT, App::COMPONENT), before, "no crossing is counted");
}

#[test]
fn crossing_switches_compartment_and_is_counted() {
    let before = stats::crossings(App::COMPONENT, Fs::COMPONENT);
    // SAFETY: this test image has no `mpk` compartments.
    let (r, c) = unsafe { cross_fcall::<App, FsWhere, _, _>(app(), (1u32,)) };
    assert_eq!((r, c), (2, 3), "the callee runs in its own compartment");
    assert_eq!(compartment::current(), 0, "the caller's compartment is restored");
    // Counted in debug builds and with feature `stats`; a release build
    // without it counts nothing.
    let counted = if stats::enabled() { before + 1 } else { 0 };
    assert_eq!(stats::crossings(App::COMPONENT, Fs::COMPONENT), counted);
    assert_eq!(stats::crossings(Fs::COMPONENT, App::COMPONENT), 0);
}

#[test]
fn callee_allocations_come_from_the_callee_heap() {
    assert_eq!(heap_of_new_allocation(), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { cross_fcall::<App, FsHeap, _, _>(app(), ()) }, 3);
    assert_eq!(heap_of_new_allocation(), 0);
}

#[test]
fn shared_buffers_cross() {
    let buf = SharedBuf::from_slice(&[1, 2, 3, 4]);
    // SAFETY: as above.
    let total = unsafe { cross_fcall::<App, FsSum, _, _>(app(), (buf.shared(),)) };
    assert_eq!(total, 10);
}

#[test]
#[should_panic(expected = "outside shared memory")]
fn a_forged_private_handle_is_stopped_at_the_gate() {
    // A compromised caller builds a handle to its own private memory by
    // copying a real handle's bytes and patching the pointer.
    let private = [9u8; 64];
    let real = SharedBuf::from_slice(&[0; 64]);
    let mut handle = real.shared();
    // SAFETY: test only: simulates memory corruption by an attacker; the
    // handle is never read through (the gate must refuse it first).
    unsafe {
        let words = &mut handle as *mut SharedRef<'_> as *mut usize;
        *words = private.as_ptr() as usize;
    }
    // SAFETY: this test image has no `mpk` compartments.
    unsafe { cross_fcall::<App, FsSum, _, _>(app(), (handle,)) };
}

#[test]
fn callbacks_run_in_their_owner_compartment() {
    let callback = Callback::new(owner(), || assert_eq!(compartment::current(), 5));
    assert_eq!(callback.owner(), 5);
    // SAFETY: as above.
    assert_eq!(unsafe { cross_fcall::<App, FsRun, _, _>(app(), (callback,)) }, 3);
}

#[test]
fn a_dropped_callback_never_runs_and_frees_its_closure() {
    let captured = std::rc::Rc::new(std::cell::Cell::new(false));
    let c = captured.clone();
    let callback = Callback::new(owner(), move || c.set(true));
    assert_eq!(std::rc::Rc::strong_count(&captured), 2);
    drop(callback);
    assert!(!captured.get());
    assert_eq!(std::rc::Rc::strong_count(&captured), 1, "the owner dropped the closure");
}

/// Runs test `name` of this binary again, in a child with `FLEXOS_GATE_CHILD`
/// set; returns its exit status and what it printed.
fn in_child(name: &str) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("FLEXOS_GATE_CHILD", "1")
        .output()
        .unwrap();
    (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A compartment that holds a callback handle (the scheduler, under `mpk`
/// in its own memory) and rewrites it: a copy of a handle that already ran,
/// or garbage. The owner runs nothing it did not register, and each
/// closure at most once; it stops the image naming itself.
#[test]
fn a_rewritten_callback_handle_is_refused_by_its_owner() {
    if std::env::var_os("FLEXOS_GATE_CHILD").is_some() {
        let mode = std::env::var("FLEXOS_GATE_FORGE").unwrap();
        let real = Callback::new(owner(), || println!("ran the real callback"));
        let forged: Callback = if mode == "copy" {
            // SAFETY: test only: a bitwise copy of the handle, as a
            // receiver that kept the bytes would make.
            unsafe { std::ptr::read(&real) }
        } else {
            let mut bytes = [0u8; std::mem::size_of::<Callback>()];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = 0x5a ^ i as u8;
            }
            // SAFETY: test only: the handle's bytes overwritten; it holds
            // plain integers, so any bytes are a value.
            unsafe { std::mem::transmute::<[u8; std::mem::size_of::<Callback>()], Callback>(bytes) }
        };
        real.call();
        println!("calling the forged handle");
        forged.call();
        println!("the forged handle ran");
        return;
    }
    for mode in ["copy", "garbage"] {
        // SAFETY: the variable is read by the child only.
        unsafe { std::env::set_var("FLEXOS_GATE_FORGE", mode) };
        let (status, out) = in_child("a_rewritten_callback_handle_is_refused_by_its_owner");
        assert!(!status.success(), "{mode}: {out}");
        assert_eq!(out.matches("ran the real callback").count(), 1, "{mode}: {out}");
        assert!(out.contains("calling the forged handle"), "{mode}: {out}");
        assert!(out.contains("refused a callback it did not register"), "{mode}: {out}");
        assert!(!out.contains("the forged handle ran"), "{mode}: {out}");
    }
}

#[derive(Default)]
struct Counter {
    n: u32,
}

#[test]
fn component_state_persists_and_is_per_component() {
    with_state(fs(), |c: &mut Counter| c.n += 1);
    with_state(fs(), |c: &mut Counter| c.n += 1);
    with_state(app(), |c: &mut Counter| c.n += 10);
    assert_eq!(with_state(fs(), |c: &mut Counter| c.n), 2);
    assert_eq!(with_state(app(), |c: &mut Counter| c.n), 10);
}

#[test]
#[should_panic(expected = "re-entered")]
fn re_entering_a_component_state_is_refused() {
    with_state(fs(), |_: &mut Counter| with_state(fs(), |_: &mut Counter| ()));
}

#[test]
fn gate_misuse_does_not_compile() {
    flexos_compile_checks::check("tests/ui/pass_*.rs", "tests/ui/fail_*.rs");
}
