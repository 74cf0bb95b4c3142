//! The console: the image's standard output and error (in a VM both go to
//! the host's standard error through a hypercall).

use std::io::Write;

/// Writes bytes to standard output.
pub fn write_out(bytes: &[u8]) {
    if crate::guest::in_guest() {
        return write_err(bytes);
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Writes bytes to standard error.
pub fn write_err(bytes: &[u8]) {
    if crate::guest::in_guest() {
        let (ptr, len) = (bytes.as_ptr() as u64, bytes.len() as u64);
        return crate::guest::hypercall(crate::guest::port::WRITE, ptr, len, 0);
    }
    let _ = std::io::stderr().lock().write_all(bytes);
}
