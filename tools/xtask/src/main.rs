//! `cargo xtask`: the project's own tasks.
//!
//! * `cargo xtask setup` installs what the tests need on a fresh Debian
//!   machine: the real clients and servers the network tests drive, the
//!   build tools, and checks the devices (`/dev/net/tun`, `/dev/kvm`).
//! * `cargo xtask test [ARGS...]` runs `setup`, then `cargo test
//!   --workspace ARGS...`. This is the test command of `README.md` and of CI.
//!
//! Installing needs root (`apt-get install`); the tap tests need root as
//! well (they make network namespaces and tap devices).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// A program the tests or benchmarks run, and the Debian package it comes from.
#[derive(Clone, Copy, Debug)]
struct Requirement {
    /// The program, as the tests start it (looked up in `PATH`).
    program: &'static str,
    /// The Debian package that provides it.
    package: &'static str,
    /// Why the tests need it.
    why: &'static str,
}

/// Everything `cargo test --workspace` runs that is not built by the
/// workspace itself. A test checks that every program the tests and the
/// tool start is listed here.
const REQUIREMENTS: &[Requirement] = &[
    Requirement { program: "gcc", package: "build-essential", why: "builds SQLite and the C parts" },
    Requirement {
        program: "clang-19",
        package: "clang-19",
        why: "builds SQLite with the cfi hardening option (kcfi exists only in clang)",
    },
    Requirement {
        program: "valgrind",
        package: "valgrind",
        why: "`flexos bench hardening --instructions` counts instructions (callgrind)",
    },
    Requirement { program: "ar", package: "binutils", why: "builds SQLite and the C parts" },
    Requirement { program: "nm", package: "binutils", why: "the statics audit reads the image's symbols" },
    Requirement { program: "objcopy", package: "binutils", why: "the images' sections" },
    Requirement { program: "objdump", package: "binutils", why: "the gate tests read the generated code" },
    Requirement { program: "strip", package: "binutils", why: "the mpk guest test packs stripped images" },
    Requirement {
        program: "cp",
        package: "coreutils",
        why: "a new configuration's build folder starts as a copy of a built one",
    },
    Requirement { program: "redis-server", package: "redis-server", why: "the kv tests compare replies with Redis" },
    Requirement { program: "redis-cli", package: "redis-tools", why: "drives the kv images" },
    Requirement { program: "redis-benchmark", package: "redis-tools", why: "drives the kv images" },
    Requirement { program: "nginx", package: "nginx", why: "the HTTP baseline" },
    Requirement { program: "curl", package: "curl", why: "drives the httpd images" },
    Requirement { program: "ab", package: "apache2-utils", why: "drives the httpd images" },
    Requirement { program: "wrk", package: "wrk", why: "drives the httpd images" },
    Requirement { program: "iperf", package: "iperf", why: "drives the iperf images (iperf 2)" },
    Requirement { program: "ip", package: "iproute2", why: "network namespaces and tap devices" },
    Requirement { program: "script", package: "bsdutils", why: "gives redis-cli a terminal" },
    Requirement { program: "kill", package: "procps", why: "signals images in the tool's tests" },
    Requirement { program: "python3", package: "python3", why: "scripted clients in the tests" },
    Requirement { program: "bash", package: "bash", why: "probes ports inside namespaces" },
    Requirement { program: "sh", package: "dash", why: "shell steps of tests" },
    Requirement { program: "cat", package: "coreutils", why: "shell steps of tests" },
    Requirement { program: "sleep", package: "coreutils", why: "a client that outlives its server (netbench)" },
    Requirement { program: "true", package: "coreutils", why: "a client that must not start (netbench)" },
    Requirement { program: "tar", package: "tar", why: "the mpk guest test unpacks a kernel" },
    Requirement { program: "apt-get", package: "apt", why: "the mpk guest test downloads QEMU and a kernel" },
    Requirement { program: "apt-cache", package: "apt", why: "the mpk guest test finds their versions" },
    Requirement { program: "dpkg-deb", package: "dpkg", why: "the mpk guest test unpacks QEMU and a kernel" },
    Requirement { program: "dpkg-query", package: "dpkg", why: "the mpk guest test" },
];

/// Devices the tests use, and why.
const DEVICES: &[(&str, &str)] = &[
    ("/dev/net/tun", "the tap tests attach images to tap devices"),
    ("/dev/kvm", "the kvm mechanism's tests run compartments in VMs"),
];

/// Whether `program` is found in `PATH`.
fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_root() -> bool {
    // The effective user of this process: `id -u` without a dependency.
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The Debian packages that provide the missing programs, without duplicates.
fn missing_packages(missing: &[&Requirement]) -> Vec<&'static str> {
    let mut packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// Runs apt-get quietly; its output is shown only when it fails.
fn apt_get(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Installs what is missing; fails with the command to run when it cannot.
fn setup() -> Result<(), String> {
    let missing: Vec<&Requirement> = REQUIREMENTS.iter().filter(|r| !on_path(r.program)).collect();
    if !missing.is_empty() {
        let packages = missing_packages(&missing);
        for r in &missing {
            eprintln!("xtask: {} is missing ({}; package {})", r.program, r.why, r.package);
        }
        if !is_root() {
            return Err(format!(
                "installing needs root; run as root, or install them first:\n  sudo apt-get install -y {}",
                packages.join(" ")
            ));
        }
        eprintln!("xtask: installing {}", packages.join(" "));
        let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
        install.extend(&packages);
        // A fresh machine may have no package lists yet: update once and retry.
        if apt_get(&install).is_err() {
            apt_get(&["update", "-qq"])?;
            apt_get(&install)?;
        }
        let still: Vec<&str> = missing.iter().filter(|r| !on_path(r.program)).map(|r| r.program).collect();
        if !still.is_empty() {
            return Err(format!("still missing after installing: {}", still.join(", ")));
        }
        // The packaged servers start themselves; the tests start their own instances.
        for service in ["redis-server", "nginx"] {
            let _ = Command::new("sh")
                .args(["-c", &format!("command -v systemctl >/dev/null && systemctl stop {service} 2>/dev/null")])
                .status();
        }
    }
    let mut problems = Vec::new();
    for (device, why) in DEVICES {
        if std::fs::OpenOptions::new().read(true).write(true).open(device).is_err() {
            problems.push(format!("{device} cannot be opened read-write ({why})"));
        }
    }
    if !is_root() {
        problems.push("the tests run as a user without root (the tap tests make network namespaces)".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("this machine cannot run every test:\n  {}", problems.join("\n  ")))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn test(args: &[String]) -> Result<ExitCode, String> {
    setup()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

const USAGE: &str = "usage: cargo xtask setup | cargo xtask test [ARGS FOR cargo test...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") if args.len() == 1 => setup().map(|()| ExitCode::SUCCESS),
        Some("test") => test(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The string literals that the Rust sources under `dir` pass as the
    /// program to run: `Command::new("p")`, `.exec("p")`, `client("p"`,
    /// `Server::linux("p"`, and the first word of `script -qec "p ..."`.
    fn programs_started(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                // This crate names programs in its own comments and tests.
                if name != "target" && name != "xtask" && !name.starts_with('.') {
                    programs_started(&p, found);
                }
                continue;
            }
            if !name.ends_with(".rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for opener in ["Command::new(", "exec(", "client(", "Server::linux(", "\"-qec\", &format!("] {
                for (i, _) in text.match_indices(opener) {
                    let rest = text[i + opener.len()..].trim_start();
                    if let Some(lit) = rest.strip_prefix('"') {
                        let word: String =
                            lit.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
                        if !word.is_empty() && lit[word.len()..].starts_with(['"', ' ']) {
                            found.push((word, p.clone()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_program_the_tests_start_is_installed_by_setup() {
        let root = workspace_root();
        let mut found = Vec::new();
        for dir in ["tools", "apps", "crates", "components"] {
            programs_started(&root.join(dir), &mut found);
        }
        // The scan sees the programs it must (a scan that finds nothing checks nothing).
        for expected in ["redis-benchmark", "iperf", "curl", "wrk", "ip", "redis-cli", "ab"] {
            assert!(found.iter().any(|(p, _)| p == expected), "the scan missed {expected}: {found:?}");
        }
        let unlisted: Vec<String> = found
            .iter()
            .filter(|(p, _)| p != "id" && !REQUIREMENTS.iter().any(|r| r.program == p))
            .map(|(p, file)| format!("{p} (started in {})", file.display()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "programs the tests start that `cargo xtask setup` does not install: {unlisted:?}"
        );
    }

    #[test]
    fn packages_are_listed_once() {
        let all: Vec<&Requirement> = REQUIREMENTS.iter().collect();
        let packages = missing_packages(&all);
        assert!(packages.windows(2).all(|w| w[0] < w[1]));
        assert!(packages.contains(&"redis-tools") && packages.contains(&"apache2-utils"));
    }
}
