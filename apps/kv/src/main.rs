//! The kv image: a Redis-protocol (RESP2) server, one event loop over the
//! FlexOS socket API (`net`, reached through gates).
//!
//! `flexos-kv [--port P] [--max-connections N] [--buffer-size BYTES] [--recv-size BYTES] [--output-limit BYTES]`
//! (defaults 6379, 1024, 64 KiB, 64 KiB, 64 MiB). It prints `listening: HOST:PORT`.
//! A malformed request is answered with `-ERR Protocol error: ...` and
//! that connection is closed; the others go on. A client whose replies
//! would pass the output limit (it sends requests but does not read) loses
//! its connection; a command the heap has no room for is answered `-OOM`.
#![forbid(unsafe_code)]

mod command;
mod glob;
mod resp;
mod store;

use flexos_netapp::{Context, Flow, Protocol};
use store::{After, ServerInfo, Session, Store};

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(KV);

fn main() {
    flexos_netapp::boot();
    let defaults = flexos_netapp::Options {
        port: 6379,
        recv_size: 64 * 1024,
        max_connections: 1024,
        buffer_size: 64 * 1024,
        output_limit: flexos_netapp::DEFAULT_OUTPUT_LIMIT,
        timeouts: flexos_netapp::Timeouts::default(),
        gate_stats: false,
    };
    let options = flexos_netapp::options("flexos-kv", defaults);
    let port = options.port;
    let kv = move || Kv { store: Store::default(), commands: 0, port };
    flexos_netapp::run::<{ FLEXOS_COMPONENT.compartment }, _, _>(flexos_gate::me!(), "flexos-kv", options, kv)
}

/// The server: the data set.
struct Kv {
    store: Store,
    commands: u64,
    port: u16,
}

/// A connection: its place in a request that has not fully arrived, and its transaction.
#[derive(Default)]
struct Conn {
    parser: resp::Parser,
    session: Session,
}

impl Protocol for Kv {
    type Conn = Conn;

    /// Runs the complete requests in `input` until the connection's
    /// output reaches the high-water mark; a malformed one is answered
    /// with a protocol error and closes the connection; a reply past the
    /// output limit, or one the heap has no room for, drops the
    /// connection's output and closes it.
    fn input(&mut self, conn: &mut Conn, input: &[u8], output: &mut Vec<u8>, cx: &Context) -> Flow {
        let mut flow = Flow::default();
        let info = ServerInfo {
            port: self.port,
            clients: cx.clients,
            commands: self.commands,
            connections: cx.accepted,
            uptime_ms: cx.uptime_ms,
        };
        let mut out = resp::Out::new(std::mem::take(output), cx.output_limit);
        let mut give_up = false;
        let mut spare: Vec<&[u8]> = Vec::new();
        while out.len() < flexos_netapp::OUTPUT_HIGH_WATER {
            let rest = &input[flow.consumed..];
            match conn.parser.parse(rest) {
                Ok(Some((n, req))) => {
                    let mut args = recycle(std::mem::take(&mut spare));
                    if args.try_reserve(req.len()).is_err() {
                        give_up = true;
                        break;
                    }
                    args.extend(req.args(rest));
                    flow.consumed += n;
                    self.commands += 1;
                    let after = self.store.handle(&mut conn.session, &args, cx.now_ms, &info, &mut out);
                    spare = recycle(args);
                    if after == After::Close || out.overflow().is_some() {
                        flow.close = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(resp::ProtocolError(why)) => {
                    resp::error(&mut out, &format!("ERR Protocol error: {why}"));
                    flow.close = true;
                    break;
                }
            }
        }
        let (bytes, overflow) = out.finish();
        *output = bytes;
        if overflow.is_some() || give_up {
            // The replies are given up: nothing more is sent on this connection.
            output.clear();
            flow.close = true;
        }
        flow
    }
}

/// An empty vector of argument slices with `v`'s allocation, for arguments
/// of another lifetime (collecting an empty vector into one of the same
/// layout reuses its buffer), so a request costs no allocation.
fn recycle<'a>(mut v: Vec<&[u8]>) -> Vec<&'a [u8]> {
    v.clear();
    v.into_iter().map(|_| -> &'a [u8] { &[] }).collect()
}
