//! `vfs::submit`: a caller's queued writes, applied in order in one call
//! (alone, or before a read or an unlink that must follow them);
//! the first failure stops the rest; a log that does not parse is refused
//! (a test binary of its own: it sets the file system's global limits).

// The test's own code calls the component through gates, as an image would.
flexos_gate::component!(image);
use flexos_gate::gate;

use flexos_gate::SharedBuf;
use flexos_gate::abi::Errno;
use flexos_gate::abi::file_batch::{self, CLOSE, FSYNC, PWRITE, Record};
use flexos_gate::abi::open_flags::*;
use flexos_vfs as vfs;

fn create(path: &str) -> i32 {
    gate!(vfs::open(SharedBuf::from_slice(path.as_bytes()).shared(), O_RDWR | O_CREAT, 0o644)).unwrap()
}

/// A log of records, each with its data.
fn log(records: &[(u32, i32, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(op, fd, offset, data) in records {
        out.extend_from_slice(&file_batch::header(&Record { op, fd, offset, len: data.len() as u64 }));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

fn submit(bytes: &[u8]) -> Result<(), Errno> {
    gate!(vfs::submit(SharedBuf::from_slice(bytes).shared()))
}

fn contents(fd: i32) -> Vec<u8> {
    let mut buf = SharedBuf::zeroed(64);
    let n = gate!(vfs::pread(fd, buf.shared_mut(), 0)).unwrap();
    buf.to_vec(n)
}

#[test]
fn queued_writes_apply_in_order_and_the_first_failure_stops_the_rest() {
    let a = create("/a");
    let b = create("/b");
    // Later writes win where they overlap; fsync checks its descriptor.
    submit(&log(&[(PWRITE, a, 0, b"hello world"), (PWRITE, a, 6, b"there"), (PWRITE, b, 2, b"x"), (FSYNC, a, 0, b"")]))
        .unwrap();
    assert_eq!(contents(a), b"hello there");
    assert_eq!(contents(b), b"\0\0x");
    // A write to a closed descriptor fails with EBADF, and nothing after it is applied.
    let r = submit(&log(&[(PWRITE, a, 0, b"H"), (PWRITE, 99, 0, b"?"), (PWRITE, a, 1, b"E"), (CLOSE, b, 0, b"")]));
    assert_eq!(r, Err(Errno::EBADF));
    assert_eq!(contents(a), b"Hello there", "the write before the failure is applied, the one after it is not");
    assert_eq!(contents(b), b"\0\0x", "b is still open");
    // The file system's limits apply to queued writes as to any.
    gate!(vfs::set_fs_limits(100, 0)).unwrap();
    assert_eq!(submit(&log(&[(PWRITE, a, 95, b"0123456789"), (CLOSE, a, 0, b"")])), Err(Errno::EFBIG));
    submit(&log(&[(CLOSE, a, 0, b"")])).unwrap();
    assert_eq!(gate!(vfs::fsync(a)), Err(Errno::EBADF), "closed by the log");
    gate!(vfs::close(b)).unwrap();
    assert_eq!(submit(&[]), Ok(()), "an empty log is nothing to do");
}

#[test]
fn a_read_that_follows_queued_writes_sees_them_or_their_error() {
    let d = create("/d");
    let mut buf = SharedBuf::zeroed(8);
    let n = gate!(vfs::submit_then_pread(
        SharedBuf::from_slice(&log(&[(PWRITE, d, 0, b"abcdef")])).shared(),
        d,
        buf.shared_mut(),
        2
    ));
    assert_eq!((n, buf.to_vec(4)), (Ok(4), b"cdef".to_vec()));
    // The log fails: its error, and no read.
    let mut buf = SharedBuf::from_slice(b"untouched");
    let bad = log(&[(PWRITE, d, 0, b"X"), (PWRITE, 99, 0, b"?")]);
    let n = gate!(vfs::submit_then_pread(SharedBuf::from_slice(&bad).shared(), d, buf.shared_mut(), 0));
    assert_eq!((n, buf.to_vec(9)), (Err(Errno::EBADF), b"untouched".to_vec()));
    assert_eq!(contents(d), b"Xbcdef");
    gate!(vfs::close(d)).unwrap();
}

#[test]
fn an_unlink_that_follows_a_queued_close_removes_the_name_or_reports_the_close() {
    let path = |p: &str| SharedBuf::from_slice(p.as_bytes());
    let exists = |p: &str| gate!(vfs::stat(path(p).shared())).is_ok();
    let j = create("/journal");
    let r = gate!(vfs::submit_then_unlink(
        SharedBuf::from_slice(&log(&[(CLOSE, j, 0, b"")])).shared(),
        path("/journal").shared()
    ));
    assert_eq!(r, Ok(()));
    assert!(!exists("/journal"), "the name is gone");
    assert_eq!(gate!(vfs::close(j)), Err(Errno::EBADF), "the queued close was applied");
    // The log fails (a descriptor not open): its error, and the name stays.
    let k = create("/kept");
    let r = gate!(vfs::submit_then_unlink(
        SharedBuf::from_slice(&log(&[(CLOSE, 99, 0, b"")])).shared(),
        path("/kept").shared()
    ));
    assert_eq!(r, Err(Errno::EBADF));
    assert!(exists("/kept"), "no unlink after a failed record");
    // Nothing queued: a plain unlink, with its own error.
    let r = gate!(vfs::submit_then_unlink(SharedBuf::from_slice(&[]).shared(), path("/missing").shared()));
    assert_eq!(r, Err(Errno::ENOENT));
    gate!(vfs::close(k)).unwrap();
}

#[test]
fn a_log_that_does_not_parse_is_einval() {
    let c = create("/c");
    let good = log(&[(PWRITE, c, 0, b"abc")]);
    // Cut inside the header, inside the data, and inside the padding.
    for cut in [1, file_batch::HEADER - 1, file_batch::HEADER + 1, good.len() - 1] {
        assert_eq!(submit(&good[..cut]), Err(Errno::EINVAL), "cut at {cut}");
    }
    // A length past the log, or one whose size overflows.
    for len in [1 << 20, u64::MAX, u64::MAX - 7] {
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&len.to_le_bytes());
        assert_eq!(submit(&bad), Err(Errno::EINVAL), "length {len}");
    }
    // An unknown operation, and an fsync or close that claims data.
    for bad in [log(&[(7, c, 0, b"")]), log(&[(FSYNC, c, 0, b"12345678")]), log(&[(CLOSE, c, 0, b"x")])] {
        assert_eq!(submit(&bad), Err(Errno::EINVAL));
    }
    assert_eq!(contents(c), b"", "nothing of a refused record was written");
    gate!(vfs::close(c)).unwrap();
}
