//! `flexos`: check, build, run and benchmark FlexOS images.

use clap::{Args, Parser, Subcommand};
use flexos::build::{BuildOptions, build_baseline, build_image};
use flexos::{audit, bench, exit, workspace_root};
use flexos_config::Layout;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

/// FlexOS in Rust: a library OS whose isolation is chosen by a configuration file.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration and show its layout.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
    /// Build the image of a configuration; prints the image's path last.
    Build {
        /// The configuration file.
        config: PathBuf,
        #[command(flatten)]
        options: BuildArgs,
    },
    /// Build (if needed) and run the image of a configuration.
    Run {
        /// The configuration file.
        config: PathBuf,
        #[command(flatten)]
        options: BuildArgs,
        /// Network applications: attach the image to a tap device in a new
        /// network namespace (needs root) instead of forwarding ports from 127.0.0.1.
        #[arg(long)]
        netns: bool,
        /// Arguments for the application.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure images against the Linux baseline.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Find the safest configurations of a space that meet a performance
    /// budget (docs/explore.md); `plan`, `worker` and `merge` split the
    /// work over many machines.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Explore {
        #[command(subcommand)]
        step: Option<ExploreStep>,
        #[command(flatten)]
        run: ExploreRun,
    },
    /// Static checks of the architecture's rules (run in CI).
    Audit {
        #[command(subcommand)]
        which: AuditCmd,
    },
    /// Run the mpk checks (attacks per sharing strategy, SQLite in three
    /// compartments) in a Linux guest under QEMU's software CPU, with
    /// protection keys (-cpu max) and without them (-cpu qemu64, the
    /// negative control). Downloads QEMU and a kernel as packages into target/.
    GuestTest {
        /// Seconds each boot may take.
        #[arg(long, default_value_t = 900)]
        limit: u64,
        /// Run only the checks whose names contain this (for development).
        #[arg(long)]
        only: Option<String>,
        /// Boot nothing: write the guest's init and static images into this
        /// folder, to run the checks natively on a machine with protection
        /// keys and no toolchain (`DIR/init DIR/images [ONLY]`).
        #[arg(long, conflicts_with = "only")]
        pack: Option<PathBuf>,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Build without optimizations (crossings are then always counted).
    #[arg(long)]
    debug: bool,
    /// Count gate crossings; `run` prints them at exit.
    #[arg(long)]
    gate_stats: bool,
    /// No progress display.
    #[arg(long, short)]
    quiet: bool,
    /// Link the image statically (to run it where there is no C library).
    #[arg(long = "static")]
    static_link: bool,
}

impl BuildArgs {
    fn options(&self) -> BuildOptions {
        BuildOptions {
            release: !self.debug,
            gate_stats: self.gate_stats,
            progress: !self.quiet,
            static_link: self.static_link,
        }
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The FlexOS SQLite workload (5000 INSERTs, no transaction) on images and on Linux.
    Sqlite {
        /// Image configurations to measure [default: configs/sqlite{,-fs,-proc,-kvm,-mixed}.toml].
        #[arg(long = "config")]
        configs: Vec<PathBuf>,
        /// Runs of each subject.
        #[arg(long, default_value_t = 11)]
        runs: usize,
        /// Rows to insert per run.
        #[arg(long, default_value_t = 5000)]
        rows: u64,
        /// Where to write the JSON report [default: target/flexos/bench/sqlite.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Redis-protocol throughput (redis-benchmark -P 16, GET and SET) of kv images and of redis-server.
    Kv {
        /// Image configurations to measure [default: configs/kv.toml].
        #[arg(long = "config")]
        configs: Vec<PathBuf>,
        /// Runs of each subject (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// How clients reach the image: its tap device, or the zero-setup 127.0.0.1 forwarder.
        #[arg(long, value_enum, default_value_t = flexos::netbench::Net::Tap)]
        net: flexos::netbench::Net,
        /// Where to write the JSON report [default: target/flexos/bench/kv.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// HTTP throughput (wrk) of httpd images and of nginx serving the same files.
    Http {
        /// Image configurations to measure [default: configs/httpd.toml].
        #[arg(long = "config")]
        configs: Vec<PathBuf>,
        /// The file to fetch.
        #[arg(long, default_value = "/index.html")]
        path: String,
        /// Runs of each subject (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// How clients reach the image: its tap device, or the zero-setup 127.0.0.1 forwarder.
        #[arg(long, value_enum, default_value_t = flexos::netbench::Net::Tap)]
        net: flexos::netbench::Net,
        /// Where to write the JSON report [default: target/flexos/bench/http.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TCP receive rate (iperf -c) of iperf images and of iperf -s, for receive buffers of 16 B to 16 KiB.
    Iperf {
        /// Image configurations to measure [default: configs/iperf.toml].
        #[arg(long = "config")]
        configs: Vec<PathBuf>,
        /// Seconds per iperf run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Runs of each subject and size (the median is reported).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// How clients reach the image: its tap device, or the zero-setup 127.0.0.1 forwarder.
        #[arg(long, value_enum, default_value_t = flexos::netbench::Net::Tap)]
        net: flexos::netbench::Net,
        /// Where to write the JSON report [default: target/flexos/bench/iperf.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// What each hardening option costs each component: one image per (component, option) against the
    /// image without hardening, alternately, on the SQLite workload or the kv workload (docs/hardening.md).
    Hardening {
        /// The application: sqlite (5000 INSERTs) or kv (redis-benchmark GET, on a tap device).
        #[arg(long, default_value = "sqlite")]
        app: String,
        /// Only these components [default: every component of the image].
        #[arg(long = "component")]
        components: Vec<String>,
        /// Only these options [default: every option that applies].
        #[arg(long = "option")]
        options: Vec<String>,
        /// Runs of each subject [default: 11 for sqlite, 3 for kv].
        #[arg(long)]
        runs: Option<usize>,
        /// sqlite: count instructions (one run each under valgrind's callgrind: repeatable, and blind to
        /// caches) instead of timing; `kasan` variants are left out (valgrind cannot map their shadow).
        #[arg(long)]
        instructions: bool,
        /// Where to write the table [default: target/flexos/bench/hardening-APP.json, -instructions.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Round-trip latency of an empty call through each gate, beside a system call, a pipe and shared memory.
    Gates {
        /// Where to write the JSON report [default: target/flexos/bench/gates.json].
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ExploreRun {
    /// The space file (see spaces/).
    #[arg(required = true)]
    space: Option<PathBuf>,
    /// Measure every configuration (the ground truth) instead of searching.
    #[arg(long)]
    exhaustive: bool,
    #[command(flatten)]
    report: ExploreReport,
    /// Measure predictions within this fraction of the budget.
    #[arg(long, default_value_t = 0.10)]
    margin: f64,
}

#[derive(Args)]
struct ExploreReport {
    /// The results database [default: target/flexos/explore/results.db].
    #[arg(long)]
    db: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the SVG picture (poset and chart) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write every configuration as a configuration file (ID.toml) into this folder.
    #[arg(long)]
    write_configs: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum ExploreStep {
    /// Write the jobs of a space (plan.json) into a folder, for `worker`s.
    Plan {
        /// The space file.
        space: PathBuf,
        /// The folder (shared by the workers).
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one shard of a plan: `--shard I/N`, or Slurm's array task id, or
    /// a Kubernetes Indexed Job's completion index (with FLEXOS_SHARDS).
    Worker {
        /// The plan's folder.
        dir: PathBuf,
        /// This worker's shard, I/N (0-based).
        #[arg(long)]
        shard: Option<String>,
        /// No progress display.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Merge the workers' results and report (as `--exhaustive` would).
    Merge {
        /// The plan's folder.
        dir: PathBuf,
        #[command(flatten)]
        report: ExploreReport,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Fail if a component of the built image has a mutable static.
    Statics {
        /// The image file.
        image: PathBuf,
    },
    /// Fail if a component calls another component outside `gate!`.
    Gates,
    /// Fail if the image's code holds a `wrpkru` that is not a checked gate site.
    Wrpkru {
        /// The image file.
        image: PathBuf,
    },
}

/// Writes to standard output; a closed pipe (`flexos ... | head`) ends the program quietly.
fn say_raw(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(exit::OK);
    }
}

/// `println!` through [`say_raw`].
macro_rules! say {
    ($($arg:tt)*) => { say_raw(&format!("{}\n", format_args!($($arg)*))) };
}

fn load(config: &Path) -> Result<Layout, i32> {
    flexos_config::load(config).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        exit::BAD_CONFIG
    })
}

fn build(config: &Path, options: &BuildOptions) -> Result<PathBuf, i32> {
    let layout = load(config)?;
    build_image(&workspace_root(), &layout, options).map_err(|e| {
        eprintln!("error: {e}");
        exit::BUILD_FAILED
    })
}

fn bench_sqlite(configs: Vec<PathBuf>, runs: usize, rows: u64, json: Option<PathBuf>) -> Result<(), i32> {
    let root = workspace_root();
    let configs = if configs.is_empty() {
        ["sqlite.toml", "sqlite-fs.toml", "sqlite-proc.toml", "sqlite-kvm.toml", "sqlite-mixed.toml"]
            .iter()
            .map(|c| root.join("configs").join(c))
            .collect()
    } else {
        configs
    };
    if runs == 0 {
        eprintln!("error: --runs must be at least 1");
        return Err(exit::USAGE);
    }
    let mut subjects = Vec::new();
    let options = BuildOptions::default();
    for c in &configs {
        let image = build(c, &options)?;
        let name = c.file_name().map_or(c.display().to_string(), |n| n.to_string_lossy().into_owned());
        subjects.push(bench::Subject { name, program: image, args: vec!["--rows".into(), rows.to_string()] });
    }
    let baseline = build_baseline(&root, "sqlite", true).map_err(|e| {
        eprintln!("error: {e}");
        exit::BUILD_FAILED
    })?;
    subjects.push(bench::Subject {
        name: "linux (tmpfs)".into(),
        program: baseline,
        args: vec!["--rows".into(), rows.to_string()],
    });
    let bar = ProgressBar::new((runs * subjects.len()) as u64);
    let report = bench::measure(&subjects, runs, rows, |done, _| bar.set_position(done as u64)).map_err(|e| {
        bar.finish_and_clear();
        eprintln!("error: {e}");
        exit::BENCH_FAILED
    })?;
    bar.finish_and_clear();
    say_raw(&bench::table(&report));
    write_json(json.unwrap_or_else(|| root.join("target/flexos/bench/sqlite.json")), &report)
}

fn bench_hardening(
    app: &str,
    components: &[String],
    options: &[String],
    runs: Option<usize>,
    instructions: bool,
    json: Option<PathBuf>,
) -> Result<(), i32> {
    use flexos::hardenbench;
    let root = workspace_root();
    if app != "sqlite" && app != "kv" {
        eprintln!("error: --app must be sqlite or kv");
        return Err(exit::USAGE);
    }
    let runs = runs.unwrap_or(if app == "sqlite" { 11 } else { 3 });
    if runs == 0 {
        eprintln!("error: --runs must be at least 1");
        return Err(exit::USAGE);
    }
    if instructions && app != "sqlite" {
        eprintln!("error: --instructions counts the SQLite workload only (kv is measured by its clients' rate)");
        return Err(exit::USAGE);
    }
    let mut variants = hardenbench::variants(app, components, options);
    if instructions {
        variants.retain(|(_, o)| *o != flexos_config::Hardening::Kasan);
    }
    if variants.is_empty() {
        eprintln!("error: no hardening option applies to the components asked for");
        return Err(exit::USAGE);
    }
    let base = load(&root.join("configs").join(format!("{app}.toml")))?;
    let dir = root.join("target/flexos/bench/hardening");
    let write = |v| {
        hardenbench::write_config(&dir, app, base.files.as_deref(), v).map_err(|e| {
            eprintln!("error: {e}");
            exit::BENCH_FAILED
        })
    };
    // Every image first (never build while measuring); the build folders
    // stay (300-600 MB each), so that measuring again rebuilds nothing.
    let options = BuildOptions::default();
    let unhardened = build(&write(None)?, &options)?;
    let mut images = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        say!("[{}/{}] {} with {}", i + 1, variants.len(), v.0, v.1.name());
        images.push(build(&write(Some(*v))?, &options)?);
    }
    let fail = |e: String| {
        eprintln!("error: {e}");
        exit::BENCH_FAILED
    };
    let table = if instructions {
        let mut counts = Vec::new();
        for (i, p) in images.iter().chain(std::iter::once(&unhardened)).enumerate() {
            say!("[{}/{}] counting {}", i + 1, images.len() + 1, p.display());
            counts.push(hardenbench::count_instructions(p, 5000).map_err(fail)?);
        }
        let base = counts.pop().expect("the unhardened image was counted");
        let measured: Vec<_> = variants.iter().copied().zip(counts).collect();
        hardenbench::table(app, "instructions for 5000 INSERTs", 1, base, &measured, false)
    } else if app == "sqlite" {
        let rows = 5000;
        let arg = |p: &PathBuf, name: String| bench::Subject {
            name,
            program: p.clone(),
            args: vec!["--rows".into(), rows.to_string()],
        };
        let mut subjects: Vec<bench::Subject> =
            variants.iter().zip(&images).map(|(v, p)| arg(p, format!("{} {}", v.0, v.1.name()))).collect();
        subjects.push(arg(&unhardened, "unhardened".into()));
        let bar = ProgressBar::new((runs * subjects.len()) as u64);
        let report = bench::measure(&subjects, runs, rows, |done, _| bar.set_position(done as u64)).map_err(fail)?;
        bar.finish_and_clear();
        let medians: Vec<f64> = report.results.iter().map(|r| r.summary.median).collect();
        let base = *medians.last().expect("the unhardened image was measured");
        let measured: Vec<_> = variants.iter().copied().zip(medians).collect();
        hardenbench::table(app, "seconds for 5000 INSERTs", runs, base, &measured, false)
    } else {
        let mut named: Vec<(String, PathBuf)> =
            variants.iter().zip(&images).map(|(v, p)| (format!("{} {}", v.0, v.1.name()), p.clone())).collect();
        named.push(("unhardened".into(), unhardened));
        let report = flexos::netbench::kv(&named, runs, flexos::netbench::Net::Tap).map_err(fail)?;
        let median = |name: &str| {
            report.rows.iter().find(|r| r.subject == name && r.metric == "GET requests/s").map(|r| r.median)
        };
        let base = median("unhardened").ok_or_else(|| fail("no GET rate of the unhardened image".into()))?;
        let measured: Vec<_> =
            variants.iter().map(|v| (*v, median(&format!("{} {}", v.0, v.1.name())).unwrap_or(f64::NAN))).collect();
        hardenbench::table(app, "GET requests/s", runs, base, &measured, true)
    };
    say_raw(&hardenbench::markdown(&table));
    let name =
        if instructions { format!("hardening-{app}-instructions.json") } else { format!("hardening-{app}.json") };
    write_json(json.unwrap_or_else(|| root.join("target/flexos/bench").join(name)), &table)
}

fn load_space(path: &Path) -> Result<flexos::explore::space::Space, i32> {
    flexos::explore::space::load(path).map_err(|errors| {
        for e in errors {
            eprintln!("{e}");
        }
        exit::BAD_CONFIG
    })
}

fn fail(code: i32) -> impl Fn(String) -> i32 {
    move |e| {
        eprintln!("error: {e}");
        code
    }
}

/// Searches (or measures exhaustively, or only reads the results of a
/// merge) and reports.
fn explore_and_report(
    space: &flexos::explore::space::Space,
    settings: &flexos::explore::search::Settings,
    report: &ExploreReport,
    db: PathBuf,
) -> Result<(), i32> {
    use flexos::explore::{self, search};
    let root = workspace_root();
    let enumeration = explore::enumerate::enumerate(space, explore::pku());
    let mut store = explore::db::Db::open(&db, space).map_err(fail(exit::BENCH_FAILED))?;
    let mut measurer = explore::measure::for_space(space, &root);
    let (bar, mut update) = explore::progress_bar(report.quiet);
    let x = search::explore(space, enumeration, measurer.as_mut(), &mut store, settings, &mut update);
    bar.finish_and_clear();
    let x = x.map_err(fail(exit::BENCH_FAILED))?;
    say_raw(&explore::report::table(space, &x));
    say!("results: {}", db.display());
    let outputs =
        explore::Outputs { json: report.json.clone(), svg: report.svg.clone(), configs: report.write_configs.clone() };
    for line in explore::write_outputs(space, &x, &outputs).map_err(fail(exit::BENCH_FAILED))? {
        say!("{line}");
    }
    Ok(())
}

fn explore_cmd(step: Option<ExploreStep>, run: ExploreRun) -> Result<(), i32> {
    use flexos::explore::{dist, search::Settings};
    let root = workspace_root();
    match step {
        None => {
            let space = load_space(run.space.as_deref().expect("clap requires the space"))?;
            if !(0.0..1.0).contains(&run.margin) {
                eprintln!("error: --margin must be in [0, 1)");
                return Err(exit::USAGE);
            }
            let settings = Settings { exhaustive: run.exhaustive, margin: run.margin, ..Settings::default() };
            let db = run.report.db.clone().unwrap_or_else(|| flexos::explore::default_db(&root));
            explore_and_report(&space, &settings, &run.report, db)
        }
        Some(ExploreStep::Plan { space, out }) => {
            let space = load_space(&space)?;
            let jobs = dist::plan(&space, &out).map_err(fail(exit::BENCH_FAILED))?;
            say!(
                "{}: {jobs} jobs (job 0 counts gate calls); run `flexos explore worker {} --shard I/N` for I in 0..N, then `flexos explore merge {}`",
                out.join("plan.json").display(),
                out.display(),
                out.display()
            );
            Ok(())
        }
        Some(ExploreStep::Worker { dir, shard, quiet }) => {
            let shard = match shard {
                Some(s) => dist::Shard::parse(&s),
                None => dist::Shard::from_environment().unwrap_or_else(|| {
                    Err("give --shard I/N (or run as a Slurm array task or a Kubernetes Indexed Job)".into())
                }),
            }
            .map_err(fail(exit::USAGE))?;
            let done = dist::worker(&dir, shard, &root, &mut |what| {
                if !quiet {
                    eprintln!("shard {}/{}: {what}", shard.index, shard.count);
                }
            })
            .map_err(fail(exit::BENCH_FAILED))?;
            say!(
                "shard {}/{}: measured {done} configurations into {}",
                shard.index,
                shard.count,
                dist::shard_db(&dir, shard.index).display()
            );
            Ok(())
        }
        Some(ExploreStep::Merge { dir, report }) => {
            let (db, space, added) = dist::merge(&dir).map_err(fail(exit::BENCH_FAILED))?;
            say!("merged {added} rows into {}", db.display());
            let settings = Settings { exhaustive: true, stored_only: true, ..Settings::default() };
            explore_and_report(&space, &settings, &report, report.db.clone().unwrap_or(db))
        }
    }
}

fn guest_test(limit: u64, only: Option<&str>) -> Result<(), i32> {
    let report =
        flexos::guest::run(&workspace_root(), true, std::time::Duration::from_secs(limit), only).map_err(|e| {
            eprintln!("error: {e}");
            exit::GUEST_FAILED
        })?;
    say_raw(&flexos::guest::table(&report));
    if report.problems.is_empty() { Ok(()) } else { Err(exit::GUEST_FAILED) }
}

fn bench_gates(json: Option<PathBuf>) -> Result<(), i32> {
    let root = workspace_root();
    let mut remote = Vec::new();
    for (name, config) in [
        ("proc gate (2 processes)", "configs/probe-proc.toml"),
        ("kvm gate (host to VM at CPL3)", "configs/probe-kvm.toml"),
    ] {
        let image = build(&root.join(config), &BuildOptions::default())?;
        remote.push(flexos::gatebench::RemoteGate { name: name.into(), image });
    }
    let mut mpk = Vec::new();
    for sharing in ["light", "dss", "heap"] {
        let image = build(&root.join(format!("configs/probe-mpk-{sharing}.toml")), &BuildOptions::default())?;
        mpk.push(flexos::gatebench::RemoteGate { name: sharing.into(), image });
    }
    let report = flexos::gatebench::run(1.0, &remote, &mpk).map_err(|e| {
        eprintln!("error: {e}");
        exit::BENCH_FAILED
    })?;
    say_raw(&flexos::gatebench::table(&report));
    write_json(json.unwrap_or_else(|| root.join("target/flexos/bench/gates.json")), &report)
}

/// Builds the images of `configs` (or of `default` under configs/) for a network benchmark.
fn network_images(configs: Vec<PathBuf>, default: &str, runs: usize) -> Result<Vec<(String, PathBuf)>, i32> {
    if runs == 0 {
        eprintln!("error: --runs must be at least 1");
        return Err(exit::USAGE);
    }
    let root = workspace_root();
    let configs = if configs.is_empty() { vec![root.join("configs").join(default)] } else { configs };
    let mut images = Vec::new();
    for c in &configs {
        let image = build(c, &BuildOptions::default())?;
        let name = c.file_name().map_or(c.display().to_string(), |n| n.to_string_lossy().into_owned());
        images.push((name, image));
    }
    Ok(images)
}

fn report_network(
    report: Result<flexos::netbench::Report, String>,
    json: Option<PathBuf>,
    name: &str,
) -> Result<(), i32> {
    let report = report.map_err(|e| {
        eprintln!("error: {e}");
        exit::BENCH_FAILED
    })?;
    say_raw(&flexos::netbench::table(&report));
    write_json(json.unwrap_or_else(|| workspace_root().join(format!("target/flexos/bench/{name}.json"))), &report)
}

fn write_json(json: PathBuf, report: &impl serde::Serialize) -> Result<(), i32> {
    if let Some(dir) = json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&json, serde_json::to_string_pretty(report).expect("report serializes")).map_err(|e| {
        eprintln!("error: {}: {e}", json.display());
        exit::BENCH_FAILED
    })?;
    say!("json: {}", json.display());
    Ok(())
}

/// `flexos run`: builds the image and runs it in the foreground; a network
/// image is reached through 127.0.0.1 or, with `netns`, inside a network
/// namespace made for it and removed afterwards.
fn run(config: &Path, options: &BuildArgs, netns: bool, args: &[String]) -> Result<(), i32> {
    let layout = load(config)?;
    let image = build(config, &options.options())?;
    let network_app = flexos_config::NETWORK_APPS.contains(&layout.app.as_str());
    if netns && !network_app {
        eprintln!("error: --netns is for network applications ({})", flexos_config::NETWORK_APPS.join(", "));
        return Err(exit::USAGE);
    }
    let ns = if netns {
        Some(flexos::netns::NetNs::create().map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })?)
    } else {
        None
    };
    let mut cmd = match &ns {
        Some(ns) => {
            eprintln!(
                "network: namespace {} (tap {}, image at {}); run clients with: ip netns exec {} CLIENT",
                ns.name,
                flexos::netns::TAP,
                flexos::netns::IMAGE_IP,
                ns.name
            );
            let mut cmd = ns.exec(&image.to_string_lossy());
            cmd.env("FLEXOS_NET", ns.flexos_net());
            cmd
        }
        None => {
            if network_app {
                eprintln!("network: forwarded from 127.0.0.1 (see the listening: lines)");
            }
            std::process::Command::new(&image)
        }
    };
    if options.gate_stats {
        cmd.arg("--flexos-gate-stats");
    }
    flexos_platform::net::die_with_parent(&mut cmd);
    let mut child = cmd.args(args).spawn().map_err(|e| {
        eprintln!("error: cannot start {}: {e}", image.display());
        exit::BUILD_FAILED
    })?;
    // After the spawn: the image must keep the default dispositions.
    flexos_platform::net::forward_signals(child.id());
    let status = child.wait().map_err(|e| {
        eprintln!("error: waiting for {}: {e}", image.display());
        exit::BUILD_FAILED
    })?;
    flexos_platform::net::stop_forwarding_signals();
    drop(ns);
    use std::os::unix::process::ExitStatusExt;
    std::process::exit(status.code().unwrap_or(128 + status.signal().unwrap_or(9)))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Check { config } => load(&config).map(|layout| {
            say_raw(&format!("{}: ok\n{layout}", config.display()));
            if let Some(warning) = flexos::build::mpk_warning(&layout) {
                eprintln!("{}: warning: {warning}", config.display());
            }
        }),
        Cmd::Build { config, options } => build(&config, &options.options()).map(|image| {
            say!("{}", image.display());
            if let Some(warning) = flexos_config::load(&config).ok().as_ref().and_then(flexos::build::mpk_warning) {
                eprintln!("{}: warning: {warning}", config.display());
            }
        }),
        Cmd::Run { config, options, netns, args } => run(&config, &options, netns, &args),
        Cmd::Bench { which: BenchCmd::Sqlite { configs, runs, rows, json } } => bench_sqlite(configs, runs, rows, json),
        Cmd::Bench { which: BenchCmd::Gates { json } } => bench_gates(json),
        Cmd::Bench { which: BenchCmd::Hardening { app, components, options, runs, instructions, json } } => {
            bench_hardening(&app, &components, &options, runs, instructions, json)
        }
        Cmd::GuestTest { pack: Some(dir), .. } => flexos::guest::pack(&workspace_root(), &dir, true).map_err(|e| {
            eprintln!("error: {e}");
            exit::GUEST_FAILED
        }),
        Cmd::GuestTest { limit, only, pack: None } => guest_test(limit, only.as_deref()),
        Cmd::Explore { step, run } => explore_cmd(step, run),
        Cmd::Bench { which: BenchCmd::Kv { configs, runs, net, json } } => network_images(configs, "kv.toml", runs)
            .and_then(|images| report_network(flexos::netbench::kv(&images, runs, net), json, "kv")),
        Cmd::Bench { which: BenchCmd::Http { configs, path, runs, net, json } } => {
            let site = configs.first().cloned().unwrap_or_else(|| workspace_root().join("configs/httpd.toml"));
            load(&site).and_then(|layout| {
                let Some(site) = layout.files else {
                    eprintln!("error: {} packs no files (set files = \"FOLDER\")", site.display());
                    return Err(exit::BAD_CONFIG);
                };
                let images = network_images(configs, "httpd.toml", runs)?;
                let scratch = workspace_root().join("target/flexos/bench/nginx");
                report_network(flexos::netbench::http(&images, &site, &path, runs, &scratch, net), json, "http")
            })
        }
        Cmd::Bench { which: BenchCmd::Iperf { configs, seconds, runs, net, json } } => {
            network_images(configs, "iperf.toml", runs).and_then(|images| {
                let report = flexos::netbench::iperf(&images, flexos::netbench::IPERF_SIZES, seconds, runs, net);
                report_network(report, json, "iperf")
            })
        }
        Cmd::Audit { which: AuditCmd::Statics { image } } => match audit::writable_statics(&image) {
            Ok(found) if found.is_empty() => {
                say!("{}: no component keeps a mutable static", image.display());
                Ok(())
            }
            Ok(found) => {
                for s in found {
                    eprintln!(
                        "{}: component {} has a mutable static {} in {}",
                        image.display(),
                        s.krate,
                        s.symbol,
                        s.section
                    );
                }
                Err(exit::AUDIT_FAILED)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Err(exit::AUDIT_FAILED)
            }
        },
        Cmd::Audit { which: AuditCmd::Wrpkru { image } } => {
            match audit::wrpkru_sites(&image).and_then(|a| Ok((a, audit::xrstor_sites(&image)?))) {
                Ok((a, xrstors)) if a.problems.is_empty() && xrstors.is_empty() => {
                    say!(
                        "{}: {} wrpkru in the code, every one a checked gate site ({} registered); no xrstor",
                        image.display(),
                        a.found,
                        a.sites
                    );
                    Ok(())
                }
                Ok((a, xrstors)) => {
                    for at in xrstors {
                        eprintln!("{}: xrstor at {at:#x}: could load PKRU unchecked", image.display());
                    }
                    for p in a.problems {
                        eprintln!("{}: wrpkru at {:#x}: {}", image.display(), p.address, p.problem);
                    }
                    Err(exit::AUDIT_FAILED)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(exit::AUDIT_FAILED)
                }
            }
        }
        Cmd::Audit { which: AuditCmd::Gates } => match audit::unsealed_components(&workspace_root())
            .and_then(|unsealed| Ok((unsealed, audit::gate_bypasses(&workspace_root())?)))
        {
            Ok((unsealed, found)) if unsealed.is_empty() && found.is_empty() => {
                say!("every component forbids unsafe code, and every call between components goes through gate!");
                Ok(())
            }
            Ok((unsealed, found)) => {
                for u in unsealed {
                    eprintln!("{u}");
                }
                for b in found {
                    eprintln!("{}:{}: calls into {} without gate!", b.file.display(), b.line, b.callee);
                }
                Err(exit::AUDIT_FAILED)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Err(exit::AUDIT_FAILED)
            }
        },
    };
    std::process::exit(match result {
        Ok(()) => exit::OK,
        Err(code) => code,
    });
}
