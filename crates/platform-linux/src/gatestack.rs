//! The stacks that `mpk` gates switch between (sharing `dss` and `heap`).
//!
//! Every execution context (a host thread's own, or a scheduler thread's)
//! owns one [`GateStacks`] table: for each *stack domain* (an `mpk`
//! compartment with private stacks, or the domain of shared stacks) the
//! stack this context uses there, created on first entry, and the position
//! where that stack was left when a gate went on into another domain.
//! Nested calls and callbacks (A calls B, B calls back into A) resume a
//! domain's stack below the frames it already holds; the table is switched
//! with the context, so every scheduler thread has its own stacks in every
//! compartment.
//!
//! The tables live in mappings of their own (key 0, the trusted core's
//! memory), never in a compartment's heap. Key 0 is writable by every `mpk`
//! compartment, so nothing in a table is trusted as an address: each
//! domain's stacks are slots of one arena reserved at start-up, whose base
//! lies in the trusted core's statics (which other compartments may read
//! but not write); a table names a stack by its slot number, and every
//! position a gate takes from a table is checked to lie inside that slot
//! before anything runs there ([`GateStacks::checked_entry`]).

use crate::memory::PAGE_SIZE;
use core::cell::Cell;
use core::ptr::null_mut;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Stack domains: one per compartment, and one for the shared stacks.
pub const DOMAINS: usize = crate::compartment::MAX_COMPARTMENTS + 1;

/// The usable size of a stack that a gate creates.
pub const STACK_SIZE: usize = 256 * 1024;

/// How many contexts may hold a stack in one domain at once.
pub const SLOTS: usize = 8192;

/// One slot of the arena: a guard below a stack ([`STACK_SIZE`] at the
/// slot's top). A power of two, and the arena starts at a multiple of it,
/// so that a filter can tell a slot's stack from any other range by its
/// address's low bits ([`SLOT_STACK_OFFSET`]).
pub const SLOT_SPAN: usize = 512 * 1024;

/// Where a slot's stack begins, from the slot's first byte (the guard
/// below it is this long).
pub const SLOT_STACK_OFFSET: usize = SLOT_SPAN - STACK_SIZE;

const _: () = assert!(SLOT_SPAN.is_power_of_two() && SLOT_STACK_OFFSET >= PAGE_SIZE);

/// The arena's first byte (a multiple of [`SLOT_SPAN`]): `DOMAINS * SLOTS`
/// slots, inaccessible until a slot is first handed out. Set once at
/// start-up ([`reserve`]), by the default compartment; a static, so it
/// carries the trusted core's key.
static ARENA: AtomicUsize = AtomicUsize::new(0);

/// Where the arena's occupancy bits are (one bit per slot, a mapping of its
/// own in key 0: any compartment's gate may take a slot). Set with [`ARENA`].
static USED: AtomicUsize = AtomicUsize::new(0);

/// Words of occupancy bits per domain.
const USED_WORDS: usize = SLOTS / 64;

/// Each row's protection key, given at start-up ([`reserve`]): 0 until then,
/// and for rows no gate uses. A static, so it carries the trusted core's key.
static ROW_KEYS: [AtomicU32; DOMAINS] = [const { AtomicU32::new(0) }; DOMAINS];

/// Reserves the arena of gate stacks (address space only; nothing is backed
/// until a slot is used), and gives each domain's row of slots its key
/// (`keys[domain]`; 0 leaves the row with the default key), inaccessible,
/// so that opening a slot later is an `mprotect`, which keeps the key: an
/// `mpk` image allows no `pkey_mprotect` after start-up (docs/mpk.md,
/// "System calls"). Called once at start-up, before any gate runs, by the
/// default compartment (the statics are written here and never again).
pub fn reserve(keys: &[u32; DOMAINS]) {
    if ARENA.load(Ordering::Acquire) != 0 {
        return;
    }
    let (arena, tables) =
        (reserve_aligned(DOMAINS * SLOTS * SLOT_SPAN, SLOT_SPAN), reserve_inaccessible(SLOTS * PAGE_SIZE));
    let Some(used) = crate::memory::Region::reserve((DOMAINS + 1) * USED_WORDS * 8) else {
        crate::console::write_err(b"flexos: cannot map the gate stacks' occupancy bits\n");
        crate::process_abort()
    };
    for (domain, &key) in keys.iter().enumerate() {
        if key == 0 {
            continue;
        }
        // SAFETY: the domain's row of the reservation just made, unused yet;
        // it stays inaccessible, now with the domain's key.
        if unsafe { crate::pkey::protect(arena + domain * SLOTS * SLOT_SPAN, SLOTS * SLOT_SPAN, key, false) }.is_err() {
            crate::console::write_err(b"flexos: cannot give the gate stacks their protection keys\n");
            crate::process_abort()
        }
        ROW_KEYS[domain].store(key, Ordering::Release);
    }
    USED.store(used.base.as_ptr() as usize, Ordering::Release);
    TABLES.store(tables, Ordering::Release);
    ARENA.store(arena, Ordering::Release);
}

/// The arena of gate stacks, `[start, end)` (empty before [`reserve`]).
pub fn arena() -> (usize, usize) {
    let base = ARENA.load(Ordering::Acquire);
    if base == 0 { (0, 0) } else { (base, base + DOMAINS * SLOTS * SLOT_SPAN) }
}

/// The tables' arena, `[start, end)`: one page per table (empty before
/// [`reserve`]). A page is opened when a context first takes it and never
/// closed, like a stack's slot.
pub fn tables() -> (usize, usize) {
    let base = TABLES.load(Ordering::Acquire);
    if base == 0 { (0, 0) } else { (base, base + SLOTS * PAGE_SIZE) }
}

/// Reserves `len` bytes of inaccessible address space (nothing backed)
/// that start at a multiple of `align` (a power of two, of whole pages).
fn reserve_aligned(len: usize, align: usize) -> usize {
    let wide = reserve_inaccessible(len + align);
    let start = wide.next_multiple_of(align);
    for (from, to) in [(wide, start), (start + len, wide + len + align)] {
        if to > from {
            // SAFETY: the slack before and after the aligned part of the
            // reservation just made, which nothing uses; unmapping it
            // leaves the aligned part as it is.
            unsafe { libc::munmap(from as *mut libc::c_void, to - from) };
        }
    }
    start
}

/// Reserves `len` bytes of inaccessible address space (nothing backed).
fn reserve_inaccessible(len: usize) -> usize {
    // SAFETY: a fresh anonymous reservation, inaccessible, at an address the
    // kernel chooses: it aliases nothing.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        crate::console::write_err(b"flexos: cannot reserve the address space of the gate stacks\n");
        crate::process_abort()
    }
    p as usize
}

/// The occupancy word `word` of row `domain` (a domain, or [`DOMAINS`]: the tables).
fn used_word(domain: usize, word: usize) -> &'static AtomicU64 {
    let base = USED.load(Ordering::Acquire);
    assert!(base != 0 && domain <= DOMAINS && word < USED_WORDS, "gate stacks used before they were reserved");
    // SAFETY: `reserve` mapped (DOMAINS + 1) * USED_WORDS zeroed, 8-aligned words
    // that are never unmapped; the index is in range (checked above).
    unsafe { &*(base as *const AtomicU64).add(domain * USED_WORDS + word) }
}

/// The top (exclusive) of slot `slot` of `domain`.
#[inline]
fn slot_top(domain: usize, slot: usize) -> usize {
    ARENA.load(Ordering::Acquire) + (domain * SLOTS + slot + 1) * SLOT_SPAN
}

/// Takes a free slot of row `row` of the occupancy bits (a domain's
/// stacks, or the tables at row [`DOMAINS`]).
fn take(row: usize) -> usize {
    for word in 0..USED_WORDS {
        let w = used_word(row, word);
        let mut bits = w.load(Ordering::Relaxed);
        while bits != u64::MAX {
            let bit = (!bits).trailing_zeros() as usize;
            match w.compare_exchange_weak(bits, bits | 1 << bit, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return word * 64 + bit,
                Err(now) => bits = now,
            }
        }
    }
    crate::console::write_err(b"flexos: every gate stack of a compartment is in use (too many threads)\n");
    crate::process_abort()
}

/// Frees slot `slot` of row `row`.
fn free(row: usize, slot: usize) {
    used_word(row, slot / 64).fetch_and(!(1 << (slot % 64)), Ordering::AcqRel);
}

/// Makes `[addr, addr + len)` of a slot just taken in row `row` usable
/// with key `key`: an `mprotect` where the row already carries that key
/// (every row of an `mpk` image's domains, and the tables' row, key 0),
/// else `pkey_mprotect`.
fn open_slot(row: usize, addr: usize, len: usize, key: u32) {
    let keyed = row == DOMAINS || ROW_KEYS[row].load(Ordering::Acquire) == key;
    let opened = if keyed {
        // SAFETY: part of the arena (reserved, never unmapped) that belongs
        // to a slot the caller just took and nobody uses; mprotect makes it
        // readable and writable and keeps its key.
        let rc = unsafe { libc::mprotect(addr as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE) };
        if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    } else {
        // SAFETY: as above; pkey_mprotect also gives it `key`.
        unsafe { crate::pkey::protect(addr, len, key, true) }
    };
    if let Err(e) = opened {
        panic!("cannot open a gate stack with protection key {key}: {e}")
    }
}

/// Takes a free stack of `domain` and makes it usable with key `key`.
#[cold]
#[inline(never)]
fn take_stack(domain: usize, key: u32) -> usize {
    let slot = take(domain);
    let bottom = slot_top(domain, slot) - STACK_SIZE;
    open_slot(domain, bottom, STACK_SIZE, key);
    // A slot may hold an old stack's redzones.
    crate::kasan::unpoison_stack(bottom, STACK_SIZE);
    slot
}

/// Gives stack `slot` of `domain` back. It stays open, with its pages
/// (the next context to take the slot, of the same domain, finds old
/// frames of its own compartment there): opening a slot's stack is the one
/// `mprotect` an `mpk` image allows in the arena after boot, so that no
/// compartment can make another's stacks inaccessible (docs/mpk.md,
/// "System calls").
fn give_back_stack(domain: usize, slot: usize) {
    free(domain, slot);
}

/// The top (exclusive) of slot `slot` of `domain`, as a slot of thread-local storage.
#[inline]
pub(crate) fn tls_slot_top(domain: usize, slot: usize) -> usize {
    slot_top(domain, slot)
}

/// Takes a free slot of `domain` for a copy of a thread's thread-local
/// storage ([`crate::tls`]), opened as a stack is (the one `mprotect` the
/// memory filter allows in the arena), with the row's key.
pub(crate) fn take_tls_slot(domain: usize) -> usize {
    take_stack(domain, ROW_KEYS[domain].load(Ordering::Acquire))
}

/// Gives back a slot of [`take_tls_slot`] (it stays open, like a stack's).
pub(crate) fn give_back_tls_slot(domain: usize, slot: usize) {
    free(domain, slot);
}

/// A thread's first stack with protection key `key`, as a slot of the
/// arena's row that carries that key (so no `pkey_mprotect` is needed
/// after start-up): `(row, slot, top)`, or `None` when no row has that key
/// or the stack would be larger than a slot's [`STACK_SIZE`].
pub fn take_keyed_stack(key: u32, size: usize) -> Option<(usize, usize, usize)> {
    if key == 0 || size > STACK_SIZE || ARENA.load(Ordering::Acquire) == 0 {
        return None;
    }
    let row = ROW_KEYS.iter().position(|k| k.load(Ordering::Acquire) == key)?;
    let slot = take_stack(row, key);
    Some((row, slot, slot_top(row, slot)))
}

/// Gives back a stack of [`take_keyed_stack`].
///
/// # Safety
/// No context runs on it any more.
pub unsafe fn give_back_keyed_stack(row: usize, slot: usize) {
    give_back_stack(row, slot)
}

/// A table that is not what the gates wrote: another compartment changed
/// it. Stops the image with a report (nothing taken from it is used).
#[cold]
#[inline(never)]
fn rewritten(what: &str) -> ! {
    let report = format!(
        "flexos: the gate-stack table of this thread was rewritten ({what}); a compartment wrote the trusted \
         core's memory. Stopping the image.\n"
    );
    crate::console::write_err(report.as_bytes());
    crate::process_abort()
}

/// Memory that the gate layer allocated for a context (a data shadow
/// stack): its address and length, freed through the
/// function registered with [`set_release`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Block {
    /// First byte (0: none).
    pub base: usize,
    /// Length in bytes.
    pub len: usize,
}

/// One context's stacks, by stack domain. Every field may have been
/// rewritten by another compartment; what a gate uses is checked first.
#[derive(Debug)]
pub struct GateStacks {
    /// Where each domain's stack was left by the gate that went on into
    /// another domain; 0 while the domain is not active in this context.
    pub left_at: [usize; DOMAINS],
    /// Each domain's stack: its slot in the arena, plus one (0: none yet).
    slots: [usize; DOMAINS],
    /// Each domain's data shadow stack (mirror of its stack), if made.
    pub mirrors: [Block; DOMAINS],
}

/// The tables' own arena: one page per table, [`SLOTS`] of them. Set by [`reserve`].
static TABLES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The table of the context running on this host thread.
    static ACTIVE: Cell<*mut GateStacks> = const { Cell::new(null_mut()) };
    /// Gives the host thread's table back when the thread ends (registered
    /// only where registering may allocate: see [`active`]).
    static GIVE_BACK: ThreadEnd = const { ThreadEnd };
}

/// Frees the running context's table when its host thread ends.
struct ThreadEnd;

/// The host thread's [`ACTIVE`] (in its own thread-local block, whichever
/// domain's block runs: [`crate::tls::host_thread`]).
#[inline]
fn active_cell() -> &'static Cell<*mut GateStacks> {
    // SAFETY: the thread's own block lives as long as the thread, and only
    // this thread uses its cell.
    unsafe { &*crate::tls::host_thread(&ACTIVE) }
}

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        let table = active_cell().get();
        if table_slot(table).is_none() {
            return;
        }
        // A process may end (`exit` runs this thread's destructors) from
        // inside a gate, on one of the table's stacks: then it stays.
        let here = &table as *const _ as usize;
        // SAFETY: a table of the arena (checked), read only.
        let t = unsafe { &*table };
        if (0..DOMAINS).any(|d| t.runs_on_stack(d, here)) {
            return;
        }
        // The blocks first, while the table is still this thread's: freeing
        // one may cross a gate into the compartment that owns it, and a gate
        // runs on this table's stacks.
        // SAFETY: this thread's table (checked), used by no other thread.
        unsafe { (*table).release_blocks() };
        active_cell().set(null_mut());
        // SAFETY: the thread is ending and runs on none of the table's
        // stacks (checked above), so no code runs there any more; the
        // table is no context's now (ACTIVE was cleared).
        unsafe { GateStacks::destroy(table) }
    }
}

/// How to free a [`Block`] (set by the gate layer, which allocated it).
static RELEASE: AtomicUsize = AtomicUsize::new(0);

/// Registers how [`Block`]s are freed when their context ends.
pub fn set_release(release: fn(Block)) {
    RELEASE.store(release as usize, Ordering::Relaxed);
}

fn release(block: Block) {
    let f = RELEASE.load(Ordering::Relaxed);
    if block.base != 0 && f != 0 {
        // SAFETY: the only value ever stored is a `fn(Block)` (set_release).
        let f: fn(Block) = unsafe { core::mem::transmute::<usize, fn(Block)>(f) };
        f(block)
    }
}

/// Reads a field of a table once (another thread may change it meanwhile;
/// the value read is the one checked and used).
#[inline]
fn fetch(field: &usize) -> usize {
    // SAFETY: a reference to an initialized, aligned usize.
    unsafe { core::ptr::read_volatile(field) }
}

impl GateStacks {
    /// A new, empty table in a page of the tables' arena (key 0). Not in the
    /// C library's heap: its allocator keeps its state in statics, which an
    /// `mpk` compartment other than the default may not write, and a
    /// context's first gate may start in any compartment (docs/mpk.md).
    fn create() -> *mut GateStacks {
        const { assert!(size_of::<GateStacks>() <= PAGE_SIZE) };
        let slot = take(DOMAINS);
        let p = table_address(slot) as *mut GateStacks;
        open_slot(DOMAINS, p as usize, PAGE_SIZE, 0);
        // SAFETY: the page of a table slot just taken: readable, writable,
        // page-aligned and used by nobody; the table is moved into it.
        unsafe {
            p.write(GateStacks { left_at: [0; DOMAINS], slots: [0; DOMAINS], mirrors: [Block::default(); DOMAINS] })
        };
        p
    }

    /// Frees a table made by [`GateStacks::create`], with its stacks and
    /// blocks (those whose numbers are in range).
    ///
    /// # Safety
    /// No context may run on its stacks any more, and `table` is not used again.
    pub(crate) unsafe fn destroy(table: *mut GateStacks) {
        let Some(slot) = table_slot(table) else { return };
        // SAFETY: a table of the arena (checked), unused by the contract.
        let t = unsafe { table.read() };
        for (domain, &s) in t.slots.iter().enumerate() {
            if (1..=SLOTS).contains(&s) {
                give_back_stack(domain, s - 1);
            }
        }
        t.mirrors.iter().copied().for_each(release);
        // The page stays open, like a stack's slot (`give_back_stack`).
        free(DOMAINS, slot);
    }

    /// Frees the context's blocks (its data shadow stacks).
    fn release_blocks(&mut self) {
        for mirror in &mut self.mirrors {
            release(core::mem::take(mirror));
        }
    }

    /// The top of this context's stack in domain `domain`, made on first
    /// use with protection key `key` (0: none).
    /// (Inlined into every gate: the gates' code should hold the checks,
    /// not calls to them; making the stack is out of line.)
    #[inline]
    pub fn stack_top(&mut self, domain: usize, key: u32) -> usize {
        let slot = match fetch(&self.slots[domain]) {
            0 => self.make_stack(domain, key),
            s if s <= SLOTS => s - 1,
            _ => rewritten("a stack number out of range"),
        };
        slot_top(domain, slot)
    }

    /// Takes this context's stack in `domain` (its first entry there).
    #[cold]
    #[inline(never)]
    fn make_stack(&mut self, domain: usize, key: u32) -> usize {
        let slot = take_stack(domain, key);
        self.slots[domain] = slot + 1;
        slot
    }

    /// Where a gate into `domain` puts `below` bytes of the call, checked:
    /// below the position `left` (the domain's stack was left there by a
    /// gate still waiting in this context, minus a red zone), or at the top
    /// of this context's stack there when `left` is 0; the whole call must
    /// lie on that stack, else the table was rewritten and the image stops.
    #[inline]
    pub fn checked_entry(&mut self, domain: usize, key: u32, left: usize, below: usize) -> usize {
        let top = self.stack_top(domain, key);
        let target = if left != 0 { left.wrapping_sub(128) & !15 } else { top };
        if target > top || target < top - STACK_SIZE + below {
            rewritten("a stack position outside the compartment's stack")
        }
        target - below
    }

    /// The bounds `[bottom, top)` of this context's stack in `domain`, if one was made.
    #[inline]
    pub fn stack_bounds(&self, domain: usize) -> Option<(usize, usize)> {
        match fetch(&self.slots[domain]) {
            0 => None,
            s if s <= SLOTS => Some((slot_top(domain, s - 1) - STACK_SIZE, slot_top(domain, s - 1))),
            _ => rewritten("a stack number out of range"),
        }
    }

    /// Whether `addr` lies on this context's stack in `domain`.
    #[inline]
    pub fn runs_on_stack(&self, domain: usize, addr: usize) -> bool {
        self.stack_bounds(domain).is_some_and(|(bottom, top)| (bottom..top).contains(&addr))
    }
}

/// The page of table slot `slot`.
#[inline]
fn table_address(slot: usize) -> usize {
    TABLES.load(Ordering::Acquire) + slot * PAGE_SIZE
}

/// The slot of `table` if it is a page of the tables' arena.
#[inline]
fn table_slot(table: *mut GateStacks) -> Option<usize> {
    let base = TABLES.load(Ordering::Acquire);
    let offset = (table as usize).wrapping_sub(base);
    (base != 0 && offset < SLOTS * PAGE_SIZE && offset.is_multiple_of(PAGE_SIZE)).then_some(offset / PAGE_SIZE)
}

/// The table of the running context (created on first use). A pointer
/// that is no table of the arena was rewritten: the image stops.
#[inline]
pub fn active() -> *mut GateStacks {
    let p = active_cell().get();
    if p.is_null() {
        return first_table();
    }
    if table_slot(p).is_none() {
        rewritten("the pointer to it")
    }
    p
}

/// Makes the running context's table (its first gate).
#[cold]
#[inline(never)]
fn first_table() -> *mut GateStacks {
    let p = GateStacks::create();
    active_cell().set(p);
    // Registering a thread-local's destructor allocates with the C
    // library's allocator, whose state is a static: only a compartment
    // that may write statics does it (a host thread's first gate is the
    // default compartment's, as a rule); the table of any other stays
    // until the process ends.
    if crate::pkey::may_write_statics(crate::compartment::current()) {
        GIVE_BACK.with(|_| ());
    }
    p
}

/// Makes `table` the running context's table and returns the previous one
/// (null if it was never used). Called by the context switch.
pub(crate) fn swap(table: *mut GateStacks) -> *mut GateStacks {
    active_cell().replace(table)
}

/// Stops the image because a gate found a value of the trusted core's
/// memory that the gates did not write (for the gate layer's own checks).
pub fn table_rewritten(what: &str) -> ! {
    rewritten(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many slots of `row` are taken now.
    fn taken(row: usize) -> u32 {
        (0..USED_WORDS).map(|w| used_word(row, w).load(Ordering::SeqCst).count_ones()).sum()
    }

    #[test]
    fn a_threads_table_and_stacks_are_slots_of_the_arena_and_are_given_back_when_it_ends() {
        reserve(&[0; DOMAINS]);
        let before = (taken(DOMAINS), taken(3));
        std::thread::spawn(|| {
            let table = active();
            assert!(table_slot(table).is_some(), "the table is a page of the tables' arena");
            assert_eq!(active(), table, "one table per context");
            // SAFETY: this thread's table, used only here.
            let t = unsafe { &mut *table };
            assert_eq!(t.stack_bounds(3), None, "no stack before the first entry");
            let top = t.stack_top(3, 0);
            assert_eq!(t.stack_top(3, 0), top, "the same stack on the next entry");
            assert_eq!(t.stack_bounds(3), Some((top - STACK_SIZE, top)));
            // SAFETY: the top word of the stack just made (readable and writable).
            unsafe { ((top - 8) as *mut u64).write_volatile(7) };
            assert_eq!(t.checked_entry(3, 0, 0, 64), top - 64, "a first entry starts at the top");
            let left = top - 1000;
            assert_eq!(t.checked_entry(3, 0, left, 64), ((left - 128) & !15) - 64, "a nested one below where it left");
        })
        .join()
        .expect("the thread");
        assert_eq!((taken(DOMAINS), taken(3)), before, "the thread's table and stack were given back");
    }
}
