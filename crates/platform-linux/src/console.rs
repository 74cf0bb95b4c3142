//! The console: the image's standard output and error.

use std::io::Write;

/// Writes bytes to standard output.
pub fn write_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Writes bytes to standard error.
pub fn write_err(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}
