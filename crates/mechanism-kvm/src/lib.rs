//! The `kvm` mechanism (DESIGN section 5.4): a compartment runs inside a KVM
//! virtual machine that the image builds itself with the rust-vmm crates.
//!
//! The VM runs the image's own code at guest CPL3, with guest page tables
//! that map, at the same virtual addresses as in the host process:
//!
//! * the executable's code and constants, read-only (memory slots flagged
//!   read-only point at the host's own pages);
//! * a private copy of the executable's writable data, taken when the VM is
//!   made, with the platform's statics patched to say "in a VM";
//! * the compartment's private span (its heap and, at the top, one stack
//!   and thread-local block per vCPU, each above an unmapped guard page);
//! * of the shared span, the shared heap, the control area's common part
//!   and the call frames of the pairs of domains this one belongs to (not
//!   the frames of calls between two other domains);
//! * supervisor-only: the GDT, IDT, TSSs and small kernel stacks, used only
//!   when an exception stops the guest.
//!
//! Nothing else of the host process exists in the VM's guest-physical
//! memory, so no guest code, whatever it does, can reach it. Each chain of
//! remote calls that reaches the compartment gets a vCPU (and a host thread
//! running it) whose entry point serves that chain. Idle vCPUs sleep in
//! their host thread (a futex hypercall), they do not spin. An exception or
//! a triple fault is reported as "compartment NAME faulted at ADDRESS
//! (reason)" and ends the image, as a dead compartment process does.
//! `docs/kvm.md` describes the boot and the memory layout.

mod image;
mod paging;
mod vectors;

use flexos_platform::guest::{self, port};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, kvm_msr_entry, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use paging::{NX, PageTables, RW, US};
use std::sync::atomic::AtomicU32;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
/// The most vCPUs (chains) a VM runs; one execution-stack slot each.
const MAX_VCPUS: usize = 128;
/// Each vCPU's part of the compartment's execution-stack area.
const SLOT: usize = flexos_alloc::EXEC_STACKS_LEN / MAX_VCPUS;
/// Bytes for the thread-local block and thread control block at a slot's top.
const TLS_AREA: usize = 32 * 1024;

// The kernel area: one host mapping, also guest-physical memory at KERNEL_GPA.
const KERNEL_GPA: u64 = 2 * MIB as u64;
const GDT: usize = 0;
const IDT: usize = PAGE;
const TSS: usize = 2 * PAGE;
const TSS_SIZE: usize = 128;
const KERNEL_STACKS: usize = 8 * PAGE;
const KERNEL_STACK: usize = PAGE;
const TABLES: usize = MIB;
const TABLE_PAGES: usize = 768;
const KERNEL_LEN: usize = TABLES + TABLE_PAGES * PAGE;
/// Where the image's segments start in guest-physical memory.
const IMAGE_GPA: u64 = 16 * MIB as u64;
/// The compartment's private span and the shared span in guest-physical memory.
const PRIVATE_GPA: u64 = 1 << 30;
const SHARED_GPA: u64 = 2 << 30;

// Segment selectors (GDT index * 8 + privilege level).
const KERNEL_CODE: u16 = 0x08;
const USER_DATA: u16 = 0x18 | 3;
const USER_CODE: u16 = 0x20 | 3;
const FIRST_TSS: usize = 6;

/// A guest virtual range and the host memory behind it.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    va: usize,
    len: usize,
    host: usize,
}

/// A compartment's virtual machine.
pub struct Vm {
    compartment: usize,
    name: &'static str,
    kvm: Kvm,
    vm: VmFd,
    kernel: usize,
    cr3: u64,
    entry: usize,
    tls: Option<image::Tls>,
    mappings: Vec<Mapping>,
}

/// Maps `len` bytes of fresh zeroed memory in the host (for the kernel area
/// and the data copy), or fails.
fn host_pages(len: usize) -> Result<usize, String> {
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(format!("cannot map {len} bytes: {}", std::io::Error::last_os_error()))
    } else {
        Ok(p as usize)
    }
}

impl Vm {
    /// Builds the VM of compartment `compartment` (called `name`), whose
    /// vCPUs will start at `entry(chain)`. Call it when the image boots,
    /// before the application runs: the VM gets a copy of the image's data
    /// as it is now.
    pub fn create(compartment: usize, name: &'static str, entry: extern "C" fn(usize) -> !) -> Result<Vm, String> {
        let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("cannot create a VM: {e}"))?;
        let kernel = host_pages(KERNEL_LEN)?;
        // SAFETY: the table pool is part of the fresh, zeroed kernel area and
        // is used for nothing else; the Vm keeps the area mapped for ever.
        let mut tables = unsafe { PageTables::new(kernel + TABLES, KERNEL_GPA + TABLES as u64, TABLE_PAGES) };
        let mut mappings = Vec::new();
        let mut slot = 0u32;
        let mut add_slot = |gpa: u64, len: usize, host: usize, read_only: bool| -> Result<(), String> {
            let region = kvm_userspace_memory_region {
                slot,
                flags: if read_only { KVM_MEM_READONLY } else { 0 },
                guest_phys_addr: gpa,
                memory_size: len as u64,
                userspace_addr: host as u64,
            };
            slot += 1;
            // SAFETY: the host range is mapped for as long as the VM lives
            // (image segments, the heaps' reservation and the Vm's own
            // mappings are never unmapped), and slots do not overlap.
            unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory slot at {gpa:#x}: {e}"))
        };

        // The kernel area: GDT, IDT, TSSs and kernel stacks, supervisor-only.
        add_slot(KERNEL_GPA, KERNEL_LEN, kernel, false)?;
        for offset in (0..TABLES).step_by(PAGE) {
            tables.map_4k(kernel + offset, KERNEL_GPA + offset as u64, RW | NX);
        }

        // The executable: code and constants read-only, data as a private copy.
        let image = image::describe();
        let mut gpa = IMAGE_GPA;
        let mut patched = 0;
        for seg in &image.segments {
            let len = seg.end - seg.start;
            let host = if seg.writable {
                let copy = host_pages(len)?;
                // SAFETY: the segment is mapped readable (it is this
                // executable's data segment; its read-only part is readable
                // too), and `copy` is a fresh mapping of the same length.
                let bytes = unsafe {
                    core::ptr::copy_nonoverlapping(seg.start as *const u8, copy as *mut u8, len);
                    core::slice::from_raw_parts_mut(copy as *mut u8, len)
                };
                patched += guest::prepare_data_copy(bytes, seg.start, compartment);
                copy
            } else {
                seg.start
            };
            add_slot(gpa, len, host, !seg.writable)?;
            for offset in (0..len).step_by(PAGE) {
                let va = seg.start + offset;
                let relro = image.relro.is_some_and(|(a, b)| va >= a && va < b);
                let mut flags = US;
                if seg.writable && !relro {
                    flags |= RW;
                }
                if !seg.executable {
                    flags |= NX;
                }
                tables.map_4k(va, gpa + offset as u64, flags);
            }
            mappings.push(Mapping { va: seg.start, len, host });
            gpa += len as u64;
        }
        assert!(gpa < PRIVATE_GPA, "the executable is too large for the VM's layout");
        if patched != guest::PATCHED_STATICS {
            return Err(format!(
                "found {patched} of the platform's {} statics in the data segments",
                guest::PATCHED_STATICS
            ));
        }

        // The compartment's private span: heap in 2 MiB pages, stacks in 4 KiB pages with guards.
        let region = flexos_alloc::region().base.as_ptr() as usize;
        let private = region + compartment * flexos_alloc::HEAP_SPAN;
        add_slot(PRIVATE_GPA, flexos_alloc::HEAP_SPAN, private, false)?;
        let (stacks, _) = flexos_alloc::exec_stack_area(compartment);
        for offset in (0..stacks - private).step_by(2 * MIB) {
            tables.map_2m(private + offset, PRIVATE_GPA + offset as u64, US | RW | NX);
        }
        for offset in (stacks - private..flexos_alloc::HEAP_SPAN).step_by(PAGE) {
            if !(offset - (stacks - private)).is_multiple_of(SLOT) {
                tables.map_4k(private + offset, PRIVATE_GPA + offset as u64, US | RW | NX);
            }
        }
        mappings.push(Mapping { va: private, len: flexos_alloc::HEAP_SPAN, host: private });

        // The pieces of the shared span this domain takes part in (the
        // frames of calls between two other domains are not mapped).
        let shared = region + flexos_platform::compartment::MAX_COMPARTMENTS * flexos_alloc::HEAP_SPAN;
        add_slot(SHARED_GPA, flexos_alloc::SHARED_SPAN, shared, false)?;
        for (piece, len) in flexos_alloc::shared_pieces_of(compartment) {
            for offset in (piece..piece + len).step_by(2 * MIB) {
                tables.map_2m(shared + offset, SHARED_GPA + offset as u64, US | RW | NX);
            }
            mappings.push(Mapping { va: shared + piece, len, host: shared + piece });
        }

        let vm = Vm {
            compartment,
            name,
            kvm,
            vm,
            kernel,
            cr3: tables.root(),
            entry: entry as usize,
            tls: image.tls,
            mappings,
        };
        vm.write_descriptor_tables();
        Ok(vm)
    }

    /// Writes the GDT (flat 64-bit code and data, one TSS per vCPU), the TSSs
    /// (each with its kernel stack) and the IDT (the exception stubs).
    fn write_descriptor_tables(&self) {
        let k = self.kernel;
        let put = |offset: usize, value: u64| {
            // SAFETY: every offset written lies in the kernel area's first
            // pages (GDT, IDT, TSS array), which this Vm owns.
            unsafe { ((k + offset) as *mut u64).write_unaligned(value) }
        };
        put(GDT + 8, 0x0020_9a00_0000_0000); // kernel code, 64-bit
        put(GDT + 16, 0x0000_9200_0000_0000); // kernel data
        put(GDT + 24, 0x0000_f200_0000_0000); // user data, DPL 3
        put(GDT + 32, 0x0020_fa00_0000_0000); // user code, 64-bit, DPL 3
        for i in 0..MAX_VCPUS {
            let tss = (k + TSS + i * TSS_SIZE) as u64;
            let limit = 103u64;
            let low = limit | (tss & 0xff_ffff) << 16 | 0x89 << 40 | ((tss >> 24) & 0xff) << 56;
            put(GDT + (FIRST_TSS + 2 * i) * 8, low);
            put(GDT + (FIRST_TSS + 2 * i) * 8 + 8, tss >> 32);
            let stack_top = (k + KERNEL_STACKS + (i + 1) * KERNEL_STACK) as u64;
            put(TSS + i * TSS_SIZE + 4, stack_top); // RSP0
        }
        for n in 0..32 {
            let stub = vectors::vector(n) as u64;
            let low = (stub & 0xffff) | (KERNEL_CODE as u64) << 16 | 0x8e << 40 | ((stub >> 16) & 0xffff) << 48;
            put(IDT + n * 16, low);
            put(IDT + n * 16 + 8, stub >> 32);
        }
    }

    /// The host address of guest range `[va, va + len)`, if the guest may use all of it.
    fn translate(&self, va: usize, len: usize) -> Option<usize> {
        self.mappings
            .iter()
            .find(|m| va >= m.va && len <= m.len && va - m.va <= m.len - len)
            .map(|m| m.host + (va - m.va))
    }

    /// Starts the vCPU that serves chain `chain`, on a host thread of its own.
    pub fn start_partner(&'static self, chain: usize) {
        std::thread::Builder::new()
            .name(format!("vcpu{chain}-{}", self.name))
            .spawn(move || {
                if let Err(e) = self.run_vcpu(chain) {
                    self.die(&format!("its vCPU {chain} failed: {e}"));
                }
            })
            .expect("cannot start a vCPU thread");
    }

    /// Prepares the thread-local block of slot `chain` and returns the thread pointer.
    fn prepare_tls(&self, top: usize) -> usize {
        let tp = (top - 256) & !63;
        if let Some(tls) = self.tls {
            let block = tp - tls.memsz.next_multiple_of(tls.align);
            assert!(top - block + 64 <= TLS_AREA, "the thread-local block does not fit its area");
            // SAFETY: the block lies in this vCPU's slot of the compartment's
            // execution-stack area (TLS_AREA bytes below the slot's top, checked
            // by the assertion), which is mapped in the host and used by no one
            // else; the template is the executable's readable PT_TLS data.
            unsafe {
                core::ptr::write_bytes(block as *mut u8, 0, tls.memsz);
                core::ptr::copy_nonoverlapping(tls.template as *const u8, block as *mut u8, tls.filesz);
            }
        }
        // SAFETY: tp and tp + 0x28 lie in the slot's TLS area (as above):
        // the thread control block's self pointer and stack-protector canary.
        unsafe {
            (tp as *mut usize).write(tp);
            ((tp + 0x28) as *mut u64).write(0x5eed_f1e0_5c0f_fee0 ^ flexos_platform::clock::cycles());
        }
        tp
    }

    fn run_vcpu(&self, chain: usize) -> Result<(), String> {
        assert!(chain < MAX_VCPUS, "chain {chain} has no vCPU slot");
        let mut vcpu = self.vm.create_vcpu(chain as u64).map_err(|e| format!("create: {e}"))?;
        let cpuid = self.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| format!("cpuid: {e}"))?;
        vcpu.set_cpuid2(&cpuid).map_err(|e| format!("set cpuid: {e}"))?;

        let (stacks, _) = flexos_alloc::exec_stack_area(self.compartment);
        let slot_top = stacks + (chain + 1) * SLOT;
        let tp = self.prepare_tls(slot_top);
        let stack_top = (slot_top - TLS_AREA) & !15;

        let mut sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
        let user = |selector: u16, code: bool| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_: if code { 11 } else { 3 },
            present: 1,
            dpl: 3,
            db: if code { 0 } else { 1 },
            s: 1,
            l: if code { 1 } else { 0 },
            g: 1,
            ..Default::default()
        };
        sregs.cs = user(USER_CODE, true);
        sregs.ss = user(USER_DATA, false);
        sregs.ds = user(USER_DATA, false);
        sregs.es = user(USER_DATA, false);
        sregs.fs = kvm_segment { base: tp as u64, ..user(USER_DATA, false) };
        sregs.gs = user(USER_DATA, false);
        sregs.tr = kvm_segment {
            base: (self.kernel + TSS + chain * TSS_SIZE) as u64,
            limit: 103,
            selector: ((FIRST_TSS + 2 * chain) * 8) as u16,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        sregs.gdt.base = (self.kernel + GDT) as u64;
        sregs.gdt.limit = ((FIRST_TSS + 2 * MAX_VCPUS) * 8 - 1) as u16;
        sregs.idt.base = (self.kernel + IDT) as u64;
        sregs.idt.limit = (32 * 16 - 1) as u16;
        sregs.cr0 = 0x8001_0033; // PG, WP, NE, ET, MP, PE
        sregs.cr3 = self.cr3;
        sregs.cr4 = 0x620; // OSXMMEXCPT, OSFXSR, PAE
        sregs.efer = 0xd00; // NXE, LMA, LME
        vcpu.set_sregs(&sregs).map_err(|e| format!("set sregs: {e}"))?;

        let msrs = kvm_bindings::Msrs::from_entries(&[
            kvm_msr_entry {
                index: 0xc000_0082, // LSTAR: where `syscall` would go
                data: vectors::syscall_entry() as u64,
                ..Default::default()
            },
            kvm_msr_entry {
                index: 0x2ff, // MTRRdefType: MTRRs on, memory write-back by default
                data: 0xc06,
                ..Default::default()
            },
        ])
        .map_err(|e| format!("msrs: {e:?}"))?;
        vcpu.set_msrs(&msrs).map_err(|e| format!("set msrs: {e}"))?;

        let mut regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
        regs.rip = self.entry as u64;
        regs.rsp = (stack_top - 8) as u64;
        regs.rdi = chain as u64;
        regs.rflags = 0x3002; // IOPL 3: the hypercalls' `out` is allowed at CPL3
        vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;

        loop {
            let exit = match vcpu.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(format!("run: {e}")),
            };
            match exit {
                VcpuExit::IoOut(p, _) => {
                    let regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
                    match p {
                        port::FUTEX_WAIT => {
                            let word = self.futex_word(regs.rdi as usize)?;
                            flexos_platform::futex::wait(word, regs.rsi as u32, regs.r8.min(100_000_000));
                        }
                        port::FUTEX_WAKE => flexos_platform::futex::wake_all(self.futex_word(regs.rdi as usize)?),
                        port::WRITE => {
                            let len = (regs.rsi as usize).min(64 * 1024);
                            let host = self.translate(regs.rdi as usize, len).ok_or("a write from unmapped memory")?;
                            // SAFETY: translate checked that the range is guest memory mapped in the host.
                            flexos_platform::console::write_err(unsafe {
                                core::slice::from_raw_parts(host as *const u8, len)
                            });
                        }
                        port::EXCEPTION => {
                            let sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
                            self.report_exception(regs.rsp as usize, sregs.cr2)
                        }
                        port::SYSCALL => {
                            self.fault(regs.rip as usize, "a system call (a VM has none)", regs.rip as usize)
                        }
                        other => self.fault(
                            regs.rip as usize,
                            &format!("an access to I/O port {other:#x}"),
                            regs.rip as usize,
                        ),
                    }
                }
                VcpuExit::Shutdown => {
                    let regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
                    let sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
                    self.fault(sregs.cr2 as usize, "triple fault", regs.rip as usize)
                }
                VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => {
                    self.fault(addr as usize, "an access to guest-physical memory with nothing behind it", 0)
                }
                VcpuExit::Hlt => self.fault(0, "hlt", 0),
                other => return Err(format!("unexpected exit {other:?}")),
            }
        }
    }

    /// The futex word at guest address `va`: it must be an aligned word in
    /// the control area's common part (where the gates' wake-up words are).
    fn futex_word(&self, va: usize) -> Result<&'static AtomicU32, String> {
        let (start, _) = flexos_alloc::control_area();
        let end = start + flexos_alloc::CONTROL_COMMON_LEN;
        if !va.is_multiple_of(4) || va < start || va + 4 > end {
            return Err(format!("a futex hypercall on {va:#x}, outside the gates' control area"));
        }
        // SAFETY: an aligned word in the control area, which is shared memory
        // mapped for the image's whole life at the same address in the host.
        Ok(unsafe { &*(va as *const AtomicU32) })
    }

    /// Reads the exception frame the stub left on the kernel stack at `rsp` and reports it.
    fn report_exception(&self, rsp: usize, cr2: u64) -> ! {
        let (lo, hi) = (self.kernel + KERNEL_STACKS, self.kernel + KERNEL_STACKS + MAX_VCPUS * KERNEL_STACK);
        if rsp < lo || rsp + 7 * 8 > hi {
            self.fault(0, "an exception with a corrupt kernel stack", 0)
        }
        // SAFETY: the range lies in the kernel stacks of this Vm's kernel area
        // (checked above), which the guest cannot write (supervisor pages).
        let word = |i: usize| unsafe { ((rsp + 8 * i) as *const u64).read() };
        let vector = word(0);
        let (error, rip) = if vectors::has_error_code(vector) { (word(1), word(2)) } else { (0, word(1)) };
        let address = if vector == 14 { cr2 as usize } else { rip as usize };
        // An invalid opcode may be the trap of a hardening option (cfi,
        // ubsan): the VM runs the image's code at the host's addresses.
        if vector == 6 && self.is_image_code(rip as usize) {
            // SAFETY: rip lies in the image's executable segment (checked),
            // mapped in the host at the same address and never unmapped.
            if let Some((option, what)) = unsafe { flexos_platform::hardening::trap_kind(rip as usize) } {
                flexos_platform::hardening::report_in(self.name, option, what, rip as usize, b"");
                self.die(&format!("{option} stopped it"))
            }
        }
        self.fault(address, &vectors::describe(vector, error), rip as usize)
    }

    /// Whether `rip` (and the 12 bytes before it, which a kcfi check spans)
    /// lies in the image's code, which the VM runs at the host's addresses.
    fn is_image_code(&self, rip: usize) -> bool {
        image::describe().segments.iter().any(|s| s.executable && rip >= s.start + 12 && rip + 2 <= s.end)
    }

    /// Reports a fault of this compartment and ends the image.
    fn fault(&self, address: usize, reason: &str, rip: usize) -> ! {
        eprintln!("flexos: compartment {:?} faulted at {address:#x} ({reason}), instruction {rip:#x}", self.name);
        self.die(&format!("its VM stopped: {reason}"))
    }

    fn die(&self, how: &str) -> ! {
        eprintln!("flexos: compartment {:?} (VM) died: {how}; shutting the image down", self.name);
        flexos_platform::process::kill_all();
        std::process::exit(flexos_platform::process::COMPARTMENT_DIED)
    }
}
