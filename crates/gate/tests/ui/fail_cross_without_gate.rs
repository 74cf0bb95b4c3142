//! The crossing behind `gate!`, which takes the code to run in the other
//! compartment, is private to the gate crate: a component can only `call`
//! a sealed entry.
#![forbid(unsafe_code)]

fn main() {
    let _ = flexos_gate::cross::<(), fn() -> i32, i32>;
}
