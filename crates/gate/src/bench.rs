//! Empty calls through the gate's own code paths, for `flexos bench gates`:
//! the benchmark's caller and callee are identities of this crate (ids 30
//! and 31, past every component's), so the tool needs no identity of its own.

use crate::{Caller, Entry, Identity, call, cross_fcall};
use flexos_layout::Component;
use std::hint::black_box;

pub(crate) struct BenchCaller;
struct BenchCallee;
struct BenchOther;

// SAFETY: the benchmark's own identities, used only in this module.
unsafe impl Identity for BenchCaller {
    const COMPONENT: Component =
        Component { id: 29, name: "bench-caller", compartment: 0, hardening: &[], package: "" };
    const PACKAGE: &'static str = env!("CARGO_PKG_NAME");
}
// SAFETY: as above.
unsafe impl Identity for BenchCallee {
    const COMPONENT: Component =
        Component { id: 30, name: "bench-callee", compartment: 0, hardening: &[], package: "" };
    const PACKAGE: &'static str = env!("CARGO_PKG_NAME");
}
// SAFETY: as above; compartment 1 is reached only by `cross_fcall`.
unsafe impl Identity for BenchOther {
    const COMPONENT: Component = Component { id: 31, name: "bench-other", compartment: 1, hardening: &[], package: "" };
    const PACKAGE: &'static str = env!("CARGO_PKG_NAME");
}

#[inline(never)]
fn empty(x: u64) -> u64 {
    black_box(x)
}

struct EmptySame;
struct EmptyOther;

// SAFETY: `empty` is this module's function, run with the callee's rights.
unsafe impl Entry for EmptySame {
    type Callee = BenchCallee;
    const INDEX: u32 = 0;
    type Function = fn(u64) -> u64;
    const FUNCTION: Self::Function = empty;
}
// SAFETY: as above.
unsafe impl Entry for EmptyOther {
    type Callee = BenchOther;
    const INDEX: u32 = 0;
    type Function = fn(u64) -> u64;
    const FUNCTION: Self::Function = empty;
}

/// The benchmark caller's token (also for this crate's unit tests).
pub(crate) fn caller() -> Caller<BenchCaller> {
    // SAFETY: the benchmark's own identity.
    unsafe { Caller::new() }
}

/// An empty call through a gate inside one compartment.
pub fn same_compartment(x: u64) -> u64 {
    call::<0, 0, BenchCaller, EmptySame, _, _>(caller(), (x,))
}

/// An empty call through an `fcall` gate into another compartment.
pub fn other_compartment(x: u64) -> u64 {
    // SAFETY: the benchmark's own caller identity; `flexos bench gates`
    // runs in the tool's process, which has no `mpk` compartments.
    unsafe { cross_fcall::<BenchCaller, EmptyOther, _, _>(caller(), (x,)) }
}
