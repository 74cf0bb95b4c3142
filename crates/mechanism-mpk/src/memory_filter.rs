//! The memory-call filter of an `mpk` image: a seccomp program that makes
//! the system calls which change mappings fail with `EPERM` where they
//! would touch memory the keys protect.
//!
//! Protection keys check loads and stores, not system calls: a compromised
//! compartment could otherwise `munmap` another's heap page and map its
//! own in its place, `madvise(MADV_DONTNEED)` it to zeros, `mprotect` the
//! program's code writable and rewrite what another compartment runs, or
//! `mremap` pages away. This filter denies `munmap`, `madvise`, `mremap`,
//! `mprotect` and `mmap` with `MAP_FIXED` whenever their range overlaps a
//! *protected range* (the compartments' heaps and the shared heap, the
//! gate-stack arena, the program's segments, the main stack, the vDSO).
//! The image itself makes none of these calls there after boot, with one
//! exception: a slot of the gate-stack arena (or a page of the arena of
//! gate-stack tables) is opened with `mprotect` (which keeps each page's
//! key) when a context first takes it, and never closed; that one call,
//! read and write over exactly one slot's stack, is the only memory call
//! allowed in those arenas ([`Policy::slots`]), so that no compartment can
//! make another's gate stacks or tables inaccessible.
//!
//! `mmap` and `mprotect` with `PROT_EXEC` are denied everywhere: after
//! boot no memory becomes executable, since code a compartment wrote
//! could hold a `wrpkru` that no check follows (the program's own code is
//! audited for that at build time).
//!
//! It denies new signal handlers (`rt_sigaction` with a new action),
//! `clone` with `CLONE_UNTRACED` and `clone3` (ENOSYS), so that every
//! frame stays where the fault supervisor puts it
//! (`flexos_platform::supervisor`).
//!
//! Being the image's last filter, it also denies new filters (`seccomp`,
//! `prctl(PR_SET_SECCOMP)`): a compartment's own filter would act on the
//! calls of every compartment that runs on its threads.
//!
//! It also denies `rt_sigreturn`, which loads PKRU from a signal frame in
//! user memory that a compartment can forge; no handler of an `mpk` image
//! returns (the fault reporter raises its signal again instead).
//!
//! seccompiler compares arguments with constants only; a range test needs
//! the sum `addr + len`, so the program is written here, in classic BPF,
//! with a small assembler that resolves labels (and a test interpreter).

use seccompiler::sock_filter;

/// A range `[start, end)` of addresses, page-aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// What the filter protects.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Ranges no memory call may touch.
    pub protected: Vec<Range>,
    /// Arenas of slots (the gate stacks, the gate-stack tables), where
    /// only a slot's opening is allowed.
    pub slots: Vec<SlotArena>,
}

/// An arena of equal slots, each a guard below a stack, in which the one
/// memory call allowed is `mprotect(stack, stack_len, PROT_READ |
/// PROT_WRITE)` over exactly one slot's stack (it keeps protection keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotArena {
    /// The arena; its start is a multiple of `span`.
    pub range: Range,
    /// A slot's length: a power of two of at most 2^31 bytes.
    pub span: u64,
    /// Where a slot's stack begins, from the slot's start.
    pub stack_offset: u64,
}

/// Arguments at or above this (2^57, beyond any user address on x86-64)
/// are denied outright, so that `addr + len` never overflows 64 bits.
const ARG_LIMIT_HIGH_WORD: u32 = 1 << 25;

/// `AUDIT_ARCH_X86_64`.
const ARCH_X86_64: u32 = 0xc000_003e;
/// System call numbers of the x32 ABI carry this bit.
const X32_BIT: u32 = 0x4000_0000;

/// `SECCOMP_RET_ALLOW`.
const RET_ALLOW: u32 = 0x7fff_0000;
/// `SECCOMP_RET_ERRNO | EPERM`.
const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
/// `SECCOMP_RET_ERRNO | ENOSYS`.
const RET_ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const LD_IMM: u16 = 0x00;
const LD_MEM: u16 = 0x60;
const LDX_MEM: u16 = 0x61;
const ST: u16 = 0x02;
const ADD_X: u16 = 0x0c;
const AND_K: u16 = 0x54;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const JGE_X: u16 = 0x3d;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
fn arg_high(i: u32) -> u32 {
    20 + 8 * i
}

// Scratch words of the program.
const M_TMP: u32 = 0;
const M_END_LOW: u32 = 1;
const M_CARRY: u32 = 2;
const M_END_HIGH: u32 = 3;

/// A jump target: a label not yet placed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Label(usize);

/// One instruction, its jumps still symbolic.
enum Op {
    Plain(u16, u32),
    Jump(u16, u32, Label, Label),
    Always(Label),
}

/// An assembler for classic BPF with forward labels.
#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    places: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.places.push(None);
        Label(self.places.len() - 1)
    }
    fn place(&mut self, l: Label) {
        self.places[l.0] = Some(self.ops.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.ops.push(Op::Plain(code, k));
    }
    /// A conditional jump: to `yes` if the test holds, else to `no`.
    fn jump(&mut self, code: u16, k: u32, yes: Label, no: Label) {
        self.ops.push(Op::Jump(code, k, yes, no));
    }
    fn goto(&mut self, l: Label) {
        self.ops.push(Op::Always(l));
    }
    /// Returns `action` for system call `nr`; other calls go on (the
    /// accumulator must hold the call's number, and still does after).
    fn answer_call(&mut self, nr: i64, action: u32) {
        let (this, other) = (self.label(), self.label());
        self.jump(JEQ_K, nr as u32, this, other);
        self.place(this);
        self.op(RET_K, action);
        self.place(other);
    }
    /// Jumps to `to` if any of `bits` is set in data word `word`; goes on
    /// otherwise, with that word in the accumulator.
    fn jump_if_bits(&mut self, word: u32, bits: u32, to: Label) {
        let clear = self.label();
        self.op(LD_W_ABS, word);
        self.jump(JSET_K, bits, to, clear);
        self.place(clear);
    }
    /// A = word `x` + word `y` of the data (32 bits, wrapping), X = word `y`.
    fn add_words(&mut self, x: u32, y: u32) {
        self.op(LD_W_ABS, y);
        self.op(ST, M_TMP);
        self.op(LDX_MEM, M_TMP);
        self.op(LD_W_ABS, x);
        self.op(ADD_X, 0);
    }
    fn finish(self) -> Vec<sock_filter> {
        let at = |l: Label, from: usize| {
            let to = self.places[l.0].expect("every label is placed");
            assert!(to > from, "BPF jumps go forward only");
            to - from - 1
        };
        let short = |n: usize| u8::try_from(n).expect("a conditional jump within 255 instructions");
        self.ops
            .iter()
            .enumerate()
            .map(|(i, op)| match *op {
                Op::Plain(code, k) => sock_filter { code, jt: 0, jf: 0, k },
                Op::Jump(code, k, yes, no) => sock_filter { code, jt: short(at(yes, i)), jf: short(at(no, i)), k },
                Op::Always(l) => sock_filter { code: JA, jt: 0, jf: 0, k: at(l, i) as u32 },
            })
            .collect()
    }
}

/// Appends a test of `[arg addr, arg addr + arg len)` against `ranges`:
/// jumps to `deny` if they overlap one (or an argument is beyond any user
/// address), and falls through otherwise.
fn overlap_test(a: &mut Asm, addr: u32, len: u32, ranges: &[Range], deny: Label) {
    // Both arguments below 2^57: the sum cannot overflow.
    for arg in [addr, len] {
        let next = a.label();
        a.op(LD_W_ABS, arg_high(arg));
        a.jump(JGE_K, ARG_LIMIT_HIGH_WORD, deny, next);
        a.place(next);
    }
    // end = addr + len, in two words with the carry.
    let (carry, no_carry, store) = (a.label(), a.label(), a.label());
    a.add_words(arg_low(addr), arg_low(len));
    a.op(ST, M_END_LOW);
    a.jump(JGE_X, 0, no_carry, carry);
    a.place(carry);
    a.op(LD_IMM, 1);
    a.goto(store);
    a.place(no_carry);
    a.op(LD_IMM, 0);
    a.place(store);
    a.op(ST, M_CARRY);
    a.add_words(arg_high(addr), arg_high(len));
    a.op(LDX_MEM, M_CARRY);
    a.op(ADD_X, 0);
    a.op(ST, M_END_HIGH);
    for r in ranges {
        let (start_high, start_low) = ((r.start >> 32) as u32, r.start as u32);
        let (end_high, end_low) = ((r.end >> 32) as u32, r.end as u32);
        let (next, high_equal, below_end, end_equal) = (a.label(), a.label(), a.label(), a.label());
        // addr < r.end?
        let not_above = a.label();
        a.op(LD_W_ABS, arg_high(addr));
        a.jump(JGT_K, end_high, next, not_above);
        a.place(not_above);
        a.jump(JEQ_K, end_high, high_equal, below_end);
        a.place(high_equal);
        a.op(LD_W_ABS, arg_low(addr));
        a.jump(JGE_K, end_low, next, below_end);
        // end > r.start?
        a.place(below_end);
        let not_above = a.label();
        a.op(LD_MEM, M_END_HIGH);
        a.jump(JGT_K, start_high, deny, not_above);
        a.place(not_above);
        a.jump(JEQ_K, start_high, end_equal, next);
        a.place(end_equal);
        a.op(LD_MEM, M_END_LOW);
        a.jump(JGT_K, start_low, deny, next);
        a.place(next);
    }
}

/// Appends a test of `mprotect`'s arguments: jumps to `allow` if they
/// open exactly one slot's stack in `slots` (read and write, the stack's
/// length, at a slot's stack offset; the range is known to overlap the
/// arena), to `deny` otherwise.
fn slot_opening_test(a: &mut Asm, slots: &SlotArena, allow: Label, deny: Label) {
    assert!(
        slots.span.is_power_of_two() && slots.span <= 1 << 31 && slots.range.start.is_multiple_of(slots.span),
        "a slot arena starts at a multiple of its slots' span, a power of two below 2^32"
    );
    let stack_len = slots.span - slots.stack_offset;
    // Each word must equal its value; the last test jumps to `allow`.
    let words = [
        (arg_high(2), 0, None),
        (arg_low(2), (libc::PROT_READ | libc::PROT_WRITE) as u32, None),
        (arg_high(1), (stack_len >> 32) as u32, None),
        (arg_low(1), stack_len as u32, None),
        // The span divides 2^32, so the low word decides the offset in a slot.
        (arg_low(0), slots.stack_offset as u32, Some((slots.span - 1) as u32)),
    ];
    for (i, (word, value, mask)) in words.into_iter().enumerate() {
        a.op(LD_W_ABS, word);
        if let Some(mask) = mask {
            a.op(AND_K, mask);
        }
        let next = if i + 1 == words.len() { allow } else { a.label() };
        a.jump(JEQ_K, value, next, deny);
        if i + 1 < words.len() {
            a.place(next);
        }
    }
}

/// The filter program for `policy`: every other system call is allowed
/// (other filters of the image deny what they deny).
pub fn program(policy: &Policy) -> Vec<sock_filter> {
    let mut a = Asm::default();
    // Other architectures' and the x32 ABI's numbers are denied.
    let (x86_64, native, foreign) = (a.label(), a.label(), a.label());
    a.op(LD_W_ABS, ARCH);
    a.jump(JEQ_K, ARCH_X86_64, x86_64, foreign);
    a.place(x86_64);
    a.op(LD_W_ABS, NR);
    a.jump(JGE_K, X32_BIT, foreign, native);
    a.place(foreign);
    a.op(RET_K, RET_EPERM);
    a.place(native);
    // No handler of the image returns, and a frame the caller forged would
    // load PKRU: `rt_sigreturn` is denied.
    a.answer_call(libc::SYS_rt_sigreturn, RET_EPERM);
    // No filter of a compartment's own: one installed in every thread
    // (`SECCOMP_FILTER_FLAG_TSYNC`), or in the thread that called it, which
    // goes back to its caller's compartment, acts on other compartments'
    // calls; `SECCOMP_RET_TRAP` stopped the image in main's name (attack
    // `install-filter`). This is the image's last filter.
    a.answer_call(libc::SYS_seccomp, RET_EPERM);
    let (prctl, not_prctl, deny_prctl, allow_prctl) = (a.label(), a.label(), a.label(), a.label());
    a.jump(JEQ_K, libc::SYS_prctl as u32, prctl, not_prctl);
    a.place(prctl);
    a.op(LD_W_ABS, arg_low(0));
    a.jump(JEQ_K, libc::PR_SET_SECCOMP as u32, deny_prctl, allow_prctl);
    a.place(deny_prctl);
    a.op(RET_K, RET_EPERM);
    a.place(allow_prctl);
    a.op(RET_K, RET_ALLOW);
    a.place(not_prctl);
    // Every new task stays traced by the fault supervisor: `clone3` (whose
    // flags lie in memory a filter cannot read) answers ENOSYS, so that the
    // C library uses `clone`, which may not ask for `CLONE_UNTRACED`.
    a.answer_call(libc::SYS_clone3, RET_ENOSYS);
    let (clone, not_clone, deny, allow_call) = (a.label(), a.label(), a.label(), a.label());
    a.jump(JEQ_K, libc::SYS_clone as u32, clone, not_clone);
    a.place(clone);
    a.jump_if_bits(arg_low(0), libc::CLONE_UNTRACED as u32, deny);
    a.goto(allow_call);
    a.place(not_clone);
    // No new signal handler (a handler's frame is written wherever the
    // thread's stack pointer points: docs/mpk.md, "Signal frames"); asking
    // for the current one (a null new action) stays allowed.
    let (sigaction, not_sigaction, low_zero) = (a.label(), a.label(), a.label());
    a.jump(JEQ_K, libc::SYS_rt_sigaction as u32, sigaction, not_sigaction);
    a.place(sigaction);
    a.op(LD_W_ABS, arg_low(1));
    a.jump(JEQ_K, 0, low_zero, deny);
    a.place(low_zero);
    a.op(LD_W_ABS, arg_high(1));
    a.jump(JEQ_K, 0, allow_call, deny);
    a.place(deny);
    a.op(RET_K, RET_EPERM);
    a.place(allow_call);
    a.op(RET_K, RET_ALLOW);
    a.place(not_sigaction);
    let everything: Vec<Range> =
        policy.protected.iter().chain(policy.slots.iter().map(|s| &s.range)).copied().collect();
    let calls = [libc::SYS_munmap, libc::SYS_madvise, libc::SYS_mprotect, libc::SYS_mmap, libc::SYS_mremap];
    // Dispatch: `jeq nr` to a long jump into the call's block (a block may
    // lie beyond the 255 instructions a conditional jump reaches).
    let allow = a.label();
    let mut blocks = Vec::new();
    for nr in calls {
        let (block, this, not_this) = (a.label(), a.label(), a.label());
        a.jump(JEQ_K, nr as u32, this, not_this);
        a.place(this);
        a.goto(block);
        a.place(not_this);
        blocks.push((nr, block));
    }
    a.goto(allow);
    // Each block ends in its own two returns, within a short jump's reach.
    for (nr, block) in blocks {
        a.place(block);
        let (allow_here, deny_here) = (a.label(), a.label());
        if nr == libc::SYS_mmap {
            // No new executable memory: code of the caller's own could hold a
            // `wrpkru` that no check follows.
            a.jump_if_bits(arg_low(2), libc::PROT_EXEC as u32, deny_here);
            // Only MAP_FIXED replaces what is mapped there.
            let fixed = a.label();
            a.op(LD_W_ABS, arg_low(3));
            a.jump(JSET_K, libc::MAP_FIXED as u32, fixed, allow_here);
            a.place(fixed);
            overlap_test(&mut a, 0, 1, &everything, deny_here);
        } else if nr == libc::SYS_mremap {
            // Moving to a chosen address, or leaving the old range mapped, is
            // never needed; otherwise neither the old range nor its new
            // length in place may touch a protected range.
            let plain = a.label();
            a.op(LD_W_ABS, arg_low(3));
            a.jump(JSET_K, (libc::MREMAP_FIXED | libc::MREMAP_DONTUNMAP) as u32, deny_here, plain);
            a.place(plain);
            overlap_test(&mut a, 0, 1, &everything, deny_here);
            overlap_test(&mut a, 0, 2, &everything, deny_here);
        } else if nr == libc::SYS_mprotect {
            // No memory made executable (as for `mmap`).
            a.jump_if_bits(arg_low(2), libc::PROT_EXEC as u32, deny_here);
            overlap_test(&mut a, 0, 1, &policy.protected, deny_here);
            // In an arena of slots, only a slot's opening.
            for slots in &policy.slots {
                let (in_arena, next) = (a.label(), a.label());
                overlap_test(&mut a, 0, 1, &[slots.range], in_arena);
                a.goto(next);
                a.place(in_arena);
                slot_opening_test(&mut a, slots, allow_here, deny_here);
                a.place(next);
            }
        } else {
            overlap_test(&mut a, 0, 1, &everything, deny_here);
        }
        a.place(allow_here);
        a.op(RET_K, RET_ALLOW);
        a.place(deny_here);
        a.op(RET_K, RET_EPERM);
    }
    a.place(allow);
    a.op(RET_K, RET_ALLOW);
    a.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `prog` on a system call as the kernel would (the instructions
    /// the assembler and seccompiler emit only); returns the action.
    pub(crate) fn run(prog: &[sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&ARCH_X86_64.to_le_bytes());
        for (i, v) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let word = |k: u32| u32::from_le_bytes(data[k as usize..k as usize + 4].try_into().unwrap());
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let jump = |cond: bool| if cond { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => a = word(i.k),
                LD_IMM => a = i.k,
                LD_MEM => a = mem[i.k as usize],
                LDX_MEM => x = mem[i.k as usize],
                ST => mem[i.k as usize] = a,
                ADD_X => a = a.wrapping_add(x),
                AND_K => a &= i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += jump(a == i.k),
                JGT_K => pc += jump(a > i.k),
                JGE_K => pc += jump(a >= i.k),
                JSET_K => pc += jump(a & i.k != 0),
                JGE_X => pc += jump(a >= x),
                RET_K => return i.k,
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    fn policy() -> Policy {
        Policy {
            protected: vec![
                Range { start: 0x5555_0000_0000, end: 0x5555_0010_0000 },
                Range { start: 0x7fff_ffff_0000, end: 0x8000_0000_0000 },
                Range { start: 0xffff_f000, end: 0x1_0000_3000 },
            ],
            slots: vec![
                SlotArena {
                    range: Range { start: 0x7f00_0000_0000, end: 0x7f10_0000_0000 },
                    span: 512 * 1024,
                    stack_offset: 256 * 1024,
                },
                // Pages, as the gate-stack tables' arena.
                SlotArena {
                    range: Range { start: 0x7e00_0000_0000, end: 0x7e00_0200_0000 },
                    span: 4096,
                    stack_offset: 0,
                },
            ],
        }
    }

    /// A policy as large as an image's: six protected ranges and two
    /// arenas (the program's jumps must stay within reach).
    fn large_policy() -> Policy {
        let mut p = policy();
        p.protected.push(Range { start: 0x6000_0000_0000, end: 0x6000_1000_0000 });
        p.protected.push(Range { start: 0x7ffd_0000_0000, end: 0x7ffd_0000_2000 });
        p.protected.push(Range { start: 0x7ffd_0000_4000, end: 0x7ffd_0000_6000 });
        p
    }

    /// Whether `mprotect(addr, len, prot)` opens exactly one slot's stack
    /// (what the filter allows in the arena), decided with 64-bit arithmetic.
    fn is_opening(slots: &SlotArena, addr: u64, len: u64, prot: u64) -> bool {
        prot == (libc::PROT_READ | libc::PROT_WRITE) as u64
            && len == slots.span - slots.stack_offset
            && addr % slots.span == slots.stack_offset
    }

    /// What the filter must answer to `mprotect(addr, len, prot)` (not
    /// executable): denied over a protected range, and in the arena unless
    /// it opens exactly one slot's stack.
    fn mprotect_expected(p: &Policy, addr: u64, len: u64, prot: u64) -> u32 {
        let denied = overlaps(&p.protected, addr, len)
            || p.slots.iter().any(|s| overlaps(&[s.range], addr, len) && !is_opening(s, addr, len, prot));
        if denied { RET_EPERM } else { RET_ALLOW }
    }

    /// What the filter must decide: deny arguments beyond any user address,
    /// and ranges that overlap one of `ranges`.
    fn overlaps(ranges: &[Range], addr: u64, len: u64) -> bool {
        let beyond = 1u64 << 57;
        addr >= beyond || len >= beyond || ranges.iter().any(|r| addr < r.end && addr + len > r.start)
    }

    #[test]
    fn memory_calls_are_denied_exactly_where_they_touch_a_protected_range() {
        let p = policy();
        let prog = program(&p);
        let all: Vec<Range> = p.protected.iter().chain(p.slots.iter().map(|s| &s.range)).copied().collect();
        // Addresses around every edge, lengths around every distance.
        let mut points = vec![0u64, 4096, 0x7fff_ffff_f000];
        for r in &all {
            for base in [r.start, r.end] {
                for d in [0u64, 1, 4096, 0x1_0000_0000, 0xffff_ffff] {
                    points.push(base.wrapping_sub(d));
                    points.push(base + d);
                }
            }
        }
        let lens = [0u64, 1, 4096, 0x1000_0000, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_1000, 0x100_0000_0000];
        let mut denied = 0;
        for &addr in &points {
            for &len in &lens {
                let args = [addr, len, 0, 0, 0, 0];
                let expect = |ranges: &[Range]| if overlaps(ranges, addr, len) { RET_EPERM } else { RET_ALLOW };
                assert_eq!(run(&prog, libc::SYS_munmap, args), expect(&all), "munmap({addr:#x}, {len:#x})");
                assert_eq!(run(&prog, libc::SYS_madvise, args), expect(&all), "madvise({addr:#x}, {len:#x})");
                for prot in [0, libc::PROT_READ as u64, (libc::PROT_READ | libc::PROT_WRITE) as u64] {
                    let args = [addr, len, prot, 0, 0, 0];
                    let expected = mprotect_expected(&p, addr, len, prot);
                    assert_eq!(run(&prog, libc::SYS_mprotect, args), expected, "mprotect({addr:#x}, {len:#x}, {prot})");
                }
                let fixed = [addr, len, 3, (libc::MAP_FIXED | libc::MAP_PRIVATE) as u64, 0, 0];
                assert_eq!(run(&prog, libc::SYS_mmap, fixed), expect(&all), "mmap({addr:#x}, {len:#x}, MAP_FIXED)");
                let hint = [addr, len, 3, libc::MAP_PRIVATE as u64, 0, 0];
                assert_eq!(run(&prog, libc::SYS_mmap, hint), RET_ALLOW, "mmap({addr:#x}, {len:#x}) without MAP_FIXED");
                let grow = [addr, len, len, libc::MREMAP_MAYMOVE as u64, 0, 0];
                assert_eq!(run(&prog, libc::SYS_mremap, grow), expect(&all), "mremap({addr:#x}, {len:#x})");
                assert_eq!(run(&prog, libc::SYS_read, args), RET_ALLOW);
                // New executable memory is denied anywhere.
                let exec = (libc::PROT_READ | libc::PROT_EXEC) as u64;
                let new_code = [addr, len, exec, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64, 0, 0];
                assert_eq!(run(&prog, libc::SYS_mmap, new_code), RET_EPERM, "mmap({addr:#x}, {len:#x}, PROT_EXEC)");
                let made_code = [addr, len, exec, 0, 0, 0];
                assert_eq!(run(&prog, libc::SYS_mprotect, made_code), RET_EPERM, "mprotect({addr:#x}, PROT_EXEC)");
                denied += usize::from(overlaps(&all, addr, len));
            }
        }
        assert!(denied > 100, "the edges were exercised ({denied} denied)");
    }

    #[test]
    fn in_an_arena_of_slots_only_a_slots_opening_is_allowed() {
        let p = large_policy();
        let prog = program(&p);
        for slots in &p.slots {
            slots_opened_exactly(&p, &prog, slots);
        }
    }

    /// Checks `mprotect` around slots of `slots` (an arena of `p`) against
    /// [`mprotect_expected`].
    fn slots_opened_exactly(p: &Policy, prog: &[sock_filter], slots: &SlotArena) {
        let stack_len = slots.span - slots.stack_offset;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        // Slots at both ends of the arena, one in the middle, and one whose
        // stack starts 2^32 bytes beyond another's (same low word).
        let far = 0x1_0000_0000u64.min((slots.range.end - slots.range.start) / 2 / slots.span * slots.span);
        let firsts = [slots.range.start, slots.range.start + far, slots.range.end - slots.span];
        let mut opened = 0;
        for first in firsts {
            let mut near = vec![0, 4096, slots.stack_offset.saturating_sub(4096), slots.stack_offset];
            near.extend([slots.stack_offset + 4096, slots.span]);
            near.sort_unstable();
            near.dedup();
            for at in near {
                let mut lens =
                    vec![4096, stack_len - 4096, stack_len, stack_len + 4096, slots.span, 0x1_0000_0000 + stack_len];
                lens.sort_unstable();
                lens.dedup();
                for len in lens {
                    for prot in [0, libc::PROT_READ as u64, libc::PROT_WRITE as u64, rw, rw | 0x1_0000_0000] {
                        let addr = first + at;
                        let args = [addr, len, prot, 0, 0, 0];
                        let expected = mprotect_expected(p, addr, len, prot);
                        opened += usize::from(expected == RET_ALLOW && overlaps(&[slots.range], addr, len));
                        assert_eq!(
                            run(prog, libc::SYS_mprotect, args),
                            expected,
                            "mprotect({addr:#x}, {len:#x}, {prot:#x})"
                        );
                    }
                }
            }
        }
        assert!(opened >= firsts.len(), "openings were exercised ({opened})");
        for first in firsts {
            let args = [first + slots.stack_offset, stack_len, rw, 0, 0, 0];
            assert_eq!(run(prog, libc::SYS_mprotect, args), RET_ALLOW, "the opening of the slot at {first:#x}");
        }
        // Closing a slot, or the whole arena, is denied.
        assert_eq!(run(prog, libc::SYS_mprotect, [firsts[0] + slots.stack_offset, stack_len, 0, 0, 0, 0]), RET_EPERM);
        let whole = slots.range.end - slots.range.start;
        assert_eq!(run(prog, libc::SYS_mprotect, [slots.range.start, whole, 0, 0, 0, 0]), RET_EPERM);
    }

    #[test]
    fn out_of_range_arguments_moves_to_a_chosen_address_other_abis_and_sigreturn_are_denied() {
        let prog = program(&policy());
        assert_eq!(run(&prog, libc::SYS_munmap, [1 << 60, 4096, 0, 0, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_munmap, [4096, u64::MAX - 4096, 0, 0, 0, 0]), RET_EPERM);
        let fixed = [4096, 4096, 4096, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, 0x5555_0000_0000, 0];
        assert_eq!(run(&prog, libc::SYS_mremap, fixed), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_munmap | X32_BIT as i64, [4096, 4096, 0, 0, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_rt_sigreturn, [0; 6]), RET_EPERM);
        // No new filters, by either call; other prctl options stay allowed.
        assert_eq!(run(&prog, libc::SYS_seccomp, [1, 1, 0x7000_1000, 0, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_prctl, [libc::PR_SET_SECCOMP as u64, 2, 0x7000_1000, 0, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_prctl, [libc::PR_SET_NAME as u64, 0x7000_1000, 0, 0, 0, 0]), RET_ALLOW);
        // New signal handlers are denied, queries allowed.
        assert_eq!(run(&prog, libc::SYS_rt_sigaction, [11, 0x7000_1000, 0, 8, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_rt_sigaction, [11, 0x1_0000_0000, 0, 8, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_rt_sigaction, [11, 0, 0x7000_1000, 8, 0, 0]), RET_ALLOW);
        // Tasks the fault supervisor would not trace are denied.
        assert_eq!(run(&prog, libc::SYS_clone3, [0x7000_1000, 88, 0, 0, 0, 0]), RET_ENOSYS);
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(run(&prog, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(run(&prog, libc::SYS_clone, [thread | libc::CLONE_UNTRACED as u64, 0, 0, 0, 0, 0]), RET_EPERM);
        // A clone is judged as a clone, whatever its flags' value: flags
        // equal to `munmap`'s number, with arguments over a protected
        // range, are no `munmap`.
        let p = policy();
        let prog = program(&p);
        let inside = p.protected[0].start;
        assert_eq!(run(&prog, libc::SYS_munmap, [inside, 4096, 0, 0, 0, 0]), RET_EPERM);
        assert_eq!(run(&prog, libc::SYS_clone, [libc::SYS_munmap as u64, inside, 0, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn the_filter_stops_a_real_munmap_and_lets_others_through() {
        // In a child process, so the filter does not stay on the test runner.
        // SAFETY: the child only makes system calls and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let page = 4096;
            let map_pages = |n: usize| {
                // SAFETY: a fresh private anonymous mapping.
                unsafe {
                    libc::mmap(core::ptr::null_mut(), n * page, 3, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
                        as u64
                }
            };
            let map = || map_pages(1);
            let (guarded, free) = (map(), map());
            // An arena of two 8 KiB slots, each a page of guard below a
            // page of stack, at a multiple of 8 KiB.
            let wide = map_pages(6);
            let arena = wide.next_multiple_of(2 * page as u64);
            let prog = program(&Policy {
                protected: vec![Range { start: guarded, end: guarded + page as u64 }],
                slots: vec![SlotArena {
                    range: Range { start: arena, end: arena + 4 * page as u64 },
                    span: 2 * page as u64,
                    stack_offset: page as u64,
                }],
            });
            let protect = |addr: u64, prot: i32| {
                // SAFETY: pages of this child's own mapping `wide`, which
                // nothing in the child uses.
                unsafe { libc::mprotect(addr as *mut libc::c_void, page, prot) == 0 }
            };
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: PR_SET_NO_NEW_PRIVS has no memory effects.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let ok = seccompiler::apply_filter(&prog).is_ok()
                // SAFETY: both pages are this child's own mappings.
                && unsafe { libc::munmap(guarded as *mut libc::c_void, page) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
                // SAFETY: as above.
                && unsafe { libc::munmap(free as *mut libc::c_void, page) } == 0
                // A slot's stack opens; closing it, and opening a guard, fail.
                && protect(arena + page as u64, rw)
                && !protect(arena + page as u64, libc::PROT_NONE)
                && !protect(arena, rw)
                && protect(arena + 3 * page as u64, rw);
            // SAFETY: ends the child without running the test harness's code.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }
}
