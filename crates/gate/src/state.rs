//! Component state kept in the heap of the component's compartment.

use flexos_layout::Component;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One slot per component id.
type Table = RefCell<Vec<Option<Rc<dyn Any>>>>;

thread_local! {
    /// The table of this host thread: each host thread is a separate machine
    /// running its own instance of every component. The table is created on
    /// first use and lives as long as the process (a type without `Drop` here
    /// needs no destructor registration with the C library, which a VM does
    /// not have).
    static STATES: Cell<Option<&'static Table>> = const { Cell::new(None) };
}

/// Runs `f` on the state of component `owner`, creating it with
/// `Default` (in the heap of `owner`'s compartment) on first use.
///
/// A component must not re-enter itself while it holds its state (for
/// instance by blocking inside `f`); doing so panics naming the component.
pub fn with_state<S: Default + 'static, R>(owner: Component, f: impl FnOnce(&mut S) -> R) -> R {
    let cell: Rc<dyn Any> = STATES.with(|slot| {
        let table = slot.get().unwrap_or_else(|| {
            let table: &'static Table = Box::leak(Box::new(RefCell::new(Vec::new())));
            slot.set(Some(table));
            table
        });
        let mut states = table.borrow_mut();
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
