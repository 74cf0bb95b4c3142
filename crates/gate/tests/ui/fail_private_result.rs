//! A callee cannot hand out a reference to its private memory either.
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
    flexos_gate::exports!(leak() -> Box<[u8; 16]>);
    pub fn leak() -> Box<[u8; 16]> {
        Box::new([0; 16])
    }
}

fn main() {
    let _ = flexos_gate::gate!(callee::leak());
}
