//! The configuration of one FlexOS image (DESIGN section 4).
//!
//! A configuration is a TOML file that names the application, the
//! compartments (name, isolation mechanism, data-sharing strategy, which one is
//! the default) and, per component, its compartment and software hardening.
//! [`load`] parses and validates a file; every problem is reported as a
//! [`ConfigError`] that names the file, line and column and says how to fix it.
//! The result is a [`Layout`]: every component of the image mapped to a
//! compartment index, which the build turns into compile-time constants.
#![forbid(unsafe_code)]

mod catalog;
mod error;
mod model;

pub use catalog::{APPS, COMPONENTS, ComponentInfo, Language, component_info};
pub use error::ConfigError;
pub use model::{Compartment, Hardening, Layout, Mechanism, Placement, Sharing};

use std::path::Path;

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Layout, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::whole_file(
            path,
            format!("cannot read the configuration: {e}"),
            "check the path; configurations live under configs/",
        )]
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Layout, Vec<ConfigError>> {
    model::parse(path, text)
}

/// For build scripts: the layout of the configuration named by the
/// `FLEXOS_CONFIG` environment variable (with cargo's rerun directives), or
/// [`single_compartment`]`(default_app)` when it is unset. An invalid
/// configuration prints its errors and fails the build.
pub fn layout_for_build(default_app: &str) -> Layout {
    println!("cargo:rerun-if-env-changed=FLEXOS_CONFIG");
    let Some(path) = std::env::var_os("FLEXOS_CONFIG") else { return single_compartment(default_app) };
    let path = Path::new(&path);
    println!("cargo:rerun-if-changed={}", path.display());
    load(path).unwrap_or_else(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        panic!("invalid FlexOS configuration {}", path.display());
    })
}

/// The layout used when no configuration is given: every component of `app`
/// in one `fcall` compartment named `main`, no hardening.
pub fn single_compartment(app: &str) -> Layout {
    let text = format!("app = \"{app}\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n");
    parse(Path::new("<built-in default>"), &text).expect("the built-in default configuration is valid")
}
