//! Reports a hardware fault (bad memory access, illegal instruction such as
//! a trap, arithmetic fault, a system call a seccomp filter forbids) as "compartment NAME faulted at ADDRESS
//! (reason)", naming the compartment that was running, then ends the
//! image with the same signal (never returning from the handler).

use crate::compartment;
use crate::pkey::KeyOwner;
use std::sync::OnceLock;

static NAMES: OnceLock<&'static [&'static str]> = OnceLock::new();

/// The signals the fault reporter handles (and whose frames the fault
/// supervisor places).
pub(crate) const SIGNALS: [libc::c_int; 5] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGSYS];
const ALT_STACK_SIZE: usize = 64 * 1024;

/// Installs the fault reporter for this process; `names[i]` is compartment `i`'s name.
/// Faults on the calling host thread are reported even when its stack overflowed.
pub fn install(names: &'static [&'static str]) {
    let _ = NAMES.set(names);
    // A separate signal stack, so that a stack overflow can still be reported.
    let alt = crate::memory::Region::reserve(ALT_STACK_SIZE).expect("cannot map the signal stack");
    let stack = libc::stack_t { ss_sp: alt.base.as_ptr().cast(), ss_flags: 0, ss_size: alt.len };
    // SAFETY: `stack` describes a mapping that is never unmapped.
    unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) };
    set_handlers(libc::SA_ONSTACK);
}

/// Has the fault reporter's handlers run on the interrupted stack, never on
/// a signal stack: for an image whose fault supervisor places every fault
/// frame ([`crate::supervisor`]); a signal stack is the thread's to move.
pub fn without_signal_stack() {
    set_handlers(0);
}

/// Installs [`on_fault`] for every fault signal, with `extra` flags.
fn set_handlers(extra: libc::c_int) {
    for sig in SIGNALS {
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)` as SA_SIGINFO requires.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction =
                on_fault as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | extra;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// Compartment `c`'s name, as given to [`install`] ("?" before it or out of range).
pub fn compartment_name(c: usize) -> &'static str {
    NAMES.get().and_then(|n| n.get(c)).copied().unwrap_or("?")
}

/// Appends ` (program+OFFSET)` for an address inside the program file (for addr2line).
pub(crate) fn push_program_offset(line: &mut Line, pc: usize) {
    let base = (&raw const __ehdr_start) as usize;
    if pc >= base {
        line.push(b" (program+");
        line.hex(pc - base);
        line.push(b")");
    }
}

unsafe extern "C" {
    /// The program's ELF header, which the linker places at the start of
    /// its first loaded segment: the base its addresses are relative to.
    static __ehdr_start: u8;
}

/// A fixed buffer for formatting without allocating (signal handlers must not allocate).
pub(crate) struct Line {
    pub(crate) buf: [u8; 256],
    pub(crate) len: usize,
}

impl Line {
    /// An empty line.
    pub(crate) const fn new() -> Line {
        Line { buf: [0; 256], len: 0 }
    }

    pub(crate) fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    pub(crate) fn decimal(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[n..]);
    }

    pub(crate) fn hex(&mut self, v: usize) {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let d = (v >> (shift * 4)) & 0xf;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[n] = b"0123456789abcdef"[d];
                n += 1;
            }
        }
        self.push(&digits[..n]);
    }
}

/// Whether the OS enabled protection keys (CPUID.7.0:ECX.OSPKE), so that
/// `rdpkru`/`wrpkru` do not fault.
fn os_enabled_keys() -> bool {
    // Leaf 7 reads as zeros (no OSPKE) on CPUs too old to have it.
    let leaf = core::arch::x86_64::__cpuid_count(7, 0);
    leaf.ecx & (1 << 4) != 0
}

/// In an image with `mpk` compartments the kernel runs this handler with
/// key 0 only, but the names and keys it reports are statics, which carry
/// the trusted core's key (docs/mpk.md): it first takes
/// `flexos_layout::HANDLER_PKRU` (key 0, and the core's statics read-only),
/// with the same checked sequence as every gate. The value gives nothing
/// that any compartment lacks, so jumping to this `wrpkru` gains nothing.
/// The kernel restores the interrupted PKRU when the handler returns.
#[inline(always)]
fn allow_reading_the_core() {
    if flexos_layout::has_mpk() && os_enabled_keys() {
        // SAFETY: the checked wrpkru sequence of the gates (registered in
        // the `flexos_wrpkru` section); it changes only PKRU, to rights that
        // every compartment's include.
        unsafe { crate::checked_wrpkru!(flexos_layout::HANDLER_PKRU) };
    }
}

/// The PKRU value of the interrupted code, from the XSAVE area the kernel
/// saved in the signal frame; `None` where there is none or it holds no PKRU.
///
/// # Safety
/// `uc` must be the context the kernel passed to an SA_SIGINFO handler.
unsafe fn interrupted_pkru(uc: &libc::ucontext_t) -> Option<u32> {
    /// `FP_XSTATE_MAGIC1`: the FXSAVE area's software bytes describe an XSAVE area.
    const XSTATE_MAGIC: u32 = 0x4650_5853;
    const PKRU_BIT: u64 = 1 << 9;
    let fx = uc.uc_mcontext.fpregs as *const u8;
    if fx.is_null() || !os_enabled_keys() {
        return None;
    }
    // SAFETY: the FXSAVE area is 512 bytes; its software-reserved bytes at
    // 464 hold the magic, the XSAVE area's size (at 480), and the XSAVE
    // header (at 512, its first word the saved components) follows when
    // the magic is there. PKRU's offset comes from CPUID leaf 0xD and is
    // checked against the area's size before it is read.
    unsafe {
        if (fx.add(464) as *const u32).read_unaligned() != XSTATE_MAGIC {
            return None;
        }
        let size = (fx.add(480) as *const u32).read_unaligned() as usize;
        let saved = (fx.add(512) as *const u64).read_unaligned();
        if saved & PKRU_BIT == 0 {
            return Some(0); // PKRU in its initial state: every key allowed
        }
        let offset = core::arch::x86_64::__cpuid_count(0xd, 9).ebx as usize;
        (offset >= 576 && offset + 4 <= size).then(|| (fx.add(offset) as *const u32).read_unaligned())
    }
}

/// What a fault means, from the signal and the page-fault error code.
fn reason(sig: libc::c_int, error_code: usize) -> &'static [u8] {
    match sig {
        libc::SIGSEGV if error_code & 2 != 0 => b"page fault on write",
        libc::SIGSEGV if error_code & 16 != 0 => b"page fault on instruction fetch",
        libc::SIGSEGV => b"page fault on read",
        libc::SIGBUS => b"bus error",
        libc::SIGILL => b"illegal instruction: a trap or invalid code",
        libc::SIGSYS => b"a system call its seccomp filter forbids",
        _ => b"arithmetic fault",
    }
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    allow_reading_the_core();
    // A compartment's own thread-locals are out of this handler's reach.
    crate::tls::back_to_own_block();
    // SAFETY: the kernel passes a valid siginfo_t and ucontext_t to an
    // SA_SIGINFO handler; for these four signals the fault address is the
    // first field of the union (offset 16 on x86-64 Linux).
    let (addr, pc, error_code) = unsafe {
        let addr = *(info as *const u8).add(16).cast::<usize>();
        let uc = &*(context as *const libc::ucontext_t);
        (
            addr,
            uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize,
            uc.uc_mcontext.gregs[libc::REG_ERR as usize] as usize,
        )
    };
    // The compartment that faulted: by the rights it held (the PKRU value
    // saved in the signal frame) where keys are in use, since the
    // compartment register is a thread-local that a compromised
    // compartment can rewrite.
    let claimed = compartment::current();
    // SAFETY: the kernel's signal frame (see `interrupted_pkru`).
    let rights = unsafe { interrupted_pkru(&*(context as *const libc::ucontext_t)) };
    let current = match rights {
        Some(rights) if flexos_layout::has_mpk() => {
            crate::pkey::compartment_with_rights(rights, claimed).unwrap_or(claimed)
        }
        _ => claimed,
    };
    let name_of = compartment_name;
    // The trap of a hardening option (cfi, ubsan) is reported as caught.
    // SAFETY: pc is the address of the instruction that raised SIGILL.
    if let Some((option, what)) = (sig == libc::SIGILL).then(|| unsafe { crate::hardening::trap_kind(pc) }).flatten() {
        crate::hardening::report(option, what, pc, b"");
        end_with(sig);
    }
    let mut line = Line { buf: [0; 256], len: 0 };
    line.push(b"flexos: compartment \"");
    line.push(name_of(current).as_bytes());
    // SAFETY: si_code is the third int of every siginfo_t; for SEGV_PKUERR
    // the kernel fills si_pkey (a u32 at offset 32 on x86-64 Linux).
    let key =
        unsafe { ((*info).si_code == crate::pkey::SEGV_PKUERR).then(|| *(info as *const u8).add(32).cast::<u32>()) };
    if let (libc::SIGSEGV, Some(key)) = (sig, key) {
        line.push(b"\" touched ");
        line.hex(addr);
        line.push(b" owned by ");
        match crate::pkey::owner_of_key(key) {
            Some(KeyOwner::Compartment(owner)) => {
                line.push(b"\"");
                line.push(name_of(owner).as_bytes());
                line.push(b"\"");
            }
            Some(KeyOwner::Shared) => line.push(b"the shared memory"),
            Some(KeyOwner::Core) => line.push(b"the trusted core"),
            None => line.push(b"no compartment"),
        }
        line.push(b" (protection key ");
        line.decimal(key as usize);
        line.push(b": ");
    } else {
        line.push(b"\" faulted at ");
        line.hex(addr);
        line.push(b" (");
    }
    line.push(reason(sig, error_code));
    if sig == libc::SIGSYS {
        // SAFETY: for SIGSYS the kernel fills si_syscall (an int at offset 24).
        let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
        line.push(b": number ");
        line.decimal(nr as usize);
    }
    line.push(b"), instruction ");
    line.hex(pc);
    // Where the instruction lies in the program file (for addr2line), when it lies there.
    push_program_offset(&mut line, pc);
    line.push(b"\n");
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for `len` bytes.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    end_with(sig);
}

/// Ends the process with signal `sig` from inside its handler, without
/// returning: the default action (which SA_RESETHAND restored) of the
/// signal, unblocked and raised again, ends the process as the fault itself
/// would have. The handler never returns because an `mpk` image denies
/// `rt_sigreturn`, through which a forged signal frame would load PKRU
/// (docs/mpk.md, "System calls").
fn end_with(sig: libc::c_int) -> ! {
    // SAFETY: signal (to the default action, no handler code), sigemptyset,
    // sigaddset, sigprocmask, raise and _exit are async-signal-safe and
    // touch only `set`, a local.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::signal(sig, libc::SIG_DFL);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut());
        libc::raise(sig);
        libc::_exit(128 + sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_addresses_and_reasons() {
        let mut l = Line { buf: [0; 256], len: 0 };
        l.hex(0x10);
        l.push(b" ");
        l.hex(0);
        l.push(b" ");
        l.hex(usize::MAX);
        l.push(b" ");
        l.decimal(0);
        l.push(b" ");
        l.decimal(1234);
        assert_eq!(&l.buf[..l.len], b"0x10 0x0 0xffffffffffffffff 0 1234");
        assert_eq!(reason(libc::SIGSEGV, 6), b"page fault on write");
        assert_eq!(reason(libc::SIGSEGV, 4), b"page fault on read");
        assert!(reason(libc::SIGILL, 0).starts_with(b"illegal instruction"));
    }
}
