//! Component state kept in the heap of the component's compartment.

use crate::{Caller, Identity};
use flexos_layout::MAX_COMPONENTS;
use flexos_platform::compartment::MAX_COMPARTMENTS;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One slot per component id.
type Table = RefCell<[Option<Rc<dyn Any>>; MAX_COMPONENTS]>;

thread_local! {
    /// The tables of this host thread, one per compartment: each host
    /// thread is a separate machine running its own instance of every
    /// component. A compartment's table lies in that compartment's private
    /// heap (never in shared memory, where another domain could rewrite
    /// the `Rc`s and their vtable pointers), is created on first use and
    /// lives as long as the process (a type without `Drop` here needs no
    /// destructor registration with the C library, which a VM does not have).
    static STATES: [Cell<Option<&'static Table>>; MAX_COMPARTMENTS] = const { [const { Cell::new(None) }; MAX_COMPARTMENTS] };
}

/// Runs `f` on the state of the component whose token `me` is
/// (`with_state(flexos_gate::me!(), |s: &mut S| ...)`), creating it with
/// `Default` (in the heap of its compartment, with its rights) on first use.
/// The token makes sure that a component reaches only its own state, and
/// that only its own `Default` runs with its rights.
///
/// A component must not re-enter itself while it holds its state (for
/// instance by blocking inside `f`); doing so panics naming the component.
pub fn with_state<I: Identity, S: Default + 'static, R>(me: Caller<I>, f: impl FnOnce(&mut S) -> R) -> R {
    let owner = me.component();
    assert!(owner.id < MAX_COMPONENTS, "component id {} out of range", owner.id);
    assert!(owner.compartment < MAX_COMPARTMENTS, "compartment {} out of range", owner.compartment);
    let cell: Rc<dyn Any> = STATES.with(|tables| {
        let slot = &tables[owner.compartment];
        let table = slot.get().unwrap_or_else(|| {
            let table: &'static Table = crate::switch_to(owner.compartment, || {
                Box::leak(Box::new(RefCell::new([const { None }; MAX_COMPONENTS])))
            });
            slot.set(Some(table));
            table
        });
        let mut states = table.borrow_mut();
        states[owner.id]
            .get_or_insert_with(|| {
                crate::switch_to(owner.compartment, || Rc::new(RefCell::new(S::default())) as Rc<dyn Any>)
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
