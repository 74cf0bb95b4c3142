//! The memory and string functions of `<string.h>` that C components use.

use core::ffi::{c_char, c_int, c_void};

/// `memcpy`.
///
/// # Safety
/// As in C: `n` valid bytes at both, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_memcpy(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    // SAFETY: the C contract of memcpy.
    unsafe { core::ptr::copy_nonoverlapping(src.cast::<u8>(), dst.cast::<u8>(), n) };
    dst
}

/// `memmove`.
///
/// # Safety
/// As in C: `n` valid bytes at both; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_memmove(dst: *mut c_void, src: *const c_void, n: usize) -> *mut c_void {
    // SAFETY: the C contract of memmove.
    unsafe { core::ptr::copy(src.cast::<u8>(), dst.cast::<u8>(), n) };
    dst
}

/// `memset`.
///
/// # Safety
/// As in C: `n` writable bytes at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_memset(dst: *mut c_void, c: c_int, n: usize) -> *mut c_void {
    // SAFETY: the C contract of memset.
    unsafe { core::ptr::write_bytes(dst.cast::<u8>(), c as u8, n) };
    dst
}

/// `memcmp`.
///
/// # Safety
/// As in C: `n` readable bytes at both.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_memcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    // SAFETY: the C contract of memcmp.
    let (a, b) =
        unsafe { (core::slice::from_raw_parts(a.cast::<u8>(), n), core::slice::from_raw_parts(b.cast::<u8>(), n)) };
    match a.iter().zip(b).find(|(x, y)| x != y) {
        Some((x, y)) => *x as c_int - *y as c_int,
        None => 0,
    }
}

/// `bcmp` (clang turns a `memcmp` whose result is only compared with 0 into it).
///
/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_bcmp(a: *const c_void, b: *const c_void, n: usize) -> c_int {
    // SAFETY: the same contract.
    unsafe { flexos_libc_memcmp(a, b, n) }
}

/// `memchr`.
///
/// # Safety
/// As in C: `n` readable bytes at `s`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_memchr(s: *const c_void, c: c_int, n: usize) -> *mut c_void {
    // SAFETY: the C contract of memchr.
    let bytes = unsafe { core::slice::from_raw_parts(s.cast::<u8>(), n) };
    match bytes.iter().position(|&b| b == c as u8) {
        // SAFETY: in bounds of the buffer.
        Some(i) => unsafe { s.cast::<u8>().add(i) as *mut c_void },
        None => core::ptr::null_mut(),
    }
}

/// The bytes of a NUL-terminated string, without the NUL.
///
/// # Safety
/// `s` points to a NUL-terminated string that outlives the result.
unsafe fn c_bytes<'a>(s: *const c_char) -> &'a [u8] {
    // SAFETY: the caller's contract.
    unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes()
}

/// `strlen`.
///
/// # Safety
/// `s` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strlen(s: *const c_char) -> usize {
    // SAFETY: the C contract.
    unsafe { c_bytes(s) }.len()
}

fn compare(a: impl Iterator<Item = u8>, b: impl Iterator<Item = u8>) -> c_int {
    let mut b = b;
    for x in a {
        let y = b.next().unwrap_or(0);
        if x != y || x == 0 {
            return x as c_int - y as c_int;
        }
    }
    0
}

/// `strcmp`.
///
/// # Safety
/// Both are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strcmp(a: *const c_char, b: *const c_char) -> c_int {
    // SAFETY: the C contract; the NUL is included so the shorter string compares low.
    let (a, b) =
        unsafe { (core::ffi::CStr::from_ptr(a).to_bytes_with_nul(), core::ffi::CStr::from_ptr(b).to_bytes_with_nul()) };
    compare(a.iter().copied(), b.iter().copied())
}

/// `strncmp`.
///
/// # Safety
/// Both are NUL-terminated or have at least `n` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strncmp(a: *const c_char, b: *const c_char, n: usize) -> c_int {
    for i in 0..n {
        // SAFETY: reading stops at the first NUL or difference, within the C contract.
        let (x, y) = unsafe { (*a.add(i) as u8, *b.add(i) as u8) };
        if x != y || x == 0 {
            return x as c_int - y as c_int;
        }
    }
    0
}

/// `strchr` (the terminating NUL can be found too).
///
/// # Safety
/// `s` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strchr(s: *const c_char, c: c_int) -> *mut c_char {
    // SAFETY: the C contract.
    let bytes = unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes_with_nul();
    match bytes.iter().position(|&b| b == c as u8) {
        // SAFETY: in bounds of the string.
        Some(i) => unsafe { s.add(i) as *mut c_char },
        None => core::ptr::null_mut(),
    }
}

/// `strrchr`.
///
/// # Safety
/// `s` is NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strrchr(s: *const c_char, c: c_int) -> *mut c_char {
    // SAFETY: the C contract.
    let bytes = unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes_with_nul();
    match bytes.iter().rposition(|&b| b == c as u8) {
        // SAFETY: in bounds of the string.
        Some(i) => unsafe { s.add(i) as *mut c_char },
        None => core::ptr::null_mut(),
    }
}

/// `strspn`: the length of the prefix of `s` made of bytes in `accept`.
///
/// # Safety
/// Both are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strspn(s: *const c_char, accept: *const c_char) -> usize {
    // SAFETY: the C contract.
    let (s, set) = unsafe { (c_bytes(s), c_bytes(accept)) };
    s.iter().take_while(|b| set.contains(b)).count()
}

/// `strcspn`: the length of the prefix of `s` made of bytes not in `reject`.
///
/// # Safety
/// Both are NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_strcspn(s: *const c_char, reject: *const c_char) -> usize {
    // SAFETY: the C contract.
    let (s, set) = unsafe { (c_bytes(s), c_bytes(reject)) };
    s.iter().take_while(|b| !set.contains(b)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &[u8]) -> *const c_char {
        s.as_ptr().cast()
    }

    #[test]
    fn string_functions_match_c_semantics() {
        // SAFETY: NUL-terminated literals and buffers of the lengths passed.
        unsafe {
            assert_eq!(flexos_libc_strlen(c(b"hello\0")), 5);
            assert!(flexos_libc_strcmp(c(b"abc\0"), c(b"abd\0")) < 0);
            assert!(flexos_libc_strcmp(c(b"ab\0"), c(b"abc\0")) < 0);
            assert_eq!(flexos_libc_strcmp(c(b"same\0"), c(b"same\0")), 0);
            assert_eq!(flexos_libc_strncmp(c(b"abcX\0"), c(b"abcY\0"), 3), 0);
            assert!(flexos_libc_strncmp(c(b"abcX\0"), c(b"abcY\0"), 4) < 0);
            assert_eq!(flexos_libc_strncmp(c(b"a\0zz"), c(b"a\0yy"), 4), 0, "stops at NUL");
            let s = b"path/to/file\0";
            assert_eq!(flexos_libc_strchr(c(s), b'/' as c_int) as usize - s.as_ptr() as usize, 4);
            assert_eq!(flexos_libc_strrchr(c(s), b'/' as c_int) as usize - s.as_ptr() as usize, 7);
            assert_eq!(flexos_libc_strchr(c(s), 0) as usize - s.as_ptr() as usize, 12);
            assert!(flexos_libc_strchr(c(s), b'#' as c_int).is_null());
            assert_eq!(flexos_libc_strspn(c(b"  x\0"), c(b" \0")), 2);
            assert_eq!(flexos_libc_strcspn(c(b"abc,def\0"), c(b",;\0")), 3);
            let mut buf = [0u8; 8];
            flexos_libc_memset(buf.as_mut_ptr().cast(), 7, 8);
            assert_eq!(buf, [7; 8]);
            flexos_libc_memcpy(buf.as_mut_ptr().cast(), b"abcd".as_ptr().cast(), 4);
            flexos_libc_memmove(buf.as_mut_ptr().add(2).cast(), buf.as_ptr().cast(), 4);
            assert_eq!(&buf, b"ababcd\x07\x07");
            assert!(flexos_libc_memcmp(b"ab".as_ptr().cast(), b"ac".as_ptr().cast(), 2) < 0);
            assert_eq!(flexos_libc_memchr(buf.as_ptr().cast(), b'c' as c_int, 8) as usize - buf.as_ptr() as usize, 4);
        }
    }
}
