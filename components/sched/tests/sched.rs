//! Scheduler behaviour: threads, yielding, sleeping, wait queues, mutexes.

// The test's own code calls the component through gates, as an image would.
flexos_gate::component!(image);
use flexos_gate::gate;

use flexos_gate::Callback;
use flexos_gate::abi::Errno;
use flexos_platform::{clock, compartment};
use flexos_sched as sched;
use std::cell::RefCell;
use std::rc::Rc;

type Log = Rc<RefCell<Vec<String>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn push(l: &Log, s: impl Into<String>) {
    l.borrow_mut().push(s.into());
}

#[test]
fn spawn_runs_threads_and_join_waits() {
    let l = log();
    let ids: Vec<_> = (0..3)
        .map(|i| {
            let l = l.clone();
            gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || push(&l, format!("t{i}")))))
        })
        .collect();
    push(&l, "main");
    for id in ids {
        gate!(sched::join(id)).unwrap();
    }
    assert_eq!(*l.borrow(), ["main", "t0", "t1", "t2"]);
    assert_eq!(gate!(sched::thread_count()), 1, "joined threads are gone");
}

#[test]
fn yield_interleaves_threads() {
    let l = log();
    let mk = |name: &'static str, l: Log| {
        Callback::new(flexos_gate::me!(), move || {
            for i in 0..3 {
                push(&l, format!("{name}{i}"));
                gate!(sched::yield_now());
            }
        })
    };
    let a = gate!(sched::spawn(mk("a", l.clone())));
    let b = gate!(sched::spawn(mk("b", l.clone())));
    gate!(sched::join(a)).unwrap();
    gate!(sched::join(b)).unwrap();
    assert_eq!(*l.borrow(), ["a0", "b0", "a1", "b1", "a2", "b2"]);
    assert!(gate!(sched::switch_count()) >= 6);
}

#[test]
fn sleepers_wake_in_deadline_order_and_not_early() {
    let l = log();
    let start = clock::monotonic_ns();
    let ids: Vec<_> = [30u64, 10, 20]
        .into_iter()
        .map(|ms| {
            let l = l.clone();
            gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || {
                let deadline = start + ms * 1_000_000;
                gate!(sched::sleep_until(deadline));
                assert!(clock::monotonic_ns() >= deadline, "woke before its deadline");
                push(&l, format!("{ms}ms"));
            })))
        })
        .collect();
    for id in ids {
        gate!(sched::join(id)).unwrap();
    }
    assert_eq!(*l.borrow(), ["10ms", "20ms", "30ms"]);
}

#[test]
fn wait_queues_block_until_woken() {
    let l = log();
    let wq = gate!(sched::wait_queue_create());
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            let l = l.clone();
            gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || {
                gate!(sched::wait(wq)).unwrap();
                push(&l, format!("woken{i}"));
            })))
        })
        .collect();
    gate!(sched::yield_now());
    assert!(l.borrow().is_empty(), "waiters block");
    assert_eq!(gate!(sched::wait_queue_destroy(wq)), Err(Errno::EINVAL), "cannot destroy a queue with waiters");
    assert_eq!(gate!(sched::wake_one(wq)), Ok(true));
    gate!(sched::yield_now());
    assert_eq!(*l.borrow(), ["woken0"]);
    assert_eq!(gate!(sched::wake_all(wq)), Ok(1));
    for id in waiters {
        gate!(sched::join(id)).unwrap();
    }
    assert_eq!(*l.borrow(), ["woken0", "woken1"]);
    assert_eq!(gate!(sched::wake_one(wq)), Ok(false));
    gate!(sched::wait_queue_destroy(wq)).unwrap();
    assert_eq!(gate!(sched::wait(wq)), Err(Errno::EINVAL));
}

#[test]
fn mutex_keeps_critical_sections_whole() {
    let counter = Rc::new(RefCell::new(0u32));
    let m = gate!(sched::mutex_create());
    let ids: Vec<_> = (0..4)
        .map(|_| {
            let c = counter.clone();
            gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || {
                for _ in 0..10 {
                    gate!(sched::mutex_lock(m)).unwrap();
                    let v = *c.borrow();
                    gate!(sched::yield_now()); // others run, but cannot enter
                    *c.borrow_mut() = v + 1;
                    gate!(sched::mutex_unlock(m)).unwrap();
                }
            })))
        })
        .collect();
    for id in ids {
        gate!(sched::join(id)).unwrap();
    }
    assert_eq!(*counter.borrow(), 40, "no update was lost");
    assert_eq!(gate!(sched::mutex_unlock(m)), Err(Errno::EPERM));
    gate!(sched::mutex_lock(m)).unwrap();
    assert_eq!(gate!(sched::mutex_lock(m)), Err(Errno::EINVAL), "no recursive locking");
}

#[test]
fn each_thread_keeps_its_compartment() {
    let seen = log();
    let s = seen.clone();
    let t = gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || {
        compartment::enter(4);
        gate!(sched::yield_now());
        push(&s, format!("thread {}", compartment::current()));
    })));
    gate!(sched::yield_now());
    push(&seen, format!("main {}", compartment::current()));
    gate!(sched::join(t)).unwrap();
    assert_eq!(*seen.borrow(), ["main 0", "thread 4"]);
}

#[test]
fn many_threads() {
    let total = Rc::new(RefCell::new(0u64));
    let ids: Vec<_> = (0..500u64)
        .map(|i| {
            let t = total.clone();
            gate!(sched::spawn(Callback::new(flexos_gate::me!(), move || {
                gate!(sched::yield_now());
                *t.borrow_mut() += i;
            })))
        })
        .collect();
    for id in ids {
        gate!(sched::join(id)).unwrap();
    }
    assert_eq!(*total.borrow(), 499 * 500 / 2);
}

#[test]
fn join_rejects_unknown_and_self() {
    assert_eq!(gate!(sched::join(12345)), Err(Errno::EINVAL));
    assert_eq!(gate!(sched::join(gate!(sched::current()))), Err(Errno::EINVAL));
}

#[test]
#[should_panic(expected = "deadlock")]
fn waiting_forever_is_reported_as_deadlock() {
    let wq = gate!(sched::wait_queue_create());
    let _ = gate!(sched::wait(wq));
}
