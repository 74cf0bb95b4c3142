//! The space file: which configurations to explore, with which workload
//! and budget (docs/explore.md). Errors are [`ConfigError`]s that name the
//! file, line and column and say how to fix the text.

use flexos_config::{APPS, COMPONENTS, ConfigError, Hardening, MAX_CONFIG_BYTES, Mechanism, Sharing, component_info};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// A mechanism with its sharing strategy, as a compartment may use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Protection {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// Its data-sharing strategy.
    pub sharing: Sharing,
}

impl Protection {
    /// Parses `mechanism` or `mechanism/sharing` (the mechanism's default sharing when omitted).
    pub fn parse(text: &str) -> Option<Protection> {
        let (m, s) = text.split_once('/').map_or((text, None), |(m, s)| (m, Some(s)));
        let mechanism = Mechanism::ALL.iter().find(|(_, n)| *n == m)?.0;
        let sharing = match s {
            None => mechanism.sharing()[0],
            Some(s) => Sharing::ALL.iter().find(|(_, n)| *n == s)?.0,
        };
        mechanism.sharing().contains(&sharing).then_some(Protection { mechanism, sharing })
    }

    /// `mechanism/sharing`, or the mechanism alone for mechanisms with one strategy.
    pub fn name(self) -> String {
        if self.mechanism.sharing().len() == 1 {
            self.mechanism.name().to_string()
        } else {
            format!("{}/{}", self.mechanism.name(), self.sharing.name())
        }
    }
}

/// How a configuration is measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// `redis-benchmark -n REQUESTS -c 30 -P 16 -t get,set -d 3` against a kv image on a tap device.
    RedisBenchmark {
        /// Requests per test.
        requests: u64,
    },
    /// The SQLite workload: ROWS INSERTs, no transaction (`flexos bench sqlite`).
    SqliteInsert {
        /// Rows inserted.
        rows: u64,
    },
    /// A cost function computed from the configuration instead of a run (for
    /// tests of the search and for trying the tool without building images).
    Synthetic(Synthetic),
}

/// The synthetic workload's cost function: time per operation in ns is
/// `1e9 / base + Σ calls(a→b) × gate_ns[crossing mechanism] + Σ hardening_ns[component] × options`,
/// where `gate_ns["MECHANISM CALLEE"]`, if given, prices the crossings into
/// one callee (its group's name) instead of `gate_ns["MECHANISM"]`,
/// times `1 + jitter × u` with `u` in [-1, 1] fixed per configuration;
/// the runs of one measurement lie around that value by `spread` (see
/// [`Synthetic::spread`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Synthetic {
    /// Operations per second of the one-compartment image without hardening.
    pub base: f64,
    /// Gate calls per operation, per (caller, callee) component.
    pub calls: Vec<(String, String, f64)>,
    /// Nanoseconds per crossing, per mechanism name (`fcall`, `mpk/dss`,
    /// `proc`, ...), or per mechanism and callee (`"proc net"`).
    pub gate_ns: BTreeMap<String, f64>,
    /// Nanoseconds per operation per hardening option, per component.
    pub hardening_ns: BTreeMap<String, f64>,
    /// Relative noise per configuration (0: the cost falls monotonically along the safety order).
    pub jitter: f64,
    /// Relative spread of one measurement's runs around its value: the runs
    /// are the value times `1 + spread × k` for `k` spaced evenly in [-1, 1]
    /// (0: every run gives the same value), so a measurement shows its noise.
    pub spread: f64,
}

/// Which way the budget points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// The metric must be at least the bound (a throughput); higher is better.
    AtLeast,
    /// The metric must be at most the bound (a time); lower is better.
    AtMost,
}

/// The budget: a metric of the workload and its bound.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// The metric's name (e.g. `GET requests/s`, `seconds`).
    pub metric: String,
    /// Which way it points.
    pub goal: Goal,
    /// The bound (for a relative budget, known once the baseline is measured).
    pub bound: f64,
    /// For a budget written as a percentage (`at-least = "72%"`), that
    /// fraction of the baseline's measured value (the one-compartment
    /// image without hardening) is the bound.
    pub relative: Option<f64>,
}

impl Budget {
    /// Sets a relative budget's bound from the baseline's measured value.
    pub fn resolve(&mut self, baseline: f64) {
        if let Some(r) = self.relative {
            self.bound = r * baseline;
        }
    }

    /// Whether `value` meets the budget.
    pub fn met_by(&self, value: f64) -> bool {
        match self.goal {
            Goal::AtLeast => value >= self.bound,
            Goal::AtMost => value <= self.bound,
        }
    }

    /// The cost the model predicts for `value`: time per unit of work
    /// (1/throughput, or the time itself), so that costs add up.
    pub fn cost(&self, value: f64) -> f64 {
        match self.goal {
            Goal::AtLeast => 1.0 / value.max(1e-12),
            Goal::AtMost => value,
        }
    }

    /// The metric's value for a cost (inverse of [`Budget::cost`]).
    pub fn value(&self, cost: f64) -> f64 {
        match self.goal {
            Goal::AtLeast => 1.0 / cost.max(1e-300),
            Goal::AtMost => cost,
        }
    }

    /// Whether `a` is better than `b` by more than the fraction `tolerance`.
    pub fn better(&self, a: f64, b: f64, tolerance: f64) -> bool {
        match self.goal {
            Goal::AtLeast => a > b * (1.0 + tolerance),
            Goal::AtMost => a < b * (1.0 - tolerance),
        }
    }
}

/// A validated space.
#[derive(Clone, Debug)]
pub struct Space {
    /// The space file.
    pub source: PathBuf,
    /// Its text (plans carry it to workers).
    pub text: String,
    /// The application.
    pub app: String,
    /// Absolute `files` folder for the configurations, if any.
    pub files: Option<PathBuf>,
    /// How configurations are measured.
    pub workload: Workload,
    /// Runs per configuration (the median counts).
    pub runs: usize,
    /// The budget.
    pub budget: Budget,
    /// Groups of components that move together (a component and those that
    /// must share its compartment); the first name is the group's name.
    pub movable: Vec<Vec<&'static str>>,
    /// The most compartments a configuration may have (the default one included).
    pub max_compartments: usize,
    /// What a compartment other than the default one may use.
    pub protections: Vec<Protection>,
    /// What the default compartment uses.
    pub default_protection: Protection,
    /// Components that may be hardened, each with the members it stands for.
    pub harden_groups: Vec<Vec<&'static str>>,
    /// Toggle each group's options together (true) or each option alone.
    pub bundle: bool,
    /// The options considered (each applies to members of its language).
    pub options: Vec<Hardening>,
    /// Measured costs of the hardening options per component (`[hardening]
    /// costs`, a table of `flexos bench hardening`): the model takes the
    /// hardening coefficients from it instead of calibration runs.
    pub hardening_costs: Option<crate::hardenbench::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpace {
    app: Spanned<String>,
    files: Option<Spanned<String>>,
    workload: Spanned<RawWorkload>,
    budget: Spanned<RawBudget>,
    placement: Option<Spanned<RawPlacement>>,
    hardening: Option<Spanned<RawHardening>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWorkload {
    kind: Spanned<String>,
    runs: Option<Spanned<i64>>,
    requests: Option<Spanned<i64>>,
    rows: Option<Spanned<i64>>,
    base: Option<Spanned<f64>>,
    #[serde(default)]
    calls: BTreeMap<Spanned<String>, Spanned<f64>>,
    #[serde(default)]
    gate_ns: BTreeMap<Spanned<String>, Spanned<f64>>,
    #[serde(default)]
    hardening_ns: BTreeMap<Spanned<String>, Spanned<f64>>,
    jitter: Option<Spanned<f64>>,
    spread: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBudget {
    metric: Spanned<String>,
    at_least: Option<Spanned<Bound>>,
    at_most: Option<Spanned<Bound>>,
}

/// A budget's bound as written: a number, or a percentage of the baseline.
#[derive(Deserialize)]
#[serde(untagged)]
enum Bound {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPlacement {
    #[serde(default)]
    movable: Vec<Spanned<String>>,
    max_compartments: Option<Spanned<i64>>,
    #[serde(default)]
    mechanisms: Vec<Spanned<String>>,
    default_mechanism: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHardening {
    #[serde(default)]
    components: Vec<Spanned<String>>,
    bundle: Option<Spanned<bool>>,
    options: Option<Vec<Spanned<String>>>,
    costs: Option<Spanned<String>>,
}

/// The metrics each workload reports.
pub fn metrics(workload: &Workload) -> &'static [&'static str] {
    match workload {
        Workload::RedisBenchmark { .. } => &["GET requests/s", "SET requests/s"],
        Workload::SqliteInsert { .. } => &["seconds"],
        Workload::Synthetic(_) => &["ops/s"],
    }
}

/// Reads and validates the space file at `path`.
pub fn load(path: &Path) -> Result<Space, Vec<ConfigError>> {
    let text = read_text(path)?;
    parse(path, &text)
}

fn read_text(path: &Path) -> Result<String, Vec<ConfigError>> {
    let fail = |e: String| vec![ConfigError::whole_file(path, e, "name a readable space file (see spaces/)")];
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read the space: {e}")))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(fail(format!("the space file is larger than {} KiB", MAX_CONFIG_BYTES / 1024)));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read the space: {e}")))?;
    String::from_utf8(bytes).map_err(|_| fail("the space file is not UTF-8 text".into()))
}

/// Parses and validates space text; `path` names it in messages and
/// anchors its relative `files` folder.
pub fn parse(path: &Path, text: &str) -> Result<Space, Vec<ConfigError>> {
    let raw: RawSpace = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        vec![ConfigError::at(
            path,
            text,
            at,
            e.message().trim().to_string(),
            "write the space in the format of docs/explore.md (app, files, [workload], [budget], [placement], [hardening])",
        )]
    })?;
    let mut errors = Vec::new();
    let mut err = |at: usize, msg: String, fix: String| errors.push(ConfigError::at(path, text, at, msg, fix));

    let app = raw.app.get_ref().clone();
    if !APPS.contains(&app.as_str()) || app == "probe" {
        err(raw.app.span().start, format!("unknown application {app:?}"), "use kv, httpd, iperf or sqlite".into());
    }
    let files = raw.files.as_ref().and_then(|f| {
        let dir = path.parent().unwrap_or(Path::new(".")).join(f.get_ref());
        match std::fs::canonicalize(&dir) {
            Ok(d) if d.is_dir() => Some(d),
            _ => {
                err(
                    f.span().start,
                    format!("files folder {:?} does not exist", dir.display().to_string()),
                    "name a folder, relative to the space file".into(),
                );
                None
            }
        }
    });

    // Workload.
    let w = raw.workload.get_ref();
    let mut priced_callees: Vec<(usize, String)> = Vec::new(); // synthetic "MECHANISM CALLEE" keys
    let positive = |v: &Option<Spanned<i64>>, default: i64, err: &mut dyn FnMut(usize, String, String)| match v {
        Some(n) if *n.get_ref() < 1 => {
            err(n.span().start, "must be at least 1".into(), "give a positive whole number".into());
            default as u64
        }
        Some(n) => *n.get_ref() as u64,
        None => default as u64,
    };
    let runs = positive(&w.runs, 3, &mut err) as usize;
    let kind = w.kind.get_ref().as_str();
    let workload = match kind {
        "redis-benchmark" => Workload::RedisBenchmark { requests: positive(&w.requests, 100_000, &mut err) },
        "sqlite-insert" => Workload::SqliteInsert { rows: positive(&w.rows, 5000, &mut err) },
        "synthetic" => {
            let base = w.base.as_ref().map_or(1e6, |b| *b.get_ref());
            let mut calls = Vec::new();
            for (pair, n) in &w.calls {
                match pair.get_ref().split_once("->") {
                    Some((a, b)) => calls.push((a.trim().to_string(), b.trim().to_string(), *n.get_ref())),
                    None => err(
                        pair.span().start,
                        format!("{:?} is not a component pair", pair.get_ref()),
                        "write calls as \"caller->callee\" = calls per operation".into(),
                    ),
                }
            }
            let map = |m: &BTreeMap<Spanned<String>, Spanned<f64>>| -> BTreeMap<String, f64> {
                m.iter().map(|(k, v)| (k.get_ref().clone(), *v.get_ref())).collect()
            };
            if base <= 0.0 {
                err(w.base.as_ref().map_or(0, |b| b.span().start), "base must be positive".into(), "give ops/s".into());
            }
            let fraction = |v: &Option<Spanned<f64>>, err: &mut dyn FnMut(usize, String, String)| match v {
                Some(f) if !(0.0..1.0).contains(f.get_ref()) => {
                    err(f.span().start, "must be a fraction in [0, 1)".into(), "give 0.05 for 5% noise".into());
                    0.0
                }
                Some(f) => *f.get_ref(),
                None => 0.0,
            };
            let jitter = fraction(&w.jitter, &mut err);
            let spread = fraction(&w.spread, &mut err);
            // Keys as the model names them: the mechanism's full name, then the callee if given.
            let mut gate_ns = BTreeMap::new();
            for (key, ns) in &w.gate_ns {
                let (mechanism, callee) =
                    key.get_ref().split_once(' ').map_or((key.get_ref().as_str(), None), |(m, c)| (m, Some(c.trim())));
                if let Some(c) = callee {
                    priced_callees.push((key.span().start, c.to_string()));
                }
                let known_callee = callee.is_none_or(|c| component_info(c).is_some_and(|i| i.in_app(&app)));
                match Protection::parse(mechanism) {
                    Some(p) if known_callee => {
                        let name = callee.map_or(p.name(), |c| format!("{} {c}", p.name()));
                        gate_ns.insert(name, *ns.get_ref());
                    }
                    _ => err(
                        key.span().start,
                        format!("{:?} is not a mechanism, or a mechanism and a component of {app}", key.get_ref()),
                        "write \"proc\" (every crossing of a proc boundary) or \"proc net\" (those into net)".into(),
                    ),
                }
            }
            Workload::Synthetic(Synthetic { base, calls, gate_ns, hardening_ns: map(&w.hardening_ns), jitter, spread })
        }
        other => {
            err(
                w.kind.span().start,
                format!("unknown workload {other:?}"),
                "use redis-benchmark (kv), sqlite-insert (sqlite) or synthetic".into(),
            );
            Workload::Synthetic(Synthetic::default()) // the space is refused: any value does
        }
    };
    let fits = match (&workload, app.as_str()) {
        (Workload::RedisBenchmark { .. }, a) => a == "kv",
        (Workload::SqliteInsert { .. }, a) => a == "sqlite",
        (Workload::Synthetic(_), _) => true,
    };
    if !fits {
        err(
            w.kind.span().start,
            format!("workload {kind:?} does not drive application {app:?}"),
            "use redis-benchmark with app = \"kv\", sqlite-insert with app = \"sqlite\", or synthetic".into(),
        );
    }

    // Budget.
    let b = raw.budget.get_ref();
    let known = metrics(&workload);
    if !known.contains(&b.metric.get_ref().as_str()) {
        err(
            b.metric.span().start,
            format!("workload {kind:?} has no metric {:?}", b.metric.get_ref()),
            format!("use one of: {}", known.join(", ")),
        );
    }
    let (goal, bound, relative) = match (&b.at_least, &b.at_most) {
        (Some(v), None) | (None, Some(v)) => {
            let goal = if b.at_least.is_some() { Goal::AtLeast } else { Goal::AtMost };
            let parsed = match v.get_ref() {
                Bound::Number(n) => (*n > 0.0).then_some((*n, None)),
                Bound::Text(t) => percentage(t).map(|r| (f64::NAN, Some(r))),
            };
            match parsed {
                Some((bound, relative)) => (goal, bound, relative),
                None => {
                    err(
                        v.span().start,
                        "a bound must be a positive number or a positive percentage".into(),
                        "write a value of the metric (at-least = 1100000) or a share of the one-compartment image's \
                         (at-least = \"72%\")"
                            .into(),
                    );
                    (goal, 0.0, None)
                }
            }
        }
        _ => {
            err(
                raw.budget.span().start,
                "the budget needs exactly one bound".into(),
                "write at-least = N (throughputs) or at-most = N (times)".into(),
            );
            (Goal::AtLeast, 0.0, None)
        }
    };
    let budget = Budget { metric: b.metric.get_ref().clone(), goal, bound, relative };

    // Placement.
    let in_app = |name: &str| component_info(name).is_some_and(|c| c.in_app(&app));
    let component = |name: &Spanned<String>, err: &mut dyn FnMut(usize, String, String)| -> Option<&'static str> {
        match component_info(name.get_ref()) {
            Some(c) if in_app(c.name) => Some(c.name),
            _ => {
                let names: Vec<&str> = COMPONENTS.iter().filter(|c| in_app(c.name)).map(|c| c.name).collect();
                err(
                    name.span().start,
                    format!("{:?} is not a component of the {app} image", name.get_ref()),
                    format!("use one of: {}", names.join(", ")),
                );
                None
            }
        }
    };
    let mut movable: Vec<Vec<&'static str>> = Vec::new();
    let mut max_compartments = 1;
    let mut protections = Vec::new();
    let mut default_protection = Protection { mechanism: Mechanism::Fcall, sharing: Sharing::SharedStack };
    if let Some(p) = &raw.placement {
        let p = p.get_ref();
        for m in &p.movable {
            // `a+b` moves a and b together; partners that must share a compartment follow.
            let mut group: Vec<&'static str> = Vec::new();
            for part in m.get_ref().split('+') {
                let part = Spanned::new(m.span(), part.trim().to_string());
                if let Some(c) = component(&part, &mut err) {
                    for x in with_partners(c, &app) {
                        if !group.contains(&x) {
                            group.push(x);
                        }
                    }
                }
            }
            if !group.is_empty() {
                if movable.iter().any(|g| g.iter().any(|x| group.contains(x))) {
                    err(
                        m.span().start,
                        format!("{:?} is listed twice (or moves with a component listed before)", m.get_ref()),
                        "list each component once; partners that must share its compartment follow it".into(),
                    );
                } else {
                    movable.push(group);
                }
            }
        }
        max_compartments = match &p.max_compartments {
            Some(n) if *n.get_ref() < 1 || *n.get_ref() > 16 => {
                err(n.span().start, "max-compartments must be 1 to 16".into(), "give a small number".into());
                1
            }
            Some(n) => *n.get_ref() as usize,
            None => movable.len() + 1,
        };
        let protection = |m: &Spanned<String>, err: &mut dyn FnMut(usize, String, String)| {
            Protection::parse(m.get_ref()).or_else(|| {
                err(
                    m.span().start,
                    format!("unknown mechanism {:?}", m.get_ref()),
                    "use fcall, mpk/shared-stack, mpk/dss, mpk/heap, proc or kvm".into(),
                );
                None
            })
        };
        for m in &p.mechanisms {
            if let Some(pr) = protection(m, &mut err)
                && !protections.contains(&pr)
            {
                protections.push(pr);
            }
        }
        if let Some(d) = &p.default_mechanism
            && let Some(pr) = protection(d, &mut err)
        {
            if pr.mechanism.is_remote() {
                err(
                    d.span().start,
                    format!("the default compartment cannot use {}", pr.name()),
                    "the default compartment is the host process: use fcall or mpk".into(),
                );
            }
            default_protection = pr;
        }
        if !movable.is_empty() && protections.is_empty() {
            err(
                0,
                "[placement] moves components but names no mechanism".into(),
                "add mechanisms = [\"proc\"] (or fcall, mpk/dss, kvm, ...)".into(),
            );
        }
    }

    // Hardening.
    let mut harden_groups = Vec::new();
    let mut hardening_costs = None;
    let mut bundle = true;
    let mut options: Vec<Hardening> = Hardening::ALL.iter().map(|(h, ..)| *h).collect();
    if let Some(h) = &raw.hardening {
        let h = h.get_ref();
        for c in &h.components {
            if let Some(name) = component(c, &mut err) {
                harden_groups.push(with_partners(name, &app));
            }
        }
        bundle = h.bundle.as_ref().is_none_or(|b| *b.get_ref());
        if let Some(list) = &h.options {
            options.clear();
            for o in list {
                match Hardening::ALL.iter().find(|(_, n, _)| n == o.get_ref()) {
                    Some((opt, ..)) => options.push(*opt),
                    None => err(
                        o.span().start,
                        format!("unknown hardening option {:?}", o.get_ref()),
                        format!("use: {}", Hardening::ALL.iter().map(|(_, n, _)| *n).collect::<Vec<_>>().join(", ")),
                    ),
                }
            }
        }
        if let Some(c) = &h.costs {
            let file = path.parent().unwrap_or(Path::new(".")).join(c.get_ref());
            match crate::hardenbench::load(&file) {
                Ok(t) if t.app == app => hardening_costs = Some(t),
                Ok(t) => err(
                    c.span().start,
                    format!("the hardening costs in {:?} are for app {:?}, not {app:?}", c.get_ref(), t.app),
                    format!("measure them with `flexos bench hardening --app {app}`"),
                ),
                Err(e) => err(
                    c.span().start,
                    format!("cannot read the hardening costs: {e}"),
                    format!("name a table written by `flexos bench hardening --app {app}`, relative to the space file"),
                ),
            }
        }
        for (g, c) in harden_groups.iter().zip(&h.components) {
            if !options.iter().any(|o| g.iter().any(|m| applies(*o, m))) {
                err(
                    c.span().start,
                    format!("no hardening option in this space applies to {:?}", c.get_ref()),
                    "add an option of its language to options, or leave it out".into(),
                );
            }
        }
    }

    // A price into a group is written with the group's name, as the model names it.
    for (at, callee) in &priced_callees {
        if let Some(group) = movable.iter().find(|g| g.contains(&callee.as_str()) && g[0] != callee.as_str()) {
            err(
                *at,
                format!("{callee} moves with {}, so crossings into it are priced as {}'s", group[0], group[0]),
                format!("write the key with {:?}", group[0]),
            );
        }
    }

    if errors.is_empty() {
        Ok(Space {
            source: path.to_owned(),
            text: text.to_owned(),
            app,
            files,
            workload,
            runs,
            budget,
            movable,
            max_compartments,
            protections,
            default_protection,
            harden_groups,
            bundle,
            options,
            hardening_costs,
        })
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(errors)
    }
}

impl Space {
    /// The unit of a component: g+1 for movable group g, else 0 (it stays
    /// in the default compartment).
    pub fn unit_of(&self, component: &str) -> usize {
        self.movable.iter().position(|g| g.contains(&component)).map_or(0, |g| g + 1)
    }

    /// The name calls into `component` are priced under: its movable
    /// group's (the group's first member, as in `movable`), else its own.
    pub fn group_name<'a>(&'a self, component: &'a str) -> &'a str {
        self.movable.iter().find(|g| g.contains(&component)).map_or(component, |g| g[0])
    }
}

/// `"72%"` as 0.72; `None` unless a positive number followed by `%`.
fn percentage(text: &str) -> Option<f64> {
    let n: f64 = text.trim().strip_suffix('%')?.trim().parse().ok()?;
    (n > 0.0 && n.is_finite()).then_some(n / 100.0)
}

/// `component` and the components of `app` that must share its compartment with it.
fn with_partners(component: &'static str, app: &str) -> Vec<&'static str> {
    let mut group = vec![component];
    for c in COMPONENTS.iter().filter(|c| c.in_app(app)) {
        match c.colocated_with {
            Some((other, _)) if other == component && !group.contains(&c.name) => group.push(c.name),
            _ => {}
        }
    }
    if let Some((other, _)) = component_info(component).and_then(|c| c.colocated_with)
        && !group.contains(&other)
        && component_info(other).is_some_and(|c| c.in_app(app))
    {
        group.push(other);
    }
    group
}

/// Whether hardening option `option` applies to component `component`.
pub fn applies(option: Hardening, component: &str) -> bool {
    component_info(component).is_some_and(|c| option.applies_to(c))
}
