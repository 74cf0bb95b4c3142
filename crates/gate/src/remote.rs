//! Remote gates: calls into a compartment that runs in another domain (its
//! own process with `proc`, a VM with `kvm`), as RPC over shared memory
//! (DESIGN section 5.4).
//!
//! # Protocol
//!
//! The control area at the start of the shared span (same address in every
//! domain) holds call frames. Each host thread that makes remote calls has
//! a *chain* (an index), and a call at nesting depth `k` of chain `c`
//! between domains `a` and `b` uses frame `[c][k]` of the pair `{a, b}`'s
//! part of the control area. That part is mapped only in `a` and `b` (and
//! the host), so no other domain can read or change the call. The caller
//! fills the frame with the callee compartment, the callee component's id,
//! the entry's index in that component's export table (never a code
//! address) and the encoded arguments, marks it `REQUEST` and waits
//! (before that, it may have announced in the frame what shared memory the
//! call will hand over, which the callee's waiting thread prefetches:
//! [`announce`]). In each domain one *partner* thread serves each chain; it checks that the
//! entry is exported by a component of a compartment it runs, copies the
//! arguments out of shared memory, decodes and validates them, runs the
//! entry, and writes the result (`DONE`) or a refusal (`REFUSED`).
//!
//! A domain that waits on a chain also serves the chain's deeper frames
//! addressed to it, so nested calls and callbacks (A calls B, B calls back
//! into A, to any depth up to [`MAX_DEPTH`]) work without extra threads.
//! Partner threads are started by each domain's dispatcher when a chain
//! first reaches it; each is that host thread's part of the domain, so a
//! callee that blocks stalls only its own chain.
//!
//! Waiting spins for [`SPIN_NS`] (only [`BRIEF_SPINS`] times after a wait
//! longer than [`LONG_WAIT_NS`]: `Pace`), then sleeps on this domain's futex word of
//! the chain (a notifier wakes only the domain that must act), so that
//! several domains on a two-core machine do not starve each other. The
//! futex words, a hint of which depths hold requests, and each domain's
//! doorbell lie in the control area's common part, which every domain maps.
//!
//! # Trust
//!
//! Shared memory holds plain bytes only; nothing another domain can write
//! is trusted. A serving domain treats a frame of its pair as untrusted
//! input: indices are bounds-checked, lengths are checked, the argument
//! bytes are copied to private memory before they are decoded, and shared
//! handles are validated; the domain to answer is the pair's other member,
//! never a field of the frame. Which chains a domain serves and which host
//! thread owns which chain is kept in private memory. A domain can write
//! the common part: that can delay another pair's wake-ups (a sleeper also
//! wakes on a timeout and then looks at every frame it may serve, so no
//! request is lost) but not change a call. A callee can still answer
//! its own calls with wrong (but well-formed) results.

use crate::export::{Export, Refusal};
use crate::wire::{Reader, Writer};
use crate::{Crossing, layout};
use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use flexos_layout::MAX_COMPONENTS;
use flexos_layout::{COMPARTMENTS, Component, Mechanism, domain_of};
use flexos_platform::compartment::{self, MAX_COMPARTMENTS};
use flexos_platform::{clock, console, futex};
use std::sync::OnceLock;

/// The most host threads that may make remote calls over an image's life.
pub const MAX_CHAINS: usize = 128;
/// The deepest nesting of remote calls on one chain.
pub const MAX_DEPTH: usize = 15;
/// Bytes of encoded arguments or result one frame holds.
pub const FRAME_DATA: usize = 960;
/// How long a waiter spins before it sleeps.
pub const SPIN_NS: u64 = 100_000;
/// A wait longer than this makes the next one brief (see `Pace`). A
/// futex wake-up costs a few microseconds; spinning through a wait many
/// times that long costs the other side a core it may need.
pub const LONG_WAIT_NS: u64 = 20_000;

// A frame's state. A frame is in use from REQUEST until DONE or REFUSED.
const REQUEST: u32 = 1;
const DONE: u32 = 3;
const REFUSED: u32 = 4;

/// One call between a pair of domains.
#[repr(C, align(64))]
struct Frame {
    state: AtomicU32,
    to: AtomicU32,
    from: AtomicU32,
    component: AtomicU32,
    entry: AtomicU32,
    len: AtomicU32,
    refusal: AtomicU32,
    /// Unused; keeps the data 8-byte aligned.
    _reserved: AtomicU32,
    /// Where the caller's next call on this frame will hand over shared
    /// memory, and how many bytes of it are written so far ([`announce`]):
    /// a hint, in the line the callee polls anyway.
    hint_at: AtomicU64,
    hint_len: AtomicU64,
    data: UnsafeCell<[u8; FRAME_DATA]>,
}

/// The frames of the calls between one pair of domains: per chain, per
/// depth (depth 0 is never used).
#[repr(C)]
struct PairFrames {
    frames: [[Frame; MAX_DEPTH + 1]; MAX_CHAINS],
}

/// A futex word that one domain's thread sleeps on, whether anyone does,
/// and which depths of the chain hold a request for that domain (a hint:
/// a sleeper also looks at every frame when it wakes up).
#[repr(C, align(64))]
struct Waker {
    seq: AtomicU32,
    sleepers: AtomicU32,
    pending: AtomicU32,
    /// When the last wake-up was sent (monotonic ns; another domain's
    /// word, used only to pace this domain's waits: `Pace`).
    notified_ns: AtomicU64,
}

/// The control area's common part, mapped in every domain.
#[repr(C)]
struct Common {
    /// Per domain: rung when a chain needs a partner thread there.
    doorbells: [Waker; MAX_COMPARTMENTS],
    /// Per chain, per domain: where that domain's thread on the chain sleeps.
    wakers: [[Waker; MAX_COMPARTMENTS]; MAX_CHAINS],
}

// SAFETY: the control area is shared memory by design; every field is an
// atomic except frame data, which is only copied with raw copies (below).
unsafe impl Sync for Common {}
// SAFETY: as for `Common`.
unsafe impl Sync for PairFrames {}

const _: () = assert!(size_of::<Common>() <= flexos_alloc::CONTROL_COMMON_LEN);
const _: () = assert!(size_of::<PairFrames>() <= flexos_alloc::CONTROL_PAIR_LEN);

/// Where the control area starts (the same in every domain): looked up
/// once at boot ([`register`]; a static, which an `mpk` compartment may
/// only read), else now.
#[inline]
fn control_start() -> usize {
    match CONTROL_START.load(Relaxed) {
        0 => flexos_alloc::control_area().0,
        start => start,
    }
}

static CONTROL_START: AtomicUsize = AtomicUsize::new(0);

fn common() -> &'static Common {
    let start = control_start();
    // SAFETY: the common part is mapped readable and writable in every
    // domain for the image's whole life (and used for nothing else); it
    // starts zero-filled, and all-zero bytes are a valid `Common` (atomics
    // only). Other domains write it concurrently, which is why every field is atomic.
    unsafe { &*(start as *const Common) }
}

/// The frames between domains `a` and `b`; only call it for a pair this
/// domain belongs to (or in the host, which maps every pair).
fn pair(a: usize, b: usize) -> &'static PairFrames {
    let at = control_start() + flexos_alloc::control_pair_offset(a, b);
    // SAFETY: the pair's part is mapped in both its domains and the host for
    // the image's whole life, zero-filled at first (a valid `PairFrames`:
    // atomics and byte arrays); the other domain writes it concurrently,
    // which is why every field is atomic and frame data is accessed only
    // by raw byte copies.
    unsafe { &*(at as *const PairFrames) }
}

fn frame(a: usize, b: usize, chain: usize, depth: usize) -> &'static Frame {
    &pair(a, b).frames[chain][depth]
}

/// Bit d: domain d exists (the host, 0, and every compartment that is a domain of its own).
const DOMAINS: u32 = {
    let mut mask = 0;
    let mut c = 0;
    while c < COMPARTMENTS.len() {
        if domain_of(c) == c {
            mask |= 1 << c;
        }
        c += 1;
    }
    mask
};

/// The domains of the image other than `me`.
fn other_domains(me: usize) -> impl Iterator<Item = usize> {
    let mut rest = DOMAINS & !(1 << me);
    core::iter::from_fn(move || {
        let d = rest.trailing_zeros() as usize;
        (rest != 0).then(|| {
            rest &= rest - 1;
            d
        })
    })
}

impl Frame {
    fn write_data(&self, bytes: &[u8]) {
        let n = bytes.len().min(FRAME_DATA);
        // SAFETY: the frame's data is FRAME_DATA bytes of shared memory; a
        // byte copy of at most that many is in bounds. The other domain may
        // write it concurrently; bytes are plain data, so the worst outcome
        // is garbage that the reader rejects.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.data.get().cast::<u8>(), n) }
    }

    /// Copies the first `len` bytes (at most FRAME_DATA) into `out` and returns them.
    fn read_data<'b>(&self, len: usize, out: &'b mut [MaybeUninit<u8>; FRAME_DATA]) -> &'b [u8] {
        let n = len.min(FRAME_DATA);
        // SAFETY: as in `write_data`; the copy goes to private memory, so
        // the bytes cannot change while they are decoded, and the first `n`
        // bytes of `out` are initialized by it.
        unsafe {
            core::ptr::copy_nonoverlapping(self.data.get().cast::<u8>(), out.as_mut_ptr().cast::<u8>(), n);
            core::slice::from_raw_parts(out.as_ptr().cast::<u8>(), n)
        }
    }
}

/// A full memory barrier (store-load order) as Linux does it on x86-64: a
/// locked no-op on the stack, cheaper than `mfence` on current CPUs.
#[inline(always)]
fn full_barrier() {
    // SAFETY: a locked `or` of 0 into the word at the stack pointer changes
    // no memory and no register but the flags; it orders all earlier stores
    // before all later loads.
    unsafe { core::arch::asm!("lock or dword ptr [rsp], 0", options(nostack)) }
}

impl Waker {
    /// Wakes the sleepers, after a change they wait for was written.
    /// Spinning waiters see the change itself, so without sleepers this
    /// touches nothing shared.
    fn notify(&self) {
        full_barrier();
        if self.sleepers.load(Relaxed) != 0 {
            // (Not from a vCPU: its clock is a hypercall, and its waits
            // and those for it are paced as dear in any case.)
            if !flexos_platform::guest::in_guest() {
                self.notified_ns.store(clock::monotonic_ns(), Relaxed);
            }
            self.seq.fetch_add(1, SeqCst);
            futex::wake_all(&self.seq);
        }
    }

    /// Sleeps until a [`Waker::notify`] (or `timeout_ns`), unless `changed`
    /// already holds once this thread is registered as a sleeper (so no
    /// wake-up is lost: the notifier writes, fences, then reads `sleepers`;
    /// the sleeper registers, fences, then re-checks).
    fn park(&self, timeout_ns: u64, changed: impl Fn() -> bool) {
        self.sleepers.fetch_add(1, SeqCst);
        let seen = self.seq.load(SeqCst);
        if !changed() {
            futex::wait(&self.seq, seen, timeout_ns);
        }
        self.sleepers.fetch_sub(1, SeqCst);
    }
}

/// The domain this process is: 0 in the host, a compartment's index in its own process.
pub fn this_domain() -> usize {
    domain_of(compartment::home())
}

fn domain_of_untrusted(compartment: u32) -> Option<usize> {
    let c = compartment as usize;
    (c < COMPARTMENTS.len()).then(|| domain_of(c))
}

fn compartment_name(c: u32) -> &'static str {
    COMPARTMENTS.get(c as usize).map_or("?", |c| c.name)
}

// ---- export registry ----

/// Export tables by component id. A fixed array (not a `Vec` on the host's
/// heap), so that a VM's copy of the image's data can read it.
static REGISTRY: OnceLock<[Option<&'static [Export]>; MAX_COMPONENTS]> = OnceLock::new();

unsafe extern "C" {
    static __start_flexos_exports: [u8; 0];
    static __stop_flexos_exports: [u8; 0];
}

/// The export tables of every component linked into the image: `exports!`
/// lists each in the `flexos_exports` section (an image without exports has
/// no such section, and a weak-free reference to its bounds would not link,
/// so an image always has one: this crate lists an empty table there too).
pub fn linked_tables() -> Vec<&'static [Export]> {
    // SAFETY: the linker defines both symbols around the section, which holds
    // only `&&[Export]` values placed there by `exports!` and by this crate;
    // the section is read-only data that lives as long as the image.
    unsafe {
        let start = (&raw const __start_flexos_exports).cast::<&'static &'static [Export]>();
        let stop = (&raw const __stop_flexos_exports).cast::<&'static &'static [Export]>();
        let len = (stop as usize - start as usize) / size_of::<&'static &'static [Export]>();
        core::slice::from_raw_parts(start, len).iter().map(|t| **t).filter(|t| !t.is_empty()).collect()
    }
}

/// An empty table, so that the section exists in every image.
#[used]
// SAFETY: as for the tables `exports!` lists there.
#[unsafe(link_section = "flexos_exports")]
static NO_EXPORTS: &&[Export] = &EMPTY;
static EMPTY: &[Export] = &[];

/// Records the export tables of the image's components (each component's
/// `FLEXOS_EXPORTS`); the first call wins. Only whole tables count: a table
/// whose rows are not one component's entries 0, 1, 2, ... in order (a
/// slice of a table, say) is ignored, so an index always means the entry
/// that the component numbered so.
pub fn register(tables: &[&'static [Export]]) {
    CHAINS_CLAIMED.get_or_init(|| flexos_platform::compartment::leak_in_c_heap(AtomicUsize::new(0)));
    CONTROL_START.store(flexos_alloc::control_area().0, Relaxed);
    REGISTRY.get_or_init(|| {
        let mut by_id = [None; MAX_COMPONENTS];
        for table in tables {
            let Some(first) = table.first() else { continue };
            let whole = table
                .iter()
                .enumerate()
                .all(|(i, e)| e.index() as usize == i && e.component().id == first.component().id);
            if whole && let Some(slot) = by_id.get_mut(first.component().id) {
                *slot = Some(*table);
            }
        }
        by_id
    });
}

/// The entry `entry` of component `component`, if it is exported into
/// compartment `to` (the component must live there).
fn lookup(to: u32, component: u32, entry: u32) -> Option<&'static Export> {
    let info = layout::component::ALL.get(component as usize)?;
    if info.compartment != to as usize {
        return None;
    }
    REGISTRY.get()?.get(component as usize).copied().flatten()?.get(entry as usize)
}

// ---- calling ----

/// Runs `f` on a thread-local whose value is the host thread's, not a
/// stack domain's: in an image with `mpk` compartments, the one in the
/// thread's own block, whichever domain's copy runs
/// ([`flexos_platform::tls`]); elsewhere (no copies) the thread-local
/// itself, with the same code as any thread-local.
macro_rules! on_host_thread {
    ($local:ident, $f:expr) => {
        if flexos_layout::has_mpk() {
            // SAFETY: the host thread's own block lives as long as the
            // thread, and only this thread uses these cells.
            ($f)(unsafe { &*flexos_platform::tls::host_thread(&$local) })
        } else {
            $local.with($f)
        }
    };
}

thread_local! {
    /// The chain this thread calls and serves on.
    static CHAIN: Cell<Option<usize>> = const { Cell::new(None) };
    /// The frame this thread is serving (0: none); its next call goes one deeper.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Bit d: this thread has rung domain d's doorbell for its chain.
    static RUNG: Cell<u32> = const { Cell::new(0) };
    /// The remote calls this thread has made ([`calls_made`]).
    static CALLS_MADE: Cell<u64> = const { Cell::new(0) };
}

/// How many remote calls this thread has made so far, nested ones (made
/// while it served a callback) included. Lies in the thread's own memory,
/// which a compromised compartment of this domain may rewrite: it is a hint
/// for the caller's own caches, never a right (`is_host_to_remote`).
pub fn calls_made() -> u64 {
    on_host_thread!(CALLS_MADE, Cell::get)
}

/// The chains handed to host threads so far (private to the host). Set at
/// boot ([`register`]) to a counter outside the statics, since a host
/// thread's first remote call may come from any host compartment (an `mpk`
/// one may not write the statics); a compromised one can therefore use up
/// the chains, which stops the image's further threads from calling.
static CHAINS_CLAIMED: OnceLock<&'static AtomicUsize> = OnceLock::new();

fn my_chain() -> usize {
    on_host_thread!(CHAIN, |c: &Cell<Option<usize>>| {
        c.get().unwrap_or_else(|| {
            // Partner threads are given their chain; a new chain belongs to a host thread.
            assert!(this_domain() == 0, "only the host's threads start chains of remote calls");
            let claimed = CHAINS_CLAIMED.get().expect("flexos_boot::boot registers the exports first");
            let i = claimed.fetch_add(1, Relaxed);
            assert!(i < MAX_CHAINS, "more than {MAX_CHAINS} threads made remote calls");
            c.set(Some(i));
            i
        })
    })
}

/// Where a frame goes: compartment, component, entry, and the length field.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// The calling compartment (as the caller claims).
    pub from: u32,
    /// The callee compartment.
    pub to: u32,
    /// The callee component's id.
    pub component: u32,
    /// The entry's index in the component's export table.
    pub entry: u32,
    /// The length of the encoded arguments.
    pub len: u32,
}

/// Sends one frame and waits for the answer: the result's length in `result`, or the refusal.
/// This is the wire-level call; [`call`] encodes and decodes around it.
pub fn call_frame<'r>(
    header: Header,
    args: &[u8],
    result: &'r mut [MaybeUninit<u8>; FRAME_DATA],
) -> Result<&'r [u8], Refusal> {
    let me = this_domain();
    let target = match domain_of_untrusted(header.to) {
        Some(t) if t != me => t,
        _ => return Err(Refusal::NotExported),
    };
    let chain = my_chain();
    on_host_thread!(CALLS_MADE, |c: &Cell<u64>| c.set(c.get() + 1));
    let depth = on_host_thread!(DEPTH, Cell::get) + 1;
    assert!(depth <= MAX_DEPTH, "remote calls nested deeper than {MAX_DEPTH}");
    let frame = frame(me, target, chain, depth);
    frame.write_data(args);
    frame.to.store(header.to, Relaxed);
    frame.from.store(header.from, Relaxed);
    frame.component.store(header.component, Relaxed);
    frame.entry.store(header.entry, Relaxed);
    frame.len.store(header.len, Relaxed);
    frame.state.store(REQUEST, Release);
    let waker = &common().wakers[chain][target];
    if depth > 1 {
        // The callee may be waiting at any depth above: tell it where to look.
        waker.pending.fetch_or(1 << depth, Release);
    }
    waker.notify();
    if target != 0 && on_host_thread!(RUNG, |r: &Cell<u32>| r.get() & (1 << target) == 0) {
        // The first call of this chain into the domain: its dispatcher starts a partner.
        on_host_thread!(RUNG, |r: &Cell<u32>| r.set(r.get() | 1 << target));
        let bell = &common().doorbells[target];
        bell.seq.fetch_add(1, SeqCst);
        bell.notify();
    }
    let vm = flexos_platform::guest::in_guest() || COMPARTMENTS[target].mechanism == Mechanism::Kvm;
    wait(chain, depth, Some(frame), vm);
    let state = frame.state.load(Acquire);
    if state == DONE {
        Ok(frame.read_data(frame.len.load(Relaxed) as usize, result))
    } else {
        Err(Refusal::from_code(frame.refusal.load(Relaxed)).unwrap_or(Refusal::BadLength))
    }
}

/// Tells compartment `to`'s domain that this thread's next call into it
/// will hand over `len` bytes of shared memory at `at` (written so far):
/// the hint lies in that call's frame, in the line the domain's waiting
/// thread polls, and that thread pulls the bytes into its core's cache
/// while it waits (`Inbox::pull`). Nothing is trusted: the waiting thread
/// only prefetches, and only lines inside the shared heap; a hint that
/// lies costs the liar's own calls a few wasted prefetches. Nothing where
/// `to` is this domain or the call would be too deep.
pub fn announce(to: usize, at: usize, len: usize) {
    let me = this_domain();
    let Some(target) = domain_of_untrusted(to as u32).filter(|&t| t != me) else { return };
    let depth = on_host_thread!(DEPTH, Cell::get) + 1;
    if depth > MAX_DEPTH {
        return;
    }
    let f = frame(me, target, my_chain(), depth);
    f.hint_at.store(at as u64, Relaxed);
    f.hint_len.store(len as u64, Relaxed);
}

/// Bytes of announced memory a waiting thread prefetches a spin (64 lines).
const PULL_BYTES: usize = 4096;

/// What a waiting thread has prefetched of each announced buffer in its
/// inbox (`Inbox::pull`): the buffer's address and the bytes pulled.
type Pulled = [(usize, usize); MAX_COMPARTMENTS];

/// The addresses to prefetch next of a buffer announced at `at` with `len`
/// bytes written, given what was pulled of it before (`pulled`: its
/// address and the bytes pulled, updated): at most [`PULL_BYTES`] past
/// what was pulled, whole cache lines only (the caller may still be
/// writing the last). A buffer at a new address, or shorter than what was
/// pulled (it was sent and is being filled again), is pulled from its
/// start. `None` when nothing is left, or for a range that wraps around.
fn next_pull(at: usize, len: usize, pulled: &mut (usize, usize)) -> Option<core::ops::Range<usize>> {
    let (at_pulled, done) = pulled;
    if at != *at_pulled || len < *done {
        (*at_pulled, *done) = (at, 0);
    }
    let end = at.checked_add(len)? & !63;
    let upto = end.checked_sub(at)?.min(*done + PULL_BYTES);
    if *done >= upto {
        return None;
    }
    let lines = at + *done..at + upto;
    *done = upto;
    Some(lines)
}

/// A remote call of entry `entry` of component `to` from component `from`.
/// Panics (naming both) if the callee refuses or answers with a malformed result.
pub fn call<A: Crossing, R: Crossing>(from: Component, to: Component, entry: u32, args: &A) -> R {
    let mut buf = [MaybeUninit::uninit(); FRAME_DATA];
    let mut w = Writer::new(&mut buf);
    args.encode(&mut w);
    let len = w.finish().unwrap_or_else(|e| panic!("gate {} -> {}: {e}", from.name, to.name));
    let header = Header {
        from: from.compartment as u32,
        to: to.compartment as u32,
        component: to.id as u32,
        entry,
        len: len as u32,
    };
    let mut result = [MaybeUninit::uninit(); FRAME_DATA];
    match call_frame(header, w.written(), &mut result) {
        Ok(bytes) => {
            let mut r = Reader::new(bytes);
            match R::decode(&mut r) {
                Some(v) if r.is_empty() && v.validate() => v,
                _ => panic!(
                    "gate {} -> {}: compartment {:?} answered with a malformed result",
                    from.name, to.name, COMPARTMENTS[to.compartment].name
                ),
            }
        }
        Err(refusal) => panic!(
            "gate {} -> {}: compartment {:?} refused the call: {}",
            from.name,
            to.name,
            COMPARTMENTS[to.compartment].name,
            refusal.describe()
        ),
    }
}

// ---- waiting and serving ----

/// Where requests for domain `me` on `chain` deeper than `depth` can
/// appear: the next depth (where a callback comes) in every pair, looked at
/// on every spin; deeper only where the hint says (a request that passed
/// through domains this one cannot see), or everywhere when asked.
struct Inbox {
    me: usize,
    chain: usize,
    depth: usize,
    /// The frames at `depth + 1` of every pair with `me`, and the other domain.
    next: [(usize, Option<&'static Frame>); MAX_COMPARTMENTS],
    waker: &'static Waker,
}

impl Inbox {
    fn new(me: usize, chain: usize, depth: usize) -> Inbox {
        let mut next = [(0, None); MAX_COMPARTMENTS];
        if depth < MAX_DEPTH {
            for (slot, x) in next.iter_mut().zip(other_domains(me)) {
                *slot = (x, Some(frame(x, me, chain, depth + 1)));
            }
        }
        Inbox { me, chain, depth, next, waker: &common().wakers[chain][me] }
    }

    /// Whether frame `f` holds a request for this domain.
    fn is_request(&self, f: &Frame) -> bool {
        f.state.load(Acquire) == REQUEST && domain_of_untrusted(f.to.load(Relaxed)) == Some(self.me)
    }

    /// Prefetches, for each caller in the inbox, the next part of what it
    /// announced for its next call ([`announce`], [`next_pull`]), where it
    /// lies in the shared heap.
    fn pull(&self, pulled: &mut Pulled) {
        for (&(_, f), state) in self.next.iter().zip(pulled.iter_mut()) {
            let Some(f) = f else { break };
            let len = f.hint_len.load(Relaxed) as usize;
            if len == 0 {
                continue;
            }
            let at = f.hint_at.load(Relaxed) as usize;
            if let Some(lines) = next_pull(at, len, state)
                && flexos_alloc::is_shared(lines.start, lines.len())
            {
                for line in lines.step_by(64) {
                    // SAFETY: a prefetch reads nothing into a register and
                    // never faults; the line lies in the shared heap (checked).
                    unsafe {
                        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(line as *const i8)
                    };
                }
            }
        }
    }

    /// A request for this domain: the calling domain and the depth.
    fn find(&self, everything: bool) -> Option<(usize, usize)> {
        for &(x, f) in &self.next {
            match f {
                Some(f) if self.is_request(f) => return Some((x, self.depth + 1)),
                Some(_) => {}
                None => break,
            }
        }
        let deeper = if everything { u32::MAX } else { self.waker.pending.load(Acquire) };
        if (deeper as u64) >> (self.depth + 2) == 0 {
            return None;
        }
        (self.depth + 2..=MAX_DEPTH).rev().filter(|k| deeper & (1 << k) != 0).find_map(|k| {
            other_domains(self.me).find(|&x| self.is_request(frame(x, self.me, self.chain, k))).map(|x| (x, k))
        })
    }
}

/// How long a thread spins while it waits (an answer to its call, or a
/// partner's next request) before it sleeps: up to [`SPIN_NS`] (past the
/// first 1024 spins, after which the clock is first read), unless its last
/// wait was long, longer than [`LONG_WAIT_NS`]. Then the other side is
/// busy for long stretches (a call that does a whole round of the network
/// stack, a caller that works between calls), so this wait spins only
/// [`BRIEF_SPINS`] times before it sleeps: on a machine with few cores a
/// longer spin only takes a core from the side it waits for, or from
/// another process, and a futex wake-up costs little against such a wait.
/// A brief wait that ends without sleeping, or within [`LONG_WAIT_NS`],
/// makes the next one spin in full again.
///
/// Where a wake-up is dear, no wait is brief: a `kvm` compartment's vCPU
/// sleeps and is woken through hypercalls, VM exits and entries (about
/// 45 µs per sleep on this project's machine, against a few for a futex
/// between processes), so a vCPU's waits, and a host thread's waits for a
/// VM's answer, spin in full ([`SPIN_NS`]) before they sleep
/// (docs/benchmarks.md, "Waits beside a VM"); so do the waits of a thread
/// whose last wake-up took longer than [`DEAR_WAKE_UP_NS`], which shows
/// that its core idles while it sleeps.
struct Pace {
    spins: u32,
    /// When the spin's clock started (0: not read yet).
    started_ns: u64,
    /// This wait spins only briefly.
    brief: bool,
    /// This wait has slept.
    slept: bool,
}

/// Spins of a brief wait (a few microseconds) before it sleeps.
pub const BRIEF_SPINS: u32 = 256;

thread_local! {
    /// This thread's last wait was long (`Pace::was_long`).
    static LAST_WAIT_LONG: Cell<bool> = const { Cell::new(false) };
    /// This thread's last wake-up took longer than [`DEAR_WAKE_UP_NS`].
    static WAKE_UPS_DEAR: Cell<bool> = const { Cell::new(false) };
}

/// A wake-up slower than this (from the notifier's clock reading to the
/// sleeper running again) is dear: the sleeper's core went idle, and on a
/// virtual machine an idle vCPU halts and is woken through the hypervisor
/// (about 25 µs on this project's PVM host, where a wake-up of a thread
/// whose core stays busy takes one or two: docs/benchmarks.md, "Answers
/// the C library knows, dear wake-ups"). A core that idles while its
/// thread sleeps is needed by no one else, so that thread's waits then
/// spin in full before they sleep.
pub const DEAR_WAKE_UP_NS: u64 = 15_000;

/// Records how long this thread's last wake-up took ([`DEAR_WAKE_UP_NS`]).
fn learn_wake_up(took_ns: u64) {
    WAKE_UPS_DEAR.with(|d| d.set(took_ns > DEAR_WAKE_UP_NS));
}

impl Pace {
    /// A wait's pace; `dear_wake_ups`: this thread is a vCPU, or waits for one.
    fn start(dear_wake_ups: bool) -> Pace {
        let dear_wake_ups = dear_wake_ups || WAKE_UPS_DEAR.with(Cell::get);
        let brief = !dear_wake_ups && LAST_WAIT_LONG.with(Cell::get);
        // A brief wait reads the clock once now, to learn when it ends
        // whether a full spin would have been enough.
        Pace { spins: 0, started_ns: if brief { clock::monotonic_ns() } else { 0 }, brief, slept: false }
    }

    /// Counts one spin; false when it is time to sleep.
    fn spin(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if self.brief {
            return self.spins < BRIEF_SPINS;
        }
        // The clock is read only every 1024 spins (in a VM it costs more
        // than a spin), so a short wait never reads it.
        if self.spins.is_multiple_of(1024) {
            let now = clock::monotonic_ns();
            if self.started_ns == 0 {
                self.started_ns = now;
            } else if now - self.started_ns > SPIN_NS {
                return false;
            }
        }
        true
    }

    /// The thread woke up: a wait that goes on spins again (a full spin
    /// restarts its clock).
    fn woke(&mut self) {
        self.slept = true;
        self.spins = 0;
        if !self.brief {
            self.started_ns = 0;
        }
    }

    /// The wait ended: remembers whether it was long. A full wait that
    /// never read the clock (fewer than 1024 spins) was short.
    fn finish(&self) {
        let now_ns = if self.started_ns != 0 { clock::monotonic_ns() } else { 0 };
        LAST_WAIT_LONG.with(|l| l.set(self.was_long(now_ns)));
    }

    /// Whether a wait ending at `now_ns` was long: it slept after a full
    /// spin, or lasted more than [`LONG_WAIT_NS`] since its clock started
    /// (for a brief wait, only if it slept: one answered within its few
    /// spins was short).
    fn was_long(&self, now_ns: u64) -> bool {
        let lasted_long = self.started_ns != 0 && now_ns.saturating_sub(self.started_ns) > LONG_WAIT_NS;
        if self.brief { self.slept && lasted_long } else { self.slept || lasted_long }
    }
}

/// Waits until `mine` (this thread's call at `depth` on `chain`) is
/// answered, serving deeper frames addressed to this domain meanwhile.
/// Without a call of its own (`depth` 0) it never returns (a partner
/// thread's loop). `vm`: this thread is a vCPU or waits for one ([`Pace`]).
fn wait(chain: usize, depth: usize, mine: Option<&Frame>, vm: bool) {
    let me = this_domain();
    let answered = || mine.is_some_and(|f| matches!(f.state.load(Acquire), DONE | REFUSED));
    let inbox = Inbox::new(me, chain, depth);
    let waker = inbox.waker;
    let mut pulled: Pulled = [(0, 0); MAX_COMPARTMENTS];
    let mut pace = Pace::start(vm);
    loop {
        if answered() {
            pace.finish();
            return;
        }
        // The hint is another domain's word: every 1024 spins, look at every frame.
        if let Some((caller, k)) = inbox.find(pace.spins % 1024 == 1023) {
            pace.finish();
            if waker.pending.load(Relaxed) & (1 << k) != 0 {
                waker.pending.fetch_and(!(1 << k), AcqRel);
            }
            let outer = on_host_thread!(DEPTH, |d: &Cell<usize>| d.replace(k));
            serve(chain, caller, k);
            on_host_thread!(DEPTH, |d: &Cell<usize>| d.set(outer));
            pace = Pace::start(vm);
            continue;
        }
        if !pace.spin() {
            let parked_ns = if vm { 0 } else { clock::monotonic_ns() };
            waker.park(20_000_000, || answered() || inbox.find(true).is_some());
            // Woken by a notifier after this thread parked: how long the wake-up took.
            let notified_ns = waker.notified_ns.load(Relaxed);
            if !vm && notified_ns >= parked_ns {
                learn_wake_up(clock::monotonic_ns().saturating_sub(notified_ns));
            }
            pace.woke();
            continue;
        }
        inbox.pull(&mut pulled);
        // `pause` in every spin, a vCPU's too: at CPL3 it runs natively in
        // a VM (no exit), and a loop left without it costs a pipeline flush
        // when the awaited store arrives, about 130 cycles a kvm round trip
        // on an Intel host (docs/benchmarks.md, "A vCPU's spin").
        core::hint::spin_loop();
    }
}

/// Runs the request in frame `depth` of `chain` from domain `caller`
/// (addressed to this domain), answering it.
fn serve(chain: usize, caller: usize, depth: usize) {
    let frame = frame(caller, this_domain(), chain, depth);
    let (to, from) = (frame.to.load(Relaxed), frame.from.load(Relaxed));
    let (component, entry, len) = (frame.component.load(Relaxed), frame.entry.load(Relaxed), frame.len.load(Relaxed));
    // The caller's claim of its compartment is believed only if it lies in the caller's domain.
    let from = if domain_of_untrusted(from) == Some(caller) { from } else { caller as u32 };
    let mut args = [MaybeUninit::uninit(); FRAME_DATA];
    let outcome = match lookup(to, component, entry) {
        None => Err(Refusal::NotExported),
        Some(_) if len as usize > FRAME_DATA => Err(Refusal::BadLength),
        Some(export) => {
            let args = frame.read_data(len as usize, &mut args);
            let mut result = [MaybeUninit::uninit(); FRAME_DATA];
            let mut w = Writer::new(&mut result);
            // In the callee's compartment (through its gate where it is an `mpk` one).
            let outcome = crate::switch_to(to as usize, || export.run(&mut Reader::new(args), &mut w));
            outcome.inspect(|_| frame.write_data(w.written()))
        }
    };
    match outcome {
        Ok(n) => {
            frame.len.store(n as u32, Relaxed);
            frame.state.store(DONE, Release);
        }
        Err(refusal) => {
            let report = format!(
                "flexos: compartment {:?} refused a call from compartment {:?} (component {component}, entry {entry}): {}\n",
                compartment_name(to),
                compartment_name(from),
                refusal.describe()
            );
            console::write_err(report.as_bytes());
            frame.refusal.store(refusal as u32, Relaxed);
            frame.state.store(REFUSED, Release);
        }
    }
    common().wakers[chain][caller].notify();
}

/// The main loop of domain `me`'s dispatcher: calls `start_partner(chain)`
/// for every chain that reaches the domain (once per chain, remembered in
/// private memory), then sleeps until the doorbell rings. A compartment
/// process runs it on its main thread (starting partner threads); the
/// host runs one per `kvm` compartment (starting vCPUs).
pub fn dispatch_forever(me: usize, mut start_partner: impl FnMut(usize)) -> ! {
    let bell = &common().doorbells[me];
    let mut started = [false; MAX_CHAINS];
    loop {
        let seen = bell.seq.load(SeqCst);
        for (chain, started) in started.iter_mut().enumerate() {
            if !*started && Inbox::new(me, chain, 0).find(true).is_some() {
                *started = true;
                start_partner(chain);
            }
        }
        bell.park(100_000_000, || bell.seq.load(SeqCst) != seen);
    }
}

/// Starts a partner thread for `chain` in this process.
pub fn start_partner_thread(chain: usize) {
    // Unnamed: naming a thread is a system call (prctl) that the
    // compartment's seccomp filter does not allow.
    std::thread::Builder::new().spawn(move || serve_chain(chain)).expect("cannot start a partner thread");
}

/// A partner's life: serves the requests for this domain on `chain`, forever.
pub fn serve_chain(chain: usize) -> ! {
    on_host_thread!(CHAIN, |c: &Cell<Option<usize>>| c.set(Some(chain)));
    wait(chain, 0, None, flexos_platform::guest::in_guest());
    unreachable!("a partner's wait never returns")
}

/// The entry point of a partner vCPU in a `kvm` compartment's VM.
pub extern "C" fn guest_partner_entry(chain: usize) -> ! {
    serve_chain(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(brief: bool, started_ns: u64, slept: bool) -> Pace {
        Pace { spins: 0, started_ns, brief, slept }
    }

    #[test]
    fn a_full_wait_is_long_when_it_slept_or_outlasted_the_threshold() {
        // Under 1024 spins the clock was never read: short.
        assert!(!pace(false, 0, false).was_long(0));
        assert!(!pace(false, 1_000, false).was_long(1_000 + LONG_WAIT_NS));
        assert!(pace(false, 1_000, false).was_long(1_001 + LONG_WAIT_NS));
        // It slept only after spinning SPIN_NS (its clock restarts on waking).
        assert!(pace(false, 0, true).was_long(0));
    }

    #[test]
    fn a_brief_wait_is_long_only_when_it_slept_past_the_threshold() {
        // Answered within its few spins, however late the clock says.
        assert!(!pace(true, 1_000, false).was_long(1_000 + 10 * LONG_WAIT_NS));
        assert!(!pace(true, 1_000, true).was_long(1_000 + LONG_WAIT_NS));
        assert!(pace(true, 1_000, true).was_long(1_001 + LONG_WAIT_NS));
    }

    #[test]
    fn finish_makes_the_next_wait_brief_after_a_long_one_and_full_after_a_short_one() {
        pace(false, 0, true).finish();
        assert!(Pace::start(false).brief);
        pace(false, 0, false).finish();
        assert!(!Pace::start(false).brief);
    }

    #[test]
    fn no_wait_beside_a_vm_is_brief() {
        pace(false, 0, true).finish();
        assert!(!Pace::start(true).brief, "after a long wait, too");
    }

    #[test]
    fn an_announced_buffer_is_pulled_in_whole_lines_a_part_at_a_time_and_again_when_refilled() {
        let mut pulled = (0, 0);
        let at = 0x10_0000;
        let written = 2 * PULL_BYTES + 1000;
        let last_line = at + (written & !63);
        assert_eq!(next_pull(at, 40, &mut pulled), None, "no whole line written yet");
        assert_eq!(next_pull(at, written, &mut pulled), Some(at..at + PULL_BYTES), "a part a spin");
        assert_eq!(next_pull(at, written, &mut pulled), Some(at + PULL_BYTES..at + 2 * PULL_BYTES));
        assert_eq!(
            next_pull(at, written, &mut pulled),
            Some(at + 2 * PULL_BYTES..last_line),
            "up to the last whole line"
        );
        assert_eq!(next_pull(at, written, &mut pulled), None, "all pulled");
        assert_eq!(next_pull(at, written + 64, &mut pulled), Some(last_line..last_line + 64), "what was written since");
        assert_eq!(next_pull(at, 200, &mut pulled), Some(at..at + 192), "sent and filled again: from the start");
        assert_eq!(next_pull(at + 4096, 200, &mut pulled), Some(at + 4096..at + 4096 + 192), "another buffer");
        // A buffer not aligned to a line: its first part counts, its last
        // (partly written) line does not.
        let odd = at + 8;
        assert_eq!(next_pull(odd, 200, &mut pulled), Some(odd..at + 192));
        assert_eq!(next_pull(usize::MAX - 100, 200, &mut pulled), None, "a range that wraps around is ignored");
    }

    #[test]
    fn after_a_dear_wake_up_no_wait_is_brief_until_a_cheap_one() {
        pace(false, 0, true).finish();
        learn_wake_up(DEAR_WAKE_UP_NS + 1);
        assert!(!Pace::start(false).brief, "the core idled while this thread slept");
        learn_wake_up(DEAR_WAKE_UP_NS / 3);
        assert!(Pace::start(false).brief, "a cheap wake-up: brief again after a long wait");
    }
}
