//! A crate cannot call another component's exported function except
//! through a gate: `exports!` leaves the functions private to their crate,
//! so a direct call, which would run the callee's code with the caller's
//! rights on the caller's copy of its state, does not build.
#![forbid(unsafe_code)]
flexos_gate::component!(image);

fn main() {
    let _ = flexos_ramfs::root();
    let _ = flexos_ramfs::node_count();
}
