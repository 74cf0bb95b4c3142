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
mod schema;

pub use catalog::{
    APPS, COMPONENTS, ComponentInfo, IMAGES, ImageInfo, Language, NETWORK_APPS, component_info, image_info,
};
pub use error::ConfigError;
pub use model::{Compartment, Hardening, Layout, MAX_ERRORS, MAX_MPK_COMPARTMENTS, Mechanism, Placement, Sharing};

use std::path::Path;

/// The largest configuration file read. Configurations are a few dozen
/// lines; a larger file is refused before it is read (`/dev/zero` too).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads, parses and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Layout, Vec<ConfigError>> {
    let unreadable = |e: std::io::Error| {
        let fix = match e.kind() {
            std::io::ErrorKind::NotFound => "check the path; configurations live under configs/",
            std::io::ErrorKind::IsADirectory => "name a configuration file, not a folder",
            std::io::ErrorKind::PermissionDenied => "make the file readable",
            _ => "name a readable configuration file",
        };
        vec![ConfigError::whole_file(path, format!("cannot read the configuration: {e}"), fix)]
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(unreadable)?, MAX_CONFIG_BYTES + 1),
        &mut bytes,
    )
    .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(vec![ConfigError::whole_file(
            path,
            format!("the configuration is larger than {} KiB", MAX_CONFIG_BYTES / 1024),
            "a configuration is a short TOML file (see configs/); name the right file",
        )]);
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bad = e.as_bytes()[good];
        let text = std::str::from_utf8(&e.as_bytes()[..good]).expect("valid up to here");
        vec![ConfigError::at(
            path,
            text,
            good,
            format!("the file is not UTF-8 text (byte 0x{bad:02x})"),
            "save the file as UTF-8 (TOML files are UTF-8)",
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

/// For build scripts: writes `packed_files.rs` into `out_dir`, a constant
/// `PACKED_FILES: &[(&str, &[u8])]` holding every file under the layout's
/// `files` folder (path in the image, contents), with cargo's rerun
/// directives. Without a `files` folder the list is empty.
pub fn write_packed_files(layout: &Layout, out_dir: &Path) {
    use std::fmt::Write as _;
    let mut packed = String::from(
        "/// Files packed into the image at build time: (path in the image, contents).\npub const PACKED_FILES: &[(&str, &[u8])] = &[\n",
    );
    if let Some(dir) = &layout.files {
        let mut stack = vec![dir.clone()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            println!("cargo:rerun-if-changed={}", d.display());
            let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot read {}: {e}", d.display()));
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        for f in files {
            println!("cargo:rerun-if-changed={}", f.display());
            let rel = f.strip_prefix(dir).expect("under the folder").to_string_lossy().replace('\\', "/");
            writeln!(packed, "    ({:?}, include_bytes!({:?})),", format!("/{rel}"), f.display().to_string())
                .expect("writing to a String");
        }
    }
    packed.push_str("];\n");
    std::fs::write(out_dir.join("packed_files.rs"), packed).expect("cannot write packed_files.rs");
}
