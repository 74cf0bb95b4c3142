//! The SQLite image: boots the LibOS, unpacks the packed files, and runs
//! the SQLite program (C) in the compartment the configuration gives it.
//!
//! `--flexos-gate-stats` (first argument) prints the gate crossings per
//! (caller, callee) pair at exit, in builds that count them.
#![deny(unsafe_code)]

use flexos_gate::layout::{self, component};

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

include!(concat!(env!("OUT_DIR"), "/packed_files.rs"));

fn main() {
    flexos_platform::fault::install(layout::COMPARTMENT_NAMES);
    // In a compartment's own process this serves calls and never returns.
    flexos_gate::boot(&[
        flexos_sched::FLEXOS_EXPORTS,
        flexos_time::FLEXOS_EXPORTS,
        flexos_vfs::FLEXOS_EXPORTS,
        flexos_ramfs::FLEXOS_EXPORTS,
    ]);
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
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = flexos_gate::fcall(component::SQLITE.compartment, || flexos_libc::run_c_main(&argv));
    if gate_stats {
        print_gate_stats();
    }
    std::process::exit(code);
}

fn print_gate_stats() {
    if !flexos_gate::stats::enabled() {
        eprintln!("gate-stats: not counted in this build (build with --gate-stats)");
        return;
    }
    eprintln!("gate-stats: layout {} ({} compartments)", layout::SOURCE, layout::COMPARTMENTS.len());
    for (from, to, n) in flexos_gate::stats::all() {
        let name = |id: usize| component::ALL.get(id).map_or("?", |c| c.name);
        eprintln!("gate-stats: {} -> {}: {n}", name(from), name(to));
    }
}
