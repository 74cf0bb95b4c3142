//! The event loop of the network applications (kv, httpd, iperf): one
//! thread polls the listening socket and every connection through the
//! socket API of `net`, reads what arrives, lets the application's
//! [`Protocol`] turn input into output, and writes the output back.
//!
//! The loop runs *as the calling application's component*: every call
//! into `net` and `time` goes through a gate from the application's
//! compartment (`C` is its index), exactly as if the application had
//! written the loop itself.
//!
//! A connection whose unsent output reaches [`OUTPUT_HIGH_WATER`] is not
//! read, and its input is not handled, until the peer has taken the output
//! below that mark again (backpressure: a client that sends requests but
//! never reads the replies holds at most that much). A connection is closed
//! when the peer closes or resets it, when the protocol asks (after its
//! output is sent), when its output passes the output limit (one reply too
//! large: `--output-limit`, like Redis's `client-output-buffer-limit`), when
//! its unconsumed input grows beyond [`MAX_PENDING`], or when the heap has
//! no room for its input; none of this disturbs the other connections.
#![forbid(unsafe_code)]

use flexos_gate::abi::Errno;
use flexos_gate::abi::poll::{POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT};
use flexos_gate::abi::round::{Answer, ENTRY as ROUND_ENTRY, Request, answer, put_request};
use flexos_gate::{Caller, Identity, SharedBuf, gate};

/// A connection whose unconsumed input grows beyond this is closed.
pub const MAX_PENDING: usize = 256 * 1024 * 1024;

/// A connection with this much unsent output is not read, and its input
/// is not handled, until the peer takes the output below it.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;

/// Calls `flexos_net::f(args)` through a gate from compartment `C`.
macro_rules! net {
    ($app:ident, $f:ident ( $($a:expr),* )) => {
        gate!(as $app, in C => flexos_net::$f($($a),*))
    };
}

/// What the protocol wants after handling input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Bytes of the input it consumed (the rest is kept for later).
    pub consumed: usize,
    /// Close the connection once the output is sent.
    pub close: bool,
}

/// Facts about the server, for protocols that report them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// Milliseconds of the monotonic clock when this round of input arrived.
    pub now_ms: u64,
    /// Milliseconds since the loop started.
    pub uptime_ms: u64,
    /// Open connections.
    pub clients: usize,
    /// Connections accepted so far.
    pub accepted: u64,
    /// The most unsent output one connection may have ([`Options::output_limit`]):
    /// a protocol stops producing replies once a connection's output reaches
    /// [`OUTPUT_HIGH_WATER`], and closes the connection if one reply would
    /// take it past this limit.
    pub output_limit: usize,
}

/// An application protocol served by [`serve`].
pub trait Protocol {
    /// Per-connection state.
    type Conn: Default;
    /// Handles the input that has arrived on a connection (everything not
    /// consumed before, plus the new bytes); appends replies to `output`.
    fn input(&mut self, conn: &mut Self::Conn, input: &[u8], output: &mut Vec<u8>, cx: &Context) -> Flow;
    /// The connection ended (`peer_closed`: by the peer, possibly mid-request).
    fn closed(&mut self, _conn: Self::Conn, _peer_closed: bool, _cx: &Context) {}
}

/// How to serve.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The TCP port to listen on.
    pub port: u16,
    /// Bytes asked for per `recv` call (the receive buffer size).
    pub recv_size: usize,
    /// The stack's connection limit (`net::configure`).
    pub max_connections: u32,
    /// The stack's per-connection buffer size (`net::configure`).
    pub buffer_size: u32,
    /// The most unsent output one connection may have; a connection whose
    /// output would grow past it is closed (`--output-limit`).
    pub output_limit: usize,
    /// Timeouts and eviction of connections that keep the server waiting.
    pub timeouts: Timeouts,
    /// Print the gate counters ([`flexos_gate::stats::report`]) on standard
    /// output whenever the last client leaves (`--flexos-gate-stats`): a
    /// server has no end at which to print them.
    pub gate_stats: bool,
}

/// How long a connection may keep the server waiting (0: no limit), and
/// whether waiting connections are closed when the server runs short of
/// connections. A connection *waits* while it holds an incomplete request
/// (counted from its first byte: more bytes of the same request do not
/// count as progress) or while it is idle between requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// An incomplete request is given this many milliseconds
    /// (`--header-timeout`, nginx's `client_header_timeout`).
    pub request_ms: u64,
    /// An idle connection is closed after this many milliseconds
    /// (`--idle-timeout`, nginx's `keepalive_timeout`).
    pub idle_ms: u64,
    /// When the connections reach [`busy_threshold`] of the limit, close the
    /// ones that have been waiting for [`EVICT_AFTER_MS`] or longer, so a
    /// flood of slow clients (slowloris) cannot keep the others out.
    pub evict_when_busy: bool,
}

/// Under pressure (see [`Timeouts::evict_when_busy`]), a connection that has
/// waited this long is closed.
pub const EVICT_AFTER_MS: u64 = 1000;

/// The number of connections from which the server is short of them: the
/// stack's limit less room for its listening endpoints and a burst.
pub fn busy_threshold(max_connections: u32) -> usize {
    (max_connections as usize).saturating_sub(256).max(max_connections as usize / 2)
}

/// The default of [`Options::output_limit`]: 64 MiB.
pub const DEFAULT_OUTPUT_LIMIT: usize = 64 << 20;

struct Conn<S> {
    fd: i32,
    input: Vec<u8>,
    output: Vec<u8>,
    closing: bool,
    peer_closed: bool,
    /// The protocol stopped handling input because the output reached the high-water mark.
    stalled: bool,
    /// When the last complete request was taken (or the connection accepted), in ms.
    last_request_ms: u64,
    /// When the incomplete request in `input` began, in ms.
    partial_since_ms: u64,
    /// The server gave up on the connection: reset it instead of closing it.
    reset: bool,
    state: S,
}

impl<S> Conn<S> {
    /// How long the connection has kept the server waiting at `now` (ms),
    /// and the limit for that kind of waiting; `None` while the server owes
    /// it output.
    fn waiting(&self, now: u64, t: &Timeouts) -> Option<(u64, u64)> {
        if !self.output.is_empty() || self.closing {
            None
        } else if self.input.is_empty() {
            Some((now.saturating_sub(self.last_request_ms), t.idle_ms))
        } else {
            Some((now.saturating_sub(self.partial_since_ms), t.request_ms))
        }
    }
}

/// Writes `data` to the image's file system as `path`, making the folders
/// on the way (an image unpacks the files it was built with), as the
/// component whose token `app` is, in its compartment `C` (called from the image's `main`).
pub fn install_file<const C: usize, Me: Identity>(app: Caller<Me>, path: &str, data: &[u8]) -> Result<(), Errno> {
    flexos_gate::fcall(C, || install_here::<C, Me>(app, path, data))
}

/// [`install_file`], running in compartment `C`.
fn install_here<const C: usize, Me: Identity>(app: Caller<Me>, path: &str, data: &[u8]) -> Result<(), Errno> {
    use flexos_gate::abi::open_flags::{O_CREAT, O_TRUNC, O_WRONLY};
    let mut at = 0;
    while let Some(i) = path[at + 1..].find('/') {
        at += i + 1;
        let dir = SharedBuf::from_slice(&path.as_bytes()[..at]);
        match gate!(as app, in C => flexos_vfs::mkdir(dir.shared(), 0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let p = SharedBuf::from_slice(path.as_bytes());
    let fd = gate!(as app, in C => flexos_vfs::open(p.shared(), O_WRONLY | O_CREAT | O_TRUNC, 0o644))?;
    let body = SharedBuf::from_slice(data);
    let mut written = 0;
    let mut result = Ok(());
    while written < data.len() {
        match gate!(as app, in C => flexos_vfs::write(fd, body.shared().slice(written..data.len()))) {
            Ok(0) => result = Err(Errno::EIO),
            Ok(n) => written += n,
            Err(e) => result = Err(e),
        }
        if result.is_err() {
            break;
        }
    }
    gate!(as app, in C => flexos_vfs::close(fd))?;
    result
}

/// Boots a network image: installs the fault reporter, raises the limit
/// of open descriptors (one per client relayed from 127.0.0.1), and starts the
/// domains with the export tables of every component a network image has
/// (in a compartment's own process this never returns).
pub fn boot() {
    flexos_platform::fault::install(flexos_gate::layout::COMPARTMENT_NAMES);
    flexos_platform::process::raise_descriptor_limit();
    flexos_boot::boot();
}

/// The options on the command line (`--port`, `--recv-size`,
/// `--max-connections`, `--buffer-size`, `--output-limit`, `--header-timeout`
/// and `--idle-timeout` in seconds, each with a number; `--flexos-gate-stats`), over
/// `defaults`; a bad command line prints `program`'s usage and exits 2.
pub fn options(program: &str, defaults: Options) -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    parse_options(&args, defaults).unwrap_or_else(|e| {
        eprintln!(
            "{program}: {e}\nusage: {program} [--port P] [--recv-size BYTES] [--max-connections N] [--buffer-size BYTES] [--output-limit BYTES] [--header-timeout SECONDS] [--idle-timeout SECONDS] [--flexos-gate-stats]"
        );
        std::process::exit(2)
    })
}

/// Parses the options of [`options`].
pub fn parse_options(args: &[String], defaults: Options) -> Result<Options, String> {
    let mut o = defaults;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--flexos-gate-stats" {
            o.gate_stats = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: {value:?} is not a valid number"));
        let small =
            |max: u64| number().and_then(|n| if n <= max { Ok(n) } else { Err(format!("{flag}: at most {max}")) });
        match flag.as_str() {
            "--port" => o.port = small(u16::MAX as u64)? as u16,
            "--recv-size" => o.recv_size = small(16 << 20)? as usize,
            "--max-connections" => o.max_connections = small(u32::MAX as u64)? as u32,
            "--buffer-size" => o.buffer_size = small(u32::MAX as u64)? as u32,
            "--output-limit" => o.output_limit = small(1 << 40)? as usize,
            "--header-timeout" => o.timeouts.request_ms = small(1 << 32)? * 1000,
            "--idle-timeout" => o.timeouts.idle_ms = small(1 << 32)? * 1000,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.recv_size == 0 {
        return Err("--recv-size must be at least 1".into());
    }
    if o.output_limit < OUTPUT_HIGH_WATER {
        return Err(format!(
            "--output-limit must be at least {OUTPUT_HIGH_WATER} (the high-water mark of a connection's output)"
        ));
    }
    Ok(o)
}

/// Runs the protocol that `make` builds in the application's compartment
/// `C` (the component whose token `app` is) with [`serve`]; a setup error is printed (as
/// `program: ...`) and ends the image with status 1.
///
/// Everything the application's compartment needs crosses by value: the
/// protocol is built there (in that compartment's heap) and the error is
/// printed there, because under `mpk` another compartment's memory is out
/// of reach.
pub fn run<const C: usize, Me: Identity, P: Protocol>(
    app: Caller<Me>,
    program: &'static str,
    options: Options,
    make: impl FnOnce() -> P,
) -> ! {
    flexos_gate::fcall(C, move || {
        if let Err(e) = serve::<C, Me, P>(app, options, &mut make()) {
            flexos_gate::errln!("{program}: {e}");
        }
    });
    std::process::exit(1)
}

fn errno(what: &'static str) -> impl Fn(Errno) -> String {
    move |e| format!("{what}: errno {}", e.0)
}

/// Serves `protocol` on `options.port` forever (returns only on a setup
/// error), running as the component whose token `app` is, in its
/// compartment `C`.
pub fn serve<const C: usize, Me: Identity, P: Protocol>(
    app: Caller<Me>,
    options: Options,
    protocol: &mut P,
) -> Result<(), String> {
    net!(app, configure(options.max_connections, options.buffer_size)).map_err(errno("configure"))?;
    let listener = net!(app, socket()).map_err(errno("socket"))?;
    net!(app, bind(listener, options.port)).map_err(errno("bind"))?;
    net!(app, listen(listener, 511)).map_err(errno("listen"))?;
    net!(app, set_nonblocking(listener, true)).map_err(errno("set_nonblocking"))?;

    let clock = || gate!(as app, in C => flexos_time::monotonic_ns()) / 1_000_000;
    let start_ms = clock();
    let mut cx = Context { output_limit: options.output_limit, ..Context::default() };
    let mut conns: Vec<Conn<P::Conn>> = Vec::new();
    // The three shared buffers of a round (kept across rounds): the table,
    // the connections' output, and their input.
    let mut entries = SharedBuf::zeroed(ROUND_ENTRY * 64);
    let mut sends = SharedBuf::zeroed(64 * 1024);
    // Room for at least one connection's whole receive buffer, so that a
    // round drains a connection as a loop of `recv` calls did.
    let mut input = SharedBuf::zeroed(round_input_size(&options));
    // The table is made and read back here, in private memory, each copied
    // once to or from `entries`.
    let mut table: Vec<u8> = Vec::new();
    let mut plan: Vec<Planned> = Vec::new();
    let mut first = 0;
    loop {
        let needed = (conns.len() + 1) * ROUND_ENTRY;
        if entries.len() < needed {
            entries = SharedBuf::zeroed(needed * 2);
        }
        table.clear();
        table.resize(needed, 0);
        put_request(&mut table, 0, &Request { fd: listener, events: POLLIN, ..Request::default() });
        let send_total = plan_round(&conns, &mut plan, first, options.buffer_size as usize);
        first = if conns.is_empty() { 0 } else { (first + 1) % conns.len() };
        if sends.len() < send_total {
            sends = SharedBuf::zeroed(send_total.next_power_of_two());
        }
        for (i, (c, p)) in conns.iter().zip(&plan).enumerate() {
            sends.write_at(p.send_at, &c.output[..p.send_len]);
            let request =
                Request { fd: c.fd, events: p.events, send_at: p.send_at as u32, send_len: p.send_len as u32 };
            put_request(&mut table, i + 1, &request);
        }
        entries.write_at(0, &table);
        let wait_ms = next_deadline(&conns, cx.now_ms, &options);
        net!(
            app,
            round(
                entries.shared_mut().slice_mut(0..needed),
                sends.shared().slice(0..send_total),
                input.shared_mut(),
                wait_ms
            )
        )
        .map_err(errno("round"))?;
        cx.now_ms = clock();
        cx.uptime_ms = cx.now_ms - start_ms;

        entries.read_at(0, &mut table);
        let listener_events = answer(&table, 0).revents;
        for (i, (c, p)) in conns.iter_mut().zip(&plan).enumerate() {
            let a = answer(&table, i + 1);
            if p.send_len > 0 {
                match usize::try_from(a.sent) {
                    Ok(sent) => drop(c.output.drain(..sent.min(p.send_len))),
                    Err(_) => {
                        c.closing = true;
                        c.output.clear();
                    }
                }
            }
            if a.revents & POLLNVAL != 0 {
                c.closing = true;
                c.output.clear();
            }
            if c.stalled && c.output.len() < OUTPUT_HIGH_WATER && !c.closing {
                // The peer took its replies: handle the input that waited.
                handle_input(c, protocol, &cx);
            }
            if c.closing {
                continue;
            }
            if p.events & POLLIN != 0 {
                if a.recv_len > 0 || a.ended {
                    take_input(c, &input, &a, protocol, &cx);
                }
            } else if a.revents & (POLLHUP | POLLERR) != 0 {
                // Backpressured, and the peer is gone: its replies go nowhere.
                c.peer_closed = true;
                c.closing = true;
                c.output.clear();
            }
        }
        close_waiting(&mut conns, cx.now_ms, &options);
        let mut i = 0;
        while i < conns.len() {
            if conns[i].closing && conns[i].output.is_empty() {
                let c = conns.swap_remove(i);
                let _ = if c.reset { net!(app, reset(c.fd)) } else { net!(app, close(c.fd)) };
                cx.clients = conns.len();
                protocol.closed(c.state, c.peer_closed, &cx);
                if options.gate_stats && conns.is_empty() {
                    flexos_platform::console::write_out(flexos_gate::stats::report().as_bytes());
                }
            } else {
                i += 1;
            }
        }
        if listener_events & POLLIN != 0 {
            loop {
                match net!(app, accept(listener)) {
                    Ok((fd, _, _)) => {
                        let _ = net!(app, set_nonblocking(fd, true));
                        conns.push(Conn {
                            fd,
                            input: Vec::new(),
                            output: Vec::new(),
                            closing: false,
                            peer_closed: false,
                            stalled: false,
                            last_request_ms: cx.now_ms,
                            partial_since_ms: cx.now_ms,
                            reset: false,
                            state: P::Conn::default(),
                        });
                        cx.accepted += 1;
                    }
                    Err(Errno::EAGAIN) => break,
                    Err(e) => {
                        flexos_gate::errln!("flexos: accept: errno {}", e.0);
                        break;
                    }
                }
            }
        }
        cx.clients = conns.len();
    }
}

/// The milliseconds until the first connection keeps the server waiting
/// too long (see [`Timeouts`]), or -1 if none can.
fn next_deadline<S>(conns: &[Conn<S>], now: u64, options: &Options) -> i64 {
    let t = &options.timeouts;
    let busy = t.evict_when_busy && conns.len() >= busy_threshold(options.max_connections);
    let mut next: Option<u64> = None;
    for c in conns {
        let Some((waited, limit)) = c.waiting(now, t) else { continue };
        for limit in [limit, if busy { EVICT_AFTER_MS } else { 0 }] {
            if limit > 0 {
                let left = limit.saturating_sub(waited);
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
    }
    next.map_or(-1, |n| n as i64)
}

/// Closes the connections that have kept the server waiting too long, and,
/// when connections run short, the ones that have waited longest (at least
/// [`EVICT_AFTER_MS`]) until [`EVICT_MARGIN`] connections are free below the
/// threshold again: new clients, which are the ones that send their
/// requests at once, are the last to go.
fn close_waiting<S>(conns: &mut [Conn<S>], now: u64, options: &Options) {
    let t = &options.timeouts;
    let mut long_waiting = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let Some((waited, limit)) = c.waiting(now, t) else { continue };
        if limit > 0 && waited >= limit {
            c.closing = true;
            c.reset = true;
            c.input.clear();
        } else if waited >= EVICT_AFTER_MS {
            long_waiting.push((waited, i));
        }
    }
    let open = conns.iter().filter(|c| !c.closing).count();
    let threshold = busy_threshold(options.max_connections);
    if t.evict_when_busy && open >= threshold {
        long_waiting.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, i) in long_waiting.iter().take(open + EVICT_MARGIN - threshold) {
            let c = &mut conns[i];
            c.closing = true;
            c.reset = true;
            c.input.clear();
        }
    }
}

/// How far below [`busy_threshold`] eviction takes the connections.
pub const EVICT_MARGIN: usize = 64;

/// Takes the input that a round brought for the connection (`a`: where
/// it lies in `input`, and whether the stream ended after it) and hands it
/// to the protocol: in place where the image is one domain and nothing of
/// the connection's is pending (what the protocol leaves is kept), else
/// appended to the connection's pending input, a copy read once.
fn take_input<P: Protocol>(c: &mut Conn<P::Conn>, input: &SharedBuf, a: &Answer, p: &mut P, cx: &Context) {
    let was_empty = c.input.is_empty();
    let (at, len) = (a.recv_at as usize, a.recv_len as usize);
    let fits = at.checked_add(len).is_some_and(|end| end <= input.len());
    if len > 0 && fits && was_empty && !c.stalled {
        let received = input.shared().slice(at..at + len);
        if let Some(bytes) = received.in_place() {
            c.peer_closed |= a.ended;
            let flow = p.input(&mut c.state, bytes, &mut c.output, cx);
            let consumed = flow.consumed.min(len);
            if consumed < len {
                let rest = received.slice(consumed..len);
                if !flexos_alloc::has_room(rest.len()) || rest.append_to(&mut c.input).is_err() {
                    c.closing = true;
                    c.output.clear();
                    return;
                }
                c.partial_since_ms = cx.now_ms;
            }
            after_protocol(c, flow, cx);
            after_input(c);
            return;
        }
    }
    if len > 0
        && (!fits
            || !flexos_alloc::has_room(len)
            || input.shared().slice(at..at + len).append_to(&mut c.input).is_err())
    {
        // No room for this client's input (or an answer the stack got
        // wrong): it loses its connection, nobody else anything.
        c.closing = true;
        c.output.clear();
        return;
    }
    c.peer_closed |= a.ended;
    if was_empty && !c.input.is_empty() {
        c.partial_since_ms = cx.now_ms;
    }
    if !c.stalled {
        handle_input(c, p, cx);
    }
    after_input(c);
}

/// What a connection comes to after its input was handled: closing, when
/// its peer is gone or it holds too much unhandled input.
fn after_input<S>(c: &mut Conn<S>) {
    if c.peer_closed {
        // The peer is gone (perhaps mid-request): drop what it left.
        c.closing = true;
        c.output.clear();
    }
    if c.input.len() > MAX_PENDING {
        c.closing = true;
        c.output.clear();
    }
}

/// Lets the protocol handle the connection's pending input.
fn handle_input<P: Protocol>(c: &mut Conn<P::Conn>, p: &mut P, cx: &Context) {
    c.stalled = false;
    if c.input.is_empty() {
        return;
    }
    let flow = p.input(&mut c.state, &c.input, &mut c.output, cx);
    c.input.drain(..flow.consumed.min(c.input.len()));
    after_protocol(c, flow, cx);
}

/// Takes in what the protocol did with a connection's input (`flow`), once
/// the input it did not consume is the connection's pending input.
fn after_protocol<S>(c: &mut Conn<S>, flow: Flow, cx: &Context) {
    if flow.consumed > 0 {
        // A request was taken: what is left is the start of the next one.
        c.last_request_ms = cx.now_ms;
        c.partial_since_ms = cx.now_ms;
    }
    c.closing |= flow.close;
    if c.output.len() > cx.output_limit {
        c.closing = true;
        c.output.clear();
    }
    c.stalled = !c.closing && !c.input.is_empty() && c.output.len() >= OUTPUT_HIGH_WATER;
}

/// What a round asks for one connection: its events, and where its
/// output lies in the send area.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Planned {
    events: u16,
    send_at: usize,
    send_len: usize,
}

/// The most bytes of output one round hands the stack, from all connections.
pub const MAX_ROUND_OUTPUT: usize = 4 << 20;

/// The room a round has for input, from all connections together: the
/// receive buffer size (`--recv-size`), but at least one connection's
/// whole buffer in the stack (`--buffer-size`).
pub fn round_input_size(options: &Options) -> usize {
    options.recv_size.max(options.buffer_size as usize).max(1)
}

/// Plans a round for `conns` (into `plan`, one row each): each connection
/// hands the stack up to `per_conn` bytes of its output (what its send
/// buffer can take), taken in turn from connection `first` on while the
/// round has room ([`MAX_ROUND_OUTPUT`]); it asks for input unless it is
/// closing or its output has reached [`OUTPUT_HIGH_WATER`]
/// (backpressure), and for `POLLOUT` if output is left over or it is
/// closing. Returns the bytes of output the round hands over.
fn plan_round<S>(conns: &[Conn<S>], plan: &mut Vec<Planned>, first: usize, per_conn: usize) -> usize {
    plan.clear();
    plan.resize(conns.len(), Planned::default());
    let mut at = 0;
    for k in 0..conns.len() {
        let i = (first + k) % conns.len();
        let c = &conns[i];
        let len = c.output.len().min(per_conn).min(MAX_ROUND_OUTPUT - at);
        let wants_input = !c.closing && c.output.len() < OUTPUT_HIGH_WATER;
        // A closing connection waits only to send its output, so it wants
        // `POLLOUT` even when all of it goes now: the round then ends at
        // once, and the connection is closed after it.
        let wants_out = c.output.len() > len || c.closing && !c.output.is_empty();
        plan[i] = Planned {
            events: if wants_input { POLLIN } else { 0 } | if wants_out { POLLOUT } else { 0 },
            send_at: at,
            send_len: len,
        };
        at += len;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Options = Options {
        port: 1,
        recv_size: 2,
        max_connections: 3,
        buffer_size: 4,
        output_limit: DEFAULT_OUTPUT_LIMIT,
        timeouts: Timeouts { request_ms: 0, idle_ms: 0, evict_when_busy: false },
        gate_stats: false,
    };

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_options(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), DEFAULTS)
    }

    #[test]
    fn command_line_options() {
        let o = parse(&["--port", "8080", "--recv-size", "16"]).unwrap();
        assert_eq!((o.port, o.recv_size, o.max_connections, o.buffer_size), (8080, 16, 3, 4));
        assert!(parse(&["--port", "70000"]).unwrap_err().contains("at most 65535"));
        assert!(parse(&["--port"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--colour", "1"]).unwrap_err().contains("unknown option"));
        assert!(parse(&["--recv-size", "0"]).is_err());
        assert!(parse(&["--buffer-size", "x"]).unwrap_err().contains("not a valid number"));
        let o = parse(&["--output-limit", "2000000", "--header-timeout", "3", "--idle-timeout", "4"]).unwrap();
        assert_eq!((o.output_limit, o.timeouts.request_ms, o.timeouts.idle_ms), (2_000_000, 3000, 4000));
        assert!(parse(&["--output-limit", "1000"]).unwrap_err().contains("at least"));
    }

    fn conn_with(output: usize, closing: bool) -> Conn<()> {
        Conn {
            fd: 0,
            input: Vec::new(),
            output: vec![b'x'; output],
            closing,
            peer_closed: false,
            stalled: false,
            last_request_ms: 0,
            partial_since_ms: 0,
            reset: false,
            state: (),
        }
    }

    /// Takes whole lines, and answers each with a `+`.
    #[derive(Default)]
    struct Lines {
        seen: Vec<Vec<u8>>,
    }

    impl Protocol for Lines {
        type Conn = ();
        fn input(&mut self, _: &mut (), input: &[u8], output: &mut Vec<u8>, _: &Context) -> Flow {
            let mut consumed = 0;
            while let Some(n) = input[consumed..].iter().position(|&b| b == b'\n') {
                self.seen.push(input[consumed..consumed + n].to_vec());
                output.push(b'+');
                consumed += n + 1;
            }
            Flow { consumed, close: false }
        }
    }

    #[test]
    fn input_is_handed_over_in_place_and_what_the_protocol_leaves_is_kept() {
        assert!(flexos_gate::layout::is_one_domain(), "the test image is one domain: its input is read in place");
        let mut shared = SharedBuf::zeroed(16);
        let mut p = Lines::default();
        let cx = |now_ms| Context { now_ms, uptime_ms: 0, clients: 1, accepted: 1, output_limit: DEFAULT_OUTPUT_LIMIT };
        let answer = |recv_at, recv_len, ended| Answer { revents: POLLIN, sent: 0, recv_at, recv_len, ended };
        // A whole line and the start of the next, in place: the start is kept.
        let mut c = conn_with(0, false);
        shared.write_at(4, b"ab\ncd");
        take_input(&mut c, &shared, &answer(4, 5, false), &mut p, &cx(10));
        assert_eq!(p.seen, [b"ab".to_vec()]);
        assert_eq!(c.input, b"cd", "the partial line is kept");
        assert_eq!((c.partial_since_ms, c.last_request_ms), (10, 10));
        // The rest, appended to what was kept (a copy: something is pending).
        shared.write_at(0, b"e\nf\n");
        take_input(&mut c, &shared, &answer(0, 4, false), &mut p, &cx(20));
        assert_eq!(p.seen, [b"ab".to_vec(), b"cde".to_vec(), b"f".to_vec()]);
        assert!(c.input.is_empty());
        assert_eq!(c.output, b"+++");
        assert!(!c.closing);
        // Input the stack placed outside the input area loses this
        // connection its output, and nothing else.
        take_input(&mut c, &shared, &answer(12, 8, false), &mut p, &cx(30));
        assert!(c.closing && c.output.is_empty());
        assert_eq!(p.seen.len(), 3);
        // The stream's end comes with its last input: handled, then closed.
        let mut d = conn_with(0, false);
        shared.write_at(0, b"x\n");
        take_input(&mut d, &shared, &answer(0, 2, true), &mut p, &cx(40));
        assert_eq!(p.seen.last().map(Vec::as_slice), Some(&b"x"[..]));
        assert!(d.peer_closed && d.closing);
    }

    #[test]
    fn a_round_hands_over_each_output_up_to_the_send_buffer_and_asks_for_input_unless_backpressured() {
        let conns = vec![
            conn_with(0, false),
            conn_with(100, false),
            conn_with(5000, false),
            conn_with(OUTPUT_HIGH_WATER, false),
            conn_with(10, true),
        ];
        let mut plan = Vec::new();
        assert_eq!(plan_round(&conns, &mut plan, 0, 4096), 8302, "the bytes handed over");
        let p = |events, send_at, send_len| Planned { events, send_at, send_len };
        assert_eq!(
            plan,
            [
                p(POLLIN, 0, 0),
                p(POLLIN, 0, 100),
                p(POLLIN | POLLOUT, 100, 4096),
                p(POLLOUT, 4196, 4096),
                p(POLLOUT, 8292, 10),
            ]
        );
        // Taken in turn from another connection, the outputs lie in that order.
        plan_round(&conns, &mut plan, 3, 4096);
        assert_eq!((plan[3].send_at, plan[4].send_at, plan[1].send_at, plan[2].send_at), (0, 4096, 4106, 4206));
    }

    #[test]
    fn a_round_hands_over_at_most_its_limit_of_output() {
        let conns: Vec<Conn<()>> = (0..5).map(|_| conn_with(OUTPUT_HIGH_WATER, false)).collect();
        let mut plan = Vec::new();
        plan_round(&conns, &mut plan, 2, OUTPUT_HIGH_WATER);
        let total: usize = plan.iter().map(|p| p.send_len).sum();
        assert_eq!(total, MAX_ROUND_OUTPUT);
        assert_eq!(plan[2].send_len, OUTPUT_HIGH_WATER, "the first in turn gets its whole output");
        assert_eq!(plan[1].send_len, 0, "the last in turn gets what is left: nothing");
        let events: Vec<u16> = plan.iter().map(|p| p.events).collect();
        assert_eq!(events, [0, POLLOUT, 0, 0, 0], "none reads; only the one left out waits to send");
    }

    #[test]
    fn eviction_starts_below_the_limit_and_takes_the_longest_waiting_first() {
        assert_eq!(busy_threshold(1024), 768);
        assert_eq!(busy_threshold(8), 4);
        let conn = |since: u64| Conn { last_request_ms: since, partial_since_ms: since, ..conn_with(0, false) };
        let options = Options {
            max_connections: 8,
            timeouts: Timeouts { request_ms: 0, idle_ms: 0, evict_when_busy: true },
            gate_stats: false,
            ..DEFAULTS
        };
        // Four idle connections (the threshold for 8): waited 5, 4, 3 s and 0.5 s.
        let mut conns = vec![conn(0), conn(1000), conn(2000), conn(4500)];
        assert_eq!(next_deadline(&conns, 5000, &options), 0);
        close_waiting(&mut conns, 5000, &options);
        let closed: Vec<bool> = conns.iter().map(|c| c.closing && c.reset).collect();
        assert_eq!(closed, [true, true, true, false], "the three that waited a second or more, never the new one");
        // Below the threshold nothing is evicted, and without timeouts nothing waits for a deadline.
        let mut few = vec![conn(0), conn(0)];
        close_waiting(&mut few, 5000, &options);
        assert!(few.iter().all(|c| !c.closing));
        assert_eq!(next_deadline(&few, 5000, &options), -1);
    }
}
