//! Turns the image configuration (the file named by `FLEXOS_CONFIG`, or one
//! compartment holding everything when it is unset) into Rust constants.

use flexos_config::{COMPONENTS, Layout};
use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let layout: Layout = flexos_config::layout_for_build("sqlite");
    let mut out = String::new();
    writeln!(out, "/// The configuration file this image was built from.").unwrap();
    writeln!(out, "pub const SOURCE: &str = {:?};", layout.source.display().to_string()).unwrap();
    writeln!(out, "/// Whether the image is built from a configuration file (`FLEXOS_CONFIG`).").unwrap();
    writeln!(out, "pub const CONFIGURED: bool = {};", std::env::var_os("FLEXOS_CONFIG").is_some()).unwrap();
    writeln!(out, "/// The application.").unwrap();
    writeln!(out, "pub const APP: &str = {:?};", layout.app).unwrap();
    writeln!(out, "/// Whether the application uses the network stack (and so the network device).").unwrap();
    writeln!(out, "pub const APP_USES_NETWORK: bool = {};", flexos_config::NETWORK_APPS.contains(&layout.app.as_str()))
        .unwrap();
    writeln!(out, "/// The compartments; index 0 is the default.").unwrap();
    writeln!(out, "pub const COMPARTMENTS: &[Compartment] = &[").unwrap();
    for c in &layout.compartments {
        let mech = match c.mechanism.name() {
            "fcall" => "Fcall",
            "mpk" => "Mpk",
            "proc" => "Proc",
            _ => "Kvm",
        };
        writeln!(
            out,
            "    Compartment {{ name: {:?}, mechanism: Mechanism::{mech}, sharing: {:?} }},",
            c.name,
            c.sharing.name()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    // Protection keys: mpk compartments get 1, 2, ... in order, shared memory the next one.
    let mut keys = Vec::new();
    let mut next = 1u32;
    for c in &layout.compartments {
        if c.mechanism.name() == "mpk" {
            keys.push(next);
            next += 1;
        } else {
            keys.push(0);
        }
    }
    let shared_key = if next > 1 { next } else { 0 };
    // The trusted core's statics get the key after the shared one: read-only
    // for every `mpk` compartment but the default one (docs/mpk.md).
    let core_key = if next > 1 { next + 1 } else { 0 };
    let pkru: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, &own)| {
            if own == 0 {
                return "0x0".to_string();
            }
            let denied = (1..16u32)
                .filter(|&k| k != own && k != shared_key && k != core_key)
                .fold(0u32, |v, k| v | (3 << (2 * k)));
            let read_only_core = if i == 0 { 0 } else { 2 << (2 * core_key) };
            format!("{:#010x}", denied | read_only_core)
        })
        .collect();
    // The fault reporter's rights (the kernel runs a signal handler with key 0
    // only): key 0, and the core's statics to read.
    let handler_pkru = if core_key == 0 {
        0
    } else {
        (1..16u32).filter(|&k| k != core_key).fold(0u32, |v, k| v | (3 << (2 * k))) | (2 << (2 * core_key))
    };
    writeln!(out, "/// The protection key of each compartment's memory (0: not an `mpk` compartment).").unwrap();
    writeln!(out, "pub const PKEYS: &[u32] = &{keys:?};").unwrap();
    writeln!(out, "/// The protection key of the shared memory (0 when no compartment uses `mpk`).").unwrap();
    writeln!(out, "pub const SHARED_PKEY: u32 = {shared_key};").unwrap();
    writeln!(out, "/// The protection key of the trusted core's statics (0 when no compartment uses `mpk`).").unwrap();
    writeln!(out, "pub const CORE_PKEY: u32 = {core_key};").unwrap();
    writeln!(out, "/// The PKRU value of the fault reporter: key 0, and the core's statics read-only.").unwrap();
    writeln!(out, "pub const HANDLER_PKRU: u32 = {handler_pkru:#010x};").unwrap();
    writeln!(
        out,
        "/// The PKRU value while each compartment runs: its own key, the shared key and key 0 allowed, the core's statics read-only (writable for the default compartment)."
    )
    .unwrap();
    writeln!(out, "pub const PKRU: &[u32] = &[{}];", pkru.join(", ")).unwrap();
    writeln!(out, "/// The compartments' names, by index.").unwrap();
    let names: Vec<&str> = layout.compartments.iter().map(|c| c.name.as_str()).collect();
    writeln!(out, "pub const COMPARTMENT_NAMES: &[&str] = &{names:?};").unwrap();
    writeln!(out, "/// Every component's identity and placement.").unwrap();
    writeln!(out, "pub mod component {{").unwrap();
    writeln!(out, "    use super::Component;").unwrap();
    for (id, info) in COMPONENTS.iter().enumerate() {
        let placement = layout.placement(info.name);
        let compartment = placement.map_or(0, |p| p.compartment);
        let hardening: Vec<&str> = placement.map(|p| p.harden.iter().map(|h| h.name()).collect()).unwrap_or_default();
        writeln!(out, "    /// The `{}` component.", info.name).unwrap();
        writeln!(
            out,
            "    pub const {}: Component = Component {{ id: {id}, name: {:?}, compartment: {compartment}, hardening: &{hardening:?}, package: {:?} }};",
            info.name.to_uppercase(),
            info.name,
            info.package
        )
        .unwrap();
    }
    writeln!(out, "    /// Every component, indexed by id.").unwrap();
    let all: Vec<String> = COMPONENTS.iter().map(|c| c.name.to_uppercase()).collect();
    writeln!(out, "    pub const ALL: &[Component] = &[{}];", all.join(", ")).unwrap();
    writeln!(out, "}}").unwrap();
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("layout.rs");
    std::fs::write(dest, out).unwrap();
}
