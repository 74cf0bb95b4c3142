//! `malloc` and friends over the running compartment's heap. `malloc`
//! returns NULL when the heap would keep less than `flexos_alloc::RESERVE`
//! free, so C code runs out of memory before the Rust components beside it do.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::null_mut;
use flexos_platform::compartment;

/// Bytes in front of every allocation, holding its size (and keeping 16-byte alignment).
const HEADER: usize = 16;

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(HEADER)?, 16).ok()
}

/// `malloc`: `size` bytes from the running compartment's heap, 16-byte aligned.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_malloc(size: usize) -> *mut c_void {
    let Some(l) = layout(size) else { return null_mut() };
    // NULL (C code handles it: SQLite reports "out of memory") before the
    // heap gets so full that the Rust code sharing it could not allocate.
    if !flexos_alloc::has_room(l.size()) {
        return null_mut();
    }
    let p = flexos_alloc::alloc_in(compartment::current(), l);
    if p.is_null() {
        return null_mut();
    }
    // SAFETY: `p` is a fresh allocation of size + HEADER bytes, 16-aligned;
    // the size is stored in its first word and the caller gets the rest.
    unsafe {
        p.cast::<usize>().write(size);
        p.add(HEADER).cast()
    }
}

/// `free`.
///
/// # Safety
/// `ptr` is null or came from this library's `malloc`/`calloc`/`realloc` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: by the contract, the header sits HEADER bytes before `ptr`.
    unsafe {
        let base = ptr.cast::<u8>().sub(HEADER);
        let size = base.cast::<usize>().read();
        flexos_alloc::free(base, Layout::from_size_align_unchecked(size + HEADER, 16));
    }
}

/// `calloc`: zeroed memory for `n` elements of `size` bytes.
#[unsafe(no_mangle)]
pub extern "C" fn flexos_libc_calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else { return null_mut() };
    let p = flexos_libc_malloc(total);
    if !p.is_null() {
        // SAFETY: `p` has `total` writable bytes.
        unsafe { core::ptr::write_bytes(p.cast::<u8>(), 0, total) };
    }
    p
}

/// `realloc`.
///
/// # Safety
/// As for `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn flexos_libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return flexos_libc_malloc(size);
    }
    // SAFETY: the header of a live allocation holds its size.
    let old = unsafe { ptr.cast::<u8>().sub(HEADER).cast::<usize>().read() };
    let new = flexos_libc_malloc(size);
    if !new.is_null() {
        // SAFETY: both blocks are live and distinct; copy the smaller size.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.cast::<u8>(), new.cast::<u8>(), old.min(size));
            flexos_libc_free(ptr);
        }
    }
    new
}
