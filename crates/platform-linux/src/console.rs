//! The console: the image's standard output and error (in a VM both go to
//! the host's standard error through a hypercall).

use std::io::Write;

/// Writes bytes to standard output. Through std's buffered stdout where
/// the running compartment may take its lock (a static); directly with
/// write(2) in an `mpk` compartment that may not write the statics
/// (docs/mpk.md).
pub fn write_out(bytes: &[u8]) {
    if crate::guest::in_guest() {
        return write_err(bytes);
    }
    if !crate::pkey::may_write_statics(crate::compartment::current()) {
        return write_all(1, bytes);
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Writes bytes to standard error (unbuffered, like std's, but without
/// std's lock, which is a static that not every compartment may write).
pub fn write_err(bytes: &[u8]) {
    if crate::guest::in_guest() {
        let (ptr, len) = (bytes.as_ptr() as u64, bytes.len() as u64);
        return crate::guest::hypercall(crate::guest::port::WRITE, ptr, len, 0);
    }
    write_all(2, bytes)
}

/// Writes all of `bytes` to descriptor `fd`, retrying after interruptions.
fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) reads at most `bytes.len()` bytes of the slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Like `println!`, but through [`write_out`], so that it works in every
/// compartment (std's `println!` takes a lock that is a static, which an
/// `mpk` compartment other than the default one may not write).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::console::write_out(::std::format!("{}\n", ::std::format_args!($($arg)*)).as_bytes())
    };
}

/// Like `eprintln!`, but through [`write_err`] (see [`outln!`](crate::outln)).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::console::write_err(::std::format!("{}\n", ::std::format_args!($($arg)*)).as_bytes())
    };
}
