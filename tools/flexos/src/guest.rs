//! `flexos guest-test`: runs the `mpk` checks inside a Linux guest under
//! QEMU's software CPU, which emulates protection keys (`-cpu max`), and
//! again on a CPU model without them (`-cpu qemu64`) as the negative control.
//!
//! Nothing is installed on the machine: QEMU and a Debian kernel are
//! fetched as packages (`apt-get download`) and unpacked under
//! `target/flexos/guest`. The images are linked statically and packed with
//! a static `/init` (crate `flexos-mpk-checks`) into an initramfs; the
//! guest prints one line per check on its serial console and powers off.
//! Recipe and pitfalls: `reference/testing-mpk.md` of the design.

use crate::build::{BuildOptions, STATIC_TARGET, build_image};
use flexos_mpk_checks::{IMAGES, checks, checks_matching};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU CPU model with protection keys, and the one without (negative control).
pub const CPU_WITH_PKU: &str = "max";
/// See [`CPU_WITH_PKU`].
pub const CPU_WITHOUT_PKU: &str = "qemu64";

/// What one boot reported.
#[derive(Clone, Debug, Default)]
pub struct Boot {
    /// The QEMU CPU model.
    pub cpu: String,
    /// Whether the guest saw `pku` (None if it never said).
    pub pku: Option<bool>,
    /// (check, passed, reason) per check, in order.
    pub checks: Vec<(String, bool, String)>,
    /// Whether the guest reached its end.
    pub done: bool,
    /// Seconds from QEMU's start to its end.
    pub seconds: f64,
    /// The serial console output.
    pub console: String,
}

/// The result of a whole run: the boot with keys and the negative control.
#[derive(Clone, Debug)]
pub struct GuestReport {
    /// The boot on `-cpu max`.
    pub with_pku: Boot,
    /// The boot on `-cpu qemu64`.
    pub without_pku: Boot,
    /// Every way the two boots differ from what must happen (empty: success).
    pub problems: Vec<String>,
}

/// Where the guest's downloads and builds live.
fn guest_dir(root: &Path) -> PathBuf {
    root.join("target/flexos/guest")
}

fn run_command(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether Debian package `name` is installed on this machine.
fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Downloads `packages` into `debs` (once), updating the package lists if they lack one.
fn download(debs: &Path, packages: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let have = |p: &str| {
        std::fs::read_dir(debs)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{p}_"))))
            .unwrap_or(false)
    };
    let missing: Vec<&String> = packages.iter().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let fetch =
        || run_command(Command::new("apt-get").arg("download").args(&missing).current_dir(debs), "apt-get download");
    if fetch().is_err() {
        run_command(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")?;
        fetch()?;
    }
    Ok(())
}

/// The packages QEMU needs that this machine lacks: QEMU's dependency
/// closure without what is installed (alternatives included; unpacking
/// more libraries than needed is harmless).
fn qemu_packages() -> Result<Vec<String>, String> {
    let closure = run_command(
        Command::new("apt-cache").args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "--no-pre-depends",
            "qemu-system-x86",
        ]),
        "apt-cache depends qemu-system-x86",
    )?;
    let mut packages: Vec<String> = closure
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .filter(|p| p.starts_with("lib") || p.starts_with("qemu-") || *p == "seabios" || *p == "ipxe-qemu")
        .filter(|p| !installed(p))
        .map(str::to_string)
        .collect();
    packages.sort();
    packages.dedup();
    Ok(packages)
}

/// QEMU unpacked under the guest folder: the path of `qemu-system-x86_64` and its root.
fn fetch_qemu(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let root = dir.join("qemu");
    let binary = root.join("usr/bin/qemu-system-x86_64");
    if binary.exists() {
        return Ok((binary, root));
    }
    let debs = dir.join("debs");
    download(&debs, &qemu_packages()?)?;
    let _ = std::fs::remove_dir_all(&root);
    for deb in std::fs::read_dir(&debs).map_err(|e| e.to_string())?.flatten() {
        let name = deb.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") && !name.starts_with("linux-image") {
            run_command(Command::new("dpkg-deb").arg("-x").arg(deb.path()).arg(&root), &format!("unpacking {name}"))?;
        }
    }
    if !binary.exists() {
        return Err(format!("{} is missing after unpacking QEMU", binary.display()));
    }
    Ok((binary, root))
}

/// A Debian kernel with protection keys (`CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS`): its bzImage.
fn fetch_kernel(dir: &Path) -> Result<PathBuf, String> {
    let kernel = dir.join("vmlinuz");
    if kernel.exists() {
        return Ok(kernel);
    }
    let depends = run_command(Command::new("apt-cache").args(["depends", "linux-image-amd64"]), "apt-cache depends")?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .ok_or("no kernel package behind linux-image-amd64")?
        .to_string();
    let debs = dir.join("debs");
    download(&debs, std::slice::from_ref(&package))?;
    let deb = entry_starting_with(&debs, &format!("{package}_"), "the kernel package was not downloaded")?;
    // Only ./boot (the modules are hundreds of megabytes).
    let boot = dir.join("kernel");
    std::fs::create_dir_all(&boot).map_err(|e| e.to_string())?;
    let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" ./boot";
    run_command(Command::new("sh").args(["-c", script, "sh"]).arg(&deb).arg(&boot), "unpacking the kernel")?;
    let image = entry_starting_with(&boot.join("boot"), "vmlinuz-", "no vmlinuz in the kernel package")?;
    std::fs::copy(&image, &kernel).map_err(|e| e.to_string())?;
    Ok(kernel)
}

/// The first entry of `dir` whose name starts with `prefix` (`missing`: the error without one).
fn entry_starting_with(dir: &Path, prefix: &str, missing: &str) -> Result<PathBuf, String> {
    std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .ok_or_else(|| missing.to_string())
}

/// The kernel's tap module (`tun.ko`, a module in Debian's kernel), out of
/// the kernel package [`fetch_kernel`] downloaded: the checks on a tap
/// device need it (the init loads it). Only that file is unpacked.
fn fetch_tun_module(dir: &Path) -> Result<PathBuf, String> {
    let module = dir.join("tun.ko");
    if module.exists() {
        return Ok(module);
    }
    let deb = entry_starting_with(&dir.join("debs"), "linux-image-", "no kernel package was downloaded")?;
    let unpacked = dir.join("kernel");
    let script =
        "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards './lib/modules/*/kernel/drivers/net/tun.ko'";
    run_command(Command::new("sh").args(["-c", script, "sh"]).arg(&deb).arg(&unpacked), "unpacking tun.ko")?;
    let modules = unpacked.join("lib/modules");
    let found = std::fs::read_dir(&modules)
        .map_err(|e| format!("{}: {e}", modules.display()))?
        .flatten()
        .map(|v| v.path().join("kernel/drivers/net/tun.ko"))
        .find(|p| p.exists())
        .ok_or("no tun.ko in the kernel package")?;
    std::fs::copy(&found, &module).map_err(|e| e.to_string())?;
    Ok(module)
}

/// Builds the static `/init` of the guest.
fn build_init(root: &Path, dir: &Path) -> Result<PathBuf, String> {
    let target = dir.join("init-cargo");
    run_command(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-p",
                "flexos-mpk-checks",
                "--bin",
                "flexos-guest-init",
                "--target",
                STATIC_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", &target),
        "building the guest's init",
    )?;
    Ok(target.join(STATIC_TARGET).join("release/flexos-guest-init"))
}

/// A `newc` cpio archive, the format of an initramfs.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let fields = [self.inode, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    /// Adds an executable file.
    pub fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100755, (0, 0), data);
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// Builds the static init and images: (path in the guest, stripped bytes).
fn build_guest_files(root: &Path, dir: &Path, progress: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
    let options = BuildOptions { release: true, gate_stats: false, progress, static_link: true };
    let mut files = vec![("init".to_string(), stripped(&build_init(root, dir)?)?)];
    for image in IMAGES {
        let layout = flexos_config::load(&root.join(image.config))
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
        let path = build_image(root, &layout, &options)?;
        files.push((format!("images/{}", image.name), stripped(&path)?));
    }
    Ok(files)
}

/// Builds the static images and the init, and packs them into an
/// initramfs with the kernel's tap module `tun` (`/tun.ko`).
fn build_initramfs(root: &Path, dir: &Path, tun: &Path, progress: bool) -> Result<PathBuf, String> {
    let mut cpio = Cpio::default();
    for d in ["dev", "proc", "tmp", "images"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    for (name, bytes) in build_guest_files(root, dir, progress)? {
        cpio.file(&name, &bytes);
    }
    cpio.file("tun.ko", &std::fs::read(tun).map_err(|e| format!("{}: {e}", tun.display()))?);
    let out = dir.join("initramfs.cpio");
    std::fs::write(&out, cpio.finish()).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// `flexos guest-test --pack DIR`: writes the guest's init and its static
/// images into `out` (`out/init`, `out/images/NAME`) instead of booting, so
/// that a machine with protection keys and no toolchain runs the same checks
/// natively with `out/init out/images`.
pub fn pack(root: &Path, out: &Path, progress: bool) -> Result<(), String> {
    let dir = guest_dir(root);
    std::fs::create_dir_all(out.join("images")).map_err(|e| format!("{}: {e}", out.display()))?;
    for (name, bytes) in build_guest_files(root, &dir, progress)? {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The bytes of `binary` without its debugging information (through a file
/// of this process's own, since two runs may strip the same image at once).
fn stripped(binary: &Path) -> Result<Vec<u8>, String> {
    let out = binary.with_extension(format!("stripped-{}", std::process::id()));
    run_command(Command::new("strip").arg("-o").arg(&out).arg(binary), "strip")?;
    let bytes = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()));
    let _ = std::fs::remove_file(&out);
    bytes
}

/// Boots the guest on QEMU CPU model `cpu` and collects its report.
fn boot(
    qemu: &Path,
    qemu_root: &Path,
    kernel: &Path,
    initramfs: &Path,
    cpu: &str,
    limit: Duration,
    only: Option<&str>,
) -> Result<Boot, String> {
    let libs = format!(
        "{}:{}",
        qemu_root.join("usr/lib/x86_64-linux-gnu").display(),
        qemu_root.join("lib/x86_64-linux-gnu").display()
    );
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .env("LD_LIBRARY_PATH", libs)
        .env("QEMU_MODULE_DIR", qemu_root.join("usr/lib/x86_64-linux-gnu/qemu"))
        .args(["-accel", "tcg", "-cpu", cpu, "-m", "2048", "-smp", "2", "-no-reboot", "-nic", "none"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-L")
        .arg(qemu_root.join("usr/share/qemu"))
        .arg("-L")
        .arg(qemu_root.join("usr/share/seabios"))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(match only {
            Some(o) => format!("console=ttyS0 panic=-1 quiet {}{o}", flexos_mpk_checks::ONLY_ARG),
            None => "console=ttyS0 panic=-1 quiet".into(),
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    let take = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = take(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let err = take(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let console = out.join().unwrap_or_default();
    let errors = err.join().unwrap_or_default();
    let mut report = parse_console(&console);
    report.cpu = cpu.to_string();
    report.seconds = start.elapsed().as_secs_f64();
    if status.is_none() {
        report.console += &format!("\n(QEMU killed after {} s)", limit.as_secs());
    }
    if !report.done && report.checks.is_empty() {
        return Err(format!("the guest on -cpu {cpu} reported nothing; QEMU: {errors}\nconsole:\n{console}"));
    }
    Ok(report)
}

/// Reads the guest's lines from its console output.
pub fn parse_console(console: &str) -> Boot {
    let mut boot = Boot { console: console.to_string(), ..Boot::default() };
    for line in console.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(v) = line.strip_prefix("flexos-guest: pku=") {
            boot.pku = Some(v == "yes");
        } else if line == "flexos-guest: done" {
            boot.done = true;
        } else if let Some(rest) = line.strip_prefix("flexos-check ") {
            let (name, verdict) = rest.split_once(' ').unwrap_or((rest, ""));
            let passed = verdict == "pass";
            let reason = verdict.strip_prefix("fail: ").unwrap_or("").to_string();
            boot.checks.push((name.to_string(), passed, reason));
        }
    }
    boot
}

/// What must be true of a boot on a CPU with (`pku`) or without keys.
pub fn judge(boot: &Boot, pku: bool) -> Vec<String> {
    judge_only(boot, pku, None)
}

/// [`judge`], of the checks whose names contain `only` (all if `None`).
pub fn judge_only(boot: &Boot, pku: bool, only: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let cpu = &boot.cpu;
    if !boot.done {
        problems.push(format!("-cpu {cpu}: the guest did not finish"));
    }
    if boot.pku != Some(pku) {
        problems.push(format!("-cpu {cpu}: the guest saw pku={:?}, expected {pku}", boot.pku));
    }
    for check in checks_matching(only) {
        let must = check.must_pass(pku);
        match boot.checks.iter().find(|(n, _, _)| *n == check.name) {
            None => problems.push(format!("-cpu {cpu}: check {} did not run", check.name)),
            Some((_, passed, reason)) if *passed != must => problems.push(format!(
                "-cpu {cpu}: check {} {} but must {}{}",
                check.name,
                if *passed { "passed" } else { "failed" },
                if must { "pass" } else { "fail" },
                if reason.is_empty() { String::new() } else { format!(": {reason}") }
            )),
            Some(_) => {}
        }
    }
    problems
}

/// Prepares everything and boots the guest twice: with protection keys
/// (every check must pass) and without (the `mpk` checks must fail and the
/// image must refuse to start). `limit` bounds each boot. With `only`, the
/// guest runs (and the tool judges) only the checks whose names contain it:
/// for development; the test and CI run them all.
pub fn run(root: &Path, progress: bool, limit: Duration, only: Option<&str>) -> Result<GuestReport, String> {
    let dir = guest_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (qemu, qemu_root) = fetch_qemu(&dir)?;
    let kernel = fetch_kernel(&dir)?;
    let tun = fetch_tun_module(&dir)?;
    let initramfs = build_initramfs(root, &dir, &tun, progress)?;
    let with_pku = boot(&qemu, &qemu_root, &kernel, &initramfs, CPU_WITH_PKU, limit, only)?;
    let without_pku = boot(&qemu, &qemu_root, &kernel, &initramfs, CPU_WITHOUT_PKU, limit, only)?;
    for b in [&with_pku, &without_pku] {
        let saved = dir.join(format!("console-{}.txt", b.cpu));
        std::fs::write(&saved, &b.console).map_err(|e| format!("{}: {e}", saved.display()))?;
    }
    let mut problems = judge_only(&with_pku, true, only);
    problems.extend(judge_only(&without_pku, false, only));
    Ok(GuestReport { with_pku, without_pku, problems })
}

/// The report as text: one line per check and boot, then the verdict.
pub fn table(r: &GuestReport) -> String {
    let mut out = format!(
        "{:34} {:>14} {:>14}\n",
        "check",
        format!("-cpu {}", r.with_pku.cpu),
        format!("-cpu {}", r.without_pku.cpu)
    );
    let verdict = |b: &Boot, name: &str| {
        b.checks.iter().find(|(n, _, _)| n == name).map_or("-", |(_, p, _)| if *p { "pass" } else { "fail" })
    };
    for check in checks() {
        out += &format!(
            "{:34} {:>14} {:>14}\n",
            check.name,
            verdict(&r.with_pku, &check.name),
            verdict(&r.without_pku, &check.name)
        );
    }
    out += &format!(
        "guest saw pku: {:?} / {:?}; boot to power-off: {:.1} s / {:.1} s\n",
        r.with_pku.pku, r.without_pku.pku, r.with_pku.seconds, r.without_pku.seconds
    );
    if r.problems.is_empty() {
        out += "result: PASS (every check passes with protection keys; without them every mpk check fails and the image refuses to start)\n";
    } else {
        out += "result: FAIL\n";
        for p in &r.problems {
            out += &format!("  {p}\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpio_archive_has_headers_names_and_padding() {
        let mut c = Cpio::default();
        c.dir("dev");
        c.file("init", b"abc");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("dev\0") && text.contains("init\0") && text.contains("abc") && text.contains("TRAILER!!!")
        );
        // The file's size field (7th) of the second header is 3.
        let second = text.match_indices("070701").nth(1).unwrap().0;
        assert_eq!(&text[second + 6 + 6 * 8..second + 6 + 7 * 8], "00000003");
    }

    #[test]
    fn console_lines_are_judged_against_the_cpu() {
        let mut console = String::from("noise\r\nflexos-guest: pku=yes\r\n");
        for c in checks() {
            let verdict = if c.must_pass(true) { "pass" } else { "fail: no" };
            console += &format!("flexos-check {} {verdict}\r\n", c.name);
        }
        console += "flexos-guest: done\r\n";
        let mut boot = parse_console(&console);
        boot.cpu = "max".into();
        assert!(judge(&boot, true).is_empty(), "{:?}", judge(&boot, true));
        let problems = judge(&boot, false);
        assert!(problems.iter().any(|p| p.contains("pku=Some(true)")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("light-read-heap passed but must fail")), "{problems:?}");
        boot.checks.pop();
        assert!(judge(&boot, true).iter().any(|p| p.contains("did not run")));
    }
}
