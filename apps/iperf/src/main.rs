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

use flexos_netapp::{Context, Flow, Protocol};

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(IPERF);

fn main() {
    flexos_netapp::boot();
    let defaults =
        flexos_netapp::Options { port: 5001, recv_size: 128 * 1024, max_connections: 64, buffer_size: 256 * 1024 };
    let options = flexos_netapp::options("flexos-iperf", defaults);
    flexos_netapp::run::<{ FLEXOS_COMPONENT.compartment }, _>(FLEXOS_COMPONENT, "flexos-iperf", options, &mut Iperf)
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
