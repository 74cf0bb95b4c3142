//! The workspace forbids `#![feature]` in components (`unstable_features`),
//! since `allow_internal_unsafe` would let a component's own macros
//! expand to `unsafe` despite `forbid(unsafe_code)`.
#![forbid(unsafe_code, unstable_features)]
#![feature(allow_internal_unsafe)]

#[allow_internal_unsafe]
macro_rules! sneak {
    () => {
        unsafe { core::ptr::read(&1u8) }
    };
}

fn main() {
    let _ = sneak!();
}
