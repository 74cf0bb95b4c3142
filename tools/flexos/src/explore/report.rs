//! Reports of an exploration: a table, JSON and an SVG picture (the poset
//! as a Hasse diagram coloured by performance, and a chart of every
//! measured configuration with its configuration matrix).

use super::search::Exploration;
use super::space::{Budget, Goal, Space};
use serde::Serialize;
use std::fmt::Write as _;

/// One configuration in the JSON report.
#[derive(Serialize)]
pub struct ConfigReport {
    /// `c000`, ...
    pub id: String,
    /// A short description.
    pub label: String,
    /// The configuration file's text.
    pub config: String,
    /// The final model's prediction of the metric.
    pub predicted: f64,
    /// The prediction made before it was measured (null for calibration and unmeasured ones).
    pub predicted_before_measuring: Option<f64>,
    /// The measured median (null if not measured).
    pub measured: Option<f64>,
    /// Every measured run.
    pub runs: Vec<f64>,
    /// Whether it meets the budget (measured, else predicted).
    pub meets_budget: bool,
    /// The ids directly above it in the safety order.
    pub above: Vec<String>,
    /// Why it was not measured or failed, if so.
    pub note: Option<String>,
}

/// The JSON report.
#[derive(Serialize)]
pub struct JsonReport {
    /// The space file.
    pub space: String,
    /// The budget, as text.
    pub budget: String,
    /// Distinct valid configurations.
    pub total: usize,
    /// Configurations before symmetric duplicates were removed.
    pub labeled: usize,
    /// Symmetric duplicates removed.
    pub duplicates: usize,
    /// Invalid candidates, with the checker's reason.
    pub invalid: Vec<(String, usize)>,
    /// Configurations this machine cannot run.
    pub unrunnable: usize,
    /// Configurations measured (or taken from the results database).
    pub measured: usize,
    /// Of those, taken from the database.
    pub reused: usize,
    /// The calibration configurations.
    pub calibration: Vec<String>,
    /// The maximal configurations that meet the budget.
    pub maximal: Vec<String>,
    /// Hasse edges, as [lower, upper].
    pub edges: Vec<[String; 2]>,
    /// Edges along which measured performance went up, as [lower, upper].
    pub non_monotone_edges: Vec<[String; 2]>,
    /// Mean absolute percentage error of the predictions made before measuring.
    pub model_mape: Option<f64>,
    /// The model's coefficients (cost per unit of each feature).
    pub model: std::collections::BTreeMap<String, f64>,
    /// Every configuration.
    pub configurations: Vec<ConfigReport>,
}

fn ids(x: &Exploration, list: &[usize]) -> Vec<String> {
    list.iter().map(|&i| x.enumeration.candidates[i].id.clone()).collect()
}

/// Builds the JSON report.
pub fn json(space: &Space, x: &Exploration) -> JsonReport {
    let c = &x.enumeration.candidates;
    let pair = |&(a, b): &(usize, usize)| [c[a].id.clone(), c[b].id.clone()];
    let configurations = (0..c.len())
        .map(|i| ConfigReport {
            id: c[i].id.clone(),
            label: c[i].label(space),
            config: c[i].toml.clone(),
            predicted: x.predicted[i],
            predicted_before_measuring: x.predicted_before[i],
            measured: x.value(i),
            runs: x.outcomes[i].as_ref().and_then(|o| o.metrics.get(&x.budget.metric).cloned()).unwrap_or_default(),
            meets_budget: x.meets(i),
            above: x.edges.iter().filter(|e| e.0 == i).map(|e| c[e.1].id.clone()).collect(),
            note: if let Some(e) = x.outcomes[i].as_ref().and_then(|o| o.error.clone()) {
                Some(e)
            } else if let Some(u) = &c[i].unrunnable {
                Some(u.clone())
            } else if x.inferred.contains(&i) {
                Some("taken to fail: safer than a measured configuration that failed beyond its noise".into())
            } else {
                None
            },
        })
        .collect();
    JsonReport {
        space: space.source.display().to_string(),
        budget: budget_text(&x.budget),
        total: c.len(),
        labeled: x.enumeration.labeled,
        duplicates: x.enumeration.duplicates,
        invalid: x.enumeration.invalid.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        unrunnable: x.enumeration.unrunnable(),
        measured: x.measured.len(),
        reused: x.reused,
        calibration: ids(x, &x.calibration),
        maximal: ids(x, &x.maximal),
        edges: x.edges.iter().map(pair).collect(),
        non_monotone_edges: x.non_monotone.iter().map(pair).collect(),
        model_mape: x.model_mape,
        model: x.model.coefficients.clone(),
        configurations,
    }
}

fn budget_text(b: &Budget) -> String {
    let bound = match b.relative {
        Some(r) => format!("{}% of the baseline ({})", (r * 1e8).round() / 1e6, number(b.bound)),
        None => number(b.bound),
    };
    format!("{} {} {bound}", b.metric, if b.goal == Goal::AtLeast { ">=" } else { "<=" })
}

fn number(v: f64) -> String {
    if v.abs() >= 1000.0 { format!("{v:.0}") } else { format!("{v:.4}") }
}

/// The table printed at the end: the maximal configurations, then those just
/// outside the budget (directly above a maximal one), then the counts.
pub fn table(space: &Space, x: &Exploration) -> String {
    let c = &x.enumeration.candidates;
    let mut s = format!(
        "{}: {} configurations ({} before removing {} symmetric duplicates; {} invalid; {} not runnable here)\n",
        space.source.display(),
        c.len(),
        x.enumeration.labeled,
        x.enumeration.duplicates,
        x.enumeration.invalid.values().sum::<usize>(),
        x.enumeration.unrunnable()
    );
    for (why, n) in &x.enumeration.invalid {
        let _ = writeln!(s, "  invalid ({n}): {why}");
    }
    let _ = writeln!(
        s,
        "budget: {}; measured {} of {} ({} from the results database); model error {}; {} Hasse edges, {} non-monotone",
        budget_text(&x.budget),
        x.measured.len(),
        c.len(),
        x.reused,
        x.model_mape.map_or("n/a".into(), |m| format!("{:.1}%", m * 100.0)),
        x.edges.len(),
        x.non_monotone.len()
    );
    let row = |s: &mut String, i: usize| {
        let _ = writeln!(
            s,
            "  {}  {:>12}  {:>12}  {}",
            c[i].id,
            x.value(i).map_or("-".into(), number),
            number(x.predicted[i]),
            c[i].label(space)
        );
    };
    let _ = writeln!(s, "\nthe safest configurations that meet the budget ({}):", x.maximal.len());
    let _ = writeln!(s, "  {:4}  {:>12}  {:>12}  configuration", "id", "measured", "predicted");
    for &i in &x.maximal {
        row(&mut s, i);
    }
    let mut outside: Vec<usize> =
        x.edges.iter().filter(|e| x.maximal.contains(&e.0) && !x.meets(e.1)).map(|e| e.1).collect();
    outside.sort();
    outside.dedup();
    if !outside.is_empty() {
        let _ = writeln!(s, "\njust outside the budget (directly above one of those):");
        for i in outside {
            row(&mut s, i);
        }
    }
    if !x.non_monotone.is_empty() {
        let _ = writeln!(s, "\nperformance went up along these safety edges (lower -> upper):");
        for &(lo, up) in &x.non_monotone {
            let v = |i| x.value(i).map_or("-".into(), number);
            let _ = writeln!(s, "  {} ({}) -> {} ({})", c[lo].id, v(lo), c[up].id, v(up));
        }
    }
    let unrunnable_passing: Vec<&str> =
        (0..c.len()).filter(|&i| c[i].unrunnable.is_some() && x.meets(i)).map(|i| c[i].id.as_str()).collect();
    if !unrunnable_passing.is_empty() {
        let _ = writeln!(
            s,
            "\npredicted to meet the budget but not runnable here (measure them where they run): {}",
            unrunnable_passing.join(" ")
        );
    }
    s
}

/// A colour from red (worst) to green (best) for `t` in [0, 1].
fn colour(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let (r, g) = if t < 0.5 { (230.0, 60.0 + 340.0 * t) } else { (230.0 - 360.0 * (t - 0.5), 230.0) };
    format!("rgb({:.0},{:.0},70)", r, g)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG picture: the Hasse diagram (bottom: least safe), nodes coloured
/// by performance (measured: filled; predicted only: hatched outline),
/// the budget on the colour scale, maximal ones ringed; below it, every
/// measured configuration as a bar, sorted by performance, with the
/// budget as a line and the configuration matrix under the bars.
pub fn svg(space: &Space, x: &Exploration) -> String {
    let c = &x.enumeration.candidates;
    let n = c.len();
    let value = |i: usize| x.value(i).unwrap_or(x.predicted[i]);
    let (lo, hi) = (0..n).map(value).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let lo = lo.min(x.budget.bound);
    let hi = hi.max(x.budget.bound);
    // Below the budget red to yellow, above it yellow to green.
    let b = x.budget.bound;
    let better = |v: f64| {
        let t = if v >= b { 0.5 + 0.5 * (v - b) / (hi - b).max(1e-300) } else { 0.5 * (v - lo) / (b - lo).max(1e-300) };
        if x.budget.goal == Goal::AtLeast { t } else { 1.0 - t }
    };
    // Rank: longest chain below each node.
    let mut rank = vec![0usize; n];
    let mut changed = true;
    while changed {
        changed = false;
        for &(l, u) in &x.edges {
            if rank[u] < rank[l] + 1 {
                rank[u] = rank[l] + 1;
                changed = true;
            }
        }
    }
    let levels = rank.iter().max().map_or(1, |m| m + 1);
    let mut by_level: Vec<Vec<usize>> = vec![vec![]; levels];
    for i in 0..n {
        by_level[rank[i]].push(i);
    }
    let widest = by_level.iter().map(Vec::len).max().unwrap_or(1);
    let (dx, dy, r) = (46.0, 70.0, 14.0);
    let width = (widest as f64 * dx + 120.0).max(900.0);
    let poset_h = levels as f64 * dy + 80.0;
    let pos = |i: usize| {
        let l = rank[i];
        let k = by_level[l].iter().position(|&j| j == i).unwrap() as f64;
        let row_w = by_level[l].len() as f64 * dx;
        ((width - row_w) / 2.0 + k * dx + dx / 2.0, poset_h - 40.0 - l as f64 * dy)
    };
    let measured: Vec<usize> = {
        let mut m: Vec<usize> = (0..n).filter(|&i| x.value(i).is_some()).collect();
        m.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
        if x.budget.goal == Goal::AtMost {
            m.reverse();
        }
        m
    };
    let bar_w = 24.0;
    let chart_h = 260.0;
    let rows: Vec<String> = space
        .movable
        .iter()
        .map(|g| format!("{} placement", g[0]))
        .chain(space.harden_groups.iter().map(|g| format!("{} hardened", g[0])))
        .collect();
    let matrix_h = rows.len() as f64 * 18.0 + 20.0;
    let chart_w = (measured.len() as f64 * bar_w + 260.0).max(width);
    let width = width.max(chart_w);
    let height = poset_h + 60.0 + chart_h + matrix_h + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <defs><pattern id=\"hatch\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\"><path d=\"M0,4 L4,0\" stroke=\"#888\"/></pattern></defs>\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">{} — safety order ({} configurations, {} edges; up = safer), budget {}</text>\n",
        escape(&space.source.display().to_string()),
        n,
        x.edges.len(),
        escape(&budget_text(&x.budget))
    );
    // Colour scale with the budget.
    for k in 0..50 {
        let t = k as f64 / 49.0;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"26\" width=\"4\" height=\"10\" fill=\"{}\"/>", 10 + k * 4, colour(t));
    }
    let bt = better(x.budget.bound);
    let _ = writeln!(
        s,
        "<line x1=\"{0:.1}\" y1=\"24\" x2=\"{0:.1}\" y2=\"38\" stroke=\"black\" stroke-width=\"2\"/><text x=\"215\" y=\"35\">worse … better (black mark: budget); filled = measured, hatched = predicted, ringed = maximal</text>",
        10.0 + bt * 196.0
    );
    for &(l, u) in &x.edges {
        let ((x1, y1), (x2, y2)) = (pos(l), pos(u));
        let bad = x.non_monotone.contains(&(l, u));
        let _ = writeln!(
            s,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{}\" stroke-width=\"{}\"/>",
            if bad { "#c00" } else { "#bbb" },
            if bad { 2 } else { 1 }
        );
    }
    for (i, cand) in c.iter().enumerate() {
        let (px, py) = pos(i);
        let fill = if x.value(i).is_some() { colour(better(value(i))) } else { "url(#hatch)".into() };
        let stroke = if x.value(i).is_some() { "#333".to_string() } else { colour(better(value(i))) };
        let _ = writeln!(
            s,
            "<g><title>{} {}: {} {}</title><circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"{r}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"2\"/>",
            cand.id,
            escape(&cand.label(space)),
            if x.value(i).is_some() { "measured" } else { "predicted" },
            number(value(i))
        );
        if x.maximal.contains(&i) {
            let _ = writeln!(
                s,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"{}\" fill=\"none\" stroke=\"black\" stroke-width=\"3\"/>",
                r + 4.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text></g>",
            py + 3.0,
            &c[i].id[1..]
        );
    }
    // The chart of measured configurations.
    let top = poset_h + 60.0;
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{:.0}\" font-size=\"14\">measured configurations, sorted by {} (line: budget)</text>",
        top - 20.0,
        escape(&x.budget.metric)
    );
    let vmax = measured.iter().map(|&i| value(i)).fold(x.budget.bound, f64::max) * 1.05;
    let left = 240.0;
    for (k, &i) in measured.iter().enumerate() {
        let h = value(i) / vmax * chart_h;
        let bx = left + k as f64 * bar_w;
        let _ = writeln!(
            s,
            "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {}</title></rect>",
            top + chart_h - h,
            bar_w - 4.0,
            colour(better(value(i))),
            c[i].id,
            number(value(i))
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"8\" text-anchor=\"middle\">{}</text>",
            bx + bar_w / 2.0 - 2.0,
            top + chart_h + 10.0,
            &c[i].id[1..]
        );
        for (row, _) in rows.iter().enumerate() {
            let cell = if row < space.movable.len() {
                match c[i].slot[row] {
                    0 => "·".to_string(),
                    s => format!("{}{}", s, &c[i].compartments[s - 1].name()[..1]),
                }
            } else if c[i].harden[row - space.movable.len()].is_empty() {
                "·".into()
            } else {
                "●".into()
            };
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bx + bar_w / 2.0 - 2.0,
                top + chart_h + 28.0 + row as f64 * 18.0,
                cell
            );
        }
    }
    let by = top + chart_h - x.budget.bound / vmax * chart_h;
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{by:.1}\" x2=\"{:.1}\" y2=\"{by:.1}\" stroke=\"black\" stroke-dasharray=\"4,3\"/>",
        left + measured.len() as f64 * bar_w
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">budget {}</text>",
        left - 6.0,
        by + 4.0,
        number(x.budget.bound)
    );
    for (row, name) in rows.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 6.0,
            top + chart_h + 28.0 + row as f64 * 18.0,
            escape(name)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"10\" y=\"{:.0}\">matrix: · = default compartment / not hardened; N + letter = own compartment N and its mechanism; ● = hardened</text>",
        height - 12.0
    );
    s.push_str("</svg>\n");
    s
}
