//! The iperf image: a TCP receive server for the `iperf` 2.x client
//! (`iperf -c HOST`): it accepts connections on port 5001, reads and
//! discards everything in reads of `--recv-size` bytes (the receive buffer
//! size, the axis of FlexOS's iperf figure), and prints one line per
//! connection when it ends:
//! `received: BYTES bytes in SECONDS s = RATE Mbit/s`.
//!
//! `flexos-iperf [--port P] [--recv-size BYTES] [--max-connections N] [--buffer-size BYTES]`
//! (defaults 5001, 128 KiB, 64, 256 KiB).
#![deny(unsafe_code)]

use flexos_gate::layout;
use flexos_netapp::{Context, Flow, Protocol};

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(IPERF);

fn parse_args() -> Result<flexos_netapp::Options, String> {
    let mut o =
        flexos_netapp::Options { port: 5001, recv_size: 128 * 1024, max_connections: 64, buffer_size: 256 * 1024 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: {value:?} is not a valid number");
        match flag.as_str() {
            "--port" => o.port = value.parse().map_err(bad)?,
            "--recv-size" => o.recv_size = value.parse().map_err(bad)?,
            "--max-connections" => o.max_connections = value.parse().map_err(bad)?,
            "--buffer-size" => o.buffer_size = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.recv_size == 0 || o.recv_size > 16 << 20 {
        return Err("--recv-size must be 1 B to 16 MiB".into());
    }
    Ok(o)
}

fn main() {
    flexos_platform::fault::install(layout::COMPARTMENT_NAMES);
    flexos_gate::boot(&[
        flexos_sched::FLEXOS_EXPORTS,
        flexos_time::FLEXOS_EXPORTS,
        flexos_vfs::FLEXOS_EXPORTS,
        flexos_ramfs::FLEXOS_EXPORTS,
        flexos_net::FLEXOS_EXPORTS,
    ]);
    let options = parse_args().unwrap_or_else(|e| {
        eprintln!("flexos-iperf: {e}\nusage: flexos-iperf [--port P] [--recv-size BYTES] [--max-connections N] [--buffer-size BYTES]");
        std::process::exit(2)
    });
    let result = flexos_gate::fcall(FLEXOS_COMPONENT.compartment, || {
        flexos_netapp::serve::<{ FLEXOS_COMPONENT.compartment }, _>(FLEXOS_COMPONENT, options, &mut Iperf)
    });
    if let Err(e) = result {
        eprintln!("flexos-iperf: {e}");
        std::process::exit(1);
    }
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
        println!("received: {} bytes in {secs:.3} s = {mbit:.2} Mbit/s", s.bytes);
    }
}
