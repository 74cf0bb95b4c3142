//! Host threads' bodies on stacks of their compartment's key.
//!
//! The C library maps a new thread's stack itself, with key 0, which every
//! `mpk` compartment may read and write: a thread of main's (started with
//! `std::thread::spawn`) held main's locals and return addresses where any
//! compartment could read and rewrite them (attacks `read-thread-stack`,
//! `write-thread-stack`). In a static image this crate's `pthread_create`
//! takes the place of the C library's (a weak alias there): where the
//! creating compartment has stacks of its own (an `mpk` compartment with
//! `dss` or `heap`), the new thread runs its body on its context's gate stack of that
//! compartment (a slot of the gate-stack arena, with the compartment's
//! key), as if a gate had entered it, on its compartment's copy of the
//! thread's thread-locals (`flexos_platform::tls`). The C library's stack
//! then holds only the thread's start and end, and the thread's own
//! control block and thread-locals (key 0, as before). Every thread it starts, on a keyed
//! stack or not, runs its thread-local destructors before it ends, each
//! in the compartment that registered it ([`crate::thread_exit`]).

use core::ffi::{c_int, c_void};
use flexos_layout::{SHARED_STACKS, stack_domain};
use flexos_platform::{compartment, gatestack};

/// A thread's start routine, as `pthread_create` takes it.
type StartRoutine = extern "C" fn(*mut c_void) -> *mut c_void;

unsafe extern "C" {
    /// The C library's `pthread_create` under its own name (in a static
    /// image, `pthread_create` is a weak alias of it).
    fn __pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        start: StartRoutine,
        arg: *mut c_void,
    ) -> c_int;
}

/// What the new thread runs, handed over in the creator's heap.
struct Start {
    start: StartRoutine,
    arg: *mut c_void,
}

/// The stack domain whose gate stack a thread created now runs its body
/// on: the running compartment's, if its stacks are its own and the gate
/// stacks' arena is reserved (after start-up, in an image with keys).
fn private_domain() -> Option<usize> {
    let domain = stack_domain(compartment::current());
    (domain != SHARED_STACKS && gatestack::arena().0 != 0).then_some(domain)
}

/// Starts a thread as the C library's `pthread_create` does; its body runs
/// on a stack of the creating compartment's key where that compartment has
/// stacks of its own, and its thread-local destructors run before it ends
/// (see the module's doc).
///
/// # Safety
/// The contract of `pthread_create(3)`.
#[cfg_attr(target_feature = "crt-static", unsafe(no_mangle))]
#[cfg_attr(not(target_feature = "crt-static"), allow(dead_code))]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartRoutine,
    arg: *mut c_void,
) -> c_int {
    let handed = Box::into_raw(Box::new(Start { start, arg }));
    // SAFETY: the caller's arguments, with a start routine that runs
    // theirs; `handed` is taken by that routine exactly once.
    let rc = unsafe { __pthread_create(thread, attr, thread_main, handed.cast()) };
    if rc != 0 {
        // SAFETY: no thread was made, so nothing else took it.
        drop(unsafe { Box::from_raw(handed) });
    }
    rc
}

/// The start routine of a thread made by [`pthread_create`]: moves onto
/// the thread's gate stack of its compartment (where it has stacks of its
/// own) and runs the caller's routine there, then the thread-local
/// destructors. The thread holds the creator's rights (a new thread
/// inherits PKRU), so it is in the creator's compartment.
extern "C" fn thread_main(handed: *mut c_void) -> *mut c_void {
    // SAFETY: `pthread_create` handed this box to this thread only.
    let Start { start, arg } = *unsafe { Box::from_raw(handed.cast::<Start>()) };
    flexos_platform::tls::register_thread();
    let result = match private_domain() {
        Some(domain) => run_on_keyed_stack(domain, start, arg),
        None => start(arg),
    };
    // Before the C library ends the thread: each compartment's thread-local
    // destructors, with that compartment's rights (crate::thread_exit).
    crate::thread_exit::run_destructors();
    // SAFETY: back on the thread's own block for good (the routine and
    // the destructors have returned): its copies go back.
    unsafe { flexos_platform::tls::give_back_copies() };
    result
}

/// Runs `start(arg)` on this thread's gate stack of `domain`.
fn run_on_keyed_stack(domain: usize, start: StartRoutine, arg: *mut c_void) -> *mut c_void {
    // SAFETY: this thread's table, which nothing else uses while it runs.
    let table = unsafe { &mut *gatestack::active() };
    // The top of the thread's stack in its domain: no gate has entered it
    // in this new context (checked like a gate's entry).
    let top = table.checked_entry(domain, crate::domain_key(domain), 0, 0);
    // The domain's thread-locals on this new thread (a copy of the thread's
    // own block, made here with the domain's rights: the thread holds them).
    // SAFETY: filled right below, before the routine runs on it.
    let tls = unsafe { flexos_platform::tls::entry(domain) };
    if tls.fill_from != 0 {
        // SAFETY: an entry of this thread just taken, filled once, with
        // rights that may write its slot (the domain's).
        unsafe { flexos_platform::tls::fill(tls.tp, tls.fill_from) };
    }
    let own = flexos_platform::tls::thread_pointer();
    let result: *mut c_void;
    // SAFETY: `top` is the 16-byte aligned top of this context's stack of
    // the domain, readable and writable with this thread's rights and used
    // by nothing else (a gate into the domain from this context would
    // start below the frames the routine holds there: gates write down
    // where they leave a domain's gate stack). The caller's stack pointer
    // is kept in R12, which the routine preserves (C ABI), and restored
    // after it returns, as is the thread's own thread pointer (R13, beside
    // the domain's in R15) where the routine ran on the domain's
    // thread-locals; every other register the C ABI lets it change is
    // declared clobbered.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "test r15, r15",
            "jz 2f",
            "wrfsbase r15",
            "2:",
            "call {routine}",
            "mov rsp, r12",
            "test r15, r15",
            "jz 3f",
            "wrfsbase r13",
            "3:",
            top = in(reg) top,
            routine = in(reg) start,
            in("rdi") arg,
            inout("r15") tls.tp => _,
            inout("r13") own => _,
            out("r12") _,
            lateout("rax") result,
            clobber_abi("C"),
        )
    };
    result
}
