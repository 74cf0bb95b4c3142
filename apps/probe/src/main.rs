//! The probe image: drives the `probe` component across its gate.
//!
//! * `flexos-probe behave`: the positive test; well-formed calls, nested
//!   calls and callbacks across the domains, shared buffers.
//! * `flexos-probe bench BATCH`: round trip of an empty call into `probe`,
//!   101 samples of BATCH calls; prints `roundtrip_cycles: MIN MEDIAN` per
//!   call (timer overhead subtracted) and `cycles_per_second: F`.
//! * `flexos-probe idle MS`: one call into `probe` (which starts the
//!   compartment's partner thread or vCPU), then MS milliseconds without
//!   calls; prints `idle_cpu_ticks: N`, the CPU time (clock ticks) that the
//!   threads serving `probe` used meanwhile: an idle compartment must sleep,
//!   not spin.
//! * `flexos-probe attack NAME`: makes `probe` attack the default
//!   compartment (see [`ATTACKS`]); prints what happened. An attack that
//!   the mechanism stops either kills the attacker's domain (the image
//!   reports it and exits with status 70) or is refused (the image prints
//!   `refused: REASON` and goes on serving).
#![forbid(unsafe_code)]

use flexos_gate::abi::{Whence, open_flags};
use flexos_gate::layout::component::{PROBE, SCHED, VFS};
use flexos_gate::{SharedBuf, gate, layout, with_state};
use flexos_platform::clock;

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

/// The image's own code: the probe application, in the default compartment
/// (it is no placeable component, so its id lies outside the component table).
const FLEXOS_COMPONENT: layout::Component =
    layout::Component { id: layout::component::ALL.len(), name: "probe-app", compartment: 0, hardening: &[] };

/// The attacks `attack NAME` knows.
const ATTACKS: &[&str] = &[
    "read-heap",
    "write-heap",
    "read-stack",
    "write-stack",
    "unexported",
    "private-pointer",
    "bad-length",
    "malformed",
    "syscall",
    "invalid-instruction",
    "gadget",
    "scribble-shared",
    "disturb-others",
    "double-fetch",
];

fn main() {
    flexos_platform::fault::install(layout::COMPARTMENT_NAMES);
    flexos_gate::boot(&[
        flexos_sched::FLEXOS_EXPORTS,
        flexos_time::FLEXOS_EXPORTS,
        flexos_vfs::FLEXOS_EXPORTS,
        flexos_ramfs::FLEXOS_EXPORTS,
        flexos_probe::FLEXOS_EXPORTS,
    ]);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["behave"] => behave(),
        ["bench", n] => bench(n.parse().unwrap_or_else(|_| usage())),
        ["idle", ms] => idle(ms.parse().unwrap_or_else(|_| usage())),
        ["attack", name] if ATTACKS.contains(name) => attack(name),
        ["bench-local", batch] => bench_local(batch.parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    }
}

fn usage() -> ! {
    let here: Vec<&str> = ATTACKS.iter().copied().filter(|a| *a != "gadget" || probe_is_mpk()).collect();
    eprintln!("usage: flexos-probe behave | bench N | bench-local N | idle MS | attack {}", here.join("|"));
    if !probe_is_mpk() {
        eprintln!("  (attack gadget needs probe in an mpk compartment)");
    }
    std::process::exit(2)
}

fn behave() {
    let mut x = 0u64;
    for _ in 0..1000 {
        x = gate!(flexos_probe::echo(x));
    }
    println!("echo: {x}");
    let threads = gate!(flexos_probe::nested(1000));
    println!("nested: {threads} thread(s)");
    let path = SharedBuf::from_slice(b"/hello");
    let fd = gate!(flexos_vfs::open(path.shared(), open_flags::O_CREAT | open_flags::O_RDWR, 0o644)).expect("open");
    let data = SharedBuf::from_slice(b"behaved");
    let written = gate!(flexos_vfs::write(fd, data.shared())).expect("write");
    println!("wrote: {written}");
    gate!(flexos_vfs::lseek(fd, 0, Whence::Set)).expect("lseek");
    let mut back = SharedBuf::zeroed(7);
    gate!(flexos_vfs::read(fd, back.shared_mut())).expect("read");
    println!("read back: {}", String::from_utf8_lossy(&back.to_vec(7)));
    let listed = gate!(flexos_probe::list_root());
    println!("root entries: {}, hello among them: {}", listed / 10, if listed % 10 == 1 { "yes" } else { "no" });
    // A callee that blocks stalls only its own chain of calls: while one
    // host thread sleeps inside a call (probe -> time -> sched), another
    // host thread is served by the same compartments.
    let slept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleeper = {
        let slept = slept.clone();
        std::thread::spawn(move || {
            gate!(flexos_probe::nested(500_000_000));
            slept.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut y = 0u64;
    for _ in 0..100 {
        y = gate!(flexos_probe::echo(y));
    }
    let overtaken = !slept.load(std::sync::atomic::Ordering::SeqCst);
    sleeper.join().expect("the sleeping thread");
    println!("served while another call slept: {} ({y} echoes)", if overtaken { "yes" } else { "no" });
    let trip = match gate!(flexos_probe::shared_local_trip()) {
        1 => "data shadow stack",
        0 => "shared heap",
        _ => "LOST",
    };
    println!("shared locals across a gate: {trip}");
    println!("behaved: ok");
}

fn bench(batch: u64) {
    let timer = clock::timer_overhead();
    let samples = clock::sample_cycles(101, batch, timer, |_| gate!(flexos_probe::noop()));
    let (min, median) = clock::min_median(samples);
    println!("roundtrip_cycles: {min:.1} {median:.1}");
    println!("cycles_per_second: {:.0}", clock::cycles_per_second(20));
}

/// The cost of declaring shared locals in the `probe` compartment (under
/// its sharing strategy); prints `shared_local_cycles: N MIN MEDIAN` for N = 1, 2, 3.
fn bench_local(batch: u64) {
    for n in 1..=3 {
        let (min, median) = gate!(flexos_probe::shared_locals(n, batch));
        println!("shared_local_cycles: {n} {min:.1} {median:.1}");
    }
}

/// CPU clock ticks used so far by the threads that serve the `probe`
/// compartment: the threads of its process (`proc`) or its vCPU threads (`kvm`).
fn probe_cpu_ticks() -> u64 {
    let vcpu_prefix = format!("vcpu0-{}", layout::COMPARTMENTS[PROBE.compartment].name);
    let mut pids = flexos_platform::process::children();
    pids.push(std::process::id() as i32);
    let mut ticks = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let serves_probe = pid != std::process::id() as i32 || comm.starts_with(&vcpu_prefix);
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            if serves_probe && fields.len() > 12 {
                ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
            }
        }
    }
    ticks
}

fn idle(ms: u64) {
    gate!(flexos_probe::echo(1));
    // Let the spinning phase after the call end, then measure.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before = probe_cpu_ticks();
    std::thread::sleep(std::time::Duration::from_millis(ms));
    println!("idle_cpu_ticks: {}", probe_cpu_ticks() - before);
    println!("still serving: {}", gate!(flexos_probe::echo(41)));
}

/// Reports that an attack went through (the test fails on this line).
fn breached(what: String) -> ! {
    println!("BREACHED: {what}");
    std::process::exit(1)
}

fn attack(name: &str) {
    let secret = Box::new(0x5ec2e7_u64);
    let heap_addr = &*secret as *const u64 as u64;
    let on_stack = std::hint::black_box(0x57ac4_u64);
    let stack_addr = &on_stack as *const u64 as u64;
    match name {
        "read-heap" => {
            println!("target: {heap_addr:#x}");
            let v = gate!(flexos_probe::attack_read(heap_addr));
            breached(format!("read {v:#x} from the default compartment's heap"))
        }
        "write-heap" => {
            println!("target: {heap_addr:#x}");
            gate!(flexos_probe::attack_write(heap_addr, 0xbad));
            breached(format!("wrote the heap; the secret is now {:#x}", *secret))
        }
        "read-stack" => {
            println!("target: {stack_addr:#x}");
            let v = gate!(flexos_probe::attack_read(stack_addr));
            breached(format!("read {v:#x} from a thread's stack"))
        }
        "write-stack" => {
            println!("target: {stack_addr:#x}");
            gate!(flexos_probe::attack_write(stack_addr, 0xbad));
            breached(format!("wrote a thread's stack; the value is now {:#x}", std::hint::black_box(on_stack)))
        }
        "unexported" if probe_is_mpk() => {
            // Keys do not protect code: the attacker calls a function of main
            // that is no entry point. It runs with the attacker's rights, so
            // the state of main it reads must be out of reach.
            with_state(FLEXOS_COMPONENT, |s: &mut u64| *s = 0x5ec2e7);
            println!("target: main's state");
            let code = main_internal as extern "C" fn(u64) -> u64 as usize as u64;
            let v = gate!(flexos_probe::attack_call(code, 0));
            breached(format!("ran main's internal code on main's state: {v:#x}"))
        }
        "private-pointer" if probe_is_mpk() => {
            // vfs::write(fd, data) with `data` forged to point at the secret.
            let path = SharedBuf::from_slice(b"/leak");
            let fd = gate!(flexos_vfs::open(path.shared(), open_flags::O_CREAT | open_flags::O_RDWR, 0o644)).unwrap();
            println!("target: {heap_addr:#x}");
            let n = gate!(flexos_probe::attack_forged_write(fd, heap_addr, 8));
            breached(format!("vfs::write accepted a handle into main's heap ({n})"))
        }
        "gadget" if probe_is_mpk() => {
            println!("target: {heap_addr:#x}");
            let v = gate!(flexos_probe::attack_gadget(heap_addr));
            breached(format!("a gate's wrpkru gave the attacker every key: read {v:#x}"))
        }
        "unexported" => {
            // An entry index beyond sched's table, and an entry of a component that is not in "main".
            let none = SharedBuf::zeroed(0);
            let to_main = PROBE_TARGET;
            let code = gate!(flexos_probe::attack_frame(to_main, SCHED.id as u32, 9999, 0, none.shared()));
            report("unknown entry of sched", code);
            let code = gate!(flexos_probe::attack_frame(to_main, PROBE.id as u32, 0, 0, none.shared()));
            report("entry of a component outside main", code);
            let code = gate!(flexos_probe::attack_frame(to_main, 999, 0, 0, none.shared()));
            report("unknown component", code);
            still_serving();
        }
        "private-pointer" => {
            // vfs::write(fd, data) with `data` forged to point at the secret in main's private heap.
            let path = SharedBuf::from_slice(b"/leak");
            let fd = gate!(flexos_vfs::open(path.shared(), open_flags::O_CREAT | open_flags::O_RDWR, 0o644)).unwrap();
            let mut args = Vec::new();
            args.extend_from_slice(&fd.to_le_bytes());
            args.extend_from_slice(&heap_addr.to_le_bytes());
            args.extend_from_slice(&8u64.to_le_bytes());
            let frame = SharedBuf::from_slice(&args);
            let entry = flexos_vfs::write::INDEX;
            let code = gate!(flexos_probe::attack_frame(
                PROBE_TARGET,
                VFS.id as u32,
                entry,
                args.len() as u32,
                frame.shared()
            ));
            report("vfs::write with a handle into main's heap", code);
            let size = gate!(flexos_vfs::fstat(fd)).unwrap().size;
            println!("leaked: {size} bytes");
            if size != 0 {
                breached("the secret was written to a file".into());
            }
            still_serving();
        }
        "bad-length" => {
            let frame = SharedBuf::zeroed(16);
            let entry = flexos_sched::thread_count::INDEX;
            let code = gate!(flexos_probe::attack_frame(PROBE_TARGET, SCHED.id as u32, entry, 5000, frame.shared()));
            report("a length beyond the frame", code);
            let code = gate!(flexos_probe::attack_frame(PROBE_TARGET, SCHED.id as u32, entry, 16, frame.shared()));
            report("a length beyond the arguments", code);
            still_serving();
        }
        "malformed" => {
            // lseek(fd, offset, whence) with whence = 7 (no such value), and close(fd) with 2 of its 4 bytes.
            let mut args = Vec::new();
            args.extend_from_slice(&3i32.to_le_bytes());
            args.extend_from_slice(&0i64.to_le_bytes());
            args.push(7);
            let frame = SharedBuf::from_slice(&args);
            let entry = flexos_vfs::lseek::INDEX;
            let code = gate!(flexos_probe::attack_frame(
                PROBE_TARGET,
                VFS.id as u32,
                entry,
                args.len() as u32,
                frame.shared()
            ));
            report("lseek with an invalid whence", code);
            let entry = flexos_vfs::close::INDEX;
            let code = gate!(flexos_probe::attack_frame(PROBE_TARGET, VFS.id as u32, entry, 2, frame.shared()));
            report("close with a truncated argument", code);
            still_serving();
        }
        "invalid-instruction" => {
            gate!(flexos_probe::attack_invalid_instruction());
            breached("executed an invalid instruction without being stopped".into())
        }
        "syscall" => {
            let fd = gate!(flexos_probe::attack_syscall());
            breached(format!("opened a host file (descriptor {fd})"))
        }
        "scribble-shared" => scribble_shared(),
        "disturb-others" => disturb_others(),
        "double-fetch" => double_fetch(),
        "gadget" => {
            let mechanism = layout::COMPARTMENTS[PROBE.compartment].mechanism;
            eprintln!(
                "flexos-probe: attack gadget is for mpk compartments only (it jumps to a gate's wrpkru instruction); \
                 probe runs in a {} compartment here: use configs/probe-mpk-dss.toml",
                format!("{mechanism:?}").to_lowercase()
            );
            std::process::exit(2)
        }
        _ => usage(),
    }
}

/// How long the concurrent attacks run.
const ATTACK_MS: u64 = 1000;

/// How far clock's answer may lie outside main's readings around the call.
const CLOCK_SLACK_NS: u64 = 100_000_000;

/// Calls from main to the clock compartment, on a host thread of their
/// own, until `stop`: each answer must lie between the clock readings
/// taken before and after the call (give or take [`CLOCK_SLACK_NS`]). Each round also allocates and frees
/// shared and private memory (the allocators' metadata must stay intact).
/// Returns (calls, wrong answers).
fn clock_calls_until(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    std::thread::spawn(move || {
        let (mut calls, mut wrong) = (0u64, 0u64);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let before = clock::monotonic_ns();
            let t = gate!(flexos_time::monotonic_ns());
            let after = clock::monotonic_ns();
            // A VM's clock runs on the time-stamp counter at a measured
            // rate, so it may be off by a few microseconds (and drift
            // slowly); an answer the attacker forged is off by far more.
            if t < before.saturating_sub(CLOCK_SLACK_NS) || t > after + CLOCK_SLACK_NS {
                wrong += 1;
                if wrong == 1 {
                    println!("clock answered {t:#x}, not between {before:#x} and {after:#x}");
                }
            }
            let shared = SharedBuf::zeroed(16 + (calls as usize % 64) * 64);
            let private = vec![calls; 1 + calls as usize % 32];
            assert!(private.iter().all(|&v| v == calls), "main's heap changed under it");
            drop((shared, private));
            calls += 1;
        }
        (calls, wrong)
    })
}

/// What the host checks after an attack on shared memory: main's heap
/// canary and its component state, and the calls between main and clock.
struct Witness {
    canary: Box<u64>,
    value: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clock: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Witness {
    fn start() -> Witness {
        let value = clock::monotonic_ns() ^ 0x5ec2_e7c0_ffee;
        with_state(FLEXOS_COMPONENT, |s: &mut u64| *s = value);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Let the clock's chain exist before the attack starts.
        gate!(flexos_time::monotonic_ns());
        let clock = Some(clock_calls_until(stop.clone()));
        Witness { canary: Box::new(value), value, stop, clock }
    }

    /// Stops the clock calls; returns what changed that must not have, and the number of correct calls.
    fn finish(mut self) -> (Vec<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut changed = Vec::new();
        let mut good = 0;
        match self.clock.take().expect("started").join() {
            Ok((calls, 0)) => good = calls,
            Ok((calls, wrong)) => {
                changed.push(format!("{wrong} of {calls} calls from main to clock got a wrong answer"))
            }
            Err(_) => changed.push("a call from main to clock failed".into()),
        }
        if *self.canary != self.value {
            changed.push(format!("main's heap canary is now {:#x}", *self.canary));
        }
        let state = with_state(FLEXOS_COMPONENT, |s: &mut u64| *s);
        if state != self.value {
            changed.push(format!("main's component state is now {state:#x}"));
        }
        (changed, good)
    }
}

/// Prints the attack's one-line verdict and ends the image (status 1 if it escaped).
fn verdict(name: &str, changed: Vec<String>, how: String) -> ! {
    if changed.is_empty() {
        println!("attack {name}: stopped ({how})");
        std::process::exit(0)
    }
    println!("attack {name}: ESCAPED ({})", changed.join("; "));
    std::process::exit(1)
}

/// `scribble-shared`: the attacker overwrites all shared memory it can
/// write, repeatedly, while main keeps calling clock and allocating.
fn scribble_shared() {
    let witness = Witness::start();
    let attacker = std::thread::spawn(|| gate!(flexos_probe::attack_scribble(12)));
    let attack = attacker.join();
    let (changed, good) = witness.finish();
    let outcome = match attack {
        Ok(bytes) => format!("it wrote {} MiB", bytes >> 20),
        Err(_) => "its call failed".into(),
    };
    verdict(
        "scribble-shared",
        changed,
        format!("{outcome}; main's heap canary and state intact; {good} calls from main to clock answered correctly"),
    )
}

/// `disturb-others`: the attacker answers, in clock's place, every call to
/// clock it can find in the control area, while main keeps calling clock.
fn disturb_others() {
    let witness = Witness::start();
    let victim = layout::component::TIME.compartment as u32;
    let forged = gate!(flexos_probe::attack_disturb(victim, ATTACK_MS));
    let (changed, good) = witness.finish();
    verdict(
        "disturb-others",
        changed,
        format!("it answered {forged} frames it could reach; {good} calls from main to clock answered correctly"),
    )
}

/// `double-fetch`: main asks ramfs to create the file named by a shared
/// buffer ("ab") while the attacker flips the name to "a/", which ramfs
/// refuses; ramfs must never create an entry named "a/" (a name it checked
/// and then read again).
fn double_fetch() {
    use flexos_gate::abi::{Errno, FileKind};
    let (tx, rx) = std::sync::mpsc::channel();
    let victim = std::thread::spawn(move || {
        let root = gate!(flexos_ramfs::root());
        let mut name = SharedBuf::from_slice(b"ab");
        let stable = SharedBuf::from_slice(b"ab");
        let slash = SharedBuf::from_slice(b"a/");
        tx.send(name.as_mut_ptr() as u64).expect("main waits");
        let deadline = clock::monotonic_ns() + ATTACK_MS * 1_000_000;
        let (mut created, mut refused, mut fooled) = (0u64, 0u64, 0u64);
        while clock::monotonic_ns() < deadline {
            match gate!(flexos_ramfs::create(root, name.shared(), FileKind::File)) {
                Ok(_) => created += 1,
                Err(Errno::EINVAL) => refused += 1,
                Err(e) => panic!("ramfs::create: {e:?}"),
            }
            if gate!(flexos_ramfs::lookup(root, slash.shared())).is_ok() {
                // The entry cannot be removed (remove refuses the name): the first one ends the attack.
                fooled += 1;
                created -= 1;
                break;
            }
            let _ = gate!(flexos_ramfs::remove(root, stable.shared(), FileKind::File));
        }
        (created, refused, fooled)
    });
    let addr = rx.recv().expect("the victim starts");
    let flips = gate!(flexos_probe::attack_flip(addr, 2, u64::from(u16::from_le_bytes(*b"a/")), ATTACK_MS));
    let mut changed = Vec::new();
    let (created, refused, fooled) = victim.join().unwrap_or_else(|_| {
        changed.push("ramfs failed".into());
        (0, 0, 0)
    });
    if fooled > 0 {
        changed.push(format!("ramfs created {fooled} entries named \"a/\", a name it refuses"));
    }
    verdict(
        "double-fetch",
        changed,
        format!(
            "{flips} flips of the name during {} creates: {created} created \"ab\", {refused} refused \"a/\", none created \"a/\"",
            created + refused
        ),
    )
}

/// Whether the attacker is an `mpk` compartment (in this address space:
/// its attacks are direct calls, jumps and forged handles, not forged frames).
fn probe_is_mpk() -> bool {
    layout::COMPARTMENTS[PROBE.compartment].mechanism == layout::Mechanism::Mpk
}

/// A function of the image's driver that is no entry point: it reads the
/// driver's state (in main's heap). Attacked by `unexported` under `mpk`.
extern "C" fn main_internal(_: u64) -> u64 {
    with_state(FLEXOS_COMPONENT, |s: &mut u64| *s)
}

/// The compartment the attacks are aimed at: the default one.
const PROBE_TARGET: u32 = 0;

fn report(what: &str, code: u32) {
    if code == 0 {
        breached(format!("{what}: the call was served"));
    }
    println!("refused: {what}: {}", flexos_probe::refusal_name(code));
}

fn still_serving() {
    let v = gate!(flexos_probe::echo(41));
    println!("still serving: {v}");
}
