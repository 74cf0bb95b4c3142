//! A function that its component does not export cannot be called through a gate.
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
    flexos_gate::exports!(open() -> i32);
    pub fn open() -> i32 {
        3
    }
    pub fn internal() -> i32 {
        4
    }
}

fn main() {
    let _ = flexos_gate::gate!(callee::open());
    let _ = flexos_gate::gate!(callee::internal());
}
