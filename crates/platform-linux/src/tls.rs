//! Thread-local storage of its own for every stack domain (`mpk`).
//!
//! A host thread's thread-locals (the C library's control block at the
//! `fs` base and the static TLS block below it: errno, std's thread-locals,
//! the compartment register, the gates' state-table pointers) lie in key 0,
//! which every `mpk` compartment may write. Here every stack domain other
//! with stacks of its own gets, per host thread, a *copy* of that
//! block in a slot of the gate-stack arena of its own row, so under its own
//! key; the stack-switching gates move the `fs` base (`wrfsbase`) to the
//! callee's copy after they switch rights, and back to the caller's block
//! after they switch back. A compartment's thread-locals are then its own:
//! no other `mpk` compartment can read or rewrite them (attack
//! `write-thread-locals`). The thread's own block (the C library's, in
//! which the thread starts and ends) is used by the shared stacks' domain
//! only; the main thread moves onto its home compartment's copy at
//! start-up ([`move_to`]).
//!
//! A copy is made from the thread's own block on the first entry into its
//! domain, by the gate, with the callee's rights (only they can write it),
//! and given back when the thread ends. What must stay one value per host
//! thread (the running context's gate-stack table, the remote-call chain)
//! is read and written in the thread's own block from every copy
//! ([`host_thread`]): each copy holds that block's address, which it
//! inherits when it is made. The thread's own block is still key 0: what
//! lies there is as writable as before (docs/mpk.md, "Plan: key 0 out of
//! reach").
//!
//! Made only in a statically linked image (where the whole static TLS
//! block is the program's, local-exec, and its size is known) on a CPU and
//! kernel with `FSGSBASE`; elsewhere every domain uses the thread's block.

use crate::gatestack::{self, DOMAINS};
use core::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::LocalKey;

/// Bytes of the static TLS block below the thread pointer (the program's
/// `PT_TLS` size, rounded up to its alignment). 0: copies are off.
static BELOW: AtomicUsize = AtomicUsize::new(0);
/// Bytes of the C library's control block at and above the thread pointer.
static ABOVE: AtomicUsize = AtomicUsize::new(0);
/// The stack domain that uses the thread's own block: the shared stacks'
/// (`fcall` compartments and `mpk` ones with sharing `shared-stack`,
/// whose memory is open to each other anyway). `usize::MAX`: copies are off.
static ORIGINAL_DOMAIN: AtomicUsize = AtomicUsize::new(usize::MAX);

thread_local! {
    /// The thread pointer of this host thread's own block (0 until its
    /// first copy is made). Copies inherit it.
    static OWN_BLOCK: Cell<usize> = const { Cell::new(0) };
    /// Per stack domain, the slot (+1; 0: none) of this host thread's copy.
    /// Meaningful in the thread's own block only (see [`host_thread`]).
    static COPIES: [Cell<usize>; DOMAINS] = const { [const { Cell::new(0) }; DOMAINS] };
}

/// The thread pointer (`fs:0`, which the C library and every copy keep
/// pointing at the block itself).
#[inline]
pub fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: reads the control block's self pointer, which every thread
    // has (x86-64 TLS ABI); no memory is written.
    unsafe { core::arch::asm!("mov {}, qword ptr fs:0", out(reg) tp, options(nostack, readonly, preserves_flags)) };
    tp
}

/// The thread pointer of this host thread's own block (the C library's,
/// where the kernel knows its restartable-sequence area), whichever
/// domain's block runs.
pub fn own_thread_pointer() -> usize {
    match OWN_BLOCK.with(|o| o.get()) {
        0 => thread_pointer(),
        own => own,
    }
}

/// Turns copies on (at start-up, by the default compartment, before any
/// gate runs): `below` bytes of static TLS under the thread pointer,
/// `above` bytes of control block from it, `shared_domain` (the shared
/// stacks' domain) keeps the thread's own block.
pub fn enable(below: usize, above: usize, shared_domain: usize) {
    assert!(below + above + 64 < gatestack::STACK_SIZE, "thread-local storage larger than a slot");
    // Every block says "more than one thread" (see `fill`), the thread's own too.
    // SAFETY: the running thread's control block (the C library's), whose
    // `multiple_threads` word lies at fs:0x18 (x86-64 `tcbhead_t`).
    unsafe { core::arch::asm!("mov dword ptr fs:0x18, 1", options(nostack, preserves_flags)) };
    // SAFETY: a fresh private anonymous mapping (key 0), kept for good.
    let table = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            OWN_ROWS * 16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(table != libc::MAP_FAILED, "cannot map the table of threads' blocks");
    OWN_TABLE.store(table as usize, Ordering::Release);
    register_thread();
    BELOW.store(below, Ordering::Relaxed);
    ABOVE.store(above, Ordering::Relaxed);
    ORIGINAL_DOMAIN.store(shared_domain, Ordering::Release);
}

/// Where each host thread's own block is, by thread id, for the fault
/// handler (which runs with key 0 only and so cannot read a domain's copy
/// to find it): [`OWN_ROWS`] rows of (thread id, thread pointer) in a
/// mapping of key 0 made at start-up. Any compartment can rewrite it; a
/// handler sent to a wrong block has key 0's rights only, which every
/// compartment has, so the most a writer gets is a garbled report.
static OWN_TABLE: AtomicUsize = AtomicUsize::new(0);
const OWN_ROWS: usize = 4096;

fn own_row(tid: usize) -> *mut [AtomicUsize; 2] {
    let base = OWN_TABLE.load(Ordering::Acquire);
    (base + (tid % OWN_ROWS) * 16) as *mut [AtomicUsize; 2]
}

/// Writes down the running thread's own block (at its start, in its own block).
pub fn register_thread() {
    if OWN_TABLE.load(Ordering::Acquire) == 0 {
        return;
    }
    // SAFETY: gettid has no arguments and no memory effects.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as usize;
    // SAFETY: a row of the table (mapped at start-up, never unmapped).
    let row = unsafe { &*own_row(tid) };
    row[1].store(thread_pointer(), Ordering::Relaxed);
    row[0].store(tid, Ordering::Release);
}

/// Points `fs` back at the running thread's own block, if the table
/// knows it (the fault handler's first step; it reads no thread-local).
#[inline(always)]
pub(crate) fn back_to_own_block() {
    let base = OWN_TABLE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    // SAFETY: gettid has no arguments and no memory effects.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as usize;
    // SAFETY: a row of the table (mapped at start-up, never unmapped).
    let row = unsafe { &*own_row(tid) };
    if row[0].load(Ordering::Acquire) == tid {
        let tp = row[1].load(Ordering::Relaxed);
        // SAFETY: moves this thread's fs base to a block of this thread
        // (or, if the table was rewritten, anywhere: the code that follows
        // has key 0's rights only, and faults where the block is not).
        unsafe { core::arch::asm!("wrfsbase {}", in(reg) tp, options(nostack, preserves_flags)) };
    }
}

/// Whether stack domains get copies of their own.
#[inline]
pub fn enabled() -> bool {
    ORIGINAL_DOMAIN.load(Ordering::Acquire) != usize::MAX
}

/// The address of `local` in this host thread's own block, from whichever
/// block runs (the same as `local`'s own address where no copy is made).
/// For thread-locals whose value is the host thread's, not a domain's.
#[inline]
pub fn host_thread<T: 'static>(local: &'static LocalKey<T>) -> *const T {
    let here = local.with(|v| v as *const T as usize);
    let own = OWN_BLOCK.with(|o| o.get());
    if own == 0 {
        return here as *const T;
    }
    own.wrapping_add(here.wrapping_sub(thread_pointer())) as *const T
}

/// Where a gate into stack domain `domain` points `fs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The thread pointer of the domain's block on this host thread (0:
    /// copies are off; `fs` stays).
    pub tp: usize,
    /// Nonzero: the copy was just taken, and must first be filled from the
    /// thread's own block, which starts here ([`fill`], with the domain's rights).
    pub fill_from: usize,
}

/// The thread pointer of slot `slot`'s copy in `domain`.
#[inline]
fn copy_tp(domain: usize, slot: usize) -> usize {
    (gatestack::tls_slot_top(domain, slot) - ABOVE.load(Ordering::Relaxed)) & !63
}

/// Where the gate into `domain` points `fs` on this host thread, taking
/// (not filling) the copy on the first entry. Called on the caller's side
/// of a gate, with the caller's rights.
///
/// # Safety
/// Where the entry says `fill_from`, the caller has it [`fill`]ed (with
/// the domain's rights) before anything runs on it: a copy taken and not
/// filled would hand the domain's next entry a block of stale bytes.
#[inline]
pub unsafe fn entry(domain: usize) -> Entry {
    if !enabled() {
        return Entry::default();
    }
    let own = own_thread_pointer();
    if domain == ORIGINAL_DOMAIN.load(Ordering::Relaxed) {
        return Entry { tp: own, fill_from: 0 };
    }
    // SAFETY: the thread's own block is this thread's, alive while it runs.
    let copies = unsafe { &*host_thread(&COPIES) };
    match copies[domain].get() {
        0 => take_copy(domain, own, copies),
        s if s <= gatestack::SLOTS => Entry { tp: copy_tp(domain, s - 1), fill_from: 0 },
        _ => gatestack::table_rewritten("a thread-local copy's number out of range"),
    }
}

/// Takes this host thread's copy in `domain` (its first entry there).
#[cold]
#[inline(never)]
fn take_copy(domain: usize, own: usize, copies: &[Cell<usize>; DOMAINS]) -> Entry {
    OWN_BLOCK.with(|o| {
        if o.get() == 0 {
            // Still in the thread's own block: copies made from now on inherit it.
            o.set(own)
        }
    });
    let slot = gatestack::take_tls_slot(domain);
    copies[domain].set(slot + 1);
    Entry { tp: copy_tp(domain, slot), fill_from: own - BELOW.load(Ordering::Relaxed) }
}

/// Fills a copy just taken: the thread's block from `from` (its static TLS
/// and control block), with the copy's self pointers (`fs:0`, and the
/// control block's `self` at `fs:16`) set to `tp` and its
/// `multiple_threads` word (`fs:0x18`) to 1.
///
/// Uses no thread-local itself (it runs between the switch of rights and
/// the switch of `fs`, when the running block is the caller's).
///
/// # Safety
/// `tp` is an [`Entry`]'s of this thread with `fill_from == from`, and the
/// running rights may write the copy's slot.
pub unsafe extern "C" fn fill(tp: usize, from: usize) {
    let below = BELOW.load(Ordering::Relaxed);
    let len = below + ABOVE.load(Ordering::Relaxed);
    // SAFETY: by the contract, `[from, from + len)` is the thread's own
    // block (mapped, readable by every compartment) and `[tp - below, tp +
    // above)` lies in the copy's slot, writable with the running rights;
    // they do not overlap (different mappings).
    unsafe {
        core::ptr::copy_nonoverlapping(from as *const u8, (tp - below) as *mut u8, len);
        (tp as *mut usize).write(tp);
        ((tp + 16) as *mut usize).write(tp);
        // `multiple_threads`: the C library takes its locks with plain
        // (unlocked) instructions in a block that says 0, and sets it only
        // in the block that starts the process's second thread; a copy
        // made before that would keep saying 0.
        ((tp + 0x18) as *mut u32).write(1);
    }
}

/// Gives this host thread's copies back.
///
/// # Safety
/// At the thread's end, on its own block: no code runs on a copy of it
/// any more (another thread may take and fill a slot at once).
pub unsafe fn give_back_copies() {
    if !enabled() {
        return;
    }
    // SAFETY: the thread's own block is this thread's, alive while it runs.
    let copies = unsafe { &*host_thread(&COPIES) };
    for (domain, c) in copies.iter().enumerate() {
        let s = c.replace(0);
        if (1..=gatestack::SLOTS).contains(&s) {
            gatestack::give_back_tls_slot(domain, s - 1);
        }
    }
}

/// Moves the running thread for good onto domain `domain`'s block (the
/// main thread, at start-up, onto its home compartment's), made now.
///
/// # Safety
/// The running rights may write the domain's copy, and no reference into
/// the running block's thread-locals is held (they would go on pointing
/// at the block left behind).
pub unsafe fn move_to(domain: usize) {
    // SAFETY: filled below before anything runs on it.
    let e = unsafe { entry(domain) };
    if e.tp == 0 {
        return;
    }
    if e.fill_from != 0 {
        // SAFETY: an entry of this thread just taken, filled once, with
        // rights that may write its slot (this function's contract).
        unsafe { fill(e.tp, e.fill_from) };
    }
    // SAFETY: moves this thread's fs base to its block of `domain`, a copy
    // of the block it ran on, so every thread-local keeps its value.
    unsafe { core::arch::asm!("wrfsbase {}", in(reg) e.tp, options(nostack, preserves_flags)) };
}

/// The address in domain `domain`'s block of this host thread of the
/// thread-local at `addr` in the running block (0 if the domain has no
/// copy on this thread yet). For the attack tests, which aim at another
/// domain's thread-locals.
pub fn in_domain(addr: usize, domain: usize) -> usize {
    if !enabled() {
        return addr;
    }
    let own = own_thread_pointer();
    let tp = if domain == ORIGINAL_DOMAIN.load(Ordering::Relaxed) {
        own
    } else {
        // SAFETY: the thread's own block is this thread's, alive while it runs.
        match unsafe { &*host_thread(&COPIES) }[domain].get() {
            s if (1..=gatestack::SLOTS).contains(&s) => copy_tp(domain, s - 1),
            _ => return 0,
        }
    };
    tp.wrapping_add(addr.wrapping_sub(thread_pointer()))
}
