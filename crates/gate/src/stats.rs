//! Gate counters, per (caller component, callee component): *crossings*
//! (calls that left the caller's compartment) and *calls* (every call
//! through a gate, also between components of one compartment, which the
//! explorer's cost model needs from the one-compartment image).
//!
//! Counted in debug builds and in builds with the `stats` feature; otherwise
//! counting compiles to nothing and [`enabled`] is false.

use flexos_layout::Component;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The most component ids the counters cover (the layout's limit).
pub use flexos_layout::MAX_COMPONENTS;

/// Whether this build counts crossings.
pub const fn enabled() -> bool {
    cfg!(any(debug_assertions, feature = "stats"))
}

const PAIRS: usize = MAX_COMPONENTS * MAX_COMPONENTS;
/// The crossing counters, then the call counters.
type Tables = [AtomicU64; 2 * PAIRS];

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static IN_STATICS: Tables = [ZERO; 2 * PAIRS];
/// Where the counters are, once moved off the statics (null: `IN_STATICS`).
static MOVED: AtomicPtr<Tables> = AtomicPtr::new(core::ptr::null_mut());

fn tables() -> &'static Tables {
    let moved = MOVED.load(Ordering::Acquire);
    if moved.is_null() {
        &IN_STATICS
    } else {
        // SAFETY: set once by `move_off_the_statics` to tables that are never freed.
        unsafe { &*moved }
    }
}

/// Moves the counters into memory of key 0 (the C library's heap), which
/// every compartment may write: in an image with `mpk` compartments the
/// statics carry the trusted core's key, which only the default
/// compartment may write, and every gate counts with its caller's rights.
/// Called once at boot, before anything crosses. (A compromised
/// compartment can therefore change the counts: they measure, they decide
/// nothing.)
pub fn move_off_the_statics() {
    if !enabled() || !MOVED.load(Ordering::Acquire).is_null() {
        return;
    }
    let tables = flexos_platform::compartment::leak_in_c_heap([ZERO; 2 * PAIRS]);
    for (new, old) in tables.iter().zip(IN_STATICS.iter()) {
        new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    MOVED.store((tables as *const Tables).cast_mut(), Ordering::Release);
}

#[inline(always)]
pub(crate) fn count(from: Component, to: Component) {
    if enabled() && from.id < MAX_COMPONENTS && to.id < MAX_COMPONENTS {
        tables()[from.id * MAX_COMPONENTS + to.id].fetch_add(1, Ordering::Relaxed);
    }
}

#[inline(always)]
pub(crate) fn count_call(from: Component, to: Component) {
    if enabled() && from.id < MAX_COMPONENTS && to.id < MAX_COMPONENTS {
        tables()[PAIRS + from.id * MAX_COMPONENTS + to.id].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many cross-compartment calls `from` made into `to` so far (0 when counting is off).
pub fn crossings(from: Component, to: Component) -> u64 {
    tables()[from.id * MAX_COMPONENTS + to.id].load(Ordering::Relaxed)
}

/// Every (caller, callee, count) with a non-zero crossing count, by component id.
pub fn all() -> Vec<(usize, usize, u64)> {
    nonzero(&tables()[..PAIRS])
}

/// Every (caller, callee, count) with a non-zero call count, by component id.
pub fn all_calls() -> Vec<(usize, usize, u64)> {
    nonzero(&tables()[PAIRS..])
}

fn nonzero(table: &[AtomicU64]) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    for (i, c) in table.iter().enumerate() {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            out.push((i / MAX_COMPONENTS, i % MAX_COMPONENTS, n));
        }
    }
    out
}

/// The counters as text, one line per pair: `gate-stats: A -> B: N` for
/// crossings, `gate-calls: A -> B: N` for calls, after a `gate-stats:
/// layout ...` line (or one line saying this build does not count), and
/// a closing `gate-stats: end` line.
pub fn report() -> String {
    use crate::layout::{COMPARTMENTS, SOURCE, component};
    use std::fmt::Write as _;
    if !enabled() {
        return "gate-stats: not counted in this build (build with --gate-stats)\n".into();
    }
    let name = |id: usize| component::ALL.get(id).map_or("?", |c| c.name);
    let mut out = format!("gate-stats: layout {SOURCE} ({} compartments)\n", COMPARTMENTS.len());
    for (from, to, n) in all() {
        let _ = writeln!(out, "gate-stats: {} -> {}: {n}", name(from), name(to));
    }
    for (from, to, n) in all_calls() {
        let _ = writeln!(out, "gate-calls: {} -> {}: {n}", name(from), name(to));
    }
    out.push_str("gate-stats: end\n");
    out
}
