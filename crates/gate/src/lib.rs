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
//! Gates cannot be forged from safe code (docs/isolation.md, "Sealed
//! gates"): a component's identity ([`Identity`]) and its exported entries
//! ([`Entry`]) are types that only this crate's macros can make, since
//! implementing either trait needs `unsafe` and components are
//! `#![forbid(unsafe_code)]` (the macros may expand to `unsafe` through
//! `allow_internal_unsafe`; the workspace forbids `#![feature]` in
//! components, so no component can do the same). [`call`] runs nothing but
//! an entry's own function, as the component whose [`Caller`] token
//! ([`me!`]) it is given.
//!
//! This crate also keeps each component's state ([`with_state`]) in the heap
//! of the component's compartment, so components need no mutable statics.

#![feature(allow_internal_unsafe)]
#![allow(internal_features)]

pub mod abi;
mod args;
pub mod bench;
mod crossing;
pub mod export;
mod identity;
pub mod remote;
pub mod shared;
mod state;
pub mod stats;
pub mod wire;

pub use args::Args;
pub use crossing::{Callback, Crossing};
pub use export::{Entry, Export, Refusal, serve_entry};
pub use flexos_layout as layout;
/// The `mpk` mechanism (its gates are `unsafe`: only this crate calls them).
pub use flexos_mpk as mpk;
pub use flexos_mpk::link_pad;
/// `println!` and `eprintln!` for code in any compartment (see `flexos_platform::outln!`).
pub use flexos_platform::{errln, outln};
pub use identity::{Caller, Identity};
pub use shared::{SharedBuf, SharedLocal, SharedMut, SharedRef};
pub use state::with_state;

use core::mem::MaybeUninit;
use flexos_layout::{COMPARTMENTS, Component, Mechanism, domain_of};
use flexos_platform::compartment;

/// Declares the component that the crate defining it implements; required at
/// the root of every component crate. `NAME` is the component's constant in
/// `flexos_layout::component` (`component!(VFS)`); an image's own code that
/// is no placeable component (a test image's `main`) writes
/// `component!(image)`.
///
/// It makes the crate's sealed identity, `FlexosIdentity`, which only this
/// macro can make (implementing [`Identity`] needs `unsafe`) and which
/// records the package that made it, so no other crate can pass it off as
/// its own ([`me!`] checks). In an image built from a configuration, the
/// package must be the one the catalog names for `NAME`, so a crate cannot
/// claim another component's identity either.
#[allow_internal_unsafe]
#[macro_export]
macro_rules! component {
    (image) => {
        $crate::component!(@identity $crate::layout::IMAGE);
        const _: () = assert!(
            $crate::layout::package_may_be_image(
                ::core::env!("CARGO_PKG_NAME"),
                ::core::option_env!("CARGO_BIN_NAME").is_some()
            ),
            "only an image's binary that is no component may be `component!(image)`"
        );
    };
    ($name:ident) => {
        $crate::component!(@identity $crate::layout::component::$name);
        const _: () = assert!(
            $crate::layout::package_may_be($crate::layout::component::$name, ::core::env!("CARGO_PKG_NAME")),
            concat!("this package is not the component `", stringify!($name), "` of the configuration's catalog")
        );
    };
    (@identity $component:path) => {
        /// This crate's sealed identity (see `flexos_gate::component!`).
        #[doc(hidden)]
        pub struct FlexosIdentity {
            _sealed: (),
        }
        // SAFETY: made by `component!` at the root of the crate it names,
        // recording that crate's package.
        unsafe impl $crate::Identity for FlexosIdentity {
            const COMPONENT: $crate::layout::Component = $component;
            const PACKAGE: &'static str = ::core::env!("CARGO_PKG_NAME");
        }
        /// This component's identity and placement, as a value.
        #[doc(hidden)]
        #[allow(dead_code)]
        pub(crate) const FLEXOS_COMPONENT: $crate::layout::Component = $component;
    };
}

/// The calling crate's [`Caller`] token: proof, for gates and component
/// state, that the code runs as the crate's own component. It checks at
/// compile time that `crate::FlexosIdentity` was made by this package's
/// [`component!`], so a crate that renames another component's identity
/// does not build.
// `crate::FlexosIdentity` deliberately names the *calling* crate's identity.
#[allow(clippy::crate_in_macro_def)]
#[allow_internal_unsafe]
#[macro_export]
macro_rules! me {
    () => {{
        const {
            assert!(
                $crate::layout::str_eq(
                    <crate::FlexosIdentity as $crate::Identity>::PACKAGE,
                    ::core::env!("CARGO_PKG_NAME")
                ),
                "`crate::FlexosIdentity` is not this package's own identity"
            )
        };
        // SAFETY: the identity is this package's own (checked above).
        unsafe { $crate::Caller::<crate::FlexosIdentity>::new() }
    }};
}

/// Calls `callee_crate::function(arg, ...)` through a gate:
/// `gate!(flexos_vfs::open(path, flags, mode))`. A library that runs as its
/// caller (it has no component of its own) passes the caller's [`Caller`]
/// token and compartment (a const generic): `gate!(as me, in C =>
/// flexos_net::recv(fd, buf))`.
///
/// The function must be one of the callee's exported entries
/// ([`exports!`]); every argument and the result must implement
/// [`Crossing`].
// `crate::FlexosIdentity` deliberately names the *calling* crate's identity.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! gate {
    (as $me:ident, in $compartment:ident => $callee:ident :: $func:ident ( $($arg:expr),* $(,)? )) => {
        $crate::call::<{ $compartment }, { <$callee::$func::Entry as $crate::Entry>::COMPARTMENT }, _, $callee::$func::Entry, _, _>(
            $me,
            ($($arg,)*),
        )
    };
    ($callee:ident :: $func:ident ( $($arg:expr),* $(,)? )) => {
        $crate::call::<
            { <crate::FlexosIdentity as $crate::Identity>::COMPONENT.compartment },
            { <$callee::$func::Entry as $crate::Entry>::COMPARTMENT },
            _,
            $callee::$func::Entry,
            _,
            _,
        >($crate::me!(), ($($arg,)*))
    };
}

/// Whether a call of `callee::entry` by the calling crate's component is a
/// remote gate, known when the image is built:
/// `flexos_gate::is_remote!(flexos_vfs::submit)`. It names the entry and
/// calls nothing (the bypass audit accepts it, as it accepts `gate!`).
// `crate::FlexosIdentity` deliberately names the *calling* crate's identity.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! is_remote {
    ($callee:ident :: $func:ident) => {
        $crate::is_remote_call::<crate::FlexosIdentity, $callee::$func::Entry>()
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

/// The function behind [`gate!`]: calls entry `E` with `args`, as the
/// component `Me` whose [`Caller`] token is given, switching from
/// compartment `FROM` (`Me`'s) to compartment `TO` (`E`'s callee's) when
/// they differ.
///
/// It is safe: the token cannot be forged, an entry is always a function
/// its own component exported, and the compartments are checked against
/// both at compile time, so it runs only what `gate!` would run.
#[inline(always)]
pub fn call<const FROM: usize, const TO: usize, Me: Identity, E: Entry, A, R>(me: Caller<Me>, args: A) -> R
where
    A: Crossing + Args<E::Function, R>,
    R: Crossing,
{
    const {
        assert!(
            FROM == Me::COMPONENT.compartment && TO == E::COMPARTMENT,
            "a gate's compartments are its caller's and its callee's"
        )
    };
    let _ = me;
    let (from, to) = (Me::COMPONENT, <E::Callee as Identity>::COMPONENT);
    stats::count_call(from, to);
    if FROM == TO {
        args.apply(E::FUNCTION)
    } else if flexos_layout::has_mpk()
        && !COMPARTMENTS[FROM].mechanism.is_remote()
        && !COMPARTMENTS[TO].mechanism.is_remote()
    {
        cross_mpk::<FROM, TO, A, E::Function, R>(from, to, args, E::FUNCTION)
    } else {
        cross(from, to, args, E::FUNCTION, E::INDEX)
    }
}

/// Whether a call of entry `E` by component `Me` is a remote gate (a round
/// trip to another process or VM), known when the image is built: a caller
/// may gather work for such a call (the C library's write-behind).
pub const fn is_remote_call<Me: Identity, E: Entry>() -> bool {
    let (from, to) = (Me::COMPONENT.compartment, E::COMPARTMENT);
    from != to && (COMPARTMENTS[from].mechanism.is_remote() || COMPARTMENTS[to].mechanism.is_remote())
}

/// Tells the domain of entry `E` (where a call of it by `Me` is a remote
/// gate) that this thread's next call into it will hand over `bytes`,
/// shared memory this thread is filling: while that domain's thread waits
/// for the call, it pulls those bytes into its core's cache, so the call
/// finds them there instead of fetching them from this core then. A hint
/// that moves no rights and changes no call (see
/// [`remote::announce`]); elsewhere it does nothing. Call it through
/// [`announce!`].
pub fn announce<Me: Identity, E: Entry>(bytes: SharedRef<'_>) {
    if const { is_remote_call::<Me, E>() } {
        remote::announce(E::COMPARTMENT, bytes.addr(), bytes.len());
    }
}

/// [`announce()`] for the calling crate's component:
/// `flexos_gate::announce!(flexos_vfs::submit)(bytes)`. The macro names
/// the entry and calls nothing (the bypass audit accepts it, as it accepts
/// `is_remote!`); the hint is the call after it.
// `crate::FlexosIdentity` deliberately names the *calling* crate's identity.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! announce {
    ($callee:ident :: $func:ident) => {
        $crate::announce::<crate::FlexosIdentity, $callee::$func::Entry>
    };
}

/// Whether entry `E` lives in a domain of its own (a process or VM) while
/// component `Me` runs in the host, known when the image is built. Then
/// every change to `E`'s component's state on a host thread's chain is made
/// inside a remote call that the host thread itself made (or by a
/// compromised domain that could make that change through its own calls), so
/// a host caller that counts its thread's remote calls
/// ([`remote::calls_made`]) can tell whether anyone else reached that state
/// since its own last call (the C library's knowledge of `vfs`'s answers).
pub const fn is_host_to_remote<Me: Identity, E: Entry>() -> bool {
    !COMPARTMENTS[Me::COMPONENT.compartment].mechanism.is_remote() && COMPARTMENTS[E::COMPARTMENT].mechanism.is_remote()
}

/// [`is_host_to_remote`] for the calling crate's component:
/// `flexos_gate::is_host_to_remote!(flexos_vfs::submit)`. It names the
/// entry and calls nothing, as [`is_remote!`].
// `crate::FlexosIdentity` deliberately names the *calling* crate's identity.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! is_host_to_remote {
    ($callee:ident :: $func:ident) => {
        $crate::is_host_to_remote::<crate::FlexosIdentity, $callee::$func::Entry>()
    };
}

/// A call between two compartments of an image with `mpk` compartments,
/// both in this address space: the `mpk` gate (for `fcall` compartments
/// too, whose rights are "all keys", so their stacks and rights stay right).
///
/// Arguments and a result that are [`Crossing::PLAIN`] cross as they are;
/// any other crosses encoded, as through a remote gate, and the receiving
/// side decodes (and validates) its own copy: bytes that a compromised
/// caller or callee wrote into the call never become a value that is not
/// one of its type (a `bool` of 7, an unknown enum tag, a null handle).
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
    if const { A::PLAIN && R::PLAIN } {
        // SAFETY: `f` is the function of an entry of `to`'s component (`call`).
        return unsafe { mpk::gate::<FROM, TO, _, R>(|| args.apply(f)) };
    }
    const { assert!(A::MAX_ENCODED <= 1024 && R::MAX_ENCODED <= 1024, "too large to cross an mpk gate") };
    macro_rules! sized {
        ($($na:literal),*) => {{
            $(if A::MAX_ENCODED <= $na {
                sized!(@r $na; 16, 64, 256, 1024);
            })*
            unreachable!()
        }};
        (@r $na:literal; $($nr:literal),*) => {{
            $(if R::MAX_ENCODED <= $nr {
                return cross_mpk_encoded::<FROM, TO, $na, $nr, A, F, R>(from, to, args, f);
            })*
            unreachable!()
        }};
    }
    sized!(16, 64, 256, 1024)
}

/// [`cross_mpk`] with the arguments and the result encoded, in buffers of
/// `NA` and `NR` bytes.
#[inline(always)]
fn cross_mpk_encoded<const FROM: usize, const TO: usize, const NA: usize, const NR: usize, A, F, R>(
    from: Component,
    to: Component,
    args: A,
    f: F,
) -> R
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    let mut arg_bytes = [MaybeUninit::<u8>::uninit(); NA];
    let mut w = wire::Writer::new(&mut arg_bytes);
    args.encode(&mut w);
    let arg_len = w.finish().unwrap_or_else(|e| panic!("gate {} -> {}: {e}", from.name, to.name));
    drop(args);
    // The callee decodes its own copy of the bytes (the closure's), checks
    // it, runs the entry and encodes the result; `MALFORMED` and `PRIVATE`
    // say it refused the arguments.
    const MALFORMED: usize = usize::MAX;
    const PRIVATE: usize = usize::MAX - 1;
    let callee = move || {
        // SAFETY: the first `arg_len` bytes were written by the encoder.
        let bytes = unsafe { core::slice::from_raw_parts(arg_bytes.as_ptr().cast::<u8>(), arg_len.min(NA)) };
        let mut r = wire::Reader::new(bytes);
        let mut result = [MaybeUninit::<u8>::uninit(); NR];
        let args = match A::decode(&mut r) {
            Some(args) if r.is_empty() => args,
            _ => return (result, MALFORMED),
        };
        if !args.validate() {
            return (result, PRIVATE);
        }
        let value = args.apply(f);
        let mut w = wire::Writer::new(&mut result);
        value.encode(&mut w);
        let len = w.finish().unwrap_or(MALFORMED);
        (result, len)
    };
    // SAFETY: `f` is the function of an entry of `to`'s component (`call`).
    let (result, len) = unsafe { mpk::gate::<FROM, TO, _, _>(callee) };
    match len {
        MALFORMED => refuse_handle(from, to, "the arguments or the result are malformed"),
        PRIVATE => refuse_handle(from, to, "an argument handle points outside shared memory"),
        n if n > NR => refuse_handle(from, to, "the callee's result is malformed"),
        n => {
            // SAFETY: the callee's encoder wrote the first `n` bytes; whatever
            // they are, they are only read as bytes here.
            let bytes = unsafe { core::slice::from_raw_parts(result.as_ptr().cast::<u8>(), n) };
            let mut r = wire::Reader::new(bytes);
            match R::decode(&mut r) {
                Some(v) if r.is_empty() && v.validate() => v,
                _ => refuse_handle(
                    from,
                    to,
                    "the callee's result is no value of its type or points outside shared memory",
                ),
            }
        }
    }
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
fn cross<A, F, R>(from: Component, to: Component, args: A, f: F, entry: u32) -> R
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

/// An `fcall` crossing from `Me` into entry `E`, whatever the layout says
/// of `E`'s compartment (which need not exist): for the gate's own tests
/// and `flexos bench gates`.
///
/// # Safety
/// Only for tests and benchmarks of images without `mpk` compartments: it
/// switches the running compartment without switching rights.
#[doc(hidden)]
#[inline(always)]
pub unsafe fn cross_fcall<Me: Identity, E: Entry, A, R>(me: Caller<Me>, args: A) -> R
where
    A: Crossing + Args<E::Function, R>,
    R: Crossing,
{
    let (from, to) = (me.component(), <E::Callee as Identity>::COMPONENT);
    cross_with(Mechanism::Fcall, from, to, args, E::FUNCTION)
}

/// [`cross`] inside one domain, with the callee's mechanism given explicitly.
#[inline(always)]
fn cross_with<A, F, R>(mechanism: Mechanism, from: Component, to: Component, args: A, f: F) -> R
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
        // SAFETY: the callers run entries' functions, callbacks' closures in
        // their owners' compartments, or this crate's own code.
        return unsafe { mpk::run_in(to_compartment, f) };
    }
    let previous = compartment::enter(to_compartment);
    let result = f();
    compartment::enter(previous);
    result
}
