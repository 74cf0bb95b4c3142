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
pub mod mem;
pub mod memory;
pub mod net;
pub mod pkey;
pub mod process;
pub mod random;

/// Ends the image at once (after a message on the console has said why).
pub fn process_abort() -> ! {
    std::process::abort()
}
