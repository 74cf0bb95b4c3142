//! Buffers in the shared heap and the handles that cross gates.

use crate::Crossing;
use crate::wire::{Reader, Writer};
use core::alloc::Layout;
use core::marker::PhantomData;
use core::ops::Range;
use core::ptr::NonNull;
use flexos_alloc::{SHARED, alloc_in, alloc_shared_for, free, free_shared_for, is_shared};

/// A byte buffer allocated from the shared heap. Lend it across a gate with
/// [`SharedBuf::shared`] or [`SharedBuf::shared_mut`].
pub struct SharedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl SharedBuf {
    /// A zero-filled shared buffer of `len` bytes.
    pub fn zeroed(len: usize) -> SharedBuf {
        if len == 0 {
            return SharedBuf { ptr: NonNull::dangling(), len };
        }
        let layout = Layout::from_size_align(len, 16).expect("shared buffer too large");
        let p = alloc_in(SHARED, layout);
        let Some(ptr) = NonNull::new(p) else { std::alloc::handle_alloc_error(layout) };
        // SAFETY: `ptr` is a fresh allocation of `len` bytes.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        SharedBuf { ptr, len }
    }

    /// The address of its first byte.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A shared buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> SharedBuf {
        let mut b = SharedBuf::zeroed(bytes.len());
        b.write_at(0, bytes);
        b
    }

    /// A read-only handle to the whole buffer.
    pub fn shared(&self) -> SharedRef<'_> {
        SharedRef { ptr: self.ptr, len: self.len, _lent: PhantomData }
    }

    /// A writable handle to the whole buffer.
    pub fn shared_mut(&mut self) -> SharedMut<'_> {
        SharedMut { ptr: self.ptr, len: self.len, _lent: PhantomData }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `src` at byte `offset` (panics if it does not fit).
    pub fn write_at(&mut self, offset: usize, src: &[u8]) {
        self.shared_mut().write_at(offset, src)
    }

    /// Copies the bytes at `offset` into `out` (panics if out of bounds).
    /// Like every read of shared memory, a copy: another domain may change
    /// the buffer at any time, so what the owner decides on must be a copy
    /// it read once (there is no in-place view).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.shared().slice(offset..offset + out.len()).copy_to_slice(out)
    }

    /// The first `len` bytes, copied into private memory.
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        self.shared().slice(0..len).to_vec()
    }
}

impl Drop for SharedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this layout, freed once here.
            unsafe { free(self.ptr.as_ptr(), Layout::from_size_align_unchecked(self.len, 16)) };
        }
    }
}

/// A shared local: a zero-filled byte buffer that lives as long as the
/// stack slot it was declared with ([`shared_local!`](crate::shared_local)),
/// placed by the data-sharing strategy of the declaring compartment:
///
/// * `dss` (data shadow stack): the slot's *mirror* in the shadow stack of
///   the stack the code runs on, which carries the shared key; taking it is
///   a few instructions. Stacks that gates did not make (a thread's first
///   stack) have no shadow stack; there the heap strategy is used.
/// * `heap` (and `shared-stack`): an allocation from the shared heap,
///   freed at scope end.
pub struct SharedLocal<'a> {
    ptr: NonNull<u8>,
    len: usize,
    /// The declaring compartment, when the local is an allocation from
    /// its part of the shared heap (not a mirror).
    heap_of: Option<usize>,
    _slot: PhantomData<&'a mut [u8]>,
}

impl<'a> SharedLocal<'a> {
    /// The shared local of compartment `COMPARTMENT` for stack slot `slot`
    /// (use [`shared_local!`](crate::shared_local)).
    #[inline(always)]
    pub fn new<const COMPARTMENT: usize, const N: usize>(
        slot: &'a mut core::mem::MaybeUninit<[u8; N]>,
    ) -> SharedLocal<'a> {
        if crate::layout::COMPARTMENTS[COMPARTMENT].sharing == "dss"
            && let Some(mirror) = crate::mpk::dss_mirror(slot.as_ptr() as usize, N)
        {
            // SAFETY: the mirror of a live stack slot of `N` bytes: shadow
            // stack memory that no other live slot maps to.
            unsafe { core::ptr::write_bytes(mirror as *mut u8, 0, N) };
            let ptr = NonNull::new(mirror as *mut u8).expect("mirrors are not null");
            return SharedLocal { ptr, len: N, heap_of: None, _slot: PhantomData };
        }
        Self::in_heap::<COMPARTMENT, N>()
    }

    /// A shared local of `N` bytes in compartment `COMPARTMENT`'s part of
    /// the shared heap, which it names by its identity rather than have the
    /// allocator find it from the thread's rights
    /// ([`flexos_alloc::alloc_shared_for`]). Out of line: the `dss` path
    /// stays short.
    #[inline(never)]
    fn in_heap<const COMPARTMENT: usize, const N: usize>() -> SharedLocal<'a> {
        let (compartment, len) = (COMPARTMENT, N);
        if len == 0 {
            return SharedLocal { ptr: NonNull::dangling(), len: 0, heap_of: None, _slot: PhantomData };
        }
        let p = alloc_shared_for(compartment, Self::layout(len));
        let Some(ptr) = NonNull::new(p) else { std::alloc::handle_alloc_error(Self::layout(len)) };
        // SAFETY: `ptr` is a fresh allocation of `len` bytes.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        SharedLocal { ptr, len, heap_of: Some(compartment), _slot: PhantomData }
    }

    /// The layout of a shared local of `len` bytes in the shared heap.
    #[inline(always)]
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, 16).expect("shared local too large")
    }

    /// Whether it lives in a data shadow stack (else in the shared heap).
    pub fn is_mirror(&self) -> bool {
        self.heap_of.is_none()
    }

    /// A read-only handle to the whole local.
    pub fn shared(&self) -> SharedRef<'_> {
        SharedRef { ptr: self.ptr, len: self.len, _lent: PhantomData }
    }

    /// A writable handle to the whole local.
    pub fn shared_mut(&mut self) -> SharedMut<'_> {
        SharedMut { ptr: self.ptr, len: self.len, _lent: PhantomData }
    }

    /// Writes `src` at byte `offset` (panics if it does not fit).
    pub fn write_at(&mut self, offset: usize, src: &[u8]) {
        self.shared_mut().write_at(offset, src)
    }

    /// The bytes, copied into private memory (see [`SharedBuf::read_at`]).
    pub fn to_vec(&self) -> Vec<u8> {
        self.shared().to_vec()
    }
}

impl Drop for SharedLocal<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if let Some(compartment) = self.heap_of {
            free_local(compartment, self.ptr, self.len);
        }
    }
}

/// Frees the shared local at `ptr` of `len` bytes that `SharedLocal::in_heap` made for `compartment`.
#[inline(never)]
fn free_local(compartment: usize, ptr: NonNull<u8>, len: usize) {
    // SAFETY: allocated in `in_heap` for `compartment` with this layout,
    // freed once here (by the local's drop).
    unsafe { free_shared_for(compartment, ptr.as_ptr(), SharedLocal::layout(len)) };
}

/// A read-only view of shared memory, valid while the buffer it came from is borrowed.
#[derive(Clone, Copy)]
pub struct SharedRef<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _lent: PhantomData<&'a [u8]>,
}

impl<'a> SharedRef<'a> {
    /// A handle to `[ptr, ptr + len)` made from raw parts, whatever memory
    /// that is. Only the attack tests use it, to show that gates refuse a
    /// handle into private memory.
    ///
    /// # Safety
    /// The caller must not read through it unless the range is live shared
    /// memory for `'a`; gates validate it before the callee sees it.
    #[doc(hidden)]
    pub unsafe fn forge(ptr: *const u8, len: usize) -> SharedRef<'a> {
        SharedRef { ptr: NonNull::new(ptr.cast_mut()).expect("a non-null address"), len, _lent: PhantomData }
    }

    /// Copies the bytes into `out`, which must be exactly as long (panics
    /// otherwise). Another domain may be changing them meanwhile: each byte
    /// is read once, so whatever the callee decides, it decides on `out`,
    /// which nobody else can change. Shared bytes are looked at in place
    /// only where no other domain exists ([`SharedRef::in_place`]): a
    /// check and a later use of the same shared byte could see two
    /// different values.
    pub fn copy_to_slice(&self, out: &mut [u8]) {
        assert_eq!(out.len(), self.len, "copy of a shared view into a slice of another length");
        // SAFETY: made from a SharedBuf (or a sub-range of a handle made from
        // one, or validated by the gate to lie in the shared heap) that is
        // live for 'a; `out` is private memory of the same length. The
        // shared bytes may change during the copy (plain bytes, any value valid).
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), self.len) }
    }

    /// Runs `f` on a private copy of the bytes (see
    /// [`SharedRef::copy_to_slice`]), on the stack when they are short
    /// (256 bytes or fewer: names, paths), else on the heap.
    pub fn with_copy<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        const SHORT: usize = 256;
        if self.len <= SHORT {
            let mut buf = [0u8; SHORT];
            self.copy_to_slice(&mut buf[..self.len]);
            f(&buf[..self.len])
        } else {
            f(&self.to_vec())
        }
    }

    /// Appends a copy of the bytes to `out` (see
    /// [`SharedRef::copy_to_slice`]), without first zero-filling the room
    /// they take; fails, changing nothing, when `out` cannot grow.
    pub fn append_to(&self, out: &mut Vec<u8>) -> Result<(), std::collections::TryReserveError> {
        out.try_reserve(self.len)?;
        let start = out.len();
        // SAFETY: the source is live shared memory for 'a (as in
        // `copy_to_slice`); the destination is the `self.len` bytes of room
        // just reserved after `out`'s end, which nothing else can reach, and
        // the copy initializes them all before the length takes them in.
        unsafe {
            core::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr().add(start), self.len);
            out.set_len(start + self.len);
        }
        Ok(())
    }

    /// The bytes themselves, without a copy, in an image that is one
    /// protection domain ([`flexos_layout::is_one_domain`]: every
    /// compartment `fcall`); `None` in any image with `mpk`, `proc` or
    /// `kvm` compartments, where another domain may change the bytes while
    /// they are read, and a reader must copy them once
    /// ([`SharedRef::copy_to_slice`], [`SharedRef::append_to`]). Where the
    /// image is one domain, the copy protects against nobody: the only
    /// writers are the image's own handles, and a writable one
    /// ([`SharedMut`]) exists only while its buffer is mutably borrowed,
    /// which this view's borrow (`'a`) excludes.
    pub fn in_place(&self) -> Option<&'a [u8]> {
        if !crate::layout::is_one_domain() {
            return None;
        }
        // SAFETY: live shared memory for 'a (as in `copy_to_slice`), and in
        // an image of one domain nothing writes it during 'a: no other
        // domain exists, and every handle that writes borrows its buffer
        // mutably, which the borrow behind this view excludes.
        Some(unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// The bytes, copied into private memory (see [`SharedRef::copy_to_slice`]).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_to_slice(&mut v);
        v
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte (for hints that name shared memory
    /// without reading it: [`crate::remote::announce`]).
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The sub-range `range` of this view. Panics if it is out of bounds.
    pub fn slice(&self, range: Range<usize>) -> SharedRef<'a> {
        assert!(range.start <= range.end && range.end <= self.len, "shared slice out of bounds");
        // SAFETY: in bounds (checked above).
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(range.start)) };
        SharedRef { ptr, len: range.end - range.start, _lent: PhantomData }
    }
}

/// A writable view of shared memory, valid while the buffer it came from is mutably borrowed.
pub struct SharedMut<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _lent: PhantomData<&'a mut [u8]>,
}

impl<'a> SharedMut<'a> {
    /// Asks the CPU to take the buffer's cache lines for writing ahead of
    /// the writes (`prefetchw`): where another domain's core read them
    /// last, the writes then find them owned instead of each waiting for
    /// the other core to let go. A hint: it changes no byte.
    pub fn prepare_for_writes(&self) {
        for line in (self.ptr.as_ptr() as usize..self.ptr.as_ptr() as usize + self.len).step_by(64) {
            // SAFETY: a prefetch loads nothing into a register and never
            // faults; the lines are this handle's shared memory.
            unsafe {
                core::arch::asm!("prefetchw byte ptr [{}]", in(reg) line, options(nostack, readonly, preserves_flags))
            };
        }
    }

    /// Writes `src` at byte `offset` (panics if it does not fit).
    pub fn write_at(&mut self, offset: usize, src: &[u8]) {
        assert!(offset <= self.len && src.len() <= self.len - offset, "shared write out of bounds");
        // SAFETY: in bounds (checked) of shared memory live for 'a.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) }
    }

    /// Copies the bytes at `offset` into `out` (panics if out of bounds);
    /// each byte is read once, as with [`SharedRef::copy_to_slice`].
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        assert!(offset <= self.len && out.len() <= self.len - offset, "shared read out of bounds");
        // SAFETY: in bounds (checked) of shared memory live for 'a; `out` is private.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `range`, consuming this handle. Panics if out of bounds.
    pub fn slice_mut(self, range: Range<usize>) -> SharedMut<'a> {
        assert!(range.start <= range.end && range.end <= self.len, "shared slice out of bounds");
        // SAFETY: in bounds (checked above).
        let ptr = unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(range.start)) };
        SharedMut { ptr, len: range.end - range.start, _lent: PhantomData }
    }

    /// A shorter-lived handle to the same bytes, so this one can be used again afterwards.
    pub fn reborrow(&mut self) -> SharedMut<'_> {
        SharedMut { ptr: self.ptr, len: self.len, _lent: PhantomData }
    }
}

fn in_shared_memory(ptr: NonNull<u8>, len: usize) -> bool {
    len == 0 || is_shared(ptr.as_ptr() as usize, len)
}

/// A handle's encoding: address and length, 64 bits each.
fn encode_handle(ptr: NonNull<u8>, len: usize, w: &mut Writer) {
    (ptr.as_ptr() as usize, len).encode(w)
}

/// Reads a handle's address and length; a null address does not decode.
/// (Whether it lies in shared memory is `validate`'s question.)
fn decode_handle(r: &mut Reader) -> Option<(NonNull<u8>, usize)> {
    let (addr, len): (usize, usize) = Crossing::decode(r)?;
    Some((NonNull::new(addr as *mut u8)?, len))
}

// SAFETY: a handle to shared memory only; `validate` checks that it lies
// there. A decoded handle is used by the callee only after `validate`.
unsafe impl Crossing for SharedRef<'_> {
    const MAX_ENCODED: usize = 16;
    fn validate(&self) -> bool {
        in_shared_memory(self.ptr, self.len)
    }
    fn encode(&self, w: &mut Writer) {
        encode_handle(self.ptr, self.len, w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        let (ptr, len) = decode_handle(r)?;
        Some(SharedRef { ptr, len, _lent: PhantomData })
    }
}

// SAFETY: as for SharedRef.
unsafe impl Crossing for SharedMut<'_> {
    const MAX_ENCODED: usize = 16;
    fn validate(&self) -> bool {
        in_shared_memory(self.ptr, self.len)
    }
    fn encode(&self, w: &mut Writer) {
        encode_handle(self.ptr, self.len, w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        let (ptr, len) = decode_handle(r)?;
        Some(SharedMut { ptr, len, _lent: PhantomData })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_live_in_the_shared_heap() {
        let mut b = SharedBuf::from_slice(b"hello world");
        assert_eq!(b.to_vec(11), b"hello world");
        assert!(b.shared().validate());
        assert_eq!(b.shared().slice(6..11).to_vec(), b"world");
        let mut m = b.shared_mut().slice_mut(0..5);
        m.write_at(0, b"HELLO");
        let mut back = [0; 4];
        m.read_at(1, &mut back);
        assert_eq!(&back, b"ELLO");
        assert!(m.validate());
        assert_eq!(b.to_vec(11), b"HELLO world");
        let mut whole = [0; 11];
        b.read_at(0, &mut whole);
        assert_eq!(&whole, b"HELLO world");
        let mut appended = b"say ".to_vec();
        b.shared().slice(0..5).append_to(&mut appended).unwrap();
        b.shared().slice(5..5).append_to(&mut appended).unwrap();
        assert_eq!(appended, b"say HELLO");
        assert_eq!(flexos_alloc::owner_of(b.as_mut_ptr() as usize), Some(SHARED));
        assert!(SharedBuf::zeroed(0).shared().validate());
    }

    #[test]
    fn a_handle_into_private_memory_fails_validation() {
        let private = [7u8; 32];
        let forged = SharedRef { ptr: NonNull::from(&private[0]), len: 32, _lent: PhantomData };
        assert!(!forged.validate());
        assert!(!(1u32, forged).validate());
        assert!(!Some(forged).validate());
    }
}
