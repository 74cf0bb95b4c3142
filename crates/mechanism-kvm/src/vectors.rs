//! The code a VM runs at CPL0: one stub per exception vector, which pushes
//! the vector number and exits to the VMM through a hypercall port (the
//! VMM reads the exception frame from the vCPU's kernel stack), and the
//! target of `syscall`. This is all the guest "kernel" there is.

use flexos_platform::guest::port;

// Stubs of 16 bytes each, vector n at `flexos_kvm_vectors + 16 * n`.
core::arch::global_asm!(
    ".pushsection .text.flexos_kvm_vectors,\"ax\"",
    ".balign 16",
    ".globl flexos_kvm_vectors",
    "flexos_kvm_vectors:",
    ".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    "push \\n",
    "jmp 2f",
    ".endr",
    "2:",
    "mov dx, {exception}",
    "out dx, al",
    "3: ud2",
    "jmp 3b",
    ".balign 16",
    ".globl flexos_kvm_syscall",
    "flexos_kvm_syscall:",
    "mov dx, {syscall}",
    "out dx, al",
    "4: ud2",
    "jmp 4b",
    ".popsection",
    exception = const port::EXCEPTION,
    syscall = const port::SYSCALL,
);

unsafe extern "C" {
    static flexos_kvm_vectors: u8;
    static flexos_kvm_syscall: u8;
}

/// The address of vector `n`'s stub.
pub fn vector(n: usize) -> usize {
    // Only the symbol's address is taken (no unsafe needed).
    (&raw const flexos_kvm_vectors) as usize + 16 * n
}

/// The address of the `syscall` target.
pub fn syscall_entry() -> usize {
    // Only the symbol's address is taken (no unsafe needed).
    (&raw const flexos_kvm_syscall) as usize
}

/// Whether the CPU pushes an error code for exception `vector`.
pub fn has_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// What exception `vector` means.
pub fn describe(vector: u64, error: u64) -> String {
    match vector {
        14 if error & 16 != 0 => "page fault on instruction fetch".into(),
        14 if error & 2 != 0 => "page fault on write".into(),
        14 => "page fault on read".into(),
        6 => "invalid instruction".into(),
        13 => "general protection fault".into(),
        0 => "divide error".into(),
        3 => "breakpoint".into(),
        12 => "stack fault".into(),
        17 => "alignment check".into(),
        8 => "double fault".into(),
        v => format!("exception {v}"),
    }
}
