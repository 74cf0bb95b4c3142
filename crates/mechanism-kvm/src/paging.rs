//! Guest page tables (4-level, x86-64), built by the host in memory that the
//! VM sees only as guest-physical memory (they are not mapped at any guest
//! virtual address, so the guest cannot change them).

use crate::PAGE;

/// Present.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 2;
/// Accessible at CPL3.
pub const US: u64 = 4;
/// Large page (in a page-directory entry: 2 MiB).
const PS: u64 = 0x80;
/// Not executable.
pub const NX: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// A pool of page-table pages: `pages` zeroed pages at host address `host`,
/// guest-physical address `gpa`. The first page is the top-level table.
pub struct PageTables {
    host: usize,
    gpa: u64,
    pages: usize,
    used: usize,
}

impl PageTables {
    /// Tables in the zeroed pool `[host, host + pages * 4096)`, seen by the guest at `gpa`.
    ///
    /// # Safety
    /// The pool must be zeroed, writable, used for nothing else, and live as long as the VM.
    pub unsafe fn new(host: usize, gpa: u64, pages: usize) -> PageTables {
        PageTables { host, gpa, pages, used: 1 }
    }

    /// The value for CR3: the top-level table's guest-physical address.
    pub fn root(&self) -> u64 {
        self.gpa
    }

    fn table(&mut self, gpa: u64) -> &mut [u64; 512] {
        let offset = (gpa - self.gpa) as usize;
        assert!(offset < self.pages * PAGE);
        // SAFETY: every table's gpa comes from this pool (checked above), and
        // the pool is ours alone (by `new`'s contract); `&mut self` makes the
        // borrow exclusive.
        unsafe { &mut *((self.host + offset) as *mut [u64; 512]) }
    }

    fn next_table(&mut self, table: u64, index: usize) -> u64 {
        let entry = self.table(table)[index];
        if entry & P != 0 {
            return entry & ADDRESS;
        }
        assert!(self.used < self.pages, "the VM's page-table pool is exhausted");
        let gpa = self.gpa + (self.used * PAGE) as u64;
        self.used += 1;
        // Intermediate entries allow everything; the leaf entries decide.
        self.table(table)[index] = gpa | P | RW | US;
        gpa
    }

    /// Maps the 4 KiB page at `va` to `gpa` with `flags`.
    pub fn map_4k(&mut self, va: usize, gpa: u64, flags: u64) {
        let pdpt = self.next_table(self.gpa, (va >> 39) & 511);
        let pd = self.next_table(pdpt, (va >> 30) & 511);
        let pt = self.next_table(pd, (va >> 21) & 511);
        self.table(pt)[(va >> 12) & 511] = gpa | flags | P;
    }

    /// Maps the 2 MiB page at `va` (2 MiB-aligned) to `gpa` with `flags`.
    pub fn map_2m(&mut self, va: usize, gpa: u64, flags: u64) {
        assert!(va.is_multiple_of(2 << 20) && gpa.is_multiple_of(2 << 20), "2 MiB pages must be aligned");
        let pdpt = self.next_table(self.gpa, (va >> 39) & 511);
        let pd = self.next_table(pdpt, (va >> 30) & 511);
        self.table(pd)[(va >> 21) & 511] = gpa | flags | P | PS;
    }
}
