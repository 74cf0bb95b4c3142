//! A compartment process's real filter: what it lets through and what it
//! stops (with SIGSYS), each tried in a forked child confined as a
//! network device's compartment. One test in this binary, so that no
//! other test thread holds a lock of the C library when a child forks.

use std::io::Error;

/// How a confined child that ran `attempt` ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// It exited with this code (0: `attempt` returned true).
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

fn confined(attempt: fn() -> bool) -> Ended {
    // SAFETY: the child confines itself, makes only system calls (and in
    // one attempt starts a thread) and ends with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", Error::last_os_error());
    if pid == 0 {
        // SAFETY: ends the child without running the harness's code.
        unsafe {
            let code = match flexos_proc::confine(flexos_proc::NETWORK_DEVICE) {
                Ok(()) if attempt() => 0,
                Ok(()) => 1,
                Err(_) => 2,
            };
            libc::_exit(code)
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFSIGNALED(status) {
        Ended::Killed(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

fn errno() -> i32 {
    Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A fork-like `clone` with `flags`; a child it made ends at once.
fn clone_process(flags: i32) -> bool {
    // SAFETY: where the filter lets it through, the new process ends at once.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    if rc == 0 {
        // SAFETY: ends the new process without running Rust code.
        unsafe { libc::_exit(0) }
    }
    rc > 0
}

#[test]
fn a_compartment_process_makes_threads_and_the_forwarders_ioctls_only() {
    // What the network device's compartment does: a thread (glibc tries
    // `clone3`, gets ENOSYS, then uses `clone`), a non-blocking socket.
    let works = confined(|| {
        let thread = std::thread::spawn(|| 7).join().is_ok_and(|v| v == 7);
        // SAFETY: a socket of this child's, switched to non-blocking and closed.
        let nonblocking = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let mut on: libc::c_int = 1;
            let ok = fd >= 0 && libc::ioctl(fd, libc::FIONBIO, &raw mut on) == 0;
            libc::close(fd);
            ok
        };
        // SAFETY: clone3 with a null argument: the filter answers before the kernel reads it.
        let clone3 = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) } == -1 && errno() == libc::ENOSYS;
        thread && nonblocking && clone3
    });
    assert_eq!(works, Ended::Exited(0));
    // Changing a host interface (of no interface: harmless if it got through).
    let set_flags = confined(|| {
        // SAFETY: an ifreq naming no interface; the socket is this child's.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'z' as libc::c_char;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw mut req);
        }
        true
    });
    assert_eq!(set_flags, Ended::Killed(libc::SIGSYS));
    // Typing into a terminal (on no descriptor).
    let type_keys = confined(|| {
        let key = b'x';
        // SAFETY: the kernel would answer EBADF; nothing is written.
        unsafe { libc::ioctl(-1, libc::TIOCSTI, &raw const key) };
        true
    });
    assert_eq!(type_keys, Ended::Killed(libc::SIGSYS));
    // A new tap device (on no descriptor: the device was opened before
    // the filter), a VM (on no descriptor), and a file opened at all.
    let new_tap = confined(|| {
        // SAFETY: on descriptor -1 the kernel would answer EBADF and read nothing.
        unsafe { libc::ioctl(-1, libc::TUNSETIFF, std::ptr::null_mut::<libc::ifreq>()) };
        true
    });
    assert_eq!(new_tap, Ended::Killed(libc::SIGSYS));
    let new_vm = confined(|| {
        // SAFETY: KVM_CREATE_VM on descriptor -1: EBADF if it got through.
        unsafe { libc::ioctl(-1, 0xae01, 0) };
        true
    });
    assert_eq!(new_vm, Ended::Killed(libc::SIGSYS));
    let open_file = confined(|| {
        // SAFETY: a path under no directory: ENOENT if it got through, nothing made.
        unsafe { libc::open(c"/flexos-no-such-dir/file".as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600) };
        true
    });
    assert_eq!(open_file, Ended::Killed(libc::SIGSYS));
    // A process, and a process in a new user namespace.
    assert_eq!(confined(|| clone_process(libc::SIGCHLD)), Ended::Killed(libc::SIGSYS));
    assert_eq!(confined(|| clone_process(libc::CLONE_NEWUSER | libc::SIGCHLD)), Ended::Killed(libc::SIGSYS));
}
