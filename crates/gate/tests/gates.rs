//! Gate behaviour: same-compartment calls, crossings, counting, validation,
//! callbacks and component state.

use flexos_gate::layout::Component;
use flexos_gate::layout::Mechanism;
use flexos_gate::{Callback, SharedBuf, SharedRef, call, cross_with, stats, with_state};
use flexos_platform::compartment;

/// This test binary allocates like an image: from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

const APP: Component = Component { id: 20, name: "test-app", compartment: 0, hardening: &[] };
const FS: Component = Component { id: 21, name: "test-fs", compartment: 3, hardening: &[] };

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

#[test]
fn same_compartment_is_a_plain_call() {
    let before = stats::crossings(APP, APP);
    let (r, c) = call::<0, 0, _, _, _>(APP, APP, (41u32,), where_am_i, 0);
    assert_eq!((r, c), (42, 0));
    assert_eq!(stats::crossings(APP, APP), before, "no crossing is counted");
}

#[test]
fn crossing_switches_compartment_and_is_counted() {
    let before = stats::crossings(APP, FS);
    let (r, c) = cross_with(Mechanism::Fcall, APP, FS, (1u32,), where_am_i);
    assert_eq!((r, c), (2, 3), "the callee runs in its own compartment");
    assert_eq!(compartment::current(), 0, "the caller's compartment is restored");
    assert!(stats::enabled());
    assert_eq!(stats::crossings(APP, FS), before + 1);
    assert_eq!(stats::crossings(FS, APP), 0);
}

#[test]
fn callee_allocations_come_from_the_callee_heap() {
    assert_eq!(heap_of_new_allocation(), 0);
    assert_eq!(cross_with(Mechanism::Fcall, APP, FS, (), heap_of_new_allocation), 3);
    assert_eq!(heap_of_new_allocation(), 0);
}

#[test]
fn shared_buffers_cross() {
    let buf = SharedBuf::from_slice(&[1, 2, 3, 4]);
    let total = cross_with(Mechanism::Fcall, APP, FS, (buf.shared(),), sum);
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
    cross_with(Mechanism::Fcall, APP, FS, (handle,), sum);
}

#[test]
fn callbacks_run_in_their_owner_compartment() {
    let cb = compartment::enter(5);
    let callback = Callback::new(|| assert_eq!(compartment::current(), 5));
    compartment::enter(cb);
    assert_eq!(callback.owner(), 5);
    fn run(cb: Callback) -> usize {
        let me = compartment::current();
        cb.call();
        me
    }
    assert_eq!(cross_with(Mechanism::Fcall, APP, FS, (callback,), run), 3);
}

#[derive(Default)]
struct Counter {
    n: u32,
}

#[test]
fn component_state_persists_and_is_per_component() {
    with_state(FS, |c: &mut Counter| c.n += 1);
    with_state(FS, |c: &mut Counter| c.n += 1);
    with_state(APP, |c: &mut Counter| c.n += 10);
    assert_eq!(with_state(FS, |c: &mut Counter| c.n), 2);
    assert_eq!(with_state(APP, |c: &mut Counter| c.n), 10);
}

#[test]
#[should_panic(expected = "re-entered")]
fn re_entering_a_component_state_is_refused() {
    with_state(FS, |_: &mut Counter| with_state(FS, |_: &mut Counter| ()));
}

#[test]
fn gate_misuse_does_not_compile() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
