//! Component state kept in the heap of the component's compartment.

use flexos_layout::Component;
use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    /// One slot per component id. Per host thread: each host thread is a
    /// separate machine running its own instance of every component.
    static STATES: RefCell<Vec<Option<Rc<dyn Any>>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the state of component `owner`, creating it with
/// `Default` (in the heap of `owner`'s compartment) on first use.
///
/// A component must not re-enter itself while it holds its state (for
/// instance by blocking inside `f`); doing so panics naming the component.
pub fn with_state<S: Default + 'static, R>(owner: Component, f: impl FnOnce(&mut S) -> R) -> R {
    let cell: Rc<dyn Any> = STATES.with(|states| {
        let mut states = states.borrow_mut();
        if states.len() <= owner.id {
            states.resize(owner.id + 1, None);
        }
        states[owner.id]
            .get_or_insert_with(|| {
                crate::fcall(owner.compartment, || Rc::new(RefCell::new(S::default())) as Rc<dyn Any>)
            })
            .clone()
    });
    let cell = cell
        .downcast::<RefCell<S>>()
        .unwrap_or_else(|_| panic!("component {:?} used two different state types", owner.name));
    let mut state = cell
        .try_borrow_mut()
        .unwrap_or_else(|_| panic!("component {:?} re-entered while its state is in use", owner.name));
    f(&mut state)
}
