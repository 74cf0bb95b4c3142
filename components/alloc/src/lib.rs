//! Heaps: one per compartment, plus the shared heap (DESIGN section 3).
//!
//! One address-space reservation is cut into equal spans, one per heap, so
//! the heap that owns an address is found by arithmetic and the shared heap
//! is one contiguous range that gates can validate handles against. Each
//! span is managed by a `talc` allocator behind a spin lock. The global
//! allocator ([`CompartmentAllocator`]) serves the heap of the compartment
//! that is running (`flexos_platform::compartment::current`) and frees into
//! whichever heap owns the pointer.
//!
//! This crate is part of the trusted core: it hands out raw memory, so
//! `unsafe` is allowed here, with the reason for soundness at each block.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicUsize, Ordering};
use flexos_platform::compartment::{self, MAX_COMPARTMENTS};
use flexos_platform::memory::Region;
use talc::{ErrOnOom, Span, Talc};

/// The index of the shared heap (after every compartment's heap).
pub const SHARED: usize = MAX_COMPARTMENTS;
/// How many heaps exist.
pub const HEAPS: usize = MAX_COMPARTMENTS + 1;
/// Address space reserved for each heap (backed by memory only when touched).
pub const HEAP_SPAN: usize = 1 << 30;

struct Heap {
    talc: spin::Mutex<Option<Talc<ErrOnOom>>>,
    in_use: AtomicUsize,
    allocations: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_HEAP: Heap =
    Heap { talc: spin::Mutex::new(None), in_use: AtomicUsize::new(0), allocations: AtomicUsize::new(0) };

struct Heaps {
    region: spin::Once<Region>,
    heaps: [Heap; HEAPS],
}

static HEAPS_STATE: Heaps = Heaps { region: spin::Once::new(), heaps: [EMPTY_HEAP; HEAPS] };

fn region() -> &'static Region {
    HEAPS_STATE.region.call_once(|| match Region::reserve(HEAP_SPAN * HEAPS) {
        Some(r) => r,
        None => {
            flexos_platform::console::write_err(b"flexos-alloc: cannot reserve heap address space\n");
            flexos_platform::process_abort()
        }
    })
}

fn span_of(heap: usize) -> (usize, usize) {
    let base = region().base.as_ptr() as usize + heap * HEAP_SPAN;
    (base, HEAP_SPAN)
}

/// The shared heap's span as a region.
fn shared_region() -> Region {
    let (base, len) = span_of(SHARED);
    Region { base: core::ptr::NonNull::new(base as *mut u8).expect("heaps are mapped"), len }
}

/// The heap that owns `addr`, if any.
pub fn owner_of(addr: usize) -> Option<usize> {
    let r = region();
    let base = r.base.as_ptr() as usize;
    (addr >= base && addr < base + r.len).then(|| (addr - base) / HEAP_SPAN)
}

/// The address range `[start, end)` of the shared heap.
pub fn shared_range() -> (usize, usize) {
    let (base, len) = span_of(SHARED);
    (base, base + len)
}

/// Whether `[addr, addr + len)` lies entirely inside the shared heap.
pub fn is_shared(addr: usize, len: usize) -> bool {
    shared_region().contains(addr, len)
}

/// Allocates from heap `heap` (a compartment index or [`SHARED`]); null when it is exhausted.
pub fn alloc_in(heap: usize, layout: Layout) -> *mut u8 {
    assert!(heap < HEAPS, "heap index {heap} out of range");
    let h = &HEAPS_STATE.heaps[heap];
    let mut talc = h.talc.lock();
    let talc = talc.get_or_insert_with(|| {
        let (base, len) = span_of(heap);
        let mut t = Talc::new(ErrOnOom);
        // SAFETY: the span is this heap's part of a reservation that is
        // readable, writable, never unmapped and used by no one else.
        unsafe { t.claim(Span::from_base_size(base as *mut u8, len)) }.ok();
        t
    });
    // SAFETY: talc was given memory above; layout sizes may be zero-sized
    // only through GlobalAlloc, whose callers never pass size 0.
    match unsafe { talc.malloc(layout) } {
        Ok(p) => {
            h.in_use.fetch_add(layout.size(), Ordering::Relaxed);
            h.allocations.fetch_add(1, Ordering::Relaxed);
            p.as_ptr()
        }
        Err(()) => null_mut(),
    }
}

/// Frees memory returned by [`alloc_in`] (from any heap) with the same layout.
///
/// # Safety
/// `ptr` must come from [`alloc_in`] or [`CompartmentAllocator`] with `layout`, and not be freed twice.
pub unsafe fn free(ptr: *mut u8, layout: Layout) {
    let Some(heap) = owner_of(ptr as usize) else {
        flexos_platform::console::write_err(b"flexos-alloc: free of a pointer outside every heap\n");
        flexos_platform::process_abort()
    };
    let h = &HEAPS_STATE.heaps[heap];
    let mut talc = h.talc.lock();
    if let (Some(talc), Some(p)) = (talc.as_mut(), NonNull::new(ptr)) {
        // SAFETY: by this function's contract the pointer came from this heap
        // (the owner is found by address) with `layout`.
        unsafe { talc.free(p, layout) };
        h.in_use.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Usage of one heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes currently allocated.
    pub in_use: usize,
    /// Allocations served since start.
    pub allocations: usize,
}

/// Usage of heap `heap`.
pub fn stats(heap: usize) -> HeapStats {
    let h = &HEAPS_STATE.heaps[heap];
    HeapStats { in_use: h.in_use.load(Ordering::Relaxed), allocations: h.allocations.load(Ordering::Relaxed) }
}

/// The global allocator of an image: serves the running compartment's heap.
/// Install it with `#[global_allocator] static A: CompartmentAllocator = CompartmentAllocator;`.
pub struct CompartmentAllocator;

// SAFETY: alloc returns fresh, suitably aligned memory from a talc heap or
// null; dealloc returns it to the heap that owns it; both are serialized per
// heap by the heap's lock.
unsafe impl GlobalAlloc for CompartmentAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        alloc_in(compartment::current(), layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract is this function's contract.
        unsafe { free(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_heap_owns_its_allocations() {
        let layout = Layout::from_size_align(100, 16).unwrap();
        let a = alloc_in(1, layout);
        let b = alloc_in(2, layout);
        let s = alloc_in(SHARED, layout);
        assert!(!a.is_null() && !b.is_null() && !s.is_null());
        assert_eq!(a as usize % 16, 0);
        assert_eq!(owner_of(a as usize), Some(1));
        assert_eq!(owner_of(b as usize), Some(2));
        assert_eq!(owner_of(s as usize), Some(SHARED));
        assert!(is_shared(s as usize, 100));
        assert!(!is_shared(a as usize, 100));
        let (start, end) = shared_range();
        assert!(!is_shared(end - 8, 16), "a range running off the end is not shared");
        assert!(is_shared(start, end - start));
        assert!(!is_shared(start, usize::MAX));
        assert_eq!(owner_of(&layout as *const _ as usize), None);
        unsafe {
            core::ptr::write_bytes(a, 0xaa, 100);
            free(a, layout);
            free(b, layout);
            free(s, layout);
        }
    }

    #[test]
    fn usage_is_counted_and_memory_is_reused() {
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let before = stats(3);
        let p = alloc_in(3, layout);
        assert_eq!(stats(3).in_use, before.in_use + 4096);
        unsafe { free(p, layout) };
        assert_eq!(stats(3).in_use, before.in_use);
        let q = alloc_in(3, layout);
        assert_eq!(p, q, "freed memory is reused");
        unsafe { free(q, layout) };
    }

    #[test]
    fn exhaustion_returns_null() {
        let layout = Layout::from_size_align(HEAP_SPAN * 2, 8).unwrap();
        assert!(alloc_in(4, layout).is_null());
    }
}
