//! Which compartment the current host thread is executing in.
//!
//! On the hosted platform this plays the role of a CPU register: gates set it
//! when they switch domains, the scheduler saves and restores it with each
//! thread, and the allocator reads it to serve the running compartment's heap.
//! A thread that never entered a compartment runs in its process's home
//! compartment: the default compartment (0) in the host process, the
//! compartment a `proc` process was started for in that process.

use crate::domain;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::cell::Cell;

/// The most compartments one image may have.
pub const MAX_COMPARTMENTS: usize = 16;

const UNSET: usize = usize::MAX;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(UNSET) };
}

static HOME: AtomicUsize = AtomicUsize::new(UNSET);

/// The address of the home compartment's static (patched in a VM's copy of the data).
pub(crate) fn home_slot() -> usize {
    HOME.as_ptr() as usize
}

/// The compartment this process runs when nothing else was entered.
pub fn home() -> usize {
    match HOME.load(Ordering::Relaxed) {
        UNSET => {
            let h = domain::child_role().map_or(0, |r| r.compartment);
            HOME.store(h, Ordering::Relaxed);
            h
        }
        h => h,
    }
}

/// The compartment that is running on this host thread.
#[inline(always)]
pub fn current() -> usize {
    match CURRENT.with(|c| c.get()) {
        UNSET => home(),
        c => c,
    }
}

/// Makes `compartment` the running one and returns the previous one.
#[inline(always)]
pub fn enter(compartment: usize) -> usize {
    assert!(compartment < MAX_COMPARTMENTS, "compartment index {compartment} out of range");
    let previous = CURRENT.with(|c| c.replace(compartment));
    if previous == UNSET { home() } else { previous }
}
