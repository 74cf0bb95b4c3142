//! Thread-local destructors, each run with the rights of the compartment
//! that registered it.
//!
//! std registers the destructor of every thread-local value with the C
//! library's `__cxa_thread_atexit_impl` where one is linked, and otherwise
//! keeps a list of its own in the thread's thread-locals (key 0), which it
//! runs when the thread ends, with the rights the thread holds then: those
//! of the compartment that started it. A compromised compartment called on
//! a thread of main's only had to store a thread-local value of its own
//! for its destructor, the attacker's code, to run with main's rights when
//! the thread ended (attack `thread-exit`: it wrote main's secret).
//!
//! In a static image this crate defines `__cxa_thread_atexit_impl` (the C
//! library's is not linked there), so std registers every destructor here.
//! Each is kept on a list of the compartment whose rights registered it
//! (PKRU says which, not the compartment register), in that compartment's
//! private heap, which only it can write. A compartment finds its list of
//! a thread in its own table of (thread, list) pairs, also in its private
//! heap, whose address lies in its heap's state
//! ([`flexos_alloc::owner_word`]): nothing on the way is memory another
//! compartment can write. (The list pointers were once thread-locals, key
//! 0: a compartment could point another's at a block of that
//! compartment's heap it had shaped, such as a value kv stored for it,
//! and have its entries run with that compartment's rights.) When a
//! thread made by this crate's `pthread_create` ends, every compartment
//! of the process is entered through its gate and runs its list of the
//! thread, if it has one. The main thread's destructors are not run (std
//! does not promise that they are).

use core::alloc::Layout;
use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicI64, AtomicPtr, Ordering};
use flexos_layout::COMPARTMENTS;

/// A destructor as the C ABI registers it.
type Destructor = unsafe extern "C" fn(*mut c_void);

/// The most destructors one compartment may register on one thread; more
/// are refused (`__cxa_thread_atexit_impl` returns -1 and std never runs
/// that value's destructor).
const MAX_DESTRUCTORS: usize = 256;

/// One compartment's destructors on one thread, in that compartment's heap.
struct List {
    len: usize,
    entries: [(Option<Destructor>, *mut c_void); MAX_DESTRUCTORS],
}

/// The most threads with destructors of one compartment at a time; a
/// thread beyond them gets none registered in that compartment.
const MAX_THREADS: usize = 1024;

/// One compartment's lists, by thread, in its private heap. A thread
/// claims a free row (thread 0) for itself and frees it when its list has
/// run; only the thread named in a row writes that row's list.
struct Table {
    rows: [(AtomicI64, AtomicPtr<List>); MAX_THREADS],
}

/// Where this thread's state of thread-local destructors in key 0 lies
/// (address, bytes): what a compromised compartment that read the program
/// finds and may rewrite. Attack `forge-exit-list` writes into it. There
/// is none: each compartment finds its lists in its own table.
pub fn key0_state() -> (usize, usize) {
    (0, 0)
}

fn this_thread() -> i64 {
    // SAFETY: gettid has no arguments and no memory effects.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// `c`'s table, made on first use (null when it cannot be allocated).
/// Called with `c`'s rights: its address is kept in `c`'s heap state.
fn table(c: usize, make: bool) -> *const Table {
    let word = flexos_alloc::owner_word(c);
    let existing = word.load(Ordering::Acquire) as *const Table;
    if !existing.is_null() || !make {
        return existing;
    }
    let fresh = flexos_alloc::alloc_in(c, Layout::new::<Table>()).cast::<Table>();
    if fresh.is_null() {
        return fresh;
    }
    // SAFETY: a fresh block of `c`'s heap, sized and aligned for a
    // `Table`; all zeros is an empty table (every row free).
    unsafe { fresh.write_bytes(0, 1) };
    match word.compare_exchange(0, fresh as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(other) => {
            // SAFETY: the block just allocated, never published.
            unsafe { flexos_alloc::free(fresh.cast(), Layout::new::<Table>()) };
            other as *const Table
        }
    }
}

/// This thread's row of `c`'s table, claimed if `claim` (None: no table,
/// no row, or every row taken). Called with `c`'s rights.
fn row(c: usize, claim: bool) -> Option<&'static (AtomicI64, AtomicPtr<List>)> {
    // SAFETY: `table` returns null or `c`'s table, which is never freed
    // and is read with `c`'s rights.
    let table = unsafe { table(c, claim).as_ref()? };
    let me = this_thread();
    if let Some(row) = table.rows.iter().find(|r| r.0.load(Ordering::Acquire) == me) {
        return Some(row);
    }
    if !claim {
        return None;
    }
    table.rows.iter().find(|r| r.0.compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire).is_ok())
}

/// Registers `dtor(obj)` to run when this thread ends, in the compartment
/// whose rights call it: the C library's entry point that std uses for
/// every thread-local destructor. Returns 0, or -1 when the compartment's
/// list of this thread is full or cannot be allocated.
///
/// # Safety
/// `dtor` may be called once with `obj` when the thread ends, with the
/// registering compartment's rights.
#[cfg_attr(target_feature = "crt-static", unsafe(no_mangle))]
#[cfg_attr(not(target_feature = "crt-static"), allow(dead_code))]
pub unsafe extern "C" fn __cxa_thread_atexit_impl(dtor: Destructor, obj: *mut c_void, _dso: *mut c_void) -> c_int {
    let c = crate::running_compartment();
    if c >= COMPARTMENTS.len() {
        return -1;
    }
    let Some(row) = row(c, true) else { return -1 };
    let mut list = row.1.load(Ordering::Acquire);
    if list.is_null() {
        let fresh = flexos_alloc::alloc_in(c, Layout::new::<List>()).cast::<List>();
        if fresh.is_null() {
            return -1;
        }
        // SAFETY: a fresh block of `c`'s heap, sized and aligned for a
        // `List`, written with `c`'s rights.
        unsafe { fresh.write(List { len: 0, entries: [(None, core::ptr::null_mut()); MAX_DESTRUCTORS] }) };
        row.1.store(fresh, Ordering::Release);
        list = fresh;
    }
    // SAFETY: `c`'s list of this thread, found in `c`'s own table (only
    // this thread writes it), in `c`'s heap.
    let list = unsafe { &mut *list };
    if list.len == MAX_DESTRUCTORS {
        return -1;
    }
    list.entries[list.len] = (Some(dtor), obj);
    list.len += 1;
    0
}

/// Runs `c`'s destructors on this thread, newest first (a destructor may
/// register more), then frees the list and the thread's row; returns
/// whether `c` had a row for this thread. Called in `c`, with its rights.
fn run_list(c: usize) -> bool {
    let Some(row) = row(c, false) else { return false };
    let list = row.1.load(Ordering::Acquire);
    if !list.is_null() {
        loop {
            // SAFETY: `c`'s list of this thread, from `c`'s own table, read
            // and written with its rights.
            let (dtor, obj) = unsafe {
                let l = &mut *list;
                if l.len == 0 {
                    break;
                }
                l.len -= 1;
                l.entries[l.len]
            };
            if let Some(dtor) = dtor {
                // SAFETY: registered by `c` for this thread, to be called once now.
                unsafe { dtor(obj) };
            }
        }
        row.1.store(core::ptr::null_mut(), Ordering::Release);
        // SAFETY: the block `__cxa_thread_atexit_impl` allocated for this list.
        unsafe { flexos_alloc::free(list.cast(), Layout::new::<List>()) };
    }
    row.0.store(0, Ordering::Release);
    true
}

/// Runs every compartment's thread-local destructors of this thread, each
/// in its compartment; called by a thread made by this crate's
/// `pthread_create` after its body returned. Every other compartment of
/// this process is entered (nothing an attacker can rewrite says which
/// have lists, so none can be skipped), in rounds until one finds no list
/// (destructors may register more, in any compartment); then the thread's
/// own compartment runs its list, last: std's values of the thread itself
/// (its handle, ...) were registered there, and the gates into the others
/// use them, so no gate is crossed after it.
pub(crate) fn run_destructors() {
    let here = flexos_layout::domain_of(flexos_platform::compartment::home());
    let own = crate::running_compartment();
    for _ in 0..8 {
        let mut found = false;
        for c in (0..COMPARTMENTS.len()).filter(|&c| c != own && flexos_layout::domain_of(c) == here) {
            // SAFETY: `run_list(c)` is this crate's code and runs only
            // destructors that compartment `c` registered itself.
            found |= unsafe { crate::run_in(c, || run_list(c)) };
        }
        if !found {
            break;
        }
    }
    run_list(own);
}
