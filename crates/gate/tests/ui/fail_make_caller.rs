//! A `Caller` token (the right to act as a component) is made only by
//! `me!`, for the crate's own identity; building one by hand needs `unsafe`.
#![forbid(unsafe_code)]
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
}

fn main() {
    let vfs = flexos_gate::Caller::<callee::FlexosIdentity>::new();
    flexos_gate::with_state(vfs, |n: &mut u32| *n += 1);
}
