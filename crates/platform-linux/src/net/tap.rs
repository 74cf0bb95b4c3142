//! The tap backend: an existing tap device, opened with a virtio-net
//! header on every frame (`IFF_VNET_HDR`) and with checksum and TCP
//! segmentation offload (`TUNSETOFFLOAD`).
//!
//! With the offloads the kernel hands the image whole TCP segments of up to
//! 64 KiB (one `read` instead of up to 44), and leaves the checksum of
//! segments it made itself unfinished ("partial": only the pseudo-header is
//! summed). The image's stack therefore does not check TCP checksums
//! (`smoltcp`'s `Checksum::Tx`); this module checks the ones the kernel
//! neither finished nor vouched for (a frame without `NEEDS_CSUM` or
//! `DATA_VALID`), and drops a frame whose checksum is wrong. Frames the image
//! sends carry an empty header: complete checksums, no segmentation.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use super::MAX_FRAME;

/// The largest frame the tap hands over with segmentation offload: an IPv4
/// packet of 64 KiB behind its Ethernet header.
pub const MAX_TAP_FRAME: usize = 14 + 65_535;

/// Bytes of large frames one batch takes at most (bounds the memory of
/// frames waiting for the stack).
const BATCH_BYTES: usize = 1 << 20;

/// `struct virtio_net_hdr` (without `num_buffers`): the tap's default header size.
const VNET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.flags`: the checksum is partial (the kernel made the segment).
const VNET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the kernel checked the checksum.
const VNET_HDR_F_DATA_VALID: u8 = 2;

/// An open tap device with offloads.
pub struct Tap {
    fd: OwnedFd,
    /// Where the next frame is read (capacity [`MAX_TAP_FRAME`]).
    scratch: Vec<u8>,
    /// Frames dropped for a wrong checksum.
    pub bad_checksums: u64,
}

/// Why a tap device did not open: plain data (no heap), so that an error
/// met at boot can be reported later by the compartment that drives the
/// device, which may not read the booting compartment's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// No interface of that name in the image's network namespace.
    NoSuchDevice,
    /// A system call failed with this `errno`.
    Os(i32),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NoSuchDevice => {
                f.write_str("no such device in this network namespace (`flexos run --netns` creates one)")
            }
            OpenError::Os(errno) => write!(f, "{}", io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl Tap {
    /// Opens the existing tap device `name` (non-blocking, no packet info,
    /// virtio-net header, checksum and TCPv4 segmentation offload) and
    /// returns its descriptor. A missing device is an error: the image
    /// never creates one itself (with root, `TUNSETIFF` would create it in
    /// whatever namespace the image runs in). An image opens its tap at
    /// boot (`super::open_device_at_boot`), before it confines its system
    /// calls: afterwards neither `open` for writing nor the tap's `ioctl`
    /// requests are let through.
    pub fn open_device(name: &str) -> Result<OwnedFd, OpenError> {
        let c_name = std::ffi::CString::new(name).map_err(|_| OpenError::Os(libc::EINVAL))?;
        // SAFETY: `c_name` is a valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_name.as_ptr()) } == 0 {
            return Err(OpenError::NoSuchDevice);
        }
        let os_error = || OpenError::Os(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
        // SAFETY: a plain open of a NUL-terminated path; the result is checked.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `ifreq` is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads an `ifreq`, which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(os_error());
        }
        let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(os_error());
        }
        Ok(fd)
    }

    /// The device behind `fd`, a descriptor [`Tap::open_device`] returned.
    /// Its read buffer is allocated now, in the heap of the compartment
    /// that drives the device.
    pub fn from_device(fd: OwnedFd) -> Tap {
        Tap { fd, scratch: Vec::with_capacity(MAX_TAP_FRAME), bad_checksums: 0 }
    }

    /// The descriptor, to wait on.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Moves every pending frame (at most `max`, and large ones up to
    /// [`BATCH_BYTES`]) to the back of `out`. A frame of up to
    /// [`MAX_FRAME`] bytes is copied into a buffer from `spare`; a larger
    /// one keeps the buffer it was read into.
    pub fn receive_batch(&mut self, out: &mut VecDeque<Vec<u8>>, spare: &mut Vec<Vec<u8>>, max: usize) {
        let mut large_bytes = 0;
        for _ in 0..max {
            let Some(flags) = self.read_frame() else { break };
            if flags & (VNET_HDR_F_NEEDS_CSUM | VNET_HDR_F_DATA_VALID) == 0 && !tcp_checksum_ok(&self.scratch) {
                self.bad_checksums += 1;
                continue;
            }
            if self.scratch.len() <= MAX_FRAME {
                let mut buf = spare.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(&self.scratch);
                out.push_back(buf);
            } else {
                large_bytes += self.scratch.len();
                out.push_back(std::mem::replace(&mut self.scratch, Vec::with_capacity(MAX_TAP_FRAME)));
                if large_bytes >= BATCH_BYTES {
                    break;
                }
            }
        }
    }

    /// Reads one frame into `scratch`; returns its header's flags, or
    /// `None` when nothing is pending (errors show up as silence, like a NIC).
    fn read_frame(&mut self) -> Option<u8> {
        let mut header = [0u8; VNET_HDR_LEN];
        self.scratch.clear();
        let iov = [
            libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header.len() },
            libc::iovec { iov_base: self.scratch.as_mut_ptr().cast(), iov_len: self.scratch.capacity() },
        ];
        // SAFETY: both iovecs describe writable memory we own: `header`, and
        // the spare capacity of `scratch` (its length is 0); `fd` is open.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
        let len = usize::try_from(n).ok()?.checked_sub(VNET_HDR_LEN)?;
        // SAFETY: `readv` wrote `len` bytes at the start of `scratch`'s
        // buffer, which has room for them (`len` ≤ its capacity).
        unsafe { self.scratch.set_len(len) };
        Some(header[0])
    }

    /// Sends one frame, complete, behind an empty header (dropped if the
    /// device is full, as a NIC would).
    pub fn send(&mut self, frame: &[u8]) {
        let header = [0u8; VNET_HDR_LEN];
        let iov = [
            libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() },
            libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() },
        ];
        // SAFETY: both iovecs describe readable memory (`writev` does not
        // write through them); `fd` is open.
        let _ = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    }
}

/// Whether `frame`'s TCP checksum is right (frames other than IPv4/TCP are
/// left to the stack, which checks the rest).
pub fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return true };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return true;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else { return true };
    if ip.next_header() != IpProtocol::Tcp {
        return true;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else { return true };
    tcp.verify_checksum(&IpAddress::Ipv4(ip.src_addr()), &IpAddress::Ipv4(ip.dst_addr()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    fn tcp_frame() -> Vec<u8> {
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 5001,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: None,
            window_len: 512,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: b"hello",
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut e);
        let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &src.into(), &dst.into(), &caps);
        frame
    }

    #[test]
    fn a_wrong_tcp_checksum_is_found() {
        let mut frame = tcp_frame();
        assert!(tcp_checksum_ok(&frame));
        *frame.last_mut().unwrap() ^= 1;
        assert!(!tcp_checksum_ok(&frame), "a flipped payload bit");
    }

    #[test]
    fn frames_other_than_tcp_are_left_to_the_stack() {
        let mut frame = tcp_frame();
        frame[14 + 9] = 1; // ICMP, with a TCP-shaped payload
        *frame.last_mut().unwrap() ^= 1;
        assert!(tcp_checksum_ok(&frame));
        assert!(tcp_checksum_ok(&frame[..20]), "cut short");
    }
}
