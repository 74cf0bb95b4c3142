//! Gate crossing counters, per (caller component, callee component).
//!
//! Counted in debug builds and in builds with the `stats` feature; otherwise
//! counting compiles to nothing and [`enabled`] is false.

use flexos_layout::Component;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most component ids the counters cover.
pub const MAX_COMPONENTS: usize = 32;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static COUNTS: [AtomicU64; MAX_COMPONENTS * MAX_COMPONENTS] = [ZERO; MAX_COMPONENTS * MAX_COMPONENTS];

/// Whether this build counts crossings.
pub const fn enabled() -> bool {
    cfg!(any(debug_assertions, feature = "stats"))
}

#[inline(always)]
pub(crate) fn count(from: Component, to: Component) {
    if enabled() && from.id < MAX_COMPONENTS && to.id < MAX_COMPONENTS {
        COUNTS[from.id * MAX_COMPONENTS + to.id].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many cross-compartment calls `from` made into `to` so far (0 when counting is off).
pub fn crossings(from: Component, to: Component) -> u64 {
    COUNTS[from.id * MAX_COMPONENTS + to.id].load(Ordering::Relaxed)
}

/// Every (caller, callee, count) with a non-zero count, by component id.
pub fn all() -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    for (i, c) in COUNTS.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            out.push((i / MAX_COMPONENTS, i % MAX_COMPONENTS, n));
        }
    }
    out
}
