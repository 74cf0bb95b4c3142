//! The network device (Unikraft's `uknetdev`): the platform's frame port
//! (a tap device in a network namespace, or the 127.0.0.1 forwarder's
//! wire; see `flexos_platform::net`) as a [`smoltcp`] device.
//!
//! The stack (`net`) drives the device frame by frame, so the two always
//! share a compartment (the configuration checks it) and call each other
//! without gates. Received frames are taken from the port in batches (every
//! pending frame, up to [`RX_BATCH`], per refill); frames sent during one
//! poll of the stack leave together at [`NetDevice::flush`].
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use flexos_platform::net::{Addressing, MAX_FRAME, Port};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

flexos_gate::component!(NETDEV);

/// The most frames taken from the port per refill.
pub const RX_BATCH: usize = 64;

/// Frame counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Refills of the receive queue that found frames.
    pub rx_batches: u64,
    /// Connection requests (TCP SYN) dropped because no endpoint was listening yet.
    pub syns_held: u64,
}

/// The image's network device.
pub struct NetDevice {
    port: Port,
    rx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    tx: Vec<u8>,
    /// Per TCP port, how many more connection requests may reach the stack
    /// in this round ([`NetDevice::admit_syns`]).
    syn_budget: Vec<(u16, usize)>,
    /// Frame counters.
    pub stats: DeviceStats,
}

impl NetDevice {
    /// Opens the device that the platform's configuration names
    /// (`FLEXOS_NET`); returns it with the image's addressing.
    pub fn open() -> Result<(NetDevice, Addressing), String> {
        let (port, addressing) = Port::open()?;
        let dev = NetDevice {
            port,
            rx: VecDeque::new(),
            spare: Vec::new(),
            tx: Vec::with_capacity(MAX_FRAME),
            syn_budget: Vec::new(),
            stats: DeviceStats::default(),
        };
        Ok((dev, addressing))
    }

    /// Whether received frames wait in the queue.
    pub fn has_pending(&self) -> bool {
        !self.rx.is_empty()
    }

    /// Sends the frames of this round to the other side.
    pub fn flush(&mut self) {
        self.port.flush();
    }

    /// Blocks until frames may have arrived, or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) {
        if self.rx.is_empty() {
            self.port.wait(timeout);
        }
    }

    /// Makes the image's TCP `port` reachable; returns (host, port) for clients.
    pub fn expose(&mut self, addressing: &Addressing, port: u16) -> Result<(String, u16), String> {
        self.port.expose(addressing, port).map_err(|e| alloc::format!("{e}"))
    }

    /// Until the next call: at most `budget` connection requests (TCP SYN
    /// without ACK) to each listed port reach the stack; further ones are
    /// dropped, as Linux drops them when a listener's queue is full, and
    /// the peer sends them again a little later. Ports not listed are not
    /// limited (the stack refuses what it cannot take).
    pub fn admit_syns(&mut self, budgets: impl IntoIterator<Item = (u16, usize)>) {
        self.syn_budget.clear();
        self.syn_budget.extend(budgets);
    }

    /// Whether `frame` is a connection request that the budget does not admit (taking one from it if it does).
    fn held(&mut self, frame: &[u8]) -> bool {
        if self.syn_budget.is_empty() {
            return false;
        }
        let Some(port) = syn_port(frame) else { return false };
        match self.syn_budget.iter_mut().find(|(p, _)| *p == port) {
            Some((_, 0)) => true,
            Some((_, left)) => {
                *left -= 1;
                false
            }
            None => false,
        }
    }

    fn refill(&mut self) {
        if self.rx.is_empty() {
            self.port.receive_batch(&mut self.rx, &mut self.spare, RX_BATCH);
            if !self.rx.is_empty() {
                self.stats.rx_batches += 1;
            }
        }
    }
}

/// A received frame; its buffer returns to the device's spares.
pub struct Rx<'a> {
    frame: Vec<u8>,
    spare: &'a mut Vec<Vec<u8>>,
}

/// Permission to send one frame.
pub struct Tx<'a> {
    port: &'a mut Port,
    buf: &'a mut Vec<u8>,
    sent: &'a mut u64,
}

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.frame);
        recycle(self.spare, self.frame);
        r
    }
}

/// Keeps `frame`'s buffer for a later frame, unless enough are kept or it
/// held a large segment (a tap with segmentation offload hands over frames
/// of up to 64 KiB; keeping those would hold megabytes for small frames).
fn recycle(spare: &mut Vec<Vec<u8>>, frame: Vec<u8>) {
    if spare.len() < RX_BATCH && frame.capacity() <= 2 * MAX_FRAME {
        spare.push(frame);
    }
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.clear();
        self.buf.resize(len, 0);
        let r = f(self.buf);
        self.port.send(self.buf);
        *self.sent += 1;
        r
    }
}

impl Device for NetDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = loop {
            self.refill();
            let frame = self.rx.pop_front()?;
            self.stats.rx_frames += 1;
            if !self.held(&frame) {
                break frame;
            }
            self.stats.syns_held += 1;
            recycle(&mut self.spare, frame);
        };
        let NetDevice { port, spare, tx, stats, .. } = self;
        Some((Rx { frame, spare }, Tx { port, buf: tx, sent: &mut stats.tx_frames }))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        let NetDevice { port, tx, stats, .. } = self;
        Some(Tx { port, buf: tx, sent: &mut stats.tx_frames })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        // The port checks the TCP checksums that need it: a tap's kernel
        // leaves those of its own segments partial, and the forwarder's
        // frames come from its own stack (flexos_platform::net::tap).
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// The destination port of `frame` if it is an Ethernet/IPv4/TCP
/// connection request (SYN without ACK).
fn syn_port(frame: &[u8]) -> Option<u16> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let header = usize::from(ip.first()? & 0x0f) * 4;
    if ip.get(9)? != &6 || header < 20 {
        return None;
    }
    let tcp = ip.get(header..)?;
    let flags = *tcp.get(13)?;
    (flags & 0x12 == 0x02).then(|| u16::from_be_bytes([tcp[2], tcp[3]]))
}

#[cfg(test)]
mod tests {
    use super::syn_port;

    fn frame(flags: u8, port: u16) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[34 + 2..34 + 4].copy_from_slice(&port.to_be_bytes());
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn connection_requests_are_recognized() {
        assert_eq!(syn_port(&frame(0x02, 6379)), Some(6379));
        assert_eq!(syn_port(&frame(0x12, 6379)), None, "SYN-ACK");
        assert_eq!(syn_port(&frame(0x10, 6379)), None, "ACK");
        let mut udp = frame(0x02, 53);
        udp[14 + 9] = 17;
        assert_eq!(syn_port(&udp), None);
        assert_eq!(syn_port(&frame(0x02, 80)[..40]), None, "cut short");
    }
}
