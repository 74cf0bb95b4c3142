//! Every hardening option, proven on seeded bugs in both languages
//! (docs/hardening.md): each option's image reports the bugs it must catch
//! as `flexos: compartment "main": OPTION caught WHAT at ADDRESS`, and runs
//! every other seeded bug silently, as the image without hardening runs all
//! of them (the negative control). The instrumentation reaches only the
//! hardened components' code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every seeded bug: `c-*` in SQLite's C code, `rust-*` in the C library's Rust code.
const BUGS: [&str; 12] = [
    "c-heap-overflow",
    "c-use-after-free",
    "c-stack-overflow",
    "c-bad-indirect-call",
    "c-signed-overflow",
    "c-assertion",
    "rust-heap-overflow",
    "rust-use-after-free",
    "rust-stack-overflow",
    "rust-bad-indirect-call",
    "rust-signed-overflow",
    "rust-assertion",
];

/// A configuration written by the test (under target/) that gives `libc`
/// and `sqlite` the options each of them takes from `options`.
fn config(name: &str, rust: &[&str], c: &[&str]) -> String {
    let list = |o: &[&str]| o.iter().map(|o| format!("{o:?}")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "# Written by tools/flexos/tests/hardening.rs.\napp = \"sqlite\"\n\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n\n[component.libc]\nharden = [{}]\n\n[component.sqlite]\nharden = [{}]\n",
        list(rust),
        list(c)
    );
    let dir = flexos::workspace_root().join("target/flexos/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, text).unwrap();
    }
    path.to_string_lossy().into_owned()
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn selftest(image: &Path, bug: &str) -> Outcome {
    let out = Command::new(image).args(["--flexos-selftest", bug]).output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Runs every seeded bug on `image`: those in `caught` must be reported as
/// caught by `option` (with the given description), all others must run
/// silently to the end.
fn check(image: &Path, option: &str, caught: &[(&str, &str)]) {
    let expect: Vec<(&str, Vec<(&str, &str)>)> = caught.iter().map(|(b, w)| (*b, vec![(option, *w)])).collect();
    check_any(image, "main", &expect);
}

/// Runs every seeded bug on `image`: each bug of `caught` must be reported
/// as caught in compartment `compartment` by one of its (option,
/// description) pairs, and every other bug must run silently to the end.
fn check_any(image: &Path, compartment: &str, caught: &[(&str, Vec<(&str, &str)>)]) {
    for bug in BUGS {
        let o = selftest(image, bug);
        match caught.iter().find(|(b, _)| *b == bug) {
            Some((_, ways)) => {
                let reports: Vec<String> = ways
                    .iter()
                    .map(|(option, what)| format!("flexos: compartment \"{compartment}\": {option} caught {what} at "))
                    .collect();
                assert!(
                    reports.iter().any(|r| o.stderr.contains(r)),
                    "{bug}: expected one of {reports:?}, got {:?}: {}",
                    o.code,
                    o.stderr
                );
                assert_ne!(o.code, Some(0), "{bug}: the image must stop");
            }
            None => {
                assert_eq!(o.code, Some(0), "{bug} runs silently: {}", o.stderr);
                assert!(o.stdout.starts_with(&format!("selftest {bug}: ")), "{bug}: {}", o.stdout);
                assert!(!o.stderr.contains("caught"), "{bug}: {}", o.stderr);
            }
        }
    }
}

#[test]
fn without_hardening_every_seeded_bug_runs_silently() {
    check(&common::image("configs/sqlite.toml", true), "none", &[]);
}

#[test]
fn stack_protector_catches_stack_buffer_overflows_in_c_and_rust() {
    let img = common::image(&config("sqlite-stack-protector.toml", &["stack-protector"], &["stack-protector"]), true);
    check(&img, "stack-protector", &[("c-stack-overflow", CANARY), ("rust-stack-overflow", CANARY)]);
}

#[test]
fn kasan_catches_heap_overflows_uses_after_free_and_stack_overflows_in_c_and_rust() {
    let img = common::image(&config("sqlite-kasan.toml", &["kasan"], &["kasan"]), true);
    check(
        &img,
        "kasan",
        &[
            ("c-heap-overflow", HEAP_OVERFLOW),
            ("c-use-after-free", USE_AFTER_FREE),
            ("c-stack-overflow", STACK_OVERFLOW),
            ("rust-heap-overflow", HEAP_OVERFLOW),
            ("rust-use-after-free", USE_AFTER_FREE),
            ("rust-stack-overflow", STACK_OVERFLOW),
        ],
    );
}

#[test]
fn cfi_catches_bad_indirect_calls_in_c_and_rust() {
    let img = common::image(&config("sqlite-cfi.toml", &["cfi"], &["cfi"]), true);
    check(&img, "cfi", &[("c-bad-indirect-call", BAD_CALL), ("rust-bad-indirect-call", BAD_CALL)]);
}

const HEAP_OVERFLOW: &str = "a heap buffer overflow";
const USE_AFTER_FREE: &str = "a use after free";
const STACK_OVERFLOW: &str = "a stack buffer overflow";
const CANARY: &str = "a stack buffer overflow (the canary changed)";
const BAD_CALL: &str = "a bad indirect call (the target's type id does not match the call's)";
const UB: &str = "undefined behaviour (a UBSan trap)";
const OVERFLOW: &str = "an arithmetic overflow";
const ASSERTION: &str = "a failed assertion";

/// The options whose bugs barely overlap share one image: `ubsan` (C),
/// `overflow-checks` (Rust) and `debug-assertions` (both). UBSan's bounds
/// and object-size checks also stop the C heap and stack overflows (both
/// are undefined behaviour at an index it can see).
#[test]
fn ubsan_overflow_checks_and_debug_assertions_catch_their_bugs() {
    let img = common::image(
        &config("sqlite-checks.toml", &["overflow-checks", "debug-assertions"], &["ubsan", "debug-assertions"]),
        true,
    );
    check_any(
        &img,
        "main",
        &[
            ("c-heap-overflow", vec![("ubsan", UB)]),
            ("c-stack-overflow", vec![("ubsan", UB)]),
            ("c-signed-overflow", vec![("ubsan", UB)]),
            ("c-assertion", vec![("debug-assertions", ASSERTION)]),
            ("rust-signed-overflow", vec![("overflow-checks", OVERFLOW)]),
            ("rust-assertion", vec![("debug-assertions", ASSERTION)]),
        ],
    );
    // The reports name the source line of Rust and C checks.
    let o = selftest(&img, "rust-signed-overflow");
    assert!(o.stderr.contains("an arithmetic overflow at components/libc/src/selftest.rs:"), "{}", o.stderr);
    let o = selftest(&img, "c-assertion");
    assert!(o.stderr.contains("a failed assertion at c/selftest.c:"), "{}", o.stderr);
}

/// Every option on every component (`configs/sqlite-hardened-all.toml`:
/// the file system in a process, time in a VM, each hardened with every
/// Rust option; the C library and SQLite with all of theirs): every seeded
/// bug is caught, by one of the options that can see it, and the image
/// still runs the workload (the query comparison with Linux SQLite is in
/// sqlite_images.rs).
#[test]
fn every_option_on_every_component() {
    let img = common::image("configs/sqlite-hardened-all.toml", true);
    check_any(
        &img,
        "main",
        &[
            ("c-heap-overflow", vec![("kasan", HEAP_OVERFLOW), ("ubsan", UB)]),
            ("c-use-after-free", vec![("kasan", USE_AFTER_FREE)]),
            ("c-stack-overflow", vec![("kasan", STACK_OVERFLOW), ("ubsan", UB), ("stack-protector", CANARY)]),
            ("c-bad-indirect-call", vec![("cfi", BAD_CALL)]),
            ("c-signed-overflow", vec![("ubsan", UB)]),
            ("c-assertion", vec![("debug-assertions", ASSERTION)]),
            ("rust-heap-overflow", vec![("kasan", HEAP_OVERFLOW)]),
            ("rust-use-after-free", vec![("kasan", USE_AFTER_FREE)]),
            ("rust-stack-overflow", vec![("kasan", STACK_OVERFLOW), ("stack-protector", CANARY)]),
            ("rust-bad-indirect-call", vec![("cfi", BAD_CALL)]),
            ("rust-signed-overflow", vec![("overflow-checks", OVERFLOW)]),
            ("rust-assertion", vec![("debug-assertions", ASSERTION)]),
        ],
    );
}

/// The image's disassembly (binutils' objdump), by function.
fn functions(image: &Path) -> Vec<(String, String)> {
    let out = Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(image).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut list = Vec::new();
    for block in text.split("\n\n") {
        if let Some((head, body)) = block.split_once(">:\n")
            && let Some((_, name)) = head.rsplit_once(" <")
        {
            list.push((name.to_string(), body.to_string()));
        }
    }
    list
}

/// How many functions of crate `krate` (by its mangled name) satisfy `instrumented`, of how many.
fn count(funcs: &[(String, String)], krate: &str, instrumented: impl Fn(&str, &str) -> bool) -> (usize, usize) {
    let mine: Vec<_> = funcs.iter().filter(|(n, _)| n.contains(krate)).collect();
    (mine.iter().filter(|(n, b)| instrumented(n, b)).count(), mine.len())
}

/// Whether a function (name, disassembly) carries an option's instrumentation.
type Instrumented = fn(&str, &str) -> bool;

#[test]
fn hardening_one_component_leaves_the_others_code_unchanged() {
    let images: [(&str, PathBuf, Instrumented); 3] = [
        (
            "stack-protector",
            common::image(&config("sqlite-stack-protector.toml", &["stack-protector"], &["stack-protector"]), true),
            |_, body| body.contains("<__stack_chk_fail>"),
        ),
        // Inline checks call a report function; a function with very many
        // accesses (SQLite's interpreter) calls outlined checks instead.
        ("kasan", common::image(&config("sqlite-kasan.toml", &["kasan"], &["kasan"]), true), |_, body| {
            body.contains("<__asan_")
        }),
        ("cfi", common::image(&config("sqlite-cfi.toml", &["cfi"], &["cfi"]), true), |name, _| {
            name.starts_with("__cfi_")
        }),
    ];
    for (option, img, instrumented) in images {
        let funcs = functions(&img);
        let (libc, libc_all) = count(&funcs, "11flexos_libc", instrumented);
        let (vfs, vfs_all) = count(&funcs, "10flexos_vfs", instrumented);
        let (ramfs, ramfs_all) = count(&funcs, "12flexos_ramfs", instrumented);
        assert!(libc > 0, "{option}: no function of libc (of {libc_all}) is instrumented");
        assert!(vfs_all > 0 && ramfs_all > 0, "{option}: the image has vfs and ramfs code");
        assert_eq!((vfs, ramfs), (0, 0), "{option}: vfs and ramfs are not hardened but carry its instrumentation");
        // SQLite's C code (unmangled names) carries it too: its interpreter,
        // and (kcfi gives type ids to address-taken functions) its abs().
        let c = funcs
            .iter()
            .filter(|(n, b)| (n == "sqlite3VdbeExec" || n == "__cfi_absFunc") && instrumented(n, b))
            .count();
        assert!(c > 0, "{option}: SQLite's code is not instrumented");
    }
}
