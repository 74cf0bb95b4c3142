//! An in-memory file system (Unikraft's `ramfs`), addressed by inode number.
//!
//! `vfs` resolves paths and keeps file descriptors; this component keeps
//! the tree. Names and data arrive as shared-memory handles, so the calls
//! can cross a compartment boundary. A node lives while a directory entry
//! names it or an open file refers to it ([`open_ref`]/[`close_ref`]), as
//! in POSIX.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use flexos_gate::abi::{DirEntry, Errno, FileKind, NAME_MAX, Stat};
use flexos_gate::{SharedMut, SharedRef};
use flexos_platform::clock;

flexos_gate::component!(RAMFS);
flexos_gate::exports!(
    root() -> u64,
    lookup(u64, SharedRef<'_>) -> Result<u64, Errno>,
    create(u64, SharedRef<'_>, FileKind) -> Result<u64, Errno>,
    read(u64, u64, SharedMut<'_>) -> Result<usize, Errno>,
    write(u64, u64, SharedRef<'_>) -> Result<usize, Errno>,
    truncate(u64, u64) -> Result<(), Errno>,
    stat(u64) -> Result<Stat, Errno>,
    remove(u64, SharedRef<'_>, FileKind) -> Result<(), Errno>,
    rename(u64, SharedRef<'_>, u64, SharedRef<'_>) -> Result<(), Errno>,
    readdir(u64, u64) -> Result<Option<DirEntry>, Errno>,
    open_ref(u64) -> Result<(), Errno>,
    close_ref(u64) -> Result<(), Errno>,
    node_count() -> usize,
    set_limits(u64, u64) -> Result<(), Errno>,
);

/// The inode number of the root directory.
pub const ROOT: u64 = 1;
/// The largest file this file system stores, unless [`set_limits`] says otherwise.
pub const MAX_FILE_SIZE: u64 = 256 << 20;

struct Inode {
    kind: FileKind,
    data: Vec<u8>,
    entries: BTreeMap<Vec<u8>, u64>,
    parent: u64,
    nlink: u32,
    opens: u32,
    mtime_ns: u64,
}

struct RamFs {
    inodes: BTreeMap<u64, Inode>,
    next: u64,
    /// The largest file (bytes): larger writes fail with `EFBIG`.
    max_file_size: u64,
    /// The most file data in all (bytes): writes beyond fail with `ENOSPC`.
    capacity: u64,
    /// File data held now (bytes).
    used: u64,
    /// Buffers of removed files, kept for new ones ([`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
}

impl Default for RamFs {
    fn default() -> RamFs {
        let root = Inode {
            kind: FileKind::Dir,
            data: Vec::new(),
            entries: BTreeMap::new(),
            parent: ROOT,
            nlink: 1,
            opens: 0,
            mtime_ns: clock::wall_coarse_ns(),
        };
        RamFs {
            inodes: BTreeMap::from([(ROOT, root)]),
            next: ROOT + 1,
            max_file_size: MAX_FILE_SIZE,
            capacity: u64::MAX,
            used: 0,
            spare: Vec::new(),
        }
    }
}

/// Makes room in file `data` for `end` bytes, if the limits and the heap
/// allow it: `EFBIG` past the largest file, `ENOSPC` past the capacity or
/// when the heap has no room (memory is reserved fallibly, so a full file
/// system is an error for that write, never an abort). `fs_used` is the
/// file data held now. A file with no room yet takes a buffer from `spare`
/// (files removed before) when one is there.
fn reserve(
    fs_used: u64,
    limits: (u64, u64),
    spare: &mut Vec<Vec<u8>>,
    data: &mut Vec<u8>,
    end: u64,
) -> Result<(), Errno> {
    let (max_file_size, capacity) = limits;
    if end > max_file_size {
        return Err(Errno::EFBIG);
    }
    let end = usize::try_from(end).map_err(|_| Errno::EFBIG)?;
    if end > data.len() {
        let extra = end - data.len();
        if fs_used.saturating_add(extra as u64) > capacity {
            return Err(Errno::ENOSPC);
        }
        if data.capacity() == 0
            && let Some(buffer) = spare.pop()
        {
            *data = buffer;
        }
        if data.capacity() < end {
            // Doubling where the heap has room for it, else exactly what is needed.
            let doubled = end.max(data.capacity() * 2) - data.capacity();
            let amortized = flexos_alloc::has_room(doubled) && data.try_reserve(extra).is_ok();
            if !amortized && (!flexos_alloc::has_room(end - data.capacity()) || data.try_reserve_exact(extra).is_err())
            {
                return Err(Errno::ENOSPC);
            }
        }
    }
    Ok(())
}

/// The most buffers of removed files kept for new ones, and the largest
/// kept: a file that is written and removed again and again (a journal)
/// then grows without reallocating, as a page cache reuses its pages.
const SPARE_BUFFERS: usize = 2;
const SPARE_BUFFER_MAX: usize = 64 * 1024;

impl RamFs {
    fn node(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        let n = self.node(ino)?;
        if n.kind != FileKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(n)
    }

    fn file(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        file_of(&mut self.inodes, ino)
    }

    /// Frees `ino` if nothing names or uses it any more.
    fn collect(&mut self, ino: u64) {
        if let Some(n) = self.inodes.get(&ino)
            && n.nlink == 0
            && n.opens == 0
        {
            self.used -= n.data.len() as u64;
            if let Some(mut n) = self.inodes.remove(&ino)
                && (1..=SPARE_BUFFER_MAX).contains(&n.data.capacity())
                && self.spare.len() < SPARE_BUFFERS
            {
                n.data.clear();
                self.spare.push(n.data);
            }
        }
    }

    /// Makes file `ino` `end` bytes long, with zeros added (see [`reserve`]).
    fn resize_file(&mut self, ino: u64, end: u64) -> Result<&mut Inode, Errno> {
        let f = self.reserve_file(ino, end)?;
        let before = f.data.len() as u64;
        f.data.resize(end as usize, 0);
        self.used = self.used - before + end;
        self.file(ino)
    }

    /// Makes room in file `ino` for `end` bytes (see [`reserve`]).
    fn reserve_file(&mut self, ino: u64, end: u64) -> Result<&mut Inode, Errno> {
        let (used, limits) = (self.used, (self.max_file_size, self.capacity));
        let f = file_of(&mut self.inodes, ino)?;
        reserve(used, limits, &mut self.spare, &mut f.data, end)?;
        Ok(f)
    }

    /// Writes `data` at `offset` of file `ino` (see [`write`]), with one
    /// lookup of the file.
    fn write_file(&mut self, ino: u64, offset: u64, data: SharedRef<'_>) -> Result<usize, Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        let (used, limits) = (self.used, (self.max_file_size, self.capacity));
        let f = file_of(&mut self.inodes, ino)?;
        let len = f.data.len();
        reserve(used, limits, &mut self.spare, &mut f.data, end.max(len as u64))?;
        // One copy straight from shared memory into the file; an append
        // (most writes that grow a file) without zero-filling the room first.
        if offset == len as u64 {
            data.append_to(&mut f.data).map_err(|_| Errno::ENOSPC)?;
        } else {
            // `reserve` made room for `end`, so it fits in memory.
            let end = end as usize;
            if end > len {
                f.data.resize(end, 0);
            }
            data.copy_to_slice(&mut f.data[offset as usize..end]);
        }
        let grown = f.data.len() - len;
        f.mtime_ns = clock::wall_coarse_ns();
        self.used += grown as u64;
        Ok(data.len())
    }

    fn detach(&mut self, dir: u64, name: &[u8]) -> Result<u64, Errno> {
        let d = self.dir(dir)?;
        let ino = d.entries.remove(name).ok_or(Errno::ENOENT)?;
        d.mtime_ns = clock::wall_coarse_ns();
        let n = self.node(ino)?;
        n.nlink -= 1;
        self.collect(ino);
        Ok(ino)
    }
}

/// File `ino` of `inodes`: `ENOENT` if there is none, `EISDIR` for a directory.
fn file_of(inodes: &mut BTreeMap<u64, Inode>, ino: u64) -> Result<&mut Inode, Errno> {
    let n = inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
    if n.kind == FileKind::Dir {
        return Err(Errno::EISDIR);
    }
    Ok(n)
}

fn with<R>(f: impl FnOnce(&mut RamFs) -> Result<R, Errno>) -> Result<R, Errno> {
    flexos_gate::with_state(flexos_gate::me!(), f)
}

/// Runs `f` on a name passed in shared memory, copied into private memory
/// once (on the stack), so that what is checked is what is used;
/// `ENAMETOOLONG` beyond `NAME_MAX`, before anything is copied.
fn with_name<R>(name: SharedRef<'_>, f: impl FnOnce(&[u8]) -> Result<R, Errno>) -> Result<R, Errno> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    name.with_copy(f)
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Whether `node` may be removed (or replaced) by an operation on a `kind`:
/// the kinds must agree, and a directory must be empty.
fn check_replaceable(kind: FileKind, node: &Inode) -> Result<(), Errno> {
    match (kind, node.kind) {
        (FileKind::File, FileKind::Dir) => Err(Errno::EISDIR),
        (FileKind::Dir, FileKind::File) => Err(Errno::ENOTDIR),
        (FileKind::Dir, FileKind::Dir) if !node.entries.is_empty() => Err(Errno::ENOTEMPTY),
        _ => Ok(()),
    }
}

/// The root directory's inode number.
pub(crate) fn root() -> u64 {
    ROOT
}

/// Looks `name` up in directory `dir` (`.` and `..` included).
pub(crate) fn lookup(dir: u64, name: SharedRef<'_>) -> Result<u64, Errno> {
    with_name(name, |name| {
        with(|fs| {
            let d = fs.dir(dir)?;
            match name {
                b"." | b"" => Ok(dir),
                b".." => Ok(d.parent),
                _ => d.entries.get(name).copied().ok_or(Errno::ENOENT),
            }
        })
    })
}

/// Creates `name` in `dir` as a file or directory; `EEXIST` if the name is taken.
pub(crate) fn create(dir: u64, name: SharedRef<'_>, kind: FileKind) -> Result<u64, Errno> {
    with_name(name, |name| create_checked(dir, name, kind))
}

/// [`create`] with its name in private memory.
fn create_checked(dir: u64, name: &[u8], kind: FileKind) -> Result<u64, Errno> {
    check_name(name)?;
    with(|fs| {
        let now = clock::wall_coarse_ns();
        let ino = fs.next;
        let d = fs.dir(dir)?;
        if d.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        d.entries.insert(name.to_vec(), ino);
        d.mtime_ns = now;
        let node =
            Inode { kind, data: Vec::new(), entries: BTreeMap::new(), parent: dir, nlink: 1, opens: 0, mtime_ns: now };
        fs.inodes.insert(ino, node);
        fs.next += 1;
        Ok(ino)
    })
}

/// Reads from file `ino` at `offset` into `buf`; returns the bytes read (0 at the end).
pub(crate) fn read(ino: u64, offset: u64, mut buf: SharedMut<'_>) -> Result<usize, Errno> {
    with(|fs| {
        let f = fs.file(ino)?;
        let len = f.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = (len - offset).min(buf.len() as u64) as usize;
        let start = offset as usize;
        buf.write_at(0, &f.data[start..start + n]);
        Ok(n)
    })
}

/// Writes `data` into file `ino` at `offset`, growing it (with zeros) as
/// needed: `EFBIG` past the largest file, `ENOSPC` when the file system
/// (or the heap) is full.
pub(crate) fn write(ino: u64, offset: u64, data: SharedRef<'_>) -> Result<usize, Errno> {
    with(|fs| fs.write_file(ino, offset, data))
}

/// Sets the size of file `ino` (`EFBIG`, `ENOSPC` as for [`write`]).
pub(crate) fn truncate(ino: u64, size: u64) -> Result<(), Errno> {
    with(|fs| {
        let f = fs.resize_file(ino, size)?;
        f.data.shrink_to(size as usize * 2);
        f.mtime_ns = clock::wall_coarse_ns();
        Ok(())
    })
}

/// Sets the largest file (`max_file_size`, bytes; 0 keeps the current
/// limit) and the most file data in all (`capacity`, bytes; 0 keeps it).
/// Limits below what is stored already apply to later writes only.
pub(crate) fn set_limits(max_file_size: u64, capacity: u64) -> Result<(), Errno> {
    with(|fs| {
        if max_file_size > 0 {
            fs.max_file_size = max_file_size;
        }
        if capacity > 0 {
            fs.capacity = capacity;
        }
        Ok(())
    })
}

/// The attributes of `ino`.
pub(crate) fn stat(ino: u64) -> Result<Stat, Errno> {
    with(|fs| {
        let n = fs.node(ino)?;
        let size = match n.kind {
            FileKind::File => n.data.len() as u64,
            FileKind::Dir => n.entries.len() as u64,
        };
        Ok(Stat { ino, kind: n.kind, size, nlink: n.nlink, mtime_ns: n.mtime_ns })
    })
}

/// Removes entry `name` of `dir`, which must be of `kind`; a directory must be empty.
pub(crate) fn remove(dir: u64, name: SharedRef<'_>, kind: FileKind) -> Result<(), Errno> {
    with_name(name, |name| {
        check_name(name)?;
        with(|fs| {
            let ino = *fs.dir(dir)?.entries.get(name).ok_or(Errno::ENOENT)?;
            check_replaceable(kind, fs.node(ino)?)?;
            fs.detach(dir, name).map(|_| ())
        })
    })
}

/// Moves `src_dir/src_name` to `dst_dir/dst_name`, replacing a file or an
/// empty directory of the same kind there.
pub(crate) fn rename(
    src_dir: u64,
    src_name: SharedRef<'_>,
    dst_dir: u64,
    dst_name: SharedRef<'_>,
) -> Result<(), Errno> {
    with_name(src_name, |src_name| with_name(dst_name, |dst_name| rename_checked(src_dir, src_name, dst_dir, dst_name)))
}

/// [`rename`] with both names in private memory.
fn rename_checked(src_dir: u64, src_name: &[u8], dst_dir: u64, dst_name: &[u8]) -> Result<(), Errno> {
    check_name(src_name)?;
    check_name(dst_name)?;
    with(|fs| {
        let ino = *fs.dir(src_dir)?.entries.get(src_name).ok_or(Errno::ENOENT)?;
        fs.dir(dst_dir)?;
        if src_dir == dst_dir && src_name == dst_name {
            return Ok(());
        }
        let kind = fs.node(ino)?.kind;
        if kind == FileKind::Dir {
            // A directory cannot move below itself.
            let mut up = dst_dir;
            loop {
                if up == ino {
                    return Err(Errno::EINVAL);
                }
                if up == ROOT {
                    break;
                }
                up = fs.node(up)?.parent;
            }
        }
        if let Some(&old) = fs.dir(dst_dir)?.entries.get(dst_name) {
            check_replaceable(kind, fs.node(old)?)?;
            fs.detach(dst_dir, dst_name)?;
        }
        let now = clock::wall_coarse_ns();
        let s = fs.dir(src_dir)?;
        s.entries.remove(src_name);
        s.mtime_ns = now;
        let d = fs.dir(dst_dir)?;
        d.entries.insert(dst_name.to_vec(), ino);
        d.mtime_ns = now;
        fs.node(ino)?.parent = dst_dir;
        Ok(())
    })
}

/// The `index`-th entry of directory `dir` in name order, `None` past the last.
pub(crate) fn readdir(dir: u64, index: u64) -> Result<Option<DirEntry>, Errno> {
    with(|fs| {
        let d = fs.dir(dir)?;
        let Some((name, &ino)) = d.entries.iter().nth(index as usize) else { return Ok(None) };
        let name = name.clone();
        let kind = fs.node(ino)?.kind;
        Ok(DirEntry::new(ino, kind, &name))
    })
}

/// Notes that an open file refers to `ino` (it outlives its last name until [`close_ref`]).
pub(crate) fn open_ref(ino: u64) -> Result<(), Errno> {
    with(|fs| {
        fs.node(ino)?.opens += 1;
        Ok(())
    })
}

/// Drops a reference taken by [`open_ref`].
pub(crate) fn close_ref(ino: u64) -> Result<(), Errno> {
    with(|fs| {
        let n = fs.node(ino)?;
        n.opens = n.opens.checked_sub(1).ok_or(Errno::EINVAL)?;
        fs.collect(ino);
        Ok(())
    })
}

/// How many nodes exist (the root included).
pub(crate) fn node_count() -> usize {
    with(|fs| {
        fs.node(ROOT)?;
        Ok(fs.inodes.len())
    })
    .unwrap_or(0)
}
