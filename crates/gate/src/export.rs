//! Entry points: the functions a component lets other compartments call.
//!
//! A remote gate never sends a code address. It sends the callee
//! component's id and the index of an entry in that component's export
//! table, which the component declares once, at its crate root:
//!
//! ```ignore
//! flexos_gate::exports!(open(_, _, _), close(_), read(_, _));
//! ```
//!
//! (one `_` per argument: the shape of the argument tuple, which the
//! compiler cannot infer from a function by itself; a wrong count does not
//! compile).
//!
//! This makes `FLEXOS_EXPORTS` (the table) and, next to each function `f`,
//! a module `f` holding `f::INDEX`, which [`gate!`](crate::gate) uses at the
//! call site. A function without an entry cannot be named in a gate: the
//! call does not compile.

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

/// One function a component exports to other compartments.
pub struct Export {
    /// The component that implements it.
    pub component: Component,
    /// The function's name.
    pub name: &'static str,
    /// Runs it on encoded arguments.
    pub run: EntryFn,
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
/// call; see the [module documentation](self).
#[macro_export]
macro_rules! exports {
    ($($f:ident ( $($arg:tt),* )),* $(,)?) => {
        $crate::__export_indices!(0u32; $($f),*);
        /// The entry points this component exports, in index order.
        pub static FLEXOS_EXPORTS: &[$crate::Export] = &[$(
            $crate::Export {
                component: FLEXOS_COMPONENT,
                name: stringify!($f),
                run: |r, w| $crate::serve_entry::<($($arg,)*), _, _>(r, w, $f),
            }
        ),*];
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_indices {
    ($i:expr; ) => {};
    ($i:expr; $f:ident $(, $rest:ident)*) => {
        #[doc(hidden)]
        pub mod $f {
            /// The entry's index in `FLEXOS_EXPORTS`.
            pub const INDEX: u32 = $i;
        }
        $crate::__export_indices!($i + 1; $($rest),*);
    };
}
