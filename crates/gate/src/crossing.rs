//! What may cross a gate.

use crate::wire::{Reader, Writer};
use flexos_platform::compartment;

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
    fn encode(&self, w: &mut Writer) {
        (*self as u64).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        u64::decode(r).and_then(|v| usize::try_from(v).ok())
    }
}

// SAFETY: as for usize.
unsafe impl Crossing for isize {
    fn encode(&self, w: &mut Writer) {
        (*self as i64).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        i64::decode(r).and_then(|v| isize::try_from(v).ok())
    }
}

// SAFETY: nothing to carry.
unsafe impl Crossing for () {
    fn encode(&self, _: &mut Writer) {}
    fn decode(_: &mut Reader) -> Option<Self> {
        Some(())
    }
}

// SAFETY: one byte, only 0 and 1 decode.
unsafe impl Crossing for bool {
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
    fn encode(&self, w: &mut Writer) {
        (*self as u32).encode(w)
    }
    fn decode(r: &mut Reader) -> Option<Self> {
        char::from_u32(u32::decode(r)?)
    }
}

// SAFETY: crosses iff its content does; validation is delegated.
unsafe impl<T: Crossing> Crossing for Option<T> {
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
pub struct Callback {
    owner: usize,
    f: Box<dyn FnOnce()>,
}

impl Callback {
    /// Wraps `f`, to be run in the compartment that is running now.
    pub fn new(f: impl FnOnce() + 'static) -> Callback {
        Callback { owner: compartment::current(), f: Box::new(f) }
    }

    /// The compartment the code belongs to.
    pub fn owner(&self) -> usize {
        self.owner
    }

    /// Runs the code in its owner's compartment.
    pub fn call(self) {
        let Callback { owner, f } = self;
        crate::switch_to(owner, f)
    }
}

// SAFETY: the closure is opaque to the receiver, which can only run it, and
// running it switches back to the owner's compartment first. It cannot be
// encoded: a closure is code and data of its owner's address space, so it
// crosses only gates inside one domain (fcall); a remote gate refuses it.
unsafe impl Crossing for Callback {
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
        Callback::new(|| {}).encode(&mut w);
        assert!(w.finish().unwrap_err().contains("Callback"));
    }
}
