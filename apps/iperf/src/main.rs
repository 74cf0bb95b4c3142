//! The iperf image: a TCP receive server for the `iperf` 2.x client
//! (`iperf -c HOST`): it accepts connections on port 5001, reads and
//! discards everything in reads of `--recv-size` bytes (the receive buffer
//! size, the axis of FlexOS's iperf figure), and prints one line per
//! connection when it ends:
//! `received: BYTES bytes in SECONDS s = RATE Mbit/s`.
//!
//! `flexos-iperf [--port P] [--recv-size BYTES] [--max-connections N] [--buffer-size BYTES]`
//! (defaults 5001, 128 KiB, 16, 1 MiB). The TCP window is the buffer: a
//! bulk receiver on a fast link needs a large one (Linux's receiver grows
//! its own up to `tcp_rmem`'s 6 MiB or more; docs/benchmarks.md, "iperf at
//! 16 KiB reads"). Every endpoint's buffers are made when it starts to
//! listen, so the 16 connections keep the 32 MiB that 64 of 256 KiB took.
//!
//! `flexos-iperf --threads PORT` serves each connection in a scheduler
//! thread of its own with blocking `accept` and `recv` (threads park in
//! `sched` while they wait), instead of the event loop.
//!
//! `flexos-iperf --client A.B.C.D:PORT [SECONDS]` is the other side: it
//! connects (a blocking `connect`) to an iperf 2 server, sends zeros with
//! blocking `send`s for SECONDS (default 1), closes, and prints
//! `sent: BYTES bytes in SECONDS s = RATE Mbit/s`.
#![forbid(unsafe_code)]

use flexos_netapp::{Context, Flow, Protocol};

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(IPERF);

fn main() {
    flexos_netapp::boot();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--threads") {
        let Some(port) = args.get(1).and_then(|p| p.parse::<u16>().ok()) else {
            eprintln!("usage: flexos-iperf --threads PORT");
            std::process::exit(2)
        };
        // Errors are printed in the application's compartment, whose heap holds them.
        flexos_gate::fcall(FLEXOS_COMPONENT.compartment, move || {
            if let Err(e) = threaded(port) {
                flexos_gate::errln!("flexos-iperf: {e}");
            }
        });
        std::process::exit(1)
    }
    if args.first().is_some_and(|a| a == "--client") {
        let target = args.get(1).and_then(|t| t.parse::<std::net::SocketAddrV4>().ok());
        let seconds = args.get(2).map_or(Some(1), |s| s.parse::<u64>().ok());
        let (Some(target), Some(seconds)) = (target, seconds) else {
            eprintln!("usage: flexos-iperf --client A.B.C.D:PORT [SECONDS]");
            std::process::exit(2)
        };
        let result = flexos_gate::fcall(FLEXOS_COMPONENT.compartment, move || {
            client(target, seconds).map_err(|e| flexos_gate::errln!("flexos-iperf: {e}")).ok()
        });
        match result {
            Some((bytes, secs)) => {
                println!("sent: {bytes} bytes in {secs:.3} s = {:.2} Mbit/s", bytes as f64 * 8.0 / secs / 1e6);
                std::process::exit(0)
            }
            None => std::process::exit(1),
        }
    }
    let defaults = flexos_netapp::Options {
        port: 5001,
        recv_size: 128 * 1024,
        max_connections: 16,
        buffer_size: 1024 * 1024,
        output_limit: flexos_netapp::DEFAULT_OUTPUT_LIMIT,
        timeouts: flexos_netapp::Timeouts::default(),
        gate_stats: false,
    };
    let options = flexos_netapp::options("flexos-iperf", defaults);
    flexos_netapp::run::<{ FLEXOS_COMPONENT.compartment }, _, _>(flexos_gate::me!(), "flexos-iperf", options, || Iperf)
}

/// The receive server.
struct Iperf;

/// One test stream.
#[derive(Default)]
struct Stream {
    bytes: u64,
    first_ms: Option<u64>,
    last_ms: u64,
}

impl Protocol for Iperf {
    type Conn = Stream;

    fn input(&mut self, s: &mut Stream, input: &[u8], _: &mut Vec<u8>, cx: &Context) -> Flow {
        s.first_ms.get_or_insert(cx.now_ms);
        s.last_ms = cx.now_ms;
        s.bytes += input.len() as u64;
        Flow { consumed: input.len(), close: false }
    }

    fn closed(&mut self, s: Stream, _: bool, _: &Context) {
        let secs = s.last_ms.saturating_sub(s.first_ms.unwrap_or(s.last_ms)) as f64 / 1000.0;
        let mbit = if secs > 0.0 { s.bytes as f64 * 8.0 / secs / 1e6 } else { 0.0 };
        flexos_gate::outln!("received: {} bytes in {secs:.3} s = {mbit:.2} Mbit/s", s.bytes);
    }
}

/// The client mode: blocking connect and sends for `seconds`; returns the bytes sent and the time taken.
fn client(target: std::net::SocketAddrV4, seconds: u64) -> Result<(u64, f64), String> {
    use flexos_gate::{SharedBuf, gate};
    let errno = |what: &'static str| move |e: flexos_gate::abi::Errno| format!("{what} {target}: errno {}", e.0);
    let fd = gate!(flexos_net::socket()).map_err(errno("socket"))?;
    gate!(flexos_net::connect(fd, target.ip().octets(), target.port())).map_err(errno("connect"))?;
    let data = SharedBuf::zeroed(64 * 1024);
    let start = gate!(flexos_time::monotonic_ns());
    let end = start + seconds * 1_000_000_000;
    let mut bytes = 0u64;
    let mut now = start;
    while now < end {
        bytes += gate!(flexos_net::send(fd, data.shared())).map_err(errno("send to"))? as u64;
        now = gate!(flexos_time::monotonic_ns());
    }
    gate!(flexos_net::shutdown(fd, flexos_net::SHUT_WR)).map_err(errno("shutdown"))?;
    // Wait for the server's end of the stream, then close.
    let mut sink = SharedBuf::zeroed(4096);
    while gate!(flexos_net::recv(fd, sink.shared_mut())).map_err(errno("recv from"))? > 0 {}
    gate!(flexos_net::close(fd)).map_err(errno("close"))?;
    Ok((bytes, (now - start) as f64 / 1e9))
}

/// The threaded server: a blocking accept loop that gives every connection
/// a scheduler thread with blocking reads. Returns only on a setup error.
fn threaded(port: u16) -> Result<(), String> {
    use flexos_gate::{Callback, gate};
    let errno = |what: &'static str| move |e: flexos_gate::abi::Errno| format!("{what}: errno {}", e.0);
    let fd = gate!(flexos_net::socket()).map_err(errno("socket"))?;
    gate!(flexos_net::bind(fd, port)).map_err(errno("bind"))?;
    gate!(flexos_net::listen(fd, 16)).map_err(errno("listen"))?;
    loop {
        let (conn, _, _) = gate!(flexos_net::accept(fd)).map_err(errno("accept"))?;
        gate!(flexos_sched::spawn(Callback::new(flexos_gate::me!(), move || receive_stream(conn))));
    }
}

/// One connection of the threaded server: blocking reads until the end of the stream.
fn receive_stream(conn: i32) {
    use flexos_gate::{SharedBuf, gate};
    let mut buf = SharedBuf::zeroed(128 * 1024);
    let start = gate!(flexos_time::monotonic_ns());
    let mut bytes = 0u64;
    while let Ok(n @ 1..) = gate!(flexos_net::recv(conn, buf.shared_mut())) {
        bytes += n as u64;
    }
    let secs = (gate!(flexos_time::monotonic_ns()) - start) as f64 / 1e9;
    let _ = gate!(flexos_net::close(conn));
    let thread = gate!(flexos_sched::current());
    flexos_gate::outln!(
        "received: {bytes} bytes in {secs:.3} s = {:.2} Mbit/s (thread {thread})",
        bytes as f64 * 8.0 / secs / 1e6
    );
}
