//! The checks of the `mpk` mechanism, shared by the native tests (on a CPU
//! with protection keys) and by the guest init that runs them inside a
//! Linux guest under QEMU's software CPU (`flexos guest-test`).
//!
//! Each [`Check`] runs one probe or SQLite image with some arguments and
//! judges the [`Outcome`]: the attacks of the isolation tests against an
//! `mpk` attacker compartment for every sharing strategy (foreign heap and
//! stack, read and write; main's code that is no entry point; a handle into
//! private memory; a jump into a gate's `wrpkru`; the attacks on shared
//! memory: scribbling over it, answering others' calls, flipping bytes a
//! callee checks), the positive test per
//! strategy, and SQLite in the three-compartment layout against one
//! compartment. On a CPU without protection keys every `mpk` check must
//! fail, and [`REFUSES_WITHOUT_PKU`] must pass (the negative control).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An image the checks run: its name (the file name in the guest) and its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Image {
    /// The name the checks use (also the file name under `/images` in the guest).
    pub name: &'static str,
    /// The configuration file, relative to the workspace root.
    pub config: &'static str,
}

/// Every image the checks need.
pub const IMAGES: &[Image] = &[
    Image { name: "probe-mpk-light", config: "configs/probe-mpk-light.toml" },
    Image { name: "probe-mpk-dss", config: "configs/probe-mpk-dss.toml" },
    Image { name: "probe-mpk-heap", config: "configs/probe-mpk-heap.toml" },
    Image { name: "sqlite-mpk", config: "configs/sqlite-mpk.toml" },
    Image { name: "sqlite", config: "configs/sqlite.toml" },
];

/// The check that an `mpk` image refuses to start without protection keys.
pub const REFUSES_WITHOUT_PKU: &str = "mpk-refuses-without-pku";

/// A query whose answer does not depend on the machine or the time.
pub const QUERY: &str = "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); \
    WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
    INSERT INTO t SELECT i, printf('%08d', (i * 7919) % 100003) FROM n; \
    CREATE INDEX tv ON t(v); \
    SELECT count(*), sum(k), min(v), max(v) FROM t; \
    SELECT k, v FROM t WHERE k % 500 = 0 ORDER BY v; \
    PRAGMA integrity_check;";

/// What a check expects.
#[derive(Clone, Debug)]
enum Expect {
    /// The positive test passes; shared locals crossed as `locals`.
    Behaves { locals: &'static str },
    /// The attacker dies of a key fault on memory of "main", with `access`
    /// ("read", "write", or "" for either: a read-modify-write instruction
    /// is reported as a write by some CPUs and as a read by QEMU's).
    KeyFault { access: &'static str },
    /// The attack succeeds: `shared-stack` shares stacks by design.
    SharedByDesign,
    /// The gate refuses a handle into private memory and stops the image.
    Refused,
    /// The gate's check loop leaves the attacker its own rights only.
    Gadget,
    /// The host judges an attack on shared memory stopped (`attack NAME:
    /// stopped (...)`), and nothing is reported of another compartment.
    Stopped { attack: &'static str },
    /// The SQLite workload completes with a sound database.
    Workload,
    /// Exit 0; the output is a reference for another check.
    Reference,
    /// Exit 0 and the same output as the named check.
    SameOutputAs(&'static str),
    /// The image refuses to start, saying that there are no protection keys.
    RefusesWithoutPku,
}

/// One check: an image, its arguments and what must happen.
#[derive(Clone, Debug)]
pub struct Check {
    /// Unique name, printed with the verdict.
    pub name: String,
    /// The image's name (one of [`IMAGES`]).
    pub image: &'static str,
    /// Arguments for the image.
    pub args: Vec<String>,
    expect: Expect,
}

/// How a run ended and what it printed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Check {
    /// Whether the check must pass on a CPU with protection keys (`pku`)
    /// or without them: reference runs pass on both, the refusal only
    /// without keys, every other check only with keys.
    pub fn must_pass(&self, pku: bool) -> bool {
        match self.expect {
            Expect::Reference => true,
            Expect::RefusesWithoutPku => !pku,
            _ => pku,
        }
    }

    /// Judges `outcome`; `earlier` holds the outcomes of the checks run
    /// before (for comparisons).
    pub fn verdict(&self, outcome: &Outcome, earlier: &[(String, Outcome)]) -> Result<(), String> {
        let o = outcome;
        let target = o.stdout.lines().find_map(|l| l.strip_prefix("target: ")).unwrap_or("");
        let key_fault = |access: &str| {
            let report = if target.starts_with("0x") {
                format!(
                    "compartment \"attacker\" touched {target} owned by \"main\" (protection key 1: page fault on {access}"
                )
            } else {
                format!("owned by \"main\" (protection key 1: page fault on {access}")
            };
            require(o.signal == Some(libc::SIGSEGV), "the image did not die of SIGSEGV", o)?;
            require(o.stderr.contains("flexos: compartment \"attacker\" touched "), "no key fault report", o)?;
            require(o.stderr.contains(&report), &format!("no report {report:?}"), o)
        };
        require(!o.stdout.contains("BREACHED") || matches!(self.expect, Expect::SharedByDesign), "BREACHED", o)?;
        match &self.expect {
            Expect::Behaves { locals } => {
                require(o.code == Some(0), "the positive test failed", o)?;
                require(o.stdout.contains("behaved: ok"), "no 'behaved: ok'", o)?;
                // readdir's result takes two trips through a stack-switching gate.
                require(o.stdout.contains("root entries: 1, hello among them: yes"), "readdir across the gate", o)?;
                require(o.stdout.contains(&format!("shared locals across a gate: {locals}")), "shared locals", o)
            }
            Expect::KeyFault { access } => key_fault(access),
            Expect::SharedByDesign => require(o.stdout.contains("BREACHED"), "shared stacks were not shared", o),
            Expect::Refused => {
                require(o.signal == Some(libc::SIGABRT), "the image did not stop (SIGABRT)", o)?;
                require(
                    o.stderr.contains("flexos: compartment \"main\" refused a call from compartment \"attacker\"")
                        && o.stderr.contains("an argument handle points outside shared memory"),
                    "no refusal report",
                    o,
                )
            }
            Expect::Gadget => {
                let line = o.stderr.lines().find(|l| l.starts_with("gadget: left the gate's check after "));
                let line = line.ok_or_else(|| describe("the attacker never left the gate", o))?;
                require(!line.ends_with("PKRU 0x00000000"), "the gate's wrpkru gave every key", o)?;
                key_fault("read")
            }
            Expect::Stopped { attack } => {
                require(o.code == Some(0), "the image did not end normally", o)?;
                require(o.stdout.contains(&format!("attack {attack}: stopped (")), "no 'stopped' verdict", o)?;
                require(!o.stdout.contains("ESCAPED"), "ESCAPED", o)?;
                let others = o
                    .stderr
                    .lines()
                    .any(|l| l.contains("\"clock\"") || l.contains("-> time") || l.contains("compartment \"main\""));
                require(!others, "a compartment other than the attacker was reported", o)
            }
            Expect::Workload => {
                require(o.code == Some(0), "the workload failed", o)?;
                require(
                    o.stdout.contains("rows: 5000") && o.stdout.contains("integrity_check: ok"),
                    "workload output",
                    o,
                )
            }
            Expect::Reference => require(o.code == Some(0), "the reference run failed", o),
            Expect::SameOutputAs(other) => {
                require(o.code == Some(0), "the run failed", o)?;
                let reference = earlier.iter().find(|(n, _)| n == other).map(|(_, r)| &r.stdout);
                let reference = reference.ok_or_else(|| format!("check {other} did not run before"))?;
                require(!reference.is_empty() && *reference == o.stdout, "output differs from the reference", o)
            }
            Expect::RefusesWithoutPku => {
                require(o.code.is_some_and(|c| c != 0) || o.signal.is_some(), "it started", o)?;
                require(
                    o.stderr.contains("uses mechanism \"mpk\", but this machine has no protection keys")
                        && o.stderr.contains("refuses to run its compartments unprotected"),
                    "no clear refusal",
                    o,
                )
            }
        }
    }
}

fn require(ok: bool, what: &str, o: &Outcome) -> Result<(), String> {
    if ok { Ok(()) } else { Err(describe(what, o)) }
}

fn describe(what: &str, o: &Outcome) -> String {
    let last = |s: &str| s.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
    format!(
        "{what} (exit {:?}, signal {:?}; stdout: {}; stderr: {})",
        o.code,
        o.signal,
        last(&o.stdout),
        last(&o.stderr)
    )
}

/// Every check, in the order they must run.
pub fn checks() -> Vec<Check> {
    let check = |name: String, image: &'static str, args: &[&str], expect| Check {
        name,
        image,
        args: args.iter().map(|a| a.to_string()).collect(),
        expect,
    };
    let mut all = Vec::new();
    for (sharing, image, locals) in [
        ("light", "probe-mpk-light", "shared heap"),
        ("dss", "probe-mpk-dss", "data shadow stack"),
        ("heap", "probe-mpk-heap", "shared heap"),
    ] {
        all.push(check(format!("{sharing}-behaves"), image, &["behave"], Expect::Behaves { locals }));
        for (attack, access) in [("read-heap", "read"), ("write-heap", "write")] {
            all.push(check(format!("{sharing}-{attack}"), image, &["attack", attack], Expect::KeyFault { access }));
        }
        for (attack, access) in [("read-stack", "read"), ("write-stack", "write")] {
            let expect = if sharing == "light" { Expect::SharedByDesign } else { Expect::KeyFault { access } };
            all.push(check(format!("{sharing}-{attack}"), image, &["attack", attack], expect));
        }
        all.push(check(
            format!("{sharing}-unexported"),
            image,
            &["attack", "unexported"],
            Expect::KeyFault { access: "" },
        ));
        all.push(check(format!("{sharing}-private-pointer"), image, &["attack", "private-pointer"], Expect::Refused));
        all.push(check(format!("{sharing}-gadget"), image, &["attack", "gadget"], Expect::Gadget));
        for attack in ["scribble-shared", "disturb-others", "double-fetch"] {
            all.push(check(format!("{sharing}-{attack}"), image, &["attack", attack], Expect::Stopped { attack }));
        }
    }
    all.push(check("sqlite-mpk-workload".into(), "sqlite-mpk", &[], Expect::Workload));
    all.push(check("sqlite-one-compartment-query".into(), "sqlite", &["--sql", QUERY], Expect::Reference));
    all.push(check(
        "sqlite-mpk-query".into(),
        "sqlite-mpk",
        &["--sql", QUERY],
        Expect::SameOutputAs("sqlite-one-compartment-query"),
    ));
    all.push(check(REFUSES_WITHOUT_PKU.into(), "probe-mpk-dss", &["behave"], Expect::RefusesWithoutPku));
    all
}

/// Runs `image` with `args`, killing it after `limit`.
pub fn run(image: &Path, args: &[String], limit: Duration) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let mut child = match Command::new(image).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return Outcome { stderr: format!("cannot run {}: {e}", image.display()), ..Outcome::default() },
    };
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped")));
    let err = reader(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut outcome = Outcome {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    if status.is_none() {
        outcome.stderr += &format!("\n(killed after {} s)", limit.as_secs());
    }
    outcome
}

/// Whether this CPU has protection keys enabled (`pku` and `ospke` in /proc/cpuinfo).
pub fn cpu_has_pku() -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    has("pku") && has("ospke")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(code: Option<i32>, signal: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
        Outcome { code, signal, stdout: stdout.into(), stderr: stderr.into() }
    }

    fn find(name: &str) -> Check {
        checks().into_iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn names_are_unique_and_images_known() {
        let all = checks();
        for (i, c) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|d| d.name != c.name), "{}", c.name);
            assert!(IMAGES.iter().any(|im| im.name == c.image), "{}", c.image);
        }
        assert_eq!(all.iter().filter(|c| c.must_pass(false)).count(), 2, "without keys: reference and refusal");
    }

    #[test]
    fn a_key_fault_on_the_target_passes_and_anything_else_fails() {
        let c = find("dss-read-heap");
        let report = "flexos: compartment \"attacker\" touched 0x10 owned by \"main\" (protection key 1: page fault on read), instruction 0x1\n";
        assert!(c.verdict(&outcome(None, Some(libc::SIGSEGV), "target: 0x10\n", report), &[]).is_ok());
        assert!(
            c.verdict(&outcome(None, Some(libc::SIGSEGV), "target: 0x20\n", report), &[]).is_err(),
            "wrong address"
        );
        assert!(c.verdict(&outcome(Some(1), None, "target: 0x10\nBREACHED: x\n", ""), &[]).is_err());
        let refused =
            "flexos: compartment \"attacker\" uses mechanism \"mpk\", but this machine has no protection keys";
        assert!(c.verdict(&outcome(Some(1), None, "", refused), &[]).is_err(), "no keys: the check fails");
    }

    #[test]
    fn the_gadget_check_rejects_every_key() {
        let c = find("heap-gadget");
        let fault =
            "flexos: compartment \"attacker\" touched 0x10 owned by \"main\" (protection key 1: page fault on read)";
        let ok = format!("gadget: left the gate's check after 10 single steps with PKRU 0xfffffccc\n{fault}");
        assert!(c.verdict(&outcome(None, Some(libc::SIGSEGV), "target: 0x10\n", &ok), &[]).is_ok());
        let bad = "gadget: left the gate's check after 5 single steps with PKRU 0x00000000\n";
        assert!(c.verdict(&outcome(Some(1), None, "target: 0x10\nBREACHED: read\n", bad), &[]).is_err());
    }

    #[test]
    fn comparisons_need_the_reference() {
        let c = find("sqlite-mpk-query");
        let reference = vec![("sqlite-one-compartment-query".to_string(), outcome(Some(0), None, "2000|x\n", ""))];
        assert!(c.verdict(&outcome(Some(0), None, "2000|x\n", ""), &reference).is_ok());
        assert!(c.verdict(&outcome(Some(0), None, "1999|x\n", ""), &reference).is_err());
        assert!(c.verdict(&outcome(Some(0), None, "2000|x\n", ""), &[]).is_err());
    }

    #[test]
    fn a_run_reports_status_output_and_timeouts() {
        let sh = Path::new("/bin/sh");
        let o = run(sh, &["-c".into(), "echo out; echo err >&2; exit 3".into()], Duration::from_secs(10));
        assert_eq!((o.code, o.stdout.as_str(), o.stderr.as_str()), (Some(3), "out\n", "err\n"));
        let o = run(sh, &["-c".into(), "kill -SEGV $$".into()], Duration::from_secs(10));
        assert_eq!(o.signal, Some(libc::SIGSEGV));
        let o = run(sh, &["-c".into(), "exec sleep 5".into()], Duration::from_millis(100));
        assert!(o.stderr.contains("killed after"));
        assert!(run(Path::new("/nonexistent"), &[], Duration::from_secs(1)).stderr.contains("cannot run"));
    }
}
