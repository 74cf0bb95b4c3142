//! The SQLite image: boots the LibOS, unpacks the packed files, and runs
//! the SQLite program (C) in the compartment the configuration gives it.
//!
//! `--flexos-gate-stats` (first argument) prints the gate crossings per
//! (caller, callee) pair at exit, in builds that count them.
//!
//! SQL on standard input runs as a script: `flexos-sqlite < FILE.sql` or
//! `... | flexos-sqlite` (when no `--sql`, `--script` or `--rows` is given
//! and standard input is a file or a pipe), or `--script -`. The text is
//! copied into the image's file system as [`STDIN_SCRIPT`], so any workload
//! runs without repacking the image and without the kernel's 128 KiB limit
//! on one argument that `--sql` has.
#![forbid(unsafe_code)]

use flexos_gate::layout::{self, component};

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

include!(concat!(env!("OUT_DIR"), "/packed_files.rs"));

fn main() {
    flexos_platform::fault::install(layout::COMPARTMENT_NAMES);
    // In a compartment's own process this serves calls and never returns.
    flexos_boot::boot();
    let mut args: Vec<String> = std::env::args().collect();
    let gate_stats = args.get(1).is_some_and(|a| a == "--flexos-gate-stats");
    if gate_stats {
        args.remove(1);
    }
    for (path, data) in PACKED_FILES {
        if let Err(e) = flexos_libc::install_file(path, data) {
            eprintln!("flexos: cannot unpack {path} into the image's file system: errno {}", e.0);
            std::process::exit(70);
        }
    }
    if let Err(e) = script_from_stdin(&mut args) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let [_, flag, name] = &args[..]
        && flag == "--flexos-selftest"
        && let Some(bug) = name.strip_prefix("rust-")
    {
        // A seeded bug in the C library's Rust code (docs/hardening.md), in its compartment.
        let bug = bug.to_string();
        match flexos_gate::fcall(component::SQLITE.compartment, move || flexos_libc::selftest::run(&bug)) {
            Some(r) => println!("selftest {name}: {r}"),
            None => {
                eprintln!("error: unknown seeded bug {name:?}");
                std::process::exit(2);
            }
        }
        std::process::exit(0);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = flexos_gate::fcall(component::SQLITE.compartment, || flexos_libc::run_c_main(&argv));
    if gate_stats {
        print_gate_stats();
    }
    std::process::exit(code);
}

fn print_gate_stats() {
    eprint!("{}", flexos_gate::stats::report());
}

/// Where SQL from standard input is put in the image's file system.
const STDIN_SCRIPT: &str = "/stdin.sql";

/// The most SQL read from standard input: the file system's largest file.
const MAX_STDIN_SCRIPT: u64 = flexos_ramfs::MAX_FILE_SIZE;

/// If the command line asks for a script on standard input (`--script -`),
/// or gives no SQL, script or workload while standard input is a file or a
/// pipe, copies standard input to [`STDIN_SCRIPT`] and names it in `args`.
fn script_from_stdin(args: &mut Vec<String>) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let dash = args.windows(2).position(|w| w[0] == "--script" && w[1] == "-");
    let explicit = args.iter().any(|a| matches!(a.as_str(), "--sql" | "--script" | "--rows" | "--flexos-selftest"));
    let stdin_is_data = std::fs::metadata("/proc/self/fd/0").is_ok_and(|m| m.is_file() || m.file_type().is_fifo());
    if dash.is_none() && (explicit || !stdin_is_data) {
        return Ok(());
    }
    let mut sql = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_SCRIPT + 1)
        .read_to_end(&mut sql)
        .map_err(|e| format!("cannot read SQL from standard input: {e}"))?;
    if sql.len() as u64 > MAX_STDIN_SCRIPT {
        return Err(format!(
            "SQL on standard input is larger than the file system's largest file ({MAX_STDIN_SCRIPT} bytes)"
        ));
    }
    flexos_libc::install_file(STDIN_SCRIPT, &sql)
        .map_err(|e| format!("cannot copy standard input into the image's file system: errno {}", e.0))?;
    match dash {
        Some(i) => args[i + 1] = STDIN_SCRIPT.into(),
        None => args.extend(["--script".to_string(), STDIN_SCRIPT.to_string()]),
    }
    Ok(())
}
