//! Heaps: one per compartment, plus the shared heap (DESIGN section 3).
//!
//! One address-space reservation is cut into equal spans, one per heap, so
//! the heap that owns an address is found by arithmetic and the shared heap
//! is one contiguous range that gates can validate handles against. Each
//! span is managed by a `talc` allocator behind a spin lock.
//!
//! In images with `proc` or `kvm` compartments the shared span is a
//! shared-memory object mapped at the same address in every domain. Each
//! domain allocates shared buffers from its own part of it. Shared memory
//! holds plain bytes only: `talc` keeps its free lists and chunk tags
//! inside the memory it manages, so for a part of the shared heap it
//! manages a *shadow* instead, an equally long range of the domain's
//! private span that is never handed out, and every address it returns is
//! moved by the same offset into the part. The metadata therefore lives in
//! private memory, where no other domain can corrupt it; only the pages of
//! the shadow that hold metadata are ever touched. The span also holds the
//! control area of the remote gates.
//!
//! In the host of an image with `mpk` compartments, the same holds between
//! compartments: every `mpk` compartment allocates shared memory from a
//! part of its own (the part with its index, which no domain uses), whose
//! shadow lies in its own span, under its own protection key, so that no
//! other compartment can write that part's metadata. A block of another
//! compartment's part is freed by its owner, through a gate
//! ([`free`]); the owner frees only blocks it handed out and has not
//! freed: each live block has a record in the shadow, under the owner's
//! key ([`RECORD`]). The global
//! allocator ([`CompartmentAllocator`]) serves the heap of the compartment
//! that is running (`flexos_platform::compartment::current`) and frees into
//! whichever heap owns the pointer.
//!
//! This crate is part of the trusted core: it hands out raw memory, so
//! `unsafe` is allowed here, with the reason for soundness at each block.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use flexos_layout::{COMPARTMENTS, Mechanism, has_remote_domains};
use flexos_platform::compartment::{self, MAX_COMPARTMENTS};
use flexos_platform::domain;
use flexos_platform::memory::{self, Region};
use talc::{ErrOnOom, Span, Talc};

/// The heap index that means "the shared heap" (after every compartment's heap).
pub const SHARED: usize = MAX_COMPARTMENTS;
/// How many heap indices exist.
pub const HEAPS: usize = MAX_COMPARTMENTS + 1;
/// Address space reserved for each compartment's private memory (backed by memory only when touched).
pub const HEAP_SPAN: usize = 1 << 30;
/// The top of each compartment's private span that is not heap: the
/// execution stacks of the threads (vCPUs) that run it in a VM.
pub const EXEC_STACKS_LEN: usize = 64 << 20;
/// The part of the shared heap from which one domain allocates.
pub const SHARED_PART: usize = 256 << 20;
/// A compartment's private heap: its span less the shadow of its
/// domain's part of the shared heap and the execution stacks above it.
pub const PRIVATE_HEAP_LEN: usize = HEAP_SPAN - SHARED_PART - EXEC_STACKS_LEN;
/// The shared control area at the start of the shared span (remote gates' call frames).
pub const CONTROL_LEN: usize = SHARED_PART;
/// The start of the control area that every domain maps: the words that
/// wake domains up.
pub const CONTROL_COMMON_LEN: usize = 2 << 20;
/// The part of the control area that holds the call frames between one
/// pair of domains; only those two domains map it.
pub const CONTROL_PAIR_LEN: usize = 2 << 20;
const _: () =
    assert!(CONTROL_COMMON_LEN + MAX_COMPARTMENTS * (MAX_COMPARTMENTS - 1) / 2 * CONTROL_PAIR_LEN <= CONTROL_LEN);
/// The shared span: the control area, then one part per compartment.
pub const SHARED_SPAN: usize = CONTROL_LEN + MAX_COMPARTMENTS * SHARED_PART;
/// The whole reservation: every private heap, then the shared span.
pub const REGION_LEN: usize = MAX_COMPARTMENTS * HEAP_SPAN + SHARED_SPAN;

/// One heap's allocator state. It lives in the first [`STATE_LEN`] bytes of
/// the range whose metadata `talc` keeps ([`managed_span`]), never in a
/// static: in an `mpk` image the statics carry the trusted core's key,
/// which the other compartments may only read, while each compartment's
/// heap carries its own key (and the shadow of the shared heap key 0). All
/// zeros (fresh memory) is the valid empty state.
#[repr(C)]
struct Heap {
    /// The spin lock around `talc`.
    locked: AtomicBool,
    /// Whether `talc` was set up (read and written under the lock).
    ready: AtomicBool,
    talc: UnsafeCell<MaybeUninit<Talc<ErrOnOom>>>,
    /// What to add to an address talc hands out ([`handed_out_offset`]; set with `talc`).
    offset: AtomicUsize,
    in_use: AtomicUsize,
    allocations: AtomicUsize,
    /// `kasan`'s quarantine of freed blocks (oldest first, linked through
    /// each block's left redzone) and its size in bytes; under the lock.
    quarantine_head: AtomicUsize,
    quarantine_tail: AtomicUsize,
    quarantine_bytes: AtomicUsize,
    /// A word of the heap's owner ([`owner_word`]).
    owner_word: AtomicUsize,
}

/// The bytes at the start of each managed range that hold its [`Heap`].
const STATE_LEN: usize = 4096;
const _: () = assert!(size_of::<Heap>() <= STATE_LEN);

/// The memory a heap index resolves to: a compartment's private heap, or
/// one part of the shared heap ([`my_part`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arena {
    /// Compartment `c`'s private heap.
    Private(usize),
    /// Part `p` of the shared heap.
    Part(usize),
}

/// The first word of a live shared block's record, XORed with the block's
/// address; the second holds its size (shifted by 8) and the log2 of its
/// alignment. The record lies in the shadow at the block's own place, in
/// bytes that talc does not use while the block is allocated, so only the
/// part's owner can write it. Its top bit is set, which no pointer or tag of
/// talc's (user-space addresses) has, so no metadata passes for a record.
const RECORD: usize = 0xA110_C000_0000_0000;

/// The least a shared block holds (its record must fit in its shadow).
const RECORD_LEN: usize = 16;

/// A locked heap's allocator, set up on first use.
struct Locked<'a> {
    heap: &'a Heap,
}

impl Heap {
    #[inline]
    fn lock(&self, heap: Arena) -> Locked<'_> {
        while self.locked.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            core::hint::spin_loop();
        }
        if !self.ready.load(Ordering::Relaxed) {
            self.set_up(heap);
        }
        Locked { heap: self }
    }

    /// Gives talc the heap's memory (under the lock, on first use).
    #[cold]
    #[inline(never)]
    fn set_up(&self, heap: Arena) {
        let (base, len) = managed_span(heap);
        let mut t = Talc::new(ErrOnOom);
        // SAFETY: the range past the state is this heap's part (or its
        // shadow) of a reservation that is readable, writable, never
        // unmapped and used by no one else.
        unsafe { t.claim(Span::from_base_size((base + STATE_LEN) as *mut u8, len - STATE_LEN)) }.ok();
        // SAFETY: under the lock (the caller's); nothing reads `talc` before `ready`.
        unsafe { (*self.talc.get()).write(t) };
        self.offset.store(handed_out_offset(heap), Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }
}

impl Locked<'_> {
    fn talc(&mut self) -> &mut Talc<ErrOnOom> {
        // SAFETY: set up in `lock`; the lock gives this guard the only access.
        unsafe { (*self.heap.talc.get()).assume_init_mut() }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.heap.locked.store(false, Ordering::Release);
    }
}

/// This process's memory: the reservation and the shared-memory object, if any.
struct Setup {
    region: Region,
    shm_fd: Option<i32>,
}

/// This process's memory, set up once (before any compartment runs).
static SETUP: spin::Once<Setup> = spin::Once::new();

/// The allocator state of `heap`.
#[inline]
fn heap_state(heap: Arena) -> &'static Heap {
    let region = setup().region.base.as_ptr() as usize;
    // The start of `managed_span(heap)`, computed with one look at the setup.
    let base = match heap {
        Arena::Part(p) => region + p * HEAP_SPAN + PRIVATE_HEAP_LEN,
        Arena::Private(c) => region + c * HEAP_SPAN,
    };
    // SAFETY: every heap this process allocates from or frees into has its
    // managed range mapped readable and writable for the process's life,
    // and its first STATE_LEN bytes are only ever used as this `Heap`
    // (all zeros is its empty state; every field is atomic or behind its lock).
    unsafe { &*(base as *const Heap) }
}

fn fail(message: &[u8]) -> ! {
    flexos_platform::console::write_err(message);
    flexos_platform::process_abort()
}

/// Sets up this process's memory on first use:
/// * host of an image without `proc`/`kvm` compartments: one private reservation;
/// * host of an image with them: the shared span becomes a shared-memory
///   object (to be mapped by the other domains at the same address), and the
///   private heaps of the remote compartments are made inaccessible here;
/// * a compartment's process: the same reservation at the host's address,
///   inaccessible except its own heap and the shared span.
fn setup() -> &'static Setup {
    SETUP.call_once(|| {
        // Read once now, while the statics are still writable.
        compartment::home();
        if let Some(role) = domain::child_role() {
            let Some(region) = Region::reserve_at(role.region_base, REGION_LEN) else {
                fail(b"flexos-alloc: cannot reserve the heaps at the host's address\n")
            };
            // SAFETY: the reservation is fresh; nothing is stored in it yet.
            // Of the shared span only the pieces this domain takes part in
            // are mapped; the shared-memory object is then closed, so that
            // nothing in this process can map the rest of it.
            unsafe {
                region.set_access(role.compartment * HEAP_SPAN, HEAP_SPAN, true);
                for (offset, len) in shared_pieces_of(role.compartment) {
                    if !region.map_shared(MAX_COMPARTMENTS * HEAP_SPAN + offset, len, role.shm_fd, offset) {
                        fail(b"flexos-alloc: cannot map the shared memory\n")
                    }
                }
                memory::close_shared_memory(role.shm_fd);
            }
            return Setup { region, shm_fd: None };
        }
        if !has_remote_domains() {
            let Some(region) = Region::reserve(REGION_LEN) else {
                fail(b"flexos-alloc: cannot reserve heap address space\n")
            };
            protect_with_keys(&region);
            return Setup { region, shm_fd: None };
        }
        let region = reserve_for_domains();
        let Some(fd) = memory::create_shared_memory(SHARED_SPAN) else {
            fail(b"flexos-alloc: cannot create the shared memory\n")
        };
        // SAFETY: the reservation is fresh; nothing is stored in it yet.
        // The host never runs `proc` compartments, so their heaps (and the
        // spans of compartments that do not exist) stay inaccessible here;
        // a `kvm` compartment's span backs its VM's memory, which needs it mapped.
        unsafe {
            if !region.map_shared(MAX_COMPARTMENTS * HEAP_SPAN, SHARED_SPAN, fd, 0) {
                fail(b"flexos-alloc: cannot map the shared memory\n")
            }
            for (i, c) in COMPARTMENTS.iter().enumerate() {
                if c.mechanism != Mechanism::Proc {
                    region.set_access(i * HEAP_SPAN, HEAP_SPAN, true);
                }
            }
        }
        protect_with_keys(&region);
        Setup { region, shm_fd: Some(fd) }
    })
}

/// In an image with `mpk` compartments: allocates the protection keys
/// (1, 2, ... for the `mpk` compartments in order, then the shared key),
/// gives each such compartment's span its key and the shared span the
/// shared key, gives the main thread's stack the key of the default
/// compartment's stacks, and sets this thread's PKRU to the default
/// compartment's rights. Without protection keys the image stops here with
/// a message: it never runs `mpk` compartments unprotected.
fn protect_with_keys(region: &Region) {
    use flexos_layout::{CORE_PKEY, PKEYS, PKRU, SHARED_PKEY, has_mpk, stack_domain};
    use flexos_platform::pkey;
    if !has_mpk() {
        return;
    }
    // The layout numbers the keys 1, 2, ... in order; pkey_alloc hands out the lowest free one.
    for expected in PKEYS.iter().copied().filter(|&k| k != 0).chain([SHARED_PKEY, CORE_PKEY]) {
        match pkey::allocate() {
            Ok(k) if k == expected => {}
            Ok(k) => fail_keys(
                b"protection key ",
                k as usize,
                b" was handed out where the layout expects another (a key was taken before the image started)\n",
            ),
            Err(e) => {
                let mpk = COMPARTMENTS.iter().position(|c| c.mechanism == Mechanism::Mpk).unwrap_or(0);
                let message = format_no_pku(COMPARTMENTS[mpk].name, e);
                fail(message.as_bytes())
            }
        }
    }
    let base = region.base.as_ptr() as usize;
    let stack_keys: [u32; MAX_COMPARTMENTS] = core::array::from_fn(|c| {
        if c >= COMPARTMENTS.len() {
            0
        } else {
            match stack_domain(c) {
                d if d == flexos_layout::SHARED_STACKS => SHARED_PKEY,
                d => PKEYS[d],
            }
        }
    });
    pkey::register(PKEYS, SHARED_PKEY, CORE_PKEY, &stack_keys);
    // SAFETY: the spans belong to this fresh reservation and hold nothing yet.
    unsafe {
        for (i, &key) in PKEYS.iter().enumerate() {
            if key != 0 && pkey::protect(base + i * HEAP_SPAN, HEAP_SPAN, key, true).is_err() {
                fail(b"flexos-alloc: pkey_mprotect of a compartment's heap failed\n")
            }
        }
        if pkey::protect(base + MAX_COMPARTMENTS * HEAP_SPAN, SHARED_SPAN, SHARED_PKEY, true).is_err() {
            fail(b"flexos-alloc: pkey_mprotect of the shared memory failed\n")
        }
        // The shadow of each `mpk` compartment's part of the shared heap lies
        // in its own span and keeps its key: only that compartment (and
        // `fcall` ones, which hold every key) writes that part's metadata.
        // The trusted core's statics (the program's writable segment: the
        // gates' registry, the platform's and std's state, the C library's
        // in a static image) get their own key, which every `mpk`
        // compartment but the default one may only read (flexos_layout::PKRU).
        // Nothing a compartment does writes them: the heaps keep their state
        // in their own memory (`Heap`).
        for (start, end) in pkey::writable_statics() {
            if start < end && pkey::protect(start, end - start, CORE_PKEY, true).is_err() {
                fail(b"flexos-alloc: cannot give the statics the trusted core's protection key\n")
            }
        }
    }
    // The main thread runs the default compartment on the stack the kernel
    // gave it, which gets the key of the default compartment's stacks (the
    // frames in use now too: pkey_alloc allowed every new key in this
    // thread's PKRU). The environment lives at the top of that stack, so it
    // is first copied to the C library's heap (key 0), where every
    // compartment may read it; the arguments stay on the stack (the
    // application's own code reads them).
    if !pkey::copy_environment_off_the_stack() {
        fail(b"flexos-alloc: cannot copy the environment\n")
    }
    if let Some((start, end)) = pkey::main_stack() {
        // SAFETY: the main thread's stack mapping; its key is allowed in
        // this thread's PKRU now and in the rights set below.
        if unsafe { pkey::protect(start, end - start, stack_keys[0], true) }.is_err() {
            fail(b"flexos-alloc: cannot give the main stack its protection key\n")
        }
    }
    // The host runs the default compartment: take its rights, with the same
    // checked sequence (and registration) as every gate.
    // SAFETY: the default compartment's rights allow key 0 (this code's
    // data), its own key and the shared key (its heap and stack).
    unsafe { flexos_platform::checked_wrpkru!(PKRU[0]) };
}

/// "flexos: compartment NAME uses mechanism mpk, but ...": built without allocating.
fn format_no_pku(name: &str, e: flexos_platform::pkey::Unavailable) -> FixedText {
    let mut t = FixedText { buf: [0; 512], len: 0 };
    t.push(b"flexos: compartment \"");
    t.push(name.as_bytes());
    t.push(b"\" uses mechanism \"mpk\", but this machine has no protection keys (pkey_alloc failed with errno ");
    t.push_number(e.errno as usize);
    t.push(b"; no `pku` flag in /proc/cpuinfo, or the kernel does not enable it). The image refuses to run its compartments unprotected: run it on a CPU with PKU (or under QEMU with -cpu max), or choose another mechanism.\n");
    t
}

fn fail_keys(before: &[u8], n: usize, after: &[u8]) -> ! {
    let mut t = FixedText { buf: [0; 512], len: 0 };
    t.push(b"flexos-alloc: ");
    t.push(before);
    t.push_number(n);
    t.push(after);
    fail(t.as_bytes())
}

/// A message built in a fixed buffer (the allocator cannot allocate for its own errors).
struct FixedText {
    buf: [u8; 512],
    len: usize,
}

impl FixedText {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn push_hex(&mut self, v: usize) {
        self.push(b"0x");
        let digits = (usize::BITS - v.leading_zeros()).div_ceil(4).max(1);
        for i in (0..digits).rev() {
            self.push(&[b"0123456789abcdef"[(v >> (4 * i)) & 15]]);
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Where the host of an image with other domains puts the heaps: a random
/// address between 16 and 64 TiB, below where Linux places executables,
/// libraries, stacks and `mmap`s, so that the same range is certainly free
/// in a freshly started compartment process (which maps it at the same
/// address). Retries other addresses if one is taken.
fn reserve_for_domains() -> Region {
    const LOW: usize = 16 << 40;
    const HIGH: usize = 64 << 40;
    for _ in 0..16 {
        let mut bytes = [0u8; 8];
        flexos_platform::random::fill(&mut bytes);
        let slots = (HIGH - LOW - REGION_LEN) / HEAP_SPAN;
        let base = LOW + (usize::from_le_bytes(bytes) % slots) * HEAP_SPAN;
        if let Some(region) = Region::reserve_at(base, REGION_LEN) {
            return region;
        }
    }
    fail(b"flexos-alloc: cannot reserve the heaps below 64 TiB\n")
}

/// The reservation that holds every heap (at the same address in every domain).
pub fn region() -> Region {
    setup().region
}

/// The file descriptor of the shared memory, in images with `proc`/`kvm` compartments.
pub fn shared_memory_fd() -> Option<i32> {
    setup().shm_fd
}

/// The start and length of `heap`'s memory: a compartment's private
/// heap, or a part of the shared heap.
fn span_of(heap: Arena) -> (usize, usize) {
    let base = setup().region.base.as_ptr() as usize;
    match heap {
        Arena::Part(p) => (base + MAX_COMPARTMENTS * HEAP_SPAN + CONTROL_LEN + p * SHARED_PART, SHARED_PART),
        Arena::Private(c) => (base + c * HEAP_SPAN, PRIVATE_HEAP_LEN),
    }
}

/// The range whose allocator metadata `talc` keeps for `heap`: the heap
/// itself for a private heap; for part `p` of the shared heap its shadow
/// in compartment `p`'s private span (between the private heap and the
/// execution stacks).
fn managed_span(heap: Arena) -> (usize, usize) {
    match heap {
        Arena::Part(p) => (shadow_of(p), SHARED_PART),
        Arena::Private(_) => span_of(heap),
    }
}

/// The arena that heap index `heap` names for the running compartment.
fn arena_of(heap: usize) -> Arena {
    if heap == SHARED { Arena::Part(my_part()) } else { Arena::Private(heap) }
}

/// Whether this process gives each `mpk` compartment a part of the shared
/// heap of its own: the host of an image with `mpk` compartments.
fn parts_per_compartment() -> bool {
    flexos_layout::has_mpk() && compartment::home() == 0
}

/// The part of the shared heap that the running compartment allocates
/// from: in the host of an image with `mpk` compartments, an `mpk`
/// compartment's own (the part with its index: only `proc` and `kvm`
/// compartments are domains, whose parts those are), else its domain's.
/// The compartment is the one whose rights the thread holds.
fn my_part() -> usize {
    if !parts_per_compartment() {
        return compartment::home();
    }
    part_of_compartment(compartment::current())
}

/// The part of the shared heap that compartment `c` allocates from when
/// it runs in this process (see [`my_part`]).
#[inline]
fn part_of_compartment(c: usize) -> usize {
    if !parts_per_compartment() {
        compartment::home()
    } else if c < COMPARTMENTS.len() && COMPARTMENTS[c].mechanism == Mechanism::Mpk {
        c
    } else {
        0
    }
}

/// The compartment that frees blocks of part `part` for this process:
/// the part's `mpk` compartment, or the default one for part 0 (the
/// host's, which `fcall` compartments share); `None` for another domain's part.
fn owner_of_part(part: usize) -> Option<usize> {
    let own = if parts_per_compartment() {
        part == 0 || (part < COMPARTMENTS.len() && COMPARTMENTS[part].mechanism == Mechanism::Mpk)
    } else {
        part == compartment::home()
    };
    own.then_some(part)
}

/// The part of the shared heap that holds `addr`, if any.
fn part_of(addr: usize) -> Option<usize> {
    let (start, end) = shared_range();
    (start..end).contains(&addr).then(|| (addr - start) / SHARED_PART)
}

/// Where the shadow of compartment `c`'s part of the shared heap starts.
fn shadow_of(c: usize) -> usize {
    setup().region.base.as_ptr() as usize + c * HEAP_SPAN + PRIVATE_HEAP_LEN
}

/// What is added to an address `talc` hands out for `heap` to get the
/// address of the memory (non-zero only for the shared heap's shadow).
fn handed_out_offset(heap: Arena) -> usize {
    span_of(heap).0.wrapping_sub(managed_span(heap).0)
}

/// The execution-stack area `[start, end)` at the top of compartment `compartment`'s private span.
pub fn exec_stack_area(compartment: usize) -> (usize, usize) {
    let end = setup().region.base.as_ptr() as usize + (compartment + 1) * HEAP_SPAN;
    (end - EXEC_STACKS_LEN, end)
}

/// The shared heap (every domain's part) as a region.
fn shared_region() -> Region {
    let (start, end) = shared_range();
    Region { base: NonNull::new(start as *mut u8).expect("heaps are mapped"), len: end - start }
}

/// The heap that owns `addr`, if any ([`SHARED`] for every part of the shared heap).
pub fn owner_of(addr: usize) -> Option<usize> {
    let base = setup().region.base.as_ptr() as usize;
    let offset = addr.checked_sub(base)?;
    match offset / HEAP_SPAN {
        i if i < MAX_COMPARTMENTS => Some(i),
        _ if shared_region().contains(addr, 1) => Some(SHARED),
        _ => None,
    }
}

/// The address range `[start, end)` of the shared heap (all domains' parts,
/// not the control area).
pub fn shared_range() -> (usize, usize) {
    let start = setup().region.base.as_ptr() as usize + MAX_COMPARTMENTS * HEAP_SPAN + CONTROL_LEN;
    (start, start + MAX_COMPARTMENTS * SHARED_PART)
}

/// The control area `[start, end)` of the shared span, used by remote gates.
pub fn control_area() -> (usize, usize) {
    let start = setup().region.base.as_ptr() as usize + MAX_COMPARTMENTS * HEAP_SPAN;
    (start, start + CONTROL_LEN)
}

/// The offset in the control area of the call frames between domains `a`
/// and `b` (two different domains: 0 for the host, else the compartment
/// that is the domain).
#[inline]
pub const fn control_pair_offset(a: usize, b: usize) -> usize {
    let (i, j) = if a < b { (a, b) } else { (b, a) };
    assert!(i != j && j < MAX_COMPARTMENTS, "no pair of two different domains");
    CONTROL_COMMON_LEN + (i * (2 * MAX_COMPARTMENTS - i - 1) / 2 + (j - i - 1)) * CONTROL_PAIR_LEN
}

/// The pieces `(offset, len)` of the shared span that domain `domain`
/// maps: the host all of it; any other domain the control area's common
/// part, the frames of the pairs of domains it belongs to, and the shared heap.
pub fn shared_pieces_of(domain: usize) -> impl Iterator<Item = (usize, usize)> {
    let host = domain == 0;
    let control: &[(usize, usize)] = if host { &[(0, CONTROL_LEN)] } else { &[(0, CONTROL_COMMON_LEN)] };
    let pairs = (0..MAX_COMPARTMENTS)
        .filter(move |&x| !host && x != domain)
        .map(move |x| (control_pair_offset(domain, x), CONTROL_PAIR_LEN));
    control.iter().copied().chain(pairs).chain(core::iter::once((CONTROL_LEN, MAX_COMPARTMENTS * SHARED_PART)))
}

/// The pieces `(start, len, in the control area)` of the shared span that
/// this domain has mapped writable: what a compromised compartment of this
/// domain can scribble on (the attack tests write every byte of them).
/// The shared heap is one piece per domain's part.
pub fn writable_shared_pieces() -> impl Iterator<Item = (usize, usize, bool)> {
    let span = setup().region.base.as_ptr() as usize + MAX_COMPARTMENTS * HEAP_SPAN;
    shared_pieces_of(compartment::home()).flat_map(move |(offset, len)| {
        let parts = if offset == CONTROL_LEN { MAX_COMPARTMENTS } else { 1 };
        (0..parts).map(move |i| {
            let piece_len = len / parts;
            (span + offset + i * piece_len, piece_len, offset < CONTROL_LEN)
        })
    })
}

/// For the attack tests (`rewrite-heap-metadata`): the address of the
/// word of part `part`'s allocator state that talc's addresses are moved by
/// to become the part's addresses, and its value. A compartment that could
/// write that word would have the part's next block handed out wherever it
/// chose, in the owner's private memory too.
#[doc(hidden)]
pub fn placement_word_of_part(part: usize) -> (usize, usize) {
    let heap = Arena::Part(part);
    (managed_span(heap).0 + core::mem::offset_of!(Heap, offset), handed_out_offset(heap))
}

/// Whether `[addr, addr + len)` lies entirely inside the shared heap.
pub fn is_shared(addr: usize, len: usize) -> bool {
    shared_region().contains(addr, len)
}

/// `kasan`'s left redzone of a block with alignment `align`: room for the
/// quarantine's link and the block's outer size, and a multiple of `align`.
const fn kasan_left(align: usize) -> usize {
    if align > 32 { align } else { 32 }
}

/// Bytes after each block (and its rounding to 8) that `kasan` marks as redzone.
const KASAN_RIGHT: usize = 32;

/// Freed bytes a heap keeps in `kasan`'s quarantine before reusing them,
/// so that a use after free hits poisoned memory.
const KASAN_QUARANTINE: usize = 4 << 20;

/// The layout of the block that holds a `kasan` allocation of `layout`
/// with its redzones.
fn kasan_outer(layout: Layout) -> Option<Layout> {
    let size = kasan_left(layout.align()).checked_add(layout.size().next_multiple_of(8))?.checked_add(KASAN_RIGHT)?;
    Layout::from_size_align(size, layout.align().max(8)).ok()
}

/// Allocates from heap `heap` (a compartment index or [`SHARED`]); null when it is exhausted.
///
/// In an image with `kasan` components the block gets redzones, and only
/// its `layout.size()` bytes are addressable (docs/hardening.md).
pub fn alloc_in(heap: usize, layout: Layout) -> *mut u8 {
    assert!(heap < HEAPS, "heap index {heap} out of range");
    alloc_arena(arena_of(heap), layout)
}

/// A word kept for compartment `c` in its private heap's state (under
/// `mpk`, in `c`'s key: only `c` may read or write it), 0 until `c`
/// stores something. For `c`'s own bookkeeping that must not be found
/// through memory another compartment can write, such as the table of its
/// thread-local destructor lists (`flexos-mpk`); in a process the word
/// is this process's.
pub fn owner_word(c: usize) -> &'static AtomicUsize {
    assert!(c < MAX_COMPARTMENTS, "compartment {c} out of range");
    &heap_state(Arena::Private(c)).owner_word
}

/// Allocates shared memory for compartment `compartment`, which the caller
/// names by its compile-time identity (`shared_local!`), from that
/// compartment's part of the shared heap; null when it is exhausted. This
/// skips finding the running compartment by its rights ([`alloc_in`] with
/// [`SHARED`]). A caller that names another compartment than the one it
/// runs as gains nothing: it then works on that part's metadata, which
/// under `mpk` only the part's owner may write, so its own write faults.
pub fn alloc_shared_for(compartment: usize, layout: Layout) -> *mut u8 {
    alloc_arena(Arena::Part(part_of_compartment(compartment)), layout)
}

/// Frees a block of [`alloc_shared_for`] made for `compartment` with
/// `layout`: directly when it lies in that compartment's part, else as
/// [`free`] does.
///
/// # Safety
/// As for [`free`].
pub unsafe fn free_shared_for(compartment: usize, ptr: *mut u8, layout: Layout) {
    let part = part_of_compartment(compartment);
    if part_of(ptr as usize) == Some(part) {
        // SAFETY: this function's contract; the metadata written is the
        // named compartment's (as in `alloc_shared_for`).
        unsafe { free_in(Arena::Part(part), ptr, layout) }
    } else {
        // SAFETY: this function's contract.
        unsafe { free(ptr, layout) }
    }
}

/// Allocates from `arena`, with `kasan`'s redzones in an image with `kasan` components.
#[inline]
fn alloc_arena(arena: Arena, layout: Layout) -> *mut u8 {
    if !flexos_platform::kasan::enabled() {
        return alloc_raw(arena, layout);
    }
    let Some(outer) = kasan_outer(layout) else { return null_mut() };
    let base = alloc_raw(arena, outer);
    if base.is_null() {
        return base;
    }
    let left = kasan_left(layout.align());
    let (b, rounded) = (base as usize, layout.size().next_multiple_of(8));
    flexos_platform::kasan::poison(b, left, flexos_platform::kasan::HEAP_REDZONE);
    flexos_platform::kasan::unpoison(b + left, layout.size());
    flexos_platform::kasan::poison(
        b + left + rounded,
        outer.size() - left - rounded,
        flexos_platform::kasan::HEAP_REDZONE,
    );
    base.wrapping_add(left)
}

fn alloc_raw(arena: Arena, layout: Layout) -> *mut u8 {
    let layout = match arena {
        Arena::Part(_) => match shared_layout(layout) {
            Some(l) => l,
            None => return null_mut(),
        },
        Arena::Private(_) => layout,
    };
    let h = heap_state(arena);
    let mut locked = h.lock(arena);
    // SAFETY: talc was given memory in `lock`; layout sizes may be
    // zero-sized only through GlobalAlloc, whose callers never pass size 0.
    match unsafe { locked.talc().malloc(layout) } {
        Ok(p) => {
            h.in_use.fetch_add(layout.size(), Ordering::Relaxed);
            h.allocations.fetch_add(1, Ordering::Relaxed);
            // A shadow allocation becomes the same place in the shared part
            // (both spans are aligned to 64 MiB, so alignment is kept).
            let addr = p.as_ptr().wrapping_add(h.offset.load(Ordering::Relaxed));
            if let Arena::Part(_) = arena {
                // SAFETY: the first RECORD_LEN bytes of the block's place in
                // the shadow: 8-aligned (shared_layout), inside the chunk
                // talc just handed out (at least RECORD_LEN long), which talc
                // leaves untouched until it is freed; private to the part's owner.
                unsafe {
                    let record = p.as_ptr().cast::<usize>();
                    record.write_volatile(RECORD ^ addr as usize);
                    record.add(1).write_volatile(layout.size() << 8 | layout.align().trailing_zeros() as usize);
                }
            }
            addr
        }
        Err(()) => null_mut(),
    }
}

/// The layout a shared block is allocated with: room and alignment for its record.
fn shared_layout(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().max(RECORD_LEN), layout.align().max(8)).ok()
}

/// Frees memory returned by [`alloc_in`] (from any heap) with the same layout.
///
/// A block of another compartment's part of the shared heap (in the host
/// of an image with `mpk` compartments) is freed by that compartment, with
/// its rights, through a gate: only it may write that part's metadata.
///
/// # Safety
/// `ptr` must come from [`alloc_in`] or [`CompartmentAllocator`] with `layout`, and not be freed twice.
pub unsafe fn free(ptr: *mut u8, layout: Layout) {
    // The shared heap first (one range check gives the part), then the private heaps.
    let arena = match part_of(ptr as usize) {
        Some(part) => match owner_of_part(part) {
            Some(part) if part != my_part() => {
                let addr = ptr as usize;
                // SAFETY: the closure is this allocator's own free of a block of
                // `part`, which touches only that part's memory and metadata,
                // which the part's owner may write; the contract is the caller's.
                unsafe { compartment::run_in(part, move || free_in(Arena::Part(part), addr as *mut u8, layout)) };
                return;
            }
            Some(part) => Arena::Part(part),
            None => fail(b"flexos-alloc: free of shared memory that another domain allocated\n"),
        },
        None => match owner_of(ptr as usize) {
            Some(c) if c != SHARED => Arena::Private(c),
            _ => fail(b"flexos-alloc: free of a pointer outside every heap\n"),
        },
    };
    // SAFETY: this function's contract.
    unsafe { free_in(arena, ptr, layout) }
}

/// Frees a block of `heap` (the running compartment may write its metadata).
///
/// # Safety
/// As for [`free`].
unsafe fn free_in(heap: Arena, ptr: *mut u8, layout: Layout) {
    if !flexos_platform::kasan::enabled() {
        // SAFETY: this function's contract.
        unsafe { free_raw(heap, ptr, layout) };
        return;
    }
    // The block is poisoned and kept in its heap's quarantine; the oldest
    // blocks beyond the quarantine's size go back to talc.
    let Some(outer) = kasan_outer(layout) else { return };
    let base = ptr.wrapping_sub(kasan_left(layout.align()));
    flexos_platform::kasan::poison(ptr as usize, layout.size().next_multiple_of(8), flexos_platform::kasan::FREED);
    if let Arena::Part(_) = heap {
        // No quarantine for shared blocks: its links would lie in shared
        // memory, where every compartment can rewrite them.
        // SAFETY: the block of `alloc_raw` that holds this allocation.
        unsafe { free_raw(heap, base, outer) };
        return;
    }
    let h = heap_state(heap);
    let mut evict = [(0usize, Layout::new::<u8>()); 64];
    let mut evicted = 0;
    {
        let _locked = h.lock(heap);
        // SAFETY: the left redzone (at least 32 bytes, 8-aligned) belongs to
        // the freed block, which nothing uses any more; it holds the link to
        // the next block in quarantine, the outer size and alignment.
        unsafe {
            let words = base.cast::<usize>();
            words.write(0);
            words.add(1).write(outer.size());
            words.add(2).write(outer.align());
            match h.quarantine_tail.load(Ordering::Relaxed) {
                0 => h.quarantine_head.store(base as usize, Ordering::Relaxed),
                tail => (tail as *mut usize).write(base as usize),
            }
            h.quarantine_tail.store(base as usize, Ordering::Relaxed);
            let mut bytes = h.quarantine_bytes.load(Ordering::Relaxed) + outer.size();
            while bytes > KASAN_QUARANTINE && evicted < evict.len() {
                let oldest = h.quarantine_head.load(Ordering::Relaxed) as *mut usize;
                let (next, size, align) = (oldest.read(), oldest.add(1).read(), oldest.add(2).read());
                h.quarantine_head.store(next, Ordering::Relaxed);
                if next == 0 {
                    h.quarantine_tail.store(0, Ordering::Relaxed);
                }
                bytes -= size;
                evict[evicted] = (oldest as usize, Layout::from_size_align_unchecked(size, align));
                evicted += 1;
            }
            h.quarantine_bytes.store(bytes, Ordering::Relaxed);
        }
    }
    for &(block, outer) in &evict[..evicted] {
        // SAFETY: each block came from `alloc_raw` with `outer` and left the quarantine once.
        unsafe { free_raw(heap, block as *mut u8, outer) };
    }
}

/// Returns a block of `alloc_raw` to its heap. A shared block must be a
/// live block of its part (its record says so, and gives its layout);
/// anything else is reported and ignored, never handed to talc. Returns
/// whether the block was freed.
///
/// # Safety
/// As [`free`], for a block of `alloc_raw` of `heap`.
unsafe fn free_raw(heap: Arena, ptr: *mut u8, layout: Layout) -> bool {
    let h = heap_state(heap);
    let mut locked = h.lock(heap);
    let Some(p) = NonNull::new(ptr.wrapping_sub(h.offset.load(Ordering::Relaxed))) else { return false };
    let layout = match heap {
        Arena::Private(_) => layout,
        Arena::Part(part) => match take_record(heap, p.as_ptr() as usize, ptr as usize) {
            Some(l) => l,
            None => {
                refuse_free(part, ptr as usize);
                return false;
            }
        },
    };
    // SAFETY: by this function's contract the pointer came from this heap
    // (the owner is found by address) with `layout`; a shared block's
    // layout is the one its record kept, and the record was live.
    unsafe { locked.talc().free(p, layout) };
    h.in_use.fetch_sub(layout.size(), Ordering::Relaxed);
    true
}

/// Checks the record of the shared block at `addr` (whose place in the
/// shadow is `shadow`), clears it and returns the block's layout; `None`
/// when no live block starts there.
fn take_record(heap: Arena, shadow: usize, addr: usize) -> Option<Layout> {
    let (base, len) = managed_span(heap);
    if !shadow.is_multiple_of(8) || shadow < base + STATE_LEN || shadow > base + len - RECORD_LEN {
        return None;
    }
    let record = shadow as *mut usize;
    // SAFETY: two aligned words inside the part's shadow (checked above),
    // mapped for the process's life and writable by the running
    // compartment, the part's owner (the caller holds the part's lock).
    let (tag, shape) = unsafe { (record.read_volatile(), record.add(1).read_volatile()) };
    if tag != RECORD ^ addr {
        return None;
    }
    let layout = Layout::from_size_align(shape >> 8, 1 << (shape & 63)).ok()?;
    // SAFETY: as above; the block is freed now, so its record goes.
    unsafe { record.write_volatile(0) };
    Some(layout)
}

/// Reports a free of shared memory that is no live block of `part` (a
/// forged or repeated free): nothing is freed.
#[cold]
fn refuse_free(part: usize, addr: usize) {
    let name = COMPARTMENTS.get(part).map_or("?", |c| c.name);
    let mut t = FixedText { buf: [0; 512], len: 0 };
    t.push(b"flexos-alloc: a free of shared memory at ");
    t.push_hex(addr);
    t.push(b" is no live block of compartment \"");
    t.push(name.as_bytes());
    t.push(b"\"'s part of the shared heap; ignored\n");
    flexos_platform::console::write_err(t.as_bytes());
}

/// Usage of one heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes currently allocated.
    pub in_use: usize,
    /// Allocations served since start.
    pub allocations: usize,
}

/// Usage of heap `heap` ([`SHARED`]: the running compartment's part).
pub fn stats(heap: usize) -> HeapStats {
    let h = heap_state(arena_of(heap));
    HeapStats { in_use: h.in_use.load(Ordering::Relaxed), allocations: h.allocations.load(Ordering::Relaxed) }
}

/// The bytes heap `heap` can hold (a compartment's private heap, or the running compartment's part of the shared heap).
pub fn capacity(heap: usize) -> usize {
    if heap == SHARED { SHARED_PART } else { PRIVATE_HEAP_LEN }
}

/// Bytes of a heap that [`has_room`] keeps free for the small allocations
/// that cannot fail gracefully (a key, a node of a tree, the stack's own
/// bookkeeping).
pub const RESERVE: usize = 32 << 20;

/// Whether the running compartment's heap can give `bytes` more and still
/// keep [`RESERVE`] free. Buffers whose size a client chooses (requests,
/// replies, values) ask first, so that a client that asks for too much
/// fails its own request instead of exhausting the heap and aborting the
/// image at the next small allocation.
pub fn has_room(bytes: usize) -> bool {
    let heap = compartment::current();
    stats(heap).in_use.saturating_add(bytes).saturating_add(RESERVE) <= capacity(heap)
}

/// Set while [`in_shared_heap`] runs: every allocation comes from the shared heap.
static ALLOCATE_SHARED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Runs `f` with every allocation served from the shared heap: for global
/// state of the runtime that every compartment uses (std's stdout buffer,
/// made at boot, before the image starts other threads).
pub fn in_shared_heap<R>(f: impl FnOnce() -> R) -> R {
    ALLOCATE_SHARED.store(true, Ordering::SeqCst);
    let result = f();
    ALLOCATE_SHARED.store(false, Ordering::SeqCst);
    result
}

/// The global allocator of an image: serves the running compartment's heap.
/// Install it with `#[global_allocator] static A: CompartmentAllocator = CompartmentAllocator;`.
pub struct CompartmentAllocator;

// SAFETY: alloc returns fresh, suitably aligned memory from a talc heap or
// null; dealloc returns it to the heap that owns it; both are serialized per
// heap by the heap's lock.
unsafe impl GlobalAlloc for CompartmentAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ALLOCATE_SHARED.load(Ordering::Relaxed) {
            return alloc_in(SHARED, layout);
        }
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

    /// Held by the tests that use the shared heap, which count its bytes.
    static SHARED_HEAP: spin::Mutex<()> = spin::Mutex::new(());

    fn shared_heap() -> spin::MutexGuard<'static, ()> {
        SHARED_HEAP.lock()
    }

    #[test]
    fn each_heap_owns_its_allocations() {
        let _shared = shared_heap();
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
        let (control, _) = control_area();
        assert_eq!(owner_of(control), None, "the control area is no heap");
        assert!(!is_shared(control, 8));
        // SAFETY: memory this test allocated (100 bytes each), freed once with its layout.
        unsafe {
            core::ptr::write_bytes(a, 0xaa, 100);
            free(a, layout);
            free(b, layout);
            free(s, layout);
        }
    }

    #[test]
    fn each_heap_keeps_its_state_where_its_metadata_lies() {
        for heap in [Arena::Private(0), Arena::Private(1), Arena::Private(5), arena_of(SHARED)] {
            assert_eq!(heap_state(heap) as *const Heap as usize, managed_span(heap).0, "heap {heap:?}");
        }
    }

    #[test]
    fn usage_is_counted_and_memory_is_reused() {
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let before = stats(3);
        let p = alloc_in(3, layout);
        assert_eq!(stats(3).in_use, before.in_use + 4096);
        // SAFETY: memory this test allocated, freed once with its layout.
        unsafe { free(p, layout) };
        assert_eq!(stats(3).in_use, before.in_use);
        let q = alloc_in(3, layout);
        assert_eq!(p, q, "freed memory is reused");
        // SAFETY: memory this test allocated, freed once with its layout.
        unsafe { free(q, layout) };
    }

    #[test]
    fn scribbling_over_the_shared_heap_leaves_its_allocator_intact() {
        let _shared = shared_heap();
        let small = Layout::from_size_align(48, 16).unwrap();
        let big = Layout::from_size_align(70_000, 64).unwrap();
        let kept: [*mut u8; 8] = core::array::from_fn(|i| alloc_in(SHARED, if i % 2 == 0 { small } else { big }));
        let (part, _) = span_of(arena_of(SHARED));
        // What another domain may do: overwrite every byte of this domain's
        // part in use (and beyond), here with pointers back into it.
        for w in (part..part + (4 << 20)).step_by(8) {
            // SAFETY: this domain's part of the shared heap, mapped and
            // writable; the test overwrites it on purpose (plain bytes).
            unsafe { core::ptr::write_volatile(w as *mut usize, part + 64) };
        }
        for round in 0..100 {
            let p = alloc_in(SHARED, if round % 2 == 0 { small } else { big });
            assert!(is_shared(p as usize, 48) && !kept.contains(&p), "a fresh allocation, round {round}");
            // SAFETY: memory this test allocated, freed once with its layout.
            unsafe { free(p, if round % 2 == 0 { small } else { big }) };
        }
        for (i, p) in kept.into_iter().enumerate() {
            // SAFETY: memory this test allocated, freed once with its layout.
            unsafe { free(p, if i % 2 == 0 { small } else { big }) };
        }
        let (shadow, _) = managed_span(arena_of(SHARED));
        assert_eq!(owner_of(shadow), Some(compartment::home()), "the metadata lies in private memory");
    }

    #[test]
    fn a_forged_or_repeated_free_of_shared_memory_is_refused_and_frees_nothing() {
        let _shared = shared_heap();
        let layout = Layout::from_size_align(200, 16).unwrap();
        let a = alloc_in(SHARED, layout);
        let b = alloc_in(SHARED, layout);
        let part = arena_of(SHARED);
        // SAFETY: deliberately wrong frees (the point of the test): inside a
        // live block, and twice the same block; the allocator must refuse.
        unsafe {
            assert!(!free_raw(part, a.wrapping_add(64), layout), "a free inside a live block is refused");
            assert!(free_raw(part, a, layout), "a live block is freed");
            assert!(!free_raw(part, a, layout), "its second free is refused");
            assert!(!free_raw(part, b.wrapping_add(16), layout), "so is one just past a record");
        }
        let c = alloc_in(SHARED, layout);
        let d = alloc_in(SHARED, layout);
        assert!(c != d && c != b && d != b, "no block is handed out twice");
        // SAFETY: memory this test allocated, freed once with its layout.
        unsafe {
            for p in [b, c, d] {
                free(p, layout);
            }
        }
    }

    #[test]
    fn shared_memory_for_a_named_compartment_comes_from_its_part_and_goes_back() {
        let _shared = shared_heap();
        let layout = Layout::from_size_align(300, 16).unwrap();
        let before = stats(SHARED).in_use;
        // Without mpk compartments every compartment of a process shares its domain's part.
        let a = alloc_shared_for(3, layout);
        let b = alloc_in(SHARED, layout);
        assert!(is_shared(a as usize, 300) && a != b);
        assert_eq!(part_of(a as usize), Some(my_part()));
        assert!(stats(SHARED).in_use >= before + 600);
        // SAFETY: memory this test allocated, freed once with its layout
        // (`b` through the named path too: it lies in the same part).
        unsafe {
            free_shared_for(3, a, layout);
            free_shared_for(0, b, layout);
        }
        assert_eq!(stats(SHARED).in_use, before);
        assert_eq!(alloc_shared_for(3, layout), a, "freed memory is reused");
        // SAFETY: as above.
        unsafe { free(a, layout) };
    }

    #[test]
    fn exhaustion_returns_null() {
        let _shared = shared_heap();
        let layout = Layout::from_size_align(HEAP_SPAN * 2, 8).unwrap();
        assert!(alloc_in(4, layout).is_null());
        assert!(alloc_in(SHARED, layout).is_null());
    }
}
