//! `flexos bench sqlite`: the FlexOS SQLite workload on images and on the
//! Linux baseline, side by side in one run, in alternation.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run of the workload printed.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadResult {
    /// `rows: N`.
    pub rows: u64,
    /// `integrity_check: ...`.
    pub integrity: String,
    /// `elapsed_s: S` (the INSERTs only).
    pub elapsed_s: f64,
}

/// Parses the workload's output; `None` if a line is missing or malformed.
pub fn parse_workload(output: &str) -> Option<WorkloadResult> {
    let field = |key: &str| output.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
    Some(WorkloadResult {
        rows: field("rows:")?.parse().ok()?,
        integrity: field("integrity_check:")?.to_string(),
        elapsed_s: field("elapsed_s:")?.parse().ok()?,
    })
}

/// Runs `program args` once and checks the workload's results.
pub fn run_workload(program: &Path, args: &[String], expect_rows: u64) -> Result<WorkloadResult, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{}: {e}", program.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}{}",
            program.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let r = parse_workload(&stdout).ok_or_else(|| format!("{}: unexpected output: {stdout}", program.display()))?;
    if r.rows != expect_rows || r.integrity != "ok" {
        return Err(format!("{}: wrong results: {r:?}", program.display()));
    }
    Ok(r)
}

/// Median, minimum and maximum of a series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// Summarizes a non-empty series.
pub fn summarize(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Summary { median, min: v[0], max: v[n - 1] }
}

/// One measured subject of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// A configuration path or "linux".
    pub name: String,
    /// Seconds for the INSERTs, one per run.
    pub seconds: Vec<f64>,
    /// Summary of `seconds`.
    pub summary: Summary,
    /// This subject's median divided by the Linux baseline's median (below 1 is faster).
    pub time_vs_linux: f64,
}

/// The whole result, as written to JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The benchmark.
    pub benchmark: String,
    /// Rows inserted per run.
    pub rows: u64,
    /// Runs per subject.
    pub runs: usize,
    /// Every subject, the baseline last.
    pub results: Vec<Row>,
    /// Where the measurements were taken.
    pub machine: String,
}

/// A subject to measure: its name and how to run it.
pub struct Subject {
    /// Shown in the table.
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Runs every subject `runs` times, in alternation (run 1 of each, then run 2 of each, ...).
/// The last subject is the baseline that ratios are computed against.
pub fn measure(
    subjects: &[Subject],
    runs: usize,
    rows: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report, String> {
    let mut seconds = vec![Vec::new(); subjects.len()];
    for run in 0..runs {
        for (i, s) in subjects.iter().enumerate() {
            progress(run * subjects.len() + i, runs * subjects.len());
            seconds[i].push(run_workload(&s.program, &s.args, rows)?.elapsed_s);
        }
    }
    let baseline = summarize(seconds.last().ok_or("nothing to measure")?).median;
    let results = subjects
        .iter()
        .zip(seconds)
        .map(|(s, secs)| {
            let summary = summarize(&secs);
            Row { name: s.name.clone(), seconds: secs, time_vs_linux: summary.median / baseline, summary }
        })
        .collect();
    Ok(Report { benchmark: "sqlite-insert".into(), rows, runs, results, machine: machine_description() })
}

/// The table printed by `flexos bench sqlite`.
pub fn table(report: &Report) -> String {
    let width = report.results.iter().map(|r| r.name.len()).max().unwrap_or(10).max(10);
    let mut out = format!(
        "SQLite: {} INSERTs, no transaction, {} runs each, alternating (seconds)\n{:width$}  {:>9}  {:>9}  {:>9}  {:>8}  {:>9}\n",
        report.rows, report.runs, "subject", "median", "min", "max", "vs linux", "speedup"
    );
    for r in &report.results {
        out += &format!(
            "{:width$}  {:>9.4}  {:>9.4}  {:>9.4}  {:>7.2}x  {:>8.2}x\n",
            r.name,
            r.summary.median,
            r.summary.min,
            r.summary.max,
            r.time_vs_linux,
            1.0 / r.time_vs_linux
        );
    }
    out
}

/// The CPU model and core count of this machine.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_workload_output() {
        let r = parse_workload("rows: 5000\nintegrity_check: ok\nelapsed_s: 0.012345\n").unwrap();
        assert_eq!(r, WorkloadResult { rows: 5000, integrity: "ok".into(), elapsed_s: 0.012345 });
        assert_eq!(parse_workload("rows: 5000\nintegrity_check: ok\n"), None);
        assert_eq!(parse_workload("rows: x\nintegrity_check: ok\nelapsed_s: 1\n"), None);
    }

    #[test]
    fn summaries() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), Summary { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
