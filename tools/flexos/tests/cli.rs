//! The `flexos` command: checking configurations and exit codes.

use std::process::Command;

fn flexos(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flexos")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn root() -> std::path::PathBuf {
    flexos::workspace_root()
}

#[test]
fn every_shipped_configuration_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("configs")).unwrap().flatten() {
        let path = entry.path();
        let (code, out, err) = flexos(&["check", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.contains(": ok"), "{out}");
        n += 1;
    }
    assert!(n >= 3);
}

#[test]
fn a_bad_configuration_is_rejected_with_location_and_fix() {
    let dir = std::env::temp_dir().join(format!("flexos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n[component.vfs]\ncompartment = \"files\"\n",
    )
    .unwrap();
    for cmd in ["check", "build", "run"] {
        let (code, _, err) = flexos(&[cmd, bad.to_str().unwrap()]);
        assert_eq!(code, flexos::exit::BAD_CONFIG, "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "{}:7:15: error: component \"vfs\" names unknown compartment \"files\"",
                bad.display()
            )),
            "{err}"
        );
        assert!(err.contains("fix: use one of the [[compartment]] names: main"), "{err}");
    }
    let (code, _, err) = flexos(&["check", dir.join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, flexos::exit::BAD_CONFIG);
    assert!(err.contains("cannot read the configuration"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn usage_errors_exit_with_2() {
    assert_eq!(flexos(&["frobnicate"]).0, 2);
    assert_eq!(flexos(&["check"]).0, 2);
}

#[test]
fn components_call_each_other_only_through_gates() {
    let (code, out, err) = flexos(&["audit", "gates"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn build_prints_the_image_path_last_and_run_passes_arguments_and_exit_codes() {
    let config = root().join("configs/sqlite.toml");
    let config = config.to_str().unwrap();
    let (code, out, err) = flexos(&["build", "--gate-stats", "-q", config]);
    assert_eq!(code, 0, "{err}");
    let image = std::path::PathBuf::from(out.lines().last().expect("a path"));
    assert!(image.is_file(), "{}", image.display());
    let direct = Command::new(&image).args(["--sql", "SELECT 6 * 7;"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "42\n", "the image runs without the tool");

    let (code, out, err) = flexos(&["run", "--gate-stats", "-q", config, "--", "--sql", "SELECT 6 * 7;"]);
    assert_eq!((code, out.as_str()), (0, "42\n"), "{err}");
    assert!(err.contains("gate-stats: layout"), "{err}");
    let (code, _, err) = flexos(&["run", "--gate-stats", "-q", config, "--", "--sql", "SELEKT"]);
    assert_eq!(code, 1, "the image's exit code comes through: {err}");
}

/// `check` and `build` of a configuration with `mpk` compartments warn on a
/// machine without protection keys (where the image would refuse to start)
/// and say nothing where the CPU has them.
#[test]
fn mpk_configurations_warn_where_there_are_no_protection_keys() {
    let config = root().join("configs/probe-mpk-dss.toml");
    let (code, out, err) = flexos(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    let warned = err.contains("use mechanism \"mpk\", but this machine has no protection keys");
    assert_eq!(warned, flexos_platform::pkey::available().is_err(), "{err}");
    let (_, _, err) = flexos(&["check", root().join("configs/sqlite.toml").to_str().unwrap()]);
    assert!(!err.contains("warning"), "{err}");
}

/// An attack that does not apply to the layout says so (the mpk-only gadget
/// attack on a kvm compartment), instead of listing it as valid.
#[test]
fn an_attack_for_another_mechanism_says_which_one_it_needs() {
    let config = root().join("configs/probe-kvm.toml");
    let (code, _, err) = flexos(&["run", "-q", config.to_str().unwrap(), "--", "attack", "gadget"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("attack gadget is for mpk compartments only"), "{err}");
    assert!(err.contains("probe runs in a kvm compartment here"), "{err}");
    let (code, _, err) = flexos(&["run", "-q", config.to_str().unwrap(), "--", "attack", "nosuch"]);
    assert_eq!(code, 2);
    assert!(err.contains("usage:") && !err.contains("|gadget"), "{err}");
}
