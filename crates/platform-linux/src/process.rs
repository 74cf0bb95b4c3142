//! The processes an image started (the `proc` mechanism's compartment
//! processes, started by the `flexos-proc` crate): ending them with the
//! image, and the process's own limits.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of an image whose compartment died.
pub const COMPARTMENT_DIED: i32 = 70;

static CHILDREN: Mutex<Vec<(i32, &'static str)>> = Mutex::new(Vec::new());
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// Records compartment process `pid` (compartment `name`), started by the
/// `proc` mechanism, so that [`kill_all`] ends it with the image.
pub fn register_child(pid: i32, name: &'static str) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push((pid, name));
}

/// Marks the image as ending; true if it already was (so only the first
/// of several dying compartments reports).
pub fn mark_shutting_down() -> bool {
    SHUTTING_DOWN.swap(true, Ordering::SeqCst)
}

/// Kills every compartment process (the image is ending).
pub fn kill_all() {
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    for &(pid, _) in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        // SAFETY: kill(2) has no memory effects; the pid is our own child,
        // not yet reaped (its watcher reaps it), so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The process ids of the compartment processes started so far.
pub fn children() -> Vec<i32> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|&(pid, _)| pid).collect()
}

/// Raises this process's limit of open descriptors to its hard limit (at
/// most 65536), as Redis does at start: a server image holds a descriptor
/// per client it relays from 127.0.0.1, and the usual soft limit of 1024
/// would refuse clients long before the image's own connection limit.
/// Compartment processes started later inherit it. Failures leave the
/// limit as it was.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one valid rlimit structure.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let want = limit.rlim_max.min(65536);
            if limit.rlim_cur < want {
                limit.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}
