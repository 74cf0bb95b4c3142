//! What the hardening options report when they catch a bug at run time
//! (docs/hardening.md), in one format for every option and language:
//!
//! ```text
//! flexos: compartment "NAME": OPTION caught WHAT at ADDRESS[, DETAIL]
//! ```
//!
//! The stack protector's failure function and the KASan runtime
//! ([`crate::kasan`]) report here and end the image; the fault reporter
//! recognizes the traps of `cfi` and `ubsan` ([`trap_kind`]); the panic
//! hook ([`install_panic_report`]) names the Rust options whose checks panic.

use crate::fault::{Line, compartment_name, push_program_offset};

/// Writes the report line of a caught bug to standard error (without
/// allocating: it may run with a corrupted heap or stack). `at` is an
/// instruction's address (then its offset in the program file follows) or,
/// for `kasan`, the bad data address.
pub fn report(option: &str, what: &str, at: usize, detail: &[u8]) {
    report_in(compartment_name(crate::compartment::current()), option, what, at, detail)
}

/// `flexos: compartment "NAME": OPTION caught WHAT at `, the start of every report.
fn caught_line(name: &str, option: &str, what: &str) -> Line {
    let mut line = Line::new();
    line.push(b"flexos: compartment \"");
    line.push(name.as_bytes());
    line.push(b"\": ");
    line.push(option.as_bytes());
    line.push(b" caught ");
    line.push(what.as_bytes());
    line.push(b" at ");
    line
}

/// [`report`] for compartment `name` (a `kvm` compartment's VM, reported by its host thread).
pub fn report_in(name: &str, option: &str, what: &str, at: usize, detail: &[u8]) {
    let mut line = caught_line(name, option, what);
    line.hex(at);
    if option != "kasan" {
        push_program_offset(&mut line, at);
    }
    line.push(detail);
    line.push(b"\n");
    crate::console::write_err(&line.buf[..line.len]);
}

/// Reports a caught bug and ends the image (SIGABRT).
pub fn caught(option: &str, what: &str, at: usize, detail: &[u8]) -> ! {
    report(option, what, at, detail);
    crate::process_abort()
}

/// Called by the stack protector's check (Rust `-Zstack-protector`, and C
/// `-fstack-protector`: the C objects keep this name) when a function's
/// canary was overwritten; reports the function (the address after its
/// call here) and ends the image.
///
/// # Safety
/// Called only by compiler-generated code, from a function whose canary failed.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn __stack_chk_fail() -> ! {
    // The return address (inside the function whose canary failed) becomes
    // the first argument; the stack is realigned for the call.
    core::arch::naked_asm!("mov rdi, [rsp]", "and rsp, -16", "call {report}", "ud2", report = sym stack_chk_report)
}

extern "C" fn stack_chk_report(return_address: usize) -> ! {
    caught("stack-protector", "a stack buffer overflow (the canary changed)", return_address, b"")
}

/// Which option's trap the illegal instruction at `pc` is, as (option, what).
///
/// * `cfi` (kcfi): `mov r10d, -TYPE; add r10d, [TARGET - 4]; je 1f; ud2`
///   (the check before an indirect call; the target's type id, stored
///   just before it, did not match).
/// * `ubsan`: clang traps with `ud1` (prefixed `67`), gcc with a bare `ud2` (reported as
///   UBSan only in an image where some C component has `ubsan`).
///
/// # Safety
/// `pc` must be the address of the faulting instruction (mapped, readable code).
pub unsafe fn trap_kind(pc: usize) -> Option<(&'static str, &'static str)> {
    // SAFETY: by the contract the instruction's bytes are readable; the 12
    // bytes before a kcfi `ud2` are part of the same function's code, and
    // reading them is attempted only where the byte pattern at `pc` and
    // the pattern's own first bytes say so (each read is in the check's range).
    unsafe {
        let at = |i: usize| *((pc - i) as *const u8);
        let here = [*(pc as *const u8), *((pc + 1) as *const u8)];
        if here == [0x0f, 0x0b]
            && at(2) == 0x74
            && at(1) == 0x02
            && matches!(at(6), 0x44 | 0x45)
            && at(5) == 0x03
            && at(3) == 0xfc
            && at(12) == 0x41
            && at(11) == 0xba
        {
            return Some(("cfi", "a bad indirect call (the target's type id does not match the call's)"));
        }
        // clang writes `ud1` with an address-size prefix (`67 0f b9 /r`).
        let ud1 = here == [0x0f, 0xb9]
            || (here[0] == 0x67 && *((pc + 1) as *const u8) == 0x0f && *((pc + 2) as *const u8) == 0xb9);
        if ud1 || (here == [0x0f, 0x0b] && flexos_layout::any_hardened_with("ubsan")) {
            return Some(("ubsan", "undefined behaviour (a UBSan trap)"));
        }
    }
    None
}

/// The component whose source file `file` (a panic location) is, by the
/// folder under `components/` it lies in.
fn component_of_file(file: &str) -> Option<&'static flexos_layout::Component> {
    let rest = &file[file.find("components/")? + "components/".len()..];
    let dir = &rest[..rest.find('/')?];
    flexos_layout::component::ALL.iter().find(|c| c.name == dir)
}

/// Installs a panic hook that first reports the panics of Rust hardening
/// in the common format (an arithmetic overflow under `overflow-checks`, a
/// failed assertion in a component built with `debug-assertions`), then
/// runs the hook that was installed before.
pub fn install_panic_report() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report_panic(info);
        previous(info)
    }));
}

/// Reports `info` if it is a check of a hardening option.
pub fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let Some(location) = info.location() else { return };
    let message = info.payload_as_str().unwrap_or("");
    let hardened = |option: &str| component_of_file(location.file()).is_some_and(|c| c.hardening.contains(&option));
    let caught = if message.starts_with("attempt to") && message.contains("overflow") {
        Some(("overflow-checks", "an arithmetic overflow"))
    } else if message.starts_with("assertion") && hardened("debug-assertions") {
        Some(("debug-assertions", "a failed assertion"))
    } else {
        None
    };
    if let Some((option, what)) = caught {
        report_at_source(option, what, location.file().as_bytes(), location.line(), message.as_bytes());
    }
}

/// Writes the report line of a bug caught at a source location (a
/// failed check the compiler or the C library reports with file and line).
pub fn report_at_source(option: &str, what: &str, file: &[u8], line_number: u32, detail: &[u8]) {
    let mut line = caught_line(compartment_name(crate::compartment::current()), option, what);
    line.push(file);
    line.push(b":");
    line.decimal(line_number as usize);
    line.push(b" (");
    line.push(detail);
    line.push(b")\n");
    crate::console::write_err(&line.buf[..line.len]);
}

/// Reports a bug caught at a source location and ends the image (SIGABRT).
pub fn caught_at_source(option: &str, what: &str, file: &[u8], line: u32, detail: &[u8]) -> ! {
    report_at_source(option, what, file, line, detail);
    crate::process_abort()
}
