//! The POSIX file functions of C components, as gates into `vfs`.
//!
//! C hands us pointers into its private memory; the data is copied through a
//! buffer in the shared heap, the only kind of memory that crosses a gate.

use crate::known::{Knowledge, path_key};
use core::ffi::{c_char, c_int};
use flexos_gate::abi::file_batch::{self, Record};
use flexos_gate::abi::{Errno, FileKind, Whence, open_flags};
use flexos_gate::{SharedBuf, gate};

fn ret(r: Result<(), Errno>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => -e.0,
    }
}

fn ret_len(r: Result<usize, Errno>) -> isize {
    match r {
        Ok(n) => n as isize,
        Err(e) => -(e.0 as isize),
    }
}

/// The largest scratch buffer kept between calls.
const MAX_SCRATCH: usize = 1 << 20;

/// This thread's file state (a component has one state type).
#[derive(Default)]
struct FileState {
    /// A reusable shared buffer for file data, so that reads and writes do
    /// not allocate and free shared memory on every call. (Its old contents
    /// are visible to the other compartments, like any shared memory.)
    scratch: Option<SharedBuf>,
    /// The write-behind log ([`flexos_libc_pwrite_behind`]): records of
    /// [`file_batch`], sent to `vfs` in one crossing by the next file call.
    behind: Option<SharedBuf>,
    /// Bytes of `behind` in use.
    behind_used: usize,
    /// What this thread knows of the file system without asking ([`KNOWS`]).
    known: Knowledge,
    /// Remote calls the unit tests pretend this thread made (their image
    /// has one compartment, so no call is remote).
    #[cfg(test)]
    pretended_calls: u64,
}

/// Whether this thread keeps [`Knowledge`] of the file system's answers:
/// where all the file system's state (`vfs`'s and `ramfs`'s) is a remote
/// call away and this library runs in the host, so that only remote calls
/// change it (the `known` module says why that makes the knowledge
/// sound); and in this crate's unit tests, which test it.
const KNOWS: bool = (flexos_gate::is_host_to_remote!(flexos_vfs::submit)
    && flexos_gate::is_host_to_remote!(flexos_ramfs::write))
    || cfg!(test);

/// This thread's count of remote calls, which dates the knowledge.
fn calls_made() -> u64 {
    #[cfg(test)]
    let pretended = flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.pretended_calls);
    #[cfg(not(test))]
    let pretended = 0;
    flexos_gate::remote::calls_made() + pretended
}

/// Runs `f` on this thread's knowledge, made current first (forgotten if
/// anything crossed since it was last confirmed); `None` where there is none.
fn ask<R>(f: impl FnOnce(&Knowledge) -> R) -> Option<R> {
    if !KNOWS {
        return None;
    }
    let now = calls_made();
    Some(flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| {
        s.known.check(now);
        f(&s.known)
    }))
}

/// Adds what `f` learns to this thread's knowledge, if it is current.
fn learn(f: impl FnOnce(&mut Knowledge)) {
    if !KNOWS {
        return;
    }
    let now = calls_made();
    flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| {
        if s.known.is_valid(now) {
            f(&mut s.known)
        }
    })
}

/// Forgets what this thread knows (after a call that failed: a queued
/// write may not have been applied, or a call half done).
fn forget() {
    learn(Knowledge::forget)
}

/// One crossing of this library's own into `vfs`: `f` makes it. The
/// knowledge survives it if no other remote call came between.
fn cross<R>(f: impl FnOnce() -> R) -> R {
    if !KNOWS {
        return f();
    }
    let before = calls_made();
    flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.known.check(before));
    let r = f();
    let after = calls_made();
    flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.known.crossed(before, after));
    r
}

/// [`cross`] for a call whose failure leaves the file system in a state
/// the knowledge cannot tell (a log half applied): forgets on `Err`.
fn cross_or_forget<T>(f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
    let r = cross(f);
    if r.is_err() {
        forget();
    }
    r
}

/// Runs `f` with a shared buffer of at least `n` bytes.
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut SharedBuf) -> R) -> R {
    let cached = flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.scratch.take());
    let mut buf = match cached {
        Some(b) if b.len() >= n => b,
        _ => SharedBuf::zeroed(n.next_power_of_two().max(4096)),
    };
    let result = f(&mut buf);
    if buf.len() <= MAX_SCRATCH {
        flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.scratch = Some(buf));
    }
    result
}

/// Bytes of this thread's write-behind log (queued records and their data).
const BEHIND_LOG: usize = 256 << 10;
/// The largest write that is queued; larger ones cross at once.
const MAX_BEHIND_WRITE: usize = 64 << 10;
/// Whether writes are queued at all: only where `vfs` is a remote call away
/// (another process or VM), whose round trip costs far more than queuing;
/// elsewhere `flexos_libc_pwrite_behind` writes at once (a queue of none).
const WRITE_BEHIND: bool = flexos_gate::is_remote!(flexos_vfs::submit);

/// Takes this thread's log if it holds records: (log, bytes used).
fn take_queued() -> Option<(SharedBuf, usize)> {
    // Without write-behind nothing is ever queued: no state to look up (the
    // unit tests queue in an image of one compartment).
    if !WRITE_BEHIND && !cfg!(test) {
        return None;
    }
    flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| {
        if w.behind_used == 0 { None } else { w.behind.take().map(|log| (log, core::mem::take(&mut w.behind_used))) }
    })
}

/// Gives the log back with `used` bytes queued.
fn put_log(log: SharedBuf, used: usize) {
    flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| {
        w.behind = Some(log);
        w.behind_used = used;
    })
}

/// Sends this thread's queued records, with `last` (an `FSYNC` or `CLOSE`)
/// appended, in one crossing; `None` when nothing was queued (`last` is
/// then not sent). Records after one that fails are dropped, and its error
/// is the result.
fn send_queued(last: Option<Record>) -> Option<Result<(), Errno>> {
    let (mut log, mut used) = take_queued()?;
    if let Some(r) = last {
        // `queue` always leaves room for one more header.
        log.write_at(used, &file_batch::header(&r));
        used += file_batch::HEADER;
    }
    let result = cross_or_forget(|| gate!(flexos_vfs::submit(log.shared().slice(0..used))));
    log.shared_mut().slice_mut(0..used).prepare_for_writes();
    put_log(log, 0);
    Some(result)
}

/// Sends the queued writes before a call that must see them: their error, if one failed.
fn flush() -> Result<(), Errno> {
    send_queued(None).unwrap_or(Ok(()))
}

/// Queues a write of `data` at `offset` of `fd` (sending the log first when
/// it is full; that send's error is returned and `data` is not queued).
fn queue_write(fd: c_int, data: &[u8], offset: u64) -> Result<(), Errno> {
    queue_record(&Record { op: file_batch::PWRITE, fd, offset, len: data.len() as u64 }, data)?;
    learn(|k| k.wrote(fd, Some(offset), data));
    Ok(())
}

/// Queues record `r` with its `data` (as [`queue_write`]).
fn queue_record(r: &Record, data: &[u8]) -> Result<(), Errno> {
    let size = file_batch::record_size(r.len).ok_or(Errno::EINVAL)?;
    let (mut log, mut used) = take_queued().unwrap_or_else(|| {
        let free = flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind.take());
        (free.unwrap_or_else(|| SharedBuf::zeroed(BEHIND_LOG)), 0)
    });
    if used + size + file_batch::HEADER > log.len() {
        let sent = cross_or_forget(|| gate!(flexos_vfs::submit(log.shared().slice(0..used))));
        used = 0;
        if let Err(e) = sent {
            put_log(log, 0);
            return Err(e);
        }
    }
    log.write_at(used, &file_batch::header(r));
    log.write_at(used + file_batch::HEADER, data);
    // `vfs`'s core may pull the records into its cache while it waits for
    // the call that will send them.
    flexos_gate::announce!(flexos_vfs::submit)(log.shared().slice(0..used + size));
    put_log(log, used + size);
    Ok(())
}

/// `pwrite(fd, buf, n, offset)` with write-behind where `vfs` is a remote
/// call away (elsewhere it writes at once): a write of up to 64 KiB
/// at an offset is queued and reported done (`n`) at once; the thread's
/// next file call sends the queue before its own work, in the same crossing
/// for `fsync`, `close`, `unlink` and a `pread` at an offset. A queued write that fails is reported by that
/// next call (which then does nothing else), like a write-back cache
/// reports errors at `fsync`; the writes queued after it are dropped.
/// Until then the data is invisible to other threads and compartments, and
/// a thread that ends with writes queued loses them: for callers that sync
/// what they need (SQLite's VFS), not a drop-in `pwrite`.
///
/// # Safety
/// `buf` has `n` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_pwrite_behind(fd: c_int, buf: *const u8, n: usize, offset: i64) -> isize {
    // SAFETY: forwarded contract.
    unsafe { pwrite_behind(WRITE_BEHIND, fd, buf, n, offset) }
}

/// [`flexos_libc_pwrite_behind`], queuing only if `queue`.
///
/// # Safety
/// `buf` has `n` readable bytes.
unsafe fn pwrite_behind(queue: bool, fd: c_int, buf: *const u8, n: usize, offset: i64) -> isize {
    if !queue || offset < 0 || n > MAX_BEHIND_WRITE {
        // SAFETY: forwarded contract.
        return unsafe { flexos_libc_pwrite(fd, buf, n, offset) };
    }
    // SAFETY: the caller's contract.
    let data = unsafe { core::slice::from_raw_parts(buf, n) };
    match queue_write(fd, data, offset as u64) {
        Ok(()) => n as isize,
        Err(e) => -(e.0 as isize),
    }
}

/// Runs `f` with a C path copied into the scratch buffer.
///
/// # Safety
/// `path` is NUL-terminated.
unsafe fn with_path<R>(path: *const c_char, f: impl FnOnce(flexos_gate::SharedRef<'_>) -> R) -> R {
    // SAFETY: the caller's contract.
    let bytes = unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes();
    with_scratch(bytes.len(), |shared| {
        shared.write_at(0, bytes);
        f(shared.shared().slice(0..bytes.len()))
    })
}

/// A C path's key in the knowledge ([`path_key`]).
///
/// # Safety
/// `path` is NUL-terminated.
unsafe fn key_of(path: *const c_char) -> Option<alloc::vec::Vec<u8>> {
    if !KNOWS {
        return None;
    }
    // SAFETY: the caller's contract.
    path_key(unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes())
}

/// Copies a C path into the shared heap.
///
/// # Safety
/// `path` is NUL-terminated.
unsafe fn shared_path(path: *const c_char) -> SharedBuf {
    // SAFETY: the caller's contract.
    SharedBuf::from_slice(unsafe { core::ffi::CStr::from_ptr(path) }.to_bytes())
}

/// `open(path, flags, mode)`: a descriptor or `-errno`.
///
/// # Safety
/// `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_open(path: *const c_char, flags: c_int, mode: c_int) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    let flags = flags as u32;
    // SAFETY: forwarded contract.
    let key = unsafe { key_of(path) };
    // A path known to be absent that this open creates is a new file.
    let created = flags & open_flags::O_CREAT != 0
        && ask(|k| key.as_deref().is_some_and(|key| k.is_absent(key))).unwrap_or(false);
    // SAFETY: forwarded contract.
    match cross(|| unsafe { with_path(path, |p| gate!(flexos_vfs::open(p, flags, mode as u32))) }) {
        Ok(fd) => {
            learn(|k| k.opened(fd, key.as_deref(), flags, created));
            fd
        }
        Err(e) => {
            forget();
            -e.0
        }
    }
}

/// `close(fd)`. Queued writes go along; if one of them fails, that error
/// is returned and the descriptor is closed all the same (as Linux's
/// `close` releases it whatever it reports).
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_close(fd: c_int) -> c_int {
    let r = match send_queued(Some(Record { op: file_batch::CLOSE, fd, offset: 0, len: 0 })) {
        None => ret(cross(|| gate!(flexos_vfs::close(fd)))),
        Some(Ok(())) => 0,
        Some(Err(e)) => {
            let _ = cross(|| gate!(flexos_vfs::close(fd)));
            -e.0
        }
    };
    learn(|k| k.closed(fd));
    r
}

/// `close(fd)` with write-behind where `vfs` is a remote call away
/// (elsewhere, and whenever writes are queued, it is
/// [`flexos_libc_close`]): with nothing queued, the close is queued and
/// reported done (0) at once, and the thread's next file call sends it
/// (`unlink` in the same crossing, for SQLite's close-then-delete of its
/// journal); an error it meets is that call's. Queuing it only behind no
/// writes means that no data waits on it: a thread that ends with it
/// queued leaves only a descriptor open in `vfs`.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_close_behind(fd: c_int) -> c_int {
    close_behind(WRITE_BEHIND, fd)
}

/// [`flexos_libc_close_behind`], queuing only if `queue`.
fn close_behind(queue: bool, fd: c_int) -> c_int {
    if !queue || flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used != 0) {
        return flexos_libc_close(fd);
    }
    match queue_record(&Record { op: file_batch::CLOSE, fd, offset: 0, len: 0 }, &[]) {
        Ok(()) => {
            learn(|k| k.closed(fd));
            0
        }
        Err(e) => -e.0,
    }
}

/// `pread(fd, buf, n, offset)`; a negative offset reads at the descriptor's offset (`read`).
///
/// # Safety
/// `buf` has `n` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_pread(fd: c_int, buf: *mut u8, n: usize, offset: i64) -> isize {
    // A read of the known head of a file (SQLite's change counter), or one
    // known to start at or past the end (SQLite's look past its journal's
    // end before it syncs), is answered here, queued writes included.
    if offset >= 0 {
        let known = ask(|k| match k.head(fd, offset as u64, n) {
            Some(bytes) => {
                // SAFETY: `buf` has `n` == `bytes.len()` writable bytes (caller's contract).
                unsafe { core::slice::from_raw_parts_mut(buf, n) }.copy_from_slice(bytes);
                Some(n as isize)
            }
            None => k.reads_nothing_at(fd, offset as u64).then_some(0),
        });
        if let Some(Some(got)) = known {
            return got;
        }
    }
    // A read at an offset takes the queued writes along (one crossing); any other sends them first.
    let queued = if offset >= 0 {
        take_queued()
    } else if let Err(e) = flush() {
        return -(e.0 as isize);
    } else {
        None
    };
    // At most one scratch buffer per call: a larger read is short, as POSIX allows.
    let n = n.min(MAX_SCRATCH);
    ret_len(with_scratch(n, |shared| {
        let target = shared.shared_mut().slice_mut(0..n);
        let r = cross_or_forget(|| match (offset < 0, queued) {
            (true, _) => gate!(flexos_vfs::read(fd, target)),
            (false, None) => gate!(flexos_vfs::pread(fd, target, offset as u64)),
            (false, Some((log, used))) => {
                let r = gate!(flexos_vfs::submit_then_pread(log.shared().slice(0..used), fd, target, offset as u64));
                put_log(log, 0);
                r
            }
        });
        if let Ok(got) = r {
            // SAFETY: `buf` has `n` >= `got` writable bytes (caller's contract).
            let out = unsafe { core::slice::from_raw_parts_mut(buf, got.min(n)) };
            shared.read_at(0, out);
            // All of the file's head, or all of a shorter file.
            let whole_head = offset == 0 && (got >= crate::known::HEAD || got < n);
            learn(|k| {
                k.learn_readable(fd);
                if whole_head {
                    k.learn_head(fd, out)
                }
            });
        }
        r
    }))
}

/// `read(fd, buf, n)`.
///
/// # Safety
/// `buf` has `n` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_read(fd: c_int, buf: *mut u8, n: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { flexos_libc_pread(fd, buf, n, -1) }
}

/// `pwrite(fd, buf, n, offset)`; a negative offset writes at the descriptor's offset (`write`).
///
/// # Safety
/// `buf` has `n` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_pwrite(fd: c_int, buf: *const u8, n: usize, offset: i64) -> isize {
    if let Err(e) = flush() {
        return -(e.0 as isize);
    }
    // At most one scratch buffer per call: a larger write is short, as POSIX allows.
    let n = n.min(MAX_SCRATCH);
    ret_len(with_scratch(n, |shared| {
        // SAFETY: the caller's contract.
        shared.write_at(0, unsafe { core::slice::from_raw_parts(buf, n) });
        let data = shared.shared().slice(0..n);
        let r = cross_or_forget(|| {
            if offset < 0 {
                gate!(flexos_vfs::write(fd, data))
            } else {
                gate!(flexos_vfs::pwrite(fd, data, offset as u64))
            }
        });
        if let Ok(done) = r {
            // SAFETY: the caller's contract (`n` >= `done` readable bytes).
            let data = unsafe { core::slice::from_raw_parts(buf, done.min(n)) };
            learn(|k| k.wrote(fd, (offset >= 0).then_some(offset as u64), data));
        }
        r
    }))
}

/// `write(fd, buf, n)`.
///
/// # Safety
/// `buf` has `n` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_write(fd: c_int, buf: *const u8, n: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { flexos_libc_pwrite(fd, buf, n, -1) }
}

/// `lseek(fd, offset, whence)` with `SEEK_SET` 0, `SEEK_CUR` 1, `SEEK_END` 2.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_lseek(fd: c_int, offset: i64, whence: c_int) -> i64 {
    if let Err(e) = flush() {
        return -(e.0 as i64);
    }
    let whence = match whence {
        0 => Whence::Set,
        1 => Whence::Cur,
        2 => Whence::End,
        _ => return -(Errno::EINVAL.0 as i64),
    };
    match cross(|| gate!(flexos_vfs::lseek(fd, offset, whence))) {
        Ok(o) => o as i64,
        Err(e) => -(e.0 as i64),
    }
}

/// `ftruncate(fd, size)`.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_ftruncate(fd: c_int, size: i64) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    if size < 0 {
        return -Errno::EINVAL.0;
    }
    let r = cross_or_forget(|| gate!(flexos_vfs::ftruncate(fd, size as u64)));
    if r.is_ok() {
        learn(|k| k.truncated(fd, size as u64));
    }
    ret(r)
}

/// `fsync(fd)`.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_fsync(fd: c_int) -> c_int {
    let queued = send_queued(Some(Record { op: file_batch::FSYNC, fd, offset: 0, len: 0 }));
    ret(queued.unwrap_or_else(|| cross(|| gate!(flexos_vfs::fsync(fd)))))
}

/// `fsync(fd)` with write-behind where `vfs` is a remote call away
/// (elsewhere it is [`flexos_libc_fsync`]): the sync is queued behind the
/// writes before it and reported done (0) at once; the thread's next file
/// call sends it, and an error it or an earlier queued record meets is
/// that call's, with every record queued after the failed one dropped.
/// `vfs` applies a thread's records in order, so a sync never overtakes
/// the writes before it, and writes after a failed one never land. For
/// SQLite's rollback journal: its syncs are always followed by the
/// database's own sync, a plain [`flexos_libc_fsync`] that sends them all
/// and reports any error before the commit can succeed (a failed journal
/// write then leaves the database unwritten and the journal in place, and
/// the commit fails as it would have at the journal's sync).
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_fsync_behind(fd: c_int) -> c_int {
    fsync_behind(WRITE_BEHIND, fd)
}

/// [`flexos_libc_fsync_behind`], queuing only if `queue`.
fn fsync_behind(queue: bool, fd: c_int) -> c_int {
    if !queue {
        return flexos_libc_fsync(fd);
    }
    ret(queue_record(&Record { op: file_batch::FSYNC, fd, offset: 0, len: 0 }, &[]))
}

/// The size of the open file `fd`, or `-errno`.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_fsize(fd: c_int) -> i64 {
    // Known (queued writes counted): SQLite asks before every transaction.
    if let Some(Some(size)) = ask(|k| k.size(fd)) {
        return size as i64;
    }
    if let Err(e) = flush() {
        return -(e.0 as i64);
    }
    match cross(|| gate!(flexos_vfs::fstat(fd))) {
        Ok(st) => {
            if st.kind == FileKind::File {
                learn(|k| k.learn_size(fd, st.ino, st.size));
            }
            st.size as i64
        }
        Err(e) => -(e.0 as i64),
    }
}

/// `unlink(path)`.
///
/// # Safety
/// `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_unlink(path: *const c_char) -> c_int {
    // The queued records go along (one crossing): if one fails, its error
    // is the result and the name stays.
    let queued = take_queued();
    // SAFETY: forwarded contract.
    let r = cross_or_forget(|| unsafe {
        with_path(path, |p| match queued {
            None => gate!(flexos_vfs::unlink(p)),
            Some((log, used)) => {
                let r = gate!(flexos_vfs::submit_then_unlink(log.shared().slice(0..used), p));
                put_log(log, 0);
                r
            }
        })
    });
    if r.is_ok() {
        // SAFETY: forwarded contract.
        let key = unsafe { key_of(path) };
        learn(|k| k.learn_absent(key));
    }
    ret(r)
}

/// Whether `path` exists: 1 for a file, 2 for a directory, or `-errno`.
///
/// # Safety
/// `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_access(path: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    let key = unsafe { key_of(path) };
    // Known to be absent (SQLite asks for its journal and its write-ahead
    // log before every transaction).
    if ask(|k| key.as_deref().is_some_and(|key| k.is_absent(key))).unwrap_or(false) {
        return -Errno::ENOENT.0;
    }
    if let Err(e) = flush() {
        return -e.0;
    }
    // SAFETY: forwarded contract.
    match cross(|| unsafe { with_path(path, |p| gate!(flexos_vfs::stat(p))) }) {
        Ok(st) if st.kind == FileKind::Dir => 2,
        Ok(_) => 1,
        Err(e) => {
            if e == Errno::ENOENT {
                learn(|k| k.learn_absent(key));
            }
            -e.0
        }
    }
}

/// `mkdir(path, mode)`.
///
/// # Safety
/// `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_mkdir(path: *const c_char, mode: c_int) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    // SAFETY: forwarded contract.
    let r = cross_or_forget(|| unsafe { with_path(path, |p| gate!(flexos_vfs::mkdir(p, mode as u32))) });
    if r.is_ok() {
        // SAFETY: forwarded contract.
        let key = unsafe { key_of(path) };
        learn(|k| k.learn_present(key.as_deref()));
    }
    ret(r)
}

/// `rmdir(path)`.
///
/// # Safety
/// `path` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_rmdir(path: *const c_char) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    // SAFETY: forwarded contract.
    let r = cross_or_forget(|| unsafe { with_path(path, |p| gate!(flexos_vfs::rmdir(p))) });
    if r.is_ok() {
        // SAFETY: forwarded contract.
        let key = unsafe { key_of(path) };
        learn(|k| k.learn_absent(key));
    }
    ret(r)
}

/// `rename(from, to)`.
///
/// # Safety
/// Both are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_rename(from: *const c_char, to: *const c_char) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    // SAFETY: forwarded contract.
    let (f, t) = unsafe { (shared_path(from), shared_path(to)) };
    let r = cross_or_forget(|| gate!(flexos_vfs::rename(f.shared(), t.shared())));
    learn(Knowledge::forget_paths);
    ret(r)
}

/// Creates the file `path` (and its parent directories) holding `data`;
/// used at boot to unpack the files packed into the image.
pub fn install_file(path: &str, data: &[u8]) -> Result<(), Errno> {
    let mut at = 0;
    while let Some(i) = path[at + 1..].find('/') {
        at += i + 1;
        let dir = SharedBuf::from_slice(&path.as_bytes()[..at]);
        match gate!(flexos_vfs::mkdir(dir.shared(), 0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let p = SharedBuf::from_slice(path.as_bytes());
    use flexos_gate::abi::open_flags::*;
    let fd = gate!(flexos_vfs::open(p.shared(), O_WRONLY | O_CREAT | O_TRUNC, 0o644))?;
    let mut written = Ok(0);
    for chunk in data.chunks(MAX_SCRATCH) {
        let body = SharedBuf::from_slice(chunk);
        written = gate!(flexos_vfs::write(fd, body.shared()));
        match written {
            Ok(n) if n == chunk.len() => {}
            Ok(_) => written = Err(Errno::EIO),
            Err(_) => break,
        }
    }
    gate!(flexos_vfs::close(fd))?;
    written.map(|_| ())
}

/// A check of the knowledge in a built image (`--flexos-selftest
/// rust-foreign-change`): the library learns that a path is absent, a call
/// it does not make itself creates the file, and the library is asked
/// again. Returns that answer (1: the file exists; -2: `ENOENT`, a stale
/// answer), plus 10 if the knowledge still held the path as absent when it
/// was asked (where it is kept: without the count of remote calls, the
/// answer would have been stale); -1 if the path existed to begin with.
pub fn foreign_change_check() -> i64 {
    use flexos_gate::abi::open_flags::{O_CREAT, O_RDWR};
    let path = c"/selftest-foreign-change";
    // SAFETY: a NUL-terminated literal.
    if unsafe { flexos_libc_access(path.as_ptr()) } != -Errno::ENOENT.0 {
        return -1;
    }
    let shared = SharedBuf::from_slice(path.to_bytes());
    let created = gate!(flexos_vfs::open(shared.shared(), O_RDWR | O_CREAT, 0o644));
    let held =
        KNOWS && flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.known.is_absent(path.to_bytes()));
    // SAFETY: a NUL-terminated literal.
    let answer = unsafe { flexos_libc_access(path.as_ptr()) };
    if let Ok(fd) = created {
        let _ = gate!(flexos_vfs::close(fd));
        let _ = gate!(flexos_vfs::unlink(shared.shared()));
    }
    i64::from(answer) + if held { 10 } else { 0 }
}

/// `flexos_libc_fs_limits(max_file_size, capacity)`: the file system's
/// largest file and total capacity in bytes (0 keeps a limit); 0 or -errno.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_fs_limits(max_file_size: u64, capacity: u64) -> c_int {
    if let Err(e) = flush() {
        return -e.0;
    }
    ret(cross(|| gate!(flexos_vfs::set_fs_limits(max_file_size, capacity))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write-behind (as where `vfs` is a remote call away): queued writes
    /// are seen by the thread's next call, are sent with an fsync or close
    /// in one crossing, and a queued write that
    /// fails is reported by the next call, which then does nothing else.
    #[test]
    fn queued_writes_are_sent_by_the_next_call_and_their_errors_reported_there() {
        let used = || flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used);
        // SAFETY: NUL-terminated literals and buffers of the lengths passed, as the C calls require.
        unsafe {
            let fd = flexos_libc_open(c"/behind".as_ptr(), 2 | 0o100, 0o644);
            assert!(fd >= 3);
            // This test's image has one compartment: vfs is no remote call
            // away, so the C function writes at once.
            assert!(!flexos_gate::is_remote!(flexos_vfs::submit));
            assert_eq!(flexos_libc_pwrite_behind(fd, b"now".as_ptr(), 3, 0), 3);
            assert_eq!(flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used), 0);
            assert_eq!(pwrite_behind(true, fd, b"hello".as_ptr(), 5, 0), 5);
            assert_eq!(pwrite_behind(true, fd, b"J".as_ptr(), 1, 0), 1);
            let queued = flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used);
            assert_eq!(queued, 2 * 32, "two records queued, nothing sent");
            let mut buf = [0u8; 8];
            assert_eq!(flexos_libc_pread(fd, buf.as_mut_ptr(), 8, 0), 5, "the read sent them first");
            assert_eq!(&buf[..5], b"Jello");
            // A write past the largest file fails when it is sent: the fsync
            // reports it, and the write queued after it is dropped.
            assert_eq!(pwrite_behind(true, fd, b"x".as_ptr(), 1, 1 << 40), 1);
            assert_eq!(pwrite_behind(true, fd, b"Y".as_ptr(), 1, 0), 1);
            assert_eq!(flexos_libc_fsync(fd), -Errno::EFBIG.0);
            assert_eq!(flexos_libc_fsync(fd), 0, "reported once");
            assert_eq!(flexos_libc_pread(fd, buf.as_mut_ptr(), 8, 0), 5);
            assert_eq!(&buf[..5], b"Jello", "the write after the failed one was dropped");
            // A queued sync stays behind the writes before it; a write that fails before it is
            // reported by the next call, and the sync and the write after it are dropped.
            assert_eq!(pwrite_behind(true, fd, b"B".as_ptr(), 1, 1), 1);
            assert_eq!(fsync_behind(true, fd), 0);
            let two = file_batch::record_size(1).unwrap() + file_batch::record_size(0).unwrap();
            assert_eq!(used(), two, "a write and a sync queued, nothing sent");
            assert_eq!(pwrite_behind(true, fd, b"x".as_ptr(), 1, 1 << 40), 1);
            assert_eq!(fsync_behind(true, fd), 0, "queued: not yet failed");
            assert_eq!(pwrite_behind(true, fd, b"Z".as_ptr(), 1, 0), 1);
            assert_eq!(flexos_libc_fsync(fd), -Errno::EFBIG.0, "the next call reports it");
            assert_eq!(flexos_libc_pread(fd, buf.as_mut_ptr(), 8, 0), 5);
            assert_eq!(&buf[..5], b"JBllo", "applied up to the failed write, nothing after it");
            assert_eq!(pwrite_behind(true, fd, b"e".as_ptr(), 1, 1), 1);
            assert_eq!(fsync_behind(false, fd), 0, "elsewhere it syncs at once (sending the queue)");
            assert_eq!(used(), 0);
            // A close whose queued write fails reports it and still closes.
            let other = flexos_libc_open(c"/behind-2".as_ptr(), 2 | 0o100, 0o644);
            assert_eq!(pwrite_behind(true, other, b"x".as_ptr(), 1, 1 << 40), 1);
            assert_eq!(flexos_libc_close(other), -Errno::EFBIG.0);
            assert_eq!(flexos_libc_close(other), -Errno::EBADF.0, "closed all the same");
            // A close sends what is queued, in order, then closes.
            assert_eq!(pwrite_behind(true, fd, b"!".as_ptr(), 1, 5), 1);
            assert_eq!(flexos_libc_close(fd), 0);
            assert_eq!(flexos_libc_close(fd), -Errno::EBADF.0);
            let fd = flexos_libc_open(c"/behind".as_ptr(), 0, 0);
            assert_eq!(flexos_libc_pread(fd, buf.as_mut_ptr(), 8, 0), 6);
            assert_eq!(&buf[..6], b"Jello!");
            // More than the log holds is sent as the log fills; large writes cross at once.
            let wfd = flexos_libc_open(c"/big".as_ptr(), 2 | 0o100, 0o644);
            let page = [7u8; 4096];
            for i in 0..200 {
                assert_eq!(pwrite_behind(true, wfd, page.as_ptr(), 4096, i * 4096), 4096);
            }
            let big = alloc::vec![9u8; MAX_BEHIND_WRITE + 1];
            assert_eq!(pwrite_behind(true, wfd, big.as_ptr(), big.len(), 0), big.len() as isize);
            assert_eq!(flexos_libc_fsize(wfd), 200 * 4096);
            assert_eq!(flexos_libc_pread(wfd, buf.as_mut_ptr(), 1, MAX_BEHIND_WRITE as i64), 1);
            assert_eq!(buf[0], 9, "the large write came after the queued pages");
            assert_eq!(flexos_libc_close(wfd), 0);
            assert_eq!(flexos_libc_close(fd), 0);
        }
    }

    /// A close with nothing queued waits for the next call (an unlink
    /// takes it along); one behind queued writes sends them with it at
    /// once; an error the queued close meets is the next call's.
    #[test]
    fn a_queued_close_goes_with_the_next_call_and_never_holds_data() {
        let used = || flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used);
        // SAFETY: NUL-terminated literals and buffers of the lengths passed, as the C calls require.
        unsafe {
            let fd = flexos_libc_open(c"/journal".as_ptr(), 2 | 0o100, 0o644);
            assert!(fd >= 3);
            assert_eq!(flexos_libc_close_behind(fd), 0, "one compartment: closed at once");
            assert_eq!(used(), 0);
            assert_eq!(flexos_libc_close(fd), -Errno::EBADF.0);
            let fd = flexos_libc_open(c"/journal".as_ptr(), 2, 0);
            assert_eq!(close_behind(true, fd), 0);
            assert_eq!(used(), file_batch::HEADER, "queued, not sent");
            assert_eq!(flexos_libc_unlink(c"/journal".as_ptr()), 0, "the unlink took the close along");
            assert_eq!(used(), 0);
            assert_eq!(flexos_libc_access(c"/journal".as_ptr()), -Errno::ENOENT.0);
            assert_eq!(flexos_libc_close(fd), -Errno::EBADF.0, "the queued close was applied");
            // Behind a queued write, the close is sent at once with it.
            let fd = flexos_libc_open(c"/data".as_ptr(), 2 | 0o100, 0o644);
            assert_eq!(pwrite_behind(true, fd, b"kept".as_ptr(), 4, 0), 4);
            assert_eq!(close_behind(true, fd), 0);
            assert_eq!(used(), 0, "nothing waits on a close");
            let fd = flexos_libc_open(c"/data".as_ptr(), 0, 0);
            assert_eq!(flexos_libc_fsize(fd), 4);
            // A queued close of a descriptor not open: the unlink reports it, and the name stays.
            assert_eq!(close_behind(true, 99), 0);
            assert_eq!(flexos_libc_unlink(c"/data".as_ptr()), -Errno::EBADF.0);
            assert_eq!(flexos_libc_access(c"/data".as_ptr()), 1);
            assert_eq!(flexos_libc_unlink(c"/data".as_ptr()), 0);
            assert_eq!(flexos_libc_close(fd), 0);
        }
    }

    /// One SQLite transaction's questions are answered from what the
    /// library learned from its own calls, until another call crosses.
    #[test]
    fn known_answers_hold_until_another_call_crosses() {
        use flexos_gate::abi::open_flags::*;
        let used = || flexos_gate::with_state(flexos_gate::me!(), |w: &mut FileState| w.behind_used);
        let journal = c"/k.db-journal".as_ptr();
        let mut buf = [0u8; 8];
        // SAFETY: NUL-terminated literals and buffers of the lengths passed, as the C calls require.
        unsafe {
            let db = flexos_libc_open(c"/k.db".as_ptr(), (O_RDWR | O_CREAT) as c_int, 0o644);
            assert_eq!(flexos_libc_pwrite(db, [1u8; 100].as_ptr(), 100, 0), 100);
            assert_eq!(flexos_libc_fsize(db), 100);
            let mut head = [0u8; 200];
            assert_eq!(flexos_libc_pread(db, head.as_mut_ptr(), 200, 0), 100, "all of a short file");
            assert_eq!(flexos_libc_access(journal), -Errno::ENOENT.0);
            let j = flexos_libc_open(journal, (O_RDWR | O_CREAT) as c_int, 0o644);
            assert_eq!(pwrite_behind(true, j, [2u8; 512].as_ptr(), 512, 0), 512);
            assert_eq!(pwrite_behind(true, db, [3u8; 50].as_ptr(), 50, 80), 50);
            assert_ne!(used(), 0);
            // Known: the end of the journal and both sizes, queued writes counted; nothing is sent.
            assert_eq!(flexos_libc_pread(j, buf.as_mut_ptr(), 8, 1024), 0);
            assert_eq!(flexos_libc_pread(j, buf.as_mut_ptr(), 8, 512), 0);
            assert_eq!((flexos_libc_fsize(j), flexos_libc_fsize(db)), (512, 130));
            assert_eq!(flexos_libc_pread(db, buf.as_mut_ptr(), 8, 76), 8, "the head, with the queued write");
            assert_eq!(buf, [1, 1, 1, 1, 3, 3, 3, 3]);
            assert_ne!(used(), 0, "answered without sending the queued writes");
            assert_eq!(flexos_libc_pread(j, buf.as_mut_ptr(), 8, 504), 8, "not past the end: asked");
            assert_eq!(buf, [2u8; 8]);
            assert_eq!(flexos_libc_fsync(j), 0);
            assert_eq!(flexos_libc_close_behind(j), 0);
            assert_eq!(flexos_libc_unlink(journal), 0);
            assert_eq!(flexos_libc_access(journal), -Errno::ENOENT.0);
            // Behind the library's back (in this image no call is remote, so none is counted)...
            let path = SharedBuf::from_slice(b"/k.db-journal");
            let other = gate!(flexos_vfs::open(path.shared(), O_RDWR | O_CREAT, 0o644)).unwrap();
            let grown = SharedBuf::from_slice(&[4u8; 200]);
            assert_eq!(gate!(flexos_vfs::pwrite(db, grown.shared(), 0)), Ok(200));
            // ...the library answers from what it knew: the negative control.
            assert_eq!(flexos_libc_access(journal), -Errno::ENOENT.0);
            assert_eq!(flexos_libc_fsize(db), 130);
            assert_eq!(flexos_libc_pread(db, buf.as_mut_ptr(), 8, 0), 8);
            assert_eq!(buf, [1; 8]);
            // Where the calls are remote, the thread's count shows them, and the library asks again.
            flexos_gate::with_state(flexos_gate::me!(), |s: &mut FileState| s.pretended_calls += 2);
            assert_eq!(flexos_libc_access(journal), 1);
            assert_eq!(flexos_libc_fsize(db), 200);
            assert_eq!(flexos_libc_pread(db, buf.as_mut_ptr(), 8, 0), 8);
            assert_eq!(buf, [4; 8]);
            assert_eq!(gate!(flexos_vfs::close(other)), Ok(()));
            assert_eq!(flexos_libc_unlink(journal), 0);
            assert_eq!(flexos_libc_close(db), 0);
        }
    }

    #[test]
    fn c_file_calls_reach_vfs() {
        install_file("/etc/app/config.txt", b"k=v\n").unwrap();
        // SAFETY: NUL-terminated literals and buffers of the lengths passed, as the C calls require.
        unsafe {
            assert_eq!(flexos_libc_access(c"/etc/app".as_ptr()), 2);
            assert_eq!(flexos_libc_access(c"/etc/app/config.txt".as_ptr()), 1);
            assert_eq!(flexos_libc_access(c"/nope".as_ptr()), -2);
            let fd = flexos_libc_open(c"/etc/app/config.txt".as_ptr(), 2, 0);
            assert!(fd >= 3);
            assert_eq!(flexos_libc_fsize(fd), 4);
            let mut buf = [0u8; 8];
            assert_eq!(flexos_libc_pread(fd, buf.as_mut_ptr(), 8, 0), 4);
            assert_eq!(&buf[..4], b"k=v\n");
            assert_eq!(flexos_libc_pwrite(fd, b"XY".as_ptr(), 2, 10), 2);
            assert_eq!(flexos_libc_fsize(fd), 12);
            assert_eq!(flexos_libc_lseek(fd, 0, 0), 0);
            assert_eq!(flexos_libc_read(fd, buf.as_mut_ptr(), 3), 3);
            assert_eq!(flexos_libc_ftruncate(fd, 1), 0);
            assert_eq!(flexos_libc_fsync(fd), 0);
            assert_eq!(flexos_libc_close(fd), 0);
            assert_eq!(flexos_libc_close(fd), -9);
            assert_eq!(flexos_libc_rename(c"/etc/app/config.txt".as_ptr(), c"/etc/c".as_ptr()), 0);
            assert_eq!(flexos_libc_unlink(c"/etc/c".as_ptr()), 0);
            assert_eq!(flexos_libc_rmdir(c"/etc/app".as_ptr()), 0);
            assert_eq!(flexos_libc_mkdir(c"/etc".as_ptr(), 0), -17);
            assert_eq!(flexos_libc_open(c"/etc/none".as_ptr(), 0, 0), -2);
        }
    }

    #[test]
    fn malloc_family() {
        use crate::memory::*;
        let p = flexos_libc_malloc(100).cast::<u8>();
        assert!(!p.is_null() && (p as usize).is_multiple_of(16));
        // SAFETY: within the 100 bytes malloc returned, then the blocks the calls return.
        unsafe {
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            let q = flexos_libc_realloc(p.cast(), 1000).cast::<u8>();
            assert_eq!(*q.add(99), 99, "realloc keeps the contents");
            flexos_libc_free(q.cast());
            let z = flexos_libc_calloc(10, 10).cast::<u8>();
            assert!((0..100).all(|i| *z.add(i) == 0));
            flexos_libc_free(z.cast());
            flexos_libc_free(core::ptr::null_mut());
        }
        assert!(flexos_libc_calloc(usize::MAX, 2).is_null(), "overflow is refused");
    }
}
