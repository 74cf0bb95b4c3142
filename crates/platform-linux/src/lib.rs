//! The `linux` (hosted) platform: the thin layer between the LibOS components
//! and the Linux kernel (DESIGN section 2).
//!
//! It provides what a machine would: memory ([`memory`]), a clock
//! ([`clock`]), a console ([`console`]), fault reports ([`fault`]), execution contexts with their own
//! stacks ([`context`]) and the register that says which compartment is
//! running ([`compartment`]). It is part of the trusted core: `unsafe` is
//! allowed here, and every block says why it is sound.

pub mod clock;
pub mod compartment;
pub mod console;
pub mod context;
pub mod domain;
pub mod fault;
pub mod futex;
pub mod gatestack;
pub mod guest;
pub mod hardening;
pub mod kasan;
pub mod mem;
pub mod memory;
pub mod net;
pub mod pkey;
pub mod process;
pub mod random;
pub mod supervisor;
pub mod syscalls;
pub mod tls;

/// Ends the image at once with SIGABRT (after a message on the console
/// has said why). Not the C library's `abort`, which takes a lock and
/// counts its progress in statics: in an image with `mpk` compartments
/// only the default one may write the statics (docs/mpk.md), and any
/// compartment may need to stop the image.
pub fn process_abort() -> ! {
    // SAFETY: unblocking and raising a signal, resetting its action to the
    // default and exiting touch no memory of this program's.
    unsafe {
        let mut abrt: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut abrt);
        libc::sigaddset(&mut abrt, libc::SIGABRT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &abrt, core::ptr::null_mut());
        libc::raise(libc::SIGABRT);
        // A handler caught it and returned: take the default action.
        let mut default: libc::sigaction = core::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGABRT, &default, core::ptr::null_mut());
        libc::raise(libc::SIGABRT);
        libc::_exit(134)
    }
}

/// The length a pad's value asks for (`FLEXOS_LINK_PAD`, `FLEXOS_CODE_PAD`:
/// decimal; 0 when unset or not a number).
pub const fn pad_len(value: Option<&str>) -> usize {
    let Some(v) = value else { return 0 };
    let bytes = v.as_bytes();
    let mut n = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            return 0;
        }
        n = n * 10 + (bytes[i] - b'0') as usize;
        i += 1;
    }
    n
}
