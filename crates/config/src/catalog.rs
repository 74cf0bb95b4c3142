//! What the image can be built from: the components and the applications.

/// The language a component is written in; it decides which hardening applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// A Rust crate: hardened through cargo profile settings.
    Rust,
    /// C code compiled by the crate's build script: hardened through compiler flags.
    C,
}

/// One component that a configuration may place and harden.
#[derive(Clone, Copy, Debug)]
pub struct ComponentInfo {
    /// The name used in configurations (`[component.NAME]`).
    pub name: &'static str,
    /// The cargo package that implements it.
    pub package: &'static str,
    /// Which hardening options apply.
    pub language: Language,
    /// The applications whose images contain it; empty: every image.
    pub apps: &'static [&'static str],
    /// Components that must share its compartment, with the reason.
    pub colocated_with: Option<(&'static str, &'static str)>,
    /// Whether its code may contain `unsafe` (C code, or a Rust crate that
    /// does not `#![forbid(unsafe_code)]`): only there can `kasan` find anything.
    pub unsafe_code: bool,
}

/// An application's image: the package that builds it and its binary.
#[derive(Clone, Copy, Debug)]
pub struct ImageInfo {
    /// The application (`app = "..."` in configurations).
    pub app: &'static str,
    /// The cargo package.
    pub package: &'static str,
    /// The binary (`cargo build --bin`).
    pub binary: &'static str,
}

// `COMPONENTS` (every component known to the build, in catalog order),
// `APPS`, `NETWORK_APPS` and `IMAGES`, generated from the `flexos.toml`
// manifest in each component's and image's folder (build.rs). The
// allocator (`flexos-alloc`) has none: it is part of the trusted core and
// serves every compartment its own heap, so it has no placement of its own
// (see docs/architecture.md). `probe` is the test image of the gate
// benchmark and the attack tests.
include!(concat!(env!("OUT_DIR"), "/catalog.rs"));

/// The image package and binary of application `app`.
pub fn image_info(app: &str) -> Option<&'static ImageInfo> {
    IMAGES.iter().find(|i| i.app == app)
}

/// Looks a component up by its configuration name.
pub fn component_info(name: &str) -> Option<&'static ComponentInfo> {
    COMPONENTS.iter().find(|c| c.name == name)
}

impl ComponentInfo {
    /// Whether this component is part of an image of `app`.
    pub fn in_app(&self, app: &str) -> bool {
        self.apps.is_empty() || self.apps.contains(&app)
    }
}
