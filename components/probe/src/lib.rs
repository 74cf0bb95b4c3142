//! A test component. Its well-behaved entries are what the gate benchmark
//! and the positive tests call (`noop`, `echo`, `nested`). Its `attack_*`
//! entries behave as a *compromised* compartment would: they read and
//! write memory they were given the address of, forge call frames and
//! make forbidden system calls, so that the tests can show that each
//! mechanism stops them and reports it.
//!
//! This is the one component that uses `unsafe`: it models code that an
//! attacker controls, which is exactly what the mechanisms must contain.
//! It is linked only into the `probe` test image.

use flexos_gate::SharedRef;
use flexos_gate::export::Refusal;
use flexos_gate::remote::{self, FRAME_DATA, Header};

flexos_gate::component!(PROBE);
flexos_gate::exports!(
    noop(),
    echo(_),
    nested(_),
    attack_read(_),
    attack_write(_, _),
    attack_frame(_, _, _, _, _),
    attack_syscall(),
    attack_invalid_instruction(),
    shared_locals(_, _),
    shared_local_trip(),
    attack_call(_, _),
    attack_forged_write(_, _, _),
    attack_gadget(_),
    attack_scribble(_),
    attack_disturb(_, _),
    attack_flip(_, _, _, _),
    list_root()
);

/// Does nothing: the empty call of the gate benchmark.
pub fn noop() {}

/// Returns `x + 1`.
pub fn echo(x: u64) -> u64 {
    x.wrapping_add(1)
}

/// Calls back through the gates: sleeps `ns` through `time` (which calls
/// `sched`) and returns the number of threads `sched` reports, so a call
/// from the default compartment nests as deep as the layout places them apart.
pub fn nested(ns: u64) -> u64 {
    flexos_gate::gate!(flexos_time::sleep_ns(ns));
    flexos_gate::gate!(flexos_sched::thread_count()) as u64
}

/// Attack: reads the 8 bytes at `addr` (another compartment's heap or stack).
pub fn attack_read(addr: u64) -> u64 {
    // SAFETY: none; this is the attack. A mechanism that isolates makes it fault.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Attack: writes `value` to the 8 bytes at `addr`.
pub fn attack_write(addr: u64, value: u64) {
    // SAFETY: none; this is the attack.
    unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
}

/// Attack: sends a hand-made call frame (compartment `to`, component,
/// entry, length field, argument bytes `args`) to another domain and
/// returns 0 if it was served, else the refusal's code.
pub fn attack_frame(to: u32, component: u32, entry: u32, len: u32, args: SharedRef<'_>) -> u32 {
    let header = Header { from: FLEXOS_COMPONENT.compartment as u32, to, component, entry, len };
    let mut result = [core::mem::MaybeUninit::uninit(); FRAME_DATA];
    match remote::call_frame(header, &args.to_vec(), &mut result) {
        Ok(_) => 0,
        Err(r) => r as u32,
    }
}

/// Attack: opens a file of the host with the `syscall` instruction itself
/// (`openat`, number 257), a system call no compartment may make. Returns
/// the file descriptor if it was allowed.
pub fn attack_syscall() -> i64 {
    let path = c"/etc/hostname";
    let result: i64;
    // SAFETY: none needed for the process's memory: openat only reads the
    // path; the mechanism must stop the call before the kernel runs it.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") libc::SYS_openat => result, in("rdi") libc::AT_FDCWD as i64,
            in("rsi") path.as_ptr(), in("rdx") libc::O_RDONLY as i64, lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    result
}

/// Attack: executes an invalid instruction (`ud2`).
pub fn attack_invalid_instruction() {
    // SAFETY: none needed; `ud2` raises an invalid-opcode exception, which
    // the mechanism must report.
    unsafe { core::arch::asm!("ud2", options(nostack)) }
}

/// The cost of declaring `n` (1 to 3) shared locals of 64 bytes in this
/// compartment: (minimum, median) cycles over 101 samples of `batch`.
pub fn shared_locals(n: u32, batch: u64) -> (f64, f64) {
    use core::hint::black_box;
    use flexos_platform::clock;
    let timer = clock::timer_overhead();
    let samples = clock::sample_cycles(101, batch, timer, |_| match n {
        1 => {
            flexos_gate::shared_local!(a: 64);
            black_box(&mut a);
        }
        2 => {
            flexos_gate::shared_local!(a: 64, b: 64);
            black_box((&mut a, &mut b));
        }
        _ => {
            flexos_gate::shared_local!(a: 64, b: 64, c: 64);
            black_box((&mut a, &mut b, &mut c));
        }
    });
    clock::min_median(samples)
}

/// Passes a shared local across a gate: writes it to a file through `vfs`
/// and reads it back into another. Returns 1 if the locals were data
/// shadow stack mirrors, 0 if shared-heap allocations, and 2 if the bytes
/// did not come back.
pub fn shared_local_trip() -> u32 {
    use flexos_gate::abi::{Whence, open_flags};
    use flexos_gate::gate;
    flexos_gate::shared_local!(path: 6, out: 16, back: 16);
    path.write_at(0, b"/local");
    out.write_at(0, b"shadow-stack-ok!");
    let fd = gate!(flexos_vfs::open(path.shared(), open_flags::O_CREAT | open_flags::O_RDWR, 0o644)).expect("open");
    gate!(flexos_vfs::write(fd, out.shared())).expect("write");
    gate!(flexos_vfs::lseek(fd, 0, Whence::Set)).expect("lseek");
    gate!(flexos_vfs::read(fd, back.shared_mut())).expect("read");
    gate!(flexos_vfs::close(fd)).expect("close");
    if back.to_vec() != out.to_vec() {
        return 2;
    }
    u32::from(out.is_mirror() && back.is_mirror() && path.is_mirror())
}

/// Lists the root directory through `vfs` (a result of more than 256
/// bytes per call: under `mpk`, two trips of a stack-switching gate) and
/// returns how many entries it has and whether "hello" is among them:
/// `count * 10 + found`.
pub fn list_root() -> u64 {
    use flexos_gate::abi::open_flags::{O_DIRECTORY, O_RDONLY};
    use flexos_gate::gate;
    let root = flexos_gate::SharedBuf::from_slice(b"/");
    let fd = gate!(flexos_vfs::open(root.shared(), O_RDONLY | O_DIRECTORY, 0)).expect("open /");
    let (mut count, mut found) = (0u64, 0u64);
    while let Some(entry) = gate!(flexos_vfs::readdir(fd, count)).expect("readdir") {
        count += 1;
        found |= u64::from(entry.name() == b"hello");
    }
    gate!(flexos_vfs::close(fd)).expect("close");
    count * 10 + found
}

/// Attack (`mpk`): calls the code at `code`, a function of another
/// compartment that is not one of its entry points, with `arg`. Keys do not
/// protect code, so the call happens; the function then runs with this
/// compartment's rights, and touching its owner's data must fault.
pub fn attack_call(code: u64, arg: u64) -> u64 {
    // SAFETY: none; this is the attack. The address is a function of this
    // signature in the image (the image's driver passes it).
    let f: extern "C" fn(u64) -> u64 = unsafe { core::mem::transmute(code as usize) };
    f(arg)
}

/// Attack (`mpk`): passes `vfs::write` a handle forged to point at `len`
/// bytes at `addr` (another compartment's private memory), hoping vfs
/// copies them into a file this compartment can read. Returns what `write` returned.
pub fn attack_forged_write(fd: i32, addr: u64, len: u64) -> i64 {
    // SAFETY: none; this is the attack. The gate must refuse the handle.
    let forged = unsafe { SharedRef::forge(addr as *const u8, len as usize) };
    match flexos_gate::gate!(flexos_vfs::write(fd, forged)) {
        Ok(n) => n as i64,
        Err(e) => -(e.0 as i64),
    }
}

/// Attack (`mpk`): reuses a gate's `wrpkru` to get every key. Finds a gate
/// site whose value is this compartment's own PKRU (every gate into or out
/// of it has one), loads EAX with 0 (all keys allowed) and jumps to the
/// site's `wrpkru`, single-stepping (trap flag) until execution has left
/// the site's check; then it continues in [`gadget_landing`] with exactly
/// the rights the gadget produced, and reads the 8 bytes at `secret`.
/// Returns the value read (the gate's check must make that read fault).
pub fn attack_gadget(secret: u64) -> u64 {
    let own = flexos_platform::pkey::read();
    let Some(site) = flexos_gate::mpk::sites().into_iter().find(|s| s.pkru == own) else {
        panic!("no gate site with this compartment's rights {own:#x}")
    };
    gadget::run(site.address, secret)
}

/// The single-stepped jump into a gate (see [`attack_gadget`]).
mod gadget {
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// The `wrpkru` being attacked, where to land, and the landing's stack.
    static SITE: AtomicUsize = AtomicUsize::new(0);
    static LANDING_STACK: AtomicUsize = AtomicUsize::new(0);
    static SECRET: AtomicU64 = AtomicU64::new(0);
    static RESULT: AtomicU64 = AtomicU64::new(0);
    static STEPS: AtomicUsize = AtomicUsize::new(0);

    /// Runs the attack; returns what the landing read.
    pub fn run(site: usize, secret: u64) -> u64 {
        SITE.store(site, Ordering::SeqCst);
        SECRET.store(secret, Ordering::SeqCst);
        // SAFETY: none; this is the attack. A SIGTRAP handler on the
        // signal stack (the platform's, key 0) follows the single steps.
        unsafe {
            let mut action: libc::sigaction = core::mem::zeroed();
            action.sa_sigaction =
                on_trap as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigaction(libc::SIGTRAP, &action, core::ptr::null_mut());
            core::arch::asm!(
                "lea rax, [rip + 2f]",
                "push rax",
                "mov [{stack}], rsp",
                "xor eax, eax",
                "xor ecx, ecx",
                "xor edx, edx",
                "pushfq",
                "or qword ptr [rsp], 0x100",
                "popfq",
                "jmp {site}",
                "2:",
                stack = in(reg) LANDING_STACK.as_ptr(),
                site = in(reg) site,
                out("rax") _, out("rcx") _, out("rdx") _,
                clobber_abi("C"),
            );
        }
        RESULT.load(Ordering::SeqCst)
    }

    /// Where the attack continues once it has left the gate's check, with
    /// the rights the gate left in PKRU: reads the secret and returns to `run`.
    extern "C" fn landing() {
        let report = format!(
            "gadget: left the gate's check after {} single steps with PKRU {:#010x}\n",
            STEPS.load(Ordering::SeqCst),
            flexos_platform::pkey::read()
        );
        // SAFETY: writes the report's bytes to stderr (std's stderr lock
        // belongs to the image's driver, out of this compartment's reach).
        unsafe { libc::write(2, report.as_ptr().cast(), report.len()) };
        // SAFETY: none; this is the read the rights must stop.
        let v = unsafe { core::ptr::read_volatile(SECRET.load(Ordering::SeqCst) as *const u64) };
        RESULT.store(v, Ordering::SeqCst);
    }

    extern "C" fn on_trap(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
        // SAFETY: the kernel passes the interrupted context; the handler
        // edits its registers so that the thread resumes in `landing`.
        unsafe {
            let uc = &mut *(context as *mut libc::ucontext_t);
            let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize;
            let site = SITE.load(Ordering::SeqCst);
            // wrpkru (3 bytes), cmp eax, imm (5 bytes: 3D imm32, or 3: 83 F8 imm8), jne (2 bytes).
            let cmp_len = if *((site + 3) as *const u8) == 0x3d { 5 } else { 3 };
            let past_check = site + 3 + cmp_len + 2;
            let steps = STEPS.fetch_add(1, Ordering::SeqCst);
            if rip == past_check || steps > 64 {
                // Leave the gate: land with the current rights, return to `run`.
                uc.uc_mcontext.gregs[libc::REG_RIP as usize] = landing as extern "C" fn() as usize as i64;
                uc.uc_mcontext.gregs[libc::REG_RSP as usize] = LANDING_STACK.load(Ordering::SeqCst) as i64;
                uc.uc_mcontext.gregs[libc::REG_EFL as usize] &= !0x100;
            }
        }
    }
}

/// How much of each piece of shared memory the scribbling attacks write
/// (everything the gates and the allocator keep there lies in the first
/// megabytes; writing the whole 4 GiB span would only cost memory).
const SCRIBBLE_CAP: usize = 8 << 20;

/// What the attacker hopes another domain will call: it reports the
/// escape (naming the compartment that ran it) and ends the image.
extern "C" fn hijacked() -> ! {
    let who = flexos_gate::layout::COMPARTMENTS.get(flexos_platform::compartment::current()).map_or("?", |c| c.name);
    let report = format!("attack scribble-shared: ESCAPED (compartment {who:?} ran the attacker's code)\n");
    flexos_platform::console::write_out(report.as_bytes());
    flexos_platform::console::write_err(report.as_bytes());
    std::process::exit(1)
}

/// Attack `scribble-shared`: for `rounds` rounds, overwrites every byte of
/// shared memory this domain can write (the gates' control area, every
/// domain's part of the shared heap with whatever allocator metadata and
/// state tables lie there) with values chosen to hijack whoever trusts
/// them: the address of a "spray" page full of pointers to [`hijacked`]
/// (so a pointer loaded from shared memory leads to a vtable that calls
/// the attacker's code), those pointers themselves, and small integers
/// that look like call states and lengths. Returns the bytes written.
pub fn attack_scribble(rounds: u32) -> u64 {
    let pieces: Vec<(usize, usize, bool)> = flexos_alloc::writable_shared_pieces()
        .map(|(start, len, control)| (start, len.min(SCRIBBLE_CAP), control))
        .collect();
    let &(spray, _, _) = pieces.last().expect("shared memory exists");
    let code = hijacked as extern "C" fn() -> ! as usize as u64;
    let mut written = 0u64;
    for round in 0..rounds {
        // The spray page, written again each round (another domain may have changed it).
        for w in 0..4096 / 8 {
            // SAFETY: none; this is the attack (on shared memory this domain maps writable).
            unsafe { core::ptr::write_volatile((spray + w * 8) as *mut u64, code) };
        }
        let value = match round % 3 {
            0 => spray as u64,
            1 => code,
            _ => 0x0000_0001_0000_0003,
        };
        for &(start, len, _) in &pieces {
            let from = if start == spray { start + 4096 } else { start };
            for addr in (from..start + len).step_by(8) {
                // SAFETY: none; this is the attack.
                unsafe { core::ptr::write_volatile(addr as *mut u64, value) };
            }
            written += (start + len - from) as u64;
        }
    }
    written
}

/// Attack `disturb-others`: for `ms` milliseconds, looks through every
/// part of the gates' control area this domain can write for call frames
/// (a 64-byte line whose header says "request" for compartment `victim`
/// from a compartment other than this one) and answers them itself with
/// the value 0xbad, as if the victim had. Returns how many it forged.
pub fn attack_disturb(victim: u32, ms: u64) -> u64 {
    use flexos_platform::clock;
    const REQUEST: u32 = 1;
    const DONE: u32 = 3;
    let me = FLEXOS_COMPONENT.compartment as u32;
    let pieces: Vec<(usize, usize)> =
        flexos_alloc::writable_shared_pieces().filter(|p| p.2).map(|(s, l, _)| (s, l.min(SCRIBBLE_CAP))).collect();
    let deadline = clock::monotonic_ns() + ms * 1_000_000;
    let mut forged = 0;
    let word = |a: usize| a as *mut u32;
    while clock::monotonic_ns() < deadline {
        for &(start, len) in &pieces {
            for line in (start..start + len).step_by(64) {
                // SAFETY: none; this is the attack: reads and writes of the
                // control area, laid out as the gates lay out a frame
                // (state, to, from, component, entry, len, refusal, caller; data at 32).
                unsafe {
                    if core::ptr::read_volatile(word(line)) == REQUEST
                        && core::ptr::read_volatile(word(line + 4)) == victim
                        && core::ptr::read_volatile(word(line + 8)) != me
                    {
                        core::ptr::write_volatile((line + 32) as *mut u64, 0xbad);
                        core::ptr::write_volatile(word(line + 20), 8);
                        core::ptr::write_volatile(word(line), DONE);
                        forged += 1;
                    }
                }
            }
        }
    }
    forged
}

/// Attack `double-fetch`: for `ms` milliseconds, flips the `len` (at most
/// 8) bytes at `addr` (a shared buffer another compartment is using)
/// between what they held and `other`, as fast as it can. Returns the flips.
pub fn attack_flip(addr: u64, len: u32, other: u64, ms: u64) -> u64 {
    let len = (len as usize).min(8);
    let read = |a: usize| {
        let mut v = [0u8; 8];
        for (i, b) in v.iter_mut().enumerate().take(len) {
            // SAFETY: none; this is the attack.
            *b = unsafe { core::ptr::read_volatile((a + i) as *const u8) };
        }
        v
    };
    let original = read(addr as usize);
    let other = other.to_le_bytes();
    let deadline = flexos_platform::clock::monotonic_ns() + ms * 1_000_000;
    let mut flips = 0u64;
    while flexos_platform::clock::monotonic_ns() < deadline {
        for _ in 0..256 {
            let v = if flips.is_multiple_of(2) { &other } else { &original };
            for (i, &b) in v.iter().enumerate().take(len) {
                // SAFETY: none; this is the attack.
                unsafe { core::ptr::write_volatile((addr as usize + i) as *mut u8, b) };
            }
            flips += 1;
        }
    }
    flips
}

/// The refusal codes, for the image's reports.
pub fn refusal_name(code: u32) -> &'static str {
    Refusal::from_code(code).map_or("served", Refusal::describe)
}
