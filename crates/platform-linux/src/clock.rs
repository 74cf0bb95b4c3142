//! Clocks read from the kernel through the vDSO (in a VM: from the
//! time-stamp counter, calibrated when the VM was made).

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
    if crate::guest::in_guest() {
        return crate::guest::clock_ns(false);
    }
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (wall-clock time).
pub fn wall_ns() -> u64 {
    if crate::guest::in_guest() {
        return crate::guest::clock_ns(true);
    }
    read(libc::CLOCK_REALTIME)
}

/// Wall-clock nanoseconds of the coarse clock, for file timestamps: the
/// kernel's time at its last tick (`CLOCK_REALTIME_COARSE`, a few
/// milliseconds behind at most, read without the time-stamp counter), as
/// Linux stamps files (`current_time`). In a VM, the wall clock read
/// without ordering (`guest::coarse_wall_ns`).
pub fn wall_coarse_ns() -> u64 {
    if crate::guest::in_guest() {
        return crate::guest::coarse_wall_ns();
    }
    read(libc::CLOCK_REALTIME_COARSE)
}

/// Blocks the host thread for `ns` nanoseconds (used when every LibOS thread sleeps).
pub fn host_sleep_ns(ns: u64) {
    std::thread::sleep(std::time::Duration::from_nanos(ns));
}

/// The CPU's time-stamp counter, fenced so that earlier instructions finish
/// before it is read and later ones start after (for cycle measurements).
#[inline(always)]
pub fn cycles() -> u64 {
    // SAFETY: `lfence` and `rdtsc` only read the time-stamp counter and order
    // instructions; every x86-64 CPU has both (SSE2 is part of x86-64).
    unsafe {
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
}

/// Time-stamp counter ticks per second, measured against the monotonic clock over `ms` milliseconds.
pub fn cycles_per_second(ms: u64) -> f64 {
    let (c0, t0) = (cycles(), monotonic_ns());
    host_sleep_ns(ms * 1_000_000);
    let (c1, t1) = (cycles(), monotonic_ns());
    (c1 - c0) as f64 * 1e9 / (t1 - t0) as f64
}

/// Cycles per operation in `samples` samples of `batch` operations each
/// (after a warm-up), with the timer's own cost per sample (`timer`
/// cycles, see [`timer_overhead`]) subtracted: the method of every gate
/// latency this project reports.
pub fn sample_cycles(samples: usize, batch: u64, timer: f64, mut op: impl FnMut(u64)) -> Vec<f64> {
    for i in 0..batch.min(1000) {
        op(i);
    }
    (0..samples)
        .map(|_| {
            let start = cycles();
            for i in 0..batch {
                op(i);
            }
            (((cycles() - start) as f64 - timer) / batch as f64).max(0.0)
        })
        .collect()
}

/// The cheapest of 101 empty timed samples: the timer's own cost in cycles.
pub fn timer_overhead() -> f64 {
    min_median(sample_cycles(101, 1, 0.0, |_| {})).0
}

/// The minimum and the median of `values` (which must not be empty).
pub fn min_median(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[0], values[values.len() / 2])
}

/// Two threads bouncing a counter through one cache line: the floor of
/// any gate that crosses to another core through shared memory (`flexos
/// bench gates`, and the probe image beside its remote gates). Between
/// blocks of rounds the peer sleeps, so that it does not take a core from
/// a gate's callee.
pub struct PingPong {
    flag: std::sync::Arc<std::sync::atomic::AtomicU64>,
    peer: std::thread::JoinHandle<()>,
    next: u64,
}

impl PingPong {
    /// The flag's value that sends the peer to sleep (even: no round pending).
    const PAUSED: u64 = u64::MAX - 1;
    /// The flag's value that ends the peer.
    const STOP: u64 = u64::MAX;

    /// Starts the peer, paused.
    pub fn start() -> PingPong {
        use std::sync::atomic::{AtomicU64, Ordering};
        let flag = std::sync::Arc::new(AtomicU64::new(Self::PAUSED));
        let peer = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                loop {
                    match flag.load(Ordering::Acquire) {
                        Self::STOP => break,
                        Self::PAUSED => std::thread::park(),
                        v if v % 2 == 1 => flag.store(v + 1, Ordering::Release),
                        _ => std::hint::spin_loop(),
                    }
                }
            })
        };
        PingPong { flag, peer, next: 0 }
    }

    /// Wakes the peer for a block of rounds.
    pub fn resume(&mut self) {
        self.flag.store(self.next, std::sync::atomic::Ordering::Release);
        self.peer.thread().unpark();
    }

    /// One round trip: an odd value out, the next even one back.
    pub fn round(&mut self) {
        use std::sync::atomic::Ordering;
        self.next += 1;
        self.flag.store(self.next, Ordering::Release);
        self.next += 1;
        while self.flag.load(Ordering::Acquire) != self.next {
            std::hint::spin_loop();
        }
    }

    /// Sends the peer to sleep until the next [`PingPong::resume`].
    pub fn pause(&mut self) {
        self.flag.store(Self::PAUSED, std::sync::atomic::Ordering::Release);
    }

    /// Ends the peer.
    pub fn stop(self) {
        self.flag.store(Self::STOP, std::sync::atomic::Ordering::Release);
        self.peer.thread().unpark();
        self.peer.join().expect("the ping-pong peer");
    }
}
