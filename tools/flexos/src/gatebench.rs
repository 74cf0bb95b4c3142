//! `flexos bench gates`: the round-trip cost of an empty call through each
//! kind of gate, beside the operating system's own boundaries, measured in
//! one run (DESIGN section 9; FlexOS fig. 11).
//!
//! Each row is timed with the fenced time-stamp counter: samples of `batch`
//! calls, cycles per call, the timer's own overhead (an empty sample)
//! subtracted; the minimum and the median over the samples are reported, as
//! cycles and as nanoseconds (the counter's rate is calibrated against the
//! monotonic clock).

use flexos_gate::layout::Component;
use flexos_platform::clock::{PingPong, cycles_per_second, min_median, sample_cycles, timer_overhead};
use serde::Serialize;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The identity of the benchmark's shared locals (the default compartment).
pub(crate) const CALLER: Component =
    Component { id: 29, name: "bench-caller", compartment: 0, hardening: &[], package: "" };

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct GateRow {
    /// What was measured.
    pub name: String,
    /// Minimum cycles per round trip, timer overhead subtracted.
    pub min_cycles: f64,
    /// Median cycles per round trip, timer overhead subtracted.
    pub median_cycles: f64,
    /// `min_cycles` in nanoseconds.
    pub min_ns: f64,
    /// `median_cycles` in nanoseconds.
    pub median_ns: f64,
}

/// The whole result.
#[derive(Clone, Debug, Serialize)]
pub struct GateReport {
    /// Time-stamp counter rate used for the conversion to ns.
    pub cycles_per_second: f64,
    /// The rows, in table order.
    pub rows: Vec<GateRow>,
    /// Mechanisms of the design that this build does not have yet.
    pub not_implemented: Vec<String>,
    /// Why the `mpk` rows are missing, when they are (no protection keys here).
    pub mpk_unavailable: Option<String>,
}

#[inline(never)]
fn empty(x: u64) -> u64 {
    black_box(x)
}

/// The name of the row of the ping-pong that a remote gate's image measures
/// in samples alternating with its own (followed by the gate's row name).
pub const PINGPONG_BESIDE: &str = "ping-pong beside the ";

/// A gate that needs an image to be measured: the probe image's empty call
/// into a compartment with another mechanism.
pub struct RemoteGate {
    /// The row's name.
    pub name: String,
    /// The probe image built for that mechanism.
    pub image: PathBuf,
}

/// Runs `image COMMAND BATCH` and returns its standard output.
fn run_image(image: &Path, command: &str, batch: u64) -> Result<String, String> {
    let out = Command::new(image)
        .args([command, &batch.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", image.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({}): {}", image.display(), out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The numbers after `prefix` on each line of `stdout` that starts with it.
fn lines_after(stdout: &str, prefix: &str) -> Result<Vec<Vec<f64>>, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|l| l.split(' ').map(str::parse::<f64>).collect::<Result<Vec<_>, _>>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("malformed {prefix:?} line in {stdout}"))
}

/// Runs `image COMMAND BATCH` and returns the numbers after `prefix` on each
/// line that starts with it (at least one).
fn image_lines(image: &Path, command: &str, batch: u64, prefix: &str) -> Result<Vec<Vec<f64>>, String> {
    let stdout = run_image(image, command, batch)?;
    let lines = lines_after(&stdout, prefix).map_err(|e| format!("{}: {e}", image.display()))?;
    if lines.is_empty() {
        return Err(format!("{} printed no {prefix:?} line: {stdout}", image.display()));
    }
    Ok(lines)
}

/// The minimum and the median of a row's samples, in cycles.
type MinMedian = (f64, f64);

/// Runs `image bench BATCH` and reads its `roundtrip_cycles: MIN MEDIAN`
/// line, and the `pingpong_cycles: MIN MEDIAN` line that a remote gate's
/// image prints beside it.
fn measure_image(image: &Path, batch: u64) -> Result<(MinMedian, Option<MinMedian>), String> {
    let pair = |v: &[f64], what: &str| match v {
        [min, median] => Ok((*min, *median)),
        _ => Err(format!("{}: malformed {what} line", image.display())),
    };
    let out = run_image(image, "bench", batch)?;
    let (gate, pingpong) = (lines_after(&out, "roundtrip_cycles: "), lines_after(&out, "pingpong_cycles: "));
    let gate = match gate.map_err(|e| format!("{}: {e}", image.display()))?.as_slice() {
        [v] => pair(v, "roundtrip_cycles")?,
        _ => return Err(format!("{}: expected one roundtrip_cycles line in {out}", image.display())),
    };
    let pingpong = match pingpong.map_err(|e| format!("{}: {e}", image.display()))?.as_slice() {
        [] => None,
        [v] => Some(pair(v, "pingpong_cycles")?),
        _ => return Err(format!("{}: more than one pingpong_cycles line", image.display())),
    };
    Ok((gate, pingpong))
}

/// Runs `image bench-local BATCH`: (locals, min, median) per `shared_local_cycles:` line.
fn measure_locals(image: &Path, batch: u64) -> Result<Vec<(usize, f64, f64)>, String> {
    image_lines(image, "bench-local", batch, "shared_local_cycles: ")?
        .into_iter()
        .map(|v| match v.as_slice() {
            [n, min, median] => Ok((*n as usize, *min, *median)),
            _ => Err(format!("{}: malformed shared_local_cycles line", image.display())),
        })
        .collect()
}

/// Runs every row; `scale` multiplies the iteration counts (1.0 for the
/// real benchmark). The remote gates' images also measure the
/// shared-memory ping-pong, their physical floor, in samples alternating
/// with the gate's (a row `ping-pong beside the GATE` each). `mpk` lists the probe
/// images of the `mpk` gates (named by sharing strategy); they are measured
/// only where the CPU has protection keys, and their shared locals too
/// (for `dss` and `heap`).
pub fn run(scale: f64, remote: &[RemoteGate], mpk: &[RemoteGate]) -> Result<GateReport, String> {
    let hz = cycles_per_second(100);
    let n = |x: f64| ((x * scale) as u64).max(1);
    let samples = 101;
    // The timer's own cost: the cheapest empty sample. It is subtracted from
    // every sample alike, so the minimum stays at or below the median.
    let timer = timer_overhead();
    let row = |name: &str, (min, median): (f64, f64)| GateRow {
        name: name.to_string(),
        min_cycles: min,
        median_cycles: median,
        min_ns: min * 1e9 / hz,
        median_ns: median * 1e9 / hz,
    };
    let rows = std::cell::RefCell::new(Vec::new());
    let add = |name: &str, batch: u64, op: &mut dyn FnMut(u64)| {
        rows.borrow_mut().push(row(name, min_median(sample_cycles(samples, batch, timer, op))));
    };

    add("function call", n(10_000.0), &mut |i| {
        black_box(empty(i));
    });
    add("fcall gate, same compartment", n(10_000.0), &mut |i| {
        black_box(flexos_gate::bench::same_compartment(i));
    });
    add("fcall gate, other compartment", n(10_000.0), &mut |i| {
        black_box(flexos_gate::bench::other_compartment(i));
    });
    add("linux syscall (getppid)", n(2_000.0), &mut |_| {
        black_box(std::os::unix::process::parent_id());
    });

    // Shared locals with the heap strategy (in this process, no keys):
    // allocated from the shared heap, freed at scope end.
    add("shared local (heap): 1", n(10_000.0), &mut |_| {
        flexos_gate::shared_local!(a: 64);
        black_box(&mut a);
    });
    add("shared locals (heap): 2", n(10_000.0), &mut |_| {
        flexos_gate::shared_local!(a: 64, b: 64);
        black_box((&mut a, &mut b));
    });
    add("shared locals (heap): 3", n(10_000.0), &mut |_| {
        flexos_gate::shared_local!(a: 64, b: 64, c: 64);
        black_box((&mut a, &mut b, &mut c));
    });

    // Two threads bouncing a counter through one shared cache line: the floor
    // for any gate that crosses to another core through shared memory.
    let mut pingpong = PingPong::start();
    pingpong.resume();
    add("shared-memory ping-pong (2 threads)", n(2_000.0), &mut |_| pingpong.round());
    pingpong.stop();

    for gate in remote {
        let (round_trip, pingpong) = measure_image(&gate.image, n(2_000.0))?;
        rows.borrow_mut().push(row(&gate.name, round_trip));
        if let Some(pingpong) = pingpong {
            rows.borrow_mut().push(row(&format!("{PINGPONG_BESIDE}{}", gate.name), pingpong));
        }
    }

    let mpk_unavailable = flexos_platform::pkey::available().err().map(|e| e.to_string());
    if mpk_unavailable.is_none() {
        for gate in mpk {
            rows.borrow_mut()
                .push(row(&format!("mpk gate, {}", gate.name), measure_image(&gate.image, n(10_000.0))?.0));
        }
        for gate in mpk.iter().filter(|g| g.name != "light") {
            for (locals, min, median) in measure_locals(&gate.image, n(10_000.0))? {
                rows.borrow_mut().push(row(&format!("shared locals (mpk {}): {locals}", gate.name), (min, median)));
            }
        }
    }

    // A byte through a pipe to another process and back (`cat` echoes it).
    let mut cat = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat runs");
    let (mut to, mut from) = (cat.stdin.take().expect("stdin"), cat.stdout.take().expect("stdout"));
    let mut byte = [0u8; 1];
    add("pipe round trip (2 processes)", n(200.0), &mut |_| {
        to.write_all(b"x").expect("pipe write");
        from.read_exact(&mut byte).expect("pipe read");
    });
    drop(to);
    let _ = cat.wait();

    let mut not_implemented = Vec::new();
    if remote.is_empty() {
        not_implemented.push("proc and kvm (no probe images given)".into());
    }
    if mpk.is_empty() {
        not_implemented.push("mpk (no probe images given)".into());
    }
    Ok(GateReport { cycles_per_second: hz, rows: rows.into_inner(), not_implemented, mpk_unavailable })
}

/// The table printed by `flexos bench gates`.
pub fn table(r: &GateReport) -> String {
    let mut out = format!(
        "Gate round trip, empty call; {:.2} GHz time-stamp counter; timer overhead subtracted\n{:38}  {:>10}  {:>10}  {:>9}  {:>9}\n",
        r.cycles_per_second / 1e9,
        "",
        "min cyc",
        "median cyc",
        "min ns",
        "median ns"
    );
    for row in &r.rows {
        out += &format!(
            "{:38}  {:>10.1}  {:>10.1}  {:>9.1}  {:>9.1}\n",
            row.name, row.min_cycles, row.median_cycles, row.min_ns, row.median_ns
        );
    }
    for pingpong in &r.rows {
        let Some(gate) = pingpong.name.strip_prefix(PINGPONG_BESIDE) else { continue };
        if let Some(gate_row) = r.rows.iter().find(|g| g.name == gate) {
            out += &format!(
                "{gate} vs the ping-pong measured beside it (medians): {:.2}x\n",
                gate_row.median_cycles / pingpong.median_cycles
            );
        }
    }
    if let Some(why) = &r.mpk_unavailable {
        out += &format!("mpk gates: not measured, this machine has no protection keys ({why})\n");
    }
    if !r.not_implemented.is_empty() {
        out += &format!("not measured: {}\n", r.not_implemented.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_measured() {
        let r = run(0.01, &[], &[]).unwrap();
        let names: Vec<&str> = r.rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 9, "{names:?}");
        assert!(names.contains(&"fcall gate, other compartment"));
        assert!(r.cycles_per_second > 1e8);
        for row in &r.rows {
            assert!(row.min_cycles <= row.median_cycles, "{row:?}");
            assert!(row.min_cycles.is_finite() && row.median_ns.is_finite(), "{row:?}");
        }
        assert!(table(&r).contains("pipe round trip"));
    }
}
