//! The library behind the `flexos` command: building images from
//! configurations ([`build`]), benchmarking them ([`bench`], [`gatebench`]) and the static
//! checks run in CI ([`audit`]), and exploring spaces of configurations ([`explore`]).
#![forbid(unsafe_code)]

pub mod audit;
pub mod bench;
pub mod build;
pub mod explore;
pub mod gatebench;
pub mod guest;
pub mod hardenbench;
pub mod netbench;
pub mod netns;

use std::path::PathBuf;

/// The identity the gate benchmark's own calls use (the default compartment).
const FLEXOS_COMPONENT: flexos_gate::layout::Component = gatebench::CALLER;

/// The root of the FlexOS workspace: `FLEXOS_ROOT`, or where this tool was built from.
pub fn workspace_root() -> PathBuf {
    match std::env::var_os("FLEXOS_ROOT") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root exists"),
    }
}

/// Exit codes that scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The configuration is invalid.
    pub const BAD_CONFIG: i32 = 1;
    /// Wrong command-line usage (clap also uses 2).
    pub const USAGE: i32 = 2;
    /// Building the image failed.
    pub const BUILD_FAILED: i32 = 3;
    /// A benchmark run failed or gave wrong results.
    pub const BENCH_FAILED: i32 = 4;
    /// A static check found violations.
    pub const AUDIT_FAILED: i32 = 5;
    /// The guest test failed (a check, the negative control, or the guest itself).
    pub const GUEST_FAILED: i32 = 6;
}
