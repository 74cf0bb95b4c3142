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

/// The compartment that is running on this host thread. Where protection
/// keys are in use, the one whose rights the thread holds (PKRU), and the
/// register only decides among compartments with the same rights: the
/// register is a thread-local, which a compromised `mpk` compartment can
/// rewrite (docs/mpk.md), while PKRU changes only through checked gates.
#[inline(always)]
pub fn current() -> usize {
    let claimed = match CURRENT.with(|c| c.get()) {
        UNSET => home(),
        c => c,
    };
    if flexos_layout::has_mpk()
        && crate::pkey::in_use()
        && let Some(c) = crate::pkey::compartment_with_rights(crate::pkey::read(), claimed)
    {
        return c;
    }
    claimed
}

/// Makes `compartment` the running one and returns the previous one.
#[inline(always)]
pub fn enter(compartment: usize) -> usize {
    assert!(compartment < MAX_COMPARTMENTS, "compartment index {compartment} out of range");
    let previous = CURRENT.with(|c| c.replace(compartment));
    if previous == UNSET { home() } else { previous }
}

/// How to run code in another compartment with that compartment's rights
/// (registered by the gate layer in images with `mpk` compartments).
static SWITCHER: std::sync::OnceLock<Switcher> = std::sync::OnceLock::new();

/// Runs code (second argument) in a compartment (first argument).
pub type Switcher = fn(usize, &mut dyn FnMut());

/// Registers how [`run_in`] switches compartments.
pub fn set_switcher(switcher: Switcher) {
    let _ = SWITCHER.set(switcher);
}

/// Runs `f` in compartment `compartment`, with its rights where keys
/// protect it. For the trusted core (the platform starting a host thread).
///
/// # Safety
/// `f` runs with another compartment's rights: it must be code of the
/// trusted core that touches nothing but what that compartment may touch.
pub unsafe fn run_in<F: FnOnce()>(compartment: usize, f: F) {
    let mut f = Some(f);
    let once = move || {
        if let Some(f) = f.take() {
            f()
        }
    };
    let Some(switch) = SWITCHER.get() else {
        let previous = enter(compartment);
        let mut once = once;
        once();
        enter(previous);
        return;
    };
    // The code crosses by reference, so it is put where every compartment
    // may read it: a fresh mapping (key 0), not the caller's stack, nor
    // the C library's heap, whose allocator keeps its state in statics
    // that only the default compartment may write in a static image.
    let Some(region) = crate::memory::Region::reserve(size_of_val(&once).max(1)) else {
        crate::console::write_err(b"flexos: cannot map memory to start a thread\n");
        crate::process_abort()
    };
    // SAFETY: the mapping is fresh, page-aligned (enough for any closure),
    // writable and as large as the closure; the closure is moved in,
    // called through the switch, dropped, and the mapping unmapped here.
    unsafe {
        let p = place(region.base.as_ptr(), once);
        switch(compartment, &mut *p);
        core::ptr::drop_in_place(p);
        libc::munmap(region.base.as_ptr().cast(), region.len);
    }
}

/// Moves `value` to `at` and returns it typed.
///
/// # Safety
/// `at` must be writable, aligned for `T` and hold `size_of::<T>()` bytes.
unsafe fn place<T>(at: *mut u8, value: T) -> *mut T {
    let p = at.cast::<T>();
    // SAFETY: by the contract.
    unsafe { p.write(value) };
    p
}

/// Moves `value` into the C library's heap (freed by the caller with `libc::free`).
fn in_c_heap<T>(value: T) -> *mut T {
    // SAFETY: malloc returns memory aligned for any type or null (checked).
    unsafe {
        let p = libc::malloc(size_of::<T>().max(1)).cast::<T>();
        assert!(!p.is_null(), "out of memory");
        p.write(value);
        p
    }
}

/// Moves `value` into the C library's heap for good: memory of key 0,
/// which every compartment of this process may write, unlike the statics
/// of an image with `mpk` compartments (docs/mpk.md). For state of the
/// trusted core that code running in any compartment updates (made at
/// boot, in the default compartment: the C library's allocator is itself
/// state of the core).
pub fn leak_in_c_heap<T: Sync>(value: T) -> &'static T {
    // SAFETY: `in_c_heap` returns a valid, initialized, never freed T.
    unsafe { &*in_c_heap(value) }
}
