//! The zero-setup backend: a private virtual wire between the image and a
//! relay thread, and the relay, which listens on 127.0.0.1 for every port
//! the image exposes and carries each accepted connection over the wire
//! with a TCP/IP stack of its own (smoltcp), byte for byte.
//!
//! The relay is platform code (like a tap device's kernel side): it runs in
//! the image's host process, on its own thread, and never touches the
//! image's memory; the two sides share only queues of frames.

use super::{FORWARD_IMAGE_IP, FORWARD_RELAY_IP, MAX_FRAME};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Socket buffer size of each relayed connection, per direction.
const RELAY_BUFFER: usize = 64 * 1024;

/// The most connections the relay opens to the image at once (in SYN-SENT);
/// clients accepted meanwhile wait their turn, so a burst of clients never
/// asks the image for more connections at once than it keeps listening.
const MAX_CONNECTING: usize = 32;

/// The backlog of the relay's listening sockets on 127.0.0.1.
const HOST_BACKLOG: i32 = 1024;

/// A wake-up signal that is written at most once until it is cleared.
struct Event {
    reader: UnixStream,
    writer: UnixStream,
    raised: AtomicBool,
}

impl Event {
    fn new() -> io::Result<Event> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        Ok(Event { reader, writer, raised: AtomicBool::new(false) })
    }

    fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            let _ = (&self.writer).write(&[1]);
        }
    }

    /// Clears the signal; call before looking at the queue it guards.
    fn clear(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.reader).read(&mut buf), Ok(n) if n > 0) {}
        self.raised.store(false, Ordering::Release);
    }
}

/// The virtual wire: a queue of frames each way and a wake-up signal for
/// each side.
pub struct Wire {
    to_image: Mutex<VecDeque<Vec<u8>>>,
    to_host: Mutex<VecDeque<Vec<u8>>>,
    image_event: Event,
    host_event: Event,
    host_pending: AtomicBool,
    new_listeners: Mutex<Vec<(TcpListener, u16)>>,
}

impl Wire {
    /// Moves up to `max` frames for the image to `out`.
    pub(super) fn take_to_image(&self, out: &mut VecDeque<Vec<u8>>, max: usize) {
        let mut q = self.to_image.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if !q.is_empty() {
            self.image_event.raise(); // more than one batch: come back without waiting.
        }
    }

    /// Queues a frame for the relay (sent at the next [`Wire::notify_host`]).
    pub(super) fn push_to_host(&self, frame: &[u8]) {
        self.to_host.lock().unwrap_or_else(|e| e.into_inner()).push_back(frame.to_vec());
        self.host_pending.store(true, Ordering::Release);
    }

    pub(super) fn notify_host(&self) {
        if self.host_pending.swap(false, Ordering::AcqRel) {
            self.host_event.raise();
        }
    }

    pub(super) fn image_event_fd(&self) -> i32 {
        self.image_event.reader.as_raw_fd()
    }

    pub(super) fn clear_image_event(&self) {
        self.image_event.clear();
    }

    /// Listens on 127.0.0.1:`port` (or a free port if that one is taken)
    /// and relays its connections to the image's `port`.
    pub(super) fn expose(&self, port: u16) -> io::Result<u16> {
        let listener = TcpListener::bind(("127.0.0.1", port)).or_else(|_| TcpListener::bind(("127.0.0.1", 0)))?;
        // std listens with a backlog of 128; a burst of clients needs more
        // (listen again to raise it, as Redis's tcp-backlog 511 does).
        // SAFETY: listen on a socket this function owns; no memory is passed.
        if unsafe { libc::listen(listener.as_raw_fd(), HOST_BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        listener.set_nonblocking(true)?;
        let host_port = listener.local_addr()?.port();
        self.new_listeners.lock().unwrap_or_else(|e| e.into_inner()).push((listener, port));
        self.host_event.raise();
        Ok(host_port)
    }
}

/// Creates the wire and starts the relay thread.
pub(super) fn start() -> io::Result<Arc<Wire>> {
    let wire = Arc::new(Wire {
        to_image: Mutex::new(VecDeque::new()),
        to_host: Mutex::new(VecDeque::new()),
        image_event: Event::new()?,
        host_event: Event::new()?,
        host_pending: AtomicBool::new(false),
        new_listeners: Mutex::new(Vec::new()),
    });
    let relay_wire = wire.clone();
    // The thread is started by the home compartment (with its rights, which
    // a new thread inherits: the C library and std keep their bookkeeping of
    // threads in its memory); the relay then runs in the compartment that
    // drives the device, where the wire was allocated.
    let device = crate::compartment::current();
    let relay = move || {
        let run = move || Relay::new(relay_wire).run();
        // SAFETY: the relay is platform code that touches only the wire
        // (the device compartment's memory) and its own allocations.
        let in_device = move || unsafe { crate::compartment::run_in(device, run) };
        // Unnamed: naming a thread is a prctl, which a confined compartment process may not make.
        if let Err(e) = std::thread::Builder::new().spawn(in_device) {
            crate::console::write_err(format!("flexos: cannot start the forwarder's thread: {e}\n").as_bytes());
            crate::process_abort();
        }
    };
    // SAFETY: starting a thread touches only the C library's and std's
    // own bookkeeping, which the home compartment owns.
    unsafe { crate::compartment::run_in(crate::compartment::home(), relay) };
    Ok(wire)
}

/// The relay's end of the wire, as a smoltcp device.
struct RelayDevice {
    wire: Arc<Wire>,
    rx: VecDeque<Vec<u8>>,
    out: Vec<Vec<u8>>,
}

struct RelayRx(Vec<u8>);
struct RelayTx<'a>(&'a mut Vec<Vec<u8>>);

impl smoltcp::phy::RxToken for RelayRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for RelayTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push(frame);
        r
    }
}

impl Device for RelayDevice {
    type RxToken<'a> = RelayRx;
    type TxToken<'a> = RelayTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RelayRx, RelayTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RelayRx(frame), RelayTx(&mut self.out)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<RelayTx<'_>> {
        Some(RelayTx(&mut self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        caps
    }
}

impl RelayDevice {
    fn pull(&mut self) {
        self.wire.host_event.clear();
        let mut q = self.wire.to_host.lock().unwrap_or_else(|e| e.into_inner());
        self.rx.extend(q.drain(..));
    }

    fn push(&mut self) {
        if self.out.is_empty() {
            return;
        }
        self.wire.to_image.lock().unwrap_or_else(|e| e.into_inner()).extend(self.out.drain(..));
        self.wire.image_event.raise();
    }
}

/// One relayed connection: a host socket and the relay's socket to the image.
struct Conn {
    stream: TcpStream,
    handle: SocketHandle,
    host_eof: bool,
    host_shut: bool,
    /// The last poll reported a hang-up or an error on the host socket:
    /// the client can take nothing more (after an error, or after both
    /// directions were shut down).
    host_gone: bool,
    /// The host side failed or went away: drop the connection.
    broken: bool,
}

struct Relay {
    device: RelayDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<(TcpListener, u16)>,
    /// Accepted clients not yet connected to the image (and its port).
    waiting: VecDeque<(TcpStream, u16)>,
    conns: Vec<Conn>,
    next_port: u16,
    epoch: Instant,
}

impl Relay {
    fn new(wire: Arc<Wire>) -> Relay {
        let mut device = RelayDevice { wire, rx: VecDeque::new(), out: Vec::new() };
        let mac = EthernetAddress([0x02, 0xf1, 0, 0, 0, 2]);
        let epoch = Instant::now();
        let mut iface = Interface::new(Config::new(mac.into()), &mut device, SmolInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let [a0, a1, a2, a3] = FORWARD_RELAY_IP;
            let _ = a.push(IpCidr::new(IpAddress::v4(a0, a1, a2, a3), 24));
        });
        Relay {
            device,
            iface,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            waiting: VecDeque::new(),
            conns: Vec::new(),
            next_port: 49152,
            epoch,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn run(mut self) -> ! {
        loop {
            self.device.pull();
            self.listeners.extend(self.device.wire.new_listeners.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
            self.accept();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.pump();
            let now = self.now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.device.push();
            self.wait();
        }
    }

    fn accept(&mut self) {
        for (listener, image_port) in &self.listeners {
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                self.waiting.push_back((stream, *image_port));
            }
        }
        let mut connecting = self
            .conns
            .iter()
            .filter(|c| self.sockets.get::<tcp::Socket>(c.handle).state() == tcp::State::SynSent)
            .count();
        while connecting < MAX_CONNECTING {
            let Some((stream, image_port)) = self.waiting.pop_front() else { break };
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RELAY_BUFFER]),
                tcp::SocketBuffer::new(vec![0; RELAY_BUFFER]),
            );
            sock.set_nagle_enabled(false);
            sock.set_ack_delay(None);
            let local = self.next_port;
            self.next_port = if self.next_port == u16::MAX { 49152 } else { self.next_port + 1 };
            let [a0, a1, a2, a3] = FORWARD_IMAGE_IP;
            let remote = (Ipv4Address::new(a0, a1, a2, a3), image_port);
            if sock.connect(self.iface.context(), remote, local).is_err() {
                continue; // dropping `stream` closes the client's connection.
            }
            let handle = self.sockets.add(sock);
            self.conns.push(Conn {
                stream,
                handle,
                host_eof: false,
                host_shut: false,
                host_gone: false,
                broken: false,
            });
            connecting += 1;
        }
    }

    /// Moves bytes both ways for every connection; drops finished ones.
    fn pump(&mut self) {
        let sockets = &mut self.sockets;
        self.conns.retain_mut(|c| {
            let sock = sockets.get_mut::<tcp::Socket>(c.handle);
            // Host → image.
            while !c.host_eof && !c.broken && sock.can_send() {
                let stream = &mut c.stream;
                let r = sock.send(|buf| match stream.read(buf) {
                    Ok(0) => (0, Err(true)),
                    Ok(n) => (n, Ok(())),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => (0, Err(false)),
                    Err(_) => (0, Err(true)),
                });
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(eof)) => {
                        c.host_eof |= eof;
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
                // connection, so its descriptor is freed and poll does not
                // report the hang-up again and again.
                c.broken = true;
            }
            // Image → host.
            while sock.can_recv() && !c.broken {
                let stream = &mut c.stream;
                let r = sock.recv(|data| match stream.write(data) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                });
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => break,
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
                return false;
            }
            true
        });
    }

    fn wait(&mut self) {
        let mut fds = Vec::with_capacity(1 + self.listeners.len() + self.conns.len());
        let first_conn = 1 + self.listeners.len();
        fds.push(libc::pollfd { fd: self.device.wire.host_event.reader.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for (l, _) in &self.listeners {
            fds.push(libc::pollfd { fd: l.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        for c in &self.conns {
            let sock = self.sockets.get::<tcp::Socket>(c.handle);
            let mut events = 0;
            if !c.host_eof && sock.can_send() {
                events |= libc::POLLIN;
            }
            if sock.can_recv() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events, revents: 0 });
        }
        let now = self.now();
        let timeout = self.iface.poll_delay(now, &self.sockets).map(|d| Duration::from_micros(d.total_micros()));
        super::poll(&mut fds, timeout);
        // Hang-ups and errors are reported whatever was asked for: note them,
        // or the next poll returns at once for the same reason.
        for (c, fd) in self.conns.iter_mut().zip(&fds[first_conn..]) {
            if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                c.host_gone = true;
            }
        }
    }
}
