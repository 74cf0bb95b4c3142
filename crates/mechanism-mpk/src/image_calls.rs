//! The system calls an `mpk` image may make once it has booted: an
//! allowlist, the image's last seccomp filter.
//!
//! The boot filter (`FORBIDDEN_CALLS` in this crate) and the memory-call
//! filter deny what is known to reach around protection keys. Everything
//! else the kernel offers stayed open to every compartment: kernel
//! interfaces no image uses (asynchronous I/O contexts, key rings, new
//! namespaces, module loading when the image runs as root, `pidfd`s of
//! the image's own compartment processes, ...), each a way into kernel
//! code that the image never needs. After boot the image makes only the
//! calls of [`IMAGE_CALLS`]: descriptors it was handed or opened at boot
//! and sockets it opens (no host file: it has its own file system),
//! polling, memory (the memory-call filter decides where), threads and
//! futexes, clocks, sleeping, randomness, its signal mask, signals to its
//! own threads and processes, waiting for its compartment processes, and
//! ending. Every other call fails with `ENOSYS`, as on a kernel that lacks
//! it: C libraries fall back or report it, and nothing is killed. The
//! calls the other filters decide on ([`PASSED`]) pass this one, so their
//! answers (`EPERM`, `ENOSYS` for `clone3`) stay theirs.
//!
//! `clone` is let through only for a new thread, and `ioctl` only with a
//! request a booted image makes ([`flexos_platform::syscalls`]): an image
//! starts its compartment processes and its fault supervisor during boot,
//! and afterwards starts threads only. A process made later would outlive
//! the image with its descriptors (the tap, listening sockets), could
//! trace the image where the boot filter did not deny `ptrace`, and
//! `clone` with a namespace flag is `unshare` by another name; an `ioctl`
//! on a socket may change the host's interfaces and routes, and one on a
//! terminal may type into it (attack `kernel-surface`).

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;

/// What a booted image calls (x86-64 numbers).
pub const IMAGE_CALLS: &[i64] = &[
    // Descriptors: the console, the tap device and VMs (opened at boot),
    // sockets and pipes. No `open`, `openat`, `creat` or `openat2`: a
    // booted image opens no host file (its files are in its own file
    // system), so no compartment can read or change the host's.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl, // with the requests of [`program`]
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_fadvise64,
    libc::SYS_sendfile,
    // Sockets: the 127.0.0.1 forwarder, and servers an application runs.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    // Waiting for descriptors.
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    // Memory: where, the memory-call filter decides.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_msync,
    libc::SYS_mincore,
    libc::SYS_membarrier,
    // Threads (`clone` for a thread only, see [`program`]; `clone3`: the
    // memory-call filter answers ENOSYS).
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_get_robust_list,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_prctl,
    // Clocks, sleeping, randomness, facts about the machine and the process.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_time,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrusage,
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    // Signals: the mask, the fault reporter's stack, signals to the
    // image's own threads (an abort) and compartment processes (shutting
    // the image down), and waiting for those processes.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// A call no booted image makes that this filter still lets through, so
/// that the memory-call filter's answer (`EPERM`) stays the one a caller
/// sees; the boot filter's calls come in as [`program`]'s `also`.
pub const PASSED: &[i64] = &[libc::SYS_seccomp];

/// The allowlist's program: [`IMAGE_CALLS`], [`PASSED`] and `also` (the
/// boot filter's calls) are let through, `clone` only for a thread,
/// and `ioctl` only with a request a
/// booted image makes, KVM's only where the image runs VMs (`kvm`)
/// ([`flexos_platform::syscalls`]); any other call fails with `ENOSYS`.
pub fn program(also: &[i64], kvm: bool) -> Result<BpfProgram, String> {
    use flexos_platform::syscalls::rules as syscall_rules;
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        IMAGE_CALLS.iter().chain(PASSED).chain(also).map(|&nr| (nr, vec![])).collect();
    rules.insert(libc::SYS_clone, syscall_rules::thread_clone()?);
    rules.insert(libc::SYS_ioctl, syscall_rules::ioctl_requests(kvm)?);
    let filter =
        SeccompFilter::new(rules, SeccompAction::Errno(libc::ENOSYS as u32), SeccompAction::Allow, TargetArch::x86_64)
            .map_err(|e| format!("{e}"))?;
    filter.try_into().map_err(|e| format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_each_call_once_and_leaves_out_what_no_image_needs() {
        let mut all: Vec<i64> = IMAGE_CALLS.iter().chain(PASSED).copied().collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "a call is listed twice");
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_openat2,
            libc::SYS_creat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_kexec_load,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_io_setup,
            libc::SYS_keyctl,
            libc::SYS_pidfd_open,
            libc::SYS_pidfd_getfd,
            libc::SYS_modify_ldt,
            libc::SYS_iopl,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
            libc::SYS_arch_prctl,
        ] {
            assert!(!all.contains(&nr), "call {nr} is let through");
        }
    }

    #[test]
    fn clone_is_let_through_for_a_thread_only() {
        use crate::memory_filter::tests::run;
        use flexos_platform::syscalls::{THREAD_FLAGS, clone_allowed};
        let prog = program(&[], false).expect("the allowlist compiles");
        const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
        const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        // What glibc's pthread_create passes.
        let glibc = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let clone = |flags: u64| run(&prog, libc::SYS_clone, [flags, 0x7000_0000, 0, 0, 0, 0]);
        assert_eq!(clone(glibc), ALLOW);
        assert_eq!(clone(THREAD_FLAGS), ALLOW);
        // A process (fork), a process sharing memory, a thread in new namespaces.
        assert_eq!(clone(libc::SIGCHLD as u64), ENOSYS);
        assert_eq!(clone((libc::CLONE_VM | libc::SIGCHLD) as u64), ENOSYS);
        assert_eq!(clone(glibc & !(libc::CLONE_THREAD as u64)), ENOSYS);
        assert_eq!(clone((libc::CLONE_NEWUSER | libc::SIGCHLD) as u64), ENOSYS);
        for ns in [libc::CLONE_NEWNET, libc::CLONE_NEWNS, libc::CLONE_NEWIPC, libc::CLONE_NEWUTS] {
            assert_eq!(clone(glibc | ns as u64), ENOSYS, "namespace flag {ns:#x}");
        }
        // Flags in the upper half do not count as a thread's.
        assert_eq!(clone(THREAD_FLAGS << 32), ENOSYS);
        // The filter and the list's rule in Rust agree on each flag alone,
        // and added to or taken from glibc's thread flags.
        for bit in 0..64 {
            let flag = 1u64 << bit;
            for flags in [flag, glibc | flag, glibc & !flag, THREAD_FLAGS | flag] {
                let expected = if clone_allowed(flags) { ALLOW } else { ENOSYS };
                assert_eq!(clone(flags), expected, "flags {flags:#x}");
            }
        }
        assert_eq!(run(&prog, libc::SYS_getpid, [0; 6]), ALLOW);
        assert_eq!(run(&prog, libc::SYS_fork, [0; 6]), ENOSYS);
    }

    #[test]
    fn ioctl_is_let_through_with_the_requests_of_a_booted_image_only() {
        use crate::memory_filter::tests::run;
        use flexos_platform::syscalls::ioctl_request_allowed;
        let (allow, enosys) = (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        for kvm in [false, true] {
            let prog = program(&[], kvm).expect("the allowlist compiles");
            let ioctl = |request: u64| run(&prog, libc::SYS_ioctl, [3, request, 0x7000_0000, 0, 0, 0]);
            // std's FIONBIO; a terminal query; KVM_RUN, KVM_GET_REGS where the image runs VMs.
            let kvm_requests = if kvm { &[0xae80, 0x8090_ae81][..] } else { &[] };
            for &ok in [libc::FIONBIO, libc::TCGETS].iter().chain(kvm_requests) {
                assert_eq!(ioctl(ok), allow, "{ok:#x}");
                // The kernel reads the request as 32 bits: so does the filter.
                assert_eq!(ioctl(ok | 0xdead_0000_0000), allow, "{ok:#x} with high bits");
            }
            // Host changes; a new tap device (the image's is opened at boot);
            // a VM where the image runs none.
            let refused = [
                libc::SIOCSIFFLAGS,
                libc::SIOCSIFADDR,
                libc::SIOCADDRT,
                libc::TUNSETPERSIST,
                libc::TIOCSTI,
                libc::TUNSETIFF,
                libc::SIOCGIFINDEX,
            ];
            let no_vm = if kvm {
                &[][..]
            } else {
                &[0xae01 /* KVM_CREATE_VM */, 0xae80]
            };
            for &bad in refused.iter().chain(no_vm) {
                assert_eq!(ioctl(bad), enosys, "{bad:#x} (kvm {kvm})");
            }
            // The filter and the list's rule in Rust agree on every request
            // of the terminal, socket, tun and KVM types, in every direction and size.
            for ty in [0x54u32, 0x89, 0xae, 0x00, 0xab] {
                for high in [0u32, 0x4004_0000, 0x8004_0000, 0x8090_0000, 0xc008_0000] {
                    for nr in 0..=0xffu32 {
                        let request = high | ty << 8 | nr;
                        let expected = if ioctl_request_allowed(request, kvm) { allow } else { enosys };
                        assert_eq!(ioctl(request.into()), expected, "{request:#x} (kvm {kvm})");
                    }
                }
            }
        }
    }

    #[test]
    fn no_file_is_opened_after_boot() {
        use crate::memory_filter::tests::run;
        let prog = program(&[], false).expect("the allowlist compiles");
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        // Every access mode and flag alone and added to a read's; high bits too.
        let read = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
        for bit in 0..64 {
            for flags in [0, read, 1u64 << bit, read | 1 << bit] {
                assert_eq!(run(&prog, libc::SYS_open, [0x7000_0000, flags, 0o644, 0, 0, 0]), enosys, "open {flags:#o}");
                let at = [libc::AT_FDCWD as u64, 0x7000_0000, flags, 0o644, 0, 0];
                assert_eq!(run(&prog, libc::SYS_openat, at), enosys, "openat {flags:#o}");
            }
        }
        // Nor by another name: `creat`, `openat2` (its flags in memory),
        // a file handle.
        assert_eq!(run(&prog, libc::SYS_creat, [0x7000_0000, 0o644, 0, 0, 0, 0]), enosys);
        assert_eq!(run(&prog, libc::SYS_openat2, [0; 6]), enosys);
        assert_eq!(run(&prog, libc::SYS_open_by_handle_at, [0; 6]), enosys);
        // Reading what was opened at boot still passes.
        assert_eq!(run(&prog, libc::SYS_read, [3, 0x7000_0000, 16, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn a_real_filter_answers_enosys_outside_the_list_and_passes_what_is_in_it() {
        let prog = program(&[libc::SYS_ptrace], false).expect("the allowlist compiles");
        // In a child process, so the filter does not stay on the test runner.
        // SAFETY: the child only makes system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let errno = || std::io::Error::last_os_error().raw_os_error();
            // SAFETY: PR_SET_NO_NEW_PRIVS has no memory effects.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let mut ctx: libc::c_ulong = 0;
            let ok = seccompiler::apply_filter(&prog).is_ok()
                // SAFETY: getpid has no arguments.
                && unsafe { libc::getpid() } > 0
                // SAFETY: io_setup writes the context id into `ctx`.
                && unsafe { libc::syscall(libc::SYS_io_setup, 1, &raw mut ctx) } == -1
                && errno() == Some(libc::ENOSYS)
                // SAFETY: pidfd_open of this process; no memory is written.
                && unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } == -1
                && errno() == Some(libc::ENOSYS)
                // SAFETY: a ptrace request that fails (no tracee): it reaches the kernel.
                && unsafe { libc::ptrace(libc::PTRACE_CONT, 1, 0, 0) } == -1
                && errno() != Some(libc::ENOSYS)
                && [libc::SIGCHLD, libc::CLONE_NEWUSER | libc::SIGCHLD].iter().all(|&flags| {
                    // SAFETY: a fork-like clone; where the filter let it
                    // through, the new process ends at once.
                    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
                    if rc == 0 {
                        // SAFETY: ends the new process without running Rust code.
                        unsafe { libc::_exit(0) }
                    }
                    rc == -1 && errno() == Some(libc::ENOSYS)
                });
            // SAFETY: ends the child without running the test harness's code.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }
}
