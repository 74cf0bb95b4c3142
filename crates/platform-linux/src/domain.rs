//! Which domain this process is: the host process of an image, or a
//! compartment's own process started from the image (mechanism `proc`).
//!
//! The host passes a child its role in the environment variable
//! `FLEXOS_DOMAIN=COMPARTMENT:REGION_BASE:SHM_FD` (decimal, hexadecimal,
//! decimal). It is read without allocating, because the allocator needs it
//! to set up the heaps before anything else runs.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that makes a process a compartment's domain.
pub const ENV: &str = "FLEXOS_DOMAIN";

/// What a compartment process needs to know from its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildRole {
    /// The compartment this process runs.
    pub compartment: usize,
    /// Where the host reserved the heaps (the same address here).
    pub region_base: usize,
    /// The inherited file descriptor of the shared memory.
    pub shm_fd: i32,
}

const UNREAD: usize = usize::MAX;
const HOST: usize = usize::MAX - 1;
static ROLE: [AtomicUsize; 3] = [AtomicUsize::new(UNREAD), AtomicUsize::new(0), AtomicUsize::new(0)];

/// This process's role: `Some` in a compartment process, `None` in the host.
pub fn child_role() -> Option<ChildRole> {
    if ROLE[0].load(Ordering::Acquire) == UNREAD {
        let parsed = read_env();
        let (c, base, fd) = parsed.map_or((HOST, 0, 0), |r| (r.compartment, r.region_base, r.shm_fd as usize));
        ROLE[1].store(base, Ordering::Relaxed);
        ROLE[2].store(fd, Ordering::Relaxed);
        ROLE[0].store(c, Ordering::Release);
    }
    match ROLE[0].load(Ordering::Acquire) {
        HOST => None,
        c => Some(ChildRole {
            compartment: c,
            region_base: ROLE[1].load(Ordering::Relaxed),
            shm_fd: ROLE[2].load(Ordering::Relaxed) as i32,
        }),
    }
}

fn read_env() -> Option<ChildRole> {
    // SAFETY: the name is NUL-terminated; getenv returns null or a
    // NUL-terminated string that stays valid while the environment is not
    // modified (the image never modifies its environment).
    let value = unsafe {
        let p = libc::getenv(c"FLEXOS_DOMAIN".as_ptr());
        if p.is_null() {
            return None;
        }
        core::ffi::CStr::from_ptr(p).to_bytes()
    };
    parse(value)
}

/// Parses `COMPARTMENT:REGION_BASE_HEX:FD`.
pub fn parse(value: &[u8]) -> Option<ChildRole> {
    let mut parts = value.split(|&b| b == b':');
    let compartment = number(parts.next()?, 10)?;
    let region_base = number(parts.next()?, 16)?;
    let shm_fd = i32::try_from(number(parts.next()?, 10)?).ok()?;
    parts.next().is_none().then_some(ChildRole { compartment, region_base, shm_fd })
}

fn number(digits: &[u8], radix: u32) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |acc, &d| {
        let v = (d as char).to_digit(radix)? as usize;
        acc.checked_mul(radix as usize)?.checked_add(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_role() {
        assert_eq!(
            parse(b"2:7f0000000000:5"),
            Some(ChildRole { compartment: 2, region_base: 0x7f00_0000_0000, shm_fd: 5 })
        );
        assert_eq!(parse(b"2:7f00"), None);
        assert_eq!(parse(b"2:7g00:5"), None);
        assert_eq!(parse(b"2:1:5:9"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(child_role(), None, "tests run as a host");
    }
}
