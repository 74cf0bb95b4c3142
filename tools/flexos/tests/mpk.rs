//! The `mpk` mechanism (protection keys): the checks of `flexos-mpk-checks`
//! on this machine's CPU, the same checks in a Linux guest under QEMU with
//! and without protection keys (the negative control), and images that mix
//! `mpk` with every other mechanism.

mod common;

use flexos::guest::{Boot, judge};
use flexos_mpk_checks::{IMAGES, Outcome, QUERY, UNSUPERVISED, checks, run, run_check, run_traced};
use std::path::PathBuf;
use std::time::Duration;

fn image(name: &str) -> PathBuf {
    let config = IMAGES.iter().find(|i| i.name == name).expect("a known image").config;
    common::image(config, false)
}

fn pku() -> bool {
    flexos_platform::pkey::available().is_ok()
}

/// On a CPU with protection keys every attack is stopped for every sharing
/// strategy and SQLite in three compartments answers like one compartment;
/// on a CPU without them, `mpk` images refuse to start.
#[test]
fn every_mpk_check_holds_on_this_cpu() {
    let pku = pku();
    let mut boot = Boot { cpu: "this machine".into(), pku: Some(pku), done: true, ..Boot::default() };
    let mut earlier: Vec<(String, Outcome)> = Vec::new();
    for check in checks() {
        let outcome = run_check(&check, &image(check.image), Duration::from_secs(120));
        let verdict = check.verdict(&outcome, &earlier);
        boot.checks.push((check.name.clone(), verdict.is_ok(), verdict.err().unwrap_or_default()));
        earlier.push((check.name, outcome));
    }
    let problems = judge(&boot, pku);
    assert!(problems.is_empty(), "protection keys here: {pku}\n{}", problems.join("\n"));
}

/// `flexos guest-test`: the checks in a guest on QEMU's `-cpu max` (with
/// keys) all pass; on `-cpu qemu64` (without) every `mpk` check fails and
/// the image refuses to start.
#[test]
fn the_checks_pass_in_a_guest_with_protection_keys_and_fail_without() {
    let report = flexos::guest::run(&flexos::workspace_root(), false, Duration::from_secs(900), None).unwrap();
    let table = flexos::guest::table(&report);
    assert!(report.problems.is_empty(), "{table}\nconsole with keys:\n{}", report.with_pku.console);
    assert!(report.with_pku.checks.len() >= 28, "{table}");
}

/// One image, four mechanisms: `mpk` compartments beside a `proc` process,
/// a `kvm` virtual machine and an `fcall` compartment.
#[test]
fn mpk_mixes_with_proc_kvm_and_fcall_in_one_image() {
    let sqlite = common::image("configs/sqlite-mpk-mixed.toml", false);
    let probe = common::image("configs/probe-mpk-mixed.toml", false);
    let limit = Duration::from_secs(120);
    if !pku() {
        let r = run(&probe, &["behave".into()], limit);
        assert!(r.stderr.contains("has no protection keys"), "{r:?}");
        return;
    }
    let workload = run(&sqlite, &[], limit);
    assert!(workload.stdout.contains("rows: 5000") && workload.stdout.contains("integrity_check: ok"), "{workload:?}");
    let one = run(&image("sqlite"), &["--sql".into(), QUERY.into()], limit);
    let mixed = run(&sqlite, &["--sql".into(), QUERY.into()], limit);
    assert_eq!(one.code, Some(0), "{one:?}");
    assert_eq!(mixed.stdout, one.stdout, "{mixed:?}");
    let behave = run(&probe, &["behave".into()], limit);
    assert!(behave.code == Some(0) && behave.stdout.contains("behaved: ok"), "{behave:?}");
    for attack in ["read-heap", "write-stack", "gadget"] {
        let args = ["attack".to_string(), attack.to_string()];
        // The gadget is single-stepped from outside the image, which then
        // runs without its fault supervisor.
        let r = if attack == "gadget" {
            run_traced(&probe, &args, &[UNSUPERVISED], limit)
        } else {
            run(&probe, &args, limit)
        };
        assert!(!r.stdout.contains("BREACHED"), "{attack}: {r:?}");
        assert!(
            r.stderr.contains("flexos: compartment \"attacker\" touched ") && r.stderr.contains("owned by \"main\""),
            "{attack}: {r:?}"
        );
    }
    // A handle into main's heap, to vfs in another process: that process refuses it.
    let r = run(&probe, &["attack".into(), "private-pointer".into()], limit);
    assert!(!r.stdout.contains("BREACHED"), "{r:?}");
    assert!(r.stderr.contains("flexos: compartment \"fs\" refused a call from compartment \"attacker\""), "{r:?}");
}

/// ERIM's binary inspection: every `wrpkru` in an `mpk` image's code is a
/// registered, checked gate site; a site whose check is patched out, and
/// the C library's own `pkey_set`, are found.
#[test]
fn every_wrpkru_in_an_mpk_image_is_a_checked_gate_site() {
    for config in ["configs/probe-mpk-light.toml", "configs/probe-mpk-heap.toml", "configs/sqlite-mpk.toml"] {
        let img = common::image(config, false);
        let audit = flexos::audit::wrpkru_sites(&img).unwrap();
        assert!(audit.sites > 0 && audit.found == audit.sites, "{config}: {audit:?}");
        assert!(audit.problems.is_empty(), "{config}: {:?}", audit.problems);
        assert_eq!(flexos::audit::xrstor_sites(&img).unwrap(), Vec::<u64>::new(), "{config}: no xrstor");
    }
    let fcall = flexos::audit::wrpkru_sites(&common::image("configs/sqlite.toml", false)).unwrap();
    assert_eq!((fcall.sites, fcall.found), (0, 0), "an image without mpk has no wrpkru");

    // Patch the first site's `jne` into two `nop`s: the audit must see it.
    let img = common::image("configs/probe-mpk-dss.toml", false);
    let mut bytes = std::fs::read(&img).unwrap();
    let site = (0..bytes.len() - 12)
        .find(|&i| bytes[i..i + 4] == [0x0f, 0x01, 0xef, 0x3d] && bytes[i + 8] == 0x75)
        .expect("a gate site in the file");
    bytes[site + 8..site + 10].copy_from_slice(&[0x90, 0x90]);
    let patched = std::env::temp_dir().join(format!("flexos-patched-{}", std::process::id()));
    std::fs::write(&patched, &bytes).unwrap();
    let audit = flexos::audit::wrpkru_sites(&patched).unwrap();
    std::fs::remove_file(&patched).unwrap();
    assert_eq!(audit.problems.len(), 1, "{:?}", audit.problems);
    assert!(audit.problems[0].problem.contains("no jne"), "{:?}", audit.problems);

    // The dynamic loader's lazy binding restores registers with xrstor
    // (mask 0xee, but a jump straight to it chooses the mask): the xrstor
    // audit finds both, and a static mpk image has none (above).
    let loader = std::path::Path::new("/lib64/ld-linux-x86-64.so.2");
    if loader.exists() {
        assert!(!flexos::audit::xrstor_sites(loader).unwrap().is_empty(), "the loader's xrstor is found");
    }

    // The shared C library has an unchecked wrpkru (pkey_set): why mpk images link statically.
    let libc = std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    if libc.exists() {
        let audit = flexos::audit::wrpkru_sites(libc).unwrap();
        assert!(audit.problems.iter().any(|p| p.problem == "not a registered gate site"), "{audit:?}");
    }
}

/// `flexos bench gates` has a row per `mpk` gate and the shared-local rows
/// of `dss` and `heap` where the CPU has protection keys, and says why not
/// where it has none.
#[test]
fn the_gate_benchmark_measures_mpk_or_says_why_not() {
    let mpk: Vec<flexos::gatebench::RemoteGate> = ["light", "dss", "heap"]
        .into_iter()
        .map(|s| flexos::gatebench::RemoteGate {
            name: s.into(),
            image: common::image(&format!("configs/probe-mpk-{s}.toml"), false),
        })
        .collect();
    let report = flexos::gatebench::run(0.01, &[], &mpk).unwrap();
    let table = flexos::gatebench::table(&report);
    if !pku() {
        assert!(report.mpk_unavailable.is_some(), "{table}");
        assert!(table.contains("mpk gates: not measured, this machine has no protection keys"), "{table}");
        assert!(!report.rows.iter().any(|r| r.name.starts_with("mpk")), "{table}");
        return;
    }
    for name in [
        "mpk gate, light",
        "mpk gate, dss",
        "mpk gate, heap",
        "shared locals (mpk dss): 3",
        "shared locals (mpk heap): 1",
    ] {
        let row = report.rows.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no row {name}: {table}"));
        assert!(row.min_cycles > 0.0 && row.min_cycles <= row.median_cycles, "{row:?}");
    }
    assert!(!report.rows.iter().any(|r| r.name.contains("mpk light")), "light has no shared-local rows: {table}");
}

/// `flexos guest-test --pack DIR` writes the guest's init and images; run
/// natively, the init runs the checks on this machine's CPU: with keys every
/// `mpk` check passes (exit 0); without them the `mpk` images refuse, the
/// one-compartment image still answers, and the exit status says that
/// nothing was proven here (2).
#[test]
fn packed_checks_run_natively_and_say_what_this_cpu_proves() {
    let dir = std::env::temp_dir().join(format!("flexos-pack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flexos"))
        .args(["guest-test", "--pack"])
        .arg(&dir)
        .status()
        .expect("flexos runs");
    assert!(status.success(), "pack failed: {status}");
    let out = std::process::Command::new(dir.join("init")).arg(dir.join("images")).arg("query").output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("flexos-check sqlite-one-compartment-query pass"), "{stdout}");
    assert!(stdout.lines().last() == Some("flexos-guest: done"), "{stdout}");
    if pku() {
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("flexos-check sqlite-mpk-query pass"), "{stdout}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stdout}");
        assert!(stdout.contains("flexos-check sqlite-mpk-query fail"), "{stdout}");
        assert!(stdout.contains("has no protection keys"), "{stdout}");
    }
}
