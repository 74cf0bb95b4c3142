//! A crate calls another component through a gate.
#![forbid(unsafe_code)]
flexos_gate::component!(image);

fn main() {
    let root = flexos_gate::gate!(flexos_ramfs::root());
    assert_eq!(flexos_gate::gate!(flexos_ramfs::stat(root)).map(|s| s.kind), Ok(flexos_gate::abi::FileKind::Dir));
}
