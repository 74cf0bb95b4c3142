//! The fault supervisor of an image with `mpk` compartments: a process of
//! its own that traces the image and decides where the kernel writes each
//! fault's signal frame.
//!
//! Since Linux 6.12 the kernel writes a signal frame with every protection
//! key enabled, below the stack pointer or on the signal stack, and both
//! are the interrupted thread's to choose: a compartment that points `rsp`
//! at another compartment's memory and faults would have the kernel write
//! its registers there (docs/mpk.md, "Signal frames"). The supervisor
//! stops every signal on its way to the image (`ptrace`'s signal-delivery
//! stop) and, for a fault signal, sets the thread's `rsp` to a slot of a
//! region the core reserved before letting the signal through; the fault
//! reporter's handlers run without a signal stack (`SA_ONSTACK` off), so
//! the frame lands in that slot. Every thread and child the image starts
//! later is traced too (`PTRACE_O_TRACECLONE`, `TRACEFORK`, `TRACEVFORK`);
//! a task that has executed another program keeps its own frames. If the
//! supervisor ends, the kernel kills the image (`PTRACE_O_EXITKILL`).
//!
//! It is forked when the image is still one thread, before the image's
//! seccomp filters (which deny `ptrace`) and before it closes `/proc`.

use crate::memory::Region;

/// Slots of the region where fault frames are written (a thread's slot is
/// its id modulo this; the first fault report ends the image, so two
/// threads sharing a slot at once does not matter).
const SLOTS: usize = 64;
/// Bytes of one slot: room for the frame (with the XSAVE area) and the
/// fault reporter's own stack.
const SLOT_LEN: usize = 64 * 1024;
/// `PTRACE_EVENT_STOP`: a group stop, or a new task's first stop.
const EVENT_STOP: libc::c_int = 128;

/// Starts the supervisor and has it attach to this process, which must
/// still be a single thread (checked). Returns why it could not (this process is
/// traced already, by a debugger say, or `ptrace` is refused); then the
/// image runs unsupervised.
pub fn start() -> Result<(), String> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    if threads != 1 {
        return Err(format!("the image runs {threads} threads already"));
    }
    let region = Region::reserve(SLOTS * SLOT_LEN).ok_or("cannot map the fault frames' region")?;
    // Never unmapped: it lives as long as the image (a `Region` has no `Drop`).
    let base = region.base.as_ptr() as usize;
    let (mut to_child, mut to_parent) = ([0; 2], [0; 2]);
    // SAFETY: pipe2 writes two descriptors into each array.
    let piped = unsafe {
        libc::pipe2(to_child.as_mut_ptr(), libc::O_CLOEXEC) == 0
            && libc::pipe2(to_parent.as_mut_ptr(), libc::O_CLOEXEC) == 0
    };
    if !piped {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: getpid has no preconditions.
    let image = unsafe { libc::getpid() };
    // SAFETY: this process is one thread (checked above), so the child may
    // run any code; it never returns from `supervise`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: the descriptors are this child's copies.
        unsafe {
            libc::close(to_child[1]);
            libc::close(to_parent[0]);
        }
        supervise(image, to_child[0], to_parent[1], base);
    }
    // SAFETY: the descriptors are this process's; prctl only records which
    // process may trace this one where Yama restricts tracing to ancestors.
    let answer = unsafe {
        libc::close(to_child[0]);
        libc::close(to_parent[1]);
        libc::prctl(libc::PR_SET_PTRACER, pid as libc::c_ulong, 0, 0, 0);
        let go = 1u8;
        libc::write(to_child[1], (&raw const go).cast(), 1);
        let mut errno = 0i32;
        let n = libc::read(to_parent[0], (&raw mut errno).cast(), 4);
        libc::close(to_child[1]);
        libc::close(to_parent[0]);
        if n == 4 { errno } else { libc::ECHILD }
    };
    if answer == 0 {
        Ok(())
    } else {
        // SAFETY: reaps the child, which has ended (it could not attach).
        unsafe { libc::waitpid(pid, core::ptr::null_mut(), 0) };
        Err(format!("ptrace: {}", std::io::Error::from_raw_os_error(answer)))
    }
}

/// The supervisor's life: attach to `image` when told to on `command`,
/// answer the outcome (an errno, 0 for success) on `answer`, then place
/// fault frames until every traced task has ended.
fn supervise(image: libc::pid_t, command: libc::c_int, answer: libc::c_int, base: usize) -> ! {
    // SAFETY: plain system calls on this process's own descriptors and the
    // image's id; the loop below never touches the image's memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        let mut go = 0u8;
        if libc::getppid() != image || libc::read(command, (&raw mut go).cast(), 1) != 1 {
            libc::_exit(0);
        }
        let options = libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_EXITKILL;
        let rc = libc::ptrace(libc::PTRACE_SEIZE, image, 0, options as libc::c_ulong);
        let errno: i32 =
            if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPERM) };
        libc::write(answer, (&raw const errno).cast(), 4);
        libc::close(command);
        libc::close(answer);
        if rc != 0 {
            libc::_exit(0);
        }
        place_frames(base)
    }
}

/// Tasks that executed another program (their memory is no longer the
/// image's): a fixed table, since the supervisor never allocates.
struct Executed {
    ids: [libc::pid_t; 256],
    len: usize,
}

impl Executed {
    fn contains(&self, pid: libc::pid_t) -> bool {
        self.ids[..self.len].contains(&pid)
    }

    fn add(&mut self, pid: libc::pid_t) {
        if !self.contains(pid) && self.len < self.ids.len() {
            self.ids[self.len] = pid;
            self.len += 1;
        }
    }
}

/// The supervisor's loop: resumes every stop of every traced task, moving
/// the stack pointer of a task that is about to take a fault signal into
/// its slot of the region at `base`. Ends when no traced task is left.
fn place_frames(base: usize) -> ! {
    let mut executed = Executed { ids: [0; 256], len: 0 };
    loop {
        let mut status = 0;
        // SAFETY: waits for any traced task; `status` is a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
        if pid < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // SAFETY: ends this process (ECHILD: every traced task has ended).
            unsafe { libc::_exit(0) }
        }
        if !libc::WIFSTOPPED(status) {
            continue; // an exit
        }
        let (sig, event) = (libc::WSTOPSIG(status), status >> 16);
        let deliver = match event {
            0 => {
                // The signals the fault reporter handles.
                if crate::fault::SIGNALS.contains(&sig) && !executed.contains(pid) {
                    move_stack(pid, base);
                }
                sig
            }
            EVENT_STOP => {
                if matches!(sig, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
                    // A group stop: the task stays stopped until SIGCONT.
                    // SAFETY: the task is in a ptrace stop.
                    unsafe { libc::ptrace(libc::PTRACE_LISTEN, pid, 0, 0) };
                    continue;
                }
                0
            }
            libc::PTRACE_EVENT_EXEC => {
                executed.add(pid);
                0
            }
            _ => 0, // a new thread or child: traced from now on
        };
        // SAFETY: the task is in a ptrace stop; the signal (or none) goes on.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0, deliver as libc::c_ulong) };
    }
}

/// Points task `pid`'s stack pointer at the top of its slot (16-byte
/// aligned, as at a call), so that the kernel writes the coming signal
/// frame there.
fn move_stack(pid: libc::pid_t, base: usize) {
    // SAFETY: the task is in a ptrace stop; GETREGS fills `regs`, SETREGS
    // writes it back with only the stack pointer changed.
    unsafe {
        let mut regs: libc::user_regs_struct = core::mem::zeroed();
        if libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &raw mut regs) != 0 {
            return;
        }
        let slot = pid as usize % SLOTS;
        regs.rsp = (base + (slot + 1) * SLOT_LEN - 64) as u64;
        libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &raw const regs);
    }
}
