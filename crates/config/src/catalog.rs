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
    /// `Some(app)` when the component is an application, present only in that app's image.
    pub app: Option<&'static str>,
    /// Components that must share its compartment, with the reason.
    pub colocated_with: Option<(&'static str, &'static str)>,
}

/// Every component known to the build, core components first.
///
/// The allocator (`flexos-alloc`) is not listed: it is part of the trusted
/// core and serves every compartment its own heap, so it has no placement of
/// its own (see docs/architecture.md).
pub const COMPONENTS: &[ComponentInfo] = &[
    ComponentInfo { name: "sched", package: "flexos-sched", language: Language::Rust, app: None, colocated_with: None },
    ComponentInfo { name: "time", package: "flexos-time", language: Language::Rust, app: None, colocated_with: None },
    ComponentInfo { name: "vfs", package: "flexos-vfs", language: Language::Rust, app: None, colocated_with: None },
    ComponentInfo { name: "ramfs", package: "flexos-ramfs", language: Language::Rust, app: None, colocated_with: None },
    ComponentInfo {
        name: "libc",
        package: "flexos-libc",
        language: Language::Rust,
        app: None,
        colocated_with: Some(("sqlite", "C code calls the C library directly, without gates")),
    },
    ComponentInfo {
        name: "sqlite",
        package: "flexos-app-sqlite",
        language: Language::C,
        app: Some("sqlite"),
        colocated_with: None,
    },
    ComponentInfo {
        name: "probe",
        package: "flexos-probe",
        language: Language::Rust,
        app: Some("probe"),
        colocated_with: None,
    },
];

/// The applications an image can be built for (`probe` is the test image of
/// the gate benchmark and the attack tests).
pub const APPS: &[&str] = &["sqlite", "probe"];

/// Looks a component up by its configuration name.
pub fn component_info(name: &str) -> Option<&'static ComponentInfo> {
    COMPONENTS.iter().find(|c| c.name == name)
}

impl ComponentInfo {
    /// Whether this component is part of an image of `app`.
    pub fn in_app(&self, app: &str) -> bool {
        self.app.is_none_or(|a| a == app)
    }
}
