//! Every kind of configuration mistake is rejected with file, line, column and a fix.

use flexos_config::{Hardening, Mechanism, Sharing, parse};
use std::path::Path;

fn errors(text: &str) -> Vec<flexos_config::ConfigError> {
    parse(Path::new("configs/bad.toml"), text).expect_err("configuration should be rejected")
}

fn one_error(text: &str) -> flexos_config::ConfigError {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected exactly one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

const HEAD: &str = "app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n";

#[test]
fn valid_two_compartments() {
    let text = format!(
        "{HEAD}[[compartment]]\nname = \"fs\"\nmechanism = \"fcall\"\n[component.vfs]\ncompartment = \"fs\"\n[component.ramfs]\ncompartment = \"fs\"\nharden = [\"overflow-checks\"]\n[component.sqlite]\nharden = [\"stack-protector\", \"ubsan\"]\n"
    );
    let layout = parse(Path::new("x.toml"), &text).unwrap();
    assert_eq!(layout.compartments.len(), 2);
    assert_eq!(layout.compartments[1].mechanism, Mechanism::Fcall);
    assert_eq!(layout.compartments[1].sharing, Sharing::SharedStack);
    assert_eq!(layout.compartment_of("vfs"), Some(1));
    assert_eq!(layout.compartment_of("ramfs"), Some(1));
    assert_eq!(layout.compartment_of("time"), Some(0));
    assert_eq!(layout.compartment_of("sqlite"), Some(0));
    assert_eq!(layout.placement("ramfs").unwrap().harden, vec![Hardening::OverflowChecks]);
    assert_eq!(layout.placement("sqlite").unwrap().harden, vec![Hardening::StackProtector, Hardening::Ubsan]);
}

#[test]
fn default_compartment_becomes_index_zero() {
    let text = "app = \"sqlite\"\n[[compartment]]\nname = \"fs\"\nmechanism = \"fcall\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n[component.vfs]\ncompartment = \"fs\"\n";
    let layout = parse(Path::new("x.toml"), text).unwrap();
    assert_eq!(layout.compartments[0].name, "main");
    assert_eq!(layout.compartment_of("vfs"), Some(1));
    assert_eq!(layout.compartment_of("sched"), Some(0));
}

#[test]
fn single_compartment_is_default_without_flag() {
    let layout =
        parse(Path::new("x.toml"), "app = \"sqlite\"\n[[compartment]]\nname = \"only\"\nmechanism = \"fcall\"\n")
            .unwrap();
    assert_eq!(layout.compartments[0].name, "only");
}

#[test]
fn unknown_component_names_line_and_fix() {
    let e = one_error(&format!("{HEAD}[component.vfss]\ncompartment = \"main\"\n"));
    assert_eq!((e.line, e.column), (6, 12));
    assert!(e.message.contains("unknown component \"vfss\""), "{e}");
    assert!(e.fix.contains("vfs") && e.fix.contains("ramfs"), "{e}");
    let shown = e.to_string();
    assert!(shown.starts_with("configs/bad.toml:6:12: error:"), "{shown}");
}

#[test]
fn component_of_another_app() {
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n[component.kv]\n");
    assert!(e.message.contains("component \"kv\" is not part of an image of app \"sqlite\""), "{e}");
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n[component.redis]\n");
    assert!(e.message.contains("unknown component"), "{e}");
}

#[test]
fn unknown_compartment_reference() {
    let e = one_error(&format!("{HEAD}[component.vfs]\ncompartment = \"fs\"\n"));
    assert_eq!((e.line, e.column), (7, 15));
    assert!(e.message.contains("unknown compartment \"fs\""), "{e}");
    assert!(e.fix.contains("main"), "{e}");
}

#[test]
fn missing_default_with_two_compartments() {
    let e = one_error(
        "app = \"sqlite\"\n[[compartment]]\nname = \"a\"\nmechanism = \"fcall\"\n[[compartment]]\nname = \"b\"\nmechanism = \"fcall\"\n",
    );
    assert!(e.message.contains("no compartment is marked as the default"), "{e}");
    assert!(e.fix.contains("default = true"), "{e}");
}

#[test]
fn two_defaults() {
    let e = one_error(&format!("{HEAD}[[compartment]]\nname = \"b\"\nmechanism = \"fcall\"\ndefault = true\n"));
    assert_eq!(e.line, 9);
    assert!(e.message.contains("second default"), "{e}");
}

#[test]
fn duplicate_compartment_names() {
    let e = one_error(&format!("{HEAD}[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n"));
    assert_eq!((e.line, e.column), (7, 8));
    assert!(e.message.contains("defined twice"), "{e}");
}

#[test]
fn unknown_mechanism() {
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"sgx\"\n");
    assert_eq!((e.line, e.column), (4, 13));
    assert!(e.fix.contains("fcall, mpk, proc, kvm"), "{e}");
}

#[test]
fn mpk_mixes_with_every_mechanism() {
    let text = format!(
        "{HEAD}[[compartment]]\nname = \"fs\"\nmechanism = \"mpk\"\nsharing = \"heap\"\n[[compartment]]\nname = \"t\"\nmechanism = \"mpk\"\nsharing = \"shared-stack\"\n[[compartment]]\nname = \"p\"\nmechanism = \"proc\"\n[[compartment]]\nname = \"k\"\nmechanism = \"kvm\"\n[component.vfs]\ncompartment = \"fs\"\n[component.time]\ncompartment = \"t\"\n[component.ramfs]\ncompartment = \"p\"\n"
    );
    let layout = parse(Path::new("x.toml"), &text).unwrap();
    assert_eq!(layout.compartments[1].mechanism, Mechanism::Mpk);
    assert_eq!(layout.compartments[1].sharing, Sharing::Heap);
    assert_eq!(layout.compartments[2].sharing, Sharing::SharedStack);
    let dss = format!("{HEAD}[[compartment]]\nname = \"x\"\nmechanism = \"mpk\"\n");
    assert_eq!(parse(Path::new("x.toml"), &dss).unwrap().compartments[1].sharing, Sharing::Dss, "dss is mpk's default");
}

#[test]
fn at_most_thirteen_mpk_compartments() {
    let mut text = HEAD.to_string();
    for i in 0..14 {
        text.push_str(&format!("[[compartment]]\nname = \"c{i}\"\nmechanism = \"mpk\"\n"));
    }
    let e = one_error(&text);
    assert_eq!(e.line, 6 + 13 * 3 + 2, "the fourteenth mpk compartment: {e}");
    assert!(e.message.contains("more than 13") && e.fix.contains("protection keys"), "{e}");
}

#[test]
fn default_compartment_must_run_in_the_host() {
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"proc\"\n");
    assert_eq!((e.line, e.column), (4, 13));
    assert!(e.message.contains("default compartment \"main\" cannot use mechanism \"proc\""), "{e}");
    assert!(e.fix.contains("fcall"), "{e}");
}

#[test]
fn sharing_the_mechanism_cannot_provide() {
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\nsharing = \"dss\"\n");
    assert_eq!((e.line, e.column), (5, 11));
    assert!(e.message.contains("cannot provide sharing \"dss\""), "{e}");
    assert!(e.fix.contains("shared-stack"), "{e}");
    let e =
        one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\nsharing = \"stack\"\n");
    assert!(e.message.contains("unknown sharing strategy"), "{e}");
}

#[test]
fn hardening_that_does_not_apply() {
    let e = one_error(&format!("{HEAD}[component.vfs]\nharden = [\"ubsan\"]\n"));
    assert_eq!((e.line, e.column), (7, 11));
    assert!(e.message.contains("does not apply"), "{e}");
    assert!(e.fix.contains("overflow-checks"), "{e}");
    let e = one_error(&format!("{HEAD}[component.sqlite]\nharden = [\"stack-protector\", \"safe-stack\"]\n"));
    assert!(e.message.contains("unknown hardening option \"safe-stack\""), "{e}");
    assert!(e.fix.contains("debug-assertions, stack-protector, ubsan, kasan, cfi"), "{e}");
    let e = one_error(&format!("{HEAD}[component.sqlite]\nharden = [\"overflow-checks\"]\n"));
    assert!(e.message.contains("hardening \"overflow-checks\" does not apply to \"sqlite\" (C code)"), "{e}");
    // Every option of both languages applies to its components.
    let all = "harden = [\"overflow-checks\", \"debug-assertions\", \"stack-protector\", \"kasan\", \"cfi\"]";
    let c = "harden = [\"debug-assertions\", \"stack-protector\", \"ubsan\", \"kasan\", \"cfi\"]";
    let ok = format!("{HEAD}[component.libc]\n{all}\n[component.sqlite]\n{c}\n");
    let layout = parse(Path::new("configs/ok.toml"), &ok).unwrap();
    assert_eq!(layout.placement("libc").unwrap().harden.len(), 5);
    assert_eq!(layout.placement("sqlite").unwrap().harden.len(), 5);
}

#[test]
fn kasan_only_where_memory_errors_can_be_and_shadow_memory_exists() {
    // A Rust crate that forbids unsafe code has no memory errors for kasan to find.
    let e = one_error(&format!("{HEAD}[component.vfs]\nharden = [\"kasan\"]\n"));
    assert_eq!((e.line, e.column), (7, 11));
    assert!(e.message.contains("\"kasan\" finds nothing in \"vfs\": its crate forbids unsafe code"), "{e}");
    assert!(!e.fix.contains("kasan") && e.fix.contains("cfi"), "{e}");
    // A VM has no shadow memory: refused there, with the fix. (Only the
    // application and the C library can contain unsafe code, and they stay
    // in the image's own process, so this comes with that error too.)
    let vm = "[[compartment]]\nname = \"app\"\nmechanism = \"kvm\"\n";
    let text = format!(
        "{HEAD}{vm}[component.libc]\ncompartment = \"app\"\n[component.sqlite]\ncompartment = \"app\"\nharden = [\"kasan\"]\n"
    );
    let errors = parse(Path::new("configs/bad.toml"), &text).unwrap_err();
    let kasan = errors
        .iter()
        .find(|e| e.message.contains("hardening \"kasan\" cannot harden \"sqlite\""))
        .expect("kasan refused");
    assert!(kasan.message.contains("in compartment \"app\" (mechanism \"kvm\")"), "{kasan}");
    assert!(kasan.fix.contains("place \"sqlite\" in a compartment of another mechanism, or drop \"kasan\""), "{kasan}");
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn rust_sanitizers_stay_out_of_statically_linked_mpk_images() {
    let mpk = "app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"mpk\"\ndefault = true\n";
    for option in ["kasan", "cfi"] {
        let e = one_error(&format!("{mpk}[component.libc]\nharden = [\"{option}\"]\n"));
        assert!(
            e.message.contains(&format!(
                "hardening \"{option}\" of Rust component \"libc\" cannot be built into an image with mpk compartments"
            )),
            "{e}"
        );
        assert!(e.fix.contains("C components can keep it"), "{e}");
        // SQLite (C) keeps it.
        assert!(
            parse(Path::new("configs/ok.toml"), &format!("{mpk}[component.sqlite]\nharden = [\"{option}\"]\n")).is_ok()
        );
    }
}

#[test]
fn the_application_stays_in_the_image_process() {
    for mechanism in ["proc", "kvm"] {
        let text = format!(
            "{HEAD}[[compartment]]\nname = \"app\"\nmechanism = \"{mechanism}\"\n[component.libc]\ncompartment = \"app\"\n[component.sqlite]\ncompartment = \"app\"\n"
        );
        let e = one_error(&text);
        assert_eq!(e.line, 12, "at sqlite's compartment: {e}");
        assert!(
            e.message.contains(&format!("the application \"sqlite\" cannot be in {mechanism} compartment \"app\"")),
            "{e}"
        );
        assert!(e.fix.contains("fcall or mpk"), "{e}");
    }
}

#[test]
fn libc_must_stay_with_c_code() {
    let e = one_error(&format!(
        "{HEAD}[[compartment]]\nname = \"b\"\nmechanism = \"fcall\"\n[component.libc]\ncompartment = \"b\"\n"
    ));
    assert!(e.message.contains("same compartment"), "{e}");
}

#[test]
fn the_network_device_stays_with_the_stack_and_out_of_vms() {
    let kv = HEAD.replace("sqlite", "kv");
    let e = one_error(&format!(
        "{kv}[[compartment]]\nname = \"b\"\nmechanism = \"fcall\"\n[component.net]\ncompartment = \"b\"\n"
    ));
    assert!(e.message.contains("\"netdev\" and \"net\" must be in the same compartment"), "{e}");
    let e = one_error(&format!(
        "{kv}[[compartment]]\nname = \"vm\"\nmechanism = \"kvm\"\n[component.net]\ncompartment = \"vm\"\n[component.netdev]\ncompartment = \"vm\"\n"
    ));
    assert!(e.message.contains("cannot run in kvm compartment \"vm\""), "{e}");
    assert!(e.fix.contains("fcall or proc"), "{e}");
    assert_eq!((e.line, e.column), (12, 15), "at netdev's compartment, not at [component.net]: {e}");
    // The network components exist only in network images.
    let e = one_error(&format!("{HEAD}[component.net]\ncompartment = \"main\"\n"));
    assert!(e.message.contains("not part of an image of app \"sqlite\""), "{e}");
    let ok = format!(
        "{kv}[[compartment]]\nname = \"p\"\nmechanism = \"proc\"\n[component.net]\ncompartment = \"p\"\n[component.netdev]\ncompartment = \"p\"\n"
    );
    assert!(parse(Path::new("configs/ok.toml"), &ok).is_ok());
}

#[test]
fn unknown_application_and_keys() {
    let e = one_error("app = \"redis\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n");
    assert_eq!((e.line, e.column), (1, 7));
    assert!(e.fix.contains("sqlite"), "{e}");
    let e = one_error(&format!("{HEAD}[component.vfs]\nplace = \"main\"\n"));
    assert_eq!(e.line, 7);
    assert!(e.message.contains("unknown key `place` in [component.NAME]"), "{e}");
    assert!(e.fix.contains("compartment, harden"), "{e}");
}

#[test]
fn syntax_error_is_located() {
    let e = one_error("app = \"sqlite\"\n[[compartment]\n");
    assert_eq!(e.line, 2);
}

#[test]
fn several_errors_are_all_reported_in_order() {
    let e = errors(&format!("{HEAD}[component.nope]\n[component.vfs]\ncompartment = \"x\"\n"));
    assert_eq!(e.len(), 2);
    assert!(e[0].line < e[1].line);
}

#[test]
fn load_names_missing_file() {
    let e = flexos_config::load(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(e[0].to_string().starts_with("/nonexistent/x.toml:1:1: error: cannot read"), "{}", e[0]);
}

#[test]
fn files_folder_is_resolved_against_the_config() {
    let dir = std::env::temp_dir().join(format!("flexos-files-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("site")).unwrap();
    let text = "app = \"sqlite\"\nfiles = \"site\"\n[[compartment]]\nname = \"m\"\nmechanism = \"fcall\"\n";
    let layout = parse(&dir.join("c.toml"), text).unwrap();
    assert_eq!(layout.files, Some(std::fs::canonicalize(dir.join("site")).unwrap()));
    let e = parse(
        &dir.join("c.toml"),
        "app = \"sqlite\"\nfiles = \"nope\"\n[[compartment]]\nname = \"m\"\nmechanism = \"fcall\"\n",
    )
    .unwrap_err();
    assert_eq!((e[0].line, e[0].column), (2, 9));
    assert!(e[0].message.contains("does not exist"));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Random edits of a valid configuration are either accepted or rejected
/// with located errors; the checker never panics.
#[test]
fn mutated_configurations_never_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs");
    let path = Path::new(dir).join("sqlite-3comp-hardened.toml");
    let base = std::fs::read_to_string(&path).unwrap();
    let pieces =
        ["[", "]", "=", "\"", "\n", ".", "#", ",", "{", "}", "é", "default = true\n", "[[compartment]]\n", "\u{0}"];
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..3000 {
        let mut text: Vec<char> = base.chars().collect();
        for _ in 0..1 + next(4) {
            let at = next(text.len() + 1);
            match next(3) {
                0 if !text.is_empty() => {
                    let end = (at + next(12)).min(text.len());
                    text.drain(at.min(end)..end);
                }
                1 => text.splice(at..at, pieces[next(pieces.len())].chars()).for_each(drop),
                _ => {
                    let line: Vec<char> = base.lines().nth(next(base.lines().count())).unwrap().chars().collect();
                    text.splice(at..at, line.into_iter().chain(['\n'])).for_each(drop);
                }
            }
        }
        let text: String = text.into_iter().collect();
        match parse(&path, &text) {
            Ok(_) => accepted += 1,
            Err(errors) => {
                rejected += 1;
                assert!(!errors.is_empty());
                for e in errors {
                    assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e} in:\n{text}");
                    assert!(!e.fix.is_empty());
                }
            }
        }
    }
    assert!(accepted > 0 && rejected > 0, "accepted {accepted}, rejected {rejected}");
}

/// Every unknown key and every value of the wrong type, at once, with a
/// suggestion for a misspelled key.
#[test]
fn every_shape_error_is_reported_at_once_with_suggestions() {
    let text = format!(
        "{HEAD}sharing = 3\n[[compartment]]\nname = \"fs\"\nmechansim = \"proc\"\n[component.vfs]\ncompartmnet = \"fs\"\nharden = \"overflow-checks\"\n[component.ramfs]\ncompartment = [\"fs\"]\ncolour = \"red\"\n"
    );
    let e = errors(&text);
    let shown: Vec<String> = e.iter().map(|e| format!("{}:{} {} / {}", e.line, e.column, e.message, e.fix)).collect();
    assert_eq!(
        shown,
        vec![
            "6:11 `sharing` must be a string, not a number / write sharing = \"heap\"",
            "7:1 [[compartment]] has no `mechanism` / add mechanism = \"fcall\"",
            "9:1 unknown key `mechansim` in [[compartment]] / did you mean `mechanism`?",
            "11:1 unknown key `compartmnet` in [component.NAME] / did you mean `compartment`?",
            "12:10 `harden` must be an array of strings, not a string / write harden = [\"overflow-checks\"]",
            "14:15 `compartment` must be a string, not an array / write compartment = \"main\"",
            "15:1 unknown key `colour` in [component.NAME] / remove it; keys of [component.NAME] are: compartment, harden",
        ],
        "{e:#?}"
    );
    // Misspelled values get suggestions too.
    let e = one_error("app = \"sqlite\"\n[[compartment]]\nname = \"main\"\nmechanism = \"mkp\"\n");
    assert!(e.fix.starts_with("did you mean \"mpk\"?"), "{e}");
    let e = one_error(&format!("{HEAD}[component.vsf]\n"));
    assert!(e.fix.starts_with("did you mean \"vfs\"?"), "{e}");
}

#[test]
fn a_table_given_twice_says_so() {
    let e = one_error(&format!("{HEAD}[component.vfs]\ncompartment = \"main\"\n[component.vfs]\nharden = []\n"));
    assert_eq!(e.line, 8, "{e}");
    assert_eq!(e.message, "table [component.vfs] is defined twice");
    assert!(e.fix.contains("merge the two [component.vfs] tables"), "{e}");
    let e = one_error("app = \"sqlite\"\napp = \"kv\"\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("key `app` is given twice"), "{e}");
}

#[test]
fn files_that_are_not_configurations_are_refused_at_once() {
    let dir = std::env::temp_dir().join(format!("flexos-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Not UTF-8: the byte is located, and the fix is not "check the path".
    let latin1 = dir.join("latin1.toml");
    std::fs::write(&latin1, b"app = \"sqlite\"\n# caf\xe9\n").unwrap();
    let e = flexos_config::load(&latin1).unwrap_err();
    assert_eq!((e[0].line, e[0].column), (2, 6), "{}", e[0]);
    assert!(e[0].message.contains("not UTF-8 text (byte 0xe9)") && e[0].fix.contains("UTF-8"), "{}", e[0]);
    // Too large, or endless: refused after reading at most the limit.
    let e = flexos_config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(e[0].message.contains("larger than 1024 KiB"), "{}", e[0]);
    let e = flexos_config::load(&dir).unwrap_err();
    assert!(e[0].fix.contains("not a folder"), "{}", e[0]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Twenty thousand unknown component tables (a 400 KB file): checked in
/// one pass (the line of each error is found by binary search; before,
/// each error rescanned the file, so 16,000 tables took 5.8 s), and the
/// report stops at MAX_ERRORS with a count of the rest.
#[test]
fn a_large_file_is_checked_in_one_pass_and_its_errors_are_capped() {
    let mut text = HEAD.to_string();
    for i in 0..20_000 {
        text.push_str(&format!("[component.c{i}]\n"));
    }
    let e = errors(&text);
    assert_eq!(e.len(), flexos_config::MAX_ERRORS + 1);
    assert!(e[0].message.contains("unknown component \"c0\""), "{}", e[0]);
    assert_eq!(e.last().unwrap().message, format!("{} more errors are not shown", 20_000 - flexos_config::MAX_ERRORS));
}
