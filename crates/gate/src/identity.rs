//! Component identities: who is calling.
//!
//! Every component crate has one identity type, `FlexosIdentity`, made by
//! [`component!`](crate::component) at its root. Gates and component state
//! ask for a [`Caller`] token of an identity, which [`me!`](crate::me) makes
//! only in the package that owns the identity. Neither can be made in safe
//! code, so a component can act only as itself.

use core::marker::PhantomData;
use flexos_layout::Component;

/// A component's identity and placement.
///
/// # Safety
/// Implemented only by [`component!`](crate::component), once per package,
/// with `PACKAGE` the package that invoked it: gates trust `COMPONENT` to
/// be the component whose code is running.
pub unsafe trait Identity: 'static {
    /// The component (its id and compartment).
    const COMPONENT: Component;
    /// The cargo package whose `component!` made this identity.
    const PACKAGE: &'static str;
}

/// Proof that the code holding it runs as component `I`: made by
/// [`me!`](crate::me) in `I`'s own package, copied freely inside it, and
/// never able to cross a gate (it is not [`Crossing`](crate::Crossing)).
pub struct Caller<I: Identity> {
    _identity: PhantomData<fn() -> I>,
}

impl<I: Identity> Caller<I> {
    /// The token of identity `I`.
    ///
    /// # Safety
    /// Only for code of `I`'s own package (what [`me!`](crate::me) checks).
    #[doc(hidden)]
    pub const unsafe fn new() -> Caller<I> {
        Caller { _identity: PhantomData }
    }

    /// The component this token speaks for.
    pub const fn component(self) -> Component {
        I::COMPONENT
    }
}

impl<I: Identity> Clone for Caller<I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I: Identity> Copy for Caller<I> {}
