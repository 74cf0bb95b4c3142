//! Exploring on many machines (docs/explore.md, "Beyond one machine"):
//! `plan` writes the jobs (every configuration of the space, as an
//! exhaustive exploration measures them), `worker` measures shard I of N
//! into a database of its own, `merge` combines the databases and reports
//! exactly as a one-process `--exhaustive` exploration would.

use super::enumerate::enumerate;
use super::search::{Measurer, Settings, Store};
use super::space::Space;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The plan file (`plan.json`).
#[derive(Serialize, Deserialize)]
pub struct Plan {
    /// The space file (absolute: workers read it, so it must be on a shared file system).
    pub space: PathBuf,
    /// The space's text when planned (a worker refuses a space that changed).
    pub space_text: String,
    /// The jobs: job 0 counts the gate calls of the one-compartment image, job k > 0 measures configuration k-1.
    pub jobs: Vec<Job>,
}

/// One job of a plan.
#[derive(Serialize, Deserialize)]
pub struct Job {
    /// The configuration id (`calls` for job 0).
    pub id: String,
    /// Its configuration.
    pub config: String,
}

/// A shard: this worker's index and the number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index.
    pub index: usize,
    /// How many.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (i, n) = text.split_once('/').ok_or_else(|| format!("shard {text:?}: write I/N, e.g. 0/4"))?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| format!("shard {text:?}: bad index"))?,
            n.trim().parse().map_err(|_| format!("shard {text:?}: bad count"))?,
        );
        if count == 0 || index >= count {
            return Err(format!("shard {text:?}: the index must be below the count"));
        }
        Ok(Shard { index, count })
    }

    /// The shard of a cluster job: Slurm's `SLURM_ARRAY_TASK_ID` (of
    /// `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job's
    /// `JOB_COMPLETION_INDEX` (of `FLEXOS_SHARDS`, set in the job's spec).
    pub fn from_environment() -> Option<Result<Shard, String>> {
        let var = |n: &str| std::env::var(n).ok();
        let (i, n) = match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
            (Some(i), Some(n)) => (i, n),
            _ => (var("JOB_COMPLETION_INDEX")?, var("FLEXOS_SHARDS").unwrap_or_else(|| "?".into())),
        };
        Some(Shard::parse(&format!("{i}/{n}")))
    }
}

/// Writes `dir/plan.json` for `space`; returns how many jobs.
pub fn plan(space: &Space, dir: &Path) -> Result<usize, String> {
    let e = enumerate(space, super::pku());
    let mut jobs = vec![Job { id: "calls".into(), config: String::new() }];
    jobs.extend(
        e.candidates
            .iter()
            .filter(|c| c.unrunnable.is_none())
            .map(|c| Job { id: c.id.clone(), config: c.toml.clone() }),
    );
    let space_file = std::fs::canonicalize(&space.source).map_err(|e| format!("{}: {e}", space.source.display()))?;
    let plan = Plan { space: space_file, space_text: space.text.clone(), jobs };
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let file = dir.join("plan.json");
    std::fs::write(&file, serde_json::to_string_pretty(&plan).expect("plan serializes"))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(plan.jobs.len())
}

/// Reads `dir/plan.json` and its space (checking the space did not change).
pub fn load_plan(dir: &Path) -> Result<(Plan, Space), String> {
    let file = dir.join("plan.json");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e} (run `flexos explore plan` first)", file.display()))?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let space = super::space::parse(&plan.space, &plan.space_text)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    // A worker may not see the space file (the plan carries its text); if it does, it must be the same.
    if let Ok(now) = std::fs::read_to_string(&plan.space)
        && now != plan.space_text
    {
        return Err(format!("{} changed since the plan was written: plan again", plan.space.display()));
    }
    Ok((plan, space))
}

/// The database of shard `index`.
pub fn shard_db(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("results-{index}.db"))
}

/// Runs shard `shard` of the plan in `dir`: its jobs are those whose number
/// is congruent to its index; results go to `dir/results-I.db`.
pub fn worker(dir: &Path, shard: Shard, root: &Path, note: &mut dyn FnMut(&str)) -> Result<usize, String> {
    let (plan, space) = load_plan(dir)?;
    let e = enumerate(&space, super::pku());
    let mut db = super::db::Db::open(&shard_db(dir, shard.index), &space)?;
    let mut measurer: Box<dyn Measurer> = super::measure::for_space(&space, root);
    let mut mine = Vec::new();
    for (k, job) in plan.jobs.iter().enumerate().filter(|(k, _)| k % shard.count == shard.index) {
        if k == 0 {
            let baseline = e.baseline().ok_or("the space has no one-compartment configuration")?;
            if db.calls(baseline).is_none() {
                note("counting gate calls");
                let calls = measurer.calls(baseline)?;
                db.keep_calls(baseline, &calls)?;
            }
            continue;
        }
        let c = e
            .candidates
            .iter()
            .find(|c| c.id == job.id && c.toml == job.config)
            .ok_or_else(|| format!("job {} of the plan is not in the space any more: plan again", job.id))?;
        if db.outcome(c).is_none() {
            mine.push(c);
        }
    }
    let batch = Settings::default().batch;
    let mut done = 0;
    for chunk in mine.chunks(batch) {
        for (c, o) in chunk.iter().zip(measurer.measure(chunk, note)) {
            db.keep(c, &o)?;
            done += 1;
        }
    }
    Ok(done)
}

/// Merges every `dir/results-*.db` into `dir/results.db`; returns the
/// merged database's path and how many rows were added.
pub fn merge(dir: &Path) -> Result<(PathBuf, Space, usize), String> {
    let (_, space) = load_plan(dir)?;
    let target = dir.join("results.db");
    let mut db = super::db::Db::open(&target, &space)?;
    let mut added = 0;
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("results-") && n.to_string_lossy().ends_with(".db"))
        })
        .collect();
    parts.sort();
    if parts.is_empty() {
        return Err(format!("{}: no results-I.db from workers", dir.display()));
    }
    for p in parts {
        added += db.merge_from(&p)?;
    }
    Ok((target, space, added))
}
