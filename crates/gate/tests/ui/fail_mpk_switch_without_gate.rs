//! The `mpk` mechanism's switches run any closure with another
//! compartment's rights, so they are `unsafe` to call: a component (which
//! forbids `unsafe`) cannot call them, only the gate crate can.
#![forbid(unsafe_code)]

fn evil() -> i32 {
    4
}

fn main() {
    let _ = flexos_gate::mpk::gate::<0, 1, _, _>(evil);
    let _ = unsafe { flexos_gate::mpk::run_in(1, evil) };
}
