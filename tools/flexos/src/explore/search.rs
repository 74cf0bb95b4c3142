//! The search (docs/explore.md, "The search"): measure the calibration
//! configurations, predict every configuration with the model, and measure
//! only where prediction and measurements so far cannot decide whether a
//! configuration belongs to the maximal safe set.

use super::enumerate::{Candidate, Enumeration};
use super::model::{Calls, Features, Model, calibration, features, hardening_priors};
use super::order::Order;
use super::space::{Budget, Space};
use std::collections::BTreeMap;

/// The result of measuring one configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Every run's value, per metric.
    pub metrics: BTreeMap<String, Vec<f64>>,
    /// Why it could not be measured (build or run failure), if it could not.
    pub error: Option<String>,
}

impl Outcome {
    /// The median absolute deviation of `metric`'s runs (0 without runs).
    pub fn spread(&self, metric: &str) -> f64 {
        let Some(m) = self.median(metric) else { return 0.0 };
        let deviations: Vec<f64> = self.metrics[metric].iter().map(|v| (v - m).abs()).collect();
        Outcome { metrics: BTreeMap::from([(metric.to_string(), deviations)]), error: None }
            .median(metric)
            .unwrap_or(0.0)
    }

    /// The standard error of `metric`'s median, estimated from its runs:
    /// for normal noise the standard deviation is about 1.4826 times the
    /// median absolute deviation, and the median of `n` runs errs by about
    /// 1.2533 σ / √n (0 with fewer than two runs).
    pub fn median_error(&self, metric: &str) -> f64 {
        let n = self.metrics.get(metric).map_or(0, Vec::len);
        if n < 2 {
            return 0.0;
        }
        1.2533 * 1.4826 * self.spread(metric) / (n as f64).sqrt()
    }

    /// The median of `metric`'s runs, if measured.
    pub fn median(&self, metric: &str) -> Option<f64> {
        let mut v = self.metrics.get(metric)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
    }
}

/// What measures configurations (real images, or a synthetic function in tests).
pub trait Measurer {
    /// The gate calls of the one-compartment image `baseline` under the workload.
    fn calls(&mut self, baseline: &Candidate) -> Result<Calls, String>;
    /// Measures a batch (building first, then runs in alternation).
    fn measure(&mut self, batch: &[&Candidate], note: &mut dyn FnMut(&str)) -> Vec<Outcome>;
}

/// Where outcomes are kept between runs (the results database).
pub trait Store {
    /// A stored outcome of `c`.
    fn outcome(&mut self, c: &Candidate) -> Option<Outcome>;
    /// Keeps an outcome of `c`.
    fn keep(&mut self, c: &Candidate, o: &Outcome) -> Result<(), String>;
    /// Stored gate calls of `baseline`.
    fn calls(&mut self, baseline: &Candidate) -> Option<Calls>;
    /// Keeps the gate calls of `baseline`.
    fn keep_calls(&mut self, baseline: &Candidate, calls: &Calls) -> Result<(), String>;
}

/// How to search.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Measure every configuration.
    pub exhaustive: bool,
    /// Predictions within this fraction of the budget (or the model's
    /// error so far, times two, if larger) are measured.
    pub margin: f64,
    /// An edge is non-monotone when the safer configuration performs better
    /// by more than this fraction and by more than the sum of both
    /// configurations' median absolute deviations (measurement noise).
    pub tolerance: f64,
    /// Most configurations per batch (built together, then measured in alternation).
    pub batch: usize,
    /// Measure nothing new: everything must come from the store (merge).
    pub stored_only: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { exhaustive: false, margin: 0.10, tolerance: 0.02, batch: 6, stored_only: false }
    }
}

/// Everything the search found.
#[derive(Clone, Debug)]
pub struct Exploration {
    /// The enumeration.
    pub enumeration: Enumeration,
    /// The budget.
    pub budget: Budget,
    /// The final model.
    pub model: Model,
    /// Per candidate: the final model's prediction of the metric.
    pub predicted: Vec<f64>,
    /// Per candidate: the prediction made just before it was measured (none for calibration ones).
    pub predicted_before: Vec<Option<f64>>,
    /// Per candidate: its outcome, if measured (or stored).
    pub outcomes: Vec<Option<Outcome>>,
    /// The calibration candidates.
    pub calibration: Vec<usize>,
    /// Candidates measured (or reused) in this exploration.
    pub measured: Vec<usize>,
    /// Of those, taken from the store rather than measured now.
    pub reused: usize,
    /// Hasse edges (lower, upper).
    pub edges: Vec<(usize, usize)>,
    /// Edges along which measured performance went up by more than the tolerance.
    pub non_monotone: Vec<(usize, usize)>,
    /// The maximal configurations that meet the budget (measured).
    pub maximal: Vec<usize>,
    /// Candidates taken to fail without a measurement because a measured
    /// configuration below them failed by more than its noise and the model
    /// could not decide.
    pub inferred: Vec<usize>,
    /// Mean absolute percentage error of `predicted_before` over the measured ones.
    pub model_mape: Option<f64>,
}

impl Exploration {
    /// The measured median of candidate `i`, if any.
    pub fn value(&self, i: usize) -> Option<f64> {
        self.outcomes[i].as_ref().and_then(|o| o.median(&self.budget.metric))
    }

    /// Whether candidate `i` meets the budget: measured, else predicted.
    pub fn meets(&self, i: usize) -> bool {
        match &self.outcomes[i] {
            Some(o) => o.median(&self.budget.metric).is_some_and(|v| self.budget.met_by(v)),
            None => !self.inferred.contains(&i) && self.budget.met_by(self.predicted[i]),
        }
    }
}

/// Runs the search over `enumeration`.
pub fn explore(
    space: &Space,
    enumeration: Enumeration,
    measurer: &mut dyn Measurer,
    store: &mut dyn Store,
    settings: &Settings,
    progress: &mut dyn FnMut(Progress),
) -> Result<Exploration, String> {
    let cands = &enumeration.candidates;
    let n = cands.len();
    let mut budget = space.budget.clone();
    let order = Order::new(cands);
    let edges = order.hasse();
    let baseline = enumeration
        .baseline()
        .ok_or("the space has no one-compartment configuration without hardening (is it invalid?)")?;
    let calls = match store.calls(baseline) {
        Some(c) => c,
        None if settings.stored_only => return Err("the gate calls of the baseline are not in the results".into()),
        None => {
            progress(Progress::Counting);
            let c = measurer.calls(baseline)?;
            store.keep_calls(baseline, &c)?;
            c
        }
    };
    let feats: Vec<Features> = cands.iter().map(|c| features(space, &calls, c)).collect();
    let priors = hardening_priors(space);
    let calibration = calibration(space, &calls, cands, &priors);
    let mut st = State {
        outcomes: vec![None; n],
        predicted_before: vec![None; n],
        measured: Vec::new(),
        reused: 0,
        inferred: Vec::new(),
    };
    let mut io = Io { cands, measurer, store, settings, progress };

    // 1. Calibration (the baseline first), which settles a relative budget.
    for chunk in calibration.chunks(settings.batch.max(1)) {
        io.measure(&mut st, chunk, None)?;
    }
    if budget.relative.is_some() {
        let base = cands.iter().position(|c| std::ptr::eq(c, baseline)).expect("the baseline is a candidate");
        match st.outcomes[base].as_ref().and_then(|o| o.median(&budget.metric)) {
            Some(v) => budget.resolve(v),
            None => {
                let error = st.outcomes[base].as_ref().and_then(|o| o.error.clone());
                let why = error.or_else(|| baseline.unrunnable.clone()).unwrap_or_default();
                return Err(format!(
                    "the budget is a share of the baseline ({}), which gave no {}: {why}",
                    baseline.id, budget.metric
                ));
            }
        }
    }
    let budget = budget;
    let value = |outcomes: &[Option<Outcome>], i: usize| -> Option<f64> {
        outcomes[i].as_ref().and_then(|o| o.median(&budget.metric))
    };

    // 2. Predict, decide, measure what cannot be decided.
    let fit = |outcomes: &[Option<Outcome>]| {
        let data: Vec<(&Features, f64)> =
            (0..n).filter_map(|i| value(outcomes, i).map(|v| (&feats[i], budget.cost(v)))).collect();
        Model::fit(&data).with_priors(&priors)
    };
    loop {
        let model = fit(&st.outcomes);
        let preds: Vec<f64> = feats.iter().map(|f| budget.value(model.cost(f))).collect();
        let mape = mape(&st.predicted_before, &st.outcomes, &budget.metric);
        let margin = settings.margin.max(2.0 * mape.unwrap_or(0.0));
        let passes = |i: usize| value(&st.outcomes, i).map(|v| budget.met_by(v));
        let clearly_fails = |i: usize| st.outcomes[i].as_ref().is_some_and(|o| misses_beyond_noise(&budget, o));
        let todo: Vec<usize> = if settings.exhaustive {
            (0..n).filter(|&i| st.outcomes[i].is_none() && cands[i].unrunnable.is_none()).collect()
        } else {
            st.inferred.clear();
            let mut todo = Vec::new();
            for i in 0..n {
                if st.outcomes[i].is_some() || cands[i].unrunnable.is_some() {
                    continue;
                }
                // Below a configuration that meets the budget: not maximal, whatever it does.
                if (0..n).any(|j| passes(j) == Some(true) && order.above(j, i)) {
                    continue;
                }
                let (pass, fail) = decide(&budget, preds[i], margin);
                if fail {
                    continue;
                }
                if !pass && (0..n).any(|j| clearly_fails(j) && order.above(i, j)) {
                    // Safer than one that failed beyond its noise, and the model cannot say.
                    st.inferred.push(i);
                    continue;
                }
                todo.push(i);
            }
            todo
        };
        if todo.is_empty() {
            break;
        }
        (io.progress)(Progress::Planned { total: st.measured.len() + todo.len() });
        let batch = if settings.exhaustive {
            // The safest first.
            let frontier = todo.iter().copied().filter(|&i| !todo.iter().any(|&j| order.above(j, i)));
            frontier.take(settings.batch.max(1)).collect()
        } else {
            most_telling(&todo, &order, &budget, &preds, margin, settings.batch.max(1))
        };
        io.measure(&mut st, &batch, Some(&preds))?;
    }

    let model = fit(&st.outcomes);
    let predicted: Vec<f64> = feats.iter().map(|f| budget.value(model.cost(f))).collect();
    let model_mape = mape(&st.predicted_before, &st.outcomes, &budget.metric);
    let meets = |i: usize| value(&st.outcomes, i).is_some_and(|v| budget.met_by(v));
    let maximal: Vec<usize> = (0..n).filter(|&i| meets(i) && !(0..n).any(|j| meets(j) && order.above(j, i))).collect();
    let non_monotone = edges
        .iter()
        .copied()
        .filter(|&(lo, up)| match (value(&st.outcomes, lo), value(&st.outcomes, up)) {
            (Some(l), Some(u)) => {
                // Better by more than the tolerance and than the spread of either's runs.
                let spread = |i: usize| st.outcomes[i].as_ref().map_or(0.0, |o| o.spread(&budget.metric));
                budget.better(u, l, settings.tolerance) && (u - l).abs() > spread(lo) + spread(up)
            }
            _ => false,
        })
        .collect();
    st.measured.sort();
    st.measured.dedup();
    Ok(Exploration {
        enumeration,
        budget,
        model,
        predicted,
        predicted_before: st.predicted_before,
        outcomes: st.outcomes,
        calibration,
        measured: st.measured,
        reused: st.reused,
        edges,
        non_monotone,
        maximal,
        inferred: st.inferred,
        model_mape,
    })
}

/// What the search knows so far.
struct State {
    outcomes: Vec<Option<Outcome>>,
    predicted_before: Vec<Option<f64>>,
    measured: Vec<usize>,
    reused: usize,
    inferred: Vec<usize>,
}

/// What the search measures with.
struct Io<'a> {
    cands: &'a [Candidate],
    measurer: &'a mut dyn Measurer,
    store: &'a mut dyn Store,
    settings: &'a Settings,
    progress: &'a mut dyn FnMut(Progress),
}

impl Io<'_> {
    /// Takes the outcomes of `batch` from the store, or measures them
    /// (and stores them at once, so an interrupted search resumes here);
    /// `preds` are the predictions made before measuring.
    fn measure(&mut self, st: &mut State, batch: &[usize], preds: Option<&[f64]>) -> Result<(), String> {
        let mut fresh = Vec::new();
        for &i in batch {
            if let Some(p) = preds {
                st.predicted_before[i] = Some(p[i]);
            }
            match self.store.outcome(&self.cands[i]) {
                Some(o) => {
                    st.outcomes[i] = Some(o);
                    st.reused += 1;
                }
                None if self.settings.stored_only => {
                    return Err(format!("{} is not in the results (did every worker finish?)", self.cands[i].id));
                }
                None => fresh.push(i),
            }
            st.measured.push(i);
        }
        if !fresh.is_empty() {
            let refs: Vec<&Candidate> = fresh.iter().map(|&i| &self.cands[i]).collect();
            (self.progress)(Progress::Batch { ids: refs.iter().map(|c| c.id.clone()).collect() });
            let progress = &mut *self.progress;
            let results = self.measurer.measure(&refs, &mut |what: &str| progress(Progress::Note(what.to_string())));
            for (&i, o) in fresh.iter().zip(results) {
                self.store.keep(&self.cands[i], &o)?;
                st.outcomes[i] = Some(o);
            }
        }
        (self.progress)(Progress::Done { measured: st.measured.len() });
        Ok(())
    }
}

/// Progress of a search, for the progress bar.
#[derive(Clone, Debug)]
pub enum Progress {
    /// Counting gate calls of the one-compartment image.
    Counting,
    /// How many configurations will have been measured when the current plan is done.
    Planned {
        /// Measured so far plus those still to measure.
        total: usize,
    },
    /// A batch is being built and measured.
    Batch {
        /// Its candidates.
        ids: Vec<String>,
    },
    /// What the measurer is doing (building X, measuring Y).
    Note(String),
    /// Configurations measured (or reused) so far.
    Done {
        /// How many.
        measured: usize,
    },
}

/// The configurations of `todo` whose measurement is expected to decide the
/// most others, pairwise incomparable, at most `count`: one that meets the
/// budget decides every configuration below it (not maximal), one that
/// fails decides the undecided ones above it (taken to fail); each outcome
/// is weighted by how likely the prediction makes it.
fn most_telling(
    todo: &[usize],
    order: &Order,
    budget: &Budget,
    preds: &[f64],
    margin: f64,
    count: usize,
) -> Vec<usize> {
    let likely_pass = |i: usize| {
        let r = match budget.goal {
            super::space::Goal::AtLeast => preds[i] / budget.bound - 1.0,
            super::space::Goal::AtMost => 1.0 - preds[i] / budget.bound,
        };
        (0.5 + r / (2.0 * margin.max(1e-9))).clamp(0.0, 1.0)
    };
    let clear_pass = |i: usize| decide(budget, preds[i], margin).0;
    let mut scored: Vec<(f64, usize)> = todo
        .iter()
        .map(|&i| {
            let below = todo.iter().filter(|&&j| order.above(i, j)).count() as f64;
            let above = todo.iter().filter(|&&j| order.above(j, i) && !clear_pass(j)).count() as f64;
            let p = likely_pass(i);
            (p * below + (1.0 - p) * above, i)
        })
        .collect();
    // Best first; ties in enumeration order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut picked: Vec<usize> = Vec::new();
    for (_, i) in scored {
        if picked.len() == count {
            break;
        }
        if picked.iter().all(|&j| !order.above(i, j) && !order.above(j, i)) {
            picked.push(i);
        }
    }
    picked
}

/// Whether outcome `o` misses the budget by more than twice its median's
/// standard error ([`Outcome::median_error`]). A miss within its own noise
/// says nothing of the configurations above it: one of them may measure
/// better, so the search measures them instead of taking them to fail.
fn misses_beyond_noise(budget: &Budget, o: &Outcome) -> bool {
    let Some(m) = o.median(&budget.metric) else { return false };
    let noise = 2.0 * o.median_error(&budget.metric);
    let hopeful = match budget.goal {
        super::space::Goal::AtLeast => m + noise,
        super::space::Goal::AtMost => m - noise,
    };
    !budget.met_by(hopeful)
}

/// Whether a prediction clearly passes or clearly fails the budget (by more than `margin`).
fn decide(budget: &Budget, predicted: f64, margin: f64) -> (bool, bool) {
    let (hi, lo) = (budget.bound * (1.0 + margin), budget.bound * (1.0 - margin));
    match budget.goal {
        super::space::Goal::AtLeast => (predicted >= hi, predicted < lo),
        super::space::Goal::AtMost => (predicted <= lo, predicted > hi),
    }
}

/// Mean absolute percentage error of the predictions made before measuring.
fn mape(before: &[Option<f64>], outcomes: &[Option<Outcome>], metric: &str) -> Option<f64> {
    let errs: Vec<f64> = before
        .iter()
        .zip(outcomes)
        .filter_map(|(p, o)| {
            let v = o.as_ref()?.median(metric)?;
            Some(((p.as_ref()? - v) / v).abs())
        })
        .collect();
    (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64)
}
