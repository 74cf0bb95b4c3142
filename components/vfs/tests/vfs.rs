//! vfs + ramfs behave like a POSIX file system.

// The test's own code calls the component through gates, as an image would.
flexos_gate::component!(image);
use flexos_gate::gate;

use flexos_gate::SharedBuf;
use flexos_gate::abi::open_flags::*;
use flexos_gate::abi::{Errno, FileKind, Whence};
use flexos_vfs as vfs;

fn p(path: &str) -> SharedBuf {
    SharedBuf::from_slice(path.as_bytes())
}

fn open(path: &str, flags: u32) -> Result<i32, Errno> {
    gate!(vfs::open(p(path).shared(), flags, 0o644))
}

fn write(fd: i32, data: &[u8]) -> usize {
    gate!(vfs::write(fd, SharedBuf::from_slice(data).shared())).unwrap()
}

fn read(fd: i32, n: usize) -> Vec<u8> {
    let mut b = SharedBuf::zeroed(n);
    let got = gate!(vfs::read(fd, b.shared_mut())).unwrap();
    b.to_vec(got)
}

fn names(dir: &str) -> Vec<String> {
    let fd = open(dir, O_RDONLY | O_DIRECTORY).unwrap();
    let mut out = Vec::new();
    while let Some(e) = gate!(vfs::readdir(fd, out.len() as u64)).unwrap() {
        out.push(String::from_utf8(e.name().to_vec()).unwrap());
    }
    gate!(vfs::close(fd)).unwrap();
    out
}

#[test]
fn write_read_seek_and_positional_io() {
    let fd = open("/data.bin", O_RDWR | O_CREAT).unwrap();
    assert_eq!(write(fd, b"hello "), 6);
    assert_eq!(write(fd, b"world"), 5);
    assert_eq!(gate!(vfs::lseek(fd, 0, Whence::Set)), Ok(0));
    assert_eq!(read(fd, 100), b"hello world");
    assert_eq!(read(fd, 100), b"", "end of file");
    let mut b = SharedBuf::zeroed(5);
    assert_eq!(gate!(vfs::pread(fd, b.shared_mut(), 6)), Ok(5));
    assert_eq!(b.to_vec(b.len()), b"world");
    assert_eq!(gate!(vfs::pwrite(fd, SharedBuf::from_slice(b"!").shared(), 20)), Ok(1));
    let st = gate!(vfs::fstat(fd)).unwrap();
    assert_eq!((st.kind, st.size, st.nlink), (FileKind::File, 21, 1));
    assert_eq!(gate!(vfs::lseek(fd, -1, Whence::End)), Ok(20));
    assert_eq!(gate!(vfs::lseek(fd, -100, Whence::Cur)), Err(Errno::EINVAL));
    let mut b = SharedBuf::zeroed(21);
    gate!(vfs::pread(fd, b.shared_mut(), 0)).unwrap();
    assert_eq!(b.to_vec(b.len()), b"hello world\0\0\0\0\0\0\0\0\0!", "the gap reads as zeros");
    gate!(vfs::ftruncate(fd, 5)).unwrap();
    assert_eq!(gate!(vfs::stat(p("/data.bin").shared())).unwrap().size, 5);
    gate!(vfs::fsync(fd)).unwrap();
    gate!(vfs::close(fd)).unwrap();
    assert_eq!(gate!(vfs::close(fd)), Err(Errno::EBADF));
    assert_eq!(gate!(vfs::fsync(fd)), Err(Errno::EBADF));
}

#[test]
fn open_flags() {
    assert_eq!(open("/missing", O_RDONLY), Err(Errno::ENOENT));
    let fd = open("/f", O_WRONLY | O_CREAT | O_EXCL).unwrap();
    write(fd, b"abc");
    assert_eq!(gate!(vfs::read(fd, SharedBuf::zeroed(3).shared_mut())), Err(Errno::EBADF), "write-only");
    gate!(vfs::close(fd)).unwrap();
    assert_eq!(open("/f", O_WRONLY | O_CREAT | O_EXCL), Err(Errno::EEXIST));
    let fd = open("/f", O_RDONLY).unwrap();
    assert_eq!(gate!(vfs::write(fd, SharedBuf::from_slice(b"x").shared())), Err(Errno::EBADF), "read-only");
    assert_eq!(gate!(vfs::ftruncate(fd, 0)), Err(Errno::EINVAL));
    gate!(vfs::close(fd)).unwrap();
    let fd = open("/f", O_WRONLY | O_APPEND).unwrap();
    write(fd, b"def");
    gate!(vfs::close(fd)).unwrap();
    let fd = open("/f", O_RDONLY).unwrap();
    assert_eq!(read(fd, 10), b"abcdef");
    gate!(vfs::close(fd)).unwrap();
    let fd = open("/f", O_RDWR | O_TRUNC).unwrap();
    assert_eq!(gate!(vfs::fstat(fd)).unwrap().size, 0);
    gate!(vfs::close(fd)).unwrap();
    assert_eq!(open("/f", O_RDONLY | O_DIRECTORY), Err(Errno::ENOTDIR));
    assert_eq!(open("/", O_RDWR), Err(Errno::EISDIR));
    assert_eq!(open("/f/x", O_RDONLY | O_CREAT), Err(Errno::ENOTDIR));
}

#[test]
fn directories() {
    gate!(vfs::mkdir(p("/a").shared(), 0o755)).unwrap();
    gate!(vfs::mkdir(p("/a/b").shared(), 0o755)).unwrap();
    assert_eq!(gate!(vfs::mkdir(p("/a").shared(), 0o755)), Err(Errno::EEXIST));
    assert_eq!(gate!(vfs::mkdir(p("/nope/x").shared(), 0o755)), Err(Errno::ENOENT));
    let fd = open("/a/b/../file", O_CREAT | O_WRONLY).unwrap();
    gate!(vfs::close(fd)).unwrap();
    assert_eq!(names("/a"), ["b", "file"]);
    assert_eq!(gate!(vfs::stat(p("/a/./b/..//file").shared())).unwrap().kind, FileKind::File);
    assert_eq!(gate!(vfs::rmdir(p("/a").shared())), Err(Errno::ENOTEMPTY));
    assert_eq!(gate!(vfs::rmdir(p("/a/file").shared())), Err(Errno::ENOTDIR));
    assert_eq!(gate!(vfs::unlink(p("/a/b").shared())), Err(Errno::EISDIR));
    gate!(vfs::rmdir(p("/a/b").shared())).unwrap();
    gate!(vfs::unlink(p("/a/file").shared())).unwrap();
    gate!(vfs::rmdir(p("/a").shared())).unwrap();
    assert!(names("/").is_empty());
    let long = format!("/{}", "x".repeat(300));
    assert_eq!(open(&long, O_CREAT | O_RDWR), Err(Errno::ENAMETOOLONG));
}

#[test]
fn rename_moves_and_replaces() {
    gate!(vfs::mkdir(p("/d").shared(), 0)).unwrap();
    for (name, body) in [("/x", b"xx"), ("/y", b"yy")] {
        let fd = open(name, O_CREAT | O_WRONLY).unwrap();
        write(fd, body);
        gate!(vfs::close(fd)).unwrap();
    }
    gate!(vfs::rename(p("/x").shared(), p("/y").shared())).unwrap();
    let fd = open("/y", O_RDONLY).unwrap();
    assert_eq!(read(fd, 10), b"xx", "the target was replaced");
    gate!(vfs::close(fd)).unwrap();
    gate!(vfs::rename(p("/y").shared(), p("/d/z").shared())).unwrap();
    assert_eq!(names("/"), ["d"]);
    assert_eq!(names("/d"), ["z"]);
    gate!(vfs::mkdir(p("/d/sub").shared(), 0)).unwrap();
    assert_eq!(gate!(vfs::rename(p("/d").shared(), p("/d/sub/d").shared())), Err(Errno::EINVAL), "not below itself");
    assert_eq!(gate!(vfs::rename(p("/d/z").shared(), p("/d/sub").shared())), Err(Errno::EISDIR));
    assert_eq!(gate!(vfs::rename(p("/nope").shared(), p("/q").shared())), Err(Errno::ENOENT));
}

#[test]
fn unlinked_open_file_lives_until_closed() {
    let before = gate!(flexos_ramfs::node_count());
    let fd = open("/journal", O_CREAT | O_RDWR).unwrap();
    write(fd, b"pending");
    gate!(vfs::unlink(p("/journal").shared())).unwrap();
    assert_eq!(open("/journal", O_RDONLY), Err(Errno::ENOENT));
    gate!(vfs::lseek(fd, 0, Whence::Set)).unwrap();
    assert_eq!(read(fd, 20), b"pending");
    assert_eq!(gate!(flexos_ramfs::node_count()), before + 1);
    gate!(vfs::close(fd)).unwrap();
    assert_eq!(gate!(flexos_ramfs::node_count()), before, "the node is freed at last close");
}

#[test]
fn descriptor_limit_is_enforced_and_recovers() {
    let fd = open("/many", O_CREAT | O_RDWR).unwrap();
    let mut fds = vec![fd];
    loop {
        match open("/many", O_RDONLY) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                assert_eq!(e, Errno::EMFILE);
                break;
            }
        }
    }
    assert_eq!(fds.len(), vfs::MAX_FDS);
    gate!(vfs::close(fds.pop().unwrap())).unwrap();
    fds.push(open("/many", O_RDONLY).unwrap());
    for fd in fds {
        gate!(vfs::close(fd)).unwrap();
    }
    assert_eq!(gate!(vfs::open_count()), 0);
}

#[test]
fn random_positional_io_matches_a_model() {
    let fd = open("/model", O_CREAT | O_RDWR).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        // One write in four appends at the end (the path that grows a file
        // without zero-filling first).
        let off = if next() % 4 == 0 { model.len() as u64 } else { next() % 70_000 };
        let len = (next() % 5000) as usize;
        match next() % 4 {
            0 | 1 => {
                let data: Vec<u8> = (0..len).map(|i| (i as u64 + round) as u8).collect();
                gate!(vfs::pwrite(fd, SharedBuf::from_slice(&data).shared(), off)).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            2 => {
                let mut b = SharedBuf::zeroed(len);
                let n = gate!(vfs::pread(fd, b.shared_mut(), off)).unwrap();
                let expect = model.get(off as usize..).map_or(&[][..], |t| &t[..t.len().min(len)]);
                assert_eq!(b.to_vec(n), expect, "round {round}");
            }
            _ => {
                gate!(vfs::ftruncate(fd, off)).unwrap();
                model.resize(off as usize, 0);
            }
        }
    }
    assert_eq!(gate!(vfs::fstat(fd)).unwrap().size, model.len() as u64);
    gate!(vfs::close(fd)).unwrap();
}

#[test]
fn a_new_file_never_shows_the_bytes_of_a_removed_one() {
    // The removed file's buffer is kept for the next file that grows.
    for round in 0..3u8 {
        let old = open("/old", O_CREAT | O_RDWR).unwrap();
        assert_eq!(write(old, &[0xab; 10_000]), 10_000);
        gate!(vfs::close(old)).unwrap();
        gate!(vfs::unlink(p("/old").shared())).unwrap();
        let new = open("/new", O_CREAT | O_RDWR).unwrap();
        let tail = [round, 1, 2];
        gate!(vfs::pwrite(new, SharedBuf::from_slice(&tail).shared(), 5000)).unwrap();
        assert_eq!(gate!(vfs::fstat(new)).unwrap().size, 5003);
        let mut expect = vec![0u8; 5000];
        expect.extend_from_slice(&tail);
        let got = read(new, 6000);
        let wrong = got.iter().zip(&expect).position(|(a, b)| a != b);
        assert!(
            got == expect,
            "round {round}: read {} bytes, the first wrong at {wrong:?} (a hole reads as zeros)",
            got.len()
        );
        // An append after the end, then a read of all.
        assert_eq!(write(new, b"end"), 3);
        gate!(vfs::lseek(new, 0, Whence::Set)).unwrap();
        expect.extend_from_slice(b"end");
        assert_eq!(read(new, 6000), expect);
        gate!(vfs::close(new)).unwrap();
        gate!(vfs::unlink(p("/new").shared())).unwrap();
    }
}

#[test]
fn gates_cannot_be_bypassed_or_forged() {
    flexos_compile_checks::check("tests/ui/pass_*.rs", "tests/ui/fail_*.rs");
}
