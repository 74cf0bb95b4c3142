//! The file system interface (Unikraft's `vfscore`): path resolution and
//! file descriptors, over the in-memory file system (`ramfs`), which it
//! reaches through gates.
//!
//! Paths are absolute (a relative path is taken from `/`); `.` and `..` are
//! understood. Paths and data arrive as shared-memory handles and are passed
//! on to `ramfs` without copies.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;
use flexos_gate::abi::file_batch;
use flexos_gate::abi::open_flags::*;
use flexos_gate::abi::{DirEntry, Errno, FileKind, Stat, Whence};
use flexos_gate::{SharedMut, SharedRef, gate};

flexos_gate::component!(VFS);
flexos_gate::exports!(
    open(SharedRef<'_>, u32, u32) -> Result<i32, Errno>,
    close(i32) -> Result<(), Errno>,
    read(i32, SharedMut<'_>) -> Result<usize, Errno>,
    write(i32, SharedRef<'_>) -> Result<usize, Errno>,
    pread(i32, SharedMut<'_>, u64) -> Result<usize, Errno>,
    pwrite(i32, SharedRef<'_>, u64) -> Result<usize, Errno>,
    lseek(i32, i64, Whence) -> Result<u64, Errno>,
    ftruncate(i32, u64) -> Result<(), Errno>,
    fsync(i32) -> Result<(), Errno>,
    fstat(i32) -> Result<Stat, Errno>,
    stat(SharedRef<'_>) -> Result<Stat, Errno>,
    unlink(SharedRef<'_>) -> Result<(), Errno>,
    mkdir(SharedRef<'_>, u32) -> Result<(), Errno>,
    rmdir(SharedRef<'_>) -> Result<(), Errno>,
    rename(SharedRef<'_>, SharedRef<'_>) -> Result<(), Errno>,
    readdir(i32, u64) -> Result<Option<DirEntry>, Errno>,
    open_count() -> usize,
    set_fs_limits(u64, u64) -> Result<(), Errno>,
    submit(SharedRef<'_>) -> Result<(), Errno>,
    submit_then_pread(SharedRef<'_>, i32, SharedMut<'_>, u64) -> Result<usize, Errno>,
    submit_then_unlink(SharedRef<'_>, SharedRef<'_>) -> Result<(), Errno>,
);

/// The most file descriptors open at once.
pub const MAX_FDS: usize = 1024;
/// The first descriptor handed out (0–2 are the console's).
pub const FIRST_FD: i32 = 3;

struct OpenFile {
    ino: u64,
    offset: u64,
    flags: u32,
}

#[derive(Default)]
struct Vfs {
    files: Vec<Option<OpenFile>>,
}

fn with<R>(f: impl FnOnce(&mut Vfs) -> Result<R, Errno>) -> Result<R, Errno> {
    flexos_gate::with_state(flexos_gate::me!(), f)
}

fn slot(v: &mut Vfs, fd: i32) -> Result<&mut OpenFile, Errno> {
    let i = fd.checked_sub(FIRST_FD).ok_or(Errno::EBADF)? as usize;
    v.files.get_mut(i).and_then(Option::as_mut).ok_or(Errno::EBADF)
}

/// The descriptor's inode, offset and flags.
fn describe(fd: i32) -> Result<(u64, u64, u32), Errno> {
    with(|v| slot(v, fd).map(|f| (f.ino, f.offset, f.flags)))
}

fn readable(flags: u32) -> Result<(), Errno> {
    if flags & O_ACCMODE == O_WRONLY { Err(Errno::EBADF) } else { Ok(()) }
}

fn writable(flags: u32) -> Result<(), Errno> {
    if flags & O_ACCMODE == O_RDONLY { Err(Errno::EBADF) } else { Ok(()) }
}

/// The components of `path` as byte ranges.
fn components(path: &[u8]) -> impl Iterator<Item = core::ops::Range<usize>> + '_ {
    let mut start = 0;
    path.split(|&b| b == b'/').filter_map(move |part| {
        let r = start..start + part.len();
        start += part.len() + 1;
        (!part.is_empty() && part != b".").then_some(r)
    })
}

/// Resolves every component of `path`.
fn resolve(path: SharedRef<'_>) -> Result<u64, Errno> {
    let mut ino = gate!(flexos_ramfs::root());
    // The components are found in a private copy (ramfs checks each name it is given on its own copy).
    path.with_copy(|p| {
        for r in components(p) {
            ino = gate!(flexos_ramfs::lookup(ino, path.slice(r)))?;
        }
        Ok(ino)
    })
}

/// Resolves all but the last component: the parent directory and the last name.
fn resolve_parent(path: SharedRef<'_>) -> Result<(u64, SharedRef<'_>), Errno> {
    let (parts, dotdot) = path.with_copy(|p| {
        let parts: Vec<_> = components(p).collect();
        let dotdot = parts.last().is_some_and(|last| &p[last.clone()] == b"..");
        (parts, dotdot)
    });
    let (last, dirs) = parts.split_last().ok_or(Errno::EINVAL)?;
    if dotdot {
        return Err(Errno::EINVAL);
    }
    let mut ino = gate!(flexos_ramfs::root());
    for r in dirs {
        ino = gate!(flexos_ramfs::lookup(ino, path.slice(r.clone())))?;
    }
    Ok((ino, path.slice(last.clone())))
}

/// Opens `path` with `O_*` flags and returns a file descriptor. `mode` is accepted and ignored.
pub(crate) fn open(path: SharedRef<'_>, flags: u32, mode: u32) -> Result<i32, Errno> {
    let _ = mode;
    let ino = match resolve(path) {
        Ok(_) if flags & O_CREAT != 0 && flags & O_EXCL != 0 => return Err(Errno::EEXIST),
        Ok(ino) => ino,
        Err(Errno::ENOENT) if flags & O_CREAT != 0 => {
            let (dir, name) = resolve_parent(path)?;
            gate!(flexos_ramfs::create(dir, name, FileKind::File))?
        }
        Err(e) => return Err(e),
    };
    let st = gate!(flexos_ramfs::stat(ino))?;
    if st.kind == FileKind::Dir && flags & O_ACCMODE != O_RDONLY {
        return Err(Errno::EISDIR);
    }
    if st.kind != FileKind::Dir && flags & O_DIRECTORY != 0 {
        return Err(Errno::ENOTDIR);
    }
    if flags & O_TRUNC != 0 && st.kind == FileKind::File && flags & O_ACCMODE != O_RDONLY {
        gate!(flexos_ramfs::truncate(ino, 0))?;
    }
    let fd = with(|v| {
        let free = v.files.iter().position(Option::is_none);
        let i = match free {
            Some(i) => i,
            None if v.files.len() < MAX_FDS => {
                v.files.push(None);
                v.files.len() - 1
            }
            None => return Err(Errno::EMFILE),
        };
        v.files[i] = Some(OpenFile { ino, offset: 0, flags });
        Ok(i as i32 + FIRST_FD)
    })?;
    gate!(flexos_ramfs::open_ref(ino))?;
    Ok(fd)
}

/// Closes a file descriptor.
pub(crate) fn close(fd: i32) -> Result<(), Errno> {
    let ino = with(|v| {
        let ino = slot(v, fd)?.ino;
        v.files[(fd - FIRST_FD) as usize] = None;
        Ok(ino)
    })?;
    gate!(flexos_ramfs::close_ref(ino))
}

/// Reads at the descriptor's offset and advances it.
pub(crate) fn read(fd: i32, buf: SharedMut<'_>) -> Result<usize, Errno> {
    let (ino, offset, flags) = describe(fd)?;
    readable(flags)?;
    let n = gate!(flexos_ramfs::read(ino, offset, buf))?;
    with(|v| slot(v, fd).map(|f| f.offset = offset + n as u64))?;
    Ok(n)
}

/// Writes at the descriptor's offset (at the end with `O_APPEND`) and advances it.
pub(crate) fn write(fd: i32, data: SharedRef<'_>) -> Result<usize, Errno> {
    let (ino, mut offset, flags) = describe(fd)?;
    writable(flags)?;
    if flags & O_APPEND != 0 {
        offset = gate!(flexos_ramfs::stat(ino))?.size;
    }
    let n = gate!(flexos_ramfs::write(ino, offset, data))?;
    with(|v| slot(v, fd).map(|f| f.offset = offset + n as u64))?;
    Ok(n)
}

/// Reads at `offset` without moving the descriptor's offset.
pub(crate) fn pread(fd: i32, buf: SharedMut<'_>, offset: u64) -> Result<usize, Errno> {
    let (ino, _, flags) = describe(fd)?;
    readable(flags)?;
    gate!(flexos_ramfs::read(ino, offset, buf))
}

/// Writes at `offset` without moving the descriptor's offset.
pub(crate) fn pwrite(fd: i32, data: SharedRef<'_>, offset: u64) -> Result<usize, Errno> {
    let (ino, _, flags) = describe(fd)?;
    writable(flags)?;
    gate!(flexos_ramfs::write(ino, offset, data))
}

/// Moves the descriptor's offset; returns the new offset.
pub(crate) fn lseek(fd: i32, offset: i64, whence: Whence) -> Result<u64, Errno> {
    let (ino, current, _) = describe(fd)?;
    let base = match whence {
        Whence::Set => 0,
        Whence::Cur => current as i64,
        Whence::End => gate!(flexos_ramfs::stat(ino))?.size as i64,
    };
    let new = base.checked_add(offset).filter(|&n| n >= 0).ok_or(Errno::EINVAL)? as u64;
    with(|v| slot(v, fd).map(|f| f.offset = new))?;
    Ok(new)
}

/// Sets the size of the open file.
pub(crate) fn ftruncate(fd: i32, size: u64) -> Result<(), Errno> {
    let (ino, _, flags) = describe(fd)?;
    writable(flags).map_err(|_| Errno::EINVAL)?;
    gate!(flexos_ramfs::truncate(ino, size))
}

/// Sets the file system's largest file and total capacity in bytes (0
/// keeps a limit as it is); writes beyond fail with `EFBIG` and `ENOSPC`.
pub(crate) fn set_fs_limits(max_file_size: u64, capacity: u64) -> Result<(), Errno> {
    gate!(flexos_ramfs::set_limits(max_file_size, capacity))
}

/// Makes the file durable. Memory is all the durability a ramfs has: this
/// only checks the descriptor.
pub(crate) fn fsync(fd: i32) -> Result<(), Errno> {
    describe(fd).map(|_| ())
}

/// Attributes of an open file.
pub(crate) fn fstat(fd: i32) -> Result<Stat, Errno> {
    let (ino, ..) = describe(fd)?;
    gate!(flexos_ramfs::stat(ino))
}

/// Attributes of `path`.
pub(crate) fn stat(path: SharedRef<'_>) -> Result<Stat, Errno> {
    let ino = resolve(path)?;
    gate!(flexos_ramfs::stat(ino))
}

/// Removes the file `path` (it lives on while open).
pub(crate) fn unlink(path: SharedRef<'_>) -> Result<(), Errno> {
    let (dir, name) = resolve_parent(path)?;
    gate!(flexos_ramfs::remove(dir, name, FileKind::File))
}

/// Creates directory `path`. `mode` is accepted and ignored.
pub(crate) fn mkdir(path: SharedRef<'_>, mode: u32) -> Result<(), Errno> {
    let _ = mode;
    let (dir, name) = resolve_parent(path)?;
    gate!(flexos_ramfs::create(dir, name, FileKind::Dir)).map(|_| ())
}

/// Removes the empty directory `path`.
pub(crate) fn rmdir(path: SharedRef<'_>) -> Result<(), Errno> {
    let (dir, name) = resolve_parent(path)?;
    gate!(flexos_ramfs::remove(dir, name, FileKind::Dir))
}

/// Renames `from` to `to`, replacing `to` if it exists.
pub(crate) fn rename(from: SharedRef<'_>, to: SharedRef<'_>) -> Result<(), Errno> {
    let (src_dir, src_name) = resolve_parent(from)?;
    let (dst_dir, dst_name) = resolve_parent(to)?;
    gate!(flexos_ramfs::rename(src_dir, src_name, dst_dir, dst_name))
}

/// The `index`-th entry of the directory open as `fd`; `None` past the last.
pub(crate) fn readdir(fd: i32, index: u64) -> Result<Option<DirEntry>, Errno> {
    let (ino, ..) = describe(fd)?;
    gate!(flexos_ramfs::readdir(ino, index))
}

/// How many descriptors are open.
pub(crate) fn open_count() -> usize {
    with(|v| Ok(v.files.iter().flatten().count())).unwrap_or(0)
}

/// Applies a caller's queued file operations ([`file_batch`]) in order and
/// stops at the first that fails, whose error it returns; a record that
/// does not parse (an unknown operation, data past the buffer) is `EINVAL`.
/// Each header is copied out of shared memory once and only the copy is
/// checked and used, so a caller that changes the buffer meanwhile changes
/// at most the bytes a write stores, never which record is applied where.
pub(crate) fn submit(log: SharedRef<'_>) -> Result<(), Errno> {
    let mut at = 0;
    while at < log.len() {
        let header_end = at.checked_add(file_batch::HEADER).filter(|&e| e <= log.len()).ok_or(Errno::EINVAL)?;
        let mut h = [0u8; file_batch::HEADER];
        log.slice(at..header_end).copy_to_slice(&mut h);
        let r = file_batch::parse(&h);
        let size = file_batch::record_size(r.len).ok_or(Errno::EINVAL)?;
        let end = at.checked_add(size).filter(|&e| e <= log.len()).ok_or(Errno::EINVAL)?;
        match r.op {
            file_batch::PWRITE => {
                let data_end = header_end + r.len as usize;
                let n = pwrite(r.fd, log.slice(header_end..data_end), r.offset)?;
                if n as u64 != r.len {
                    return Err(Errno::EIO);
                }
            }
            file_batch::FSYNC if r.len == 0 => fsync(r.fd)?,
            file_batch::CLOSE if r.len == 0 => close(r.fd)?,
            _ => return Err(Errno::EINVAL),
        }
        at = end;
    }
    Ok(())
}

/// [`submit`], then, if every record was applied, [`pread`]: a caller's
/// queued writes and the read that must see them, in one call.
pub(crate) fn submit_then_pread(log: SharedRef<'_>, fd: i32, buf: SharedMut<'_>, offset: u64) -> Result<usize, Errno> {
    submit(log)?;
    pread(fd, buf, offset)
}

/// [`submit`], then, if every record was applied, [`unlink`]: a caller's
/// queued `close` of a file and the removal of its name, in one call
/// (SQLite closes its journal and then deletes it).
pub(crate) fn submit_then_unlink(log: SharedRef<'_>, path: SharedRef<'_>) -> Result<(), Errno> {
    submit(log)?;
    unlink(path)
}
