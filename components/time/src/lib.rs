//! Clocks and sleeping (Unikraft's `uktime`).
//!
//! The clocks come from the platform; sleeping blocks only the calling
//! LibOS thread, through a gate into the scheduler.
#![no_std]
#![forbid(unsafe_code)]

use flexos_gate::gate;
use flexos_platform::clock;

flexos_gate::component!(TIME);
flexos_gate::exports!(
    monotonic_ns() -> u64,
    wall_ns() -> u64,
    sleep_ns(u64),
);

/// Nanoseconds of the monotonic clock.
pub(crate) fn monotonic_ns() -> u64 {
    clock::monotonic_ns()
}

/// Nanoseconds since the Unix epoch.
pub(crate) fn wall_ns() -> u64 {
    clock::wall_ns()
}

/// Blocks the calling thread for at least `ns` nanoseconds; other threads run meanwhile.
pub(crate) fn sleep_ns(ns: u64) {
    let deadline = clock::monotonic_ns().saturating_add(ns);
    gate!(flexos_sched::sleep_until(deadline));
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn clocks_advance_and_sleep_waits() {
        let t0 = monotonic_ns();
        sleep_ns(2_000_000);
        assert!(monotonic_ns() >= t0 + 2_000_000);
        assert!(wall_ns() > 1_600_000_000 * 1_000_000_000, "wall clock is after 2020");
    }

    #[test]
    fn sleeping_lets_other_threads_run() {
        use std::{cell::Cell, rc::Rc};
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let t = gate!(flexos_sched::spawn(flexos_gate::Callback::new(flexos_gate::me!(), move || r.set(true))));
        sleep_ns(1_000_000);
        assert!(ran.get(), "the other thread ran while this one slept");
        gate!(flexos_sched::join(t)).unwrap();
    }
}
