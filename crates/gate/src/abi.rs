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
