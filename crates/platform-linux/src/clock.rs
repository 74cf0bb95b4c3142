//! Clocks read from the kernel through the vDSO.

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are
    // constants that every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of a monotonic clock (arbitrary origin, never goes back).
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (wall-clock time).
pub fn wall_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// Blocks the host thread for `ns` nanoseconds (used when every LibOS thread sleeps).
pub fn host_sleep_ns(ns: u64) {
    std::thread::sleep(std::time::Duration::from_nanos(ns));
}
