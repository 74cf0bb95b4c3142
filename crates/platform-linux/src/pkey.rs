//! Protection keys (Intel MPK, "PKU") on Linux: the hardware of the `mpk`
//! mechanism (DESIGN section 5.4).
//!
//! Every page carries one of 16 keys; the per-thread register PKRU says, for
//! each key, whether data accesses are allowed (two bits per key: access
//! disable, write disable). `wrpkru` changes PKRU without a system call, so
//! a gate is a few instructions. Instruction fetches are not checked: keys
//! protect data, never code.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// `si_code` of a SIGSEGV raised by a protection-key violation.
pub const SEGV_PKUERR: i32 = 4;

/// Why protection keys cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    /// The `errno` of `pkey_alloc` (EINVAL or ENOSPC without PKU, ENOSYS on old kernels).
    pub errno: i32,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = std::io::Error::from_raw_os_error(self.errno);
        write!(
            f,
            "pkey_alloc failed: {why}; the CPU has no protection keys (no `pku` flag in /proc/cpuinfo) or the kernel does not enable them"
        )
    }
}

/// Allocates a fresh protection key, with access allowed in this thread.
pub fn allocate() -> Result<u32, Unavailable> {
    // SAFETY: pkey_alloc(flags = 0, access_rights = 0) only reserves a key
    // number and changes this thread's PKRU bits of that (unused) key.
    let k = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0, 0) };
    if k < 0 {
        Err(Unavailable { errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0) })
    } else {
        Ok(k as u32)
    }
}

/// Whether this machine can run `mpk` images: allocates and frees a key.
pub fn available() -> Result<(), Unavailable> {
    let k = allocate()?;
    // SAFETY: frees the key just allocated; no page carries it.
    unsafe { libc::syscall(libc::SYS_pkey_free, k) };
    Ok(())
}

/// Gives the pages of `[addr, addr + len)` key `key`, readable and
/// writable (`PROT_NONE` instead when `accessible` is false, for guard pages).
/// Key 0 works on a machine without protection keys too: there every page
/// has key 0, and the kernel, which then knows no key at all, refuses
/// `pkey_mprotect` even for key 0, so plain `mprotect` does the same job.
///
/// # Safety
/// The range must be a mapping the caller owns; code that touches it
/// afterwards needs `key` allowed in PKRU.
pub unsafe fn protect(addr: usize, len: usize, key: u32, accessible: bool) -> std::io::Result<()> {
    let prot = if accessible { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_NONE };
    // SAFETY: by the contract the range is the caller's mapping; pkey_mprotect
    // changes its protection and key, nothing else.
    let rc = unsafe { libc::syscall(libc::SYS_pkey_mprotect, addr, len, prot, key) };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    if key != 0 || error.raw_os_error() != Some(libc::EINVAL) {
        return Err(error);
    }
    // SAFETY: as above; mprotect changes the protection only, and without
    // protection keys every page already has key 0. (Where the machine has
    // keys, EINVAL for key 0 means a bad range, which mprotect refuses too.)
    let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Loads PKRU with the constant `$value` by the checked sequence of the
/// gates (load, `wrpkru`, compare, load again if EAX differs: jumping to
/// the `wrpkru` with another EAX cannot get past it) and registers the site
/// in the `flexos_wrpkru` section that `flexos audit wrpkru` checks. For the
/// trusted core's own switches (start-up, the fault reporter); expands to
/// an `asm!`, so it stands in an `unsafe` block that says why the rights
/// are right there.
#[macro_export]
macro_rules! checked_wrpkru {
    ($value:expr) => {
        core::arch::asm!(
            "2:",
            "mov eax, {v}",
            "xor ecx, ecx",
            "xor edx, edx",
            "3:",
            "wrpkru",
            "cmp eax, {v}",
            "jne 2b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 3b - .",
            ".long {v}",
            ".popsection",
            v = const $value,
            out("eax") _, out("ecx") _, out("edx") _,
            options(nostack),
        )
    };
}

/// This thread's PKRU.
#[inline(always)]
pub fn read() -> u32 {
    let pkru: u32;
    // SAFETY: rdpkru only reads the register (ECX must be 0); it faults only
    // without OSPKE, and it is called only after keys were allocated.
    unsafe { core::arch::asm!("rdpkru", in("ecx") 0, out("eax") pkru, out("edx") _, options(nomem, nostack)) };
    pkru
}

/// The key of every compartment's memory (0: none), registered by the
/// allocator when the image uses keys; read by the fault reporter.
static KEYS: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
static SHARED_KEY: AtomicU32 = AtomicU32::new(0);
static CORE_KEY: AtomicU32 = AtomicU32::new(0);
/// The key of the stacks that each compartment's code runs on.
static STACK_KEYS: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];

/// Records which key protects which compartment's memory (`keys[i]` for
/// compartment `i`), the shared memory and the trusted core's statics,
/// for fault reports, and which key the stacks of each compartment's
/// threads carry (`stack_keys[i]`).
pub fn register(keys: &[u32], shared: u32, core: u32, stack_keys: &[u32]) {
    IN_USE.store(true, Ordering::Relaxed);
    for (slot, &k) in KEYS.iter().zip(keys) {
        slot.store(k, Ordering::Relaxed);
    }
    for (slot, &k) in STACK_KEYS.iter().zip(stack_keys) {
        slot.store(k, Ordering::Relaxed);
    }
    SHARED_KEY.store(shared, Ordering::Relaxed);
    CORE_KEY.store(core, Ordering::Relaxed);
}

/// Set once this process has given its memory protection keys.
static IN_USE: AtomicBool = AtomicBool::new(false);

/// Whether this process protects its memory with keys (PKRU then says
/// which compartment runs: [`compartment_with_rights`]).
#[inline(always)]
pub fn in_use() -> bool {
    IN_USE.load(Ordering::Relaxed)
}

/// Whose memory carries a protection key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOwner {
    /// Compartment `i`'s heap and stacks.
    Compartment(usize),
    /// The shared memory.
    Shared,
    /// The trusted core's statics.
    Core,
}

/// The owner of memory with key `key` (`None` if no compartment has it).
pub fn owner_of_key(key: u32) -> Option<KeyOwner> {
    if key == 0 {
        return None;
    }
    if key == SHARED_KEY.load(Ordering::Relaxed) {
        return Some(KeyOwner::Shared);
    }
    if key == CORE_KEY.load(Ordering::Relaxed) {
        return Some(KeyOwner::Core);
    }
    KEYS.iter().position(|k| k.load(Ordering::Relaxed) == key).map(KeyOwner::Compartment)
}

/// The compartment whose rights are `rights` (a PKRU value): the one
/// whose value it is (every `mpk` compartment's is its own), or, among
/// compartments with the same value (`fcall` ones: every key), `claimed`
/// (what the compartment register says) if it is one of them. `None` if
/// no compartment has these rights.
pub fn compartment_with_rights(rights: u32, claimed: usize) -> Option<usize> {
    use flexos_layout::PKRU;
    if PKRU.get(claimed) == Some(&rights) {
        return Some(claimed);
    }
    PKRU.iter().position(|&p| p == rights)
}

/// Whether code running in compartment `compartment` may write the
/// program's statics: everywhere but in an `mpk` compartment other than
/// the default one, whose rights make the trusted core's statics read-only
/// (`flexos_layout::PKRU`).
pub fn may_write_statics(compartment: usize) -> bool {
    use flexos_layout::{CORE_PKEY, PKRU, has_mpk};
    !has_mpk() || PKRU.get(compartment).is_none_or(|&rights| rights & (2 << (2 * CORE_PKEY)) == 0)
}

/// The most writable ranges [`writable_statics`] reports.
pub const MAX_STATIC_RANGES: usize = 4;

/// The writable statics of the program (`.data`, `.bss`, and the C
/// library's too in a static image): the writable `PT_LOAD` segments of
/// the executable, page-aligned, less its RELRO range (which the loader
/// made read-only and which must stay so). Each as `[start, end)`; the
/// unused entries are `(0, 0)`. Does not allocate (the allocator calls it
/// while it sets itself up).
pub fn writable_statics() -> [(usize, usize); MAX_STATIC_RANGES] {
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        const PAGE: usize = 4096;
        // SAFETY: dl_iterate_phdr passes a valid entry and our array; the
        // program headers it points at are mapped as long as the object is.
        unsafe {
            let found = &mut *data.cast::<[(usize, usize); MAX_STATIC_RANGES]>();
            let info = &*info;
            let headers = core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            let base = info.dlpi_addr as usize;
            let page_range = |vaddr: u64, len: u64| {
                let start = base + vaddr as usize;
                (start & !(PAGE - 1), (start + len as usize + PAGE - 1) & !(PAGE - 1))
            };
            let relro =
                headers.iter().find(|h| h.p_type == libc::PT_GNU_RELRO).map(|h| page_range(h.p_vaddr, h.p_memsz));
            let writable = headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W != 0);
            for (slot, h) in found.iter_mut().zip(writable) {
                let (mut start, end) = page_range(h.p_vaddr, h.p_memsz);
                if let Some((r_start, r_end)) = relro
                    && r_start <= start
                    && r_end > start
                {
                    start = r_end;
                }
                if start < end {
                    *slot = (start, end);
                }
            }
        }
        1 // the first object is the program itself: stop there
    }
    let mut found = [(0, 0); MAX_STATIC_RANGES];
    // SAFETY: the callback matches the C signature and only reads the
    // entries; `found` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut found).cast()) };
    found
}

/// The whole of the program's image in memory: from its lowest to its
/// highest loaded segment (`PT_LOAD`), page-aligned, as `[start, end)`:
/// its code, read-only data and statics (and the C library's, in a static
/// image).
pub fn program_extent() -> (usize, usize) {
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> libc::c_int {
        const PAGE: usize = 4096;
        // SAFETY: dl_iterate_phdr passes a valid entry and our pair; the
        // program headers it points at are mapped as long as the object is.
        unsafe {
            let extent = &mut *data.cast::<(usize, usize)>();
            let info = &*info;
            let headers = core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
            let base = info.dlpi_addr as usize;
            for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
                let start = (base + h.p_vaddr as usize) & !(PAGE - 1);
                let end = (base + (h.p_vaddr + h.p_memsz) as usize).div_ceil(PAGE) * PAGE;
                *extent = if extent.1 == 0 { (start, end) } else { (extent.0.min(start), extent.1.max(end)) };
            }
        }
        1 // the first object is the program itself: stop there
    }
    let mut extent = (0, 0);
    // SAFETY: the callback matches the C signature and only reads the
    // entries; `extent` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut extent).cast()) };
    extent
}

/// The key that stacks of compartment `compartment`'s threads carry (0: none).
pub fn stack_key(compartment: usize) -> u32 {
    STACK_KEYS.get(compartment).map_or(0, |k| k.load(Ordering::Relaxed))
}

/// The bounds `[start, end)` of the main thread's stack mapping (`[stack]`
/// in /proc/self/maps). Reads the file without allocating, since the
/// allocator calls it while it sets itself up.
pub fn main_stack() -> Option<(usize, usize)> {
    named_mapping(b"[stack]")
}

/// The bounds `[start, end)` of the mapping that /proc/self/maps names
/// `name` (`[stack]`, `[vdso]`, `[vvar]`, ...). Does not allocate.
pub fn named_mapping(name: &[u8]) -> Option<(usize, usize)> {
    // SAFETY: the path is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 4096];
    let mut have = 0;
    let mut found = None;
    loop {
        // SAFETY: reads into the unused tail of `buf`.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        // Handle every complete line; keep the incomplete rest.
        let mut start = 0;
        while let Some(len) = buf[start..have].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + len];
            if line.ends_with(name) && line.get(line.len().wrapping_sub(name.len() + 1)) == Some(&b' ') {
                found = parse_range(line);
            }
            start += len + 1;
        }
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            have = 0; // a line longer than the buffer: skip it
        }
    }
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
    found
}

/// The first word of the vDSO (its ELF header), which attack tests watch
/// for a replaced page; `None` where the process has no vDSO.
pub fn vdso_header() -> Option<&'static core::sync::atomic::AtomicU64> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    // SAFETY: the vDSO is mapped readable for the process's whole life, at
    // a page boundary (so 8-byte aligned); it is only ever loaded through
    // this reference, and an atomic load of 8 bytes is allowed on
    // read-only memory.
    (base != 0).then(|| unsafe { &*(base as *const core::sync::atomic::AtomicU64) })
}

/// Parses the `START-END` hexadecimal range at the start of a maps line.
fn parse_range(line: &[u8]) -> Option<(usize, usize)> {
    let range = line.split(|&b| b == b' ').next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let hex = |digits: &[u8]| {
        digits.iter().try_fold(0usize, |v, &d| Some(v.checked_mul(16)? + (d as char).to_digit(16)? as usize))
    };
    Some((hex(&range[..dash])?, hex(&range[dash + 1..])?))
}

unsafe extern "C" {
    /// The C library's environment array (`getenv` reads it).
    static mut environ: *mut *mut core::ffi::c_char;
}

/// Copies the environment (array and strings) from the main stack into the
/// C library's heap and points `environ` at the copy, so that it stays
/// readable when the main stack gets a protection key. False if memory ran out.
pub fn copy_environment_off_the_stack() -> bool {
    // SAFETY: runs once, on the main thread, before the image starts any
    // other thread; every pointer read comes from the environment array
    // the kernel and the C library set up (NUL-terminated strings, a
    // null-terminated array), and the copies are fresh malloc'ed memory
    // that is never freed.
    unsafe {
        let old = environ;
        if old.is_null() {
            return true;
        }
        let mut count = 0;
        while !(*old.add(count)).is_null() {
            count += 1;
        }
        let new = libc::malloc((count + 1) * size_of::<*mut core::ffi::c_char>()).cast::<*mut core::ffi::c_char>();
        if new.is_null() {
            return false;
        }
        for i in 0..count {
            let copy = libc::strdup(*old.add(i));
            if copy.is_null() {
                return false;
            }
            *new.add(i) = copy;
        }
        *new.add(count) = core::ptr::null_mut();
        environ = new;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_writable_statics() {
        static mut WRITTEN: u64 = 1;
        static READ_ONLY: u64 = 2;
        let ranges = writable_statics();
        let holds = |addr: usize| ranges.iter().any(|&(start, end)| start <= addr && addr < end);
        assert!(holds(&raw const WRITTEN as usize), "{ranges:x?}");
        assert!(!holds(&raw const READ_ONLY as usize), "{ranges:x?}");
        assert!(ranges.iter().all(|&(s, e)| s % 4096 == 0 && e % 4096 == 0));
    }

    #[test]
    fn key_0_protects_with_or_without_protection_keys() {
        let page = 4096;
        // SAFETY: a fresh private anonymous mapping of one page, unmapped below.
        let addr = unsafe {
            libc::mmap(core::ptr::null_mut(), page, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping above, owned by this test.
        unsafe { protect(addr as usize, page, 0, true) }.expect("key 0, readable and writable");
        // SAFETY: the page is now readable and writable with key 0, which PKRU always allows here.
        unsafe {
            addr.cast::<u64>().write_volatile(7);
            assert_eq!(addr.cast::<u64>().read_volatile(), 7);
        }
        // SAFETY: as above.
        unsafe { protect(addr as usize, page, 0, false) }.expect("key 0, inaccessible");
        // SAFETY: the mapping above, no longer used.
        unsafe { libc::munmap(addr, page) };
    }

    #[test]
    fn finds_the_main_stack() {
        assert_eq!(parse_range(b"7ffd1000-7ffd3000 rw-p 00000000 00:00 0  [stack]"), Some((0x7ffd1000, 0x7ffd3000)));
        assert_eq!(parse_range(b"zz-1 rw-p"), None);
        let (start, end) = main_stack().expect("a [stack] line");
        assert!(start < end && end - start >= 4096);
    }

    #[test]
    fn finds_the_program_and_the_vdso() {
        let (start, end) = program_extent();
        let code = finds_the_program_and_the_vdso as fn() as usize;
        let data = (&raw const KEYS) as usize;
        assert!(start <= code && code < end && start <= data && data < end, "{start:#x}..{end:#x}");
        let (start, end) = named_mapping(b"[vdso]").expect("a [vdso] line");
        assert!(start < end && start.is_multiple_of(4096));
        assert_eq!(named_mapping(b"[no such mapping]"), None);
    }
}
