//! Which compartment the current host thread is executing in.
//!
//! On the hosted platform this plays the role of a CPU register: gates set it
//! when they switch domains, the scheduler saves and restores it with each
//! thread, and the allocator reads it to serve the running compartment's heap.

use std::cell::Cell;

/// The most compartments one image may have.
pub const MAX_COMPARTMENTS: usize = 16;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The compartment that is running on this host thread.
#[inline(always)]
pub fn current() -> usize {
    CURRENT.with(|c| c.get())
}

/// Makes `compartment` the running one and returns the previous one.
#[inline(always)]
pub fn enter(compartment: usize) -> usize {
    assert!(compartment < MAX_COMPARTMENTS, "compartment index {compartment} out of range");
    CURRENT.with(|c| c.replace(compartment))
}
