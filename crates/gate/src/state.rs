//! Component state kept in the heap of the component's compartment.

use flexos_layout::Component;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The most component ids the state table holds.
const MAX_COMPONENTS: usize = 64;

/// One slot per component id.
type Table = RefCell<[Option<Rc<dyn Any>>; MAX_COMPONENTS]>;

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
            // In the shared heap: every compartment of this host thread
            // reaches its own component's slot through it.
            let layout = core::alloc::Layout::new::<Table>();
            let p = flexos_alloc::alloc_in(flexos_alloc::SHARED, layout).cast::<Table>();
            assert!(!p.is_null(), "the shared heap is exhausted");
            // SAFETY: fresh memory for one Table, initialized here and never
            // freed (it lives as long as the host thread, like a static).
            let table: &'static Table = unsafe {
                p.write(RefCell::new([const { None }; MAX_COMPONENTS]));
                &*p
            };
            slot.set(Some(table));
            table
        });
        let mut states = table.borrow_mut();
        assert!(owner.id < MAX_COMPONENTS, "component id {} out of range", owner.id);
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
