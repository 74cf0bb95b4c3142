//! A gate with plain values and a shared handle compiles.
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
    flexos_gate::exports!(write(i32, flexos_gate::SharedRef<'_>) -> Result<usize, flexos_gate::abi::Errno>);
    pub fn write(fd: i32, data: flexos_gate::SharedRef<'_>) -> Result<usize, flexos_gate::abi::Errno> {
        let _ = fd;
        Ok(data.len())
    }
}

fn main() {
    let buf = flexos_gate::SharedBuf::from_slice(b"abc");
    let n = flexos_gate::gate!(callee::write(3, buf.shared()));
    assert_eq!(n, Ok(3));
}
