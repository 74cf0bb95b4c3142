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
}

/// Every component known to the build, core components first.
///
/// The allocator (`flexos-alloc`) is not listed: it is part of the trusted
/// core and serves every compartment its own heap, so it has no placement of
/// its own (see docs/architecture.md).
pub const COMPONENTS: &[ComponentInfo] = &[
    ComponentInfo { name: "sched", package: "flexos-sched", language: Language::Rust, apps: &[], colocated_with: None },
    ComponentInfo { name: "time", package: "flexos-time", language: Language::Rust, apps: &[], colocated_with: None },
    ComponentInfo { name: "vfs", package: "flexos-vfs", language: Language::Rust, apps: &[], colocated_with: None },
    ComponentInfo { name: "ramfs", package: "flexos-ramfs", language: Language::Rust, apps: &[], colocated_with: None },
    ComponentInfo {
        name: "libc",
        package: "flexos-libc",
        language: Language::Rust,
        apps: &[],
        colocated_with: Some(("sqlite", "C code calls the C library directly, without gates")),
    },
    ComponentInfo {
        name: "sqlite",
        package: "flexos-app-sqlite",
        language: Language::C,
        apps: &["sqlite"],
        colocated_with: None,
    },
    ComponentInfo {
        name: "probe",
        package: "flexos-probe",
        language: Language::Rust,
        apps: &["probe"],
        colocated_with: None,
    },
    ComponentInfo {
        name: "net",
        package: "flexos-net",
        language: Language::Rust,
        apps: NETWORK_APPS,
        colocated_with: None,
    },
    ComponentInfo {
        name: "netdev",
        package: "flexos-netdev",
        language: Language::Rust,
        apps: NETWORK_APPS,
        colocated_with: Some(("net", "the stack drives the device frame by frame, without gates")),
    },
    ComponentInfo {
        name: "kv",
        package: "flexos-app-kv",
        language: Language::Rust,
        apps: &["kv"],
        colocated_with: None,
    },
    ComponentInfo {
        name: "httpd",
        package: "flexos-app-httpd",
        language: Language::Rust,
        apps: &["httpd"],
        colocated_with: None,
    },
    ComponentInfo {
        name: "iperf",
        package: "flexos-app-iperf",
        language: Language::Rust,
        apps: &["iperf"],
        colocated_with: None,
    },
];

/// The applications that use the network stack.
pub const NETWORK_APPS: &[&str] = &["kv", "httpd", "iperf"];

/// The applications an image can be built for (`probe` is the test image of
/// the gate benchmark and the attack tests).
pub const APPS: &[&str] = &["sqlite", "probe", "kv", "httpd", "iperf"];

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
