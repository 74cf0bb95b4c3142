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
    assert!(stats::enabled());
    assert_eq!(stats::crossings(App::COMPONENT, Fs::COMPONENT), before + 1);
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
    let cb = compartment::enter(5);
    let callback = Callback::new(|| assert_eq!(compartment::current(), 5));
    compartment::enter(cb);
    assert_eq!(callback.owner(), 5);
    // SAFETY: as above.
    assert_eq!(unsafe { cross_fcall::<App, FsRun, _, _>(app(), (callback,)) }, 3);
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
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
