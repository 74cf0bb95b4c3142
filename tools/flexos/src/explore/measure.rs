//! Measurers: real images driven by the benchmark harnesses of
//! `flexos bench`, and the synthetic cost function.

use super::enumerate::Candidate;
use super::model::Calls;
use super::search::{Measurer, Outcome};
use super::space::{Space, Synthetic, Workload};
use crate::build::{BuildOptions, build_image};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The measurer of a space's workload.
pub fn for_space(space: &Space, root: &Path) -> Box<dyn Measurer> {
    match SyntheticMeasurer::new(space) {
        Some(m) => Box::new(m),
        None => Box::new(ImageMeasurer { space: space.clone(), root: root.to_owned() }),
    }
}

/// Computes the synthetic cost function instead of running anything.
pub struct SyntheticMeasurer {
    space: Space,
    synthetic: Synthetic,
}

/// Operations the synthetic gate-call counts stand for.
const SYNTHETIC_OPS: f64 = 1e6;

impl SyntheticMeasurer {
    /// The measurer of a synthetic space (`None` for another workload).
    pub fn new(space: &Space) -> Option<SyntheticMeasurer> {
        match &space.workload {
            Workload::Synthetic(s) => Some(SyntheticMeasurer { space: space.clone(), synthetic: s.clone() }),
            _ => None,
        }
    }

    /// The synthetic value of `c` (operations per second).
    pub fn value(&self, c: &Candidate) -> f64 {
        let s = &self.synthetic;
        let mut ns = 1e9 / s.base;
        for (kind, callee, n) in c.crossings(&self.space, &s.calls) {
            let price = s.gate_ns.get(&format!("{} {callee}", kind.name())).or_else(|| s.gate_ns.get(&kind.name()));
            ns += n * price.copied().unwrap_or(0.0);
        }
        for (group, options) in self.space.harden_groups.iter().zip(&c.harden) {
            ns += options.len() as f64 * s.hardening_ns.get(group[0]).copied().unwrap_or(0.0);
        }
        let digest = super::db::key("jitter", &c.toml);
        let u = u32::from_str_radix(&digest[..8], 16).unwrap_or(0) as f64 / u32::MAX as f64 * 2.0 - 1.0;
        1e9 / (ns * (1.0 + s.jitter * u))
    }
}

impl SyntheticMeasurer {
    /// The runs of one measurement of `c`: its value, spread evenly by
    /// [`Synthetic::spread`] (their median is the value).
    fn runs(&self, c: &Candidate) -> Vec<f64> {
        let (v, n) = (self.value(c), self.space.runs);
        let k = |r: usize| if n < 2 { 0.0 } else { 2.0 * r as f64 / (n - 1) as f64 - 1.0 };
        (0..n).map(|r| v * (1.0 + self.synthetic.spread * k(r))).collect()
    }
}

impl Measurer for SyntheticMeasurer {
    fn calls(&mut self, _baseline: &Candidate) -> Result<Calls, String> {
        Ok(self.synthetic.calls.iter().map(|(a, b, n)| (a.clone(), b.clone(), n * SYNTHETIC_OPS)).collect())
    }

    fn measure(&mut self, batch: &[&Candidate], _note: &mut dyn FnMut(&str)) -> Vec<Outcome> {
        batch
            .iter()
            .map(|c| Outcome { metrics: BTreeMap::from([("ops/s".to_string(), self.runs(c))]), error: None })
            .collect()
    }
}

/// Builds images and measures them with the workload's real client.
pub struct ImageMeasurer {
    space: Space,
    root: PathBuf,
}

impl ImageMeasurer {
    /// Writes `c`'s configuration file (named by its content) and returns its layout.
    fn layout(&self, c: &Candidate) -> Result<flexos_config::Layout, String> {
        let dir = self.root.join("target/flexos/explore/configs");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let file = dir.join(format!("{}.toml", &super::db::key("config", &c.toml)[..16]));
        if std::fs::read_to_string(&file).ok().as_deref() != Some(c.toml.as_str()) {
            std::fs::write(&file, &c.toml).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        flexos_config::load(&file)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    /// Builds `c`'s image.
    fn build(&self, c: &Candidate, gate_stats: bool) -> Result<PathBuf, String> {
        build_image(&self.root, &self.layout(c)?, &options(gate_stats))
    }

    /// Removes `c`'s build folder (the image stays): explorations build many
    /// configurations once, and each folder takes hundreds of megabytes.
    fn tidy(&self, c: &Candidate, gate_stats: bool) {
        if let Ok(layout) = self.layout(c) {
            crate::build::drop_build_folder(&self.root, &layout, &options(gate_stats));
        }
    }

    /// One run of the workload on `image`: metric → value.
    fn run_once(&self, image: &Path, extra: &[String]) -> Result<Vec<(String, f64)>, String> {
        match &self.space.workload {
            Workload::RedisBenchmark { requests } => {
                let server = crate::netbench::Server::image(image, extra, &[])?;
                let results = crate::netbench::redis_benchmark(&server, *requests)?;
                Ok(results.into_iter().map(|(test, rps)| (format!("{test} requests/s"), rps)).collect())
            }
            Workload::SqliteInsert { rows } => {
                let mut args = extra.to_vec();
                args.extend(["--rows".to_string(), rows.to_string()]);
                let r = crate::bench::run_workload(image, &args, *rows)?;
                Ok(vec![("seconds".into(), r.elapsed_s)])
            }
            Workload::Synthetic(_) => unreachable!("synthetic spaces use SyntheticMeasurer"),
        }
    }
}

impl Measurer for ImageMeasurer {
    fn calls(&mut self, baseline: &Candidate) -> Result<Calls, String> {
        let image = self.build(baseline, true)?;
        let lines: Vec<String> = match &self.space.workload {
            Workload::RedisBenchmark { requests } => {
                let server = crate::netbench::Server::image(&image, &["--flexos-gate-stats".into()], &[])?;
                crate::netbench::redis_benchmark(&server, *requests)?;
                // The image prints its counters when the last client leaves.
                let ends = || {
                    server
                        .output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|l| *l == "gate-stats: end")
                        .count()
                };
                let mut seen = ends();
                for _ in 0..20 {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    let now = ends();
                    if now == seen && now > 0 {
                        break;
                    }
                    seen = now;
                }
                let out = server.output.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let end =
                    out.iter().rposition(|l| l == "gate-stats: end").ok_or("the image printed no gate counters")?;
                let start = out[..end].iter().rposition(|l| l.starts_with("gate-stats: layout")).unwrap_or(0);
                out[start..end].to_vec()
            }
            Workload::SqliteInsert { rows } => {
                let out = std::process::Command::new(&image)
                    .args(["--flexos-gate-stats", "--rows", &rows.to_string()])
                    .output()
                    .map_err(|e| format!("{}: {e}", image.display()))?;
                String::from_utf8_lossy(&out.stderr).lines().map(str::to_owned).collect()
            }
            Workload::Synthetic(_) => unreachable!("synthetic spaces use SyntheticMeasurer"),
        };
        self.tidy(baseline, true);
        let calls = parse_calls(&lines);
        if calls.is_empty() {
            return Err(format!("{}: no gate calls counted:\n{}", image.display(), lines.join("\n")));
        }
        Ok(calls)
    }

    fn measure(&mut self, batch: &[&Candidate], note: &mut dyn FnMut(&str)) -> Vec<Outcome> {
        // Build everything first: never build and measure at the same time.
        let images: Vec<Result<PathBuf, String>> = batch
            .iter()
            .map(|c| {
                note(&format!("building {}", c.id));
                self.build(c, false)
            })
            .collect();
        let mut outcomes: Vec<Outcome> =
            images.iter().map(|i| Outcome { metrics: BTreeMap::new(), error: i.as_ref().err().cloned() }).collect();
        for run in 0..self.space.runs {
            for (i, (c, image)) in batch.iter().zip(&images).enumerate() {
                let Ok(image) = image else { continue };
                if outcomes[i].error.is_some() {
                    continue;
                }
                note(&format!("measuring {} (run {} of {})", c.id, run + 1, self.space.runs));
                match self.run_once(image, &[]) {
                    Ok(values) => {
                        for (metric, v) in values {
                            outcomes[i].metrics.entry(metric).or_default().push(v);
                        }
                    }
                    Err(e) => {
                        outcomes[i].metrics.clear();
                        outcomes[i].error = Some(e);
                    }
                }
            }
        }
        for c in batch {
            self.tidy(c, false);
        }
        outcomes
    }
}

fn options(gate_stats: bool) -> BuildOptions {
    BuildOptions { release: true, gate_stats, progress: false, static_link: false }
}

/// Parses `gate-calls: A -> B: N` lines.
pub fn parse_calls(lines: &[String]) -> Calls {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("gate-calls: ")?;
            let (pair, n) = rest.rsplit_once(": ")?;
            let (a, b) = pair.split_once(" -> ")?;
            Some((a.to_string(), b.to_string(), n.parse().ok()?))
        })
        .collect()
}
