//! A reference to private memory cannot be passed through a gate.
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
    flexos_gate::exports!(write(i32, &[u8]) -> usize);
    pub fn write(fd: i32, data: &[u8]) -> usize {
        let _ = fd;
        data.len()
    }
}

fn main() {
    let private = vec![1u8, 2, 3];
    flexos_gate::gate!(callee::write(3, &private[..]));
}
