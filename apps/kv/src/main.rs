//! The kv image: a Redis-protocol (RESP2) server, one event loop over the
//! FlexOS socket API (`net`, reached through gates).
//!
//! `flexos-kv [--port P] [--max-connections N] [--buffer-size BYTES]`
//! (defaults 6379, 1024, 64 KiB). It prints `listening: HOST:PORT`.
//! A malformed request is answered with `-ERR Protocol error: ...` and
//! that connection is closed; the others go on.
#![deny(unsafe_code)]

mod resp;
mod store;

use flexos_gate::layout;
use flexos_netapp::{Context, Flow, Protocol};
use store::{After, ServerInfo, Store};

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(KV);

fn parse_args() -> Result<flexos_netapp::Options, String> {
    let mut o =
        flexos_netapp::Options { port: 6379, recv_size: 64 * 1024, max_connections: 1024, buffer_size: 64 * 1024 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag}: {value:?} is not a valid number");
        match flag.as_str() {
            "--port" => o.port = value.parse().map_err(bad)?,
            "--max-connections" => o.max_connections = value.parse().map_err(bad)?,
            "--buffer-size" => o.buffer_size = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
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
        eprintln!("flexos-kv: {e}\nusage: flexos-kv [--port P] [--max-connections N] [--buffer-size BYTES]");
        std::process::exit(2)
    });
    let mut kv = Kv { store: Store::default(), req: resp::Request::default(), commands: 0, port: options.port };
    let result = flexos_gate::fcall(FLEXOS_COMPONENT.compartment, || {
        flexos_netapp::serve::<{ FLEXOS_COMPONENT.compartment }, _>(FLEXOS_COMPONENT, options, &mut kv)
    });
    if let Err(e) = result {
        eprintln!("flexos-kv: {e}");
        std::process::exit(1);
    }
}

/// The server: the data set and the request parser.
struct Kv {
    store: Store,
    req: resp::Request,
    commands: u64,
    port: u16,
}

impl Protocol for Kv {
    type Conn = ();

    /// Runs every complete request in `input`; a malformed one is answered
    /// with a protocol error and closes the connection.
    fn input(&mut self, _: &mut (), input: &[u8], output: &mut Vec<u8>, cx: &Context) -> Flow {
        let mut flow = Flow::default();
        let mut args: Vec<&[u8]> = Vec::new();
        let info = ServerInfo {
            port: self.port,
            clients: cx.clients,
            commands: self.commands,
            connections: cx.accepted,
            uptime_ms: cx.uptime_ms,
        };
        loop {
            match resp::parse(&input[flow.consumed..], &mut self.req) {
                Ok(Some(n)) => {
                    let base = flow.consumed;
                    args.clear();
                    args.extend(self.req.args.iter().map(|r| &input[base + r.start..base + r.end]));
                    flow.consumed += n;
                    self.commands += 1;
                    if self.store.execute(&args, cx.now_ms, &info, output) == After::Close {
                        flow.close = true;
                        return flow;
                    }
                }
                Ok(None) => return flow,
                Err(resp::ProtocolError(why)) => {
                    resp::error(output, &format!("ERR Protocol error: {why}"));
                    flow.close = true;
                    return flow;
                }
            }
        }
    }
}
