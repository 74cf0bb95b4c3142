//! The compartment layout of the image being built, as constants.
//!
//! `flexos build` sets `FLEXOS_CONFIG` to the configuration file; this crate's
//! build script validates it and generates the constants below, so that every
//! gate knows its caller's and callee's compartments at compile time. Without
//! `FLEXOS_CONFIG` (plain `cargo build`/`cargo test`), every component is in
//! one `fcall` compartment.
#![no_std]
#![forbid(unsafe_code)]

/// An isolation mechanism (see `flexos_config::Mechanism`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// Function calls, no isolation.
    Fcall,
    /// Protection keys.
    Mpk,
    /// Separate processes.
    Proc,
    /// KVM virtual machines.
    Kvm,
}

/// One compartment of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compartment {
    /// Its name in the configuration.
    pub name: &'static str,
    /// What protects it.
    pub mechanism: Mechanism,
    /// Its data-sharing strategy's configuration name.
    pub sharing: &'static str,
}

/// A component's identity and placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    /// Index into [`component::ALL`].
    pub id: usize,
    /// Its configuration name.
    pub name: &'static str,
    /// Index into [`COMPARTMENTS`].
    pub compartment: usize,
    /// Its hardening options' configuration names.
    pub hardening: &'static [&'static str],
    /// The cargo package that implements it (empty for [`IMAGE`]).
    pub package: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/layout.rs"));

/// The most component ids an image has (its placeable components, then
/// the application's own code and test components): the size of the
/// gates' export registry, state tables and counters.
pub const MAX_COMPONENTS: usize = 32;
const _: () = assert!(component::ALL.len() < MAX_COMPONENTS, "more components than MAX_COMPONENTS");

impl Mechanism {
    /// Whether compartments with this mechanism run in a domain of their own
    /// (another process or a VM), reached by remote calls.
    pub const fn is_remote(self) -> bool {
        matches!(self, Mechanism::Proc | Mechanism::Kvm)
    }
}

/// The domain (address space) that runs compartment `compartment`: its own
/// index for `proc` and `kvm` compartments, 0 (the host process, which runs
/// the default compartment) for the others.
pub const fn domain_of(compartment: usize) -> usize {
    if COMPARTMENTS[compartment].mechanism.is_remote() { compartment } else { 0 }
}

/// Whether any compartment runs in a domain of its own.
pub const fn has_remote_domains() -> bool {
    let mut i = 0;
    while i < COMPARTMENTS.len() {
        if COMPARTMENTS[i].mechanism.is_remote() {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether any compartment has mechanism `m`.
pub const fn has_mechanism(m: Mechanism) -> bool {
    let mut i = 0;
    while i < COMPARTMENTS.len() {
        if COMPARTMENTS[i].mechanism as u8 == m as u8 {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the whole image is one protection domain: every compartment is
/// `fcall`, so nothing but the image's own code, in one address space with
/// one set of rights, can write any of its memory (the shared heap too).
pub const fn is_one_domain() -> bool {
    !has_mpk() && !has_remote_domains()
}

/// Whether any compartment uses protection keys (the image then needs a CPU with PKU).
pub const fn has_mpk() -> bool {
    SHARED_PKEY != 0
}

/// The stack a compartment's code runs on, per thread: compartments that
/// share stacks (`fcall`, `mpk` with `shared-stack`) use the thread's shared
/// stack ([`SHARED_STACKS`]); an `mpk` compartment with `dss` or `heap` has
/// a private stack of its own, numbered by its index.
/// (Indices past the image's compartments, which no code runs in, map to
/// the shared stacks.)
pub const fn stack_domain(compartment: usize) -> usize {
    if compartment >= COMPARTMENTS.len() {
        return SHARED_STACKS;
    }
    let c = COMPARTMENTS[compartment];
    match c.mechanism {
        Mechanism::Mpk if !str_eq(c.sharing, "shared-stack") => compartment,
        _ => SHARED_STACKS,
    }
}

/// The [`stack_domain`] of every compartment whose stacks are shared.
pub const SHARED_STACKS: usize = 16;

/// The identity of an image's own code that is no placeable component (a
/// test image's `main`): the default compartment, an id past the table's.
pub const IMAGE: Component =
    Component { id: component::ALL.len(), name: "image", compartment: 0, hardening: &[], package: "" };

/// Whether package `package` may declare itself component `c`: always
/// without a configuration (one `fcall` compartment holds everything, so
/// an identity grants nothing), else only the package the catalog names.
pub const fn package_may_be(c: Component, package: &str) -> bool {
    !CONFIGURED || str_eq(c.package, package)
}

/// Whether package `package`, a binary when `is_binary`, may declare itself
/// the [`IMAGE`]: always without a configuration, else only a binary whose
/// package is no component of the catalog (an application's binary is its
/// component and nothing else).
pub const fn package_may_be_image(package: &str, is_binary: bool) -> bool {
    if !CONFIGURED {
        return true;
    }
    if !is_binary {
        return false;
    }
    let mut i = 0;
    while i < component::ALL.len() {
        if str_eq(component::ALL[i].package, package) {
            return false;
        }
        i += 1;
    }
    true
}

/// String equality usable in constants.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether any component of the image has hardening option `option` (its configuration name).
pub const fn any_hardened_with(option: &str) -> bool {
    let mut i = 0;
    while i < component::ALL.len() {
        let h = component::ALL[i].hardening;
        let mut j = 0;
        while j < h.len() {
            if str_eq(h[j], option) {
                return true;
            }
            j += 1;
        }
        i += 1;
    }
    false
}
