//! The hosted platform's network device: where the image's Ethernet frames
//! go. Two backends, chosen at start by `FLEXOS_NET`:
//!
//! * `tap:IFNAME:A.B.C.D/PREFIX:GATEWAY`: a tap device (made by `flexos run`
//!   inside a network namespace of its own); the image owns address
//!   `A.B.C.D`, and every service is reached at that address from inside
//!   the namespace.
//! * unset or `forward`: zero setup, no root. The image sits on a private
//!   virtual wire (10.0.2.15 ↔ 10.0.2.2); for every port the image listens
//!   on, a relay (`forward`, run inline on the device's thread) accepts
//!   connections on 127.0.0.1 and carries them over the wire with a TCP/IP
//!   stack of its own.
//!
//! Frames cross in batches: the device drains every pending frame (up to a
//! batch) per refill. A tap takes one frame per `read`/`write` system call
//! (the kernel has no batched call for tap file descriptors), but with
//! segmentation offload a received frame holds a TCP segment of up to
//! 64 KiB ([`tap`]).

mod forward;
pub mod tap;

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

pub use forward::Forwarder;

/// The largest Ethernet frame the device sends (1500-byte MTU + header);
/// a tap may hand over larger ones ([`tap::MAX_TAP_FRAME`]).
pub const MAX_FRAME: usize = 1514;

/// The image's address on its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// The image's IPv4 address.
    pub ip: [u8; 4],
    /// Network prefix length.
    pub prefix: u8,
    /// The default gateway (the other end of the link).
    pub gateway: [u8; 4],
    /// The image's MAC address.
    pub mac: [u8; 6],
}

/// The addressing of the forwarding backend's private wire.
pub const FORWARD_IMAGE_IP: [u8; 4] = [10, 0, 2, 15];
/// The relay's own address on the private wire.
pub const FORWARD_RELAY_IP: [u8; 4] = [10, 0, 2, 2];

/// Which backend `FLEXOS_NET` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A tap device (name) with the image's addressing.
    Tap(String, Addressing),
    /// The user-mode forwarder on 127.0.0.1.
    Forward,
}

/// Parses `FLEXOS_NET` (see the [module documentation](self)).
pub fn backend_from_env() -> Result<Backend, String> {
    match getenv(c"FLEXOS_NET") {
        None => Ok(Backend::Forward),
        Some(v) => parse_backend(&v),
    }
}

/// The environment variable `name`, read with the C library's `getenv`,
/// not `std::env::var`: std takes a lock that is a static, which the
/// network device's compartment may not write when it is an `mpk` one
/// other than the default (docs/mpk.md). The image changes its
/// environment only at boot, before any other thread runs.
fn getenv(name: &core::ffi::CStr) -> Option<String> {
    // SAFETY: `name` is NUL-terminated; getenv returns null or a pointer to
    // a NUL-terminated string in the environment, which is copied at once.
    unsafe {
        let value = libc::getenv(name.as_ptr());
        (!value.is_null()).then(|| core::ffi::CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let ip: std::net::Ipv4Addr = s.parse().ok()?;
    Some(ip.octets())
}

/// Parses a `FLEXOS_NET` value.
pub fn parse_backend(v: &str) -> Result<Backend, String> {
    if v == "forward" {
        return Ok(Backend::Forward);
    }
    let bad = || format!("FLEXOS_NET={v:?}: expected \"forward\" or \"tap:IFNAME:A.B.C.D/PREFIX:GATEWAY\"");
    let mut parts = v.split(':');
    if parts.next() != Some("tap") {
        return Err(bad());
    }
    let name = parts.next().filter(|n| !n.is_empty() && n.len() < 16).ok_or_else(bad)?;
    let (ip, prefix) = parts.next().and_then(|a| a.split_once('/')).ok_or_else(bad)?;
    let ip = parse_ip(ip).ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().ok().filter(|p| (1..=30).contains(p)).ok_or_else(bad)?;
    let gateway = parts.next().and_then(parse_ip).ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(Backend::Tap(name.to_owned(), Addressing { ip, prefix, gateway, mac: image_mac(ip) }))
}

/// A locally administered MAC address derived from the IP address.
fn image_mac(ip: [u8; 4]) -> [u8; 6] {
    [0x02, 0xf1, ip[0], ip[1], ip[2], ip[3]]
}

/// How long a wait on a tap polls it before it sleeps. A sleeping reader
/// makes every frame the kernel queues on the tap wake it, in the sender's
/// system call: measured, that wake-up was a tenth of the sending client's
/// time in `iperf` (docs/benchmarks.md).
const TAP_SPIN: Duration = Duration::from_micros(50);

/// The descriptor of the tap device [`open_device_at_boot`] opened (-1:
/// none). Written at boot only: in an `mpk` image the statics carry the
/// core key, which the compartment that drives the device may read but
/// not write, so [`Port::open`] takes a duplicate and this one stays open.
static TAP_OPENED_AT_BOOT: AtomicI32 = AtomicI32::new(-1);

/// Why [`open_device_at_boot`] could not open the tap: 0 it did not try
/// or succeeded, -1 no such device, else the `errno`.
static TAP_BOOT_ERROR: AtomicI32 = AtomicI32::new(0);

/// Opens now the tap device `FLEXOS_NET` names, if it names one, for
/// [`Port::open`] to use later. An image calls it at boot, in the domain
/// that drives the network device, before it confines its system calls:
/// opening a tap takes `open` for writing and the tap's `ioctl` requests
/// (`TUNSETIFF`, which as root would also make a device), and a booted
/// image is allowed neither. A failure is kept and reported by
/// [`Port::open`], where it was reported before.
pub fn open_device_at_boot() {
    if let Ok(Backend::Tap(name, _)) = backend_from_env() {
        match tap::Tap::open_device(&name) {
            Ok(fd) => TAP_OPENED_AT_BOOT.store(fd.into_raw_fd(), Ordering::Release),
            Err(tap::OpenError::NoSuchDevice) => TAP_BOOT_ERROR.store(-1, Ordering::Release),
            Err(tap::OpenError::Os(errno)) => TAP_BOOT_ERROR.store(errno, Ordering::Release),
        }
    }
}

/// The tap device opened at boot, as a fresh duplicate descriptor, or why
/// it could not be opened; `None` if boot did not try (a test that opens
/// the device itself).
fn tap_opened_at_boot() -> Option<Result<OwnedFd, tap::OpenError>> {
    let fd = TAP_OPENED_AT_BOOT.load(Ordering::Acquire);
    if fd >= 0 {
        // SAFETY: `fd` stays open for the image's life (nothing closes
        // the descriptor in this static); the duplicate is a new one.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Some(Err(tap::OpenError::Os(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))));
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        return Some(Ok(unsafe { OwnedFd::from_raw_fd(dup) }));
    }
    match TAP_BOOT_ERROR.load(Ordering::Acquire) {
        0 => None,
        -1 => Some(Err(tap::OpenError::NoSuchDevice)),
        errno => Some(Err(tap::OpenError::Os(errno))),
    }
}

/// The image's side of its network device.
pub enum Port {
    /// A tap device (non-blocking, with offloads).
    Tap(tap::Tap),
    /// The forwarder's wire, with the relay at its other end.
    Forward(Box<Forwarder>),
}

impl Port {
    /// Opens the backend `FLEXOS_NET` names; returns the port and the
    /// image's addressing.
    pub fn open() -> Result<(Port, Addressing), String> {
        match backend_from_env()? {
            Backend::Tap(name, addressing) => {
                let fd = tap_opened_at_boot()
                    .unwrap_or_else(|| tap::Tap::open_device(&name))
                    .map_err(|e| format!("cannot open tap device {name:?}: {e}"))?;
                Ok((Port::Tap(tap::Tap::from_device(fd)), addressing))
            }
            Backend::Forward => {
                let relay = Forwarder::new().map_err(|e| format!("cannot start the 127.0.0.1 forwarder: {e}"))?;
                let addressing = Addressing {
                    ip: FORWARD_IMAGE_IP,
                    prefix: 24,
                    gateway: FORWARD_RELAY_IP,
                    mac: image_mac(FORWARD_IMAGE_IP),
                };
                Ok((Port::Forward(Box::new(relay)), addressing))
            }
        }
    }

    /// Moves every pending received frame (at most `max`) to the back of
    /// `out`; reuses buffers from `spare`.
    pub fn receive_batch(&mut self, out: &mut VecDeque<Vec<u8>>, spare: &mut Vec<Vec<u8>>, max: usize) {
        match self {
            Port::Tap(tap) => tap.receive_batch(out, spare, max),
            Port::Forward(relay) => relay.take_to_image(out, max),
        }
    }

    /// Sends one frame (dropped if the device is full, as a NIC would).
    pub fn send(&mut self, frame: &[u8]) {
        match self {
            Port::Tap(tap) => tap.send(frame),
            Port::Forward(relay) => relay.push_from_image(frame),
        }
    }

    /// Makes frames sent since the last flush visible to the other side.
    pub fn flush(&mut self) {
        if let Port::Forward(relay) = self {
            relay.flush();
        }
    }

    /// Blocks until a frame may be pending or `timeout` passes (`None`:
    /// no limit).
    pub fn wait(&mut self, timeout: Option<Duration>) {
        match self {
            Port::Tap(tap) => {
                let fd = tap.fd().as_raw_fd();
                let spin = timeout.map_or(TAP_SPIN, |t| t.min(TAP_SPIN));
                if !spin_until_readable(fd, spin) {
                    wait_readable(&[fd], timeout.map(|t| t - spin));
                }
            }
            Port::Forward(relay) => relay.wait(timeout),
        }
    }

    /// Makes TCP port `port` of the image reachable from this machine and
    /// returns how a client reaches it (host, port).
    pub fn expose(&mut self, addressing: &Addressing, port: u16) -> io::Result<(String, u16)> {
        match self {
            Port::Tap(_) => Ok((std::net::Ipv4Addr::from(addressing.ip).to_string(), port)),
            Port::Forward(relay) => relay.expose(port).map(|p| ("127.0.0.1".to_owned(), p)),
        }
    }
}

/// Polls `fd` without sleeping until it is readable (true) or `spin` passes (false).
fn spin_until_readable(fd: RawFd, spin: Duration) -> bool {
    let until = crate::clock::monotonic_ns() + spin.as_nanos() as u64;
    let mut polled = [libc::pollfd { fd, events: libc::POLLIN, revents: 0 }];
    loop {
        poll(&mut polled, Some(Duration::ZERO));
        if polled[0].revents != 0 {
            return true;
        }
        if crate::clock::monotonic_ns() >= until {
            return false;
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[RawFd], timeout: Option<Duration>) {
    let mut polled: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    poll(&mut polled, timeout);
}

/// `poll(2)` on `fds` with `timeout` (`None`: no limit), rounded up to
/// milliseconds; interrupted waits return early.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) {
    let ms = timeout_ms(timeout);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// `timeout` as the milliseconds `poll(2)` and `epoll_wait(2)` take:
/// rounded up, `-1` for no limit.
fn timeout_ms(timeout: Option<Duration>) -> i32 {
    timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32)
}

/// The image that [`forward_signals`] passes signals to (0: none).
static SIGNAL_TARGET: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signals [`forward_signals`] passes on.
const FORWARDED_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = SIGNAL_TARGET.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and touches no memory of ours.
        unsafe { libc::kill(pid, signal) };
    }
}

/// For the `flexos` tool while it runs the image `pid` in the foreground:
/// SIGINT, SIGQUIT, SIGTERM and SIGHUP sent to the tool are passed on to
/// the image instead of ending the tool, so the tool outlives the image and
/// removes the network namespace it made. (A terminal's Ctrl-C reaches both,
/// as they share a process group; the image then gets it twice.)
/// [`stop_forwarding_signals`] ends it once the image has been waited for.
pub fn forward_signals(pid: u32) {
    SIGNAL_TARGET.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
    for signal in FORWARDED_SIGNALS {
        // SAFETY: the handler only reads an atomic and calls kill, both
        // async-signal-safe; `action` is a fully initialized sigaction.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// After the image of [`forward_signals`] has ended: the signals are
/// ignored while the tool cleans up (its pid may be reused by then).
pub fn stop_forwarding_signals() {
    SIGNAL_TARGET.store(0, std::sync::atomic::Ordering::Relaxed);
    for signal in FORWARDED_SIGNALS {
        // SAFETY: setting a disposition to "ignore" installs no handler code.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
}

/// Makes the process that `cmd` starts die (SIGKILL) when the thread that
/// starts it ends, so an image never outlives the tool that runs it; and
/// gives it the default dispositions of the signals [`forward_signals`]
/// passes on (SIGINT, SIGQUIT, SIGTERM, SIGHUP): "ignore" is inherited
/// through exec, so a tool started in the background (where the shell
/// ignores SIGINT and SIGQUIT) or under `nohup` would otherwise start an
/// image that ignores the very signals it forwards to stop it.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the child between fork and exec and only
    // makes async-signal-safe system calls (prctl, signal with SIG_DFL,
    // which installs no handler code).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            for signal in FORWARDED_SIGNALS {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}
