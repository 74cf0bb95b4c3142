//! The TCP/IP stack (Unikraft's lwip) and its socket API: [`smoltcp`] over
//! the network device (`netdev`), with BSD-like calls that applications
//! make through gates, so the stack can sit in a compartment of its own.
//!
//! Sockets are small integers (from [`FIRST_FD`]). Calls block (parking the
//! calling thread: other scheduler threads run meanwhile, and when there
//! are none the host thread sleeps on the device) unless the socket is
//! non-blocking, in which case they fail with `EAGAIN`. [`poll`] is the
//! readiness call for event loops.
//!
//! Limits: at most `max_connections` TCP endpoints exist at once
//! (listening slots, connections and connections still closing), each with
//! `buffer_size` bytes of receive and of send buffer ([`configure`]), as
//! far as the heap has room for them (an endpoint the heap cannot hold is
//! not made: the connection attempt is dropped or refused as below). A
//! listening socket keeps up to `backlog` endpoints listening, besides the
//! connections established and not yet accepted; connection requests
//! beyond the endpoints listening at a moment are dropped (the peer sends
//! them again, as to a Linux listener whose queue is full). When the limit
//! is reached no endpoint is listening, and further connection attempts
//! are refused (the peer gets a reset) until connections close.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;
use flexos_gate::abi::Errno;
use flexos_gate::abi::poll::{ENTRY as POLL_ENTRY, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT};
use flexos_gate::abi::round::{self as round_abi, Answer, ENTRY as ROUND_ENTRY};
use flexos_gate::{SharedMut, SharedRef, gate};
use flexos_netdev::NetDevice;
use flexos_platform::clock;
use flexos_platform::net::Addressing;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

flexos_gate::component!(NET);
flexos_gate::exports!(
    configure(u32, u32) -> Result<(), Errno>,
    socket() -> Result<i32, Errno>,
    bind(i32, u16) -> Result<(), Errno>,
    listen(i32, u32) -> Result<(), Errno>,
    accept(i32) -> Result<(i32, [u8; 4], u16), Errno>,
    connect(i32, [u8; 4], u16) -> Result<(), Errno>,
    recv(i32, SharedMut<'_>) -> Result<usize, Errno>,
    send(i32, SharedRef<'_>) -> Result<usize, Errno>,
    shutdown(i32, u32) -> Result<(), Errno>,
    close(i32) -> Result<(), Errno>,
    reset(i32) -> Result<(), Errno>,
    set_nonblocking(i32, bool) -> Result<(), Errno>,
    poll(SharedMut<'_>, i64) -> Result<usize, Errno>,
    open_sockets() -> (usize, usize),
    round(SharedMut<'_>, SharedRef<'_>, SharedMut<'_>, i64) -> Result<usize, Errno>,
);

/// The first socket number handed out.
pub const FIRST_FD: i32 = 3;
/// [`shutdown`]: no more receiving.
pub const SHUT_RD: u32 = 0;
/// [`shutdown`]: no more sending (sends FIN).
pub const SHUT_WR: u32 = 1;
/// [`shutdown`]: both.
pub const SHUT_RDWR: u32 = 2;
/// The most endpoints one listener keeps listening (a larger backlog is
/// cut to it): each is a full TCP endpoint with its buffers, and each one
/// absorbs one connection attempt of a burst until it is accepted.
pub const MAX_LISTENING: u32 = 128;
/// Default for [`configure`]'s `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Default for [`configure`]'s `buffer_size`.
pub const DEFAULT_BUFFER_SIZE: u32 = 64 * 1024;

enum Sock {
    /// Created, maybe bound (port 0: not bound).
    Fresh { port: u16 },
    /// Listening on `port` with up to `backlog` endpoints waiting.
    Listener { port: u16, backlog: usize, queue: Vec<SocketHandle> },
    /// A connection.
    Stream { handle: SocketHandle, shut_rd: bool },
}

struct Entry {
    sock: Sock,
    nonblocking: bool,
}

struct Stack {
    device: NetDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    addressing: Addressing,
    epoch_ns: u64,
    /// Closed by the application, still finishing the TCP close.
    closing: Vec<SocketHandle>,
    next_port: u16,
}

impl Stack {
    fn now(&self) -> Instant {
        Instant::from_micros(((clock::monotonic_ns() - self.epoch_ns) / 1000) as i64)
    }

    /// Runs the stack: takes in received frames, sends what is due.
    fn drive(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.device.flush();
    }

    /// How long the stack may sleep before it has something to do.
    fn delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface.poll_delay(now, &self.sockets).map(|d| Duration::from_micros(d.total_micros()))
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

struct Net {
    stack: Option<Stack>,
    table: Vec<Option<Entry>>,
    max_connections: usize,
    buffer_size: usize,
    /// TCP endpoints in the socket set.
    endpoints: usize,
    /// Ports already made reachable from the host.
    exposed: Vec<u16>,
}

impl Default for Net {
    fn default() -> Net {
        Net {
            stack: None,
            table: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            buffer_size: DEFAULT_BUFFER_SIZE as usize,
            endpoints: 0,
            exposed: Vec::new(),
        }
    }
}

fn with<R>(f: impl FnOnce(&mut Net) -> R) -> R {
    flexos_gate::with_state(flexos_gate::me!(), f)
}

impl Net {
    /// The stack, started on first use.
    fn stack(&mut self) -> Result<&mut Stack, Errno> {
        if self.stack.is_none() {
            let (mut device, addressing) = NetDevice::open().map_err(|e| {
                flexos_platform::console::write_err(format!("flexos: net: {e}\n").as_bytes());
                Errno::EIO
            })?;
            let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(addressing.mac)));
            let mut seed = [0u8; 8];
            flexos_platform::random::fill(&mut seed);
            config.random_seed = u64::from_le_bytes(seed);
            let mut iface = Interface::new(config, &mut device, Instant::from_micros(0));
            let [a, b, c, d] = addressing.ip;
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), addressing.prefix));
            });
            let [a, b, c, d] = addressing.gateway;
            let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
            self.stack = Some(Stack {
                device,
                iface,
                sockets: SocketSet::new(Vec::new()),
                addressing,
                epoch_ns: clock::monotonic_ns(),
                closing: Vec::new(),
                next_port: 49152,
            });
        }
        Ok(self.stack.as_mut().expect("started above"))
    }

    fn entry(&mut self, fd: i32) -> Result<&mut Entry, Errno> {
        let i = fd.checked_sub(FIRST_FD).ok_or(Errno::EBADF)? as usize;
        self.table.get_mut(i).and_then(Option::as_mut).ok_or(Errno::EBADF)
    }

    fn new_fd(&mut self, sock: Sock) -> i32 {
        let entry = Some(Entry { sock, nonblocking: false });
        let i = match self.table.iter().position(Option::is_none) {
            Some(i) => {
                self.table[i] = entry;
                i
            }
            None => {
                self.table.push(entry);
                self.table.len() - 1
            }
        };
        i as i32 + FIRST_FD
    }

    /// A new TCP endpoint, if the connection limit and the heap allow one
    /// (`ENOBUFS` otherwise: buffers too large for the heap cost a
    /// connection, never the image).
    fn new_endpoint(&mut self) -> Result<SocketHandle, Errno> {
        let size = self.buffer_size;
        if self.endpoints >= self.max_connections || !flexos_alloc::has_room(2 * size) {
            return Err(Errno::ENOBUFS);
        }
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(alloc::vec![0; size]),
            tcp::SocketBuffer::new(alloc::vec![0; size]),
        );
        sock.set_nagle_enabled(false);
        let h = self.stack()?.sockets.add(sock);
        self.endpoints += 1;
        Ok(h)
    }

    /// Keeps `backlog` endpoints listening on every listener (besides the
    /// connections established and not yet accepted), as far as the limit allows.
    fn replenish(&mut self) {
        for i in 0..self.table.len() {
            // Connections reset before they were accepted free their endpoints.
            if let (Some(stack), Some(Some(Entry { sock: Sock::Listener { queue, .. }, .. }))) =
                (self.stack.as_mut(), self.table.get_mut(i))
            {
                let before = queue.len();
                queue.retain(|&h| {
                    let closed = stack.sockets.get::<tcp::Socket>(h).state() == State::Closed;
                    if closed {
                        stack.sockets.remove(h);
                    }
                    !closed
                });
                self.endpoints -= before - queue.len();
            }
            while let Some(Some(Entry { sock: Sock::Listener { port, backlog, queue }, .. })) = self.table.get(i) {
                let (port, backlog) = (*port, *backlog);
                let Some(stack) = self.stack.as_mut() else { return };
                if queue.iter().filter(|&&h| !established(stack.tcp(h).state())).count() >= backlog {
                    break;
                }
                let Ok(h) = self.new_endpoint() else { return };
                let stack = self.stack.as_mut().expect("listeners imply a stack");
                if stack.tcp(h).listen(port).is_err() {
                    stack.sockets.remove(h);
                    self.endpoints -= 1;
                    return;
                }
                if let Some(Some(Entry { sock: Sock::Listener { queue, .. }, .. })) = self.table.get_mut(i) {
                    queue.push(h);
                }
            }
        }
    }

    /// Tells the device how many connection requests each listener can
    /// take now (its endpoints in `Listen`); while more endpoints can be
    /// made, requests beyond that are dropped and come again (as on Linux),
    /// instead of being refused. At the limit they are refused.
    fn admit_syns(&mut self) {
        let Some(Stack { sockets, device, .. }) = self.stack.as_mut() else { return };
        let room = self.endpoints < self.max_connections;
        device.admit_syns(self.table.iter().flatten().filter_map(|e| match &e.sock {
            Sock::Listener { port, queue, .. } if room => {
                Some((*port, queue.iter().filter(|&&h| sockets.get::<tcp::Socket>(h).state() == State::Listen).count()))
            }
            _ => None,
        }));
    }

    /// Drives the stack and frees endpoints whose close has finished.
    fn drive(&mut self) -> Result<(), Errno> {
        self.admit_syns();
        let stack = self.stack()?;
        stack.drive();
        // Data for a socket its application closed: nobody will read it, so
        // the peer gets a reset (as on Linux) instead of a window that stays
        // shut while it waits to send the rest.
        let mut aborted = false;
        for &h in &stack.closing {
            let s = stack.sockets.get_mut::<tcp::Socket>(h);
            if s.recv_queue() > 0 && s.state() != State::Closed {
                s.abort();
                aborted = true;
            }
        }
        if aborted {
            stack.drive(); // sends the resets
        }
        let before = stack.closing.len();
        let Stack { closing, sockets, .. } = stack;
        closing.retain(|&h| {
            let done = matches!(sockets.get::<tcp::Socket>(h).state(), State::Closed | State::TimeWait);
            if done {
                sockets.remove(h);
            }
            !done
        });
        let freed = before - stack.closing.len();
        self.endpoints -= freed;
        // Listening endpoints that took a connection in this round are replaced.
        self.replenish();
        Ok(())
    }

    /// The events of `fd` among `requested` (plus errors and hang-ups).
    fn readiness(&self, fd: i32, requested: u16) -> u16 {
        let entry = fd.checked_sub(FIRST_FD).and_then(|i| self.table.get(i as usize)).and_then(Option::as_ref);
        let Some(entry) = entry else { return POLLNVAL };
        let stack = &self.stack;
        let ready = match &entry.sock {
            Sock::Fresh { .. } => POLLOUT | POLLHUP,
            Sock::Listener { queue, .. } => {
                let stack = stack.as_ref().expect("listeners imply a stack");
                let accepted = queue.iter().any(|&h| established(stack.sockets.get::<tcp::Socket>(h).state()));
                if accepted { POLLIN } else { 0 }
            }
            &Sock::Stream { handle, shut_rd } => {
                let stack = stack.as_ref().expect("streams imply a stack");
                let s = stack.sockets.get::<tcp::Socket>(handle);
                let mut ev = 0;
                if shut_rd || s.can_recv() || !s.may_recv() && s.state() != State::SynSent {
                    ev |= POLLIN;
                }
                if s.can_send() {
                    ev |= POLLOUT;
                }
                if matches!(s.state(), State::Closed | State::TimeWait) {
                    ev |= POLLHUP;
                }
                ev
            }
        };
        ready & (requested | POLLERR | POLLHUP | POLLNVAL)
    }
}

fn established(state: State) -> bool {
    !matches!(state, State::Listen | State::SynReceived | State::Closed)
}

/// Parks the calling thread until the stack may have news, or `delay`
/// passes: other scheduler threads run first; with none, the host thread
/// sleeps on the device.
fn park(delay: Option<Duration>) {
    if gate!(flexos_sched::thread_count()) > 1 {
        gate!(flexos_sched::yield_now());
        let short = Some(delay.map_or(Duration::from_millis(1), |d| d.min(Duration::from_millis(1))));
        with(|n| n.stack.as_mut().map(|s| s.device.wait(short)));
    } else {
        with(|n| n.stack.as_mut().map(|s| s.device.wait(delay)));
    }
}

/// Runs `attempt` until it stops failing with `EAGAIN` (driving the stack
/// and parking in between), or once for a non-blocking socket.
fn blocking<R>(fd: i32, mut attempt: impl FnMut(&mut Net) -> Result<R, Errno>) -> Result<R, Errno> {
    loop {
        let (result, delay) = with(|n| {
            let r = attempt(n);
            if r.as_ref().err() != Some(&Errno::EAGAIN) {
                return (Some(r), None);
            }
            if let Err(e) = n.drive() {
                return (Some(Err(e)), None);
            }
            let r = attempt(n);
            let nonblocking = n.entry(fd).map(|e| e.nonblocking).unwrap_or(true);
            if r.as_ref().err() != Some(&Errno::EAGAIN) || nonblocking {
                return (Some(r), None);
            }
            (None, n.stack.as_mut().and_then(Stack::delay))
        });
        if let Some(r) = result {
            return r;
        }
        park(delay);
    }
}

/// Sets the limits for sockets created afterwards: the most TCP endpoints
/// at once and the receive and send buffer size of each. Fails with
/// `EINVAL` for zero connections or a buffer outside 512 B–16 MiB.
pub(crate) fn configure(max_connections: u32, buffer_size: u32) -> Result<(), Errno> {
    if max_connections == 0 || !(512..=16 << 20).contains(&buffer_size) {
        return Err(Errno::EINVAL);
    }
    with(|n| {
        n.max_connections = max_connections as usize;
        n.buffer_size = buffer_size as usize;
        Ok(())
    })
}

/// A new TCP socket.
pub(crate) fn socket() -> Result<i32, Errno> {
    with(|n| {
        n.stack()?;
        Ok(n.new_fd(Sock::Fresh { port: 0 }))
    })
}

/// Binds `fd` to local `port` (any of the image's addresses).
pub(crate) fn bind(fd: i32, port: u16) -> Result<(), Errno> {
    with(|n| {
        let taken =
            n.table.iter().flatten().any(
                |e| matches!(e.sock, Sock::Listener { port: p, .. } | Sock::Fresh { port: p } if p == port && p != 0),
            );
        match &mut n.entry(fd)?.sock {
            Sock::Fresh { port: p } if *p == 0 => {
                if taken || port == 0 {
                    return Err(if port == 0 { Errno::EINVAL } else { Errno::EADDRINUSE });
                }
                *p = port;
                Ok(())
            }
            _ => Err(Errno::EINVAL),
        }
    })
}

/// Makes the bound socket `fd` accept connections, keeping up to `backlog`
/// (1 to [`MAX_LISTENING`]) waiting; prints `listening: HOST:PORT`, how a client on
/// this machine reaches it.
pub(crate) fn listen(fd: i32, backlog: u32) -> Result<(), Errno> {
    with(|n| {
        let port = match n.entry(fd)?.sock {
            Sock::Fresh { port } if port != 0 => port,
            _ => return Err(Errno::EINVAL),
        };
        let backlog = backlog.clamp(1, MAX_LISTENING) as usize;
        n.entry(fd)?.sock = Sock::Listener { port, backlog, queue: Vec::new() };
        n.replenish();
        if !n.exposed.contains(&port) {
            let stack = n.stack()?;
            let addressing = stack.addressing;
            let (host, host_port) = stack.device.expose(&addressing, port).map_err(|e| {
                flexos_platform::console::write_err(
                    format!("flexos: net: cannot expose port {port}: {e}\n").as_bytes(),
                );
                Errno::EADDRINUSE
            })?;
            n.exposed.push(port);
            flexos_platform::console::write_out(format!("listening: {host}:{host_port}\n").as_bytes());
        }
        Ok(())
    })
}

/// Takes an established connection from listener `fd`; returns its socket
/// and the peer's address and port.
pub(crate) fn accept(fd: i32) -> Result<(i32, [u8; 4], u16), Errno> {
    blocking(fd, |n| {
        let Sock::Listener { queue, .. } = &n.entry(fd)?.sock else { return Err(Errno::EINVAL) };
        let queue = queue.clone();
        let stack = n.stack()?;
        let Some(pos) = queue.iter().position(|&h| established(stack.tcp(h).state())) else {
            return Err(Errno::EAGAIN);
        };
        let handle = queue[pos];
        let (ip, port) = match stack.tcp(handle).remote_endpoint() {
            Some(ep) => match ep.addr {
                IpAddress::Ipv4(a) => (a.octets(), ep.port),
            },
            None => ([0; 4], 0),
        };
        if let Sock::Listener { queue, .. } = &mut n.entry(fd)?.sock {
            queue.remove(pos);
        }
        let new = n.new_fd(Sock::Stream { handle, shut_rd: false });
        n.replenish();
        Ok((new, ip, port))
    })
}

/// Connects `fd` to `ip`:`port`; a blocking socket waits until the
/// connection is established (`ECONNREFUSED` if it is not).
pub(crate) fn connect(fd: i32, ip: [u8; 4], port: u16) -> Result<(), Errno> {
    with(|n| {
        if !matches!(n.entry(fd)?.sock, Sock::Fresh { .. }) {
            return Err(Errno::EISCONN);
        }
        let h = n.new_endpoint()?;
        let stack = n.stack()?;
        let local = stack.next_port;
        stack.next_port = if local == u16::MAX { 49152 } else { local + 1 };
        let [a, b, c, d] = ip;
        let Stack { iface, sockets, .. } = stack;
        let sock = sockets.get_mut::<tcp::Socket>(h);
        if sock.connect(iface.context(), (Ipv4Address::new(a, b, c, d), port), local).is_err() {
            stack.sockets.remove(h);
            n.endpoints -= 1;
            return Err(Errno::EINVAL);
        }
        n.entry(fd)?.sock = Sock::Stream { handle: h, shut_rd: false };
        Ok(())
    })?;
    blocking(fd, |n| {
        let Sock::Stream { handle, .. } = n.entry(fd)?.sock else { return Err(Errno::EINVAL) };
        match n.stack()?.tcp(handle).state() {
            State::SynSent | State::SynReceived => Err(Errno::EAGAIN),
            State::Closed => Err(Errno::ECONNREFUSED),
            _ => Ok(()),
        }
    })
}

fn stream(n: &mut Net, fd: i32) -> Result<(SocketHandle, bool), Errno> {
    match n.entry(fd)?.sock {
        Sock::Stream { handle, shut_rd } => Ok((handle, shut_rd)),
        _ => Err(Errno::ENOTCONN),
    }
}

/// Receives into `buf`; returns the byte count, 0 at the end of the stream.
pub(crate) fn recv(fd: i32, mut buf: SharedMut<'_>) -> Result<usize, Errno> {
    blocking(fd, |n| recv_now(n, fd, &mut buf))
}

/// One non-blocking receive into `buf`: the byte count, 0 at the end of
/// the stream, `EAGAIN` when nothing has arrived.
fn recv_now(n: &mut Net, fd: i32, buf: &mut SharedMut<'_>) -> Result<usize, Errno> {
    let (handle, shut_rd) = stream(n, fd)?;
    if shut_rd {
        return Ok(0);
    }
    let s = n.stack()?.tcp(handle);
    if s.can_recv() {
        // Straight from the socket's buffer into shared memory (in two
        // steps when the data wraps around the end of the ring buffer).
        let mut done = 0;
        while done < buf.len() && s.can_recv() {
            let room = buf.len() - done;
            let target = &mut *buf;
            done += s
                .recv(|bytes| {
                    let n = bytes.len().min(room);
                    target.write_at(done, &bytes[..n]);
                    (n, n)
                })
                .map_err(|_| Errno::ECONNRESET)?;
        }
        return Ok(done);
    }
    if !s.may_recv() && s.state() != State::SynSent {
        return Ok(0);
    }
    Err(Errno::EAGAIN)
}

/// Sends from `data`; returns how many bytes the stack took (at least one,
/// unless `data` is empty). The bytes leave at the next poll of the stack.
pub(crate) fn send(fd: i32, data: SharedRef<'_>) -> Result<usize, Errno> {
    if data.is_empty() {
        return Ok(0);
    }
    blocking(fd, |n| send_now(n, fd, data))
}

/// One non-blocking send of `data` (not empty): the bytes taken, or
/// `EAGAIN` when the send buffer is full.
fn send_now(n: &mut Net, fd: i32, data: SharedRef<'_>) -> Result<usize, Errno> {
    let (handle, _) = stream(n, fd)?;
    let s = n.stack()?.tcp(handle);
    if !s.may_send() {
        return Err(if s.state() == State::SynSent { Errno::EAGAIN } else { Errno::EPIPE });
    }
    // Each byte is copied once, from shared memory into the socket's
    // ring buffer (in two steps when free space wraps around its end).
    let mut done = 0;
    while done < data.len() && s.can_send() {
        let rest = data.slice(done..data.len());
        done += s
            .send(|space| {
                let n = space.len().min(rest.len());
                rest.slice(0..n).copy_to_slice(&mut space[..n]);
                (n, n)
            })
            .map_err(|_| Errno::EPIPE)?;
    }
    if done == 0 { Err(Errno::EAGAIN) } else { Ok(done) }
}

/// Shuts down receiving ([`SHUT_RD`]), sending ([`SHUT_WR`]: sends FIN
/// after the queued bytes) or both.
pub(crate) fn shutdown(fd: i32, how: u32) -> Result<(), Errno> {
    if how > SHUT_RDWR {
        return Err(Errno::EINVAL);
    }
    with(|n| {
        let (handle, _) = stream(n, fd)?;
        if how != SHUT_WR
            && let Sock::Stream { shut_rd, .. } = &mut n.entry(fd)?.sock
        {
            *shut_rd = true;
        }
        if how != SHUT_RD {
            n.stack()?.tcp(handle).close();
        }
        n.drive()
    })
}

/// Closes `fd`. A connection finishes sending and closes gracefully (or is
/// reset if received bytes were never read); a listener drops the
/// connections not yet accepted.
pub(crate) fn close(fd: i32) -> Result<(), Errno> {
    close_socket(fd, false)
}

/// Closes `fd` at once: a connection is reset and its endpoint freed
/// without the TCP close handshake (for clients the application gives up
/// on, such as one that kept it waiting too long).
pub(crate) fn reset(fd: i32) -> Result<(), Errno> {
    close_socket(fd, true)
}

fn close_socket(fd: i32, reset: bool) -> Result<(), Errno> {
    with(|n| {
        let i = fd.checked_sub(FIRST_FD).ok_or(Errno::EBADF)? as usize;
        let entry = n.table.get_mut(i).and_then(Option::take).ok_or(Errno::EBADF)?;
        let handles = match entry.sock {
            Sock::Fresh { .. } => Vec::new(),
            Sock::Listener { queue, .. } => queue,
            Sock::Stream { handle, .. } => alloc::vec![handle],
        };
        let stack = n.stack()?;
        for h in handles {
            let s = stack.tcp(h);
            // A peer that vanished must not hold the endpoint forever: probe it, give up after a while.
            s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(5)));
            s.set_timeout(Some(smoltcp::time::Duration::from_secs(15)));
            if reset || s.recv_queue() > 0 || matches!(s.state(), State::Listen | State::SynReceived) {
                s.abort();
            } else {
                s.close();
            }
            stack.closing.push(h);
        }
        n.drive()
    })
}

/// Makes calls on `fd` fail with `EAGAIN` instead of blocking (or block again).
pub(crate) fn set_nonblocking(fd: i32, nonblocking: bool) -> Result<(), Errno> {
    with(|n| {
        n.entry(fd)?.nonblocking = nonblocking;
        Ok(())
    })
}

/// Waits until one of the sockets in `entries` (see
/// `flexos_gate::abi::poll`) is ready for its requested events, or `timeout_ms`
/// passes (negative: no limit); fills in the returned events and returns
/// how many entries have some.
pub(crate) fn poll(mut entries: SharedMut<'_>, timeout_ms: i64) -> Result<usize, Errno> {
    if entries.len() % POLL_ENTRY != 0 {
        return Err(Errno::EINVAL);
    }
    wait_ready(timeout_ms, |n| {
        let mut ready = 0;
        for i in 0..entries.len() / POLL_ENTRY {
            let mut e = [0u8; 6];
            entries.read_at(i * POLL_ENTRY, &mut e);
            let fd = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let events = u16::from_le_bytes([e[4], e[5]]);
            let revents = if fd < 0 { 0 } else { n.readiness(fd, events) };
            entries.write_at(i * POLL_ENTRY + 6, &revents.to_le_bytes());
            ready += usize::from(revents != 0);
        }
        ready
    })
}

/// Drives the stack and counts the ready entries with `check`, parking in
/// between, until `check` finds some or `timeout_ms` passes (negative: no
/// limit); returns the last count.
fn wait_ready(timeout_ms: i64, mut check: impl FnMut(&mut Net) -> usize) -> Result<usize, Errno> {
    let deadline = (timeout_ms >= 0).then(|| clock::monotonic_ns().saturating_add(timeout_ms as u64 * 1_000_000));
    loop {
        let (ready, delay) = with(|n| {
            n.drive()?;
            let ready = check(n);
            let delay = n.stack.as_mut().and_then(Stack::delay);
            Ok::<_, Errno>((ready, delay))
        })?;
        let now = clock::monotonic_ns();
        if ready > 0 || deadline.is_some_and(|d| now >= d) {
            return Ok(ready);
        }
        let left = deadline.map(|d| Duration::from_nanos(d - now));
        let wait = match (delay, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        park(wait);
    }
}

/// One round of an event loop in one call (the table in `entries` is laid
/// out as in `flexos_gate::abi::round`): takes each entry's output from
/// `sends` (as a non-blocking [`send`]); waits like [`poll`] until an entry
/// is ready or `timeout_ms` passes; then receives the input of every ready
/// connection that asked for it (`POLLIN`) into `input`, as a non-blocking
/// [`recv`] until the connection has no more, in entry order, as far as
/// `input` has room. An entry whose output was not all taken also waits
/// for `POLLOUT`. Returns how many entries have events; fails with
/// `EINVAL`, doing nothing, if the table is malformed or an output lies
/// outside `sends`.
pub(crate) fn round(
    mut entries: SharedMut<'_>,
    sends: SharedRef<'_>,
    mut input: SharedMut<'_>,
    timeout_ms: i64,
) -> Result<usize, Errno> {
    if entries.len() % ROUND_ENTRY != 0 {
        return Err(Errno::EINVAL);
    }
    // One private copy of the table: each shared byte is read once.
    let mut table = Vec::new();
    table.try_reserve_exact(entries.len()).map_err(|_| Errno::ENOMEM)?;
    table.resize(entries.len(), 0);
    entries.read_at(0, &mut table);
    let mut rows = Vec::new();
    rows.try_reserve_exact(table.len() / ROUND_ENTRY).map_err(|_| Errno::ENOMEM)?;
    for e in table.chunks_exact(ROUND_ENTRY) {
        let r = round_abi::request(e.try_into().expect("chunks of ROUND_ENTRY bytes"));
        let end = (r.send_at as usize).checked_add(r.send_len as usize);
        if r.send_len > 0 && end.is_none_or(|end| end > sends.len()) {
            return Err(Errno::EINVAL);
        }
        rows.push((r, Answer::default()));
    }
    with(|n| {
        for (r, a) in rows.iter_mut().filter(|(r, _)| r.fd >= 0 && r.send_len > 0) {
            let data = sends.slice(r.send_at as usize..(r.send_at + r.send_len) as usize);
            a.sent = match send_now(n, r.fd, data) {
                Ok(k) => k as i32,
                Err(Errno::EAGAIN) => 0,
                Err(e) => -e.0,
            };
        }
    });
    let ready = wait_ready(timeout_ms, |n| {
        let mut ready = 0;
        for (r, a) in rows.iter_mut() {
            let short = r.send_len > 0 && (0..r.send_len as i32).contains(&a.sent);
            let events = if short { r.events | POLLOUT } else { r.events };
            a.revents = if r.fd < 0 { 0 } else { n.readiness(r.fd, events) };
            ready += usize::from(a.revents != 0);
        }
        ready
    })?;
    with(|n| {
        let (mut at, room) = (0, input.len());
        for (r, a) in rows.iter_mut() {
            let readable = a.revents & (POLLIN | POLLHUP | POLLERR) != 0;
            if r.fd < 0 || r.events & POLLIN == 0 || !readable || stream(n, r.fd).is_err() {
                continue;
            }
            a.recv_at = at as u32;
            while at < room {
                match recv_now(n, r.fd, &mut input.reborrow().slice_mut(at..room)) {
                    Ok(0) => a.ended = true,
                    Ok(k) => {
                        at += k;
                        a.recv_len += k as u32;
                        continue;
                    }
                    Err(Errno::EAGAIN) => {}
                    Err(_) => a.ended = true,
                }
                break;
            }
        }
    });
    for (e, (_, a)) in table.chunks_exact_mut(ROUND_ENTRY).zip(&rows) {
        round_abi::put_answer(e.try_into().expect("chunks of ROUND_ENTRY bytes"), a);
    }
    entries.write_at(0, &table);
    Ok(ready)
}

/// How many sockets are open and how many TCP endpoints exist.
pub(crate) fn open_sockets() -> (usize, usize) {
    with(|n| (n.table.iter().flatten().count(), n.endpoints))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use flexos_gate::SharedBuf;
    use flexos_gate::abi::round::{Request, put_request};

    /// A round table of `requests`, in shared memory.
    fn table(requests: &[Request]) -> SharedBuf {
        let mut t = alloc::vec![0u8; requests.len() * ROUND_ENTRY];
        for (i, r) in requests.iter().enumerate() {
            put_request(&mut t, i, r);
        }
        SharedBuf::from_slice(&t)
    }

    #[test]
    fn a_malformed_round_fails_before_anything_is_done() {
        let sends = SharedBuf::from_slice(&[7u8; 100]);
        let mut input = SharedBuf::zeroed(64);
        let out = |at, len| Request { fd: FIRST_FD, events: POLLIN, send_at: at, send_len: len };
        // An output past the end of the send area, or one whose end overflows.
        for bad in [out(90, 11), out(u32::MAX, 2), out(100, 1)] {
            let mut t = table(&[out(0, 10), bad]);
            let before = t.to_vec(t.len());
            let r = round(t.shared_mut(), sends.shared(), input.shared_mut(), 0);
            assert_eq!(r, Err(Errno::EINVAL), "{bad:?}");
            assert_eq!(t.to_vec(t.len()), before, "nothing answered in the table");
        }
        // A table that is not whole entries.
        let mut short = SharedBuf::zeroed(ROUND_ENTRY + 1);
        assert_eq!(round(short.shared_mut(), sends.shared(), input.shared_mut(), 0), Err(Errno::EINVAL));
        // The stack was never started: the checks come before any socket is looked at.
        assert!(with(|n| n.stack.is_none()));
    }
}
