//! The cooperative scheduler (Unikraft's `ukschedcoop`).
//!
//! Threads run on one host thread and switch only when they yield, sleep,
//! wait or exit. The code that first uses the scheduler becomes thread 0
//! (the main thread). When every thread waits for a deadline, the host
//! thread sleeps until the earliest one; when every thread waits for
//! something that can never come, the scheduler panics with "deadlock".
//!
//! Every function here is an entry point other components call through
//! gates; handles are plain integers. The scheduler's state lives in its
//! compartment's heap (`flexos_gate::with_state`), never in a static.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::rc::Rc;
use alloc::vec::Vec;
use flexos_gate::Callback;
use flexos_gate::abi::Errno;
use flexos_platform::clock;
use flexos_platform::compartment;
use flexos_platform::context::{self, Context};

flexos_gate::component!(SCHED);
flexos_gate::exports!(
    spawn(Callback) -> ThreadId,
    current() -> ThreadId,
    yield_now(),
    join(ThreadId) -> Result<(), Errno>,
    sleep_until(u64),
    thread_count() -> usize,
    switch_count() -> u64,
    wait_queue_create() -> u64,
    wait(u64) -> Result<(), Errno>,
    wake_one(u64) -> Result<bool, Errno>,
    wake_all(u64) -> Result<u32, Errno>,
    wait_queue_destroy(u64) -> Result<(), Errno>,
    mutex_create() -> u64,
    mutex_lock(u64) -> Result<(), Errno>,
    mutex_unlock(u64) -> Result<(), Errno>,
);

/// Stack size of a new thread.
pub const STACK_SIZE: usize = 256 * 1024;

/// A thread identifier; the main thread is 0.
pub type ThreadId = u64;

struct Thread {
    context: Option<Rc<Context>>,
    finished: bool,
    joiners: Vec<ThreadId>,
}

#[derive(Default)]
struct MutexState {
    owner: Option<ThreadId>,
    waiters: VecDeque<ThreadId>,
}

#[derive(Default)]
struct Scheduler {
    started: bool,
    current: ThreadId,
    next_id: u64,
    threads: BTreeMap<ThreadId, Thread>,
    ready: VecDeque<ThreadId>,
    sleeping: BTreeSet<(u64, ThreadId)>,
    wait_queues: BTreeMap<u64, VecDeque<ThreadId>>,
    mutexes: BTreeMap<u64, MutexState>,
    switches: u64,
}

impl Scheduler {
    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.next_id = 1;
            self.threads.insert(0, Thread { context: Some(Context::current()), finished: false, joiners: Vec::new() });
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn context(&self, id: ThreadId) -> Rc<Context> {
        self.threads[&id].context.clone().expect("thread has no context")
    }

    /// The next thread to run; sleeps the host thread while only sleepers remain.
    fn pick_next(&mut self) -> ThreadId {
        loop {
            let now = clock::monotonic_ns();
            while let Some(&(deadline, id)) = self.sleeping.first() {
                if deadline > now {
                    break;
                }
                self.sleeping.pop_first();
                self.ready.push_back(id);
            }
            if let Some(id) = self.ready.pop_front() {
                return id;
            }
            match self.sleeping.first() {
                Some(&(deadline, _)) => clock::host_sleep_ns(deadline.saturating_sub(now)),
                None => panic!("flexos-sched: deadlock: every thread is blocked and none is sleeping"),
            }
        }
    }
}

fn with<R>(f: impl FnOnce(&mut Scheduler) -> R) -> R {
    flexos_gate::with_state(flexos_gate::me!(), |s: &mut Scheduler| {
        s.start();
        f(s)
    })
}

/// Switches to the next thread. The current thread must already be queued
/// wherever it waits (ready queue, sleepers, a wait queue) or be running on.
fn reschedule() {
    let switch = with(|s| {
        let from = s.current;
        let to = s.pick_next();
        if from == to {
            return None;
        }
        s.current = to;
        s.switches += 1;
        Some((s.context(from), s.context(to)))
    });
    if let Some((from, to)) = switch {
        // The compartment register belongs to the thread: keep ours across the switch.
        let compartment = compartment::current();
        context::switch(&from, &to);
        compartment::enter(compartment);
    }
}

fn exit_current() -> ! {
    let (from, to) = with(|s| {
        let me = s.current;
        let thread = s.threads.get_mut(&me).expect("current thread exists");
        thread.finished = true;
        let from = thread.context.take().expect("current thread has a context");
        let joiners = core::mem::take(&mut thread.joiners);
        s.ready.extend(joiners);
        let to = s.pick_next();
        s.current = to;
        s.switches += 1;
        (from, s.context(to))
    });
    context::exit(from, to)
}

/// Creates a thread that runs `body` (in the compartment that made the
/// callback) and returns its id. It starts when the creator yields or blocks.
pub(crate) fn spawn(body: Callback) -> ThreadId {
    let id = with(|s| s.new_id());
    let ctx = Context::spawn(STACK_SIZE, move || {
        body.call();
        exit_current();
    });
    with(|s| {
        s.threads.insert(id, Thread { context: Some(ctx), finished: false, joiners: Vec::new() });
        s.ready.push_back(id);
    });
    id
}

/// The running thread's id.
pub(crate) fn current() -> ThreadId {
    with(|s| s.current)
}

/// Lets every other ready thread run once before this one continues.
pub(crate) fn yield_now() {
    with(|s| {
        let me = s.current;
        s.ready.push_back(me);
    });
    reschedule();
}

/// Waits until thread `id` has finished. `EINVAL` for an unknown thread or oneself.
pub(crate) fn join(id: ThreadId) -> Result<(), Errno> {
    let wait = with(|s| {
        let me = s.current;
        match s.threads.get_mut(&id) {
            None => Err(Errno::EINVAL),
            Some(_) if id == me => Err(Errno::EINVAL),
            Some(t) if t.finished => Ok(false),
            Some(t) => {
                t.joiners.push(me);
                Ok(true)
            }
        }
    })?;
    if wait {
        reschedule();
    }
    with(|s| s.threads.remove(&id));
    Ok(())
}

/// Blocks the running thread until the monotonic clock reaches `deadline_ns`.
pub(crate) fn sleep_until(deadline_ns: u64) {
    with(|s| {
        let me = s.current;
        s.sleeping.insert((deadline_ns, me));
    });
    reschedule();
}

/// How many threads exist and have not been joined (including finished ones).
pub(crate) fn thread_count() -> usize {
    with(|s| s.threads.len())
}

/// How many context switches happened so far.
pub(crate) fn switch_count() -> u64 {
    with(|s| s.switches)
}

/// Creates a wait queue.
pub(crate) fn wait_queue_create() -> u64 {
    with(|s| {
        let id = s.new_id();
        s.wait_queues.insert(id, VecDeque::new());
        id
    })
}

/// Blocks the running thread on wait queue `wq` until woken.
pub(crate) fn wait(wq: u64) -> Result<(), Errno> {
    with(|s| {
        let me = s.current;
        s.wait_queues.get_mut(&wq).ok_or(Errno::EINVAL).map(|q| q.push_back(me))
    })?;
    reschedule();
    Ok(())
}

/// Wakes the longest-waiting thread of `wq`; returns whether there was one.
pub(crate) fn wake_one(wq: u64) -> Result<bool, Errno> {
    with(|s| {
        let q = s.wait_queues.get_mut(&wq).ok_or(Errno::EINVAL)?;
        Ok(q.pop_front().map(|id| s.ready.push_back(id)).is_some())
    })
}

/// Wakes every thread waiting on `wq`; returns how many.
pub(crate) fn wake_all(wq: u64) -> Result<u32, Errno> {
    with(|s| {
        let q = core::mem::take(s.wait_queues.get_mut(&wq).ok_or(Errno::EINVAL)?);
        let n = q.len() as u32;
        s.ready.extend(q);
        Ok(n)
    })
}

/// Destroys wait queue `wq`; `EINVAL` if threads still wait on it.
pub(crate) fn wait_queue_destroy(wq: u64) -> Result<(), Errno> {
    with(|s| match s.wait_queues.get(&wq) {
        Some(q) if q.is_empty() => {
            s.wait_queues.remove(&wq);
            Ok(())
        }
        _ => Err(Errno::EINVAL),
    })
}

/// Creates a mutex.
pub(crate) fn mutex_create() -> u64 {
    with(|s| {
        let id = s.new_id();
        s.mutexes.insert(id, MutexState::default());
        id
    })
}

/// Locks mutex `m`, waiting while another thread holds it. `EINVAL` if the
/// caller already holds it (no recursive locking) or it does not exist.
pub(crate) fn mutex_lock(m: u64) -> Result<(), Errno> {
    let wait = with(|s| {
        let me = s.current;
        let mx = s.mutexes.get_mut(&m).ok_or(Errno::EINVAL)?;
        match mx.owner {
            None => {
                mx.owner = Some(me);
                Ok(false)
            }
            Some(o) if o == me => Err(Errno::EINVAL),
            Some(_) => {
                mx.waiters.push_back(me);
                Ok(true)
            }
        }
    })?;
    if wait {
        // Ownership is handed over by `mutex_unlock` before we are woken.
        reschedule();
    }
    Ok(())
}

/// Unlocks mutex `m`, handing it to the longest waiter. `EPERM` if the caller does not hold it.
pub(crate) fn mutex_unlock(m: u64) -> Result<(), Errno> {
    with(|s| {
        let me = s.current;
        let mx = s.mutexes.get_mut(&m).ok_or(Errno::EINVAL)?;
        if mx.owner != Some(me) {
            return Err(Errno::EPERM);
        }
        mx.owner = mx.waiters.pop_front();
        if let Some(next) = mx.owner {
            s.ready.push_back(next);
        }
        Ok(())
    })
}
