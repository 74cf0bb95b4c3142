//! What a thread's C library knows of the file system without asking it
//! again: paths known to be absent, and the sizes of files it has open.
//!
//! Where `vfs` and `ramfs` are a remote call away from a C library in the
//! host, every change to the file system a thread sees happens inside a
//! remote call that thread made: each host thread has its own instance of
//! every component, served on its own chain of remote calls. So knowledge
//! gathered from the library's own calls stays true until the thread makes
//! a remote call the library did not make; the gate counts a thread's
//! remote calls (`flexos_gate::remote::calls_made`), and the knowledge is
//! valid only at the count it was last confirmed at. SQLite asks before
//! every transaction whether its journal and its write-ahead log exist,
//! how large the database is and what its header's change counter says,
//! and reads past its journal's end once a commit: answered here, these
//! five of ten crossings per transaction stay home (docs/benchmarks.md,
//! "Answers the C library knows").
//!
//! Everything here is a cache of answers: when in doubt (a failed call, a
//! descriptor whose file is unknown, a path with `..`), it forgets.

use alloc::vec::Vec;
use flexos_gate::abi::open_flags::{O_ACCMODE, O_TRUNC, O_WRONLY};

/// The most paths remembered as absent (the oldest is forgotten first).
const MAX_ABSENT: usize = 32;
/// The most open files whose size is remembered.
const MAX_SIZES: usize = 64;
/// Bytes of a file's head remembered (where formats keep their headers:
/// SQLite reads 16 bytes at offset 24 before every transaction).
pub(crate) const HEAD: usize = 128;

/// Which file a remembered descriptor is open on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Inode {
    /// The inode number `vfs` reported.
    Number(u64),
    /// A file this thread's `open` created (its path was known to be
    /// absent): a new inode, which no other remembered descriptor is open on
    /// until another `open` succeeds.
    Created(u64),
}

/// A remembered open file.
#[derive(Debug)]
struct OpenFile {
    fd: i32,
    inode: Inode,
    /// Its size, queued writes included.
    size: u64,
    /// The file's first bytes, as far as known (at most [`HEAD`]; queued
    /// writes included).
    head: Vec<u8>,
}

/// A thread's knowledge (kept in the C library's file state).
#[derive(Default, Debug)]
pub(crate) struct Knowledge {
    /// The thread's count of remote calls at which this knowledge is true;
    /// `None` after a call that may have changed what it does not track.
    valid_at: Option<u64>,
    /// Paths (as [`path_key`] spells them) that do not exist.
    absent: Vec<Vec<u8>>,
    /// Open files' sizes.
    files: Vec<OpenFile>,
    /// Descriptors this thread opened for reading, or read (whose files
    /// may not be known yet): only their known sizes and heads answer reads.
    readable: Vec<i32>,
    /// The last [`Inode::Created`] handed out.
    created: u64,
}

/// `path` spelled as `vfs` resolves it (components without empty ones and
/// `.`, joined by `/`), or `None` for a path with `..` (which resolves
/// through the file system, so two spellings may name one file).
pub(crate) fn path_key(path: &[u8]) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(path.len() + 1);
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty() && *p != b".") {
        if part == b".." {
            return None;
        }
        key.push(b'/');
        key.extend_from_slice(part);
    }
    Some(key)
}

impl Knowledge {
    /// Forgets everything.
    pub fn forget(&mut self) {
        self.absent.clear();
        self.files.clear();
        self.readable.clear();
    }

    /// Makes the knowledge usable at the thread's count of remote calls
    /// `now`: if anything crossed since it was confirmed, it is forgotten.
    pub fn check(&mut self, now: u64) {
        if self.valid_at != Some(now) {
            self.forget();
            self.valid_at = Some(now);
        }
    }

    /// After one of the library's own crossings, which began at count
    /// `before` (after [`Knowledge::check`]) and ended at `after`: still true
    /// if that crossing was the only remote call between (none where the
    /// call was not remote: an image of one compartment, in tests).
    pub fn crossed(&mut self, before: u64, after: u64) {
        if self.valid_at == Some(before) && after <= before + 1 {
            self.valid_at = Some(after);
        } else {
            self.forget();
            self.valid_at = None;
        }
    }

    /// Whether what the library learns at count `now` may be added.
    pub fn is_valid(&self, now: u64) -> bool {
        self.valid_at == Some(now)
    }

    /// Whether `key` is known not to exist.
    pub fn is_absent(&self, key: &[u8]) -> bool {
        self.absent.iter().any(|k| k == key)
    }

    /// `key` does not exist (`None`: a path not tracked; nothing learned).
    pub fn learn_absent(&mut self, key: Option<Vec<u8>>) {
        let Some(key) = key else { return };
        if !self.is_absent(&key) {
            if self.absent.len() == MAX_ABSENT {
                self.absent.remove(0);
            }
            self.absent.push(key);
        }
    }

    /// `key` exists now (`None`: a path with `..`, which may be any path:
    /// every absent path is forgotten).
    pub fn learn_present(&mut self, key: Option<&[u8]>) {
        match key {
            Some(key) => self.absent.retain(|k| k != key),
            None => self.absent.clear(),
        }
    }

    /// Forgets which paths are absent (after a rename, which may move a
    /// whole tree).
    pub fn forget_paths(&mut self) {
        self.absent.clear();
    }

    /// `fd` was opened on `key` with `O_*` flags; `created`: the path was
    /// known to be absent and the flags create it.
    pub fn opened(&mut self, fd: i32, key: Option<&[u8]>, flags: u32, created: bool) {
        self.closed(fd);
        self.learn_present(key);
        if flags & O_ACCMODE != O_WRONLY {
            self.learn_readable(fd);
        }
        if created {
            self.created += 1;
            self.remember(OpenFile { fd, inode: Inode::Created(self.created), size: 0, head: Vec::new() });
        } else {
            // The new descriptor may be open on a created file: those
            // entries' inodes are no longer known to be apart. A truncation
            // changed the size of a file whose inode is not known.
            self.files.retain(|f| matches!(f.inode, Inode::Number(_)));
            if flags & O_TRUNC != 0 {
                self.files.clear();
            }
        }
    }

    /// `fd` is open on a file of inode `ino` and `size` bytes (`fstat`).
    pub fn learn_size(&mut self, fd: i32, ino: u64, size: u64) {
        self.files.retain(|f| f.fd != fd);
        self.remember(OpenFile { fd, inode: Inode::Number(ino), size, head: Vec::new() });
    }

    /// A read of `fd` succeeded: it reads.
    pub fn learn_readable(&mut self, fd: i32) {
        if !self.readable.contains(&fd) {
            if self.readable.len() == MAX_SIZES {
                self.readable.remove(0);
            }
            self.readable.push(fd);
        }
    }

    /// A read of `fd` at offset 0 returned `data` (all of the file if
    /// shorter than asked): the head of every descriptor open on its file.
    pub fn learn_head(&mut self, fd: i32, data: &[u8]) {
        let Some(inode) = self.files.iter().find(|f| f.fd == fd).map(|f| f.inode) else { return };
        for f in self.files.iter_mut().filter(|f| f.inode == inode) {
            f.head.clear();
            f.head.extend_from_slice(&data[..data.len().min(HEAD)]);
        }
        self.learn_readable(fd);
    }

    /// `n` bytes of `fd` at `offset`, if they lie in the known head and
    /// `fd` reads.
    pub fn head(&self, fd: i32, offset: u64, n: usize) -> Option<&[u8]> {
        if !self.readable.contains(&fd) {
            return None;
        }
        let f = self.files.iter().find(|f| f.fd == fd)?;
        let start = usize::try_from(offset).ok()?;
        f.head.get(start..start.checked_add(n)?)
    }

    fn remember(&mut self, file: OpenFile) {
        if self.files.len() == MAX_SIZES {
            self.files.remove(0);
        }
        self.files.push(file);
    }

    /// `fd` was closed.
    pub fn closed(&mut self, fd: i32) {
        self.files.retain(|f| f.fd != fd);
        self.readable.retain(|&r| r != fd);
    }

    /// The size of the file open as `fd`, if known.
    pub fn size(&self, fd: i32) -> Option<u64> {
        self.files.iter().find(|f| f.fd == fd).map(|f| f.size)
    }

    /// Whether a read of `fd` at `offset` is known to find the end of the
    /// file (and so to return no bytes): `fd` was opened for reading here
    /// and its file is no longer than `offset`. Queued writes count in the
    /// size, so a read that comes before they are sent is answered as one
    /// after them; if they then fail, the file is only shorter.
    pub fn reads_nothing_at(&self, fd: i32, offset: u64) -> bool {
        self.readable.contains(&fd) && self.files.iter().any(|f| f.fd == fd && offset >= f.size)
    }

    /// A write of `data` to `fd` at `offset` (`None`: at the descriptor's
    /// offset, somewhere not known) succeeded or was queued.
    pub fn wrote(&mut self, fd: i32, offset: Option<u64>, data: &[u8]) {
        let end = offset.and_then(|o| o.checked_add(data.len() as u64));
        self.resized(fd, |f| {
            let (Some(offset), Some(end)) = (offset, end) else { return false };
            f.size = f.size.max(end);
            // Bytes written into or right after the known head join it.
            if let Ok(at) = usize::try_from(offset)
                && at <= f.head.len()
                && at < HEAD
            {
                let new_len = f.head.len().max((at + data.len()).min(HEAD));
                f.head.resize(new_len, 0);
                let n = new_len.min(at + data.len()) - at;
                f.head[at..at + n].copy_from_slice(&data[..n]);
            }
            true
        });
    }

    /// `fd`'s file was truncated to `size` bytes.
    pub fn truncated(&mut self, fd: i32, size: u64) {
        self.resized(fd, |f| {
            f.size = size;
            f.head.truncate(usize::try_from(size).unwrap_or(usize::MAX));
            true
        });
    }

    /// Applies a change through `fd` to every descriptor open on the same
    /// file (`change` returns false when what is known of the file is
    /// lost); through a descriptor whose file is not known, every file is
    /// forgotten.
    fn resized(&mut self, fd: i32, mut change: impl FnMut(&mut OpenFile) -> bool) {
        let Some(inode) = self.files.iter().find(|f| f.fd == fd).map(|f| f.inode) else {
            self.files.clear();
            return;
        };
        self.files.retain_mut(|f| f.inode != inode || change(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flexos_gate::abi::open_flags::{O_CREAT, O_RDWR, O_WRONLY};

    #[test]
    fn paths_are_spelled_as_vfs_resolves_them() {
        assert_eq!(path_key(b"/tmp//./db-journal").unwrap(), b"/tmp/db-journal");
        assert_eq!(path_key(b"tmp/db").unwrap(), b"/tmp/db");
        assert_eq!(path_key(b"/tmp/../etc"), None);
        assert_eq!(path_key(b"/").unwrap(), b"");
    }

    #[test]
    fn knowledge_holds_only_while_the_library_alone_crossed() {
        let mut k = Knowledge::default();
        k.check(5);
        k.learn_absent(path_key(b"/j"));
        k.crossed(5, 6);
        assert!(k.is_valid(6) && k.is_absent(b"/j"), "the library's own crossing");
        k.check(8);
        assert!(!k.is_absent(b"/j"), "two calls the library did not make");
        k.learn_absent(path_key(b"/j"));
        k.crossed(8, 10);
        assert!(!k.is_valid(10) && !k.is_absent(b"/j"), "a call nested in the library's own");
        k.check(10);
        assert!(k.is_valid(10));
    }

    #[test]
    fn sizes_follow_writes_truncations_and_aliases() {
        let mut k = Knowledge::default();
        k.check(0);
        // The database, learned by fstat; the journal, created by open.
        k.learn_size(3, 42, 8192);
        k.learn_absent(path_key(b"/db-journal"));
        k.opened(4, Some(b"/db-journal"), O_RDWR | O_CREAT, true);
        assert!(!k.is_absent(b"/db-journal"));
        k.wrote(4, Some(0), &[1; 512]);
        k.wrote(4, Some(90), &[2; 10]);
        assert_eq!((k.size(3), k.size(4)), (Some(8192), Some(512)), "a write moves only its own file");
        assert!(k.reads_nothing_at(4, 512) && !k.reads_nothing_at(4, 511));
        assert!(!k.reads_nothing_at(3, 9000), "opened before: not known to be readable");
        k.wrote(3, Some(8192), &[3; 4096]);
        assert_eq!(k.size(3), Some(12288));
        k.truncated(3, 4096);
        assert_eq!(k.size(3), Some(4096));
        k.wrote(3, None, &[0; 8]);
        assert_eq!(k.size(3), None, "a write at an offset not known");
        assert_eq!(k.size(4), Some(512));
        // Another open may alias the created file: it is forgotten.
        k.opened(5, Some(b"/db-journal"), O_RDWR, false);
        assert_eq!(k.size(4), None);
        k.learn_size(3, 42, 4096);
        k.learn_size(6, 42, 4096);
        k.wrote(6, Some(4000), &[4; 1000]);
        assert_eq!(k.size(3), Some(5000), "one inode, two descriptors");
        k.wrote(7, Some(0), &[5]);
        assert_eq!(k.size(3), None, "a write through a descriptor not known may be to any file");
        k.learn_size(3, 42, 1);
        k.closed(3);
        assert_eq!(k.size(3), None);
        k.learn_size(3, 42, 1);
        k.opened(8, None, O_RDWR | O_TRUNC, false);
        assert_eq!(k.size(3), None, "a truncating open of a file not known");
    }

    #[test]
    fn a_file_head_is_learned_from_reads_and_follows_writes() {
        let mut k = Knowledge::default();
        k.check(0);
        k.opened(3, Some(b"/db"), O_RDWR, false);
        k.learn_size(3, 42, 8192);
        k.wrote(3, Some(8), b"x");
        assert_eq!(k.head(3, 8, 1), None, "bytes 0 to 7 not known");
        k.wrote(3, Some(0), b"SQLite");
        assert_eq!(k.head(3, 0, 6), Some(&b"SQLite"[..]), "known from a write, on a descriptor opened to read");
        let page: Vec<u8> = (0..=255).cycle().take(4096).collect();
        k.learn_head(3, &page);
        assert_eq!(k.head(3, 24, 16), Some(&page[24..40]));
        assert_eq!(k.head(3, 120, 16), None, "past the head");
        k.wrote(3, Some(24), &[9; 4]);
        assert_eq!(k.head(3, 22, 4), Some(&[22, 23, 9, 9][..]));
        k.wrote(3, Some(0), &[7; 4096]);
        assert_eq!(k.head(3, 0, HEAD), Some(&[7; HEAD][..]), "a page written over it");
        k.truncated(3, 10);
        assert_eq!((k.head(3, 0, 10), k.head(3, 0, 11)), (Some(&[7; 10][..]), None));
        k.wrote(3, Some(12), &[1]);
        assert_eq!(k.head(3, 0, 12), None, "bytes 10 and 11 not known");
        // A short file: its whole content.
        k.learn_size(4, 43, 5);
        k.learn_head(4, b"hello");
        assert_eq!(k.head(4, 0, 5), Some(&b"hello"[..]));
        assert_eq!(k.head(4, 3, 3), None);
        // Created and write-only: no reads answered.
        k.opened(5, Some(b"/w"), O_CREAT | O_WRONLY, true);
        k.wrote(5, Some(0), b"abc");
        assert_eq!(k.head(5, 0, 3), None);
    }
}
