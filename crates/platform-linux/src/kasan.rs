//! The image's own address-sanitizer runtime (KASan style) for components
//! hardened with `kasan` (docs/hardening.md).
//!
//! Instrumented code (Rust `-Zsanitizer=address`, C
//! `-fsanitize=kernel-address`) checks, before each memory access, the
//! shadow byte of the 8 bytes it touches at `(address >> 3) + SHADOW_OFFSET`:
//! 0 means all 8 are addressable, 1..7 the first k, anything else none. The
//! shadow of the whole user address space is one `MAP_NORESERVE` mapping,
//! so only the pages that are written cost memory. Fresh shadow is zero:
//! everything is addressable until the allocator ([`poison`]) or an
//! instrumented function's stack frame marks redzones. Nothing here is
//! instrumented, so the runtime, the allocator and uninstrumented
//! components never check.
//!
//! The runtime exists in every process of the image (a `proc`
//! compartment's process maps its own shadow at boot); a `kvm` VM has none,
//! so the configuration refuses `kasan` there, and [`enabled`] is false
//! inside a VM.

use core::sync::atomic::{AtomicBool, Ordering};

/// Where the shadow of address 0 is: x86-64 user-space ASan's offset.
pub const SHADOW_OFFSET: usize = 0x7fff_8000;
/// The shadow of the whole 47-bit user address space.
const SHADOW_LEN: usize = (1 << 47) >> 3;

/// Shadow value of a heap block's redzones.
pub const HEAP_REDZONE: u8 = 0xfa;
/// Shadow value of freed heap memory (in quarantine).
pub const FREED: u8 = 0xfd;

/// Whether this process mapped the shadow.
static MAPPED: AtomicBool = AtomicBool::new(false);

/// Whether a component of this image is built with `kasan`.
pub const IN_IMAGE: bool = flexos_layout::any_hardened_with("kasan");

/// Whether the shadow is live here: the image uses `kasan`, this process
/// mapped the shadow, and the code is not running in a `kvm` VM.
#[inline]
pub fn enabled() -> bool {
    IN_IMAGE && MAPPED.load(Ordering::Relaxed) && !crate::guest::in_guest()
}

// The image's *code pad*: `FLEXOS_CODE_PAD` (decimal, at compile time of
// this crate; 0 unless `flexos build` sets it) bytes of `int3` among the
// platform's code, which the linker places after the C libraries that the
// components and applications link (SQLite's among them) and before the
// platform's own functions (KASan's reports, called from the C code).
// Changing it changes the displacements of calls between the two, so that
// `flexos build` can re-link an `mpk` image whose code happens to hold the
// bytes of an `xrstor` inside such a call (`flexos_gate::link_pad!` moves
// data, not code). Never executed; kept by the `R` flag. It lives in this
// module, beside the reports: a module's assembly comes first in the
// object its code is compiled into, so the pad precedes the reports
// however the compiler groups the crate's modules (placed in the crate's
// root, it once fell after them, and every pad left the same `xrstor`).
core::arch::global_asm!(
    ".pushsection .text.flexos_code_pad,\"axR\",@progbits",
    ".fill {len}, 1, 0xcc",
    ".popsection",
    len = const crate::pad_len(option_env!("FLEXOS_CODE_PAD")),
);

/// Maps the shadow before `main` and before any allocation: the allocator
/// decides per block whether it has redzones ([`enabled`]), so that must
/// not change between a block's allocation and its free.
#[used]
#[unsafe(link_section = ".init_array")]
static MAP_AT_START: extern "C" fn() = __asan_init;

/// Maps the shadow, once per process, in images that use `kasan` (at
/// start-up, from `__asan_init`, and at boot).
pub fn init() {
    if !IN_IMAGE || crate::guest::in_guest() || MAPPED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: a new anonymous mapping at a fixed address that must be free
    // (MAP_FIXED_NOREPLACE: it never replaces a mapping); nothing else of
    // this program lies there.
    let p = unsafe {
        libc::mmap(
            SHADOW_OFFSET as *mut libc::c_void,
            SHADOW_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as usize != SHADOW_OFFSET {
        crate::console::write_err(b"flexos: kasan: cannot map the shadow memory at 0x7fff8000\n");
        crate::process_abort()
    }
    MAPPED.store(true, Ordering::Relaxed);
}

#[inline]
fn shadow(addr: usize) -> *mut u8 {
    ((addr >> 3) + SHADOW_OFFSET) as *mut u8
}

/// Marks `[addr, addr + len)` (both multiples of 8) as `value` in the shadow.
pub fn poison(addr: usize, len: usize, value: u8) {
    if !enabled() || len == 0 {
        return;
    }
    debug_assert!(addr.is_multiple_of(8) && len.is_multiple_of(8));
    // SAFETY: the shadow of every user address is mapped (enabled).
    unsafe { core::ptr::write_bytes(shadow(addr), value, len / 8) }
}

/// Marks `[addr, addr + len)` (addr a multiple of 8) addressable, and the
/// rest of its last 8 bytes not.
pub fn unpoison(addr: usize, len: usize) {
    if !enabled() {
        return;
    }
    // SAFETY: as in `poison`.
    unsafe {
        core::ptr::write_bytes(shadow(addr), 0, len / 8);
        if !len.is_multiple_of(8) {
            *shadow(addr + len - len % 8) = (len % 8) as u8;
        }
    }
}

/// Whether the `size` bytes at `addr` are all addressable.
#[inline]
fn addressable(addr: usize, size: usize) -> bool {
    if size == 0 {
        return true;
    }
    let last = addr + size - 1;
    let mut a = addr & !7;
    while a <= last {
        // SAFETY: the shadow of every user address is mapped (checked by callers via enabled).
        let s = unsafe { *shadow(a) } as i8;
        if s != 0 {
            let end = if last < a + 8 { last } else { a + 7 };
            if s < 0 || (end & 7) as i8 >= s {
                return false;
            }
        }
        a += 8;
    }
    true
}

/// The first byte of `[addr, addr + size)` that is not addressable.
fn first_bad(addr: usize, size: usize) -> usize {
    (addr..addr + size).find(|&a| !addressable(a, 1)).unwrap_or(addr)
}

/// What the shadow byte of a bad address says the memory is.
fn kind(addr: usize) -> &'static str {
    // SAFETY: as in `addressable`.
    match unsafe { *shadow(addr) } {
        FREED => "a use after free",
        HEAP_REDZONE => "a heap buffer overflow",
        0xf1..=0xf3 => "a stack buffer overflow",
        0xf8 => "a use of a stack variable after its scope",
        1..=7 => "a heap buffer overflow",
        _ => "an access to poisoned memory",
    }
}

/// Reports a bad access of `size` bytes at `addr` and ends the image.
#[cold]
#[inline(never)]
fn bad_access(addr: usize, size: usize, write: bool) -> ! {
    let bad = if size == 0 || !enabled() { addr } else { first_bad(addr, size) };
    let what = if enabled() { kind(bad) } else { "a bad access" };
    let mut detail = crate::fault::Line::new();
    detail.push(if write { b" (a write of " } else { b" (a read of " });
    detail.decimal(size);
    detail.push(if size == 1 { b" byte" } else { b" bytes" });
    if bad != addr {
        detail.push(b" from ");
        detail.hex(addr);
    }
    detail.push(b")");
    let detail_bytes = detail.buf;
    let n = detail.len;
    crate::hardening::caught("kasan", what, bad, &detail_bytes[..n])
}

macro_rules! access_fns {
    ($($size:literal: $load:ident $store:ident $load_na:ident $store_na:ident $rload:ident $rstore:ident $rload_na:ident $rstore_na:ident;)*) => {$(
        /// Checks a load of this size (outlined instrumentation).
        #[unsafe(no_mangle)]
        pub extern "C" fn $load(addr: usize) {
            if enabled() && !addressable(addr, $size) { bad_access(addr, $size, false) }
        }
        /// Checks a store of this size (outlined instrumentation).
        #[unsafe(no_mangle)]
        pub extern "C" fn $store(addr: usize) {
            if enabled() && !addressable(addr, $size) { bad_access(addr, $size, true) }
        }
        /// Checks a load of this size (outlined, recoverable instrumentation).
        #[unsafe(no_mangle)]
        pub extern "C" fn $load_na(addr: usize) { $load(addr) }
        /// Checks a store of this size (outlined, recoverable instrumentation).
        #[unsafe(no_mangle)]
        pub extern "C" fn $store_na(addr: usize) { $store(addr) }
        /// Reports a bad load found by inline instrumentation.
        #[unsafe(no_mangle)]
        pub extern "C" fn $rload(addr: usize) { bad_access(addr, $size, false) }
        /// Reports a bad store found by inline instrumentation.
        #[unsafe(no_mangle)]
        pub extern "C" fn $rstore(addr: usize) { bad_access(addr, $size, true) }
        /// Reports a bad load found by inline, recoverable instrumentation.
        #[unsafe(no_mangle)]
        pub extern "C" fn $rload_na(addr: usize) { bad_access(addr, $size, false) }
        /// Reports a bad store found by inline, recoverable instrumentation.
        #[unsafe(no_mangle)]
        pub extern "C" fn $rstore_na(addr: usize) { bad_access(addr, $size, true) }
    )*};
}

access_fns! {
    1: __asan_load1 __asan_store1 __asan_load1_noabort __asan_store1_noabort __asan_report_load1 __asan_report_store1 __asan_report_load1_noabort __asan_report_store1_noabort;
    2: __asan_load2 __asan_store2 __asan_load2_noabort __asan_store2_noabort __asan_report_load2 __asan_report_store2 __asan_report_load2_noabort __asan_report_store2_noabort;
    4: __asan_load4 __asan_store4 __asan_load4_noabort __asan_store4_noabort __asan_report_load4 __asan_report_store4 __asan_report_load4_noabort __asan_report_store4_noabort;
    8: __asan_load8 __asan_store8 __asan_load8_noabort __asan_store8_noabort __asan_report_load8 __asan_report_store8 __asan_report_load8_noabort __asan_report_store8_noabort;
    16: __asan_load16 __asan_store16 __asan_load16_noabort __asan_store16_noabort __asan_report_load16 __asan_report_store16 __asan_report_load16_noabort __asan_report_store16_noabort;
}

/// Checks a load of `size` bytes (outlined instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_loadN(addr: usize, size: usize) {
    if enabled() && !addressable(addr, size) {
        bad_access(addr, size, false)
    }
}

/// Checks a store of `size` bytes (outlined instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_storeN(addr: usize, size: usize) {
    if enabled() && !addressable(addr, size) {
        bad_access(addr, size, true)
    }
}

/// Checks a load of `size` bytes (outlined, recoverable instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_loadN_noabort(addr: usize, size: usize) {
    __asan_loadN(addr, size)
}

/// Checks a store of `size` bytes (outlined, recoverable instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_storeN_noabort(addr: usize, size: usize) {
    __asan_storeN(addr, size)
}

/// Reports a bad load of `size` bytes found by inline instrumentation.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_report_load_n(addr: usize, size: usize) {
    bad_access(addr, size, false)
}

/// Reports a bad store of `size` bytes found by inline instrumentation.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_report_store_n(addr: usize, size: usize) {
    bad_access(addr, size, true)
}

/// Reports a bad load of `size` bytes (recoverable instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_report_load_n_noabort(addr: usize, size: usize) {
    bad_access(addr, size, false)
}

/// Reports a bad store of `size` bytes (recoverable instrumentation).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_report_store_n_noabort(addr: usize, size: usize) {
    bad_access(addr, size, true)
}

/// `memset` with both ends checked (instrumented code calls it instead).
///
/// # Safety
/// As `memset`: `dst` is valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __asan_memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    __asan_storeN(dst as usize, n);
    // SAFETY: the caller's contract.
    unsafe { core::ptr::write_bytes(dst, c as u8, n) };
    dst
}

/// `memcpy` with both ranges checked.
///
/// # Safety
/// As `memcpy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __asan_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    __asan_loadN(src as usize, n);
    __asan_storeN(dst as usize, n);
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
    dst
}

/// `memmove` with both ranges checked.
///
/// # Safety
/// As `memmove`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __asan_memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    __asan_loadN(src as usize, n);
    __asan_storeN(dst as usize, n);
    // SAFETY: the caller's contract.
    unsafe { core::ptr::copy(src, dst, n) };
    dst
}

/// Called by every instrumented module's constructor: maps the shadow.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_init() {
    init()
}

/// The instrumentation's ABI check: this runtime follows version 8.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_version_mismatch_check_v8() {}

/// Before a call that does not return (a panic, `longjmp`): nothing to do,
/// the frames' redzones are cleared when their stack is reused
/// ([`unpoison_stack`]).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_handle_no_return() {}

/// Globals are not tracked (`-asan-globals=0`); kept for modules built otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_register_globals(_globals: usize, _n: usize) {}
/// See [`__asan_register_globals`].
#[unsafe(no_mangle)]
pub extern "C" fn __asan_unregister_globals(_globals: usize, _n: usize) {}
/// See [`__asan_register_globals`].
#[unsafe(no_mangle)]
pub extern "C" fn __asan_register_elf_globals(_flag: usize, _start: usize, _stop: usize) {}
/// See [`__asan_register_globals`].
#[unsafe(no_mangle)]
pub extern "C" fn __asan_unregister_elf_globals(_flag: usize, _start: usize, _stop: usize) {}

/// Read by instrumented code: 0, there are no fake stacks.
#[unsafe(no_mangle)]
pub static __asan_option_detect_stack_use_after_return: i32 = 0;

macro_rules! set_shadow_fns {
    ($($name:ident = $v:literal;)*) => {$(
        /// Sets `n` shadow bytes from `shadow` (a frame's redzones, outlined).
        ///
        /// # Safety
        /// `shadow` is the shadow of the caller's own stack frame.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(shadow: *mut u8, n: usize) {
            // SAFETY: the caller's contract; the shadow is mapped.
            unsafe { core::ptr::write_bytes(shadow, $v, n) }
        }
    )*};
}

set_shadow_fns! {
    __asan_set_shadow_00 = 0x00;
    __asan_set_shadow_f1 = 0xf1;
    __asan_set_shadow_f2 = 0xf2;
    __asan_set_shadow_f3 = 0xf3;
    __asan_set_shadow_f5 = 0xf5;
    __asan_set_shadow_f8 = 0xf8;
}

/// Marks a variable's stack memory out of scope (use-after-scope, outlined).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_poison_stack_memory(addr: usize, size: usize) {
    poison(addr & !7, size.next_multiple_of(8), 0xf8)
}

/// Marks a variable's stack memory in scope again (outlined).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_unpoison_stack_memory(addr: usize, size: usize) {
    unpoison(addr & !7, size.next_multiple_of(8))
}

/// Redzones around a dynamic `alloca` (outlined): only the block is addressable.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_alloca_poison(addr: usize, size: usize) {
    unpoison(addr, size)
}

/// Clears the shadow of dynamic allocas between `top` and `bottom`.
#[unsafe(no_mangle)]
pub extern "C" fn __asan_allocas_unpoison(top: usize, bottom: usize) {
    if bottom > top {
        unpoison(top & !7, (bottom - (top & !7)).next_multiple_of(8))
    }
}

/// Clears the shadow of a stack that is made or reused (a gate's or a
/// scheduler context's), so redzones of frames that never returned there
/// (a context that ended, a panic) do not fault its next user.
pub fn unpoison_stack(bottom: usize, len: usize) {
    if enabled() {
        // Whole pages of shadow are given back rather than written.
        let (s, e) = ((bottom >> 3) + SHADOW_OFFSET, ((bottom + len) >> 3) + SHADOW_OFFSET);
        let (ps, pe) = (s.next_multiple_of(4096), e & !4095);
        // SAFETY: only this stack's shadow (mapped, private) is cleared.
        unsafe {
            if pe > ps {
                libc::madvise(ps as *mut libc::c_void, pe - ps, libc::MADV_DONTNEED);
            }
            core::ptr::write_bytes(s as *mut u8, 0, ps.min(e) - s);
            if pe > ps {
                core::ptr::write_bytes(pe as *mut u8, 0, e - pe);
            }
        }
    }
}
