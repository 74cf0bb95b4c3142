//! The safety order (docs/explore.md, "The order").
//!
//! Configuration D is at least as safe as C when every pair of the image's
//! units (the default compartment's fixed components, and each movable
//! group) is separated in D at least as strongly as in C, and every
//! hardening group's options in D include its options in C.
//!
//! Separation strengths form a lattice, not a chain:
//! `none < mpk/shared-stack < mpk/dss = mpk/heap < proc, kvm < proc+kvm`.
//! `proc` and `kvm` are incomparable: a process is separated by the host
//! kernel's page tables and a seccomp filter, a VM by the hypervisor's
//! nested page tables and a VMM with no system calls for the guest; neither
//! protection contains the other (each resists an attack the other does
//! not: a kernel bug reachable through an allowed system call, a
//! hypervisor or VMM bug). Two components in remote domains of different
//! kinds are separated by both (`proc+kvm`).

use super::enumerate::Candidate;
use super::space::Protection;
use flexos_config::{Mechanism, Sharing};

/// How strongly two units are separated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Separation {
    /// Same compartment, or compartments that do not protect each other (`fcall`).
    None,
    /// `mpk` with shared stacks.
    MpkShared,
    /// `mpk` with private stacks (`dss` or `heap`).
    MpkPrivate,
    /// Separate processes.
    Proc,
    /// A VM.
    Kvm,
    /// A process and a VM.
    ProcKvm,
}

impl Separation {
    /// Whether `self` is at most as strong as `other` in the lattice.
    pub fn at_most(self, other: Separation) -> bool {
        use Separation::*;
        match (self, other) {
            (a, b) if a == b => true,
            (None, _) | (_, ProcKvm) => true,
            (MpkShared, b) => b != None,
            (MpkPrivate, b) => matches!(b, Proc | Kvm),
            _ => false,
        }
    }

    /// The separation of a compartment protected by `p` (from the host's point of view).
    fn of(p: Protection) -> Separation {
        match (p.mechanism, p.sharing) {
            (Mechanism::Fcall, _) => Separation::None,
            (Mechanism::Mpk, Sharing::SharedStack) => Separation::MpkShared,
            (Mechanism::Mpk, _) => Separation::MpkPrivate,
            (Mechanism::Proc, _) => Separation::Proc,
            (Mechanism::Kvm, _) => Separation::Kvm,
        }
    }

    /// The separation between two different compartments protected by `a`
    /// and `b`: in one address space the weaker protection decides (an
    /// `fcall` compartment holds every key); a remote domain is separated
    /// from everything outside it by its own mechanism.
    pub fn between(a: Protection, b: Protection) -> Separation {
        let (sa, sb) = (Separation::of(a), Separation::of(b));
        match (a.mechanism.is_remote(), b.mechanism.is_remote()) {
            (false, false) => sa.min(sb),
            (true, false) => sa,
            (false, true) => sb,
            (true, true) if sa == sb => sa,
            (true, true) => Separation::ProcKvm,
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Separation::None => "none",
            Separation::MpkShared => "mpk/shared-stack",
            Separation::MpkPrivate => "mpk/private-stack",
            Separation::Proc => "proc",
            Separation::Kvm => "kvm",
            Separation::ProcKvm => "proc+kvm",
        }
    }
}

/// The separation of every pair of units of `c`: unit 0 is the default
/// compartment's fixed part, unit g+1 is movable group g. Indexed by
/// `pair_index(u, v)` for u < v.
pub fn separations(c: &Candidate) -> Vec<Separation> {
    let units = c.slot.len() + 1;
    let mut out = Vec::with_capacity(units * (units - 1) / 2);
    for u in 0..units {
        for v in u + 1..units {
            let (a, b) = (c.slot_of_unit(u), c.slot_of_unit(v));
            out.push(if a == b {
                Separation::None
            } else {
                Separation::between(c.protection_of_slot(a), c.protection_of_slot(b))
            });
        }
    }
    out
}

/// Whether `d` is at least as safe as `c` (given their separations).
pub fn at_least_as_safe(d: &Candidate, d_sep: &[Separation], c: &Candidate, c_sep: &[Separation]) -> bool {
    c_sep.iter().zip(d_sep).all(|(x, y)| x.at_most(*y))
        && c.harden.iter().zip(&d.harden).all(|(hc, hd)| hc.iter().all(|o| hd.contains(o)))
}

/// The order over a list of candidates: `geq[d]` is the set of candidates
/// `d` is at least as safe as, as a bit set.
pub struct Order {
    n: usize,
    words: usize,
    geq: Vec<u64>,
}

impl Order {
    /// Computes the order over `candidates`.
    pub fn new(candidates: &[Candidate]) -> Order {
        let n = candidates.len();
        let words = n.div_ceil(64).max(1);
        let seps: Vec<Vec<Separation>> = candidates.iter().map(separations).collect();
        let mut geq = vec![0u64; n * words];
        for d in 0..n {
            for c in 0..n {
                if at_least_as_safe(&candidates[d], &seps[d], &candidates[c], &seps[c]) {
                    geq[d * words + c / 64] |= 1 << (c % 64);
                }
            }
        }
        Order { n, words, geq }
    }

    /// Whether `d` is at least as safe as `c`.
    pub fn geq(&self, d: usize, c: usize) -> bool {
        self.geq[d * self.words + c / 64] & (1 << (c % 64)) != 0
    }

    /// Whether `d` is strictly safer than `c`.
    pub fn above(&self, d: usize, c: usize) -> bool {
        self.geq(d, c) && !self.geq(c, d)
    }

    /// The Hasse diagram (transitive reduction of the strict order): the
    /// pairs (lower, upper) where upper is strictly safer than lower and
    /// nothing lies strictly between them.
    pub fn hasse(&self) -> Vec<(usize, usize)> {
        let mut edges = Vec::new();
        for c in 0..self.n {
            let ups: Vec<usize> = (0..self.n).filter(|&d| self.above(d, c)).collect();
            for &d in &ups {
                if !ups.iter().any(|&m| m != d && self.above(d, m)) {
                    edges.push((c, d));
                }
            }
        }
        edges
    }

    /// How many candidates the order is over.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the order is over no candidates.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}
