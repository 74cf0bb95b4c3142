//! Running inside a `kvm` compartment's VM.
//!
//! A VM runs the image's own code at guest CPL3 with a private copy of the
//! image's writable data (see the `flexos-kvm` crate). The statics below
//! are patched in that copy before the VM starts, so the same code knows
//! where it runs: [`in_guest`] is true only there. In a VM there are no
//! system calls; the few services the platform needs (sleeping on a futex,
//! waking one, writing to the console) are *hypercalls*: an `out` to a port
//! that makes the vCPU exit to its host thread, which performs them.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set (in a VM's copy of the data only) while the code runs in a VM.
static IN_GUEST: AtomicBool = AtomicBool::new(false);

/// The clock of a VM: monotonic and wall time at one time-stamp counter
/// reading, and nanoseconds per 2^32 ticks.
static CLOCK: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Hypercall ports (an `out` to one of them exits the vCPU).
pub mod port {
    /// Sleep on a futex word: `rdi` = its address, `rsi` = the expected value, `r8` = timeout in ns.
    pub const FUTEX_WAIT: u16 = 0xe0;
    /// Wake every sleeper on the futex word at `rdi`.
    pub const FUTEX_WAKE: u16 = 0xe1;
    /// Write `rsi` bytes at `rdi` to the console (standard error).
    pub const WRITE: u16 = 0xe2;
    /// An exception: the stub pushed the vector and the error code on the kernel stack.
    pub const EXCEPTION: u16 = 0xe3;
    /// A `syscall` instruction (there are no system calls in a VM).
    pub const SYSCALL: u16 = 0xe4;
}

/// Whether this code runs inside a VM.
#[inline(always)]
pub fn in_guest() -> bool {
    IN_GUEST.load(Ordering::Relaxed)
}

/// Makes a hypercall.
#[inline(always)]
pub fn hypercall(port: u16, a: u64, b: u64, c: u64) {
    // SAFETY: `out` only exits to the VMM (the VM runs with IOPL 3, so it is
    // allowed at CPL3), which reads the registers and resumes after it. The
    // arguments are plain values; the VMM checks any address among them.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") 0u8, in("rdi") a, in("rsi") b, in("r8") c,
            options(nostack, preserves_flags));
    }
}

/// Monotonic and wall-clock nanoseconds in a VM, from the time-stamp counter.
pub fn clock_ns(wall: bool) -> u64 {
    ns_at(wall, crate::clock::cycles())
}

/// Wall-clock nanoseconds in a VM for a coarse time stamp (a file's): the
/// time-stamp counter read without ordering it against the code around it
/// (no `lfence`, which would wait for every load before it, a file
/// write's copy included).
pub fn coarse_wall_ns() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    ns_at(true, unsafe { core::arch::x86_64::_rdtsc() })
}

/// [`clock_ns`] at time-stamp counter reading `now`.
fn ns_at(wall: bool, now: u64) -> u64 {
    let ticks = now.wrapping_sub(CLOCK[0].load(Ordering::Relaxed));
    let base = CLOCK[if wall { 2 } else { 1 }].load(Ordering::Relaxed);
    base + ((ticks as u128 * CLOCK[3].load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// How many statics [`prepare_data_copy`] patches in all.
pub const PATCHED_STATICS: usize = 6;

/// Prepares a VM's private copy of the image's writable data: `copy` holds
/// the bytes of a data segment that starts at address `segment` in this
/// process. Marks the copy as a guest's, makes `compartment` its home, and
/// gives it the clock, as far as those statics lie in this segment; returns
/// how many it patched (over all segments, [`PATCHED_STATICS`]).
pub fn prepare_data_copy(copy: &mut [u8], segment: usize, compartment: usize) -> usize {
    let hz = crate::clock::cycles_per_second(10);
    let now = [
        crate::clock::cycles(),
        crate::clock::monotonic_ns(),
        crate::clock::wall_ns(),
        ((1e9 / hz) * 4294967296.0) as u64,
    ];
    let mut patched = 0;
    let mut put = |address: usize, bytes: &[u8]| {
        if let Some(offset) = address.checked_sub(segment).filter(|o| o + bytes.len() <= copy.len()) {
            copy[offset..offset + bytes.len()].copy_from_slice(bytes);
            patched += 1;
        }
    };
    put(IN_GUEST.as_ptr() as usize, &[1]);
    for (slot, value) in CLOCK.iter().zip(now) {
        put(slot.as_ptr() as usize, &value.to_ne_bytes());
    }
    put(crate::compartment::home_slot(), &compartment.to_ne_bytes());
    patched
}
