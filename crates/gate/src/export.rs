//! Entry points: the functions a component lets other compartments call.
//!
//! A component declares them once, at its crate root, with their
//! signatures:
//!
//! ```ignore
//! flexos_gate::exports!(
//!     open(SharedRef<'_>, u32, u32) -> Result<i32, Errno>,
//!     close(i32) -> Result<(), Errno>,
//! );
//! ```
//!
//! (a signature that does not match the function does not compile).
//!
//! This makes, next to each function `f`, a module `f` holding the sealed
//! type `f::Entry` (an [`Entry`]: the callee, the index, and the function
//! itself), which [`gate!`](crate::gate) calls, and `FLEXOS_EXPORTS`, the
//! table a remote gate's callee serves from. A remote gate never sends a
//! code address, only the callee component's id and the entry's index.
//! A function without an entry cannot be named in a gate, and since only
//! this macro can implement [`Entry`], a gate cannot be pointed at any
//! other code.

use crate::wire::{Reader, Writer};
use crate::{Args, Crossing};
use flexos_layout::Component;

/// Why a callee refused a remote call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// The frame names a compartment, component or entry that the callee's
    /// domain does not export.
    NotExported = 1,
    /// The frame's argument length does not fit the frame.
    BadLength = 2,
    /// The argument bytes are not a value of the entry's argument types.
    MalformedArguments = 3,
    /// An argument handle points outside shared memory (e.g. into the callee's private memory).
    PrivatePointer = 4,
    /// The result does not fit into the frame.
    ResultTooLarge = 5,
}

impl Refusal {
    /// The refusal with code `code`, if any.
    pub fn from_code(code: u32) -> Option<Refusal> {
        [Self::NotExported, Self::BadLength, Self::MalformedArguments, Self::PrivatePointer, Self::ResultTooLarge]
            .into_iter()
            .find(|r| *r as u32 == code)
    }

    /// What it means, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::NotExported => "the entry point is not exported to this compartment",
            Refusal::BadLength => "the call frame's length is invalid",
            Refusal::MalformedArguments => "the arguments are malformed",
            Refusal::PrivatePointer => "an argument handle points outside shared memory",
            Refusal::ResultTooLarge => "the result does not fit into the call frame",
        }
    }
}

/// Runs an entry: decodes the arguments from the reader, checks them, calls
/// the function and encodes its result; returns the result's length.
pub type EntryFn = fn(&mut Reader<'_>, &mut Writer<'_>) -> Result<usize, Refusal>;

/// An exported entry point: a function of the component `Callee`.
///
/// # Safety
/// Implemented only by [`exports!`](crate::exports), in the crate of the
/// component whose identity is `Callee`, with `FUNCTION` that crate's
/// function of the entry's name: a gate runs `FUNCTION` with `Callee`'s rights.
pub unsafe trait Entry: 'static {
    /// The component that exports it.
    type Callee: crate::Identity;
    /// Its index in the component's `FLEXOS_EXPORTS`.
    const INDEX: u32;
    /// The function's pointer type.
    type Function: Copy;
    /// The function.
    const FUNCTION: Self::Function;
    /// The callee's compartment.
    const COMPARTMENT: usize = <Self::Callee as crate::Identity>::COMPONENT.compartment;
}

/// One function a component exports to other compartments, as a remote
/// gate's callee runs it.
pub struct Export {
    component: Component,
    index: u32,
    name: &'static str,
    run: EntryFn,
}

impl Export {
    /// The row of entry `E`, run by `run`.
    ///
    /// # Safety
    /// `run` must decode `E`'s arguments and call `E::FUNCTION` (what
    /// [`exports!`](crate::exports) writes).
    #[doc(hidden)]
    pub const unsafe fn new<E: Entry>(name: &'static str, run: EntryFn) -> Export {
        Export { component: <E::Callee as crate::Identity>::COMPONENT, index: E::INDEX, name, run }
    }

    /// The component that implements it.
    pub fn component(&self) -> Component {
        self.component
    }

    /// Its index in its component's table.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The function's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs it on encoded arguments.
    pub(crate) fn run(&self, r: &mut Reader<'_>, w: &mut Writer<'_>) -> Result<usize, Refusal> {
        (self.run)(r, w)
    }
}

/// The body of every entry: decode, check, call, encode.
#[doc(hidden)]
pub fn serve_entry<A, F, R>(r: &mut Reader<'_>, w: &mut Writer<'_>, f: F) -> Result<usize, Refusal>
where
    A: Crossing + Args<F, R>,
    R: Crossing,
{
    let args = A::decode(r).ok_or(Refusal::MalformedArguments)?;
    if !r.is_empty() {
        return Err(Refusal::MalformedArguments);
    }
    if !args.validate() {
        return Err(Refusal::PrivatePointer);
    }
    args.apply(f).encode(w);
    w.finish().map_err(|_| Refusal::ResultTooLarge)
}

/// Declares the functions of this component that other compartments may
/// call, with their signatures; see the [module documentation](self).
#[allow_internal_unsafe]
#[macro_export]
macro_rules! exports {
    ($($f:ident ( $($arg:ty),* $(,)? ) $(-> $ret:ty)?),* $(,)?) => {
        $crate::__export_entries!(0u32; $($f ( $($arg),* ) $(-> $ret)?),*);
        /// Where the image finds this table at boot: every linked
        /// component's table is listed in the `flexos_exports` section
        /// (`flexos_gate::remote::linked_tables`), so no image keeps a list.
        #[used]
        // SAFETY: the section holds only such references, read by the gate
        // crate as `&'static &'static [Export]`.
        #[unsafe(link_section = "flexos_exports")]
        static FLEXOS_EXPORTS_LINK: &&[$crate::Export] = &FLEXOS_EXPORTS;
        /// The entry points this component exports, in index order.
        pub static FLEXOS_EXPORTS: &[$crate::Export] = &[$(
            // SAFETY: the runner decodes the entry's arguments and calls its function.
            unsafe {
                $crate::Export::new::<$f::Entry>(stringify!($f), |r, w| {
                    $crate::serve_entry::<($($arg,)*), _, _>(r, w, <$f::Entry as $crate::Entry>::FUNCTION)
                })
            }
        ),*];
    };
}

#[doc(hidden)]
#[allow_internal_unsafe]
#[macro_export]
macro_rules! __export_entries {
    ($i:expr; ) => {};
    ($i:expr; $f:ident ( $($arg:ty),* ) $(-> $ret:ty)? $(, $($rest:tt)*)?) => {
        /// The exported entry of the function of the same name.
        #[doc(hidden)]
        pub mod $f {
            /// The entry (a sealed [`Entry`](flexos_gate::Entry)).
            pub struct Entry {
                _sealed: (),
            }
        }
        const _: () = assert!(
            $crate::layout::str_eq(<FlexosIdentity as $crate::Identity>::PACKAGE, ::core::env!("CARGO_PKG_NAME")),
            "`FlexosIdentity` is not this package's own identity"
        );
        // SAFETY: made by `exports!` in the crate of `FlexosIdentity`'s
        // component (checked above), for its function `$f`.
        unsafe impl $crate::Entry for $f::Entry {
            type Callee = FlexosIdentity;
            const INDEX: u32 = $i;
            type Function = fn($($arg),*) $(-> $ret)?;
            const FUNCTION: Self::Function = $f;
        }
        $crate::__export_entries!($i + 1; $($($rest)*)?);
    };
}
