//! `flexos explore`: finds the safest configurations of a space that meet
//! a performance budget (DESIGN section 7, docs/explore.md).
//!
//! [`space`] reads the space file, [`enumerate`] lists its configurations,
//! [`order`] orders them by safety, [`model`] predicts their cost,
//! [`search`] decides what to measure, [`measure`] builds and measures,
//! [`db`] keeps the results, [`report`] writes table, JSON and SVG,
//! [`dist`] splits the work for a cluster.

pub mod db;
pub mod dist;
pub mod enumerate;
pub mod measure;
pub mod model;
pub mod order;
pub mod report;
pub mod search;
pub mod space;

use indicatif::{ProgressBar, ProgressStyle};
use search::{Exploration, Progress};
use space::Space;
use std::path::{Path, PathBuf};

/// Whether this machine gives protection keys (mpk configurations run).
pub fn pku() -> bool {
    flexos_platform::pkey::available().is_ok()
}

/// Where the results database is by default (shared by every exploration).
pub fn default_db(root: &Path) -> PathBuf {
    root.join("target/flexos/explore/results.db")
}

/// A progress bar for a search: measured so far of those planned, with an
/// estimate of the time left, and what is being built or measured.
pub fn progress_bar(quiet: bool) -> (ProgressBar, impl FnMut(Progress)) {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(1) };
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} measured (~{eta} left) {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let b = bar.clone();
    let update = move |p: Progress| match p {
        Progress::Counting => b.set_message("counting gate calls of the one-compartment image"),
        Progress::Planned { total } => b.set_length(total as u64),
        Progress::Batch { ids } => b.set_message(format!("batch {}", ids.join(" "))),
        Progress::Note(what) => b.set_message(what),
        Progress::Done { measured } => {
            if b.length().unwrap_or(0) < measured as u64 {
                b.set_length(measured as u64);
            }
            b.set_position(measured as u64)
        }
    };
    (bar, update)
}

/// What to write besides the table.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// The JSON report.
    pub json: Option<PathBuf>,
    /// The SVG picture.
    pub svg: Option<PathBuf>,
    /// A folder for every configuration as a configuration file (`ID.toml`).
    pub configs: Option<PathBuf>,
}

/// Writes the outputs of an exploration; returns the lines to print about them.
pub fn write_outputs(space: &Space, x: &Exploration, outputs: &Outputs) -> Result<Vec<String>, String> {
    let mut said = Vec::new();
    let write = |path: &Path, text: &str| -> Result<(), String> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(p) = &outputs.json {
        write(p, &serde_json::to_string_pretty(&report::json(space, x)).expect("report serializes"))?;
        said.push(format!("json: {}", p.display()));
    }
    if let Some(p) = &outputs.svg {
        write(p, &report::svg(space, x))?;
        said.push(format!("svg: {}", p.display()));
    }
    if let Some(dir) = &outputs.configs {
        for c in &x.enumeration.candidates {
            write(&dir.join(format!("{}.toml", c.id)), &c.toml)?;
        }
        said.push(format!("configurations: {} ({} files)", dir.display(), x.enumeration.candidates.len()));
    }
    Ok(said)
}
