//! Seeded bugs in Rust code that may use `unsafe`, run only on request
//! (`--flexos-selftest rust-BUG` of the SQLite image): each shows that a
//! hardening option of this component catches what it promises
//! (docs/hardening.md). Each returns a value when nothing catches its bug
//! (the negative control).

use core::hint::black_box;

/// Runs seeded bug `bug` (`heap-overflow`, `use-after-free`,
/// `stack-overflow`, `bad-indirect-call`, `signed-overflow`, `assertion`),
/// or the check `foreign-change` (`file::foreign_change_check`); `None`
/// for an unknown name.
pub fn run(bug: &str) -> Option<i64> {
    Some(match bug {
        "heap-overflow" => heap_overflow(),
        "use-after-free" => use_after_free(),
        "stack-overflow" => stack_overflow(),
        "bad-indirect-call" => bad_indirect_call(),
        "signed-overflow" => signed_overflow(),
        "assertion" => assertion(),
        // Not a bug: the C library's knowledge meets a change it did not make.
        "foreign-change" => crate::file::foreign_change_check(),
        _ => return None,
    })
}

/// Reads the byte just past a 24-byte heap block.
#[inline(never)]
fn heap_overflow() -> i64 {
    let v: alloc::vec::Vec<u8> = alloc::vec![1; 24];
    // SAFETY: none: this is the seeded bug (one byte past the block).
    i64::from(unsafe { core::ptr::read_volatile(v.as_ptr().add(black_box(24))) })
}

/// Reads a heap block after freeing it.
#[inline(never)]
fn use_after_free() -> i64 {
    let b = alloc::boxed::Box::new([7u8; 32]);
    let p = b.as_ptr();
    drop(black_box(b));
    // SAFETY: none: this is the seeded bug (the block was freed).
    i64::from(unsafe { core::ptr::read_volatile(p.add(3)) })
}

/// Writes one byte past a 16-byte stack buffer (the index is read through
/// a volatile load, so neither the compiler nor a spilled temporary comes
/// between the buffer and what lies above it).
#[inline(never)]
fn stack_overflow() -> i64 {
    let mut buf = [0u8; 16];
    // SAFETY: a read of a local constant.
    let i = unsafe { core::ptr::read_volatile(&16usize) };
    let p = buf.as_mut_ptr();
    // SAFETY: none: this is the seeded bug (index 16 of 16 bytes).
    unsafe { core::ptr::write_volatile(p.add(i), b'A') };
    // SAFETY: inside the buffer.
    i64::from(unsafe { core::ptr::read_volatile(p.add(15)) })
}

#[inline(never)]
fn add_one(x: u32) -> u32 {
    x + 1
}

/// Calls `add_one` through a pointer of another function type.
#[inline(never)]
fn bad_indirect_call() -> i64 {
    let f: fn(u32) -> u32 = add_one;
    // SAFETY: none: this is the seeded bug (a call through the wrong type).
    let g: fn(u64, u64) -> u64 = unsafe { core::mem::transmute::<usize, fn(u64, u64) -> u64>(black_box(f as usize)) };
    black_box(g)(41, 2) as u32 as i64
}

/// `i32::MAX` plus one.
#[inline(never)]
#[allow(clippy::arithmetic_side_effects)]
fn signed_overflow() -> i64 {
    let x: i32 = black_box(i32::MAX);
    i64::from(x + black_box(1))
}

/// A debug assertion that does not hold.
#[inline(never)]
fn assertion() -> i64 {
    let x: i64 = black_box(1);
    debug_assert!(x == 0);
    x
}
