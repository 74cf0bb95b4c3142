//! The network benchmarks: each image and its Linux baseline serve in a
//! network namespace of their own, driven by the same unmodified client
//! from inside that namespace, alternately, in one run.
//!
//! * kv: `redis-benchmark -n 1000000 -c 30 -P 16 -t get,set -d 3` against
//!   the image (tap device) and Debian's `redis-server` (loopback).
//! * http: `wrk` against the image (httpd) and Debian's `nginx` (one
//!   worker) serving the same files.
//! * iperf: `iperf -c` against the image and `iperf -s`, for receive
//!   buffer sizes 16 B to 16 KiB.

use crate::netns::NetNs;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How an image under test is reached from its namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Net {
    /// Its tap device (`FLEXOS_NET=tap:...`): the client's kernel TCP talks to the image's stack.
    #[default]
    Tap,
    /// The zero-setup 127.0.0.1 forwarder (`FLEXOS_NET=forward`), as `flexos run` without `--netns`.
    Forward,
}

impl Net {
    /// The environment that selects this path (empty for the tap default).
    pub fn envs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Net::Tap => &[],
            Net::Forward => &[("FLEXOS_NET", "forward")],
        }
    }
}

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server under test, running in its own namespace; killed on drop.
pub struct Server {
    child: Child,
    /// Where clients in the namespace reach it.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The lines the image printed so far (images only).
    pub output: Arc<Mutex<Vec<String>>>,
    /// The namespace (dropped after the child is killed).
    pub ns: NetNs,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `image` with `args` (and environment `envs`) on a tap device
    /// in a new namespace and waits for its `listening: HOST:PORT` line.
    /// `envs` are set after `FLEXOS_NET`, so they may replace it: with
    /// [`Net::Forward`]'s, the image serves on 127.0.0.1 in the namespace.
    pub fn image(image: &Path, args: &[String], envs: &[(&str, &str)]) -> Result<Server, String> {
        let ns = NetNs::create()?;
        let mut cmd = ns.exec(&image.to_string_lossy());
        cmd.args(args).env("FLEXOS_NET", ns.flexos_net()).stdin(Stdio::null()).stdout(Stdio::piped());
        cmd.envs(envs.iter().copied());
        flexos_platform::net::die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", image.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let output = Arc::new(Mutex::new(Vec::new()));
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening: ") {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut server = Server { child, host: String::new(), port: 0, output, ns };
        let addr = rx
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| format!("{} printed no `listening:` line within {START_TIMEOUT:?}", image.display()))?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("bad listening line {addr:?}"))?;
        server.host = host.to_owned();
        server.port = port.parse().map_err(|_| format!("bad port in {addr:?}"))?;
        Ok(server)
    }

    /// Starts a Linux server (`program` `args`) in a new namespace and
    /// waits until 127.0.0.1:`port` accepts connections there.
    pub fn linux(program: &str, args: &[&str], port: u16) -> Result<Server, String> {
        let ns = NetNs::create()?;
        let mut cmd = ns.exec(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        flexos_platform::net::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("cannot start {program}: {e}"))?;
        let server = Server { child, host: "127.0.0.1".into(), port, output: Arc::default(), ns };
        let start = Instant::now();
        loop {
            let probe = server
                .ns
                .exec("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .stderr(Stdio::null())
                .status();
            if probe.is_ok_and(|s| s.success()) {
                return Ok(server);
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!("{program} did not listen on port {port} within {START_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs `program` `args` inside the server's namespace; returns its
    /// standard output. Fails, stopping `program`, if the server ends
    /// meanwhile (a client such as `redis-benchmark` would otherwise wait
    /// for it forever).
    pub fn client(&self, program: &str, args: &[String]) -> Result<String, String> {
        let mut child = self
            .ns
            .exec(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e} (is it installed?)"))?;
        let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
        let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| format!("{program}: {e}"))? {
                break status;
            }
            if !process_lives(self.child.id()) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the server ended while {program} ran"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
        if !status.success() {
            return Err(format!("{program} {} failed: {stderr}", args.join(" ")));
        }
        Ok(stdout)
    }
}

/// Whether process `pid` (a child not yet waited for) still runs: it
/// exists and is not a zombie.
fn process_lives(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// One row of a network benchmark: a subject and its median result(s).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The image's configuration or the Linux server.
    pub subject: String,
    /// The measured quantity (e.g. `GET requests/s`).
    pub metric: String,
    /// Median over the runs.
    pub median: f64,
    /// Every run.
    pub runs: Vec<f64>,
    /// Median divided by the baseline's median for the same metric.
    pub ratio_to_linux: f64,
}

/// A network benchmark's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Which benchmark.
    pub benchmark: String,
    /// The client command line.
    pub client: String,
    /// The rows; the baseline's carry ratio 1.
    pub rows: Vec<Row>,
}

/// Fills in every row's ratio to the baseline row with the same metric.
fn ratios(rows: &mut [Row], baseline: &str) {
    let base: Vec<(String, f64)> =
        rows.iter().filter(|r| r.subject == baseline).map(|r| (r.metric.clone(), r.median)).collect();
    for r in rows {
        if let Some((_, b)) = base.iter().find(|(m, _)| *m == r.metric) {
            r.ratio_to_linux = if *b > 0.0 { r.median / b } else { 0.0 };
        }
    }
}

/// The report as a table.
pub fn table(report: &Report) -> String {
    let mut s = format!("{}: {}\n", report.benchmark, report.client);
    s.push_str(&format!("{:<28} {:<22} {:>14} {:>10}\n", "subject", "metric", "median", "vs linux"));
    for r in &report.rows {
        s.push_str(&format!("{:<28} {:<22} {:>14.1} {:>9.2}x\n", r.subject, r.metric, r.median, r.ratio_to_linux));
    }
    s
}

fn push(rows: &mut Vec<Row>, subject: &str, metric: &str, value: f64) {
    match rows.iter_mut().find(|r| r.subject == subject && r.metric == metric) {
        Some(r) => r.runs.push(value),
        None => rows.push(Row {
            subject: subject.into(),
            metric: metric.into(),
            median: 0.0,
            runs: vec![value],
            ratio_to_linux: 0.0,
        }),
    }
}

fn finish(benchmark: &str, client: String, mut rows: Vec<Row>, baseline: &str) -> Report {
    for r in &mut rows {
        r.median = median(r.runs.clone());
    }
    ratios(&mut rows, baseline);
    Report { benchmark: benchmark.into(), client, rows }
}

/// The redis-benchmark arguments of `flexos bench kv`.
pub const KV_CLIENT: &[&str] = &["-n", "1000000", "-c", "30", "-P", "16", "-t", "get,set", "-d", "3", "--csv"];

/// Requests per test of `flexos bench kv`. redis-benchmark times a test
/// with a millisecond clock, and where a server answers 2 million
/// requests a second, 100,000 requests took 48 to 51 ms: each rate was
/// then a step of 2% and included the 30 connections' set-up (1.3 ms
/// through the 127.0.0.1 forwarder, 0.6 ms to redis-server). A million
/// takes half a second or more.
pub const KV_REQUESTS: u64 = 1_000_000;

/// Parses `redis-benchmark --csv` output: (test, requests/s) pairs.
pub fn parse_redis_csv(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim_matches('"'));
            let test = f.next()?.to_owned();
            let rps = f.next()?.parse().ok()?;
            Some((test, rps))
        })
        .collect()
}

/// Runs `redis-benchmark` ([`KV_CLIENT`], with `-n requests`) against
/// `server`; returns (test, requests/s) pairs.
pub fn redis_benchmark(server: &Server, requests: u64) -> Result<Vec<(String, f64)>, String> {
    let mut args: Vec<String> = vec!["-h".into(), server.host.clone(), "-p".into(), server.port.to_string()];
    args.extend(KV_CLIENT.iter().map(|s| s.to_string()));
    args[5] = requests.to_string(); // after -h H -p P -n
    let results = parse_redis_csv(&server.client("redis-benchmark", &args)?);
    if results.len() < 2 {
        return Err("redis-benchmark reported no results".into());
    }
    Ok(results)
}

/// `flexos bench kv`: each image (name, path) and `redis-server`, `runs` times, alternately.
pub fn kv(images: &[(String, PathBuf)], runs: usize, net: Net) -> Result<Report, String> {
    let mut rows = Vec::new();
    for _ in 0..runs {
        for (name, image) in images {
            let server = Server::image(image, &[], net.envs())?;
            for (test, rps) in redis_benchmark(&server, KV_REQUESTS)? {
                push(&mut rows, name, &format!("{test} requests/s"), rps);
            }
        }
        let server = Server::linux(
            "redis-server",
            &["--port", "6379", "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
            6379,
        )?;
        for (test, rps) in redis_benchmark(&server, KV_REQUESTS)? {
            push(&mut rows, "linux redis-server", &format!("{test} requests/s"), rps);
        }
    }
    Ok(finish("kv", format!("redis-benchmark {}", KV_CLIENT.join(" ")), rows, "linux redis-server"))
}

/// Parses `wrk`'s `Requests/sec:` line.
pub fn parse_wrk(out: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

/// The wrk arguments of `flexos bench http` (before the URL).
pub const HTTP_CLIENT: &[&str] = &["-t", "1", "-c", "10", "-d", "5s"];

fn wrk(server: &Server, path: &str) -> Result<f64, String> {
    let mut args: Vec<String> = HTTP_CLIENT.iter().map(|s| s.to_string()).collect();
    args.push(format!("http://{}:{}{path}", server.host, server.port));
    let out = server.client("wrk", &args)?;
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        return Err(format!("wrk saw errors:\n{out}"));
    }
    parse_wrk(&out).ok_or_else(|| format!("no Requests/sec in wrk's output:\n{out}"))
}

/// `flexos bench http`: each image and nginx (one worker) serving `site`, fetching `path`.
pub fn http(
    images: &[(String, PathBuf)],
    site: &Path,
    path: &str,
    runs: usize,
    scratch: &Path,
    net: Net,
) -> Result<Report, String> {
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let conf = scratch.join("nginx.conf");
    let site = site.canonicalize().map_err(|e| format!("{}: {e}", site.display()))?;
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\nerror_log stderr;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  include /etc/nginx/mime.types;\n  client_body_temp_path {tmp};\n  server {{ listen 127.0.0.1:8080; root {root}; }}\n}}\n",
            pid = scratch.join("nginx.pid").display(),
            tmp = scratch.display(),
            root = site.display()
        ),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut rows = Vec::new();
    for _ in 0..runs {
        for (name, image) in images {
            let server = Server::image(image, &[], net.envs())?;
            push(&mut rows, name, &format!("GET {path} requests/s"), wrk(&server, path)?);
        }
        let conf = conf.to_string_lossy();
        let server = Server::linux("nginx", &["-c", &conf], 8080)?;
        push(&mut rows, "linux nginx", &format!("GET {path} requests/s"), wrk(&server, path)?);
    }
    Ok(finish("http", format!("wrk {} URL", HTTP_CLIENT.join(" ")), rows, "linux nginx"))
}

/// Parses the rate (Mbit/s) from `iperf -c ... -f m` output's summary line.
pub fn parse_iperf(out: &str) -> Option<f64> {
    out.lines().rev().find_map(|l| {
        let i = l.find(" Mbits/sec")?;
        l[..i].split_whitespace().last()?.parse().ok()
    })
}

/// The receive buffer sizes of `flexos bench iperf`.
pub const IPERF_SIZES: &[usize] = &[16, 64, 256, 1024, 4096, 16384];

fn iperf_client(server: &Server, seconds: u32) -> Result<f64, String> {
    let args: Vec<String> = ["-c", &server.host, "-p", &server.port.to_string(), "-t", &seconds.to_string(), "-f", "m"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = server.client("iperf", &args)?;
    parse_iperf(&out).ok_or_else(|| format!("no rate in iperf's output:\n{out}"))
}

/// `flexos bench iperf`: each image and `iperf -s` at every receive buffer size.
pub fn iperf(
    images: &[(String, PathBuf)],
    sizes: &[usize],
    seconds: u32,
    runs: usize,
    net: Net,
) -> Result<Report, String> {
    let mut rows = Vec::new();
    for _ in 0..runs {
        for &size in sizes {
            let metric = format!("{size} B reads Mbit/s");
            for (name, image) in images {
                let server = Server::image(image, &["--recv-size".into(), size.to_string()], net.envs())?;
                push(&mut rows, name, &metric, iperf_client(&server, seconds)?);
            }
            let len = size.to_string();
            let server = Server::linux("iperf", &["-s", "-p", "5001", "-l", &len], 5001)?;
            push(&mut rows, "linux iperf -s", &metric, iperf_client(&server, seconds)?);
        }
    }
    Ok(finish("iperf", format!("iperf -c HOST -t {seconds} -f m"), rows, "linux iperf -s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that would wait for a dead server forever (as
    /// `redis-benchmark` does) is stopped when the server ends. Needs root
    /// (a network namespace).
    #[test]
    fn a_client_is_stopped_when_the_server_ends() {
        let server = Server::linux("python3", &["-m", "http.server", "18555"], 18555).unwrap();
        let pid = server.child.id().to_string();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
        });
        // Left running, `sleep 60` would succeed.
        let result = server.client("sleep", &["60".into()]);
        killer.join().unwrap();
        assert_eq!(result, Err("the server ended while sleep ran".to_owned()));
        assert!(server.client("true", &[]).is_err(), "nor does a later client run");
    }

    #[test]
    fn parses_client_outputs() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"840336.12\",\"0.5\"\n\"GET\",\"877193.00\",\"0.4\"\n";
        assert_eq!(parse_redis_csv(csv), vec![("SET".into(), 840336.12), ("GET".into(), 877193.0)]);
        assert_eq!(parse_wrk("  Latency 1ms\nRequests/sec:  81663.61\nTransfer/sec: 40MB\n"), Some(81663.61));
        let iperf = "[  1] local ...\n[ ID] Interval       Transfer     Bandwidth\n[  1] 0.0000-3.0128 sec   883 MBytes  2458 Mbits/sec\n";
        assert_eq!(parse_iperf(iperf), Some(2458.0));
        assert_eq!(parse_iperf("nothing"), None);
    }
}
