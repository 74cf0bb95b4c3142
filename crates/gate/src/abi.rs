//! Plain-data types that components exchange through gates. They live here,
//! in the trusted core, because only this crate may declare a type
//! [`Crossing`](crate::Crossing).

use crate::Crossing;
use crate::wire::{Reader, Writer};

/// A POSIX error number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such file or directory.
    pub const ENOENT: Errno = Errno(2);
    /// Input/output error.
    pub const EIO: Errno = Errno(5);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(9);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Permission denied (e.g. writing a read-only descriptor).
    pub const EACCES: Errno = Errno(13);
    /// File exists.
    pub const EEXIST: Errno = Errno(17);
    /// Not a directory.
    pub const ENOTDIR: Errno = Errno(20);
    /// Is a directory.
    pub const EISDIR: Errno = Errno(21);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// Too many open files.
    pub const EMFILE: Errno = Errno(24);
    /// File too large.
    pub const EFBIG: Errno = Errno(27);
    /// No space left.
    pub const ENOSPC: Errno = Errno(28);
    /// File name too long.
    pub const ENAMETOOLONG: Errno = Errno(36);
    /// Directory not empty.
    pub const ENOTEMPTY: Errno = Errno(39);
    /// Resource temporarily unavailable (a non-blocking call would block).
    pub const EAGAIN: Errno = Errno(11);
    /// Broken pipe: the connection can no longer send.
    pub const EPIPE: Errno = Errno(32);
    /// Operation not supported on this socket.
    pub const EOPNOTSUPP: Errno = Errno(95);
    /// Address already in use.
    pub const EADDRINUSE: Errno = Errno(98);
    /// Connection reset by peer.
    pub const ECONNRESET: Errno = Errno(104);
    /// No buffer space: the connection limit is reached.
    pub const ENOBUFS: Errno = Errno(105);
    /// Socket is already connected.
    pub const EISCONN: Errno = Errno(106);
    /// Socket is not connected.
    pub const ENOTCONN: Errno = Errno(107);
    /// Connection timed out.
    pub const ETIMEDOUT: Errno = Errno(110);
    /// Connection refused.
    pub const ECONNREFUSED: Errno = Errno(111);
}

/// The kind of a file system node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// What `stat` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: FileKind,
    /// Size in bytes (number of entries for a directory).
    pub size: u64,
    /// Number of directory entries naming it.
    pub nlink: u32,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: u64,
}

/// The longest file name.
pub const NAME_MAX: usize = 255;

/// One directory entry, with its name inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: FileKind,
    name_len: u8,
    name: [u8; NAME_MAX],
}

impl DirEntry {
    /// An entry; `None` if the name is longer than [`NAME_MAX`].
    pub fn new(ino: u64, kind: FileKind, name: &[u8]) -> Option<DirEntry> {
        if name.len() > NAME_MAX {
            return None;
        }
        let mut buf = [0; NAME_MAX];
        buf[..name.len()].copy_from_slice(name);
        Some(DirEntry { ino, kind, name_len: name.len() as u8, name: buf })
    }

    /// The entry's name.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }
}

/// `open` flags (Linux values).
pub mod open_flags {
    /// Read only.
    pub const O_RDONLY: u32 = 0;
    /// Write only.
    pub const O_WRONLY: u32 = 1;
    /// Read and write.
    pub const O_RDWR: u32 = 2;
    /// Mask of the access mode.
    pub const O_ACCMODE: u32 = 3;
    /// Create if missing.
    pub const O_CREAT: u32 = 0o100;
    /// With `O_CREAT`: fail if it exists.
    pub const O_EXCL: u32 = 0o200;
    /// Truncate to zero length.
    pub const O_TRUNC: u32 = 0o1000;
    /// Every write appends.
    pub const O_APPEND: u32 = 0o2000;
    /// Must be a directory.
    pub const O_DIRECTORY: u32 = 0o200000;
}

/// `lseek` origins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whence {
    /// From the start.
    Set,
    /// From the current offset.
    Cur,
    /// From the end.
    End,
}

// SAFETY: a plain number.
unsafe impl Crossing for Errno {
    const PLAIN: bool = true;
    const MAX_ENCODED: usize = 4;
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        i32::decode(r).map(Errno)
    }
}

// SAFETY: a plain value; unknown tags do not decode.
unsafe impl Crossing for FileKind {
    const MAX_ENCODED: usize = 1;
    fn encode(&self, w: &mut Writer) {
        (*self as u8).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        match u8::decode(r)? {
            0 => Some(FileKind::File),
            1 => Some(FileKind::Dir),
            _ => None,
        }
    }
}

// SAFETY: plain values without pointers.
unsafe impl Crossing for Stat {
    const MAX_ENCODED: usize = <(u64, FileKind, u64, u32, u64)>::MAX_ENCODED;
    fn encode(&self, w: &mut Writer) {
        (self.ino, self.kind, self.size, self.nlink, self.mtime_ns).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        let (ino, kind, size, nlink, mtime_ns) = Crossing::decode(r)?;
        Some(Stat { ino, kind, size, nlink, mtime_ns })
    }
}

// SAFETY: plain values; the name is inline and its length is checked.
unsafe impl Crossing for DirEntry {
    const MAX_ENCODED: usize = <(u64, FileKind, u8)>::MAX_ENCODED + NAME_MAX;
    fn encode(&self, w: &mut Writer) {
        (self.ino, self.kind, self.name_len).encode(w);
        w.put(self.name());
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        let (ino, kind, name_len): (u64, FileKind, u8) = Crossing::decode(r)?;
        DirEntry::new(ino, kind, r.take(name_len as usize)?)
    }
}

// SAFETY: a plain value; unknown tags do not decode.
unsafe impl Crossing for Whence {
    const MAX_ENCODED: usize = 1;
    fn encode(&self, w: &mut Writer) {
        (*self as u8).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        match u8::decode(r)? {
            0 => Some(Whence::Set),
            1 => Some(Whence::Cur),
            2 => Some(Whence::End),
            _ => None,
        }
    }
}

/// The entries of the network stack's readiness call (`net::poll`): a
/// shared buffer of [`ENTRY`](poll::ENTRY)-byte records, each a socket
/// (i32), the requested events (u16) and the returned events (u16),
/// little-endian, like `struct pollfd`.
pub mod poll {
    /// Readable: data, end of stream, or a connection to accept.
    pub const POLLIN: u16 = 0x1;
    /// Writable.
    pub const POLLOUT: u16 = 0x4;
    /// Error (returned, never requested).
    pub const POLLERR: u16 = 0x8;
    /// The connection is over (returned, never requested).
    pub const POLLHUP: u16 = 0x10;
    /// Not an open socket (returned, never requested).
    pub const POLLNVAL: u16 = 0x20;
    /// Bytes per entry.
    pub const ENTRY: usize = 8;

    /// Writes entry `index` of `buf`: socket `fd`, requested `events`, no returned events.
    pub fn put_entry(buf: &mut [u8], index: usize, fd: i32, events: u16) {
        let e = &mut buf[index * ENTRY..(index + 1) * ENTRY];
        e[..4].copy_from_slice(&fd.to_le_bytes());
        e[4..6].copy_from_slice(&events.to_le_bytes());
        e[6..8].copy_from_slice(&0u16.to_le_bytes());
    }

    /// The returned events of entry `index` of `buf`.
    pub fn revents(buf: &[u8], index: usize) -> u16 {
        u16::from_le_bytes([buf[index * ENTRY + 6], buf[index * ENTRY + 7]])
    }
}

/// The entries of the network stack's round call (`net::round`): one call
/// that hands the stack every connection's pending output, waits for
/// readiness like `net::poll`, and returns every readable connection's
/// input, so that an event loop crosses into the stack once per round
/// instead of once per poll, receive and send.
///
/// A shared buffer of [`ENTRY`](round::ENTRY)-byte records, little-endian,
/// one per socket:
///
/// | bytes | field | written by |
/// |---|---|---|
/// | 0..4 | socket (i32; negative: skipped) | caller |
/// | 4..6 | requested events ([`poll`] bits; [`POLLIN`](poll::POLLIN) also asks for the input) | caller |
/// | 6..8 | returned events | stack |
/// | 8..12 | where this socket's output starts in the send area (u32) | caller |
/// | 12..16 | its length (u32; 0: nothing to send) | caller |
/// | 16..20 | bytes of it the stack took (i32), or a negative errno | stack |
/// | 20..24 | where this socket's input starts in the receive area (u32) | stack |
/// | 24..28 | its length (u32) | stack |
/// | 28..32 | [`ENDED`](round::ENDED) when the stream ended or failed after that input | stack |
pub mod round {
    /// Bytes per entry.
    pub const ENTRY: usize = 32;
    /// Flag: the peer closed the stream, or it failed, after the input returned.
    pub const ENDED: u32 = 1;

    /// What the caller asks of one socket in a round.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Request {
        /// The socket (negative: the entry is skipped).
        pub fd: i32,
        /// Requested [`poll`](super::poll) events; `POLLIN` also asks for the input.
        pub events: u16,
        /// Where its output starts in the send area.
        pub send_at: u32,
        /// The output's length (0: nothing to send).
        pub send_len: u32,
    }

    /// What the stack answers for one socket.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Answer {
        /// Returned events.
        pub revents: u16,
        /// Bytes of the output the stack took, or a negative errno.
        pub sent: i32,
        /// Where its input starts in the receive area.
        pub recv_at: u32,
        /// The input's length.
        pub recv_len: u32,
        /// The stream ended or failed after that input.
        pub ended: bool,
    }

    fn u32_at(e: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]])
    }

    /// Writes entry `index` of `buf` with request `r` and an empty answer.
    pub fn put_request(buf: &mut [u8], index: usize, r: &Request) {
        let e = &mut buf[index * ENTRY..(index + 1) * ENTRY];
        e.fill(0);
        e[..4].copy_from_slice(&r.fd.to_le_bytes());
        e[4..6].copy_from_slice(&r.events.to_le_bytes());
        e[8..12].copy_from_slice(&r.send_at.to_le_bytes());
        e[12..16].copy_from_slice(&r.send_len.to_le_bytes());
    }

    /// The request in entry bytes `e` (one entry).
    pub fn request(e: &[u8; ENTRY]) -> Request {
        Request {
            fd: u32_at(e, 0) as i32,
            events: u16::from_le_bytes([e[4], e[5]]),
            send_at: u32_at(e, 8),
            send_len: u32_at(e, 12),
        }
    }

    /// Writes answer `a` into entry bytes `e` (one entry), keeping the request.
    pub fn put_answer(e: &mut [u8; ENTRY], a: &Answer) {
        e[6..8].copy_from_slice(&a.revents.to_le_bytes());
        e[16..20].copy_from_slice(&a.sent.to_le_bytes());
        e[20..24].copy_from_slice(&a.recv_at.to_le_bytes());
        e[24..28].copy_from_slice(&a.recv_len.to_le_bytes());
        e[28..32].copy_from_slice(&(if a.ended { ENDED } else { 0 }).to_le_bytes());
    }

    /// The answer in entry `index` of `buf`.
    pub fn answer(buf: &[u8], index: usize) -> Answer {
        let e = &buf[index * ENTRY..(index + 1) * ENTRY];
        Answer {
            revents: u16::from_le_bytes([e[6], e[7]]),
            sent: u32_at(e, 16) as i32,
            recv_at: u32_at(e, 20),
            recv_len: u32_at(e, 24),
            ended: u32_at(e, 28) & ENDED != 0,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn an_entry_carries_the_request_and_its_answer() {
            let mut buf = [0xffu8; 2 * ENTRY];
            let r = Request { fd: 7, events: 0x5, send_at: 100, send_len: 20 };
            put_request(&mut buf, 1, &r);
            let e: &mut [u8; ENTRY] = (&mut buf[ENTRY..]).try_into().unwrap();
            assert_eq!(request(e), r);
            let a = Answer { revents: 0x11, sent: -32, recv_at: 64, recv_len: 9, ended: true };
            put_answer(e, &a);
            assert_eq!(request(e), r, "the answer keeps the request");
            assert_eq!(answer(&buf, 1), a);
            assert_eq!(buf[..ENTRY], [0xff; ENTRY], "entry 0 untouched");
        }
    }
}

/// Write-behind for files (`vfs::submit`): a caller queues writes whose
/// results it does not wait for and sends them, in order, with the call
/// that needs them (an `fsync`, a `close`, or any other file call), in one
/// crossing instead of one per write.
///
/// A shared buffer of records, little-endian, each a
/// [`HEADER`](file_batch::HEADER)-byte header followed, for
/// [`PWRITE`](file_batch::PWRITE), by its data, padded to 8 bytes:
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | operation: [`PWRITE`](file_batch::PWRITE), [`FSYNC`](file_batch::FSYNC) or [`CLOSE`](file_batch::CLOSE) (u32) |
/// | 4..8 | descriptor (i32) |
/// | 8..16 | offset (u64; `PWRITE` only) |
/// | 16..24 | data length (u64; 0 but for `PWRITE`) |
///
/// `vfs` applies the records in order and stops at the first that fails
/// (its error is the call's); a record it cannot parse is `EINVAL`.
pub mod file_batch {
    /// Bytes of a record's header.
    pub const HEADER: usize = 24;
    /// `pwrite(fd, data, offset)`.
    pub const PWRITE: u32 = 1;
    /// `fsync(fd)`.
    pub const FSYNC: u32 = 2;
    /// `close(fd)`.
    pub const CLOSE: u32 = 3;

    /// One record's header.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Record {
        /// [`PWRITE`], [`FSYNC`] or [`CLOSE`].
        pub op: u32,
        /// The descriptor.
        pub fd: i32,
        /// Where the data goes (`PWRITE`).
        pub offset: u64,
        /// Bytes of data after the header (`PWRITE`).
        pub len: u64,
    }

    /// Bytes a record with `len` bytes of data takes (`None` if that
    /// overflows).
    pub fn record_size(len: u64) -> Option<usize> {
        let len = usize::try_from(len).ok()?;
        HEADER.checked_add(len)?.checked_next_multiple_of(8)
    }

    /// The header bytes of `r`.
    pub fn header(r: &Record) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&r.op.to_le_bytes());
        h[4..8].copy_from_slice(&r.fd.to_le_bytes());
        h[8..16].copy_from_slice(&r.offset.to_le_bytes());
        h[16..24].copy_from_slice(&r.len.to_le_bytes());
        h
    }

    /// The record in header bytes `h`.
    pub fn parse(h: &[u8; HEADER]) -> Record {
        let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        Record {
            op: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            fd: i32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            offset: u64_at(8),
            len: u64_at(16),
        }
    }
}
