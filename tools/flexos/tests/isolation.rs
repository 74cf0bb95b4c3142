//! Isolation is proven by attack: the `probe` component, in a compartment of
//! its own, behaves as a compromised compartment and attacks the default
//! one, for every mechanism that isolates (`proc` and `kvm`). Every attack must
//! be stopped and reported, the well-behaved calls must work, and nothing
//! (no process, no shared memory) may be left behind, even after a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The probe image of `config`.
fn image(config: &str) -> PathBuf {
    common::image(config, false)
}

/// The mechanisms whose attack tests run, with the probe configuration of each.
const MECHANISMS: &[(&str, &str)] = &[("proc", "configs/probe-proc.toml"), ("kvm", "configs/probe-kvm.toml")];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the image with a unique tag in its environment (inherited by every
/// compartment process), then checks that no process carrying the tag is left.
fn run(config: &str, args: &[&str]) -> Run {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let tag = {
        let mut n = NEXT.lock().unwrap();
        *n += 1;
        format!("{}-{}", std::process::id(), *n)
    };
    let out = Command::new(image(config)).args(args).env("FLEXOS_TEST_TAG", &tag).output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    common::assert_no_process_left(&tag, args);
    run
}

#[test]
fn well_behaved_calls_work_across_every_mechanism() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["behave"]);
        assert_eq!(r.code, 0, "{mechanism}: {}", r.stderr);
        assert_eq!(
            r.stdout,
            "echo: 1000\nnested: 1 thread(s)\nwrote: 7\nread back: behaved\nroot entries: 1, hello among them: yes\nserved while another call slept: yes (100 echoes)\nshared locals across a gate: shared heap\nthread-local values dropped when their thread ends: yes\nbehaved: ok\n",
            "{mechanism}: {}",
            r.stderr
        );
        assert!(r.stderr.is_empty(), "{mechanism}: {}", r.stderr);
    }
}

#[test]
fn an_idle_compartment_sleeps_instead_of_spinning() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["idle", "1000"]);
        assert_eq!(r.code, 0, "{mechanism}: {}", r.stderr);
        let ticks: u64 = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("idle_cpu_ticks: "))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{mechanism}: {}", r.stdout));
        // A thread spinning through the second would use about 100 ticks (1/100 s each).
        assert!(ticks <= 10, "{mechanism}: the idle compartment used {ticks} ticks of CPU in 1 s");
        assert!(r.stdout.ends_with("still serving: 42\n"), "{mechanism}: {}", r.stdout);
    }
}

/// An attack that must kill the attacker's domain: the image names the
/// compartment, the address and the reason, then shuts down with status 70.
fn assert_attacker_died(mechanism: &str, attack: &str, r: &Run, reason: &str) {
    assert!(!r.stdout.contains("BREACHED"), "{mechanism} {attack}: {}", r.stdout);
    assert_eq!(r.code, 70, "{mechanism} {attack}: {}\n{}", r.stdout, r.stderr);
    let target = r.stdout.lines().find_map(|l| l.strip_prefix("target: ")).map(str::to_string);
    let expected = match &target {
        Some(addr) => format!("flexos: compartment \"attacker\" faulted at {addr} ({reason})"),
        None => "flexos: compartment \"attacker\" faulted at 0x".to_string(),
    };
    assert!(r.stderr.contains(&expected), "{mechanism} {attack}: expected {expected:?} in {}", r.stderr);
    let died = if mechanism == "kvm" {
        "flexos: compartment \"attacker\" (VM) died"
    } else {
        "flexos: compartment \"attacker\" (process "
    };
    assert!(
        r.stderr.contains(died) && r.stderr.contains("shutting the image down"),
        "{mechanism} {attack}: {}",
        r.stderr
    );
}

#[test]
fn reading_and_writing_another_compartments_memory_is_stopped() {
    for (mechanism, config) in MECHANISMS {
        for (attack, reason) in [
            ("read-heap", "page fault on read"),
            ("write-heap", "page fault on write"),
            ("read-stack", "page fault on read"),
            ("write-stack", "page fault on write"),
        ] {
            let r = run(config, &["attack", attack]);
            assert_attacker_died(mechanism, attack, &r, reason);
        }
    }
}

#[test]
fn an_invalid_instruction_is_stopped() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["attack", "invalid-instruction"]);
        let reason = match *mechanism {
            "kvm" => "invalid instruction",
            _ => "illegal instruction",
        };
        assert_attacker_died(mechanism, "invalid-instruction", &r, reason);
    }
}

#[test]
fn a_forbidden_system_call_is_stopped() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["attack", "syscall"]);
        let reason = match *mechanism {
            "kvm" => "a system call (a VM has none)",
            _ => "a system call its seccomp filter forbids: number 257",
        };
        assert_attacker_died(mechanism, "syscall", &r, reason);
    }
}

/// An attack that the callee must refuse (and report) while it goes on serving.
fn assert_refused(mechanism: &str, attack: &str, r: &Run, expected: &[(&str, &str)]) {
    assert!(!r.stdout.contains("BREACHED"), "{mechanism} {attack}: {}", r.stdout);
    assert_eq!(r.code, 0, "{mechanism} {attack}: {}", r.stderr);
    for (what, reason) in expected {
        let line = format!("refused: {what}: {reason}");
        assert!(r.stdout.contains(&line), "{mechanism} {attack}: expected {line:?} in {}", r.stdout);
        let report = "flexos: compartment \"main\" refused a call from compartment \"attacker\"";
        assert!(r.stderr.contains(report) && r.stderr.contains(reason), "{mechanism} {attack}: {}", r.stderr);
    }
    assert!(r.stdout.ends_with("still serving: 42\n"), "{mechanism} {attack}: {}", r.stdout);
}

#[test]
fn calling_an_entry_point_that_is_not_exported_is_refused() {
    let reason = "the entry point is not exported to this compartment";
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["attack", "unexported"]);
        assert_refused(
            mechanism,
            "unexported",
            &r,
            &[
                ("unknown entry of sched", reason),
                ("entry of a component outside main", reason),
                ("unknown component", reason),
            ],
        );
    }
}

#[test]
fn a_pointer_into_the_callees_private_memory_is_refused() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["attack", "private-pointer"]);
        assert_refused(
            mechanism,
            "private-pointer",
            &r,
            &[("vfs::write with a handle into main's heap", "an argument handle points outside shared memory")],
        );
        assert!(r.stdout.contains("leaked: 0 bytes"), "{mechanism}: {}", r.stdout);
    }
}

#[test]
fn a_corrupted_call_frame_is_refused() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["attack", "bad-length"]);
        assert_refused(
            mechanism,
            "bad-length",
            &r,
            &[
                ("a length beyond the frame", "the call frame's length is invalid"),
                ("a length beyond the arguments", "the arguments are malformed"),
            ],
        );
        let r = run(config, &["attack", "malformed"]);
        assert_refused(
            mechanism,
            "malformed",
            &r,
            &[
                ("lseek with an invalid whence", "the arguments are malformed"),
                ("close with a truncated argument", "the arguments are malformed"),
            ],
        );
    }
}

/// An attack on shared memory: the host (not the attacker) prints one
/// verdict line, and nothing may be reported of a compartment other than
/// the attacker; the worst allowed outcome is that a call involving the
/// attacker fails and names it.
fn assert_stopped(mechanism: &str, attack: &str, r: &Run) {
    let verdict = format!("attack {attack}: stopped (");
    assert!(
        r.code == 0 && r.stdout.contains(&verdict) && !r.stdout.contains("ESCAPED"),
        "{mechanism} {attack}: status {}\n{}\n{}",
        r.code,
        r.stdout,
        r.stderr
    );
    for line in r.stderr.lines() {
        let about_others = line.contains("\"clock\"")
            || line.contains("-> time")
            || line.contains("compartment \"main\"") && !line.contains("from compartment \"attacker\"");
        assert!(!about_others, "{mechanism} {attack}: a compartment other than the attacker suffered: {line}");
    }
}

#[test]
fn attacks_on_shared_memory_are_stopped() {
    // Each fails against a control area and a shared-heap allocator that
    // every domain can write, and a file system that reads a name twice
    // (docs/isolation.md, "Negative controls").
    for (mechanism, config) in MECHANISMS {
        for attack in ["scribble-shared", "disturb-others", "double-fetch"] {
            let r = run(config, &["attack", attack]);
            assert_stopped(mechanism, attack, &r);
        }
    }
}

#[test]
fn the_round_trip_benchmark_runs() {
    for (mechanism, config) in MECHANISMS {
        let r = run(config, &["bench", "100"]);
        assert_eq!(r.code, 0, "{mechanism}: {}", r.stderr);
        for prefix in ["roundtrip_cycles: ", "pingpong_cycles: "] {
            let line = r.stdout.lines().find_map(|l| l.strip_prefix(prefix)).expect("a result line");
            let values: Vec<f64> = line.split(' ').map(|v| v.parse().unwrap()).collect();
            assert!(values.len() == 2 && values[0] > 0.0 && values[0] <= values[1], "{mechanism}: {prefix}{line}");
        }
    }
}

#[test]
fn killing_the_image_leaves_no_compartment_process_behind() {
    for (mechanism, config) in MECHANISMS {
        let tag = format!("{}-killed-{mechanism}", std::process::id());
        let _cleanup = common::Cleanup(tag.clone());
        let mut host = common::Running::spawn(
            Command::new(image(config))
                .args(["bench", "1000000"])
                .env("FLEXOS_TEST_TAG", &tag)
                .stdout(std::process::Stdio::null()),
        );
        // proc: the host and its two compartment processes (attacker, clock)
        // carry the tag; kvm: the host, whose vCPU threads serve the attacker.
        let running = || match *mechanism {
            "proc" => common::tagged_processes(&tag).len() == 3,
            _ => std::fs::read_dir(format!("/proc/{}/task", host.id())).is_ok_and(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu0-attacker"))
                })
            }),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running() {
            assert!(
                Instant::now() < deadline,
                "{mechanism}: compartment processes: {:?}",
                common::tagged_processes(&tag)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        host.kill().unwrap();
        host.wait().unwrap();
        common::assert_no_process_left(&tag, &["bench (killed)"]);
    }
}

#[test]
fn the_gate_benchmark_has_a_row_per_isolating_mechanism() {
    let remote: Vec<flexos::gatebench::RemoteGate> = MECHANISMS
        .iter()
        .map(|(m, config)| flexos::gatebench::RemoteGate { name: format!("{m} gate"), image: image(config) })
        .collect();
    let report = flexos::gatebench::run(0.01, &remote, &[]).unwrap();
    for (m, _) in MECHANISMS {
        for name in [format!("{m} gate"), format!("{}{m} gate", flexos::gatebench::PINGPONG_BESIDE)] {
            let row = report.rows.iter().find(|r| r.name == name).expect("a row per mechanism, and its ping-pong");
            assert!(row.min_cycles > 0.0 && row.min_cycles <= row.median_cycles, "{row:?}");
        }
        let table = flexos::gatebench::table(&report);
        assert!(table.contains(&format!("{m} gate vs the ping-pong measured beside it")), "{table}");
    }
    let bad = flexos::gatebench::RemoteGate { name: "broken".into(), image: PathBuf::from("/nonexistent/probe") };
    assert!(flexos::gatebench::run(0.01, &[bad], &[]).unwrap_err().contains("cannot run"));
}
