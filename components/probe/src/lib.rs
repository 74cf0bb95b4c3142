//! A test component. Its well-behaved entries are what the gate benchmark
//! and the positive tests call (`noop`, `echo`, `nested`). Its `attack_*`
//! entries behave as a *compromised* compartment would: they read and
//! write memory they were given the address of, forge call frames and
//! make forbidden system calls, so that the tests can show that each
//! mechanism stops them and reports it.
//!
//! This is the one component that uses `unsafe`: it models code that an
//! attacker controls, which is exactly what the mechanisms must contain.
//! It is linked only into the `probe` test image.

use flexos_gate::SharedRef;
use flexos_gate::export::Refusal;
use flexos_gate::remote::{self, FRAME_DATA, Header};

flexos_gate::component!(PROBE);
flexos_gate::exports!(
    noop(),
    echo(_),
    nested(_),
    attack_read(_),
    attack_write(_, _),
    attack_frame(_, _, _, _, _),
    attack_syscall(),
    attack_invalid_instruction()
);

/// Does nothing: the empty call of the gate benchmark.
pub fn noop() {}

/// Returns `x + 1`.
pub fn echo(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// Calls back through the gates: sleeps `ns` through `time` (which calls
/// `sched`) and returns the number of threads `sched` reports, so a call
/// from the default compartment nests as deep as the layout places them apart.
pub fn nested(ns: u64) -> u64 {
    flexos_gate::gate!(flexos_time::sleep_ns(ns));
    flexos_gate::gate!(flexos_sched::thread_count()) as u64
}

/// Attack: reads the 8 bytes at `addr` (another compartment's heap or stack).
pub fn attack_read(addr: u64) -> u64 {
    // SAFETY: none; this is the attack. A mechanism that isolates makes it fault.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Attack: writes `value` to the 8 bytes at `addr`.
pub fn attack_write(addr: u64, value: u64) {
    // SAFETY: none; this is the attack.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Attack: sends a hand-made call frame (compartment `to`, component,
/// entry, length field, argument bytes `args`) to another domain and
/// returns 0 if it was served, else the refusal's code.
pub fn attack_frame(to: u32, component: u32, entry: u32, len: u32, args: SharedRef<'_>) -> u32 {
    let header = Header { from: FLEXOS_COMPONENT.compartment as u32, to, component, entry, len };
    let mut result = [core::mem::MaybeUninit::uninit(); FRAME_DATA];
    match remote::call_frame(header, args.bytes(), &mut result) {
        Ok(_) => 0,
        Err(r) => r as u32,
    }
}

/// Attack: opens a file of the host with the `syscall` instruction itself
/// (`openat`, number 257), a system call no compartment may make. Returns
/// the file descriptor if it was allowed.
pub fn attack_syscall() -> i64 {
    let path = c"/etc/hostname";
    let result: i64;
    // SAFETY: none needed for the process's memory: openat only reads the
    // path; the mechanism must stop the call before the kernel runs it.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") libc::SYS_openat => result, in("rdi") libc::AT_FDCWD as i64,
            in("rsi") path.as_ptr(), in("rdx") libc::O_RDONLY as i64, lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    result
}

/// Attack: executes an invalid instruction (`ud2`).
pub fn attack_invalid_instruction() {
    // SAFETY: none needed; `ud2` raises an invalid-opcode exception, which
    // the mechanism must report.
    unsafe { core::arch::asm!("ud2", options(nostack)) }
}

/// The refusal codes, for the image's reports.
pub fn refusal_name(code: u32) -> &'static str {
    Refusal::from_code(code).map_or("served", Refusal::describe)
}
