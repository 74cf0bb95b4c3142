//! Builds SQLite images under several configurations and checks that they
//! give the same results as each other and as SQLite on Linux, that gates
//! are crossed where the configuration says, and that no component keeps a
//! mutable static.

mod common;

use flexos::audit;
use flexos::bench::{parse_workload, run_workload};
use flexos::build::build_baseline;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The SQLite image of `config`, counting gate crossings.
fn image(config: &str) -> PathBuf {
    common::image(config, true)
}

fn baseline() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_baseline(&flexos::workspace_root(), "sqlite", false).unwrap_or_else(|e| panic!("{e}")))
        .clone()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(program: &Path, args: &[&str]) -> Run {
    let out = Command::new(program).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Gate crossings printed by `--flexos-gate-stats`, as (caller, callee, count).
fn crossings(stderr: &str) -> Vec<(String, String, u64)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("gate-stats: "))
        .filter_map(|l| {
            let (pair, n) = l.rsplit_once(": ")?;
            let (a, b) = pair.split_once(" -> ")?;
            Some((a.to_string(), b.to_string(), n.parse().ok()?))
        })
        .collect()
}

fn count(stats: &[(String, String, u64)], from: &str, to: &str) -> u64 {
    stats.iter().find(|(a, b, _)| a == from && b == to).map_or(0, |s| s.2)
}

const CONFIGS: [&str; 4] =
    ["configs/sqlite.toml", "configs/sqlite-fs.toml", "configs/sqlite-3comp-hardened.toml", "configs/sqlite-proc.toml"];

/// A query whose answer does not depend on the machine or the time (shared with the mpk checks).
use flexos_mpk_checks::QUERY;

#[test]
fn the_workload_gives_5000_rows_and_a_sound_database_in_every_configuration() {
    for config in CONFIGS {
        let r = run_workload(&image(config), &[], 5000).unwrap_or_else(|e| panic!("{config}: {e}"));
        assert!(r.elapsed_s > 0.0, "{config}: {r:?}");
    }
    let r = run_workload(&baseline(), &[], 5000).unwrap();
    assert_eq!(r.integrity, "ok");
}

#[test]
fn every_configuration_answers_queries_like_linux_sqlite() {
    let linux = run(&baseline(), &["--db", "/dev/shm/flexos-test-query.db", "--sql", QUERY]);
    let _ = std::fs::remove_file("/dev/shm/flexos-test-query.db");
    assert_eq!(linux.code, 0, "{}", linux.stderr);
    assert!(linux.stdout.ends_with("ok\n"), "{}", linux.stdout);
    assert_eq!(linux.stdout.lines().count(), 1 + 4 + 1);
    for config in CONFIGS {
        let r = run(&image(config), &["--sql", QUERY]);
        assert_eq!(r.code, 0, "{config}: {}", r.stderr);
        assert_eq!(r.stdout, linux.stdout, "{config} differs from Linux");
    }
}

#[test]
fn gates_are_crossed_exactly_where_the_configuration_splits() {
    let sql = "SELECT julianday('now') > 2460000; CREATE TABLE x(a); INSERT INTO x VALUES (1);";
    let one = run(&image("configs/sqlite.toml"), &["--flexos-gate-stats", "--sql", sql]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(one.stderr.contains("gate-stats: layout"), "{}", one.stderr);
    assert!(crossings(&one.stderr).is_empty(), "one compartment crosses no gate: {}", one.stderr);

    let fs = run(&image("configs/sqlite-fs.toml"), &["--flexos-gate-stats", "--sql", sql]);
    assert_eq!(fs.code, 0, "{}", fs.stderr);
    let stats = crossings(&fs.stderr);
    assert!(count(&stats, "libc", "vfs") > 0, "{stats:?}");
    assert_eq!(count(&stats, "vfs", "ramfs"), 0, "vfs and ramfs share a compartment");
    assert_eq!(count(&stats, "libc", "time"), 0, "time stays with the application");

    let three = run(&image("configs/sqlite-3comp-hardened.toml"), &["--flexos-gate-stats", "--sql", sql]);
    assert_eq!(three.code, 0, "{}", three.stderr);
    let stats = crossings(&three.stderr);
    assert!(count(&stats, "libc", "vfs") > 0, "{stats:?}");
    assert!(count(&stats, "libc", "time") > 0, "julianday('now') reads the clock through a gate: {stats:?}");
    assert_eq!(count(&stats, "vfs", "ramfs"), 0);

    // The same layout with the fs and time compartments in processes or VMs of their own.
    for config in ["configs/sqlite-proc.toml", "configs/sqlite-kvm.toml", "configs/sqlite-mixed.toml"] {
        let r = run(&image(config), &["--flexos-gate-stats", "--sql", sql]);
        assert_eq!(r.code, 0, "{config}: {}", r.stderr);
        let stats = crossings(&r.stderr);
        assert!(count(&stats, "libc", "vfs") > 0, "{config}: {stats:?}");
        assert!(count(&stats, "libc", "time") > 0, "{config}: {stats:?}");
        assert_eq!(count(&stats, "vfs", "ramfs"), 0, "{config}");
    }
}

#[test]
fn gates_inside_one_compartment_compile_to_plain_calls() {
    assert_eq!(audit::cross_gate_instances(&image("configs/sqlite.toml")).unwrap(), 0);
    assert!(audit::cross_gate_instances(&image("configs/sqlite-fs.toml")).unwrap() > 0);
}

/// The image's disassembly (binutils' objdump).
fn disassembly(image: &Path) -> String {
    let out = Command::new("objdump").args(["-d", "--no-show-raw-insn", "-C"]).arg(image).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hardening_options_reach_the_generated_code() {
    let plain = image("configs/sqlite.toml");
    let hardened = image("configs/sqlite-3comp-hardened.toml");
    let (p, h) = (disassembly(&plain), disassembly(&hardened));
    let canary_checks =
        |d: &str| d.lines().filter(|l| l.contains("call") && l.contains("flexos_libc___stack_chk_fail")).count();
    assert_eq!(canary_checks(&p), 0, "no stack protector without the option");
    assert!(canary_checks(&h) > 100, "SQLite's functions check their canaries: {}", canary_checks(&h));
    let traps = |d: &str| d.lines().filter(|l| l.trim_end().ends_with("ud2")).count();
    assert!(traps(&h) > 10 * traps(&p).max(1), "UBSan adds trapping checks: {} vs {}", traps(&h), traps(&p));
    // Rust overflow checks in vfs/ramfs pull in the overflow panic; nothing else in the image does.
    let add_overflow = "<core::panicking::panic_const::panic_const_add_overflow>:";
    assert!(!p.contains(add_overflow));
    assert!(h.contains(add_overflow));
}

/// A configuration written by the test itself (under target/), for options no shipped configuration isolates.
fn test_config(name: &str, text: &str) -> String {
    let dir = flexos::workspace_root().join("target/flexos/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
        std::fs::write(&path, text).unwrap();
    }
    path.to_string_lossy().into_owned()
}

#[test]
fn hardening_catches_seeded_bugs() {
    use std::os::unix::process::ExitStatusExt;
    let selftest = |img: &Path, name: &str, input: &str| {
        Command::new(img).args(["--flexos-selftest", name, input]).output().unwrap()
    };
    let stack_protector = image(&test_config(
        "sqlite-stack-protector.toml",
        "app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n[component.sqlite]\nharden = [\"stack-protector\"]\n",
    ));
    let hardened = image("configs/sqlite-3comp-hardened.toml");
    // Benign inputs run normally with the checks on.
    let ok = selftest(&hardened, "stack-smash", "abc");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "selftest stack-smash: 3\n");
    let ok = selftest(&hardened, "signed-overflow", "x");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "selftest signed-overflow: 2147483647\n");
    // The stack protector alone stops a 200-byte copy into a 16-byte stack buffer at return.
    let smash = selftest(&stack_protector, "stack-smash", &"A".repeat(200));
    assert_eq!(smash.status.signal(), Some(6), "aborted: {:?}", smash.status);
    assert!(String::from_utf8_lossy(&smash.stderr).contains("stack smashing detected"));
    // UBSan (trapping) stops INT_MAX - 1 + 2, and catches the overflowing store even before the canary.
    let overflow = selftest(&hardened, "signed-overflow", "xx");
    assert_eq!(overflow.status.signal(), Some(4), "trapped with SIGILL: {:?}", overflow.status);
    let report = String::from_utf8_lossy(&overflow.stderr);
    assert!(report.contains("flexos: compartment \"main\" faulted at 0x"), "{report}");
    assert!(report.contains("(illegal instruction: a UBSan trap"), "{report}");
    let smash = selftest(&hardened, "stack-smash", &"A".repeat(200));
    assert_eq!(smash.status.signal(), Some(4), "trapped with SIGILL: {:?}", smash.status);
    // Without the option, the overflow goes unnoticed.
    let plain = selftest(&stack_protector, "signed-overflow", "xx");
    assert!(plain.status.success(), "{:?}", plain.status);
}

#[test]
fn a_fault_is_reported_with_compartment_and_address() {
    use std::os::unix::process::ExitStatusExt;
    let out = Command::new(image("configs/sqlite-fs.toml"))
        .args(["--flexos-selftest", "wild-write", "0x10"])
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(11), "{:?}", out.status);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("flexos: compartment \"main\" faulted at 0x10 (page fault on write), instruction 0x"),
        "{report}"
    );
}

#[test]
fn a_script_packed_into_the_image_runs() {
    let r = run(&image("configs/sqlite.toml"), &["--script", "/sql/demo.sql"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Jupiter|95\nMars|2\nEarth|1\n5|98\n");
    let missing = run(&image("configs/sqlite.toml"), &["--script", "/sql/none.sql"]);
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("cannot read script /sql/none.sql"), "{}", missing.stderr);
}

#[test]
fn bad_sql_and_bad_arguments_fail_cleanly() {
    let r = run(&image("configs/sqlite.toml"), &["--sql", "SELEKT 1"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("syntax error"), "{}", r.stderr);
    let r = run(&image("configs/sqlite.toml"), &["--bogus"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("usage:"), "{}", r.stderr);
}

#[test]
fn no_component_keeps_a_mutable_static() {
    for config in CONFIGS {
        let img = image(config);
        let found = audit::writable_statics(&img).unwrap();
        assert!(found.is_empty(), "{config}: {found:?}");
        // The check sees the image's writable data: the trusted core's statics are there.
        let symbols = audit::writable_symbols(&img).unwrap();
        assert!(
            symbols.iter().any(|(s, _)| s.contains("flexos_alloc")),
            "the allocator's heaps are visible to the audit"
        );
    }
}

#[test]
fn the_baseline_leaves_no_files_behind() {
    let child = Command::new(baseline()).args(["--rows", "10"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let db = format!("/dev/shm/flexos-sqlite-{}.db", child.id());
    let out = child.wait_with_output().unwrap();
    assert_eq!(parse_workload(&String::from_utf8_lossy(&out.stdout)).unwrap().rows, 10);
    assert!(!Path::new(&db).exists(), "{db} was left behind");
    assert!(!Path::new(&format!("{db}-journal")).exists(), "{db}-journal was left behind");
}
