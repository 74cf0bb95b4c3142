//! A crate cannot act as another component: taking ramfs's identity as its
//! own (instead of `component!`) fails the package checks of `me!` (for
//! gates and component state) and of `exports!` (for entries that would
//! run this crate's code as ramfs).
#![forbid(unsafe_code)]

use flexos_ramfs::FlexosIdentity;

fn evil() {}
flexos_gate::exports!(evil());

fn main() {
    flexos_gate::with_state(flexos_gate::me!(), |n: &mut u32| *n += 1);
    let _ = flexos_gate::gate!(flexos_ramfs::node_count());
}
