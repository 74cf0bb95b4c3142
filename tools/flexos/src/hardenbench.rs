//! `flexos bench hardening`: what each hardening option costs each
//! component (docs/hardening.md, "Cost"). For an application, one image
//! per (component, option) that applies, with everything in one `fcall`
//! compartment and only that component hardened with only that option, is
//! measured in alternation with the image without hardening, in the same
//! run; the result is each variant's time per operation relative to it.
//! `flexos explore` reads the table (explore.md, "Hardening costs").

use flexos_config::{COMPONENTS, Hardening, Mechanism};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One measured variant.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    /// The hardened component.
    pub component: String,
    /// The option (its configuration name).
    pub option: String,
    /// The variant's median of the workload's metric.
    pub median: f64,
    /// Time per operation relative to the image without hardening (above 1 is slower).
    pub time_ratio: f64,
}

/// The table of one application.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Table {
    /// The application.
    pub app: String,
    /// The metric the medians are in (seconds of the workload, or requests/s).
    pub metric: String,
    /// The median of the image without hardening.
    pub unhardened: f64,
    /// Runs per subject.
    pub runs: usize,
    /// The machine.
    pub machine: String,
    /// Every variant.
    pub costs: Vec<Cost>,
}

impl Table {
    /// The time ratio of `option` on `component`, if measured.
    pub fn ratio(&self, component: &str, option: Hardening) -> Option<f64> {
        self.costs.iter().find(|c| c.component == component && c.option == option.name()).map(|c| c.time_ratio)
    }
}

/// Reads a table written by [`write`].
pub fn load(path: &Path) -> Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every (component, option) of `app`'s image that applies in an `fcall`
/// compartment, restricted to `components` and `options` when not empty.
///
/// Ordered by option, so that the images of one option are built one after
/// the other, each from the last (an option that changes every crate, such
/// as `cfi`'s `panic=abort`, then rebuilds everything only once).
pub fn variants(app: &str, components: &[String], options: &[String]) -> Vec<(&'static str, Hardening)> {
    let mut out = Vec::new();
    for (h, name, _) in Hardening::ALL {
        if !options.is_empty() && !options.iter().any(|o| o == name) {
            continue;
        }
        for c in COMPONENTS.iter().filter(|c| c.in_app(app)) {
            if (components.is_empty() || components.iter().any(|n| n == c.name))
                && h.applies_to(c)
                && h.refusal_in(Mechanism::Fcall).is_none()
            {
                out.push((c.name, h));
            }
        }
    }
    out
}

/// Writes the configuration of one variant (`None`: no hardening) into `dir`.
pub fn write_config(
    dir: &Path,
    app: &str,
    files: Option<&Path>,
    variant: Option<(&str, Hardening)>,
) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut text = format!(
        "# Written by `flexos bench hardening`.\napp = \"{app}\"\n{}\n[[compartment]]\nname = \"main\"\nmechanism = \"fcall\"\ndefault = true\n",
        files.map_or(String::new(), |f| format!("files = {:?}\n", f.display().to_string()))
    );
    let name = match variant {
        Some((component, option)) => {
            text.push_str(&format!("\n[component.{component}]\nharden = [\"{}\"]\n", option.name()));
            format!("{app}-{component}-{}.toml", option.name())
        }
        None => format!("{app}-unhardened.toml"),
    };
    let path = dir.join(name);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Instructions the SQLite image `image` executes for the workload of
/// `rows` INSERTs, counted by valgrind's callgrind (deterministic to a few
/// instructions between runs, unlike times on a shared machine).
pub fn count_instructions(image: &Path, rows: u64) -> Result<f64, String> {
    let out = std::process::Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(image)
        .args(["--rows", &rows.to_string()])
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    let workload = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !workload.contains(&format!("rows: {rows}")) {
        return Err(format!("{} under callgrind failed:\n{text}", image.display()));
    }
    parse_collected(&text).ok_or_else(|| format!("no instruction count in callgrind's output:\n{text}"))
}

/// The count of callgrind's `==PID== Collected : N` line.
fn parse_collected(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.split_once("Collected :").and_then(|(_, n)| n.trim().parse().ok()))
}

/// Builds the table from the measured medians: `unhardened` and one per
/// variant. `higher_is_better` for throughputs (the ratio is then inverted).
pub fn table(
    app: &str,
    metric: &str,
    runs: usize,
    unhardened: f64,
    measured: &[((&str, Hardening), f64)],
    higher_is_better: bool,
) -> Table {
    let costs = measured
        .iter()
        .map(|((component, option), median)| Cost {
            component: component.to_string(),
            option: option.name().to_string(),
            median: *median,
            time_ratio: if higher_is_better { unhardened / median } else { median / unhardened },
        })
        .collect();
    Table {
        app: app.into(),
        metric: metric.into(),
        unhardened,
        runs,
        machine: crate::bench::machine_description(),
        costs,
    }
}

/// The table as markdown: one row per component, one column per option
/// (time ratios; `–` where the option does not apply).
pub fn markdown(t: &Table) -> String {
    let options: Vec<&str> = Hardening::ALL.iter().map(|(_, n, _)| *n).collect();
    let mut components: Vec<&str> = Vec::new();
    for c in &t.costs {
        if !components.contains(&c.component.as_str()) {
            components.push(&c.component);
        }
    }
    let mut out = format!("| {} ({}) | {} |\n", t.app, t.metric, options.join(" | "));
    out.push_str(&format!("|---|{}\n", "---|".repeat(options.len())));
    for comp in components {
        let cells: Vec<String> = options
            .iter()
            .map(|o| {
                t.costs
                    .iter()
                    .find(|c| c.component == comp && c.option == *o)
                    .map_or("–".into(), |c| format!("{:.3}", c.time_ratio))
            })
            .collect();
        out.push_str(&format!("| {comp} | {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_that_applies_is_a_variant() {
        let v = variants("sqlite", &[], &[]);
        // kasan only where unsafe code is: libc and SQLite, never vfs.
        assert!(v.contains(&("libc", Hardening::Kasan)));
        assert!(v.contains(&("sqlite", Hardening::Kasan)));
        assert!(!v.contains(&("vfs", Hardening::Kasan)));
        assert!(v.contains(&("vfs", Hardening::Cfi)));
        assert!(!v.contains(&("sqlite", Hardening::OverflowChecks)));
        assert!(v.iter().all(|(c, _)| *c != "net"), "no network component in the SQLite image");
        let only = variants("kv", &["net".into()], &["cfi".into()]);
        assert_eq!(only, vec![("net", Hardening::Cfi)]);
    }

    #[test]
    fn reads_callgrinds_count() {
        assert_eq!(parse_collected("==6290== Events    : Ir\n==6290== Collected : 396583881\n"), Some(396583881.0));
        assert_eq!(parse_collected("nothing"), None);
    }

    #[test]
    fn ratios_are_time_per_operation() {
        let t = table("kv", "GET requests/s", 3, 100.0, &[(("net", Hardening::Cfi), 80.0)], true);
        assert!((t.costs[0].time_ratio - 1.25).abs() < 1e-9);
        let t = table("sqlite", "seconds", 3, 2.0, &[(("libc", Hardening::Kasan), 3.0)], false);
        assert!((t.costs[0].time_ratio - 1.5).abs() < 1e-9);
        assert_eq!(t.ratio("libc", Hardening::Kasan), Some(1.5));
        assert!(markdown(&t).contains("| libc | – | – | – | – | 1.500 | – |"), "{}", markdown(&t));
    }
}
