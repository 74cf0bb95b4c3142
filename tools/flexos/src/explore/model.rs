//! The cost model (docs/explore.md, "The model").
//!
//! A configuration's cost (time per operation, or the workload's time) is
//! predicted as
//!
//! `cost = base + Σ_(k,c) crossings_(k,c) × gate_(k,c) + Σ_h hardened_h × harden_h`
//!
//! where `crossings_(k,c)` counts the gate calls of the one-compartment
//! image (`--gate-stats`, per caller and callee component) into callee `c`
//! (its movable group) that cross a compartment boundary of kind `k` in
//! this configuration (`proc`, `mpk/dss`, ...), and `hardened_h` is 1 when
//! hardening choice `h` (a group's bundle, or one option of a group) is on.
//! A crossing is priced per kind *and* callee because one call into one
//! component can carry much more work than one into another (a network
//! round against a scheduler yield). The coefficients are fitted by least
//! squares on relative errors over every measured configuration; the
//! calibration configurations make each one determined.

use super::enumerate::Candidate;
use super::space::{Protection, Space};
use std::collections::BTreeMap;

/// Gate calls between components: (caller, callee, count).
pub type Calls = Vec<(String, String, f64)>;

/// The features of a configuration: name → value (`base` is always 1).
pub type Features = BTreeMap<String, f64>;

/// The kind of boundary a call from a compartment protected by `from` to
/// one protected by `to` crosses: a remote domain's mechanism (the
/// callee's when both are remote), else `mpk` over `fcall`, else the callee's.
pub fn crossing_kind(from: Protection, to: Protection) -> Protection {
    let rank = |p: Protection| match p.mechanism {
        flexos_config::Mechanism::Proc | flexos_config::Mechanism::Kvm => 2,
        flexos_config::Mechanism::Mpk => 1,
        flexos_config::Mechanism::Fcall => 0,
    };
    if rank(from) > rank(to) { from } else { to }
}

/// The features of candidate `c`.
pub fn features(space: &Space, calls: &Calls, c: &Candidate) -> Features {
    let mut f = Features::new();
    f.insert("base".into(), 1.0);
    for (kind, callee, n) in c.crossings(space, calls) {
        *f.entry(format!("gate {} {callee}", kind.name())).or_default() += n;
    }
    for (group, options) in space.harden_groups.iter().zip(&c.harden) {
        if space.bundle {
            if !options.is_empty() {
                f.insert(format!("harden {}", group[0]), 1.0);
            }
        } else {
            for o in options {
                f.insert(format!("harden {} {}", group[0], o.name()), 1.0);
            }
        }
    }
    f
}

/// Fitted coefficients.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Feature name → cost per unit of the feature.
    pub coefficients: BTreeMap<String, f64>,
}

impl Model {
    /// The predicted cost of a configuration with features `f`.
    pub fn cost(&self, f: &Features) -> f64 {
        f.iter().map(|(k, v)| v * self.coefficients.get(k).copied().unwrap_or(0.0)).sum()
    }

    /// Fits the coefficients to `(features, measured cost)` pairs, minimizing
    /// the squared relative errors. Features never seen in the data keep 0.
    pub fn fit(data: &[(&Features, f64)]) -> Model {
        let names: Vec<String> = {
            let mut n: Vec<String> =
                data.iter().flat_map(|(f, _)| f.iter().filter(|(_, v)| **v != 0.0).map(|(k, _)| k.clone())).collect();
            n.sort();
            n.dedup();
            n
        };
        let k = names.len();
        if k == 0 {
            return Model::default();
        }
        // Scale each column so that the system is well conditioned.
        let scale: Vec<f64> = names
            .iter()
            .map(|n| data.iter().map(|(f, _)| f.get(n).copied().unwrap_or(0.0).abs()).fold(0.0, f64::max).max(1e-300))
            .collect();
        let mut a = vec![vec![0.0; k + 1]; k];
        for (f, y) in data {
            let w = 1.0 / y.abs().max(1e-300);
            let x: Vec<f64> = names.iter().zip(&scale).map(|(n, s)| f.get(n).copied().unwrap_or(0.0) / s * w).collect();
            let yw = y * w;
            for i in 0..k {
                for j in 0..k {
                    a[i][j] += x[i] * x[j];
                }
                a[i][k] += x[i] * yw;
            }
        }
        for (i, row) in a.iter_mut().enumerate() {
            row[i] += 1e-9; // a features seen only together still gets a determined split
        }
        let solution = solve(a);
        Model { coefficients: names.into_iter().zip(solution.iter().zip(&scale).map(|(x, s)| x / s)).collect() }
    }
}

/// Solves the linear system given as an augmented matrix (Gaussian
/// elimination with partial pivoting); singular directions get 0.
fn solve(mut a: Vec<Vec<f64>>) -> Vec<f64> {
    let k = a.len();
    for col in 0..k {
        let pivot = (col..k).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
        a.swap(col, pivot);
        if a[col][col].abs() < 1e-300 {
            continue;
        }
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let factor = row[col] / pivot_row[col];
                if factor != 0.0 {
                    for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                        *x -= factor * p;
                    }
                }
            }
        }
    }
    (0..k).map(|i| if a[i][i].abs() < 1e-300 { 0.0 } else { a[i][k] / a[i][i] }).collect()
}

/// The hardening features whose cost the space's measured table
/// (`[hardening] costs`) gives, as a fraction of the unhardened cost: for
/// a group's bundle, or one option of a group, the sum over the group's
/// members and the options of `max(time ratio − 1, 0)` (options slow an
/// image down about additively when each costs little). An option adds
/// checks and never removes work, so a ratio below 1 is the table's noise
/// and prices the option at 0: summed over a bundle's options and
/// members, such noise would predict a hardened image up to a third
/// faster than the unhardened one. A feature with an option the table
/// lacks for some member gets no prior.
pub fn hardening_priors(space: &Space) -> BTreeMap<String, f64> {
    let mut priors = BTreeMap::new();
    let Some(table) = &space.hardening_costs else { return priors };
    let relative = |group: &[&str], options: &[flexos_config::Hardening]| -> Option<f64> {
        let mut sum = 0.0;
        for m in group {
            for o in options {
                if super::space::applies(*o, m) {
                    sum += (table.ratio(m, *o)? - 1.0).max(0.0);
                }
            }
        }
        Some(sum)
    };
    for group in &space.harden_groups {
        let choices = super::enumerate::harden_choices(space, group);
        if space.bundle {
            if let Some(all) = choices.iter().max_by_key(|c| c.len())
                && let Some(r) = relative(group, all)
            {
                priors.insert(format!("harden {}", group[0]), r);
            }
        } else {
            for o in &space.options {
                if group.iter().any(|m| super::space::applies(*o, m))
                    && let Some(r) = relative(group, &[*o])
                {
                    priors.insert(format!("harden {} {}", group[0], o.name()), r);
                }
            }
        }
    }
    priors
}

impl Model {
    /// Gives every feature of `priors` that the data did not determine the
    /// prior's share of the base cost.
    pub fn with_priors(mut self, priors: &BTreeMap<String, f64>) -> Model {
        let base = self.coefficients.get("base").copied().unwrap_or(0.0);
        for (k, r) in priors {
            self.coefficients.entry(k.clone()).or_insert(r * base);
        }
        self
    }
}

/// The calibration configurations: the one-compartment image without
/// hardening; per kind of boundary and callee, the unhardened
/// configuration with the most such crossings (preferring ones that cross
/// into nothing else); per hardening choice, the one-compartment image with only it,
/// unless `priors` (the measured table) gives its cost.
pub fn calibration(
    space: &Space,
    calls: &Calls,
    candidates: &[Candidate],
    priors: &BTreeMap<String, f64>,
) -> Vec<usize> {
    let feats: Vec<Features> = candidates.iter().map(|c| features(space, calls, c)).collect();
    let runnable = |i: &usize| candidates[*i].unrunnable.is_none();
    let mut out = Vec::new();
    let unhardened = |i: usize| candidates[i].is_unhardened();
    let one = |i: usize| candidates[i].is_one_compartment();
    if let Some(b) = (0..candidates.len()).filter(runnable).find(|&i| unhardened(i) && one(i)) {
        out.push(b);
    }
    let mut kinds: Vec<String> = feats.iter().flat_map(|f| f.keys().cloned()).filter(|k| k != "base").collect();
    kinds.sort();
    kinds.dedup();
    kinds.retain(|k| !priors.contains_key(k));
    for kind in kinds {
        let best = if kind.starts_with("gate ") {
            (0..candidates.len()).filter(runnable).filter(|&i| unhardened(i)).max_by(|&i, &j| {
                let score = |i: usize| {
                    let f = &feats[i];
                    let mine = f.get(&kind).copied().unwrap_or(0.0);
                    let others: f64 =
                        f.iter().filter(|(k, _)| k.starts_with("gate ") && **k != kind).map(|(_, v)| v).sum();
                    (others == 0.0, mine)
                };
                let (a, b) = (score(i), score(j));
                a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(j.cmp(&i))
            })
        } else {
            (0..candidates.len())
                .filter(runnable)
                .find(|&i| one(i) && feats[i].keys().filter(|k| k.starts_with("harden ")).eq(std::iter::once(&kind)))
        };
        if let Some(b) = best
            && feats[b].get(&kind).is_some_and(|v| *v > 0.0)
            && !out.contains(&b)
        {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_the_coefficients_of_exact_data() {
        let truth = [("base", 2.0), ("gate proc net", 0.5), ("harden kv", 0.25)];
        let rows: Vec<Features> = [[1.0, 0.0, 0.0], [1.0, 4.0, 0.0], [1.0, 0.0, 1.0], [1.0, 4.0, 1.0], [1.0, 2.0, 1.0]]
            .iter()
            .map(|r| truth.iter().zip(r).filter(|(_, v)| **v != 0.0).map(|((k, _), v)| (k.to_string(), *v)).collect())
            .collect();
        let data: Vec<(&Features, f64)> =
            rows.iter().map(|f| (f, truth.iter().map(|(k, c)| c * f.get(*k).copied().unwrap_or(0.0)).sum())).collect();
        let m = Model::fit(&data);
        for (k, c) in truth {
            assert!((m.coefficients[k] - c).abs() < 1e-6, "{k}: {}", m.coefficients[k]);
        }
        // A feature never measured is not guessed.
        let mut f = rows[0].clone();
        f.insert("gate kvm net".into(), 10.0);
        assert!((m.cost(&f) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_crossing_is_charged_to_the_remote_side() {
        use super::super::space::Protection;
        let p = |t: &str| Protection::parse(t).unwrap();
        assert_eq!(crossing_kind(p("fcall"), p("proc")), p("proc"));
        assert_eq!(crossing_kind(p("proc"), p("fcall")), p("proc"));
        assert_eq!(crossing_kind(p("mpk/dss"), p("kvm")), p("kvm"));
        assert_eq!(crossing_kind(p("fcall"), p("mpk/heap")), p("mpk/heap"));
        assert_eq!(crossing_kind(p("proc"), p("kvm")), p("kvm"));
    }
}
