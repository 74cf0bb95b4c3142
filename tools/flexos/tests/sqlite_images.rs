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

/// Configurations every SQLite test runs; the last has every hardening
/// option on every component (docs/hardening.md).
const CONFIGS: [&str; 5] = [
    "configs/sqlite.toml",
    "configs/sqlite-fs.toml",
    "configs/sqlite-3comp-hardened.toml",
    "configs/sqlite-proc.toml",
    "configs/sqlite-hardened-all.toml",
];

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
        // The C library answers what it learned from its own calls (docs/architecture.md,
        // "What the C library knows"), and asks again after a call it did not make:
        // the knowledge held the stale answer (10) and the answer is right (1).
        let r = run(&image(config), &["--flexos-selftest", "rust-foreign-change"]);
        assert_eq!(r.stdout, "selftest rust-foreign-change: 11\n", "{config}: {}", r.stderr);
    }
    // With the file system in the host there is no knowledge to keep.
    let r = run(&image("configs/sqlite-fs.toml"), &["--flexos-selftest", "rust-foreign-change"]);
    assert_eq!(r.stdout, "selftest rust-foreign-change: 1\n", "{}", r.stderr);
}

#[test]
fn gates_inside_one_compartment_compile_to_plain_calls() {
    assert_eq!(audit::cross_gate_instances(&image("configs/sqlite.toml")).unwrap(), 0);
    assert!(audit::cross_gate_instances(&image("configs/sqlite-fs.toml")).unwrap() > 0);
}

/// How many of the image's symbols (demangled, binutils' nm) contain each of `needles`.
fn symbols_containing(image: &Path, needles: &[&str]) -> Vec<usize> {
    let out = Command::new("nm").arg("-C").arg(image).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    needles.iter().map(|n| text.lines().filter(|l| l.contains(n)).count()).collect()
}

/// Each image links the code of the mechanisms its configuration uses and
/// no other: KVM only with `kvm` compartments, seccomp only with `proc` ones
/// (their confinement) and `mpk` ones (the filter that denies the kernel's
/// copies between processes, docs/mpk.md).
#[test]
fn an_image_links_only_the_mechanisms_it_uses() {
    let needles = ["flexos_kvm::", "seccompiler::"];
    for (config, kvm, seccomp) in [
        ("configs/sqlite.toml", false, false),
        ("configs/sqlite-mpk.toml", false, true),
        ("configs/sqlite-proc.toml", false, true),
        ("configs/sqlite-kvm.toml", true, false),
    ] {
        let found = symbols_containing(&image(config), &needles);
        assert_eq!((found[0] > 0, found[1] > 0), (kvm, seccomp), "{config}: {needles:?} {found:?}");
    }
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
    let canary_checks = |d: &str| d.lines().filter(|l| l.contains("call") && l.contains("<__stack_chk_fail>")).count();
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
    assert!(
        String::from_utf8_lossy(&smash.stderr)
            .contains("flexos: compartment \"main\": stack-protector caught a stack buffer overflow"),
        "{}",
        String::from_utf8_lossy(&smash.stderr)
    );
    // UBSan (trapping) stops INT_MAX - 1 + 2, and catches the overflowing store even before the canary.
    let overflow = selftest(&hardened, "signed-overflow", "xx");
    assert_eq!(overflow.status.signal(), Some(4), "trapped with SIGILL: {:?}", overflow.status);
    let report = String::from_utf8_lossy(&overflow.stderr);
    assert!(
        report.contains("flexos: compartment \"main\": ubsan caught undefined behaviour (a UBSan trap) at 0x"),
        "{report}"
    );
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

/// The image of `config` without gate counting (the out-of-memory cases
/// need no counters, and share the builds of the other test binaries).
fn plain_image(config: &str) -> PathBuf {
    common::image(config, false)
}

/// Running out of memory, or filling the file system, is an error SQLite
/// reports for that statement, never an abort of the image, with the file
/// system in the image's own process, in another process and in a VM
/// (before: `memory allocation of 4194304 bytes failed`, exit 134; with
/// proc or kvm `disk I/O error`).
#[test]
fn out_of_memory_and_a_full_file_system_are_sqlite_errors() {
    let three_big = "CREATE TABLE b(x); INSERT INTO b VALUES(randomblob(500000000)); \
                     INSERT INTO b VALUES(randomblob(500000000)); INSERT INTO b VALUES(randomblob(500000000));";
    // 400 MB in one file: past the 256 MiB a ramfs file may hold.
    let too_large = "CREATE TABLE b(x); INSERT INTO b VALUES(randomblob(200000000)); \
                     INSERT INTO b VALUES(randomblob(200000000));";
    for config in ["configs/sqlite.toml", "configs/sqlite-proc.toml", "configs/sqlite-kvm.toml"] {
        let img = plain_image(config);
        let r = run(&img, &["--sql", three_big]);
        assert_eq!((r.code, r.stderr.trim()), (1, "error: out of memory"), "{config}: {}", r.stdout);
        let r = run(&img, &["--sql", too_large]);
        assert_eq!((r.code, r.stderr.trim()), (1, "error: database or disk is full"), "{config}");
        // The limits are options: a 1 MB file system is full after a 2 MB blob.
        let r = run(
            &img,
            &["--fs-size", "1000000", "--sql", "CREATE TABLE b(x); INSERT INTO b VALUES(zeroblob(2000000));"],
        );
        assert_eq!((r.code, r.stderr.trim()), (1, "error: database or disk is full"), "{config}");
        let r = run(
            &img,
            &["--fs-max-file-size", "100000", "--sql", "CREATE TABLE b(x); INSERT INTO b VALUES(zeroblob(200000));"],
        );
        assert_eq!((r.code, r.stderr.trim()), (1, "error: database or disk is full"), "{config}");
        let r = run(&img, &["--sql", "SELECT length(zeroblob(1000));"]);
        assert_eq!((r.code, r.stdout.as_str()), (0, "1000\n"), "{config}: {}", r.stderr);
    }
}

/// SQL on standard input runs as a script, from a file or a pipe, beyond
/// the kernel's 128 KiB limit on one argument; a script the image cannot
/// see says why.
#[test]
fn sql_on_standard_input_runs_and_an_unreadable_script_says_why() {
    let img = plain_image("configs/sqlite.toml");
    let mut sql = String::from("CREATE TABLE t(x);\n");
    for i in 0..20_000 {
        sql.push_str(&format!("INSERT INTO t VALUES({i});\n"));
    }
    sql.push_str("SELECT count(*), sum(x) FROM t;\n");
    assert!(sql.len() > 128 * 1024);
    let file = std::env::temp_dir().join(format!("flexos-stdin-{}.sql", std::process::id()));
    std::fs::write(&file, &sql).unwrap();
    let expected = "20000|199990000\n";
    // Redirected from a file.
    let out = Command::new(&img).stdin(std::fs::File::open(&file).unwrap()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{}", String::from_utf8_lossy(&out.stderr));
    // Through a pipe, and as `--script -`.
    for args in [&[][..], &["--script", "-"]] {
        let mut child = Command::new(&img)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let text = sql.clone();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, text.as_bytes()));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{args:?}");
    }
    // Through the tool: `flexos run CONFIG < FILE`.
    let out = Command::new(env!("CARGO_BIN_EXE_flexos"))
        .args(["run", "-q", "configs/sqlite.toml"])
        .current_dir(flexos::workspace_root())
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{}", String::from_utf8_lossy(&out.stderr));
    // A host path is not in the image's file system: the error says so, and what to do.
    let r = run(&img, &["--script", file.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no such file in the image's file system"), "{}", r.stderr);
    assert!(r.stderr.contains("flexos run CONFIG < FILE"), "{}", r.stderr);
    // Without standard input (the terminal or /dev/null) the default workload runs.
    let r = run(&img, &["--rows", "10"]);
    assert!(r.stdout.contains("rows: 10"), "{}", r.stdout);
    std::fs::remove_file(&file).unwrap();
}
