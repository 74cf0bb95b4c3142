//! The zero-setup backend: the image's device is a private virtual wire
//! whose other end is a relay, which listens on 127.0.0.1 for every port
//! the image exposes and carries each accepted connection over the wire
//! with a TCP/IP stack of its own (smoltcp), byte for byte.
//!
//! The relay is platform code (like a tap device's kernel side) and runs
//! inline, on the thread that drives the image's device, whenever the
//! image's stack sends, takes in or waits for frames: no second thread, no
//! lock and no wake-up between the two stacks, so the relay costs the image
//! what a tap device's kernel side costs Linux, and the client, the image
//! and nothing else share the CPUs. The relay never touches the image's
//! memory; the two sides exchange only frames. Host sockets are watched
//! with one `epoll` instance, so a round with nothing ready costs one
//! system call whatever the number of connections.

use super::{FORWARD_IMAGE_IP, FORWARD_RELAY_IP, MAX_FRAME};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Socket buffer size of each relayed connection, per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// The most connections the relay opens to the image at once (in SYN-SENT);
/// clients accepted meanwhile wait their turn, so a burst of clients never
/// asks the image for more connections at once than it keeps listening.
const MAX_CONNECTING: usize = 32;

/// How long the relay keeps trying to connect a client to the image while
/// the image refuses it (a stack at its connection limit resets connection
/// requests): the client, already connected to 127.0.0.1, waits as it
/// would for its own retransmitted connection requests to a Linux listener
/// whose queue is full, instead of losing its connection at once.
const REFUSED_RETRY_FOR: Duration = Duration::from_millis(2000);

/// The pause before the relay tries again to connect a refused client.
const REFUSED_RETRY_AFTER: Duration = Duration::from_millis(50);

/// The backlog of the relay's listening sockets on 127.0.0.1.
const HOST_BACKLOG: i32 = 1024;

/// The most readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// `epoll` tokens at and above this one name listeners (index = token - LISTENER_TOKEN).
const LISTENER_TOKEN: u64 = 1 << 32;

/// The relay's end of the wire, as a smoltcp device.
struct RelayDevice {
    /// Frames the image sent, not yet taken in by the relay's stack.
    from_image: VecDeque<Vec<u8>>,
    /// Frames the relay's stack sent, not yet taken by the image.
    to_image: VecDeque<Vec<u8>>,
    /// Buffers of frames the relay took in, for the image's next frames.
    spare: Vec<Vec<u8>>,
}

struct RelayRx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);
struct RelayTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for RelayRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0);
        if self.1.len() < 64 {
            self.1.push(self.0);
        }
        r
    }
}

impl smoltcp::phy::TxToken for RelayTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for RelayDevice {
    type RxToken<'a> = RelayRx<'a>;
    type TxToken<'a> = RelayTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RelayRx<'_>, RelayTx<'_>)> {
        let frame = self.from_image.pop_front()?;
        Some((RelayRx(frame, &mut self.spare), RelayTx(&mut self.to_image)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<RelayTx<'_>> {
        Some(RelayTx(&mut self.to_image))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

/// A client accepted on 127.0.0.1 and not connected to the image yet.
struct Waiting {
    stream: TcpStream,
    /// The image's port it goes to.
    image_port: u16,
    /// When the relay accepted it.
    since: Instant,
    /// When the relay may try to connect it (after a refusal: a little later).
    not_before: Instant,
}

/// One relayed connection: a host socket and the relay's socket to the image.
struct Conn {
    stream: TcpStream,
    handle: SocketHandle,
    /// The image's port, when the client was accepted, and whether the
    /// image ever accepted the connection: a refused one is tried again.
    image_port: u16,
    since: Instant,
    connected: bool,
    /// The events `epoll` watches for on the host socket.
    interest: u32,
    /// `epoll` reported the host socket readable and no read since found it empty.
    readable: bool,
    /// A write to the host socket would block; wait for `EPOLLOUT`.
    write_blocked: bool,
    host_eof: bool,
    host_shut: bool,
    /// `epoll` reported a hang-up or an error on the host socket: the
    /// client can take nothing more (after an error, or after both
    /// directions were shut down).
    host_gone: bool,
    /// The host side failed or went away: drop the connection.
    broken: bool,
}

/// The relay: the 127.0.0.1 listeners, the relayed connections, and the
/// relay's own TCP/IP stack on the wire.
pub struct Forwarder {
    device: RelayDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<(TcpListener, u16)>,
    /// Listeners `epoll` reported readable.
    listeners_ready: bool,
    /// Accepted clients not yet connected to the image, oldest first.
    waiting: VecDeque<Waiting>,
    /// Relayed connections; a connection's index is its `epoll` token.
    conns: Vec<Option<Conn>>,
    next_port: u16,
    epoch: Instant,
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Forwarder {
    /// A relay with no listener yet, and its `epoll` instance.
    pub(super) fn new() -> io::Result<Forwarder> {
        // SAFETY: epoll_create1 takes no pointer; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut device = RelayDevice { from_image: VecDeque::new(), to_image: VecDeque::new(), spare: Vec::new() };
        let mac = EthernetAddress([0x02, 0xf1, 0, 0, 0, 2]);
        let mut iface = Interface::new(Config::new(mac.into()), &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let [a0, a1, a2, a3] = FORWARD_RELAY_IP;
            let _ = a.push(IpCidr::new(IpAddress::v4(a0, a1, a2, a3), 24));
        });
        Ok(Forwarder {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            listeners_ready: false,
            waiting: VecDeque::new(),
            conns: Vec::new(),
            next_port: 49152,
            epoch: Instant::now(),
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        })
    }

    /// Listens on 127.0.0.1:`port` (or a free port if that one is taken)
    /// and relays its connections to the image's `port`.
    pub(super) fn expose(&mut self, port: u16) -> io::Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", port)).or_else(|_| TcpListener::bind(("127.0.0.1", 0)))?;
        // std listens with a backlog of 128; a burst of clients needs more
        // (listen again to raise it, as Redis's tcp-backlog 511 does).
        // SAFETY: listen on a socket this function owns; no memory is passed.
        if unsafe { libc::listen(listener.as_raw_fd(), HOST_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        let host_port = listener.local_addr()?.port();
        let token = LISTENER_TOKEN + self.listeners.len() as u64;
        watch(&self.epoll, libc::EPOLL_CTL_ADD, listener.as_raw_fd(), libc::EPOLLIN as u32, token)?;
        self.listeners.push((listener, port));
        Ok(host_port)
    }

    /// Takes a frame the image sends.
    pub(super) fn push_from_image(&mut self, frame: &[u8]) {
        let mut buf = self.device.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.device.from_image.push_back(buf);
    }

    /// Runs the relay once (takes in the image's frames, moves what the
    /// host sockets have ready) and hands up to `max` frames for the image to `out`.
    pub(super) fn take_to_image(&mut self, out: &mut VecDeque<Vec<u8>>, max: usize) {
        self.step(Some(Duration::ZERO));
        let n = self.device.to_image.len().min(max);
        out.extend(self.device.to_image.drain(..n));
    }

    /// Runs the relay once after the image sent its frames of a round.
    pub(super) fn flush(&mut self) {
        if !self.device.from_image.is_empty() {
            self.process();
        }
    }

    /// Blocks until a frame for the image may be pending or `timeout`
    /// passes (`None`: no limit), running the relay on whatever woke it.
    pub(super) fn wait(&mut self, timeout: Option<Duration>) {
        if !self.device.to_image.is_empty() {
            return;
        }
        let now = self.now();
        let relay_due = self.iface.poll_delay(now, &self.sockets).map(|d| Duration::from_micros(d.total_micros()));
        let retry_due = if self.waiting.is_empty() {
            None
        } else {
            let now = Instant::now();
            self.waiting.iter().map(|w| w.not_before.saturating_duration_since(now)).min()
        };
        let timeout = [timeout, relay_due, retry_due].into_iter().flatten().min();
        self.step(timeout);
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Waits up to `timeout` for host sockets to become ready, then moves
    /// everything that can move.
    fn step(&mut self, timeout: Option<Duration>) {
        self.collect_events(timeout);
        self.accept();
        self.process();
    }

    /// The relay's stack takes in the image's frames, bytes move between
    /// host sockets and relay sockets, and the stack sends what is due.
    fn process(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.pump();
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.update_interest();
    }

    /// Notes which host sockets `epoll` reports ready (waiting up to `timeout`).
    fn collect_events(&mut self, timeout: Option<Duration>) {
        let ms = super::timeout_ms(timeout);
        // SAFETY: `events` is a valid, writable array of `EVENTS` entries.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), EVENTS as i32, ms) };
        for e in &self.events[..n.max(0) as usize] {
            let (token, flags) = (e.u64, e.events);
            if token >= LISTENER_TOKEN {
                self.listeners_ready = true;
                continue;
            }
            let Some(Some(c)) = self.conns.get_mut(token as usize) else { continue };
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0 {
                c.readable = true;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                c.write_blocked = false;
            }
            if flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                c.host_gone = true;
            }
        }
    }

    fn accept(&mut self) {
        if std::mem::take(&mut self.listeners_ready) {
            for (listener, image_port) in &self.listeners {
                while let Ok((stream, _)) = listener.accept() {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let now = Instant::now();
                    self.waiting.push_back(Waiting { stream, image_port: *image_port, since: now, not_before: now });
                }
            }
        }
        if self.waiting.is_empty() {
            return;
        }
        let sockets = &self.sockets;
        let mut connecting = self
            .conns
            .iter()
            .flatten()
            .filter(|c| sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::SynSent)
            .count();
        let now = Instant::now();
        let mut next = 0;
        while connecting < MAX_CONNECTING && next < self.waiting.len() {
            if self.waiting[next].not_before > now {
                next += 1;
                continue;
            }
            let Some(Waiting { stream, image_port, since, .. }) = self.waiting.remove(next) else { break };
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RELAY_BUFFER]),
                tcp::SocketBuffer::new(vec![0; RELAY_BUFFER]),
            );
            sock.set_nagle_enabled(false);
            let local = self.next_port;
            self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
            let [a0, a1, a2, a3] = FORWARD_IMAGE_IP;
            let remote = (Ipv4Address::new(a0, a1, a2, a3), image_port);
            if sock.connect(self.iface.context(), remote, local).is_err() {
                continue; // dropping `stream` closes the client's connection.
            }
            let slot = self.conns.iter().position(Option::is_none).unwrap_or(self.conns.len());
            // Nothing to read before the connection to the image is up:
            // `update_interest` asks for input once the relay socket can send.
            if watch(&self.epoll, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), 0, slot as u64).is_err() {
                continue;
            }
            let handle = self.sockets.add(sock);
            let conn = Conn {
                stream,
                handle,
                image_port,
                since,
                connected: false,
                interest: 0,
                readable: false,
                write_blocked: false,
                host_eof: false,
                host_shut: false,
                host_gone: false,
                broken: false,
            };
            if slot == self.conns.len() {
                self.conns.push(Some(conn));
            } else {
                self.conns[slot] = Some(conn);
            }
            connecting += 1;
        }
    }

    /// Moves bytes both ways for every connection; drops finished ones.
    fn pump(&mut self) {
        let sockets = &mut self.sockets;
        let mut refused = Vec::new();
        for entry in self.conns.iter_mut() {
            let Some(c) = entry else { continue };
            let sock = sockets.get_mut::<tcp::Socket>(c.handle);
            c.connected |= !matches!(sock.state(), tcp::State::SynSent | tcp::State::Closed);
            if !c.connected && sock.state() == tcp::State::Closed && !c.host_gone {
                // The image refused the connection: the client waits and
                // is tried again, up to `REFUSED_RETRY_FOR` after it came.
                sockets.remove(c.handle);
                let c = entry.take().expect("the entry is a connection");
                let now = Instant::now();
                if now.duration_since(c.since) < REFUSED_RETRY_FOR
                    && watch(&self.epoll, libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), 0, 0).is_ok()
                {
                    let not_before = now + REFUSED_RETRY_AFTER;
                    refused.push(Waiting { stream: c.stream, image_port: c.image_port, since: c.since, not_before });
                }
                continue;
            }
            // Host → image. A read that does not fill the room it was
            // offered found the socket empty: no second read just to get
            // `EAGAIN` (half of the relay's system calls under a
            // pipelining client); `epoll` is level-triggered, so bytes
            // that come later are reported again.
            while c.readable && !c.host_eof && !c.broken && sock.can_send() {
                let stream = &mut c.stream;
                let r = sock.send(|buf| match stream.read(buf) {
                    Ok(0) => (0, Err(true)),
                    Ok(n) => (n, Ok(n == buf.len())),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => (0, Err(false)),
                    Err(_) => (0, Err(true)),
                });
                match r {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        c.readable = false;
                        break;
                    }
                    Ok(Err(eof)) => {
                        c.host_eof |= eof;
                        c.readable = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if c.host_eof && sock.may_send() {
                sock.close();
            }
            if c.host_gone {
                // What the client sent is forwarded (as far as the image
                // takes it); it cannot receive anything more: drop the
                // connection, so its descriptor is freed and epoll does
                // not report the hang-up again and again.
                c.broken = true;
            }
            // Image → host.
            while !c.write_blocked && sock.can_recv() && !c.broken {
                let stream = &mut c.stream;
                let r = sock.recv(|data| match stream.write(data) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => c.write_blocked = true,
                    _ => c.broken = true,
                }
            }
            if !c.host_shut && !sock.may_recv() && sock.recv_queue() == 0 && sock.state() != tcp::State::SynSent {
                let _ = c.stream.shutdown(Shutdown::Write);
                c.host_shut = true;
            }
            let finished = matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) && sock.recv_queue() == 0;
            if c.broken && !finished {
                sock.abort();
            }
            if finished || c.broken {
                sockets.remove(c.handle);
                *entry = None; // closing the stream takes it out of epoll.
            }
        }
        while matches!(self.conns.last(), Some(None)) {
            self.conns.pop();
        }
        // Refused clients came before any client still waiting.
        for w in refused.into_iter().rev() {
            self.waiting.push_front(w);
        }
    }

    /// Watches each host socket for what the relay can take now: input
    /// while its relay socket has room, output while a write is blocked.
    fn update_interest(&mut self) {
        for (slot, entry) in self.conns.iter_mut().enumerate() {
            let Some(c) = entry else { continue };
            let sock = self.sockets.get::<tcp::Socket>(c.handle);
            let mut want = libc::EPOLLRDHUP as u32;
            if !c.host_eof && sock.can_send() {
                want |= libc::EPOLLIN as u32;
            }
            if c.write_blocked {
                want |= libc::EPOLLOUT as u32;
            }
            if want != c.interest
                && watch(&self.epoll, libc::EPOLL_CTL_MOD, c.stream.as_raw_fd(), want, slot as u64).is_ok()
            {
                c.interest = want;
            }
        }
    }
}

/// Adds (`EPOLL_CTL_ADD`) or changes (`EPOLL_CTL_MOD`) what `epoll` watches on `fd`, under `token`.
fn watch(epoll: &OwnedFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` is a valid epoll_event for the call's duration; both
    // descriptors are open (the caller owns `fd`).
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
