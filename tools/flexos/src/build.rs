//! Building images: one cargo build per configuration, in its own target
//! folder, so that switching configurations rebuilds nothing and each
//! configuration is rebuilt only when its inputs change.
//!
//! A configuration built for the first time does not start from nothing:
//! its target folder is first copied from the last one built for the same
//! application and build family (the *seed*), so cargo compiles only what
//! differs (components whose placement constants or hardening changed);
//! dependencies are reused, and the SQLite amalgamation is taken from a
//! cache of C objects keyed by their flags and sources (`FLEXOS_C_CACHE`).
//! A lock file per target folder keeps a build and a copy of it apart.

use flexos_config::{Hardening, Language, Layout, Mechanism, component_info};
use indicatif::{ProgressBar, ProgressStyle};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Optimized build (the default); `false` for a debug build.
    pub release: bool,
    /// Count gate crossings (always on in debug builds).
    pub gate_stats: bool,
    /// Show progress on standard error.
    pub progress: bool,
    /// Link the image statically (C library included), so that it runs in
    /// a guest that has nothing but the image (`flexos guest-test`).
    pub static_link: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { release: true, gate_stats: false, progress: true, static_link: false }
    }
}

/// Whether the image of `layout` is linked statically: when asked, and
/// always for images with `mpk` compartments. Keys do not protect code, so
/// every `wrpkru` an attacker could jump to must be a checked gate site;
/// a statically linked image holds all its code (`flexos audit wrpkru`
/// checks it), while the shared C library has an unchecked `wrpkru` in
/// `pkey_set`.
pub fn links_statically(layout: &Layout, options: &BuildOptions) -> bool {
    options.static_link || layout.compartments.iter().any(|c| c.mechanism == flexos_config::Mechanism::Mpk)
}

/// Why the image of `layout` cannot run on this machine, if it cannot: it
/// has `mpk` compartments and the CPU (or kernel) gives no protection keys.
pub fn mpk_warning(layout: &Layout) -> Option<String> {
    let mpk: Vec<&str> = layout
        .compartments
        .iter()
        .filter(|c| c.mechanism == flexos_config::Mechanism::Mpk)
        .map(|c| c.name.as_str())
        .collect();
    if mpk.is_empty() {
        return None;
    }
    let why = flexos_platform::pkey::available().err()?;
    Some(format!(
        "compartment(s) {} use mechanism \"mpk\", but this machine has no protection keys ({why}): the image builds, \
         but refuses to start here; run it on a CPU with PKU, or run the mpk checks in a QEMU guest with `flexos guest-test`",
        mpk.join(", ")
    ))
}

/// The target triple of statically linked builds.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The cargo package and binary of an application's image.
pub fn image_package(app: &str) -> (&'static str, &'static str) {
    let info = flexos_config::image_info(app).unwrap_or_else(|| panic!("no image package for app {app:?}"));
    (info.package, info.binary)
}

/// Where the image of `layout` is built: `target/flexos/<config stem>-<hash of its canonical path and options>`.
pub fn output_dir(root: &Path, layout: &Layout, options: &BuildOptions) -> PathBuf {
    let mut h = DefaultHasher::new();
    // The same file named by another path (relative, through a link) is the same configuration.
    std::fs::canonicalize(&layout.source).unwrap_or_else(|_| layout.source.clone()).hash(&mut h);
    options.release.hash(&mut h);
    options.gate_stats.hash(&mut h);
    links_statically(layout, options).hash(&mut h);
    let stem = layout.source.file_stem().map_or("image".into(), |s| s.to_string_lossy().into_owned());
    root.join("target/flexos").join(format!("{stem}-{:08x}", h.finish() as u32))
}

/// Where the C part of an image is cached, keyed by its flags and sources.
pub fn c_cache(root: &Path) -> PathBuf {
    root.join("target/flexos/c-cache")
}

/// The file that names the seed of `layout`'s application and build family.
fn seed_file(root: &Path, layout: &Layout, options: &BuildOptions) -> PathBuf {
    let family = format!(
        "{}-{}{}{}",
        layout.app,
        if options.release { "release" } else { "debug" },
        if options.gate_stats { "-stats" } else { "" },
        if links_statically(layout, options) { "-static" } else { "" }
    );
    root.join("target/flexos/seeds").join(family)
}

/// Opens and locks (exclusively) the lock file of target folder `cargo_dir`.
fn lock_target(cargo_dir: &Path) -> Result<std::fs::File, String> {
    let path = cargo_dir.with_extension("lock");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

/// Gives the new target folder `cargo_dir` a copy of the seed's, if there
/// is a seed and `cargo_dir` does not exist yet.
fn seed_target(root: &Path, layout: &Layout, options: &BuildOptions, cargo_dir: &Path) {
    if cargo_dir.exists() {
        return;
    }
    let Some(seed) = std::fs::read_to_string(seed_file(root, layout, options)).ok().map(PathBuf::from) else {
        return;
    };
    if !seed.is_dir() || seed == cargo_dir {
        return;
    }
    let Ok(_seed_lock) = lock_target(&seed) else { return };
    let partial = cargo_dir.with_extension(format!("seeding.{}", std::process::id()));
    let copied =
        Command::new("cp").args(["-a", "--reflink=auto"]).arg(&seed).arg(&partial).status().is_ok_and(|s| s.success());
    if !copied || std::fs::rename(&partial, cargo_dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial); // a cold build then
    }
}

/// Removes the cargo target folder of `layout`'s image (keeping the image),
/// unless it is the seed of its family: for tools that build many
/// configurations once (`flexos explore`), so they do not keep a target
/// folder per configuration. A later build of the configuration starts
/// again from the seed.
pub fn drop_build_folder(root: &Path, layout: &Layout, options: &BuildOptions) {
    let cargo_dir = output_dir(root, layout, options).join("cargo");
    let seed = std::fs::read_to_string(seed_file(root, layout, options)).ok().map(PathBuf::from);
    if seed.as_deref() == Some(cargo_dir.as_path()) || !cargo_dir.is_dir() {
        return;
    }
    if let Ok(_lock) = lock_target(&cargo_dir) {
        let _ = std::fs::remove_dir_all(&cargo_dir);
    }
}

/// How cargo builds an image's Rust hardening: `--config` profile settings,
/// flags for every crate, and whether cargo needs `-Zprofile-rustflags`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RustHardening {
    /// `--config` values: per-package profile settings and rustflags.
    pub configs: Vec<String>,
    /// Flags for every crate of the image (added to `RUSTFLAGS`).
    pub rustflags: Vec<&'static str>,
    /// Whether a package has profile rustflags (cargo's unstable `profile-rustflags`).
    pub profile_rustflags: bool,
}

/// The cargo settings that implement each Rust component's hardening:
/// profile keys for `overflow-checks` and `debug-assertions`, and per
/// package rustflags for the compiler's own instrumentation
/// (`stack-protector`, `kasan`, `cfi`). Sanitizers change the ABI as rustc
/// sees it, so every crate accepts the mix; `kcfi` needs `panic=abort`,
/// which then holds for the whole image.
pub fn rust_hardening(layout: &Layout, release: bool) -> RustHardening {
    let profile = if release { "release" } else { "dev" };
    let mut out = RustHardening::default();
    let mut cfi = false;
    for p in &layout.placements {
        let Some(info) = component_info(p.component) else { continue };
        if info.language != Language::Rust {
            continue; // C hardening is applied by the component's build script.
        }
        let mut flags: Vec<&str> = Vec::new();
        let mut sanitizers: Vec<&str> = Vec::new();
        for h in &p.harden {
            match h {
                Hardening::OverflowChecks | Hardening::DebugAssertions => {
                    let key = if *h == Hardening::OverflowChecks { "overflow-checks" } else { "debug-assertions" };
                    out.configs.push(format!("profile.{profile}.package.{}.{key}=true", info.package));
                }
                Hardening::StackProtector => flags.push("-Zstack-protector=strong"),
                Hardening::Kasan => {
                    sanitizers.push("address");
                    // Our runtime has no fake stacks and does not track globals.
                    flags.extend(["-Cllvm-args=-asan-use-after-return=never", "-Cllvm-args=-asan-globals=0"]);
                }
                Hardening::Cfi => {
                    sanitizers.push("kcfi");
                    cfi = true;
                }
                Hardening::Ubsan => {}
            }
        }
        let sanitizer = (!sanitizers.is_empty()).then(|| format!("-Zsanitizer={}", sanitizers.join(",")));
        if !flags.is_empty() || sanitizer.is_some() {
            let all: Vec<String> =
                sanitizer.into_iter().chain(flags.iter().map(|f| f.to_string())).map(|f| format!("{f:?}")).collect();
            out.configs.push(format!("profile.{profile}.package.{}.rustflags=[{}]", info.package, all.join(",")));
            out.profile_rustflags = true;
        }
    }
    // Every image accepts crates built with another sanitizer (the image
    // provides the runtime itself, docs/hardening.md); set for every image,
    // hardened or not, so that hardening a component rebuilds only it and
    // the crates that depend on it, not every crate of the image.
    out.rustflags.push("-Cunsafe-allow-abi-mismatch=sanitizer");
    if cfi {
        out.configs.push(format!("profile.{profile}.panic=\"abort\""));
    }
    out
}

/// Builds the image of `layout` and returns the path of the image.
///
/// An image with `mpk` compartments is then inspected (`flexos audit
/// wrpkru`): if its code holds the bytes of a `wrpkru` outside the checked
/// gate sites (inside another instruction, typically a displacement in the
/// C library), it is re-linked with another link pad
/// ([`flexos_gate::link_pad!`]) until none is left; likewise with another
/// code pad (`flexos_platform`'s) while it holds the bytes of an `xrstor`.
/// The pads that worked are kept for the next build.
pub fn build_image(root: &Path, layout: &Layout, options: &BuildOptions) -> Result<PathBuf, String> {
    let (_, bin) = image_package(&layout.app);
    let dir = output_dir(root, layout, options);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cargo_dir = dir.join("cargo");
    seed_target(root, layout, options, &cargo_dir);
    // Held until cargo is done: a copy of this folder never sees half a build.
    let lock = lock_target(&cargo_dir)?;
    let (pad_file, code_pad_file) = (dir.join("link-pad"), dir.join("code-pad"));
    let read_pad = |f: &Path| std::fs::read_to_string(f).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let (mut pad, mut code_pad): (usize, usize) = (read_pad(&pad_file), read_pad(&code_pad_file));
    let mut built = cargo_build(root, layout, options, &dir, pad, code_pad)?;
    if layout.compartments.iter().any(|c| c.mechanism == flexos_config::Mechanism::Mpk) {
        for attempt in 1.. {
            let audit = crate::audit::wrpkru_sites(&built)?;
            if let Some(p) = audit.problems.iter().find(|p| p.problem != "not a registered gate site") {
                return Err(format!("{}: wrpkru at {:#x}: {}", built.display(), p.address, p.problem));
            }
            // The C library's lazy-binding trampolines (never run in a
            // static image) hold the only xrstor: they become ud2.
            crate::audit::disable_loader_xrstor(&built)?;
            let xrstor = crate::audit::xrstor_sites(&built)?.first().copied();
            if audit.problems.is_empty() && xrstor.is_none() {
                break;
            }
            if attempt > MAX_PAD_ATTEMPTS {
                return Err(match xrstor {
                    Some(at) if audit.problems.is_empty() => format!(
                        "{}: the code holds an xrstor at {at:#x}, which could load PKRU unchecked, with every code \
                         pad tried; an mpk image may hold none",
                        built.display()
                    ),
                    _ => format!(
                        "{}: the code holds an unchecked wrpkru at {:#x} with every link pad tried",
                        built.display(),
                        audit.problems[0].address
                    ),
                });
            }
            // A wrpkru hides in a data displacement (the link pad moves
            // data); any other xrstor, in a call's displacement (the code
            // pad moves the platform's code, KASan's reports among it).
            if audit.problems.is_empty() {
                code_pad = 64 * attempt;
            } else {
                pad = 16 * attempt;
            }
            built = cargo_build(root, layout, options, &dir, pad, code_pad)?;
        }
        std::fs::write(&pad_file, pad.to_string()).map_err(|e| format!("{}: {e}", pad_file.display()))?;
        std::fs::write(&code_pad_file, code_pad.to_string())
            .map_err(|e| format!("{}: {e}", code_pad_file.display()))?;
    }
    // Every image, of every configuration and application: component code
    // cannot use `unsafe` (the gates' seal), and components keep their state
    // with `with_state`, never in a mutable static (DESIGN 3).
    if let Some(problem) = crate::audit::unsealed_components(root)?.first() {
        return Err(format!("{problem} (the gates are sealed only if component code cannot use unsafe)"));
    }
    let statics = crate::audit::writable_statics(&built)?;
    if let Some(s) = statics.first() {
        return Err(format!(
            "{}: component crate {} keeps a mutable static, {} (in {}); {} in all. Keep component state with flexos_gate::with_state",
            built.display(),
            s.krate,
            s.symbol,
            s.section,
            statics.len()
        ));
    }
    let seed = seed_file(root, layout, options);
    if let Some(d) = seed.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(&seed, cargo_dir.to_string_lossy().as_bytes());
    let image = dir.join(bin);
    install(&built, &image)?;
    drop(lock);
    Ok(image)
}

/// Installs cargo's output `built` as `image`, unless `image` is already
/// the same build. Copied (not moved) so cargo's own output stays fresh
/// for the next incremental build; copied beside and renamed over, so an
/// instance of the old image that still runs keeps its file and a new one
/// never sees half a file (writing into a running executable fails with
/// "Text file busy").
pub fn install(built: &Path, image: &Path) -> Result<(), String> {
    let meta = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.len(), m.modified()?)));
    let (len, built_at) = meta(built).map_err(|e| format!("{}: {e}", built.display()))?;
    if meta(image).is_ok_and(|(l, installed_at)| l == len && installed_at >= built_at) {
        return Ok(());
    }
    let name = image.file_name().map_or("image".into(), |n| n.to_string_lossy().into_owned());
    let beside = image.with_file_name(format!(".{name}.{}.new", std::process::id()));
    std::fs::copy(built, &beside).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    std::fs::rename(&beside, image).map_err(|e| {
        let _ = std::fs::remove_file(&beside);
        format!("cannot install {}: {e}", image.display())
    })
}

/// How many link pads `build_image` tries before it gives up.
const MAX_PAD_ATTEMPTS: usize = 16;

/// Runs cargo for the image of `layout` with link pad `pad` and code pad
/// `code_pad`; returns the path cargo built.
fn cargo_build(
    root: &Path,
    layout: &Layout,
    options: &BuildOptions,
    dir: &Path,
    pad: usize,
    code_pad: usize,
) -> Result<PathBuf, String> {
    let (package, bin) = image_package(&layout.app);
    let config = std::fs::canonicalize(&layout.source).map_err(|e| format!("{}: {e}", layout.source.display()))?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "--color", "never", "-p", package, "--bin", bin])
        .env("FLEXOS_CONFIG", &config)
        .env("FLEXOS_LINK_PAD", pad.to_string())
        .env("FLEXOS_CODE_PAD", code_pad.to_string())
        .env("CARGO_TARGET_DIR", dir.join("cargo"))
        .env("FLEXOS_C_CACHE", c_cache(root))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if options.release {
        cmd.arg("--release");
    }
    if options.gate_stats {
        cmd.args(["--features", "flexos-gate/stats"]);
    }
    // The image links the code of the mechanisms it uses and no other.
    for (mechanism, feature) in [(Mechanism::Proc, "flexos-boot/proc"), (Mechanism::Kvm, "flexos-boot/kvm")] {
        if layout.compartments.iter().any(|c| c.mechanism == mechanism) {
            cmd.args(["--features", feature]);
        }
    }
    let hardening = rust_hardening(layout, options.release);
    let mut rustflags = hardening.rustflags.clone();
    if links_statically(layout, options) {
        // With an explicit target, RUSTFLAGS reach the image but not the build scripts.
        cmd.args(["--target", STATIC_TARGET]);
        rustflags.push("-C target-feature=+crt-static");
    }
    if !rustflags.is_empty() {
        cmd.env("RUSTFLAGS", rustflags.join(" "));
    }
    if hardening.profile_rustflags {
        cmd.arg("-Zprofile-rustflags");
    }
    for o in &hardening.configs {
        cmd.args(["--config", o]);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    let bar = if options.progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(format!("building {}", layout.source.display()));
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines().map_while(Result::ok) {
        let trimmed = line.trim_start();
        if trimmed.starts_with("Compiling") || trimmed.starts_with("Finished") {
            bar.set_message(format!("{}: {trimmed}", layout.source.display()));
        }
        log.push(line);
    }
    let status = child.wait().map_err(|e| format!("cargo: {e}"))?;
    bar.finish_and_clear();
    if !status.success() {
        let tail = &log[log.len().saturating_sub(40)..];
        return Err(format!("building {} failed:\n{}", layout.source.display(), tail.join("\n")));
    }
    let profile = if options.release { "release" } else { "debug" };
    Ok(if links_statically(layout, options) {
        dir.join("cargo").join(STATIC_TARGET).join(profile).join(bin)
    } else {
        dir.join("cargo").join(profile).join(bin)
    })
}

/// Builds the Linux baseline of an application (in `target/flexos/baseline`).
pub fn build_baseline(root: &Path, app: &str, progress: bool) -> Result<PathBuf, String> {
    let (package, bin) = match app {
        "sqlite" => ("flexos-sqlite-linux", "sqlite-linux"),
        other => return Err(format!("no Linux baseline for {other:?}")),
    };
    let bar = if progress { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(format!("building the Linux baseline {bin}"));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--color", "never", "-p", package, "--bin", bin])
        .env_remove("FLEXOS_CONFIG")
        .env("CARGO_TARGET_DIR", root.join("target/flexos/baseline/cargo"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    bar.finish_and_clear();
    if !out.status.success() {
        return Err(format!("building {bin} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(root.join("target/flexos/baseline/cargo/release").join(bin))
}
