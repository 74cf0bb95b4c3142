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
}

include!(concat!(env!("OUT_DIR"), "/layout.rs"));

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
