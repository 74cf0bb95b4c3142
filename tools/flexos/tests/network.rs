//! The network applications, driven by their real clients: `redis-benchmark`
//! and `redis-cli` (kv), `curl`, `ab` and `wrk` (httpd), `iperf` (iperf).
//!
//! Tests named `tap_*` attach the image to a tap device in a network
//! namespace of its own (needs root, as CI has) and run the clients inside
//! that namespace; the others use the zero-setup 127.0.0.1 forwarder and
//! talk to the image from this process. Every test ends by checking that
//! no image process and no namespace of this test binary is left.

mod common;

use flexos::netbench::{self, Server};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn image(config: &str) -> PathBuf {
    common::image(config, false)
}

/// A unique tag for the processes a test starts.
fn tag(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// Asserts that no process tagged `tag` remains.
fn assert_nothing_left(tag: &str) {
    common::assert_no_process_left(tag, &[tag]);
}

/// Asserts that the namespace `name` is gone.
fn assert_namespace_gone(name: &str) {
    assert!(!flexos::netns::list().iter().any(|n| n == name), "namespace {name} left behind");
}

/// An image reached through the 127.0.0.1 forwarder; killed on drop.
struct Forwarded {
    child: common::Running,
    port: u16,
}

impl Forwarded {
    fn start(config: &str, args: &[&str], tag: &str) -> Forwarded {
        let mut child = common::Running::spawn(
            Command::new(image(config))
                .args(args)
                .env("FLEXOS_TEST_TAG", tag)
                .env_remove("FLEXOS_NET")
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(stdout);
            while std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) > 0 {
                if let Some(addr) = line.trim().strip_prefix("listening: 127.0.0.1:") {
                    let _ = tx.send(addr.parse::<u16>().unwrap());
                }
                line.clear();
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).expect("the image prints `listening: 127.0.0.1:PORT`");
        Forwarded { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn assert_running(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the image died");
    }
}

/// Sends `request` and reads until `reply_len` bytes or the connection closes.
fn exchange(s: &mut TcpStream, request: &[u8], reply_len: usize) -> Vec<u8> {
    s.write_all(request).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while reply.len() < reply_len {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => break,
            Err(_) => break,
        }
    }
    reply
}

/// Reads until the peer closes (or resets, or `timeout` passes); returns what came.
fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Sends, on a fresh connection, a request of up to `max_pieces` random
/// `pieces`, closes the sending side and waits briefly for what comes back.
fn send_fuzzed_request(server: &Forwarded, pieces: &[&[u8]], max_pieces: u64, state: &mut u64) {
    let mut s = server.connect();
    let mut req = Vec::new();
    for _ in 0..(xorshift(state) % max_pieces) {
        req.extend_from_slice(pieces[(xorshift(state) % pieces.len() as u64) as usize]);
    }
    let _ = s.write_all(&req);
    let _ = s.shutdown(Shutdown::Write);
    let _ = read_to_close(&mut s, Duration::from_millis(200));
}

/// The tests of a plain `redis-benchmark` run (Redis 7.0).
const REDIS_BENCHMARK_TESTS: &[&str] = &[
    "PING_INLINE",
    "PING_MBULK",
    "SET",
    "GET",
    "INCR",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "SADD",
    "HSET",
    "SPOP",
    "ZADD",
    "ZPOPMIN",
    "LPUSH (needed to benchmark LRANGE)",
    "LRANGE_100 (first 100 elements)",
    "LRANGE_300 (first 300 elements)",
    "LRANGE_500 (first 500 elements)",
    "LRANGE_600 (first 600 elements)",
    "MSET (10 keys)",
];

fn run_redis_benchmark(server: &Server, extra: &[&str]) -> Vec<(String, f64)> {
    let mut args: Vec<String> =
        vec!["-h".into(), server.host.clone(), "-p".into(), server.port.to_string(), "--csv".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = server.ns.exec("redis-benchmark").args(&args).stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {stderr}");
    assert!(!stderr.contains("rror"), "redis-benchmark saw errors: {stderr}");
    netbench::parse_redis_csv(&String::from_utf8_lossy(&out.stdout))
}

fn assert_every_test_ran(results: &[(String, f64)], config: &str) {
    for test in REDIS_BENCHMARK_TESTS {
        let found = results.iter().find(|(t, _)| t == test);
        assert!(found.is_some_and(|(_, rps)| *rps > 0.0), "{config}: test {test} missing or failed: {results:?}");
    }
}

#[test]
fn tap_plain_redis_benchmark_passes_every_test_on_every_layout() {
    let tag = tag("redis-benchmark");
    let _cleanup = common::Cleanup(tag.clone());
    let mut configs = vec!["configs/kv.toml", "configs/kv-net.toml", "configs/kv-app.toml", "configs/kv-net-proc.toml"];
    // Stack, server and the rest under three protection keys, where the CPU has them (tests/mpk.rs covers the rest).
    if flexos_platform::pkey::available().is_ok() {
        configs.push("configs/kv-mpk.toml");
    }
    for config in configs {
        let mut server = Server::image(&image(config), &[], &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
        let ns = server.ns.name.clone();
        let plain = run_redis_benchmark(&server, &["-n", "2000"]);
        assert_every_test_ran(&plain, config);
        let pipelined = run_redis_benchmark(&server, &["-n", "20000", "-P", "16"]);
        assert_every_test_ran(&pipelined, config);
        // The data the benchmark left is there: a real data set, not canned replies.
        let dbsize = server
            .client(
                "redis-cli",
                &["-h".into(), server.host.clone(), "-p".into(), server.port.to_string(), "dbsize".into()],
            )
            .unwrap();
        assert!(dbsize.trim().parse::<u64>().unwrap() > 0, "{config}: DBSIZE {dbsize:?}");
        assert!(server.is_running(), "{config}: the image died");
        drop(server);
        assert_namespace_gone(&ns);
    }
    assert_nothing_left(&tag);
}

#[test]
fn redis_cli_interactive_session_works_through_the_forwarder() {
    let tag = tag("redis-cli");
    let _cleanup = common::Cleanup(tag.clone());
    let kv = Forwarded::start("configs/kv.toml", &["--port", "16379"], &tag);
    // redis-cli is interactive on a terminal: `script` gives it one (a dumb one, so it prints plain prompts).
    let mut cli = common::Running::spawn(
        Command::new("script")
            .args(["-qec", &format!("redis-cli -p {}", kv.port), "/dev/null"])
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut stdin = cli.stdin.take().unwrap();
    stdin.write_all(b"ping\nset greeting hello\nappend greeting \" world\"\nget greeting\nincrby n 41\nincr n\nrpush l a b c\nlrange l 0 -1\nexpire greeting 100\nttl greeting\ndbsize\nnosuchcommand\nquit\n").unwrap();
    drop(stdin);
    let mut text = String::new();
    cli.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    cli.wait().unwrap();
    let text = text.replace('\r', "");
    let prompt = format!("127.0.0.1:{}> ", kv.port);
    for expected in [
        format!("{prompt}PONG"),
        format!("{prompt}OK"),
        format!("{prompt}(integer) 11"),
        format!("{prompt}\"hello world\""),
        format!("{prompt}(integer) 42"),
        format!("{prompt}1) \"a\"\n2) \"b\"\n3) \"c\""),
        format!("{prompt}(integer) 100"),
        format!("{prompt}(integer) 3"),
        format!("{prompt}(error) ERR unknown command 'nosuchcommand'"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in the session:\n{text}");
    }
    drop(kv);
    assert_nothing_left(&tag);
}

#[test]
fn malformed_and_abandoned_requests_never_stop_the_kv_server() {
    let tag = tag("kv-malformed");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16380"], &tag);
    let mut healthy = kv.connect();
    assert_eq!(exchange(&mut healthy, b"SET k v\r\n", 5), b"+OK\r\n");

    // A protocol error gets a RESP error, and that connection is closed.
    let mut bad = kv.connect();
    bad.write_all(b"*1\r\n$x\r\n").unwrap();
    let (reply, closed) = read_to_close(&mut bad, Duration::from_secs(10));
    assert!(reply.starts_with(b"-ERR Protocol error"), "{}", String::from_utf8_lossy(&reply));
    assert!(closed, "the connection with the malformed request stays open");

    // A client that disconnects mid-request, and one that resets.
    let mut half = kv.connect();
    half.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$100\r\nabc").unwrap();
    drop(half);
    // Closing with an unread reply makes this side's kernel send a reset.
    let mut reset = kv.connect();
    reset.write_all(b"PING\r\n*2\r\n$3\r\nGET\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(reset);

    // Fuzzed requests: RESP-shaped garbage on fresh connections.
    let pieces: &[&[u8]] = &[
        b"*",
        b"$",
        b"\r\n",
        b"3",
        b"-1",
        b"99999999999",
        b"SET",
        b"GET",
        b"k",
        b"\x00\xff",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b" ",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..300 {
        send_fuzzed_request(&kv, pieces, 12, &mut state);
        if round % 50 == 0 {
            assert_eq!(exchange(&mut healthy, b"GET k\r\n", 7), b"$1\r\nv\r\n", "after fuzz round {round}");
        }
    }
    kv.assert_running();
    assert_eq!(exchange(&mut healthy, b"PING\r\n", 7), b"+PONG\r\n");
    assert_eq!(exchange(&mut kv.connect(), b"GET k\r\n", 7), b"$1\r\nv\r\n");
    drop(kv);
    assert_nothing_left(&tag);
}

/// A RESP multibulk request.
fn resp_request(args: &[&[u8]]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    req
}

/// A client that sends requests and never reads the replies holds at most
/// its output limit: the server neither aborts nor loses data (before:
/// `memory allocation of 553648128 bytes failed`, every key lost).
#[test]
fn a_client_that_never_reads_cannot_exhaust_the_server() {
    let tag = tag("kv-slow-client");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16382"], &tag);
    let mut c = kv.connect();
    assert_eq!(exchange(&mut c, b"SET keep me\r\n", 5), b"+OK\r\n");
    // A list of 20,000 items of 100 bytes (2 MB in one LRANGE reply).
    let item = [b'x'; 100];
    let mut fill = Vec::new();
    for _ in 0..20 {
        let mut args: Vec<&[u8]> = vec![b"RPUSH", b"biglist"];
        args.extend(std::iter::repeat_n(&item[..], 1000));
        fill.extend(resp_request(&args));
    }
    let replies = exchange(&mut c, &fill, 9 * 7 + 11 * 8);
    assert!(String::from_utf8_lossy(&replies).ends_with(":20000\r\n"), "{}", String::from_utf8_lossy(&replies));
    // 600 LRANGEs of the whole list (1.2 GB of replies) on a connection that is never read.
    let mut slow = kv.connect();
    let lrange = resp_request(&[b"LRANGE", b"biglist", b"0", b"-1"]);
    slow.write_all(&lrange.repeat(600)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    kv.assert_running();
    let mut fresh = kv.connect();
    assert_eq!(exchange(&mut fresh, b"PING\r\n", 7), b"+PONG\r\n");
    assert_eq!(exchange(&mut fresh, b"GET keep\r\n", 8), b"$2\r\nme\r\n");
    drop(slow);
    drop(kv);

    // One reply beyond the output limit closes that connection, and only that one.
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16383", "--output-limit", "1048576"], &tag);
    let mut c = kv.connect();
    let replies = exchange(&mut c, &fill, 9 * 7 + 11 * 8);
    assert!(String::from_utf8_lossy(&replies).ends_with(":20000\r\n"));
    let mut big = kv.connect();
    big.write_all(&lrange).unwrap();
    let (reply, closed) = read_to_close(&mut big, Duration::from_secs(10));
    assert!(closed && reply.is_empty(), "{} bytes, closed: {closed}", reply.len());
    assert_eq!(exchange(&mut c, b"LLEN biglist\r\n", 8), b":20000\r\n");
    kv.assert_running();
    drop(kv);
    assert_nothing_left(&tag);
}

/// CPU time (user + system, in clock ticks) and open descriptors of process `pid`.
fn cpu_ticks_and_fds(pid: u32) -> (u64, usize) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (ticks, std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count())
}

/// Connections that the image ends with an error while their clients
/// still send, or that the clients close at once, leave nothing behind in
/// the 127.0.0.1 forwarder (before: it spun at 100% CPU on their hang-ups
/// and kept a descriptor for each), and a client still sending gets the
/// error reply before its connection is reset, as from Redis.
#[test]
fn connections_ended_with_an_error_leave_nothing_behind_in_the_forwarder() {
    let tag = tag("kv-forwarder-hangup");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16386"], &tag);
    let pid = kv.child.id();
    assert_eq!(exchange(&mut kv.connect(), b"PING\r\n", 7), b"+PONG\r\n");
    std::thread::sleep(Duration::from_millis(200));
    let (_, fds_before) = cpu_ticks_and_fds(pid);
    for _ in 0..20 {
        // Too big an inline request, then the client closes without reading.
        let mut s = kv.connect();
        let _ = s.write_all(&[b'A'; 204_800]);
        drop(s);
    }
    // A bulk over the limit: the client is still sending 70 MB when the error comes.
    let mut s = kv.connect();
    let mut request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$70000000\r\n".to_vec();
    request.resize(request.len() + 70_000_000, b'x');
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = s.write_all(&request);
    assert!(sent.is_err(), "the connection is reset while the client sends");
    let (reply, _) = read_to_close(&mut s, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&reply), "-ERR Protocol error: invalid bulk length\r\n");
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    let (ticks, _) = cpu_ticks_and_fds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let (ticks_after, fds_after) = cpu_ticks_and_fds(pid);
    // Clock ticks are USER_HZ, 100 per second on Linux: 5% of 2 s is 10.
    assert!(
        ticks_after - ticks < 10,
        "the image used {} ticks of CPU in 2 s after the clients left",
        ticks_after - ticks
    );
    assert_eq!(fds_after, fds_before, "descriptors before and after the connections");
    kv.assert_running();
    assert_eq!(exchange(&mut kv.connect(), b"PING\r\n", 7), b"+PONG\r\n");
    drop(kv);
    assert_nothing_left(&tag);
}

/// A client program in Python with room for thousands of sockets (a test
/// process may have a limit of 1,024 descriptors).
fn python_with_many_sockets(script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "ulimit -n 4096 2>/dev/null; exec python3 -c \"$0\"", script]);
    cmd
}

/// [`python_with_many_sockets`] for the Python file `path`, with `args`.
fn python_file_with_many_sockets(path: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "ulimit -n 4096 2>/dev/null; exec python3 \"$@\"", "python3", path]).args(args);
    cmd
}

/// 1,000 clients connected at once through the 127.0.0.1 forwarder are all
/// served (before: about 100 were, the others got EOF): the relay opens
/// its connections to the image a few at a time, and the image keeps its
/// listening endpoints topped up and drops (not refuses) connection
/// requests it cannot take yet.
#[test]
fn a_thousand_concurrent_clients_are_served_through_the_forwarder() {
    let tag = tag("kv-thousand");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16387"], &tag);
    // A client process of its own: 1,000 sockets need more descriptors than a test may have.
    let script = format!(
        "import socket\nsocks=[socket.create_connection(('127.0.0.1',{}),timeout=30) for _ in range(1000)]\n\
         ok=0\nfor s in socks:\n    s.sendall(b'PING\\r\\n')\n    ok+=s.recv(16)==b'+PONG\\r\\n'\nprint(ok)\n",
        kv.port
    );
    let out = python_with_many_sockets(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000", "clients answered of 1000");
    kv.assert_running();
    drop(kv);
    assert_nothing_left(&tag);
}

#[test]
fn a_flood_of_connections_beyond_the_limit_is_refused_cleanly() {
    let tag = tag("kv-flood");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16381", "--max-connections", "8"], &tag);
    // All at once: a client the image refuses waits (the relay tries again
    // for two seconds) and then loses its connection.
    let mut open: Vec<TcpStream> = (0..60).filter_map(|_| TcpStream::connect(("127.0.0.1", kv.port)).ok()).collect();
    for s in &mut open {
        let _ = s.write_all(b"PING\r\n");
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut served = 0;
    for s in &mut open {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        let mut reply = [0u8; 7];
        if s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
            served += 1;
        }
    }
    assert!((1..=8).contains(&served), "{served} connections served with a limit of 8");
    kv.assert_running();
    drop(open);
    // Once the flood is gone, new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = kv.connect();
        if exchange(&mut s, b"PING\r\n", 7) == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no connection served after the flood");
        std::thread::sleep(Duration::from_millis(200));
    }
    kv.assert_running();
    drop(kv);
    assert_nothing_left(&tag);
}

/// A client that comes while the image is at its connection limit waits
/// (the relay tries again, as a client's own retransmitted connection
/// requests would) and is served as soon as a connection closes; before,
/// the relay closed it at once with nothing sent, and the test's last
/// client got no reply.
#[test]
fn a_client_beyond_the_limit_is_served_when_a_connection_closes() {
    let tag = tag("kv-beyond-limit");
    let _cleanup = common::Cleanup(tag.clone());
    let mut kv = Forwarded::start("configs/kv.toml", &["--port", "16388", "--max-connections", "8"], &tag);
    let mut served = Vec::new();
    let mut beyond = loop {
        let mut s = kv.connect();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        if exchange(&mut s, b"PING\r\n", 7) != b"+PONG\r\n" {
            break s;
        }
        served.push(s);
        assert!(served.len() <= 8, "more connections served than the limit of 8");
    };
    assert!(!served.is_empty(), "no connection served");
    drop(served.pop());
    beyond.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; 7];
    beyond.read_exact(&mut reply).expect("the waiting client is served once a connection closed");
    assert_eq!(&reply, b"+PONG\r\n");
    kv.assert_running();
    drop((served, beyond, kv));
    assert_nothing_left(&tag);
}

/// Reads one RESP reply and writes it as text; the elements of arrays
/// that `sorted` names (replies whose order Redis does not define) are sorted.
fn read_reply(r: &mut impl std::io::BufRead, sorted: bool) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end_matches("\r\n").to_string();
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "$" => {
            let n: i64 = rest.parse().unwrap_or_else(|_| panic!("bad bulk header {line:?}"));
            if n < 0 {
                return "(nil)".into();
            }
            let mut data = vec![0u8; n as usize + 2];
            r.read_exact(&mut data).unwrap();
            format!("{:?}", String::from_utf8_lossy(&data[..n as usize]))
        }
        "*" => {
            let n: i64 = rest.parse().unwrap_or_else(|_| panic!("bad array header {line:?}"));
            if n < 0 {
                return "(nil array)".into();
            }
            let mut items: Vec<String> = (0..n).map(|_| read_reply(r, false)).collect();
            if sorted {
                items.sort();
            }
            format!("[{}]", items.join(", "))
        }
        _ => line,
    }
}

/// Every element a full SCAN-style iteration (`command` with `{}` for the
/// cursor) returns, sorted, and how many of them came more than once.
fn scan_all(r: &mut std::io::BufReader<TcpStream>, command: &str) -> (Vec<String>, usize) {
    let mut cursor = "0".to_string();
    let mut all = Vec::new();
    loop {
        r.get_mut().write_all(format!("{}\r\n", command.replace("{}", &cursor)).as_bytes()).unwrap();
        let mut header = String::new();
        r.read_line(&mut header).unwrap();
        assert_eq!(header, "*2\r\n", "{command}");
        cursor = read_reply(r, false).trim_matches('"').to_string();
        let elements = read_reply(r, false);
        all.extend(elements.trim_matches(['[', ']']).split(", ").filter(|e| !e.is_empty()).map(str::to_owned));
        if cursor == "0" {
            break;
        }
    }
    all.sort();
    let before = all.len();
    all.dedup();
    (all.clone(), before - all.len())
}

/// The same commands against the kv image and the real `redis-server`,
/// reply by reply: the commands real clients use, the new ones, inline
/// requests with quotes, errors and transactions.
#[test]
fn kv_replies_as_redis_server_does() {
    let tag = tag("kv-vs-redis");
    let _cleanup = common::Cleanup(tag.clone());
    let kv = Forwarded::start("configs/kv.toml", &["--port", "16384"], &tag);
    let redis_port = 16385;
    let _redis = common::Running::spawn(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .env("FLEXOS_TEST_TAG", &tag)
            .stdout(Stdio::null()),
    );
    let connect_redis = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", redis_port)) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            assert!(Instant::now() < deadline, "redis-server does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut ours = std::io::BufReader::new(kv.connect());
    let mut theirs = std::io::BufReader::new(connect_redis());
    // (request, whether its reply's array order is undefined)
    let script: &[(&str, bool)] = &[
        ("FLUSHALL", false),
        ("SET greeting \"hello world\"", false),
        ("GET greeting", false),
        ("SET quoted 'it\\'s' ", false),
        ("GET quoted", false),
        ("ECHO \"tab\\there\\x41\"", false),
        ("NOSUCH a b", false),
        ("nosuch", false),
        ("GET", false),
        ("SET k", false),
        ("MSET user:1 a user:2 b user:3 c user:10 d other e", false),
        ("KEYS user:*", true),
        ("KEYS user:?", true),
        ("KEYS user:[12]", true),
        ("KEYS user:[^1]*", true),
        ("KEYS *", true),
        ("SETNX user:1 z", false),
        ("SETNX fresh z", false),
        ("SET s \"Hello World\"", false),
        ("GETRANGE s 0 4", false),
        ("GETRANGE s -5 -1", false),
        ("GETRANGE s 5 2", false),
        ("GETRANGE s 0 100", false),
        ("GETRANGE nokey 0 -1", false),
        ("GETRANGE s x 1", false),
        ("SETRANGE s 6 Redis", false),
        ("GET s", false),
        ("SETRANGE pad 3 x", false),
        ("GET pad", false),
        ("SETRANGE none 0 \"\"", false),
        ("EXISTS none", false),
        ("SETRANGE s -1 x", false),
        ("HSET h f 5 g v", false),
        ("HINCRBY h f 10", false),
        ("HINCRBY h new -3", false),
        ("HINCRBY h g 1", false),
        ("HINCRBY h f x", false),
        ("HINCRBY s f 1", false),
        ("HGETALL h", true),
        ("RPUSH l a b c", false),
        ("LSET l 1 B", false),
        ("LSET l -1 C", false),
        ("LSET l 5 x", false),
        ("LSET nolist 0 x", false),
        ("LSET s 0 x", false),
        ("LRANGE l 0 -1", false),
        ("LPOP l 2", false),
        ("RPOP nolist 2", false),
        ("APPEND greeting !", false),
        ("STRLEN greeting", false),
        ("INCRBYFLOAT f 10.5", false),
        ("INCRBYFLOAT f 1.5e3", false),
        ("ZADD z 1.5 a 2 b", false),
        ("ZRANGE z 0 -1 WITHSCORES", false),
        ("SADD set x", false),
        ("SPOP set 5", false),
        ("TYPE h", false),
        ("TTL greeting", false),
        ("MULTI", false),
        ("SET t 1", false),
        ("INCR t", false),
        ("PING", false),
        ("EXEC", false),
        ("EXEC", false),
        ("DISCARD", false),
        ("MULTI", false),
        ("MULTI", false),
        ("INCR t", false),
        ("DISCARD", false),
        ("GET t", false),
        ("MULTI", false),
        ("INCR t", false),
        ("GET", false),
        ("EXEC", false),
        ("MULTI", false),
        ("NOSUCH", false),
        ("EXEC", false),
        ("GET t", false),
        ("SCAN x", false),
        ("SCAN 0 COUNT 0", false),
        ("SSCAN h 0", false),
        ("DBSIZE", false),
    ];
    for (request, sorted) in script {
        let line = format!("{request}\r\n");
        ours.get_mut().write_all(line.as_bytes()).unwrap();
        theirs.get_mut().write_all(line.as_bytes()).unwrap();
        let (a, b) = (read_reply(&mut ours, *sorted), read_reply(&mut theirs, *sorted));
        assert_eq!(a, b, "{request}: kv replied {a}, redis-server {b}");
    }
    // Multibulk requests, with binary-safe arguments.
    for args in [&[&b"SET"[..], b"bin", b"a\r\nb \"c\""][..], &[b"GET", b"bin"], &[b"FOO", b"x y", b"z"]] {
        let req = resp_request(args);
        ours.get_mut().write_all(&req).unwrap();
        theirs.get_mut().write_all(&req).unwrap();
        let (a, b) = (read_reply(&mut ours, false), read_reply(&mut theirs, false));
        assert_eq!(a, b, "{args:?}");
    }
    // Full scans: every key, member and field exactly once, as Redis.
    for i in 0..300 {
        let line = format!("SET scan:{i} v\r\nSADD bigset m{i}\r\nHSET bighash f{i} {i}\r\n");
        for side in [&mut ours, &mut theirs] {
            side.get_mut().write_all(line.as_bytes()).unwrap();
            for _ in 0..3 {
                read_reply(side, false);
            }
        }
    }
    for command in ["SCAN {} MATCH scan:* COUNT 20", "SSCAN bigset {} COUNT 15", "HSCAN bighash {} MATCH f1*"] {
        let (a, repeated) = scan_all(&mut ours, command);
        let (b, _) = scan_all(&mut theirs, command);
        assert_eq!(repeated, 0, "{command}: elements returned twice");
        assert_eq!(a, b, "{command}");
        assert!(!a.is_empty());
    }
    // Unbalanced quotes: a protocol error, and the connection is closed.
    for side in [ours.get_mut(), theirs.get_mut()] {
        side.write_all(b"SET x \"open\r\n").unwrap();
    }
    let (a, _) = read_to_close(ours.get_mut(), Duration::from_secs(10));
    let (b, _) = read_to_close(theirs.get_mut(), Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    drop(kv);
}

fn curl(server: &Server, args: &[&str]) -> (String, String) {
    let out = server.ns.exec("curl").args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn tap_curl_ab_and_wrk_get_correct_responses() {
    let tag = tag("httpd");
    let _cleanup = common::Cleanup(tag.clone());
    let site = flexos::workspace_root().join("apps/httpd/site");
    for config in ["configs/httpd.toml", "configs/httpd-app.toml"] {
        let mut server = Server::image(&image(config), &[], &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
        let ns = server.ns.name.clone();
        let base = format!("http://{}:{}", server.host, server.port);
        let index = std::fs::read_to_string(site.join("index.html")).unwrap();

        let (out, _) = curl(&server, &["-s", "-i", &format!("{base}/")]);
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/html"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", index.len())), "{head}");
        assert_eq!(body, index);

        let (out, _) = curl(&server, &["-s", "-I", &format!("{base}/style.css")]);
        assert!(out.starts_with("HTTP/1.1 200 OK") && out.contains("Content-Type: text/css"), "{out}");
        let css = std::fs::metadata(site.join("style.css")).unwrap().len();
        assert!(out.contains(&format!("Content-Length: {css}")) && out.ends_with("\r\n\r\n"), "{out}");

        let (out, _) = curl(&server, &["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/missing")]);
        assert_eq!(out, "404");
        let (out, _) = curl(&server, &["-s", "-i", "-X", "DELETE", &format!("{base}/")]);
        assert!(out.starts_with("HTTP/1.1 405") && out.contains("Allow: GET, HEAD"), "{out}");

        // Keep-alive: two requests on one connection, and a binary file byte for byte.
        let (out, err) = curl(&server, &["-sv", &format!("{base}/docs/about.txt"), &format!("{base}/data-16k.bin")]);
        assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing"), "{err}");
        let about = std::fs::read_to_string(site.join("docs/about.txt")).unwrap();
        assert!(out.starts_with(&about));
        let bin = server.ns.exec("curl").args(["-s", &format!("{base}/data-16k.bin")]).output().unwrap().stdout;
        assert_eq!(bin, std::fs::read(site.join("data-16k.bin")).unwrap());

        let ab = server
            .client(
                "ab",
                &[
                    "-q".into(),
                    "-n".into(),
                    "500".into(),
                    "-c".into(),
                    "10".into(),
                    "-k".into(),
                    format!("{base}/index.html"),
                ],
            )
            .unwrap();
        assert!(ab.contains("Complete requests:      500"), "{ab}");
        assert!(ab.contains("Failed requests:        0"), "{ab}");
        assert!(!ab.contains("Non-2xx"), "{ab}");

        let wrk = server
            .client(
                "wrk",
                &[
                    "-t".into(),
                    "1".into(),
                    "-c".into(),
                    "8".into(),
                    "-d".into(),
                    "1s".into(),
                    format!("{base}/index.html"),
                ],
            )
            .unwrap();
        assert!(netbench::parse_wrk(&wrk).is_some_and(|r| r > 0.0), "{wrk}");
        assert!(!wrk.contains("Non-2xx") && !wrk.contains("Socket errors"), "{wrk}");

        assert!(server.is_running(), "{config}: the image died");
        drop(server);
        assert_namespace_gone(&ns);
    }
    assert_nothing_left(&tag);
}

#[test]
fn malformed_http_requests_get_400_and_the_server_keeps_serving() {
    let tag = tag("httpd-malformed");
    let _cleanup = common::Cleanup(tag.clone());
    let mut httpd = Forwarded::start("configs/httpd.toml", &["--port", "18080"], &tag);
    let mut bad = httpd.connect();
    bad.write_all(b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n").unwrap();
    let (reply, closed) = read_to_close(&mut bad, Duration::from_secs(10));
    assert!(reply.starts_with(b"HTTP/1.1 400 Bad Request"), "{}", String::from_utf8_lossy(&reply));
    assert!(closed);

    let mut half = httpd.connect();
    half.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\nUser-Ag").unwrap();
    drop(half);

    let pieces: &[&[u8]] = &[
        b"GET ",
        b"HEAD ",
        b"/",
        b"index.html",
        b" HTTP/1.1",
        b"\r\n",
        b"Host: a",
        b"%",
        b"%zz",
        b"Content-Length: 5",
        b"\x00",
        b"\xff",
        b" ",
    ];
    let mut state = 0x853c_49e6_748f_ea9bu64;
    for _ in 0..300 {
        send_fuzzed_request(&httpd, pieces, 14, &mut state);
    }
    httpd.assert_running();
    let mut s = httpd.connect();
    let reply = exchange(&mut s, b"GET /docs/about.txt HTTP/1.0\r\n\r\n", usize::MAX);
    assert!(reply.starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&reply));
    drop(httpd);
    assert_nothing_left(&tag);
}

/// Slowloris: 1,100 connections, each sending a request head one byte per
/// second (and reconnecting when dropped), against httpd with its default
/// limit of 1,024 connections. Real requests made during the attack are
/// all answered (before: every one was closed without a reply for as long
/// as the attack lasted). And an HTTP/1.1 request without Host gets 400.
#[test]
fn httpd_keeps_serving_during_a_slowloris_attack() {
    let tag = tag("httpd-slowloris");
    let _cleanup = common::Cleanup(tag.clone());
    let mut httpd = Forwarded::start("configs/httpd.toml", &["--port", "18081"], &tag);
    let mut s = httpd.connect();
    let reply = exchange(&mut s, b"GET /index.html HTTP/1.1\r\n\r\n", usize::MAX);
    assert!(reply.starts_with(b"HTTP/1.1 400 Bad Request"), "{}", String::from_utf8_lossy(&reply));

    // 1,100 connections, one byte of a head each per second, reconnecting when dropped.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../slowloris-probe.py");
    let mut attacker = common::Running::spawn(
        python_file_with_many_sockets(script, &[&httpd.port.to_string(), "0"])
            .env("FLEXOS_TEST_TAG", &tag)
            .stdout(Stdio::null()),
    );
    std::thread::sleep(Duration::from_secs(4));
    let mut outcomes = Vec::new();
    let mut retries = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let attempt = || match TcpStream::connect(("127.0.0.1", httpd.port)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let request = b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                let reply = exchange(&mut s, request, usize::MAX);
                String::from_utf8_lossy(&reply[..reply.len().min(15)]).into_owned()
            }
            Err(e) => e.to_string(),
        };
        // Like a browser, a client retries an idempotent GET once when the
        // connection closes before any reply (a busy server's eviction can
        // catch a connection whose request has not arrived yet).
        let mut outcome = attempt();
        if outcome.is_empty() {
            retries += 1;
            outcome = format!("{} (retried)", attempt());
        }
        outcomes.push(format!("{outcome} ({:?})", start.elapsed()));
    }
    assert!(attacker.try_wait().unwrap().is_none(), "the attack ran all along");
    let answered = outcomes.iter().filter(|o| o.starts_with("HTTP/1.1 200 OK")).count();
    assert_eq!(answered, 20, "real requests answered during the attack: {outcomes:?}");
    assert!(retries <= 2, "at most two of 20 requests needed a second try: {outcomes:?}");
    httpd.assert_running();
    drop(attacker);
    drop(httpd);

    // The timeouts themselves: an incomplete head, and an idle keep-alive connection.
    let httpd = Forwarded::start(
        "configs/httpd.toml",
        &["--port", "18082", "--header-timeout", "1", "--idle-timeout", "2"],
        &tag,
    );
    let mut partial = httpd.connect();
    partial.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut idle = httpd.connect();
    let reply = exchange(&mut idle, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 15);
    assert!(reply.starts_with(b"HTTP/1.1 200 OK"));
    let (rest, closed) = read_to_close(&mut partial, Duration::from_secs(10));
    assert!(closed && rest.is_empty(), "an incomplete head is dropped after its timeout");
    let (_, closed) = read_to_close(&mut idle, Duration::from_secs(10));
    assert!(closed, "an idle connection is closed after its timeout");
    drop(httpd);
    assert_nothing_left(&tag);
}

#[test]
fn tap_iperf_client_reports_a_rate() {
    let tag = tag("iperf");
    let _cleanup = common::Cleanup(tag.clone());
    for config in ["configs/iperf.toml", "configs/iperf-net.toml"] {
        let server =
            Server::image(&image(config), &["--recv-size".into(), "1024".into()], &[("FLEXOS_TEST_TAG", &tag)])
                .unwrap();
        let ns = server.ns.name.clone();
        iperf_stream_is_received(&server, config, 1);
        drop(server);
        assert_namespace_gone(&ns);
    }
    assert_nothing_left(&tag);
}

/// One `iperf -c` stream of a second into `server`: the client reports a
/// rate, and the image the stream's bytes (its `received:` line number `n`).
fn iperf_stream_is_received(server: &Server, what: &str, n: usize) {
    let args = ["-c", &server.host, "-p", &server.port.to_string(), "-t", "1", "-f", "m"].map(String::from);
    let out = server.client("iperf", &args).unwrap();
    let rate = netbench::parse_iperf(&out);
    assert!(rate.is_some_and(|r| r > 0.0), "{what}: {out}");
    // The image saw the bytes too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = loop {
        let lines = server.output.lock().unwrap().clone();
        if let Some(l) = lines.iter().filter(|l| l.starts_with("received: ")).nth(n - 1) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "{what}: the image reported no stream: {lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let bytes: u64 = received["received: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 1_000_000, "{what}: {received}");
}

/// TCP buffers larger than the heap can hold for every endpoint the limit
/// allows (16 MiB each way, 64 endpoints: 2 GiB against a heap of 704 MiB)
/// make only the endpoints that fit, and the image serves with them. Before
/// `new_endpoint` asked the heap, this configuration aborted the image at
/// start-up ("memory allocation of 16777216 bytes failed").
#[test]
fn buffers_too_large_for_the_heap_cost_endpoints_not_the_image() {
    let tag = tag("iperf-big");
    let _cleanup = common::Cleanup(tag.clone());
    let args = ["--buffer-size", "16777216", "--max-connections", "64"].map(String::from);
    let mut server = Server::image(&image("configs/iperf.toml"), &args, &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
    let ns = server.ns.name.clone();
    for n in 1..=2 {
        iperf_stream_is_received(&server, "16 MiB buffers", n);
    }
    assert!(server.is_running(), "the image still runs");
    drop(server);
    assert_namespace_gone(&ns);
    assert_nothing_left(&tag);
}

/// The tap backend with segmentation offload (crates/platform-linux/src/net/tap.rs):
/// an 8 MiB value sent to the image reaches it intact, in segments the
/// kernel did not cut to the link's 1500 bytes, and comes back intact.
#[test]
fn tap_large_values_arrive_intact_in_large_segments() {
    let tag = tag("tap-large");
    let _cleanup = common::Cleanup(tag.clone());
    let mut server = Server::image(&image("configs/kv.toml"), &[], &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
    let script = r#"
import hashlib, os, socket, sys
def frames_sent():
    with open("/sys/class/net/%s/statistics/tx_packets" % sys.argv[3]) as f:
        return int(f.read())
value = os.urandom(8 << 20)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
f = s.makefile("rb")
before = frames_sent()
s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % len(value) + value + b"\r\n")
assert f.readline() == b"+OK\r\n"
print(frames_sent() - before)
s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
assert f.readline() == b"$%d\r\n" % len(value)
back = f.read(len(value) + 2)
print("intact" if back == value + b"\r\n" else "changed: %s vs %s" % (hashlib.sha256(back[:-2]).hexdigest(), hashlib.sha256(value).hexdigest()))
"#;
    let args = ["-c", script, &server.host, &server.port.to_string(), flexos::netns::TAP].map(String::from);
    let out = server.client("python3", &args).unwrap();
    let (frames, verdict) = out.trim().split_once('\n').unwrap_or_else(|| panic!("{out}"));
    assert_eq!(verdict, "intact");
    // Frames the host sent to the image during the SET: at 1514 bytes each, 8 MiB would take over 5,700.
    let frames: u64 = frames.parse().unwrap();
    assert!(frames < 5_700 / 4, "{frames} frames carried 8 MiB: no segmentation offload");
    assert!(server.is_running());
    drop(server);
    assert_nothing_left(&tag);
}

/// Frames a tap hands over without the kernel's checksum note (sent onto
/// the tap by a packet socket, past the kernel's TCP) have their TCP
/// checksum checked by the image (the stack itself leaves TCP checksums to
/// the device): a connection request with a wrong one is ignored, the same
/// request with the right one is answered.
#[test]
fn tap_a_segment_with_a_wrong_checksum_is_ignored() {
    let tag = tag("tap-checksum");
    let _cleanup = common::Cleanup(tag.clone());
    let mut server = Server::image(&image("configs/kv.toml"), &[], &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/../tap-checksum-probe.py");
    let args = [probe, flexos::netns::TAP, flexos::netns::HOST_IP, &server.host, &server.port.to_string()];
    let out = server.client("python3", &args.map(String::from)).unwrap();
    assert_eq!(out, "wrong checksum: ignored\nright checksum: answered\n");
    assert!(server.is_running());
    drop(server);
    assert_nothing_left(&tag);
}

/// `flexos run` of a configuration whose image already runs starts a
/// second instance; a rebuild installs the new image beside the running one
/// and renames it over (writing into a running executable would fail with
/// "Text file busy").
#[test]
fn a_second_instance_runs_while_the_first_one_does_and_a_rebuild_replaces_the_image() {
    let tag = tag("two-instances");
    let _cleanup = common::Cleanup(tag.clone());
    let mut first = Forwarded::start("configs/kv.toml", &["--port", "16390"], &tag);
    assert_eq!(exchange(&mut first.connect(), b"SET k first\r\n", 5), b"+OK\r\n");
    // cargo's output is newer than the installed image: it must be installed again.
    let root = flexos::workspace_root();
    let layout = flexos_config::load(&root.join("configs/kv.toml")).unwrap();
    let options = flexos::build::BuildOptions { progress: false, ..Default::default() };
    let built = flexos::build::output_dir(&root, &layout, &options).join("cargo/release/flexos-kv");
    std::fs::File::options().write(true).open(&built).unwrap().set_modified(std::time::SystemTime::now()).unwrap();
    let mut second = common::Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_flexos"))
            .args(["run", "-q", "configs/kv.toml", "--", "--port", "16391"])
            .current_dir(&root)
            .env("FLEXOS_TEST_TAG", &tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(second.stdout.take().unwrap()), &mut line).unwrap();
    let mut err = String::new();
    if line.is_empty() {
        second.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    }
    let port: u16 = line
        .trim()
        .strip_prefix("listening: 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the second instance does not listen: {line:?} {err}"));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(exchange(&mut s, b"GET k\r\n", 5), b"$-1\r\n", "a second, empty data set");
    let installed = std::fs::metadata(image("configs/kv.toml")).unwrap().modified().unwrap();
    assert!(installed >= std::fs::metadata(&built).unwrap().modified().unwrap(), "the new build was installed");
    assert_eq!(exchange(&mut first.connect(), b"GET k\r\n", 11), b"$5\r\nfirst\r\n");
    first.assert_running();
    drop((first, second));
    assert_nothing_left(&tag);
}

#[test]
fn an_image_without_a_network_answers_with_a_clear_error() {
    let out = Command::new(image("configs/kv.toml"))
        .env("FLEXOS_NET", "tap:nosuchtap0:10.1.2.3/24:10.1.2.1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot open tap device \"nosuchtap0\""), "{stderr}");
    let out = Command::new(image("configs/kv.toml")).env("FLEXOS_NET", "tap:x").stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("FLEXOS_NET=\"tap:x\""), "{stderr}");
}

/// Starts `flexos run --netns configs/kv.toml` tagged `tag` and waits
/// until it says which namespace it made and the image listens; returns
/// the running tool (stopped on drop) and the namespace's name.
fn start_run_netns(tag: &str) -> (common::Running, String) {
    image("configs/kv.toml"); // built (and shared with the tool's build) before the tool runs
    let mut tool = common::Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_flexos"))
            .args(["run", "-q", "--netns", "configs/kv.toml"])
            .current_dir(flexos::workspace_root())
            .env("FLEXOS_TEST_TAG", tag)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stderr = std::io::BufReader::new(tool.stderr.take().unwrap());
    let mut line = String::new();
    let mut ns = None;
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
        if let Some(rest) = line.strip_prefix("network: namespace ") {
            ns = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
        line.clear();
    }
    let ns = ns.unwrap_or_else(|| panic!("no namespace line: {line}"));
    let mut stdout = std::io::BufReader::new(tool.stdout.take().unwrap());
    let mut listening = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut listening).unwrap();
    assert_eq!(listening.trim(), format!("listening: {}:6379", flexos::netns::IMAGE_IP));
    (tool, ns)
}

/// How [`tap_flexos_run_netns_cleans_up_after_the_image`] ends a run.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM to the image: the tool reports it and cleans up.
    TermImage,
    /// SIGINT to the tool alone (not from a terminal): passed on to the image.
    InterruptTool,
    /// SIGKILL to the tool: the image dies with it; the namespace stays until the next one is made.
    KillTool,
}

/// `flexos run --netns`: the tool makes the namespace, says how to reach
/// the image, and removes the namespace when the image ends; signals sent
/// to the tool reach the image; if the tool itself is killed, the image
/// dies with it and the next namespace made removes the stale one.
#[test]
fn tap_flexos_run_netns_cleans_up_after_the_image() {
    let tag = tag("run-netns");
    let _cleanup = common::Cleanup(tag.clone());
    for stop in [Stop::TermImage, Stop::InterruptTool, Stop::KillTool] {
        let (mut tool, ns) = start_run_netns(&tag);
        let pong = Command::new("ip")
            .args(["netns", "exec", &ns, "redis-cli", "-h", flexos::netns::IMAGE_IP, "ping"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&pong.stdout).trim(), "PONG");
        let image_pids: Vec<u32> = common::tagged_processes(&tag)
            .into_iter()
            .filter_map(|p| p.split(':').next().and_then(|p| p.parse().ok()))
            .filter(|p| *p != tool.id())
            .collect();
        assert_eq!(image_pids.len(), 1, "one image process: {image_pids:?}");
        match stop {
            Stop::KillTool => {
                tool.kill().unwrap();
                tool.wait().unwrap();
                assert_nothing_left(&tag); // the image died with the tool
                assert!(flexos::netns::list().contains(&ns), "a killed tool cannot remove its namespace");
                flexos::netns::remove_stale();
            }
            Stop::TermImage => {
                common::signal(image_pids[0], "TERM");
                let status = tool.wait().unwrap();
                assert_eq!(status.code(), Some(128 + 15), "the tool reports the image's SIGTERM");
            }
            Stop::InterruptTool => {
                common::signal(tool.id(), "INT");
                let status = tool.wait().unwrap();
                assert_eq!(status.code(), Some(128 + 2), "the image got the tool's SIGINT");
            }
        }
        assert_namespace_gone(&ns);
    }
    assert_nothing_left(&tag);
}

/// A test that fails while `flexos run --netns` runs leaves neither the
/// tool, nor the image, nor the namespace behind: the guard stops them.
#[test]
fn tap_a_failing_test_leaves_no_process_or_namespace_behind() {
    let tag = tag("failing-test");
    let _cleanup = common::Cleanup(tag.clone());
    let made = std::sync::Mutex::new(None);
    let failed = std::panic::catch_unwind(|| {
        let (_tool, ns) = start_run_netns(&tag);
        *made.lock().unwrap() = Some(ns);
        panic!("a test failing while the image runs (on purpose)");
    });
    assert!(failed.is_err());
    let ns = made.lock().unwrap().take().expect("the tool made a namespace");
    assert_nothing_left(&tag);
    assert_namespace_gone(&ns);
}

/// The other direction: the image connects (blocking `connect`, `send`,
/// `recv` parked in the scheduler) to a Linux `iperf -s` in its namespace.
#[test]
fn tap_the_image_connects_to_a_linux_server() {
    let tag = tag("iperf-client");
    let _cleanup = common::Cleanup(tag.clone());
    let server = Server::linux("iperf", &["-s", "-p", "5001"], 5001).unwrap();
    let target = format!("{}:5001", flexos::netns::HOST_IP);
    let out = server
        .ns
        .exec(&image("configs/iperf.toml").to_string_lossy())
        .args(["--client", &target, "1"])
        .env("FLEXOS_NET", server.ns.flexos_net())
        .env("FLEXOS_TEST_TAG", &tag)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let bytes: u64 =
        stdout.strip_prefix("sent: ").and_then(|r| r.split(' ').next()).and_then(|b| b.parse().ok()).unwrap_or(0);
    assert!(bytes > 1_000_000, "{stdout}");
    // Nobody listens on port 5002: the connection is refused, with a clear message.
    let out = server
        .ns
        .exec(&image("configs/iperf.toml").to_string_lossy())
        .args(["--client", &format!("{}:5002", flexos::netns::HOST_IP)])
        .env("FLEXOS_NET", server.ns.flexos_net())
        .env("FLEXOS_TEST_TAG", &tag)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("connect 172.31.77.1:5002: errno 111"), "{stderr}");
    let ns = server.ns.name.clone();
    drop(server);
    assert_namespace_gone(&ns);
    assert_nothing_left(&tag);
}

/// Blocking calls from several scheduler threads: the threaded iperf
/// server accepts in one thread and reads each stream in a thread of its
/// own; every blocked thread parks in the scheduler so the others run.
#[test]
fn tap_blocking_calls_park_scheduler_threads() {
    threaded_iperf_serves_two_streams("configs/iperf.toml");
    // The same with stack, server and scheduler under protection keys, each
    // thread with private stacks in every compartment, where the CPU has keys.
    if flexos_platform::pkey::available().is_ok() {
        threaded_iperf_serves_two_streams("configs/iperf-mpk.toml");
    }
}

fn threaded_iperf_serves_two_streams(config: &str) {
    let tag = tag("iperf-threads");
    let _cleanup = common::Cleanup(tag.clone());
    let args = ["--threads".to_string(), "5001".to_string()];
    let server = Server::image(&image(config), &args, &[("FLEXOS_TEST_TAG", &tag)]).unwrap();
    let client: Vec<String> =
        ["-c", &server.host, "-p", "5001", "-P", "2", "-t", "1", "-f", "m"].iter().map(|s| s.to_string()).collect();
    let out = server.client("iperf", &client).unwrap();
    assert!(netbench::parse_iperf(&out).is_some_and(|r| r > 0.0), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let streams = loop {
        let lines: Vec<String> =
            server.output.lock().unwrap().iter().filter(|l| l.starts_with("received: ")).cloned().collect();
        if lines.len() == 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "{config}: two streams expected: {lines:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let threads: Vec<&str> = streams.iter().filter_map(|l| l.rsplit_once("(thread ").map(|(_, t)| t)).collect();
    assert_eq!(threads.len(), 2);
    assert_ne!(threads[0], threads[1], "each stream in its own thread: {streams:?}");
    for l in &streams {
        let bytes: u64 = l["received: ".len()..].split(' ').next().unwrap().parse().unwrap();
        assert!(bytes > 100_000, "{l}");
    }
    let ns = server.ns.name.clone();
    drop(server);
    assert_namespace_gone(&ns);
    assert_nothing_left(&tag);
}
