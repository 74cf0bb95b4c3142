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
//! private heap, which only it can write. When a thread made by this
//! crate's `pthread_create` ends, each compartment's list is run in that
//! compartment, through its gate, after checking that the list lies in
//! its own heap and was made for this thread: a thread-local pointer is in
//! key 0, so another compartment could point it elsewhere. The main
//! thread's destructors are not run (std does not promise that they are).

use core::alloc::Layout;
use core::cell::Cell;
use core::ffi::{c_int, c_void};
use flexos_layout::COMPARTMENTS;

/// A destructor as the C ABI registers it.
type Destructor = unsafe extern "C" fn(*mut c_void);

/// The most destructors one compartment may register on one thread; more
/// are refused (`__cxa_thread_atexit_impl` returns -1 and std never runs
/// that value's destructor).
const MAX_DESTRUCTORS: usize = 256;

/// One compartment's destructors on one thread, in that compartment's heap.
struct List {
    /// The thread it was made for (`gettid`).
    thread: i64,
    len: usize,
    entries: [(Option<Destructor>, *mut c_void); MAX_DESTRUCTORS],
}

thread_local! {
    /// Each compartment's list on this thread (null: none yet). Key 0, so
    /// any compartment can rewrite these pointers: each is checked before
    /// it is followed.
    static LISTS: [Cell<*mut List>; COMPARTMENTS.len()] =
        const { [const { Cell::new(core::ptr::null_mut()) }; COMPARTMENTS.len()] };
}

fn this_thread() -> i64 {
    // SAFETY: gettid has no arguments and no memory effects.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// `c`'s list on this thread, if the pointer names a list in `c`'s own
/// private heap made for this thread (else it was rewritten: null).
fn checked_list(c: usize) -> *mut List {
    let p = LISTS.with(|l| l[c].get());
    let at = p as usize;
    let inside = flexos_alloc::owner_of(at) == Some(c)
        && flexos_alloc::owner_of(at + size_of::<List>() - 1) == Some(c)
        && !flexos_alloc::is_shared(at, size_of::<List>())
        && at.is_multiple_of(align_of::<List>());
    // SAFETY: `p` lies wholly in `c`'s private heap, aligned; called with
    // `c`'s rights, so it is readable; only `c` can have written it.
    if inside && unsafe { (*p).thread } == this_thread() { p } else { core::ptr::null_mut() }
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
    let mut list = checked_list(c);
    if list.is_null() {
        let fresh = flexos_alloc::alloc_in(c, Layout::new::<List>()).cast::<List>();
        if fresh.is_null() {
            return -1;
        }
        // SAFETY: a fresh block of `c`'s heap, sized and aligned for a
        // `List`, written with `c`'s rights.
        unsafe {
            fresh.write(List {
                thread: this_thread(),
                len: 0,
                entries: [(None, core::ptr::null_mut()); MAX_DESTRUCTORS],
            })
        };
        LISTS.with(|l| l[c].set(fresh));
        list = fresh;
    }
    // SAFETY: `list` is `c`'s, checked or just made, in `c`'s heap.
    let list = unsafe { &mut *list };
    if list.len == MAX_DESTRUCTORS {
        return -1;
    }
    list.entries[list.len] = (Some(dtor), obj);
    list.len += 1;
    0
}

/// Runs `c`'s destructors on this thread, newest first (a destructor may
/// register more), then frees the list. Called in `c`, with its rights.
fn run_list(c: usize) {
    let list = checked_list(c);
    if list.is_null() {
        LISTS.with(|l| l[c].set(core::ptr::null_mut()));
        return;
    }
    loop {
        // SAFETY: `c`'s own list (checked above), read and written with its rights.
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
    LISTS.with(|l| l[c].set(core::ptr::null_mut()));
    // SAFETY: the block `__cxa_thread_atexit_impl` allocated for this list.
    unsafe { flexos_alloc::free(list.cast(), Layout::new::<List>()) };
}

/// Runs every compartment's thread-local destructors of this thread, each
/// in its compartment; called by a thread made by this crate's
/// `pthread_create` after its body returned. Destructors may register
/// more, in any compartment: a few rounds, until no list is left.
pub(crate) fn run_destructors() {
    const _: () = assert!(COMPARTMENTS.len() <= 64);
    for _ in 0..8 {
        let pending =
            LISTS.with(|l| (0..COMPARTMENTS.len()).filter(|&c| !l[c].get().is_null()).fold(0u64, |m, c| m | 1 << c));
        if pending == 0 {
            return;
        }
        // The thread's own compartment last: std's values of the thread
        // itself (its handle, ...) were registered there, and the gates
        // into the others still use them.
        let own = crate::running_compartment();
        for c in (0..COMPARTMENTS.len()).filter(|&c| pending >> c & 1 == 1 && c != own) {
            // SAFETY: `run_list(c)` is this crate's code and runs only
            // destructors that compartment `c` registered itself.
            unsafe { crate::run_in(c, || run_list(c)) };
        }
        if pending >> own & 1 == 1 {
            run_list(own);
        }
    }
}
