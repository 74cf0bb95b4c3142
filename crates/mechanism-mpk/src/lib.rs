//! The `mpk` mechanism (DESIGN section 5.4): its gates, their checked
//! `wrpkru` sites, and its setup. (The protection-key system calls and the
//! per-context stacks of each key live in the platform crate, whose
//! contexts and allocator use them too.)
//!
//! Only the gate crate calls [`gate`] and [`run_in`], with an exported
//! entry's function or its own trusted code: both are `unsafe` to call,
//! since they run any closure with another compartment's rights.
//!
//! A gate from compartment `FROM` to `TO` writes `TO`'s rights into PKRU,
//! runs the callee, and writes `FROM`'s rights back. Both values are
//! immediates in the gate's code (`flexos_layout::PKRU`), and after every
//! `wrpkru` the gate compares EAX with the immediate and goes back to load
//! it again if they differ (ERIM's check): code is not protected by keys,
//! so a compromised compartment could jump straight to a gate's `wrpkru`
//! with a value of its choice in EAX; the check makes sure that execution
//! only continues past a `wrpkru` with the value that gate was built for.
//! Every such site is listed in the `flexos_wrpkru` section (see [`sites`]).
//!
//! Before the callee runs, the caller-saved registers that do not carry the
//! call (RAX, RCX, RDX, RSI, R8-R11, XMM0-15) are cleared, and on gates that
//! switch stacks the callee-saved ones too (they are saved on the caller's
//! stack first), so no value of the caller leaks into the callee by register.
//! The direction flag is cleared on both sides of the call, so neither side
//! can make the other's string instructions run backwards.
//!
//! Stacks: compartments in the same stack domain (`shared-stack` and `fcall`
//! compartments share the thread's stack) are crossed by the *light* gate,
//! on the same stack. Into or out of an `mpk` compartment with `dss` or
//! `heap` sharing, the gate switches to this context's stack for the callee's
//! domain ([`flexos_platform::gatestack`]), which carries the callee's key;
//! the call's closure (its arguments) and result then travel in the XMM
//! registers, from the caller's stack to the callee's and back, since
//! neither side can read the other's stack; never through shared memory,
//! which a third compartment could change while the call runs.

mod image_calls;
mod memory_filter;
mod thread_exit;
mod thread_stacks;

use core::mem::{ManuallyDrop, MaybeUninit};
use flexos_alloc::{SHARED, alloc_in, free};
use flexos_layout::{COMPARTMENTS, PKEYS, PKRU, SHARED_PKEY, SHARED_STACKS, stack_domain};
use flexos_platform::compartment;
use flexos_platform::gatestack::{self, Block};

/// The closure a gate runs and the room for its result.
struct Slot<F, R> {
    f: ManuallyDrop<F>,
    result: MaybeUninit<R>,
}

/// Runs the closure of `slot`, storing its result. The only function a gate
/// calls after switching rights.
extern "C" fn trampoline<F: FnOnce() -> R, R>(slot: *mut Slot<F, R>) {
    // SAFETY: the gate passes the slot it filled with a closure, on the
    // stack this code runs on, and calls this once; the closure is taken
    // out exactly once and the result written into the slot's room.
    unsafe {
        let f = ManuallyDrop::take(&mut (*slot).f);
        (*slot).result.write(f());
    }
}

/// [`trampoline`] for a stack-switching gate: the callee runs on its
/// domain's thread-local block, whose compartment register it sets.
extern "C" fn switching_trampoline<const TO: usize, F: FnOnce() -> R, R>(slot: *mut Slot<F, R>) {
    let previous = compartment::enter(TO);
    trampoline(slot);
    compartment::enter(previous);
}

/// The PKRU value of compartment `c` (also for indices past the image's
/// compartments, which no gate reaches: all rights, like `fcall`).
const fn pkru_of(c: usize) -> u32 {
    if c < PKRU.len() { PKRU[c] } else { 0 }
}

/// Runs `f` in compartment `TO`, called from compartment `FROM` (both in this
/// address space), switching PKRU and, where the stack domains differ, the stack.
///
/// # Safety
/// `f` must be code that compartment `TO` may run on its own behalf: an
/// entry's function or the trusted core's (the gate crate's callers).
#[inline(always)]
pub unsafe fn gate<const FROM: usize, const TO: usize, F: FnOnce() -> R, R>(f: F) -> R {
    let previous = compartment::enter(TO);
    let result = if const { stack_domain(FROM) == stack_domain(TO) } {
        light::<FROM, TO, F, R>(f)
    } else {
        switching::<FROM, TO, F, R>(f)
    };
    compartment::enter(previous);
    result
}

/// The light gate: same stack, PKRU switched around a direct call.
#[inline(always)]
fn light<const FROM: usize, const TO: usize, F: FnOnce() -> R, R>(f: F) -> R {
    let mut slot = Slot { f: ManuallyDrop::new(f), result: MaybeUninit::uninit() };
    // SAFETY: the sequence leaves the stack as it found it; the callee runs
    // on the same stack, which both compartments may use (the same stack
    // domain carries one key), and finds its closure there. After the call,
    // PKRU is the caller's again, checked. The trampoline fills the result.
    unsafe {
        core::arch::asm!(
            "2:",
            "mov eax, {to}",
            "xor ecx, ecx",
            "xor edx, edx",
            "3:",
            "wrpkru",
            "cmp eax, {to}",
            "jne 2b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 3b - .",
            ".long {to}",
            ".popsection",
            "xor esi, esi",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r11d, r11d",
            "pxor xmm0, xmm0", "pxor xmm1, xmm1", "pxor xmm2, xmm2", "pxor xmm3, xmm3",
            "pxor xmm4, xmm4", "pxor xmm5, xmm5", "pxor xmm6, xmm6", "pxor xmm7, xmm7",
            "pxor xmm8, xmm8", "pxor xmm9, xmm9", "pxor xmm10, xmm10", "pxor xmm11, xmm11",
            "pxor xmm12, xmm12", "pxor xmm13, xmm13", "pxor xmm14, xmm14", "pxor xmm15, xmm15",
            "cld",
            "call {trampoline}",
            "cld",
            "4:",
            "mov eax, {from}",
            "xor ecx, ecx",
            "xor edx, edx",
            "5:",
            "wrpkru",
            "cmp eax, {from}",
            "jne 4b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 5b - .",
            ".long {from}",
            ".popsection",
            to = const pkru_of(TO),
            from = const pkru_of(FROM),
            trampoline = sym trampoline::<F, R>,
            inout("rdi") &raw mut slot => _,
            clobber_abi("C"),
        );
        slot.result.assume_init()
    }
}

/// The stack-switching gate's code, carrying `$chunk` bytes a trip in the
/// XMM registers that `$load` (from `[r9]`), `$there` (to `[r10]`) and
/// `$back` (to `[rdi]`) name. Inputs: RDI the caller's slot, R8 the number
/// of trips, R14 where the caller's stack position is written down for
/// nested calls back into its domain, R13 the callee's slot (its new stack
/// pointer), R15 the thread pointer of the callee domain's thread-local
/// block (0: `fs` stays; [`flexos_platform::tls`]) and RSI, if nonzero,
/// where the block is filled from first (a copy just taken). The caller's
/// stack pointer itself waits in R12, a register the callee must preserve,
/// never in memory another compartment can write; the caller's thread
/// pointer waits on the caller's stack, beside the callee's (the flag).
macro_rules! switching_gate {
    ($chunk:expr, $from:expr, $to:expr, $trampoline:path, $left_at:expr, $callee_slot:expr, $trips:expr, $caller_slot:expr, $tls:expr;
     [$($load:literal),*], [$($there:literal),*], [$($back:literal),*]) => {
        core::arch::asm!(
            "push r15",
            "mov rax, qword ptr fs:0",
            "push rax",
            "push rbx",
            "push rbp",
            "push rdi",
            "push r8",
            "mov [r14], rsp",
            "mov r12, rsp",
            "mov r9, rdi",
            "mov r10, r13",
            "mov r11, r8",
            // There: a trip from the caller's stack to the callee's.
            "6:",
            $($load,)*
            "2:",
            "mov eax, {to}",
            "xor ecx, ecx",
            "xor edx, edx",
            "3:",
            "wrpkru",
            "cmp eax, {to}",
            "jne 2b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 3b - .",
            ".long {to}",
            ".popsection",
            $($there,)*
            "dec r11",
            "jz 7f",
            "add r9, {chunk}",
            "add r10, {chunk}",
            "8:",
            "mov eax, {from}",
            "xor ecx, ecx",
            "xor edx, edx",
            "9:",
            "wrpkru",
            "cmp eax, {from}",
            "jne 8b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 9b - .",
            ".long {from}",
            ".popsection",
            "jmp 6b",
            "7:",
            "mov rsp, r13",
            // The callee's thread-locals: its domain's block, filled from
            // the thread's own on the first entry, with the callee's rights.
            "test rsi, rsi",
            "jz 31f",
            "mov rdi, r15",
            "call {fill}",
            "31:",
            "test r15, r15",
            "jz 32f",
            "wrfsbase r15",
            "32:",
            "mov rdi, rsp",
            "xor ebx, ebx",
            "xor ebp, ebp",
            "xor esi, esi",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r11d, r11d",
            "xor r14d, r14d",
            "pxor xmm0, xmm0", "pxor xmm1, xmm1", "pxor xmm2, xmm2", "pxor xmm3, xmm3",
            "pxor xmm4, xmm4", "pxor xmm5, xmm5", "pxor xmm6, xmm6", "pxor xmm7, xmm7",
            "pxor xmm8, xmm8", "pxor xmm9, xmm9", "pxor xmm10, xmm10", "pxor xmm11, xmm11",
            "pxor xmm12, xmm12", "pxor xmm13, xmm13", "pxor xmm14, xmm14", "pxor xmm15, xmm15",
            "cld",
            "call {trampoline}",
            "cld",
            // Back: a trip from the callee's stack into the caller's slot.
            // The slot's address and the number of trips are read from the
            // caller's stack, with the caller's rights, never from the callee.
            "mov r9, r13",
            "xor r10d, r10d",
            "20:",
            $($load,)*
            "4:",
            "mov eax, {from}",
            "xor ecx, ecx",
            "xor edx, edx",
            "5:",
            "wrpkru",
            "cmp eax, {from}",
            "jne 4b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 5b - .",
            ".long {from}",
            ".popsection",
            "mov rsp, r12",
            "cmp qword ptr [rsp + 40], 0",
            "je 33f",
            "mov rax, [rsp + 32]",
            "wrfsbase rax",
            "33:",
            "mov rdi, [rsp + 8]",
            "test r10, r10",
            "jnz 21f",
            "mov r11, [rsp]",
            "21:",
            "add rdi, r10",
            $($back,)*
            "dec r11",
            "jz 22f",
            "add r9, {chunk}",
            "add r10, {chunk}",
            "12:",
            "mov eax, {to}",
            "xor ecx, ecx",
            "xor edx, edx",
            "13:",
            "wrpkru",
            "cmp eax, {to}",
            "jne 12b",
            ".pushsection flexos_wrpkru,\"aR\"",
            ".balign 4",
            ".long 13b - .",
            ".long {to}",
            ".popsection",
            "jmp 20b",
            "22:",
            "pop r8",
            "pop rdi",
            "pop rbp",
            "pop rbx",
            "add rsp, 16",
            chunk = const $chunk,
            to = const $to,
            from = const $from,
            trampoline = sym $trampoline,
            fill = sym flexos_platform::tls::fill,
            inout("r14") $left_at => _,
            in("r13") $callee_slot,
            inout("r8") $trips => _,
            inout("rdi") $caller_slot => _,
            out("r12") _,
            inout("r15") $tls.tp => _,
            inout("rsi") $tls.fill_from => _,
            clobber_abi("C"),
        )
    };
}

/// The most a stack-switching gate carries a trip: the sixteen XMM registers.
const CHUNK: usize = 256;

/// A call's [`Slot`] with room to read it in whole trips.
#[repr(C, align(16))]
struct Carry<F, R> {
    slot: Slot<F, R>,
    _room: [u8; CHUNK],
}

/// The gate into or out of a domain with private stacks.
///
/// The call travels in registers, never through memory a third
/// compartment can write: the gate loads the caller's slot (the closure
/// with the arguments, and room for the result; on the caller's stack)
/// into XMM registers with the caller's rights, switches, stores it on the
/// callee's stack, and calls the trampoline there; on the way back it
/// loads the slot with the callee's rights, switches back, and stores it
/// into the caller's slot. One register carries a slot of up to 16 bytes,
/// four up to 64, all sixteen up to 256 a trip; a larger slot takes several
/// trips. Neither side ever holds both sides' rights.
#[inline(always)]
fn switching<const FROM: usize, const TO: usize, F: FnOnce() -> R, R>(f: F) -> R {
    let size = size_of::<Slot<F, R>>();
    let chunk = if size <= 16 {
        16
    } else if size <= 64 {
        64
    } else {
        CHUNK
    };
    let trips = size.div_ceil(chunk).max(1);
    // The domains and the callee's key are constants of this gate.
    let (d_from, d_to, key_to) = const { (stack_domain(FROM), stack_domain(TO), domain_key(stack_domain(TO))) };
    let table = gatestack::active();
    // SAFETY: the table belongs to the running context and lives as long as
    // it; nothing else on this host thread uses it while this code runs.
    let t = unsafe { &mut *table };
    // SAFETY: volatile reads of the table's fields: each is read once (the
    // table lies in key 0, which other compartments can write meanwhile).
    let (left_from, left_to) =
        unsafe { (core::ptr::read_volatile(&t.left_at[d_from]), core::ptr::read_volatile(&t.left_at[d_to])) };
    // Resume the callee's stack below the frames it holds in this context
    // (with 128 bytes for a red zone), or start at the top of its stack; the
    // callee's copy of the slot lies just below. Checked: it lies on this
    // context's stack of the callee's domain, or the image stops.
    let callee_slot = t.checked_entry(d_to, key_to, left_to, trips * chunk);
    // The callee domain's thread-local block on this host thread.
    // SAFETY: the gate fills a copy just taken (`fill_from`, in RSI) on the
    // callee's side before the callee runs.
    let tls = unsafe { flexos_platform::tls::entry(d_to) };
    let mut carry = MaybeUninit::<Carry<F, R>>::uninit();
    let caller_slot = carry.as_mut_ptr();
    // SAFETY: the slot is the first field of the fresh carry.
    unsafe { (&raw mut (*caller_slot).slot).write(Slot { f: ManuallyDrop::new(f), result: MaybeUninit::uninit() }) };
    // Where the caller's stack position is written down for nested calls
    // back into its domain: in the table when the caller runs on its
    // domain's gate stack; when it runs on the context's first stack (not
    // one a gate made), its domain holds no frames on its gate stack, so a
    // nested call may start at that stack's top: the table says 0 and the
    // position goes to a scratch word. Any other value the table holds is
    // thus a position on the domain's gate stack, checked as such.
    let mut scratch = 0usize;
    let here = caller_slot as usize;
    let left_at: *mut usize = if t.runs_on_stack(d_from, here) {
        &raw mut t.left_at[d_from]
    } else {
        t.left_at[d_from] = 0;
        &raw mut scratch
    };
    // SAFETY: the caller's stack pointer is kept in R12 (after RBX, RBP, the
    // slot's address and the number of trips are pushed), and written down
    // in the context's table for nested calls; the callee runs on its own
    // stack below `callee_slot` (checked to lie on that stack),
    // which nothing else uses below `target` in this context. The trips
    // read and write within `carry` (a slot and one more CHUNK, 16-aligned;
    // the bytes past the slot are carried but never used) and within the
    // `trips * chunk` bytes at `callee_slot` (16-aligned, below `target`).
    // After the call, PKRU is the caller's again (checked), RSP is restored
    // from R12, which the callee must preserve, as it must R13 (where it
    // left the result); the caller's slot address and
    // the number of trips are read back from the caller's stack.
    unsafe {
        if size <= 16 {
            switching_gate!(16, pkru_of(FROM), pkru_of(TO), switching_trampoline::<TO, F, R>, left_at, callee_slot, trips, caller_slot, tls;
                ["movdqa xmm0, [r9 + 0]"],
                ["movdqa [r10 + 0], xmm0"],
                ["movdqa [rdi + 0], xmm0"]);
        } else if size <= 64 {
            switching_gate!(64, pkru_of(FROM), pkru_of(TO), switching_trampoline::<TO, F, R>, left_at, callee_slot, trips, caller_slot, tls;
                ["movdqa xmm0, [r9 + 0]", "movdqa xmm1, [r9 + 16]", "movdqa xmm2, [r9 + 32]", "movdqa xmm3, [r9 + 48]"],
                ["movdqa [r10 + 0], xmm0", "movdqa [r10 + 16], xmm1", "movdqa [r10 + 32], xmm2", "movdqa [r10 + 48], xmm3"],
                ["movdqa [rdi + 0], xmm0", "movdqa [rdi + 16], xmm1", "movdqa [rdi + 32], xmm2", "movdqa [rdi + 48], xmm3"]);
        } else {
            switching_gate!(CHUNK, pkru_of(FROM), pkru_of(TO), switching_trampoline::<TO, F, R>, left_at, callee_slot, trips, caller_slot, tls;
                ["movdqa xmm0, [r9 + 0]", "movdqa xmm1, [r9 + 16]", "movdqa xmm2, [r9 + 32]", "movdqa xmm3, [r9 + 48]", "movdqa xmm4, [r9 + 64]", "movdqa xmm5, [r9 + 80]", "movdqa xmm6, [r9 + 96]", "movdqa xmm7, [r9 + 112]", "movdqa xmm8, [r9 + 128]", "movdqa xmm9, [r9 + 144]", "movdqa xmm10, [r9 + 160]", "movdqa xmm11, [r9 + 176]", "movdqa xmm12, [r9 + 192]", "movdqa xmm13, [r9 + 208]", "movdqa xmm14, [r9 + 224]", "movdqa xmm15, [r9 + 240]"],
                ["movdqa [r10 + 0], xmm0", "movdqa [r10 + 16], xmm1", "movdqa [r10 + 32], xmm2", "movdqa [r10 + 48], xmm3", "movdqa [r10 + 64], xmm4", "movdqa [r10 + 80], xmm5", "movdqa [r10 + 96], xmm6", "movdqa [r10 + 112], xmm7", "movdqa [r10 + 128], xmm8", "movdqa [r10 + 144], xmm9", "movdqa [r10 + 160], xmm10", "movdqa [r10 + 176], xmm11", "movdqa [r10 + 192], xmm12", "movdqa [r10 + 208], xmm13", "movdqa [r10 + 224], xmm14", "movdqa [r10 + 240], xmm15"],
                ["movdqa [rdi + 0], xmm0", "movdqa [rdi + 16], xmm1", "movdqa [rdi + 32], xmm2", "movdqa [rdi + 48], xmm3", "movdqa [rdi + 64], xmm4", "movdqa [rdi + 80], xmm5", "movdqa [rdi + 96], xmm6", "movdqa [rdi + 112], xmm7", "movdqa [rdi + 128], xmm8", "movdqa [rdi + 144], xmm9", "movdqa [rdi + 160], xmm10", "movdqa [rdi + 176], xmm11", "movdqa [rdi + 192], xmm12", "movdqa [rdi + 208], xmm13", "movdqa [rdi + 224], xmm14", "movdqa [rdi + 240], xmm15"]);
        }
    }
    // SAFETY: the table is still this context's (contexts carry their own).
    let t = unsafe { &mut *table };
    t.left_at[d_from] = left_from;
    t.left_at[d_to] = left_to;
    // SAFETY: the trampoline wrote the result into the callee's copy, which
    // the gate carried back into `carry`; the closure was taken out there,
    // so only the result is read (once).
    unsafe { (*caller_slot).slot.result.assume_init_read() }
}

/// The key of stack domain `domain`'s stacks.
const fn domain_key(domain: usize) -> u32 {
    if domain == SHARED_STACKS { SHARED_PKEY } else { PKEYS[domain] }
}

/// Page-aligned memory from the shared heap, freed with the context.
fn allocate_shared(len: usize) -> Block {
    let layout = core::alloc::Layout::from_size_align(len, 4096).expect("a valid layout");
    let p = alloc_in(SHARED, layout);
    assert!(!p.is_null(), "mpk gate: the shared heap is exhausted");
    Block { base: p as usize, len }
}

/// Frees a block made by [`allocate_shared`] (when its context ends).
fn release(block: Block) {
    if !flexos_alloc::is_shared(block.base, block.len) {
        return; // not a block this layer made: the table was rewritten
    }
    let layout = core::alloc::Layout::from_size_align(block.len, 4096).expect("a valid layout");
    // SAFETY: the block came from `allocate_shared` with this layout and its
    // context, the only user, has ended.
    unsafe { free(block.base as *mut u8, layout) }
}

/// Readies an image with `mpk` compartments, once, before anything crosses:
/// registers how gate memory is freed, puts std's stdout buffer in the
/// shared heap (every compartment may print), lets trusted platform code
/// (starting a host thread) switch compartments through the gates, and
/// makes a panic abort with a report instead of unwinding (unwinding
/// walks up through the gates into the stacks of other compartments,
/// which the keys deny; the report names the compartment and touches
/// nothing but this compartment's memory, whereas std's default report
/// reads the thread's name in the default compartment's heap).
pub fn prepare() {
    supervise_faults();
    // Each domain's row of gate stacks gets its key now: after start-up an
    // `mpk` image makes no `pkey_mprotect` (a compartment's own process,
    // in an image that mixes in `proc`, uses no keys).
    let keys = core::array::from_fn(|d| {
        let exists = d == SHARED_STACKS || d < PKEYS.len();
        if exists && flexos_platform::pkey::in_use() { domain_key(d) } else { 0 }
    });
    gatestack::reserve(&keys);
    // The memory-call filter's ranges are read now: the main stack and the
    // vDSO come from /proc/self/maps, which the image closes to itself next.
    let _ = MEMORY_FILTER.set(memory_filter::program(&protected_ranges()));
    let runs_vms = flexos_layout::has_mechanism(flexos_layout::Mechanism::Kvm);
    match image_calls::program(&FORBIDDEN_CALLS, runs_vms) {
        Ok(program) => drop(IMAGE_CALLS_FILTER.set(program)),
        Err(e) => {
            let report = format!("flexos: cannot build the allowlist of system calls: {e}\n");
            flexos_platform::console::write_err(report.as_bytes());
            flexos_platform::process_abort()
        }
    }
    deny_forbidden_calls();
    // After the main thread's restartable sequences are taken back (its
    // block then says so, and the threads it starts inherit that).
    separate_thread_locals();
    keep_out_of_proc();
    gatestack::set_release(release);
    flexos_alloc::in_shared_heap(|| drop(std::io::stdout()));
    // SAFETY: the switcher is called only by trusted platform code (starting
    // a host thread), with its own closures.
    compartment::set_switcher(|to, f| unsafe { run_in(to, f) });
    std::panic::set_hook(Box::new(|info| {
        let report = format!("flexos: compartment {:?} panicked: {info}\n", COMPARTMENTS[compartment::current()].name);
        flexos_platform::console::write_err(report.as_bytes());
        flexos_platform::process_abort()
    }));
}

/// Gives every stack domain with stacks of its own thread-locals of its
/// own ([`flexos_platform::tls`]), where the image is static and the CPU
/// and kernel let a thread move its `fs` base itself (`FSGSBASE`), and
/// moves the main thread onto its home compartment's; elsewhere it says
/// that all compartments share them.
fn separate_thread_locals() {
    let private = (0..COMPARTMENTS.len()).any(|c| stack_domain(c) != SHARED_STACKS);
    if !private || !flexos_platform::pkey::in_use() {
        return;
    }
    match thread_block_layout() {
        Ok((below, above)) => {
            flexos_platform::tls::enable(below, above, SHARED_STACKS);
            // SAFETY: start-up runs with the home compartment's rights, and
            // holds no reference into the thread-locals here.
            unsafe { flexos_platform::tls::move_to(stack_domain(compartment::home())) };
        }
        Err(why) => {
            let report = format!(
                "flexos: every compartment shares this thread's thread-locals ({why}); docs/mpk.md, \"Known limits\"\n"
            );
            flexos_platform::console::write_err(report.as_bytes());
        }
    }
}

/// The bytes of a thread's block below and above the thread pointer: the
/// program's static TLS (its `PT_TLS` segment, rounded up to its
/// alignment) and the C library's control block.
fn thread_block_layout() -> Result<(usize, usize), String> {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    // SAFETY: getauxval reads the auxiliary vector; no preconditions.
    if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE == 0 {
        return Err("the CPU or kernel does not let a thread set its fs base (no FSGSBASE)".into());
    }
    let above = control_block_size().ok_or("the image is not linked statically")?;
    // SAFETY: as above.
    let (phdr, phnum) = unsafe { (libc::getauxval(libc::AT_PHDR), libc::getauxval(libc::AT_PHNUM)) };
    if phdr == 0 {
        return Err("no program headers in the auxiliary vector".into());
    }
    // SAFETY: the kernel's AT_PHDR and AT_PHNUM describe the program's
    // headers, mapped for the process's life.
    let headers = unsafe { core::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, phnum as usize) };
    let tls = headers.iter().find(|h| h.p_type == libc::PT_TLS);
    let align = tls.map_or(1, |h| (h.p_align as usize).max(1));
    if align > 64 {
        // A copy's thread pointer is 64-byte aligned (`tls::copy_tp`).
        return Err(format!("the program's thread-locals ask for {align}-byte alignment"));
    }
    let below = tls.map_or(0, |h| (h.p_memsz as usize).next_multiple_of(align));
    Ok((below, above))
}

/// The size of the C library's thread control block (`struct pthread`),
/// which it publishes for its thread debugger; in a static image only.
#[cfg(target_feature = "crt-static")]
fn control_block_size() -> Option<usize> {
    unsafe extern "C" {
        static _thread_db_sizeof_pthread: u32;
    }
    // SAFETY: a constant of the C library (glibc's nptl), read once.
    Some(unsafe { _thread_db_sizeof_pthread } as usize)
}

/// Not known outside a static image (the C library's symbol is private to it).
#[cfg(not(target_feature = "crt-static"))]
fn control_block_size() -> Option<usize> {
    None
}

/// The environment variable that lets an image run without its fault
/// supervisor where none can start (the image is traced already: a
/// debugger, `strace`, the checks' single-stepping runner).
pub const UNSUPERVISED_VAR: &str = "FLEXOS_UNSUPERVISED";

/// Starts the fault supervisor ([`flexos_platform::supervisor`]), which
/// places every fault's signal frame where no compartment chose, and has
/// the fault reporter run without a signal stack. Where it cannot start
/// (the image is traced already), the image refuses to run, since a
/// compartment could then have the kernel write a signal frame into
/// another's memory, unless [`UNSUPERVISED_VAR`] is `1`: then it says so
/// and keeps the signal stack. Only where keys are in use: a `proc`
/// compartment's own process of a mixed image uses none.
fn supervise_faults() {
    if !flexos_platform::pkey::in_use() {
        return;
    }
    match flexos_platform::supervisor::start() {
        Ok(()) => flexos_platform::fault::without_signal_stack(),
        Err(e) => {
            let hole = "a compartment can have the kernel write a signal frame into another's memory \
                        (docs/mpk.md, \"Signal frames\")";
            if std::env::var_os(UNSUPERVISED_VAR).is_some_and(|v| v == "1") {
                let report = format!("flexos: no fault supervisor ({e}), as {UNSUPERVISED_VAR}=1 allows: {hole}\n");
                flexos_platform::console::write_err(report.as_bytes());
                return;
            }
            let report = format!(
                "flexos: this image cannot start its fault supervisor ({e}; it is traced already?), and \
                 without one {hole}. It does not run its compartments without one; to run them anyway (under a \
                 debugger, say), set {UNSUPERVISED_VAR}=1.\n"
            );
            flexos_platform::console::write_err(report.as_bytes());
            std::process::exit(1)
        }
    }
}

/// System calls no `mpk` image makes after start-up, which would let a
/// compartment around its keys:
/// * `process_vm_readv` and `process_vm_writev` make the kernel copy
///   between the caller's memory and a process's, the caller's own
///   included, through the kernel's own mapping of the pages, where
///   protection keys are not checked (attack `kernel-copy`: before this
///   filter it read and changed main's secret with every sharing);
/// * `pkey_mprotect` gives pages another key (attack `remap-memory`), and
///   `pkey_alloc`/`pkey_free` hand keys out: every key and every keyed
///   mapping is made at start-up (the gate-stack rows included);
/// * `ptrace`: a child the attacker forks (root may trace any process)
///   reads and writes the image through the kernel's mapping too (attack
///   `ptrace-parent`);
/// * `remap_file_pages`, `shmat`, `userfaultfd`, `io_uring_setup` (whose
///   rings can `madvise`) and `process_madvise` change or watch mappings
///   behind the memory-call filter's back ([`confine_memory`]), and so
///   does `prctl(PR_SET_MM)` (root may move the heap's bounds, and a
///   shrinking `brk` then unmaps what lies between); no image uses them;
/// * `personality`: with `READ_IMPLIES_EXEC` every readable mapping the
///   process makes later is executable too, around the memory-call
///   filter's denial of new executable memory (attack `new-code`);
/// * `perf_event_open`: a sample of a thread is taken by the kernel on that
///   thread, with the rights of the compartment it runs in at that moment,
///   and copies its registers and the top of its stack into a buffer the
///   caller maps (attack `perf-sample`: it read main's secret from main's
///   stack), and `bpf`: tracing programs read user memory the same way
///   (`bpf_probe_read_user`) in whatever thread they fire;
/// * `rseq`: see [`unregister_restartable_sequences`]; a thread started
///   later finds it denied, and glibc then runs that thread without one;
/// * `set_tid_address`: the kernel writes 0 to that address when the
///   thread exits, with the rights of the compartment it exits in, so a
///   compartment called on another's thread could have a word of that
///   compartment's memory cleared (attack `tid-address`); glibc calls it
///   only for the first thread, at start-up, and gives later threads
///   their word through `clone` (a thread started by a compartment exits
///   in that compartment's code, with its rights);
/// * `set_robust_list`: see [`unregister_robust_list`]; glibc calls it for
///   every thread it starts and goes on without one when it is refused
///   (an image's locks are not robust).
const FORBIDDEN_CALLS: [i64; 17] = [
    libc::SYS_ptrace,
    libc::SYS_personality,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pkey_mprotect,
    libc::SYS_pkey_alloc,
    libc::SYS_pkey_free,
    libc::SYS_remap_file_pages,
    libc::SYS_shmat,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_process_madvise,
    libc::SYS_perf_event_open,
    libc::SYS_bpf,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
];

unsafe extern "C" {
    /// glibc's offset of a thread's `struct rseq` from its thread pointer.
    static __rseq_offset: isize;
    /// The length glibc registered its `struct rseq` with (0: none).
    static __rseq_size: u32;
}

/// The signature glibc registers restartable sequences with on x86-64.
const RSEQ_SIG: u32 = 0x5305_3053;

/// Takes back the main thread's registration of restartable sequences,
/// which glibc made at start-up (the image's only thread at this point).
/// The registered area lies in the thread's control block (key 0, which
/// every compartment may write), and on each preemption the kernel follows
/// its `rseq_cs` pointer and moves the thread to that descriptor's abort
/// address, wherever the thread runs then, with the rights of the
/// compartment running there. Attack `rseq-abort`: a compartment called on
/// main's thread points it at a descriptor over every address that
/// aborts without the signature, and the kernel killed main's thread at
/// its next sleep (SIGSEGV, no report); with a signature of its choosing
/// (`rseq` registers one) it would move main's thread to code of its choice.
fn unregister_restartable_sequences() -> Result<(), String> {
    // SAFETY: glibc's constants, set before `main`.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return Ok(()); // glibc registered none (tunable glibc.pthread.rseq=0)
    }
    // The C library's block (the main thread runs on its compartment's copy).
    let tp = flexos_platform::tls::own_thread_pointer();
    let area = (tp as isize + offset) as usize;
    // glibc 2.35-2.39 registers 32 bytes and says so; later ones say 20 (the
    // features' size) but still register 32.
    let lens: [u32; 2] = [size.max(32), size];
    let mut last = 0;
    for len in lens {
        // SAFETY: unregisters this thread's area (the kernel only compares
        // the arguments with the registration and then stops using it).
        let rc = unsafe {
            libc::syscall(libc::SYS_rseq, area, len, 1 /* RSEQ_FLAG_UNREGISTER */, RSEQ_SIG)
        };
        if rc == 0 {
            return Ok(());
        }
        last = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    }
    // SAFETY: `cpu_id` (offset 4) of the thread's area: negative when the
    // kernel has none registered (glibc's registration failed).
    let cpu_id = unsafe { core::ptr::read_volatile((area + 4) as *const i32) };
    if cpu_id < 0 {
        return Ok(());
    }
    Err(std::io::Error::from_raw_os_error(last).to_string())
}

/// Takes back the main thread's robust list, which glibc registered at
/// start-up (the image's only thread at this point). When a thread exits,
/// the kernel walks that list with the rights of the compartment the
/// thread exits in, and every lock word on it that holds the thread's id
/// gets the owner-died bit and loses the id. The list's head lies in the
/// thread's control block (key 0, which every compartment may write), so
/// a compartment called on main's thread could point it at main's words
/// (attack `robust-list`: main's lock word went from its thread's id to
/// 0x40000000 when the thread ended).
/// A process that inherited the filter (a `proc` compartment's, started
/// from the image) has none: glibc's registration was refused.
fn unregister_robust_list() -> Result<(), String> {
    let (mut head, mut len) = (0usize, 0usize);
    // SAFETY: asks for this thread's registration; writes the two locals.
    if unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &mut head, &mut len) } == 0 && head == 0 {
        return Ok(());
    }
    // SAFETY: a null head stops the kernel's use of this thread's list
    // (24 bytes: the size of `struct robust_list_head`, which it requires).
    let rc = unsafe { libc::syscall(libc::SYS_set_robust_list, 0usize, 24usize) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().to_string()) }
}

/// Makes [`FORBIDDEN_CALLS`] fail with `EPERM` in every thread of the
/// image, now and later (a seccomp filter; every other system call is
/// allowed here). Inherited by a `proc` compartment's process, which makes
/// none of them either (it uses no keys).
fn deny_forbidden_calls() {
    // Before the filter, which denies `rseq` and `set_robust_list` too.
    for (what, taken_back) in [
        ("restartable sequences (rseq)", unregister_restartable_sequences()),
        ("robust list (set_robust_list)", unregister_robust_list()),
    ] {
        if let Err(e) = taken_back {
            let report = format!("flexos: cannot take back the main thread's {what}: {e}\n");
            flexos_platform::console::write_err(report.as_bytes());
            flexos_platform::process_abort()
        }
    }
    let installed = (|| {
        use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
        let set_mm = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::PR_SET_MM as u64)
            .map_err(|e| e.to_string())?;
        let set_mm = SeccompRule::new(vec![set_mm]).map_err(|e| e.to_string())?;
        let rules = FORBIDDEN_CALLS.iter().map(|&nr| (nr, vec![])).chain([(libc::SYS_prctl, vec![set_mm])]).collect();
        let deny = seccompiler::SeccompAction::Errno(libc::EPERM as u32);
        let filter = seccompiler::SeccompFilter::new(
            rules,
            seccompiler::SeccompAction::Allow,
            deny,
            seccompiler::TargetArch::x86_64,
        )
        .map_err(|e| e.to_string())?;
        let program: seccompiler::BpfProgram = filter.try_into().map_err(|e| format!("{e:?}"))?;
        seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
    })();
    if let Err(e) = installed {
        let report = format!("flexos: cannot deny the system calls that bypass protection keys (seccomp): {e}\n");
        flexos_platform::console::write_err(report.as_bytes());
        flexos_platform::process_abort()
    }
}

/// Confines the image's memory calls (the memory-call filter,
/// [`memory_filter`]): from now on no thread may `munmap`, `madvise`,
/// `mremap`, `mprotect` or `mmap` with `MAP_FIXED` over the memory the
/// keys protect: the heaps (private and shared), the gate-stack arena and
/// the arena of gate-stack tables (where only `mprotect` opening one
/// slot's stack, or one table's page, is allowed), the
/// program's segments (its code included: made writable, it would be
/// rewritten under every compartment), the main stack with the room it may
/// grow into, and the vDSO. Before it, confines the image to the system
/// calls a booted image makes (the allowlist, [`image_calls`]). Called at
/// the end of boot, once every compartment's process and VM is started
/// (their setup maps at fixed addresses and makes calls the allowlist
/// leaves out).
pub fn confine_memory() {
    // First the allowlist ([`image_calls`]), which lets the other filters'
    // calls through to them: the memory-call filter denies new filters.
    let allowed = IMAGE_CALLS_FILTER.get().ok_or_else(|| "not prepared".to_string());
    if let Err(e) = allowed.and_then(|p| seccompiler::apply_filter_all_threads(p).map_err(|e| e.to_string())) {
        let report = format!("flexos: cannot confine the image to its system calls (seccomp): {e}\n");
        flexos_platform::console::write_err(report.as_bytes());
        flexos_platform::process_abort()
    }
    let Some(program) = MEMORY_FILTER.get() else {
        flexos_platform::console::write_err(b"flexos: the memory-call filter was not prepared\n");
        flexos_platform::process_abort()
    };
    if let Err(e) = seccompiler::apply_filter_all_threads(program) {
        let report = format!("flexos: cannot confine the image's memory calls (seccomp): {e}\n");
        flexos_platform::console::write_err(report.as_bytes());
        flexos_platform::process_abort()
    }
}

/// The allowlist's program ([`image_calls`]), made by [`prepare`] and
/// installed by [`confine_memory`].
static IMAGE_CALLS_FILTER: std::sync::OnceLock<seccompiler::BpfProgram> = std::sync::OnceLock::new();

/// The memory-call filter's program, made by [`prepare`] and installed by
/// [`confine_memory`].
static MEMORY_FILTER: std::sync::OnceLock<seccompiler::BpfProgram> = std::sync::OnceLock::new();

/// What the memory-call filter protects (see [`confine_memory`]); read
/// while /proc/self/maps is still open to the image.
fn protected_ranges() -> memory_filter::Policy {
    use memory_filter::{Policy, Range};
    let range = |(start, end): (usize, usize)| Range { start: start as u64, end: end as u64 };
    let heaps = flexos_alloc::region();
    let heaps = (heaps.base.as_ptr() as usize, heaps.base.as_ptr() as usize + heaps.len);
    let mut protected = vec![range(heaps), range(flexos_platform::pkey::program_extent())];
    if let Some((start, end)) = flexos_platform::pkey::main_stack() {
        // With the room below it that the stack may still grow into.
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given.
        let room = if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            (limit.rlim_cur as usize).div_ceil(4096) * 4096
        } else {
            0
        };
        protected.push(range((start.min(end.saturating_sub(room)), end)));
    }
    for special in [&b"[vdso]"[..], b"[vvar]", b"[vvar_vclock]"] {
        protected.extend(flexos_platform::pkey::named_mapping(special).map(range));
    }
    let stacks = memory_filter::SlotArena {
        range: range(gatestack::arena()),
        span: gatestack::SLOT_SPAN as u64,
        stack_offset: gatestack::SLOT_STACK_OFFSET as u64,
    };
    // The tables' arena: a slot is a page, all of it opened at once.
    let tables = memory_filter::SlotArena {
        range: range(gatestack::tables()),
        span: flexos_platform::memory::PAGE_SIZE as u64,
        stack_offset: 0,
    };
    Policy { protected, slots: vec![stacks, tables] }
}

/// Keeps the image out of `/proc` for reading and writing files, with a
/// Landlock ruleset that allows both beneath every other entry of `/`:
/// `/proc/self/mem` (and `/proc/PID/mem`) reaches the process's memory
/// through the kernel's own mapping, where protection keys are not checked
/// (attack `proc-mem`). Called at boot, before the image starts any thread,
/// so every thread and process it starts inherits the ruleset; only those
/// two rights are handled, so starting a `proc` compartment (executing
/// `/proc/self/exe`) still works. Where the kernel has no Landlock the
/// image says so on standard error and runs with `/proc` open.
fn keep_out_of_proc() {
    use landlock::{AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus};
    let rights = AccessFs::ReadFile | AccessFs::WriteFile;
    let elsewhere: Vec<std::path::PathBuf> = match std::fs::read_dir("/") {
        Ok(entries) => entries.flatten().filter(|e| e.file_name() != "proc").map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    let status = (|| {
        Ruleset::default()
            .handle_access(rights)?
            .create()?
            .add_rules(landlock::path_beneath_rules(&elsewhere, rights))?
            .restrict_self()
    })();
    let problem = match status {
        Ok(s) if s.ruleset == RulesetStatus::FullyEnforced => return,
        Ok(_) => "this kernel has no Landlock".to_string(),
        Err(e) => e.to_string(),
    };
    let report = format!(
        "flexos: cannot keep the image out of /proc ({problem}): every mpk compartment can reach all memory through /proc/self/mem\n"
    );
    flexos_platform::console::write_err(report.as_bytes());
}

/// The address of the data shadow stack's mirror of `[addr, addr + len)`,
/// when that range lies on a stack that a gate made for the running
/// compartment's domain; `None` otherwise (the main thread's stack and the
/// scheduler's initial stacks have no mirror).
pub fn dss_mirror(addr: usize, len: usize) -> Option<usize> {
    let domain = stack_domain(compartment::current());
    if domain == SHARED_STACKS {
        return None;
    }
    // SAFETY: the running context's table, used only on this host thread.
    let t = unsafe { &mut *gatestack::active() };
    let (bottom, top) = t.stack_bounds(domain)?;
    if addr < bottom || addr + len > top {
        return None;
    }
    // SAFETY: a volatile read: the mirror's address is read once, then checked.
    let mirror = unsafe { core::ptr::read_volatile(&t.mirrors[domain].base) };
    let mirror = if mirror == 0 {
        let block = allocate_shared(top - bottom);
        t.mirrors[domain] = block;
        block.base
    } else if flexos_alloc::is_shared(mirror, top - bottom) {
        mirror
    } else {
        gatestack::table_rewritten("a data shadow stack outside the shared heap")
    };
    Some(mirror + (addr - bottom))
}

/// Runs `f` in compartment `to`, from the running compartment, choosing the
/// gate at run time (for callbacks and for entering an application's
/// compartment). Each pair of compartments gets its own gate with its own
/// immediates.
///
/// # Safety
/// As for [`gate`]: `f` must be code that compartment `to` may run.
#[inline(never)]
pub unsafe fn run_in<R>(to: usize, f: impl FnOnce() -> R) -> R {
    const N: usize = COMPARTMENTS.len();
    let from = running_compartment();
    assert!(to < N && from < N, "compartment index out of range");
    macro_rules! inner {
        ($to:literal; $($from:literal)*) => {
            match from {
                // SAFETY: passed on from this function's caller.
                $($from if $from < N && $from != $to => unsafe { gate::<$from, $to, _, R>(f) },)*
                _ => unreachable!(),
            }
        };
    }
    macro_rules! outer {
        ($($to:literal)*) => {
            match to {
                $($to if $to < N => inner!($to; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15),)*
                _ => unreachable!(),
            }
        };
    }
    if from == to {
        return f();
    }
    outer!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
}

/// The compartment whose rights this thread holds (in a process that uses
/// keys): the one whose PKRU value is in the register now (every `mpk` compartment's is its own),
/// or among compartments with the same value (`fcall` ones: every key)
/// the one the compartment register names if it is one of them.
///
/// [`run_in`] picks its gate by this, never by the compartment register
/// alone: the register is a thread-local (key 0), which a compromised
/// compartment can rewrite, and a gate returns to the rights of the
/// compartment it was built for; PKRU itself changes only through the
/// checked gates.
fn running_compartment() -> usize {
    if !flexos_platform::pkey::in_use() {
        // A compartment's own process (`proc`) runs without keys.
        return compartment::current();
    }
    let rights = flexos_platform::pkey::read();
    match flexos_platform::pkey::compartment_with_rights(rights, compartment::current()) {
        Some(c) => c,
        None => {
            let report = format!("flexos: PKRU {rights:#010x} is no compartment's rights; stopping the image\n");
            flexos_platform::console::write_err(report.as_bytes());
            flexos_platform::process_abort()
        }
    }
}

/// One `wrpkru` of a gate: where it is and the PKRU value its check enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    /// The address of the `wrpkru` instruction.
    pub address: usize,
    /// The value the gate's check loop holds PKRU to.
    pub pkru: u32,
}

unsafe extern "C" {
    static __start_flexos_wrpkru: [i32; 0];
    static __stop_flexos_wrpkru: [i32; 0];
}

/// Every gate `wrpkru` in the image, from the `flexos_wrpkru` section that
/// each gate appends its sites to (empty in images without `mpk` gates).
pub fn sites() -> Vec<Site> {
    if !flexos_layout::has_mpk() {
        return Vec::new();
    }
    // SAFETY: the linker defines both symbols around the section, which
    // holds pairs of 32-bit words: the site's offset from the word, and the value.
    unsafe {
        let start = (&raw const __start_flexos_wrpkru).cast::<i32>();
        let stop = (&raw const __stop_flexos_wrpkru).cast::<i32>();
        let n = stop.offset_from(start) as usize / 2;
        (0..n)
            .map(|i| {
                let word = start.add(2 * i);
                Site { address: (word as isize + *word as isize) as usize, pkru: *word.add(1) as u32 }
            })
            .collect()
    }
}

/// Declares the image's *link pad*: `FLEXOS_LINK_PAD` (decimal, at compile
/// time of the image's crate) bytes of read-only data. Every image's crate
/// invokes it once. Changing the pad moves the read-only data of the code
/// linked after it (the C library's) relative to that code, which changes
/// the displacements inside its instructions: `flexos build` uses it to
/// re-link an `mpk` image whose code happens to contain the bytes of a
/// `wrpkru` (`0F 01 EF`) inside another instruction, until none is left
/// outside the checked gate sites (`flexos audit wrpkru`).
#[macro_export]
macro_rules! link_pad {
    () => {
        /// Read-only padding that the build sizes (see `flexos_gate::link_pad!`).
        #[used]
        static FLEXOS_LINK_PAD: [u8; $crate::pad_len(option_env!("FLEXOS_LINK_PAD"))] =
            [0x90; $crate::pad_len(option_env!("FLEXOS_LINK_PAD"))];
    };
}

pub use flexos_platform::pad_len;
pub use thread_exit::key0_state as thread_exit_key0_state;
