//! Execution contexts: a saved stack pointer plus the stack it points into.
//!
//! The scheduler builds cooperative threads from these. The API is safe: a
//! [`Context`] knows whether it is running, suspended or finished, and
//! [`switch`] refuses any transition that would resume a running context or
//! suspend one that is not running. Contexts are `!Send`, so all of this is
//! per host thread.

use crate::memory::Stack;
use std::cell::Cell;
use std::rc::Rc;

/// The state of a context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Executing on this host thread now.
    Running,
    /// Waiting to be switched to.
    Suspended,
    /// Left for good; it is never resumed.
    Finished,
}

type Entry = Box<dyn FnOnce()>;

thread_local! {
    /// The two contexts handed over by [`exit`] (from `Rc::into_raw`; null:
    /// none), dropped by whichever context runs next. Raw pointers, so that
    /// the thread-local has no destructor to register: registering one
    /// allocates in the C library, whose allocator keeps its state in
    /// statics, which the scheduler's compartment may not write when it is
    /// an `mpk` one other than the default (docs/mpk.md).
    static EXITED: Cell<[*const Context; 2]> = const { Cell::new([core::ptr::null(); 2]) };
}

/// Drops what the last [`exit`] handed over. Runs right after every switch.
fn drop_exited() {
    for p in EXITED.replace([core::ptr::null(); 2]) {
        if !p.is_null() {
            // SAFETY: a pointer from `Rc::into_raw` in `exit`, taken out of
            // EXITED (so converted back once), after the switch has left
            // the exited context's stack.
            drop(unsafe { Rc::from_raw(p) });
        }
    }
}

/// One execution context. Create it with [`Context::current`] (for the code
/// that is already running) or [`Context::spawn`] (for new code on a new stack).
pub struct Context {
    rsp: Cell<usize>,
    /// The stacks that gates use in this context (swapped with the context).
    gate_stacks: Cell<*mut crate::gatestack::GateStacks>,
    state: Cell<State>,
    /// Kept alive for as long as the context exists; `None` for the host stack.
    _stack: Option<Stack>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("state", &self.state.get()).finish()
    }
}

std::arch::global_asm!(
    ".text",
    ".global flexos_context_switch",
    ".type flexos_context_switch,@function",
    // rdi: where to save the current stack pointer; rsi: the stack pointer to load.
    "flexos_context_switch:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size flexos_context_switch, .-flexos_context_switch",
    ".global flexos_context_start",
    ".type flexos_context_start,@function",
    // First instruction of a new context: r12 holds the entry argument, r13 the function.
    "flexos_context_start:",
    "mov rdi, r12",
    "call r13",
    "ud2",
    ".size flexos_context_start, .-flexos_context_start",
);

unsafe extern "C" {
    fn flexos_context_switch(save_rsp: *mut usize, load_rsp: usize);
    fn flexos_context_start();
}

/// Runs a new context's closure; it must never return (the closure ends by
/// switching away with [`exit`]).
extern "C" fn context_main(entry: *mut Entry) {
    // SAFETY: `entry` is the pointer made by `Box::into_raw` in `spawn`,
    // handed over exactly once through the new stack's initial r12.
    let entry = unsafe { Box::from_raw(entry) };
    drop_exited();
    entry();
    crate::console::write_err(b"flexos: a context returned instead of exiting\n");
    std::process::abort();
}

impl Context {
    /// A context standing for the code that is running now (on the host stack).
    pub fn current() -> Rc<Context> {
        Rc::new(Context {
            rsp: Cell::new(0),
            gate_stacks: Cell::new(std::ptr::null_mut()),
            state: Cell::new(State::Running),
            _stack: None,
        })
    }

    /// A new, suspended context that will run `f` on a fresh stack of
    /// `stack_size` bytes. `f` must finish by calling [`exit`]; if it returns,
    /// the image aborts.
    pub fn spawn(stack_size: usize, f: impl FnOnce() + 'static) -> Rc<Context> {
        let stack = Stack::for_running_compartment(stack_size);
        let entry: *mut Entry = Box::into_raw(Box::new(Box::new(f) as Entry));
        let top = stack.top() as usize;
        // Initial frame, popped by flexos_context_switch: r15, r14, r13, r12,
        // rbx, rbp, then the return address. After the `ret`, rsp is 16-byte
        // aligned as the `call r13` in flexos_context_start requires.
        let sp = top - 72;
        let frame: [usize; 7] = [
            0,
            0,
            context_main as extern "C" fn(*mut Entry) as usize,
            entry as usize,
            0,
            0,
            flexos_context_start as unsafe extern "C" fn() as usize,
        ];
        // SAFETY: `sp .. sp + 56` lies inside the stack mapping just created
        // (its usable part is at least one page), which nothing else uses.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), sp as *mut usize, frame.len()) };
        Rc::new(Context {
            rsp: Cell::new(sp),
            gate_stacks: Cell::new(std::ptr::null_mut()),
            state: Cell::new(State::Suspended),
            _stack: Some(stack),
        })
    }

    /// The context's state.
    pub fn state(&self) -> State {
        self.state.get()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.state.get() == State::Running && self._stack.is_some() {
            crate::console::write_err(b"flexos: dropped the running context\n");
            std::process::abort();
        }
        // SAFETY: the context is not running (a running one holds its table
        // in the thread's slot, not here), so nothing runs on those stacks.
        unsafe { crate::gatestack::GateStacks::destroy(self.gate_stacks.get()) };
    }
}

fn transfer(from: &Context, to: &Context, from_state: State) {
    assert_eq!(from.state.get(), State::Running, "switch: the context to leave is not running");
    assert_eq!(to.state.get(), State::Suspended, "switch: the context to enter is not suspended");
    from.state.set(from_state);
    to.state.set(State::Running);
    from.gate_stacks.set(crate::gatestack::swap(to.gate_stacks.replace(std::ptr::null_mut())));
    // SAFETY: `from` is the running context (checked above; contexts are
    // !Send, so "running" means running on this host thread), so saving the
    // current stack pointer into it is right. `to` is suspended, so its saved
    // stack pointer points at a frame made by `spawn` or by an earlier switch
    // away from it, on a stack that `to` keeps alive. The caller holds `to`
    // by reference for the duration; it resumes here only when switched back.
    unsafe { flexos_context_switch(from.rsp.as_ptr(), to.rsp.get()) };
    drop_exited();
}

/// Suspends `from` (the running context) and resumes `to`. Returns when
/// something switches back to `from`.
pub fn switch(from: &Context, to: &Context) {
    transfer(from, to, State::Suspended);
}

/// Leaves `from` (the running context) for good and resumes `to`. Both
/// handles are given up here (nothing on a finished stack is ever dropped),
/// and are dropped by the context that runs next, once `from`'s stack is no
/// longer in use.
pub fn exit(from: Rc<Context>, to: Rc<Context>) -> ! {
    drop_exited();
    let (from_ref, to_ref) = (Rc::into_raw(from), Rc::into_raw(to));
    EXITED.set([from_ref, to_ref]);
    // SAFETY: both Rcs were just moved into EXITED, which is drained only
    // after the switch below has left `from`'s stack; so both contexts stay
    // alive for the whole transfer.
    let (from, to) = unsafe { (&*from_ref, &*to_ref) };
    transfer(from, to, State::Finished);
    crate::console::write_err(b"flexos: a finished context was resumed\n");
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn ping_pong_between_contexts() {
        let main = Context::current();
        let log = Rc::new(RefCell::new(Vec::new()));
        let slot: Rc<RefCell<Option<Rc<Context>>>> = Rc::new(RefCell::new(None));
        let (m, l, s) = (main.clone(), log.clone(), slot.clone());
        let child = Context::spawn(64 * 1024, move || {
            let me = s.borrow().clone().unwrap();
            for i in 0..3 {
                l.borrow_mut().push(format!("child {i}"));
                switch(&me, &m);
            }
            exit(me, m);
        });
        *slot.borrow_mut() = Some(child.clone());
        for i in 0..3 {
            switch(&main, &child);
            log.borrow_mut().push(format!("main {i}"));
        }
        switch(&main, &child);
        assert_eq!(child.state(), State::Finished);
        assert_eq!(*log.borrow(), ["child 0", "main 0", "child 1", "main 1", "child 2", "main 2"]);
        slot.borrow_mut().take();
    }

    #[test]
    fn floating_point_and_deep_stack_work_in_a_context() {
        let main = Context::current();
        let out = Rc::new(Cell::new(0.0f64));
        let slot: Rc<RefCell<Option<Rc<Context>>>> = Rc::new(RefCell::new(None));
        let (m, o, s) = (main.clone(), out.clone(), slot.clone());
        let child = Context::spawn(256 * 1024, move || {
            fn depth(n: u32) -> f64 {
                let pad = [n as f64; 16];
                if n == 0 { 0.5 } else { depth(n - 1) + pad[n as usize % 16] * 0.0 + 1.0 }
            }
            o.set(depth(1000));
            let me = s.borrow().clone().unwrap();
            exit(me, m);
        });
        *slot.borrow_mut() = Some(child.clone());
        switch(&main, &child);
        assert_eq!(out.get(), 1000.5);
        slot.borrow_mut().take();
    }

    #[test]
    #[should_panic(expected = "not suspended")]
    fn resuming_a_running_context_is_refused() {
        let main = Context::current();
        switch(&main, &main);
    }
}
