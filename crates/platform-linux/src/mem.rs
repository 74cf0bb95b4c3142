//! The image's own `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`.
//!
//! The compiler calls these for copies, fills and comparisons it does not
//! inline. An executable's definitions take precedence over the C
//! library's, so with these every such call in the image stays inside the
//! image: code running in a VM (which has no C library mapped) can use
//! them. Up to 32 bytes they copy with a few overlapping unaligned loads and
//! stores (straight-line code: no loop the compiler could turn back into a
//! call to these very functions); above, they use the string instructions,
//! which modern CPUs run fast for large sizes but start slowly.

use core::arch::asm;

/// Copies `n` <= 32 bytes: every load happens before any store, so the
/// ranges may overlap. (Assembly, because in unoptimized builds even
/// `read_unaligned` becomes a call to `memcpy`.)
///
/// # Safety
/// Both ranges valid for `n` bytes.
#[inline(always)]
unsafe fn copy_small(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: every access is `size` bytes at offset 0 or n - size, with
    // size <= n, so inside both ranges (caller's contract); all loads of a
    // size class come before its stores.
    unsafe {
        asm!(
            "cmp {n}, 16",
            "jb 2f",
            "movdqu {x0}, [{s}]",
            "movdqu {x1}, [{s} + {n} - 16]",
            "movdqu [{d}], {x0}",
            "movdqu [{d} + {n} - 16], {x1}",
            "jmp 6f",
            "2:",
            "cmp {n}, 8",
            "jb 3f",
            "mov {a}, [{s}]",
            "mov {b}, [{s} + {n} - 8]",
            "mov [{d}], {a}",
            "mov [{d} + {n} - 8], {b}",
            "jmp 6f",
            "3:",
            "cmp {n}, 4",
            "jb 4f",
            "mov {a:e}, dword ptr [{s}]",
            "mov {b:e}, dword ptr [{s} + {n} - 4]",
            "mov dword ptr [{d}], {a:e}",
            "mov dword ptr [{d} + {n} - 4], {b:e}",
            "jmp 6f",
            "4:",
            "cmp {n}, 2",
            "jb 5f",
            "movzx {a:e}, word ptr [{s}]",
            "movzx {b:e}, word ptr [{s} + {n} - 2]",
            "mov word ptr [{d}], {a:x}",
            "mov word ptr [{d} + {n} - 2], {b:x}",
            "jmp 6f",
            "5:",
            "test {n}, {n}",
            "jz 6f",
            "movzx {a:e}, byte ptr [{s}]",
            "mov byte ptr [{d}], {a:l}",
            "6:",
            n = in(reg) n, s = in(reg) src, d = in(reg) dst,
            a = out(reg) _, b = out(reg) _, x0 = out(xmm_reg) _, x1 = out(xmm_reg) _,
            options(nostack),
        );
    }
}

/// Fills `n` <= 32 bytes with `c` (overlapping stores; assembly, as above).
///
/// # Safety
/// The range valid for `n` bytes.
#[inline(always)]
unsafe fn fill_small(dst: *mut u8, c: u8, n: usize) {
    let pattern = (c as u64).wrapping_mul(0x0101_0101_0101_0101);
    // SAFETY: every store is `size` bytes at offset 0, 8, n - 16 or n - size
    // with the offsets chosen so that they stay inside the range.
    unsafe {
        asm!(
            "cmp {n}, 8",
            "jb 3f",
            "mov [{d}], {p}",
            "mov [{d} + {n} - 8], {p}",
            "cmp {n}, 16",
            "jb 6f",
            "mov [{d} + 8], {p}",
            "mov [{d} + {n} - 16], {p}",
            "jmp 6f",
            "3:",
            "cmp {n}, 4",
            "jb 4f",
            "mov dword ptr [{d}], {p:e}",
            "mov dword ptr [{d} + {n} - 4], {p:e}",
            "jmp 6f",
            "4:",
            "cmp {n}, 2",
            "jb 5f",
            "mov word ptr [{d}], {p:x}",
            "mov word ptr [{d} + {n} - 2], {p:x}",
            "jmp 6f",
            "5:",
            "test {n}, {n}",
            "jz 6f",
            "mov byte ptr [{d}], {p:l}",
            "6:",
            n = in(reg) n, d = in(reg) dst, p = in(reg) pattern,
            options(nostack),
        );
    }
}

/// Copies `n` bytes from `src` to `dst` (the ranges must not overlap).
///
/// # Safety
/// The C contract: both ranges valid for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n <= 32 {
        // SAFETY: the caller's contract.
        unsafe { copy_small(dst, src, n) };
        return dst;
    }
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
    if n <= 32 {
        // SAFETY: the caller's contract; copy_small loads before it stores.
        unsafe { copy_small(dst, src, n) };
        return dst;
    }
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
    if n <= 32 {
        // SAFETY: the caller's contract.
        unsafe { fill_small(dst, c as u8, n) };
        return dst;
    }
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
        // SAFETY: every pointer and length below stays inside its buffer.
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

    #[test]
    fn every_small_size_and_overlap_is_right() {
        for n in 0..80usize {
            for shift in [0usize, 1, 3, 8, 17] {
                let src: Vec<u8> = (0..128).map(|i| i as u8).collect();
                let mut dst = vec![0xeeu8; 128];
                // SAFETY: shift + n <= 97 of 128 bytes, in both buffers.
                unsafe { memcpy(dst.as_mut_ptr().add(shift), src.as_ptr(), n) };
                assert_eq!(&dst[shift..shift + n], &src[..n], "memcpy {n} {shift}");
                assert!(
                    dst[..shift].iter().chain(&dst[shift + n..]).all(|&b| b == 0xee),
                    "memcpy {n} {shift} wrote outside"
                );
                let mut buf: Vec<u8> = (0..128).map(|i| i as u8).collect();
                // SAFETY: as above, inside one buffer (memmove allows overlap).
                unsafe { memmove(buf.as_mut_ptr().add(shift), buf.as_ptr(), n) };
                assert_eq!(&buf[shift..shift + n], &src[..n], "memmove up {n} {shift}");
                let mut buf: Vec<u8> = (0..128).map(|i| i as u8).collect();
                // SAFETY: as above.
                unsafe { memmove(buf.as_mut_ptr(), buf.as_ptr().add(shift), n) };
                assert_eq!(&buf[..n], &src[shift..shift + n], "memmove down {n} {shift}");
                let mut buf = vec![0u8; 128];
                // SAFETY: as above.
                unsafe { memset(buf.as_mut_ptr().add(shift), 0x5a, n) };
                assert!(buf[shift..shift + n].iter().all(|&b| b == 0x5a) && buf[shift + n..].iter().all(|&b| b == 0));
            }
        }
    }
}
