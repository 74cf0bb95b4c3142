//! Memory from the kernel: large lazily-backed reservations and stacks with guard pages.

use std::ptr::NonNull;

/// The size of a page.
pub const PAGE_SIZE: usize = 4096;

/// Maps `len` bytes (a multiple of the page size) of fresh, readable and
/// writable memory, backed only where touched.
fn map_anonymous(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address the kernel chooses
    // cannot alias any existing Rust object.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED { None } else { NonNull::new(p.cast()) }
}

/// A region of address space reserved with `mmap`, readable and writable,
/// backed by memory only where it is touched. It is never unmapped: regions
/// back heaps that live as long as the image.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// First byte.
    pub base: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a Region is only an address range; it grants no access by itself.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Reserves `len` bytes (rounded up to pages). Returns `None` when the kernel refuses.
    pub fn reserve(len: usize) -> Option<Region> {
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        Some(Region { base: map_anonymous(len)?, len })
    }

    /// Reserves `len` bytes at exactly `base`, inaccessible until
    /// [`Region::set_access`] opens parts of it. `None` if anything is
    /// already mapped there (it never replaces an existing mapping).
    pub fn reserve_at(base: usize, len: usize) -> Option<Region> {
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // SAFETY: MAP_FIXED_NOREPLACE fails instead of replacing an existing
        // mapping, so no Rust object can be aliased or unmapped.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED || p as usize != base {
            return None;
        }
        Some(Region { base: NonNull::new(p.cast())?, len })
    }

    /// Makes `[base + offset, base + offset + len)` readable and writable
    /// (`writable`) or inaccessible. Panics if the range leaves the region.
    ///
    /// # Safety
    /// When closing access, nothing may use that memory afterwards
    /// (references into it would fault).
    pub unsafe fn set_access(&self, offset: usize, len: usize, writable: bool) {
        let addr = self.base.as_ptr() as usize + offset;
        assert!(self.contains(addr, len) && offset.is_multiple_of(PAGE_SIZE), "access change outside the region");
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_NONE };
        // SAFETY: the range is inside this reservation (checked); by this
        // function's contract nothing relies on memory that becomes inaccessible.
        let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, len, prot) };
        assert_eq!(rc, 0, "mprotect of a reserved region failed");
    }

    /// Replaces `[base + offset, base + offset + len)` with the `len` bytes
    /// at `fd_offset` of the shared memory object `fd`, readable and
    /// writable. Returns false if the kernel refuses.
    ///
    /// # Safety
    /// Nothing may be stored in that range yet: its old contents disappear.
    pub unsafe fn map_shared(&self, offset: usize, len: usize, fd: i32, fd_offset: usize) -> bool {
        let addr = self.base.as_ptr() as usize + offset;
        assert!(self.contains(addr, len), "shared mapping outside the region");
        // SAFETY: MAP_FIXED replaces only pages of this reservation, which by
        // the contract hold nothing yet.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_offset as libc::off_t,
            )
        };
        p as usize == addr
    }

    /// Whether `[addr, addr + len)` lies inside this region.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        let base = self.base.as_ptr() as usize;
        addr >= base && len <= self.len && addr - base <= self.len - len
    }
}

/// Closes this process's descriptor of a shared memory object (its
/// mappings stay): afterwards nothing in the process can map more of it.
pub fn close_shared_memory(fd: i32) {
    // SAFETY: close(2) has no memory effects; the descriptor is the caller's.
    unsafe { libc::close(fd) };
}

/// Creates an anonymous shared memory object of `len` bytes (a `memfd`,
/// closed on exec unless the spawner says otherwise); it disappears when the
/// last process that maps it or holds it open ends, so it cannot leak.
pub fn create_shared_memory(len: usize) -> Option<i32> {
    // SAFETY: the name is NUL-terminated; memfd_create has no memory effects.
    let fd = unsafe { libc::memfd_create(c"flexos-shared".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is the object just created.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(fd) };
        return None;
    }
    Some(fd)
}

/// A thread stack: `size` usable bytes above one inaccessible guard page, so
/// that an overflow faults instead of corrupting the memory below.
#[derive(Debug)]
pub struct Stack {
    mapping: NonNull<u8>,
    mapping_len: usize,
    /// Where a stack with a protection key came from: a slot (row, slot)
    /// of the gate-stack arena, which is given back instead of unmapped.
    arena_slot: Option<(usize, usize)>,
}

impl Stack {
    /// Maps a stack of at least `size` bytes with a guard page below it.
    pub fn new(size: usize) -> Stack {
        let size = size.max(PAGE_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mapping_len = size + PAGE_SIZE;
        let mapping = map_anonymous(mapping_len).unwrap_or_else(|| panic!("cannot map a thread stack of {size} bytes"));
        // SAFETY: the first page of the mapping we just created; nothing uses it yet.
        let rc = unsafe { libc::mprotect(mapping.as_ptr().cast(), PAGE_SIZE, libc::PROT_NONE) };
        assert_eq!(rc, 0, "cannot protect the stack guard page");
        Stack { mapping, mapping_len, arena_slot: None }
    }

    /// A stack like [`Stack::new`] whose usable pages carry protection key
    /// `key` (0: the default key, as [`Stack::new`]). In an `mpk` image it
    /// is a slot of the gate-stack arena's row with that key (keyed at
    /// start-up, since the image allows no `pkey_mprotect` afterwards);
    /// elsewhere a fresh mapping given the key.
    pub fn with_key(size: usize, key: u32) -> Stack {
        if let Some((row, slot, top)) = crate::gatestack::take_keyed_stack(key, size) {
            let len = crate::gatestack::STACK_SIZE + PAGE_SIZE;
            let mapping = NonNull::new((top - len) as *mut u8).expect("an arena slot is not at address 0");
            return Stack { mapping, mapping_len: len, arena_slot: Some((row, slot)) };
        }
        let stack = Stack::new(size);
        // A new mapping may lie where an old stack's frames left redzones.
        crate::kasan::unpoison_stack(stack.top() as usize - stack.size(), stack.size());
        if key != 0 {
            // SAFETY: the usable part of the mapping just created, unused yet.
            unsafe { crate::pkey::protect(stack.mapping.as_ptr() as usize + PAGE_SIZE, stack.size(), key, true) }
                .unwrap_or_else(|e| panic!("cannot give a stack protection key {key}: {e}"));
        }
        stack
    }

    /// A stack for the compartment that is running: with the protection key
    /// of its stacks in images with `mpk` compartments.
    pub fn for_running_compartment(size: usize) -> Stack {
        Stack::with_key(size, crate::pkey::stack_key(crate::compartment::current()))
    }

    /// The usable size in bytes (without the guard page).
    pub fn size(&self) -> usize {
        self.mapping_len - PAGE_SIZE
    }

    /// The highest address of the stack (exclusive), 16-byte aligned.
    pub fn top(&self) -> *mut u8 {
        // SAFETY: one past the end of the mapping, computed inside its bounds.
        unsafe { self.mapping.as_ptr().add(self.mapping_len) }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some((row, slot)) = self.arena_slot {
            // SAFETY: the slot this stack took; by the contract of
            // `context`, no context runs on it any more.
            unsafe { crate::gatestack::give_back_keyed_stack(row, slot) };
            return;
        }
        // SAFETY: the mapping is ours and, by the contract of `context`, no
        // context runs on it any more when its Stack is dropped.
        unsafe { libc::munmap(self.mapping.as_ptr().cast(), self.mapping_len) };
    }
}
