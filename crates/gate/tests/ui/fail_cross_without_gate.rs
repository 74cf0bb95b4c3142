//! The functions behind `gate!` that take code to run in another
//! compartment (the crossing, the `mpk` switch) are private to the gate
//! crate: a component can only `call` a sealed entry.
#![forbid(unsafe_code)]

fn main() {
    let _ = flexos_gate::cross::<(), fn() -> i32, i32>;
    let _ = flexos_gate::mpk::gate::<0, 1, fn() -> i32, i32>;
}
