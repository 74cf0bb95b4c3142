//! The C library of the image (Unikraft's `newlib` port): what C components
//! such as SQLite link against instead of the host's libc.
//!
//! C objects are built normally, then every undefined C library symbol in
//! them (`memcpy`, `malloc`, ...) is renamed to `flexos_libc_<name>` (see
//! `apps/sqlite/build.rs`), so a C component reaches only this library, and
//! through it the LibOS: memory from the running compartment's heap, files
//! through gates into `vfs`, time through gates into `time`.
//!
//! File functions follow the Linux system call convention: they return a
//! non-negative result or `-errno`, so no global `errno` is needed.
//!
//! This crate is the C ABI boundary: its functions take raw pointers from C,
//! so it is one of the few crates allowed `unsafe`; each block says what it
//! relies on.
#![no_std]

extern crate alloc;

mod file;
mod known;
mod memory;
pub mod selftest;
mod string;

pub use file::install_file;

use core::ffi::{c_char, c_int};

flexos_gate::component!(LIBC);

unsafe extern "C" {
    /// The C program's `main`, renamed at build time.
    fn flexos_c_main(argc: c_int, argv: *const *const c_char) -> c_int;
}

/// Runs the linked C program's `main` with `args` (the first is the program name).
pub fn run_c_main(args: &[&str]) -> i32 {
    let owned: alloc::vec::Vec<alloc::vec::Vec<u8>> = args
        .iter()
        .map(|a| {
            let mut v = alloc::vec::Vec::from(a.as_bytes());
            v.push(0);
            v
        })
        .collect();
    let mut argv: alloc::vec::Vec<*const c_char> = owned.iter().map(|v| v.as_ptr().cast()).collect();
    argv.push(core::ptr::null());
    // SAFETY: argv is a null-terminated array of pointers to NUL-terminated
    // strings that live (in `owned`) until main returns, as C requires.
    unsafe { flexos_c_main(args.len() as c_int, argv.as_ptr()) }
}

/// C's `assert` failed (C code is built without `NDEBUG` only with the
/// `debug-assertions` option): reports it and ends the image.
///
/// # Safety
/// `expr` and `file` are NUL-terminated strings (or null).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc___assert_fail(
    expr: *const c_char,
    file: *const c_char,
    line: core::ffi::c_uint,
    _function: *const c_char,
) -> ! {
    let text = |p: *const c_char| {
        if p.is_null() {
            return &b"?"[..];
        }
        // SAFETY: the caller passes NUL-terminated strings (assert.h does).
        unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes()
    };
    flexos_platform::hardening::caught_at_source("debug-assertions", "a failed assertion", text(file), line, text(expr))
}

/// C's `abort` (SQLite's debugging code calls it): ends the image.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_abort() -> ! {
    flexos_platform::console::write_err(b"flexos: the C program called abort()\n");
    flexos_platform::process_abort()
}

/// Writes `len` bytes at `buf` to the console: fd 1 is standard output, anything else standard error.
///
/// # Safety
/// `buf` must point to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_console_write(fd: c_int, buf: *const u8, len: usize) -> isize {
    // SAFETY: the caller provides `len` readable bytes at `buf`.
    let bytes = unsafe { core::slice::from_raw_parts(buf, len) };
    if fd == 1 {
        flexos_platform::console::write_out(bytes);
    } else {
        flexos_platform::console::write_err(bytes);
    }
    len as isize
}

/// Nanoseconds of the monotonic clock (0) or the wall clock (any other value).
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_clock_ns(clock: c_int) -> u64 {
    if clock == 0 {
        flexos_gate::gate!(flexos_time::monotonic_ns())
    } else {
        flexos_gate::gate!(flexos_time::wall_ns())
    }
}

/// Sleeps the calling thread for `ns` nanoseconds.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_sleep_ns(ns: u64) {
    flexos_gate::gate!(flexos_time::sleep_ns(ns))
}

/// Fills `len` bytes at `buf` with random bytes.
///
/// # Safety
/// `buf` must point to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_random(buf: *mut u8, len: usize) {
    // SAFETY: the caller provides `len` writable bytes at `buf`.
    flexos_platform::random::fill(unsafe { core::slice::from_raw_parts_mut(buf, len) })
}
