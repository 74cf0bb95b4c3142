//! A component cannot make an entry of its choosing (code to run in the
//! callee's compartment) or an identity of its choosing: implementing
//! `Entry` or `Identity` needs `unsafe`.
#![forbid(unsafe_code)]
flexos_gate::component!(SQLITE);

mod callee {
    flexos_gate::component!(VFS);
    flexos_gate::exports!(open() -> i32);
    pub(crate) fn open() -> i32 {
        3
    }
}

fn evil() -> i32 {
    4
}

struct ForgedEntry;
unsafe impl flexos_gate::Entry for ForgedEntry {
    type Callee = callee::FlexosIdentity;
    const INDEX: u32 = 0;
    type Function = fn() -> i32;
    const FUNCTION: Self::Function = evil;
}

struct ForgedIdentity;
unsafe impl flexos_gate::Identity for ForgedIdentity {
    const COMPONENT: flexos_gate::layout::Component = flexos_gate::layout::component::VFS;
    const PACKAGE: &'static str = "flexos-vfs";
}

fn main() {}
