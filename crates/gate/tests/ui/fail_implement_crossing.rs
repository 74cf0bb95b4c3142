//! A component cannot declare its own type fit to cross: the trait is unsafe
//! and components forbid unsafe code.
#![forbid(unsafe_code)]

struct Secret<'a>(&'a [u8]);
unsafe impl flexos_gate::Crossing for Secret<'_> {}

fn main() {}
