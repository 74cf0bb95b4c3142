//! Gates: every call from one component into another (DESIGN section 5).
//!
//! A call site is written `gate!(callee_crate::function(arg, ...))`. The
//! caller's and the callee's compartments are compile-time constants from
//! [`layout`], so:
//!
//! * in the same compartment the gate is a plain call ([`call`] reduces to
//!   `f(args)` after constant folding);
//! * across compartments it performs the callee compartment's mechanism
//!   switch ([`fcall`] today), validates shared handles, and counts the
//!   crossing (in debug builds or with the `stats` feature).
//!
//! Only values whose type implements [`Crossing`] may be passed or returned:
//! plain values and handles to shared memory ([`SharedRef`], [`SharedMut`]),
//! never a reference into a compartment's private memory. `Crossing` is an
//! `unsafe` trait, and components are `#![forbid(unsafe_code)]`, so only this
//! crate (the trusted core) can declare a type fit to cross.
//!
//! This crate also keeps each component's state ([`with_state`]) in the heap
//! of the component's compartment, so components need no mutable statics.

pub mod abi;
mod args;
mod crossing;
pub mod export;
pub mod mpk;
pub mod remote;
pub mod shared;
mod state;
pub mod stats;
pub mod wire;

pub use args::Args;
pub use crossing::{Callback, Crossing};
pub use export::{Export, Refusal, serve_entry};
pub use flexos_layout as layout;
pub use shared::{SharedBuf, SharedLocal, SharedMut, SharedRef};
pub use state::with_state;

use flexos_layout::{COMPARTMENTS, Component, Mechanism, domain_of};
use flexos_platform::compartment;

/// Declares the component that the crate defining it implements; required at
/// the root of every component crate, since [`gate!`] reads it at both ends.
/// `NAME` is the component's constant in `flexos_layout::component`.
#[macro_export]
macro_rules! component {
    ($name:ident) => {
        /// This component's identity and placement, generated from the image configuration.
        #[doc(hidden)]
        pub const FLEXOS_COMPONENT: $crate::layout::Component = $crate::layout::component::$name;
    };
}

/// Calls `callee_crate::function(args...)` through a gate:
/// `gate!(flexos_vfs::open(path, flags))`. A library that runs as its
/// caller (it has no component of its own) names the caller:
/// `gate!(as app, in C => flexos_net::recv(fd, buf))`.
///
/// Every argument and the result must implement [`Crossing`], and the
/// function must be one of the callee's exported entry points
/// ([`exports!`]).
// `crate::FLEXOS_COMPONENT` deliberately names the *calling* crate's component.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! gate {
    // For a library that runs in its caller's compartment (the network
    // applications' loop): the calling component and its compartment are given.
    (as $from:expr, in $compartment:expr => $callee:ident :: $func:ident ( $($arg:expr),* $(,)? )) => {
        $crate::call::<{ $compartment }, { $callee::FLEXOS_COMPONENT.compartment }, _, _, _>(
            $from,
            $callee::FLEXOS_COMPONENT,
            ($($arg,)*),
            $callee::$func,
            $callee::$func::INDEX,
        )
    };
    ($callee:ident :: $func:ident ( $($arg:expr),* $(,)? )) => {
        $crate::call::<{ crate::FLEXOS_COMPONENT.compartment }, { $callee::FLEXOS_COMPONENT.compartment }, _, _, _>(
            crate::FLEXOS_COMPONENT,
            $callee::FLEXOS_COMPONENT,
            ($($arg,)*),
            $callee::$func,
            $callee::$func::INDEX,
        )
    };
}

/// Declares shared locals: zero-filled byte buffers that may cross gates,
/// placed by the data-sharing strategy of the calling crate's compartment
/// (DESIGN section 5.3): `shared_local!(name: LEN, other: LEN2);` (lengths
/// are constants) binds mutable [`SharedLocal`]s that live until the end of
/// the scope: mirrors in the data shadow stack (`dss`) or shared-heap
/// allocations (`heap`, `shared-stack`).
// `crate::FLEXOS_COMPONENT` deliberately names the *calling* crate's component.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! shared_local {
    ($($name:ident : $len:expr),+ $(,)?) => {
        $(
            // The stack slot whose mirror the local is (under `dss`).
            let mut $name = ::core::mem::MaybeUninit::<[u8; $len]>::uninit();
            #[allow(unused_mut)]
            let mut $name = $crate::SharedLocal::new::<{ crate::FLEXOS_COMPONENT.compartment }, { $len }>(&mut $name);
        )+
    };
}

/// The function behind [`gate!`]: calls `f` (entry `entry` of `to`'s
/// exports) with `args`, switching from compartment `FROM` (of component
/// `from`) to compartment `TO` (of `to`) when they differ.
#[inline(always)]
pub fn call<const FROM: usize, const TO: usize, A, F, R>(from: Component, to: Component, args: A, f: F, entry: u32) -> R
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    stats::count_call(from, to);
    if FROM == TO {
        args.apply(f)
    } else if flexos_layout::has_mpk()
        && !COMPARTMENTS[FROM].mechanism.is_remote()
        && !COMPARTMENTS[TO].mechanism.is_remote()
    {
        cross_mpk::<FROM, TO, A, F, R>(from, to, args, f)
    } else {
        cross(from, to, args, f, entry)
    }
}

/// A call between two compartments of an image with `mpk` compartments,
/// both in this address space: the `mpk` gate (for `fcall` compartments
/// too, whose rights are "all keys", so their stacks and rights stay right).
#[inline(never)]
fn cross_mpk<const FROM: usize, const TO: usize, A, F, R>(from: Component, to: Component, args: A, f: F) -> R
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    stats::count(from, to);
    if !args.validate() {
        refuse_handle(from, to, "an argument handle points outside shared memory");
    }
    let result = mpk::gate::<FROM, TO, _, R>(|| args.apply(f));
    if !result.validate() {
        refuse_handle(from, to, "a result handle points outside shared memory");
    }
    result
}

/// Stops a call whose handle would give the other side private memory: the
/// call never happens, the image reports it and ends (it does not unwind,
/// which would walk the stacks of other compartments).
fn refuse_handle(from: Component, to: Component, why: &str) -> ! {
    let report = format!(
        "flexos: compartment {:?} refused a call from compartment {:?} (gate {} -> {}): {why}; stopping the image\n",
        COMPARTMENTS[to.compartment].name, COMPARTMENTS[from.compartment].name, from.name, to.name
    );
    flexos_platform::console::write_err(report.as_bytes());
    flexos_platform::process_abort()
}

/// A call that leaves the caller's compartment: a remote call when the
/// callee runs in another domain, else the mechanism's switch in this one.
#[inline(never)]
pub fn cross<A, F, R>(from: Component, to: Component, args: A, f: F, entry: u32) -> R
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    if domain_of(to.compartment) != remote::this_domain() {
        stats::count(from, to);
        return remote::call(from, to, entry, &args);
    }
    cross_with(COMPARTMENTS[to.compartment].mechanism, from, to, args, f)
}

/// [`cross`] inside one domain, with the callee's mechanism given explicitly.
#[doc(hidden)]
#[inline(always)]
pub fn cross_with<A, F, R>(mechanism: Mechanism, from: Component, to: Component, args: A, f: F) -> R
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    stats::count(from, to);
    if !args.validate() {
        panic!(
            "gate {} -> {}: an argument handle points outside shared memory (compartment {:?})",
            from.name, to.name, COMPARTMENTS[from.compartment].name
        );
    }
    let result = match mechanism {
        Mechanism::Fcall => switch_to(to.compartment, || args.apply(f)),
        other => panic!("gate {} -> {}: mechanism {other:?} is not implemented", from.name, to.name),
    };
    if !result.validate() {
        panic!("gate {} -> {}: a result handle points outside shared memory", from.name, to.name);
    }
    result
}

/// Runs `f` in compartment `to_compartment` of this address space, from
/// the application's own code (the process's home compartment): how an
/// image's `main` enters the compartment of its application component.
/// With `fcall` compartments only, this is the `fcall` mechanism: no
/// protection, but the running compartment changes (so allocations go to
/// the callee's heap) and is restored afterwards. In images with `mpk`
/// compartments it is the `mpk` gate into `to_compartment`.
///
/// Called from any other compartment it stops the image: a component may
/// reach another only through its exported entry points ([`gate!`]), never
/// run code of its choice with another compartment's rights.
#[inline(always)]
pub fn fcall<R>(to_compartment: usize, f: impl FnOnce() -> R) -> R {
    let current = compartment::current();
    if current != compartment::home() && current != to_compartment {
        let report = format!(
            "flexos: compartment {:?} asked to run code in compartment {:?} outside a gate; stopping the image\n",
            COMPARTMENTS.get(current).map_or("?", |c| c.name),
            COMPARTMENTS.get(to_compartment).map_or("?", |c| c.name)
        );
        flexos_platform::console::write_err(report.as_bytes());
        flexos_platform::process_abort()
    }
    switch_to(to_compartment, f)
}

/// [`fcall`] for the trusted core (callbacks, component state, remote
/// calls served in this domain), from whichever compartment is running.
#[inline(always)]
pub(crate) fn switch_to<R>(to_compartment: usize, f: impl FnOnce() -> R) -> R {
    if flexos_layout::has_mpk() {
        return mpk::run_in(to_compartment, f);
    }
    let previous = compartment::enter(to_compartment);
    let result = f();
    compartment::enter(previous);
    result
}
