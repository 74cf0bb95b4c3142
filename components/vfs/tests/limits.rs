//! The file system's limits (a test binary of its own: they are global).

// The test's own code calls the component through gates, as an image would.
flexos_gate::component!(image);
use flexos_gate::gate;

use flexos_gate::SharedBuf;
use flexos_gate::abi::Errno;
use flexos_gate::abi::open_flags::*;
use flexos_vfs as vfs;

fn create(path: &str) -> i32 {
    gate!(vfs::open(SharedBuf::from_slice(path.as_bytes()).shared(), O_RDWR | O_CREAT, 0o644)).unwrap()
}

fn write(fd: i32, n: usize) -> Result<usize, Errno> {
    gate!(vfs::write(fd, SharedBuf::zeroed(n).shared()))
}

#[test]
fn a_file_past_its_limit_is_efbig_and_a_full_file_system_enospc() {
    gate!(vfs::set_fs_limits(1000, 2500)).unwrap();
    let a = create("/a");
    assert_eq!(write(a, 1001), Err(Errno::EFBIG));
    assert_eq!(gate!(vfs::ftruncate(a, 1001)), Err(Errno::EFBIG));
    assert_eq!(write(a, 1000), Ok(1000));
    let b = create("/b");
    assert_eq!(write(b, 1000), Ok(1000));
    let c = create("/c");
    assert_eq!(write(c, 1000), Err(Errno::ENOSPC), "2,500 bytes in all");
    assert_eq!(write(c, 500), Ok(500));
    assert_eq!(gate!(vfs::ftruncate(c, 501)), Err(Errno::ENOSPC));
    // Space comes back when a file shrinks or goes.
    gate!(vfs::ftruncate(a, 0)).unwrap();
    assert_eq!(gate!(vfs::ftruncate(c, 1000)), Ok(()));
    gate!(vfs::close(b)).unwrap();
    gate!(vfs::unlink(SharedBuf::from_slice(b"/b").shared())).unwrap();
    let d = create("/d");
    assert_eq!(write(d, 1000), Ok(1000));
    let e = create("/e");
    assert_eq!(write(e, 1000), Err(Errno::ENOSPC));
    // 0 keeps a limit; raising one applies at once.
    gate!(vfs::set_fs_limits(0, 1 << 20)).unwrap();
    assert_eq!(write(e, 1000), Ok(1000));
    assert_eq!(write(d, 1), Err(Errno::EFBIG), "d is at the largest file size still");
}
