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
//! compartment and there is no fixed limit on the number of threads.
//!
//! The tables live in mappings of their own (key 0, the trusted core's
//! memory), never in a compartment's heap.

use crate::memory::Stack;
use core::cell::Cell;
use core::ptr::null_mut;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Stack domains: one per compartment, and one for the shared stacks.
pub const DOMAINS: usize = crate::compartment::MAX_COMPARTMENTS + 1;

/// The usable size of a stack that a gate creates.
pub const STACK_SIZE: usize = 256 * 1024;

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

/// One context's stacks, by stack domain.
#[derive(Debug)]
pub struct GateStacks {
    /// Where each domain's stack was left by the gate that went on into
    /// another domain; 0 while the domain is not active in this context.
    pub left_at: [usize; DOMAINS],
    stacks: [Option<Stack>; DOMAINS],
    /// Each domain's data shadow stack (mirror of its stack), if made.
    pub mirrors: [Block; DOMAINS],
}

thread_local! {
    /// The table of the context running on this host thread.
    static ACTIVE: Cell<*mut GateStacks> = const { Cell::new(null_mut()) };
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

impl GateStacks {
    /// A new, empty table in a mapping of its own (key 0). Not in the C
    /// library's heap: its allocator keeps its state in statics, which an
    /// `mpk` compartment other than the default may not write, and a
    /// context's first gate may start in any compartment (docs/mpk.md).
    fn create() -> *mut GateStacks {
        let table = GateStacks {
            left_at: [0; DOMAINS],
            stacks: [const { None }; DOMAINS],
            mirrors: [Block::default(); DOMAINS],
        };
        let Some(region) = crate::memory::Region::reserve(size_of::<GateStacks>()) else {
            crate::console::write_err(b"flexos: cannot map a gate stack table\n");
            crate::process_abort()
        };
        // SAFETY: a fresh, writable, page-aligned mapping of at least the
        // table's size; the table is moved into it and owned by the pointer.
        unsafe {
            let p = region.base.as_ptr().cast::<GateStacks>();
            p.write(table);
            p
        }
    }

    /// Frees a table made by [`GateStacks::create`], with its stacks and blocks.
    ///
    /// # Safety
    /// No context may run on its stacks any more, and `table` is not used again.
    pub(crate) unsafe fn destroy(table: *mut GateStacks) {
        if table.is_null() {
            return;
        }
        // SAFETY: by the contract the table is ours and unused; reading it
        // out moves its stacks (unmapped when dropped) before the memory is freed.
        let t = unsafe { table.read() };
        // SAFETY: mapped in `create` with the table's size (rounded up to pages).
        unsafe { libc::munmap(table.cast(), size_of::<GateStacks>()) };
        t.mirrors.iter().copied().for_each(release);
        drop(t.stacks);
    }

    /// The top of this context's stack in domain `domain`, mapped on first
    /// use with protection key `key` (0: none).
    pub fn stack_top(&mut self, domain: usize, key: u32) -> usize {
        self.stacks[domain].get_or_insert_with(|| Stack::with_key(STACK_SIZE, key)).top() as usize
    }

    /// The bounds `[bottom, top)` of this context's stack in `domain`, if one was made.
    pub fn stack_bounds(&self, domain: usize) -> Option<(usize, usize)> {
        self.stacks[domain].as_ref().map(|s| (s.top() as usize - s.size(), s.top() as usize))
    }
}

/// The table of the running context (created on first use).
pub fn active() -> *mut GateStacks {
    ACTIVE.with(|a| {
        if a.get().is_null() {
            a.set(GateStacks::create());
        }
        a.get()
    })
}

/// Makes `table` the running context's table and returns the previous one
/// (null if it was never used). Called by the context switch.
pub(crate) fn swap(table: *mut GateStacks) -> *mut GateStacks {
    ACTIVE.with(|a| a.replace(table))
}
