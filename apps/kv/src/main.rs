//! The kv image: a Redis-protocol (RESP2) server, one event loop over the
//! FlexOS socket API (`net`, reached through gates).
//!
//! `flexos-kv [--port P] [--max-connections N] [--buffer-size BYTES] [--recv-size BYTES]`
//! (defaults 6379, 1024, 64 KiB, 64 KiB). It prints `listening: HOST:PORT`.
//! A malformed request is answered with `-ERR Protocol error: ...` and
//! that connection is closed; the others go on.
#![deny(unsafe_code)]

mod resp;
mod store;

use flexos_netapp::{Context, Flow, Protocol};
use store::{After, ServerInfo, Store};

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(KV);

fn main() {
    flexos_netapp::boot();
    let defaults =
        flexos_netapp::Options { port: 6379, recv_size: 64 * 1024, max_connections: 1024, buffer_size: 64 * 1024 };
    let options = flexos_netapp::options("flexos-kv", defaults);
    let port = options.port;
    let kv = move || Kv { store: Store::default(), req: resp::Request::default(), commands: 0, port };
    flexos_netapp::run::<{ FLEXOS_COMPONENT.compartment }, _>(FLEXOS_COMPONENT, "flexos-kv", options, kv)
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
