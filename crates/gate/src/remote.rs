//! Remote gates: calls into a compartment that runs in another domain (its
//! own process with `proc`, a VM with `kvm`), as RPC over shared memory
//! (DESIGN section 5.4).
//!
//! # Protocol
//!
//! The control area at the start of the shared span (same address in every
//! domain) holds *chains*, one per host thread that makes remote calls. A
//! chain is a stack of call frames: the caller fills the next frame with
//! the callee compartment, the callee component's id, the entry's index in
//! that component's export table (never a code address) and the encoded
//! arguments, marks it `REQUEST` and waits. In each domain one *partner*
//! thread serves each chain; it checks that the entry is exported by a
//! component of a compartment it runs, copies the arguments out of shared
//! memory, decodes and validates them, runs the entry, and writes the
//! result (`DONE`) or a refusal (`REFUSED`).
//!
//! A domain that waits on a chain also serves the chain's deeper frames
//! addressed to it, so nested calls and callbacks (A calls B, B calls back
//! into A, to any depth up to [`MAX_DEPTH`]) work without extra threads.
//! Partner threads are started by each domain's dispatcher when a chain
//! first reaches it; each is that host thread's part of the domain, so a
//! callee that blocks stalls only its own chain.
//!
//! Waiting spins for [`SPIN_NS`], then sleeps on this domain's futex word of
//! the chain (a notifier wakes only the domain that must act), so that
//! several domains on a two-core machine do not starve each other.
//!
//! # Trust
//!
//! Every domain can write the whole control area. A serving domain
//! therefore treats frames as untrusted input: indices are bounds-checked,
//! lengths are checked, the argument bytes are copied to private memory
//! before they are decoded, and shared handles are validated. A callee can
//! still answer with wrong (but well-formed) results, and a compromised
//! domain can disturb calls between two others; DESIGN accepts both.

use crate::export::{Export, Refusal};
use crate::wire::{Reader, Writer};
use crate::{Crossing, layout};
use core::cell::{Cell, UnsafeCell};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, Ordering::*};
use flexos_layout::{COMPARTMENTS, Component, domain_of};
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

// A frame's state. A frame is in use from REQUEST until DONE or REFUSED;
// the frames in use on a chain are always 1..=k (calls end in LIFO order).
const REQUEST: u32 = 1;
const DONE: u32 = 3;
const REFUSED: u32 = 4;

/// One call on a chain.
#[repr(C, align(64))]
struct Frame {
    state: AtomicU32,
    to: AtomicU32,
    from: AtomicU32,
    component: AtomicU32,
    entry: AtomicU32,
    len: AtomicU32,
    refusal: AtomicU32,
    /// The domain of the caller, to be woken when the call is answered.
    caller: AtomicU32,
    data: UnsafeCell<[u8; FRAME_DATA]>,
}

/// The call stack of one host thread's remote calls.
#[repr(C, align(64))]
struct Chain {
    /// 0 while free, else the claiming domain + 1.
    owner: AtomicU32,
    /// Bit d: domain d has a partner thread serving this chain.
    partners: AtomicU32,
    /// Where each domain's thread on this chain sleeps.
    wakers: [Waker; MAX_COMPARTMENTS],
    /// Frames 1..=MAX_DEPTH (frame 0 is never used).
    frames: [Frame; MAX_DEPTH + 1],
}

/// A futex word that one domain's thread sleeps on, and whether anyone does.
#[repr(C, align(64))]
struct Waker {
    seq: AtomicU32,
    sleepers: AtomicU32,
}

#[repr(C)]
struct Control {
    /// Per domain: rung when a chain needs a partner thread there.
    doorbells: [Waker; MAX_COMPARTMENTS],
    chains: [Chain; MAX_CHAINS],
}

// SAFETY: the control area is shared memory by design; every field is an
// atomic except frame data, which is only copied with raw copies (below).
unsafe impl Sync for Control {}

fn control() -> &'static Control {
    let (start, end) = flexos_alloc::control_area();
    assert!(size_of::<Control>() <= end - start, "the control area is too small");
    // SAFETY: the control area is mapped readable and writable for the
    // image's whole life (and never used for anything else); it starts
    // zero-filled, and all-zero bytes are a valid `Control` (atomics and
    // byte arrays). Other domains write it concurrently, which is why every
    // field is atomic and frame data is accessed only by raw byte copies.
    unsafe { &*(start as *const Control) }
}

impl Frame {
    fn write_data(&self, bytes: &[u8]) {
        let n = bytes.len().min(FRAME_DATA);
        // SAFETY: the frame's data is FRAME_DATA bytes of shared memory; a
        // byte copy of at most that many is in bounds. Another domain may
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

impl Chain {
    /// Wakes domain `domain`'s thread on this chain if it sleeps.
    fn notify(&self, domain: Option<usize>) {
        if let Some(waker) = domain.and_then(|d| self.wakers.get(d)) {
            waker.notify();
        }
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

/// The most components an image may have.
const MAX_COMPONENTS: usize = 32;

/// Export tables by component id. A fixed array (not a `Vec` on the host's
/// heap), so that a VM's copy of the image's data can read it.
static REGISTRY: OnceLock<[Option<&'static [Export]>; MAX_COMPONENTS]> = OnceLock::new();

/// Records the export tables of the image's components (each component's
/// `FLEXOS_EXPORTS`); the first call wins.
pub fn register(tables: &[&'static [Export]]) {
    REGISTRY.get_or_init(|| {
        let mut by_id = [None; MAX_COMPONENTS];
        for table in tables {
            if let Some(first) = table.first()
                && let Some(slot) = by_id.get_mut(first.component.id)
            {
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

thread_local! {
    /// The chain this thread calls and serves on.
    static CHAIN: Cell<Option<usize>> = const { Cell::new(None) };
    /// The frame this thread is serving (0: none); its next call goes one deeper.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

fn my_chain() -> &'static Chain {
    let index = CHAIN.with(|c| {
        c.get().unwrap_or_else(|| {
            let me = this_domain() as u32 + 1;
            let i = (0..MAX_CHAINS)
                .find(|&i| control().chains[i].owner.compare_exchange(0, me, AcqRel, Relaxed).is_ok())
                .unwrap_or_else(|| panic!("more than {MAX_CHAINS} threads made remote calls"));
            c.set(Some(i));
            i
        })
    });
    &control().chains[index]
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
    let chain = my_chain();
    let depth = DEPTH.with(Cell::get) + 1;
    assert!(depth <= MAX_DEPTH, "remote calls nested deeper than {MAX_DEPTH}");
    let frame = &chain.frames[depth];
    frame.write_data(args);
    frame.to.store(header.to, Relaxed);
    frame.from.store(header.from, Relaxed);
    frame.component.store(header.component, Relaxed);
    frame.entry.store(header.entry, Relaxed);
    frame.len.store(header.len, Relaxed);
    frame.caller.store(this_domain() as u32, Relaxed);
    frame.state.store(REQUEST, Release);
    let target = domain_of_untrusted(header.to);
    chain.notify(target);
    if let Some(target) = target
        && chain.partners.load(Acquire) & (1 << target) == 0
    {
        let bell = &control().doorbells[target];
        bell.seq.fetch_add(1, SeqCst);
        bell.notify();
    }
    wait(chain, depth);
    let state = frame.state.load(Acquire);
    if state == DONE {
        Ok(frame.read_data(frame.len.load(Relaxed) as usize, result))
    } else {
        Err(Refusal::from_code(frame.refusal.load(Relaxed)).unwrap_or(Refusal::BadLength))
    }
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

/// Waits until frame `depth` of `chain` is answered, serving deeper frames
/// addressed to this domain meanwhile. With `depth` 0 it never returns
/// (a partner thread's loop).
fn wait(chain: &Chain, depth: usize) {
    let me = this_domain();
    let request_for_me = || deepest_request(chain, depth + 1).filter(|&k| addressed_to(&chain.frames[k], me));
    let answered = || depth > 0 && matches!(chain.frames[depth].state.load(Acquire), DONE | REFUSED);
    let mut spins = 0u32;
    let mut spin_start = 0;
    let in_vm = flexos_platform::guest::in_guest();
    loop {
        if answered() {
            return;
        }
        if let Some(k) = request_for_me() {
            let outer = DEPTH.with(|d| d.replace(k));
            serve(chain, &chain.frames[k]);
            DEPTH.with(|d| d.set(outer));
            spins = 0;
            continue;
        }
        spins += 1;
        // The clock is read only every 1024 spins (in a VM it costs more
        // than a spin), so a short wait never reads it.
        if spins.is_multiple_of(1024) {
            let now = clock::monotonic_ns();
            if spins == 1024 {
                spin_start = now;
            } else if now - spin_start > SPIN_NS {
                chain.wakers[me].park(20_000_000, || answered() || request_for_me().is_some());
                spins = 0;
                continue;
            }
        }
        if !in_vm {
            core::hint::spin_loop();
        }
    }
}

/// Runs the request in `frame` (addressed to this domain), answering it.
fn serve(chain: &Chain, frame: &Frame) {
    let (to, from) = (frame.to.load(Relaxed), frame.from.load(Relaxed));
    let (component, entry, len) = (frame.component.load(Relaxed), frame.entry.load(Relaxed), frame.len.load(Relaxed));
    let mut args = [MaybeUninit::uninit(); FRAME_DATA];
    let outcome = match lookup(to, component, entry) {
        None => Err(Refusal::NotExported),
        Some(_) if len as usize > FRAME_DATA => Err(Refusal::BadLength),
        Some(export) => {
            let args = frame.read_data(len as usize, &mut args);
            let mut result = [MaybeUninit::uninit(); FRAME_DATA];
            let mut w = Writer::new(&mut result);
            // In the callee's compartment (through its gate where it is an `mpk` one).
            let outcome = crate::switch_to(to as usize, || (export.run)(&mut Reader::new(args), &mut w));
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
    chain.notify(Some(frame.caller.load(Relaxed) as usize));
}

/// The main loop of domain `me`'s dispatcher: calls `start_partner(chain)`
/// for every chain that reaches the domain (once per chain), then sleeps
/// until the doorbell rings. A compartment process runs it on its main
/// thread (starting partner threads); the host runs one per `kvm`
/// compartment (starting vCPUs).
pub fn dispatch_forever(me: usize, mut start_partner: impl FnMut(usize)) -> ! {
    let bell = &control().doorbells[me];
    loop {
        let seen = bell.seq.load(SeqCst);
        for (index, chain) in control().chains.iter().enumerate() {
            if chain.partners.load(Acquire) & (1 << me) != 0 || !wants(chain, me) {
                continue;
            }
            chain.partners.fetch_or(1 << me, AcqRel);
            start_partner(index);
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
    CHAIN.with(|c| c.set(Some(chain)));
    wait(&control().chains[chain], 0);
    unreachable!("a partner's wait never returns")
}

/// The entry point of a partner vCPU in a `kvm` compartment's VM.
pub extern "C" fn guest_partner_entry(chain: usize) -> ! {
    serve_chain(chain)
}

/// Whether `chain`'s deepest frame is a request for domain `me`.
fn wants(chain: &Chain, me: usize) -> bool {
    deepest_request(chain, 1).is_some_and(|k| addressed_to(&chain.frames[k], me))
}

/// The deepest frame in use on `chain`, looking from frame `from` on
/// (frames in use are contiguous from 1); `None` if frame `from` is not in use.
fn deepest_request(chain: &Chain, from: usize) -> Option<usize> {
    (from..=MAX_DEPTH).take_while(|&k| chain.frames[k].state.load(Acquire) == REQUEST).last()
}

fn addressed_to(frame: &Frame, me: usize) -> bool {
    domain_of_untrusted(frame.to.load(Relaxed)) == Some(me)
}
