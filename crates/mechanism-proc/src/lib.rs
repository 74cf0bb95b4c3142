//! The `proc` mechanism: a compartment in a process of its own, started
//! from the image, confined with a seccomp filter, and watched.
//!
//! A compartment process is a fresh `exec` of the image (never a bare
//! `fork`, which would copy the host's private memory into it), told its
//! role by `flexos_platform::domain::ENV`. It dies with the host
//! (parent-death signal). If it dies first, the host reports which
//! compartment died and why, kills the other compartment processes and
//! ends the image. The remote calls between processes are the gate's
//! (`flexos_gate::remote`), shared with `kvm`; only an image with `proc`
//! compartments links this crate (and seccomp).

use flexos_platform::domain;
use flexos_platform::process::{self, COMPARTMENT_DIED};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

/// Starts the process of compartment `compartment` (called `name`) from
/// this image, sharing the memory object `shm_fd` mapped at `region_base`.
/// Must be called on the host's main thread (the parent-death signal is
/// tied to the thread that starts the child).
pub fn spawn_compartment(
    compartment: usize,
    name: &'static str,
    region_base: usize,
    shm_fd: i32,
) -> std::io::Result<()> {
    let host = std::process::id() as i32;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(format!("flexos-compartment-{name}"))
        .env(domain::ENV, format!("{compartment}:{region_base:x}:{shm_fd}"))
        .stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid, fcntl, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != host {
                libc::_exit(COMPARTMENT_DIED);
            }
            // Keep the shared memory open across exec.
            if libc::fcntl(shm_fd, libc::F_SETFD, 0) != 0 {
                libc::_exit(COMPARTMENT_DIED);
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    process::register_child(pid, name);
    std::thread::Builder::new().name(format!("flexos-watch-{name}")).spawn(move || {
        let status = child.wait();
        if process::mark_shutting_down() {
            return;
        }
        let how = match status {
            Ok(s) => match (s.signal(), s.code()) {
                (Some(sig), _) => format!("killed by signal {sig} ({})", signal_name(sig)),
                (None, Some(code)) => format!("exited with status {code}"),
                (None, None) => "ended".to_string(),
            },
            Err(e) => format!("could not be watched: {e}"),
        };
        eprintln!("flexos: compartment \"{name}\" (process {pid}) died: {how}; shutting the image down");
        process::kill_all();
        std::process::exit(COMPARTMENT_DIED);
    })?;
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV, a bad memory access",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL, an invalid instruction",
        libc::SIGFPE => "SIGFPE",
        libc::SIGSYS => "SIGSYS, a forbidden system call",
        libc::SIGABRT => "SIGABRT, aborted",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}

/// The system calls a compartment process may make: memory for thread
/// stacks, threads, futexes, its console, clocks, sleeping, randomness and
/// its own signal handlers and ending itself. No files, sockets, processes or signals to others.
const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What the compartment that holds the network device may do besides
/// [`ALLOWED`]: drive the tap device, which it opened before it was
/// confined (`flexos_platform::net::open_device_at_boot`; `readv`/`writev`
/// of a frame behind its virtio-net header, polling), or run the
/// 127.0.0.1 forwarder (listening TCP sockets on the host, watched with
/// `epoll`; `ioctl` with the requests of
/// `flexos_platform::syscalls::IOCTL_REQUESTS`). No file opened, no
/// process, no signal.
pub const NETWORK_DEVICE: &[i64] = &[
    libc::SYS_close,
    libc::SYS_ioctl,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_fcntl,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
];

/// Confines this process (and the threads it starts later) to [`ALLOWED`]
/// plus `extra`; any other system call raises SIGSYS, which the fault
/// reporter names. `clone` may make threads only and `ioctl` take only the
/// requests of a booted image (`flexos_platform::syscalls`); `clone3`,
/// whose flags lie in memory a filter cannot read, answers `ENOSYS`, so
/// that the C library starts its threads with `clone`.
pub fn confine(extra: &[i64]) -> Result<(), String> {
    for program in programs(extra)? {
        seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// [`confine`]'s two filters, in the order they are installed: `clone3`
/// answered with `ENOSYS` (the kernel lets the answer of the filter that
/// refuses win over the other's `Allow`), then the list.
fn programs(extra: &[i64]) -> Result<[BpfProgram; 2], String> {
    use flexos_platform::syscalls::rules as syscall_rules;
    let program = |filter: Result<SeccompFilter, seccompiler::BackendError>| -> Result<BpfProgram, String> {
        filter.map_err(|e| format!("seccomp filter: {e}"))?.try_into().map_err(|e| format!("seccomp program: {e:?}"))
    };
    let clone3 = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    let no_clone3 =
        SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), TargetArch::x86_64);
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        ALLOWED.iter().chain(extra).map(|&nr| (nr, vec![])).collect();
    rules.insert(libc::SYS_clone, syscall_rules::thread_clone()?);
    if let Some(ioctl) = rules.get_mut(&libc::SYS_ioctl) {
        *ioctl = syscall_rules::ioctl_requests(false)?;
    }
    let list = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64);
    Ok([program(no_clone3)?, program(list)?])
}
