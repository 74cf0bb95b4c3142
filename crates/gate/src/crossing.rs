//! What may cross a gate.

use crate::wire::{Reader, Writer};
use crate::{Caller, Identity};
use flexos_platform::compartment;
use std::cell::{Cell, RefCell};

/// A type whose values may be passed to or returned from another
/// compartment: plain data, or handles to shared memory.
///
/// Values cross a remote gate (`proc`, `kvm`) encoded: [`Crossing::encode`]
/// writes them into the call frame, [`Crossing::decode`] reads them back on
/// the other side and returns `None` for bytes that no value of the type
/// could have produced.
///
/// # Safety
/// An implementation promises that a value of the type gives no access to
/// memory private to the compartment that made it: it contains no
/// references or pointers except shared-memory handles, which
/// [`Crossing::validate`] checks; and that `decode` never builds an invalid value.
pub unsafe trait Crossing: Sized {
    /// Whether every bit pattern of the type is a value of it that gives no
    /// access to memory (plain integers and what holds only them): such a
    /// value may cross an `mpk` gate as it is; any other crosses encoded
    /// (see [`Crossing::encode`]), so that the side that reads it never
    /// reads bytes that are no value of its type.
    const PLAIN: bool = false;

    /// The most bytes [`Crossing::encode`] writes for a value of the type.
    const MAX_ENCODED: usize;

    /// Whether every shared handle inside lies in shared memory. Called on
    /// the receiving side of a cross-compartment gate.
    #[inline(always)]
    fn validate(&self) -> bool {
        true
    }

    /// Appends the value's encoding to `w`.
    fn encode(&self, w: &mut Writer);

    /// Reads a value encoded by [`Crossing::encode`]; `None` if the bytes are malformed.
    fn decode(r: &mut Reader) -> Option<Self>;
}

macro_rules! plain_number {
    ($($t:ty),*) => { $(
        // SAFETY: a plain value without pointers; every bit pattern is a value.
        unsafe impl Crossing for $t {
            const PLAIN: bool = true;
            const MAX_ENCODED: usize = size_of::<$t>();
            #[inline(always)]
            fn encode(&self, w: &mut Writer) {
                w.put(&self.to_le_bytes());
            }
            #[inline(always)]
            fn decode(r: &mut Reader) -> Option<Self> {
                r.array().map(<$t>::from_le_bytes)
            }
        }
    )* };
}
plain_number!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);

// SAFETY: a plain value; encoded as 64 bits, rejected when it does not fit.
unsafe impl Crossing for usize {
    const PLAIN: bool = true;
    const MAX_ENCODED: usize = 8;
    fn encode(&self, w: &mut Writer) {
        (*self as u64).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        u64::decode(r).and_then(|v| usize::try_from(v).ok())
    }
}

// SAFETY: as for usize.
unsafe impl Crossing for isize {
    const PLAIN: bool = true;
    const MAX_ENCODED: usize = 8;
    fn encode(&self, w: &mut Writer) {
        (*self as i64).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        i64::decode(r).and_then(|v| isize::try_from(v).ok())
    }
}

// SAFETY: nothing to carry.
unsafe impl Crossing for () {
    const PLAIN: bool = true;
    const MAX_ENCODED: usize = 0;
    fn encode(&self, _: &mut Writer) {}
    fn decode(_: &mut Reader) -> Option<Self> {
        Some(())
    }
}

// SAFETY: one byte, only 0 and 1 decode.
unsafe impl Crossing for bool {
    const MAX_ENCODED: usize = 1;
    fn encode(&self, w: &mut Writer) {
        w.put(&[*self as u8]);
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        match r.array::<1>()? {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        }
    }
}

// SAFETY: a scalar value; surrogates and out-of-range values do not decode.
unsafe impl Crossing for char {
    const MAX_ENCODED: usize = 4;
    fn encode(&self, w: &mut Writer) {
        (*self as u32).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        char::from_u32(u32::decode(r)?)
    }
}

// SAFETY: crosses iff its content does; validation is delegated.
unsafe impl<T: Crossing> Crossing for Option<T> {
    const MAX_ENCODED: usize = 1 + T::MAX_ENCODED;
    fn validate(&self) -> bool {
        self.as_ref().is_none_or(T::validate)
    }
    fn encode(&self, w: &mut Writer) {
        match self {
            None => false.encode(w),
            Some(v) => {
                true.encode(w);
                v.encode(w)
            }
        }
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        if bool::decode(r)? { T::decode(r).map(Some) } else { Some(None) }
    }
}

// SAFETY: crosses iff both variants do; validation is delegated.
unsafe impl<T: Crossing, E: Crossing> Crossing for Result<T, E> {
    const MAX_ENCODED: usize = 1 + if T::MAX_ENCODED > E::MAX_ENCODED { T::MAX_ENCODED } else { E::MAX_ENCODED };
    fn validate(&self) -> bool {
        match self {
            Ok(t) => t.validate(),
            Err(e) => e.validate(),
        }
    }
    fn encode(&self, w: &mut Writer) {
        match self {
            Ok(v) => {
                true.encode(w);
                v.encode(w)
            }
            Err(e) => {
                false.encode(w);
                e.encode(w)
            }
        }
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        if bool::decode(r)? { T::decode(r).map(Ok) } else { E::decode(r).map(Err) }
    }
}

// SAFETY: crosses iff its elements do; validation is delegated.
unsafe impl<T: Crossing, const N: usize> Crossing for [T; N] {
    const PLAIN: bool = T::PLAIN;
    const MAX_ENCODED: usize = N * T::MAX_ENCODED;
    fn validate(&self) -> bool {
        self.iter().all(T::validate)
    }
    fn encode(&self, w: &mut Writer) {
        self.iter().for_each(|v| v.encode(w))
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        let mut items = Vec::with_capacity(N);
        for _ in 0..N {
            items.push(T::decode(r)?);
        }
        items.try_into().ok()
    }
}

macro_rules! tuple {
    ($($name:ident),*) => {
        // SAFETY: crosses iff every element does; validation is delegated.
        unsafe impl<$($name: Crossing),*> Crossing for ($($name,)*) {
            const PLAIN: bool = true $(&& $name::PLAIN)*;
            const MAX_ENCODED: usize = 0 $(+ $name::MAX_ENCODED)*;
            #[allow(non_snake_case)]
            fn validate(&self) -> bool {
                let ($($name,)*) = self;
                true $(&& $name.validate())*
            }
            #[allow(non_snake_case)]
            fn encode(&self, w: &mut Writer) {
                let ($($name,)*) = self;
                $($name.encode(w);)*
            }
            fn decode(r: &mut Reader) -> Option<Self> {
                Some(($($name::decode(r)?,)*))
            }
        }
    };
}
tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);
tuple!(A, B, C, D, E);
tuple!(A, B, C, D, E, G);
tuple!(A, B, C, D, E, G, H);

/// Code handed to another compartment to be run later in the compartment
/// that made it (e.g. a thread's body given to the scheduler). Calling it is
/// a gate back into its owner.
///
/// The closure never leaves its owner: [`Callback::new`] registers it in a
/// table in the owner's own heap, and the handle that crosses holds only the
/// owner's compartment, the slot and a tag. A receiver that rewrites the
/// handle (under `mpk` it lies in the receiver's memory) can therefore only
/// name a closure the owner registered, and each runs at most once; a slot
/// or tag that does not match is refused by the owner, which stops the image
/// naming both compartments.
pub struct Callback {
    owner: usize,
    slot: u32,
    tag: u64,
}

/// A registered closure and the tag it was registered with.
type Registered = (u64, Box<dyn FnOnce()>);

/// One compartment's registered callbacks on this host thread.
#[derive(Default)]
struct Registry {
    /// By slot: the tag it was registered with and the closure.
    slots: Vec<Option<Registered>>,
    /// Free slots.
    free: Vec<u32>,
    /// The next tag.
    next_tag: u64,
}

type RegistryCell = RefCell<Registry>;

thread_local! {
    /// Per compartment, its registry (in that compartment's heap).
    static REGISTRIES: [Cell<Option<&'static RegistryCell>>; compartment::MAX_COMPARTMENTS] =
        const { [const { Cell::new(None) }; compartment::MAX_COMPARTMENTS] };
}

/// Runs `f` on compartment `owner`'s registry; call it in `owner`'s compartment.
fn with_registry<R>(owner: usize, f: impl FnOnce(&mut Registry) -> R) -> R {
    let cell = REGISTRIES.with(|r| {
        let slot = &r[owner];
        slot.get().unwrap_or_else(|| {
            let table: &'static RegistryCell = Box::leak(Box::default());
            slot.set(Some(table));
            table
        })
    });
    f(&mut cell.borrow_mut())
}

impl Callback {
    /// Registers `f`, to be run in the compartment of the component whose
    /// token `me` is (`Callback::new(flexos_gate::me!(), move || ...)`).
    pub fn new<I: Identity>(me: Caller<I>, f: impl FnOnce() + 'static) -> Callback {
        let owner = me.component().compartment;
        assert!(owner < compartment::MAX_COMPARTMENTS, "compartment {owner} out of range");
        let (slot, tag) = crate::switch_to(owner, move || {
            let f: Box<dyn FnOnce()> = Box::new(f);
            with_registry(owner, |r| {
                r.next_tag += 1;
                let tag = r.next_tag;
                let slot = match r.free.pop() {
                    Some(i) => {
                        r.slots[i as usize] = Some((tag, f));
                        i
                    }
                    None => {
                        r.slots.push(Some((tag, f)));
                        (r.slots.len() - 1) as u32
                    }
                };
                (slot, tag)
            })
        });
        Callback { owner, slot, tag }
    }

    /// The compartment the code belongs to.
    pub fn owner(&self) -> usize {
        self.owner
    }

    /// Runs the code in its owner's compartment.
    pub fn call(self) {
        let this = core::mem::ManuallyDrop::new(self);
        let (owner, slot, tag) = (this.owner, this.slot, this.tag);
        let known =
            if crate::layout::has_mpk() { crate::layout::COMPARTMENTS.len() } else { compartment::MAX_COMPARTMENTS };
        if owner >= known {
            refuse(owner, slot, tag);
        }
        crate::switch_to(owner, move || match take(owner, slot, tag) {
            Some(f) => f(),
            None => refuse(owner, slot, tag),
        })
    }
}

/// The closure in `owner`'s slot `slot` if it was registered with `tag`.
fn take(owner: usize, slot: u32, tag: u64) -> Option<Box<dyn FnOnce()>> {
    with_registry(owner, |r| {
        let entry = r.slots.get_mut(slot as usize)?;
        if entry.as_ref().is_none_or(|(t, _)| *t != tag) {
            return None;
        }
        r.free.push(slot);
        entry.take().map(|(_, f)| f)
    })
}

/// Stops the image: a callback handle names a closure its owner never
/// registered (or one that already ran): the compartment that held it
/// rewrote it.
fn refuse(owner: usize, slot: u32, tag: u64) -> ! {
    let name = |c: usize| crate::layout::COMPARTMENTS.get(c).map_or("?", |c| c.name);
    let report = format!(
        "flexos: compartment {:?} refused a callback it did not register (slot {slot}, tag {tag}), called from compartment {:?}; stopping the image\n",
        name(owner),
        name(compartment::current())
    );
    flexos_platform::console::write_err(report.as_bytes());
    flexos_platform::process_abort()
}

impl Drop for Callback {
    /// A callback dropped without being called unregisters its closure (in
    /// its owner's compartment, where the closure is dropped too).
    fn drop(&mut self) {
        let (owner, slot, tag) = (self.owner, self.slot, self.tag);
        if owner < compartment::MAX_COMPARTMENTS {
            drop(crate::switch_to(owner, move || take(owner, slot, tag)));
        }
    }
}

// SAFETY: the handle holds no pointer (the closure stays in its owner's
// registry), and running it switches back to the owner's compartment
// first. It cannot be encoded: a closure is code and data of its owner's
// address space, so it crosses only gates inside one domain; a remote gate
// refuses it.
unsafe impl Crossing for Callback {
    // Integers only: any owner, slot and tag is a value, which the owner
    // checks before it runs anything.
    const PLAIN: bool = true;
    const MAX_ENCODED: usize = 0;
    fn encode(&self, w: &mut Writer) {
        w.unencodable("a Callback (a closure) cannot cross into another process or VM");
    }
    fn decode(_: &mut Reader) -> Option<Self> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Crossing + PartialEq + core::fmt::Debug>(v: T) {
        let mut buf = [core::mem::MaybeUninit::uninit(); 512];
        let mut w = Writer::new(&mut buf);
        v.encode(&mut w);
        let n = w.finish().unwrap();
        let mut r = Reader::new(&w.written()[..n]);
        assert_eq!(T::decode(&mut r), Some(v));
        assert!(r.is_empty());
    }

    #[test]
    fn values_survive_encoding() {
        roundtrip(0x1234_5678_9abc_def0u64);
        roundtrip(-5i32);
        roundtrip(usize::MAX);
        roundtrip((true, 'x', 3u8));
        roundtrip(Some(Ok::<u32, i64>(7)));
        roundtrip(Some(Err::<u32, i64>(-7)));
        roundtrip(None::<u16>);
        roundtrip([1u16, 2, 3]);
        roundtrip(());
    }

    #[test]
    fn malformed_bytes_do_not_decode() {
        assert_eq!(bool::decode(&mut Reader::new(&[2])), None);
        assert_eq!(char::decode(&mut Reader::new(&0xd800u32.to_le_bytes())), None);
        assert_eq!(u64::decode(&mut Reader::new(&[1, 2, 3])), None, "too short");
        assert_eq!(Option::<u8>::decode(&mut Reader::new(&[7, 1])), None, "bad tag");
        assert!(Callback::decode(&mut Reader::new(&[])).is_none());
        let mut buf = [core::mem::MaybeUninit::uninit(); 8];
        let mut w = Writer::new(&mut buf);
        Callback::new(crate::bench::caller(), || {}).encode(&mut w);
        assert!(w.finish().unwrap_err().contains("Callback"));
    }
}
