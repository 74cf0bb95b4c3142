//! The image's own `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The compiler calls these for copies, fills and comparisons it does not
//! inline. An executable's definitions take precedence over the C
//! library's, so with these every such call in the image stays inside the
//! image: code running in a VM (which has no C library mapped) can use
//! them. They use the string instructions, which modern CPUs run fast;
//! being assembly, they cannot be compiled back into calls to themselves.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst` (the ranges must not overlap).
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` copies exactly
    // `n` bytes forwards (the direction flag is clear by the ABI).
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack, preserves_flags));
    }
    dst
}

/// Copies `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: a forward copy is correct when dst is below src or the
        // ranges do not overlap; the caller guarantees both ranges.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: dst lies above src inside the source range: copy backwards,
    // from the last byte, with the direction flag set and cleared again.
    unsafe {
        asm!("std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
            options(nostack));
    }
    dst
}

/// Fills `n` bytes at `dst` with the byte `c`.
///
/// # Safety
/// The C contract: the range valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` writes exactly `n` bytes.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8, options(nostack, preserves_flags));
    }
    dst
}

/// Compares `n` bytes: negative, zero or positive as `a` sorts before, equal to or after `b`.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (mut pa, mut pb) = (a, b);
    // SAFETY: `repe cmpsb` reads at most `n` bytes of each range (which the
    // caller guarantees) and stops after the first differing pair, leaving
    // both pointers one past it (or past the end when all were equal).
    unsafe {
        asm!("repe cmpsb", inout("rsi") pa, inout("rdi") pb, inout("rcx") n => _, options(nostack, readonly));
        let (x, y) = (*pa.sub(1), *pb.sub(1));
        x as i32 - y as i32
    }
}

/// Zero if the `n` bytes at `a` and `b` are equal, else non-zero.
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_fills_and_compares_like_the_c_library() {
        let mut buf: Vec<u8> = (0..100).collect();
        unsafe {
            memmove(buf.as_mut_ptr().add(10), buf.as_ptr(), 50);
            assert_eq!(&buf[10..60], &(0..50).collect::<Vec<u8>>()[..]);
            let mut buf2: Vec<u8> = (0..100).collect();
            memmove(buf2.as_mut_ptr(), buf2.as_ptr().add(10), 50);
            assert_eq!(&buf2[..50], &(10..60).collect::<Vec<u8>>()[..]);
            memset(buf.as_mut_ptr(), 7, 5);
            assert_eq!(&buf[..6], &[7, 7, 7, 7, 7, 5]);
            let mut dst = [0u8; 8];
            memcpy(dst.as_mut_ptr(), b"abcdefgh".as_ptr(), 8);
            assert_eq!(&dst, b"abcdefgh");
            assert_eq!(memcmp(b"abc".as_ptr(), b"abc".as_ptr(), 3), 0);
            assert!(memcmp(b"abc".as_ptr(), b"abd".as_ptr(), 3) < 0);
            assert!(memcmp(b"b".as_ptr(), b"a".as_ptr(), 1) > 0);
            assert!(bcmp(b"xyz".as_ptr(), b"xya".as_ptr(), 3) != 0);
            assert_eq!(memcmp(b"x".as_ptr(), b"y".as_ptr(), 0), 0);
        }
    }
}
