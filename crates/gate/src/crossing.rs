//! What may cross a gate.

use flexos_platform::compartment;

/// A type whose values may be passed to or returned from another
/// compartment: plain data, or handles to shared memory.
///
/// # Safety
/// An implementation promises that a value of the type gives no access to
/// memory private to the compartment that made it: it contains no
/// references or pointers except shared-memory handles, which
/// [`Crossing::validate`] checks.
pub unsafe trait Crossing {
    /// Whether every shared handle inside lies in shared memory. Called on
    /// the receiving side of a cross-compartment gate.
    #[inline(always)]
    fn validate(&self) -> bool {
        true
    }
}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: a plain value without pointers.
        unsafe impl Crossing for $t {}
    )* };
}
plain!((), bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

// SAFETY: crosses iff its content does; validation is delegated.
unsafe impl<T: Crossing> Crossing for Option<T> {
    fn validate(&self) -> bool {
        self.as_ref().is_none_or(T::validate)
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
}

// SAFETY: crosses iff its elements do; validation is delegated.
unsafe impl<T: Crossing, const N: usize> Crossing for [T; N] {
    fn validate(&self) -> bool {
        self.iter().all(T::validate)
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
        crate::fcall(owner, f)
    }
}

// SAFETY: the closure is opaque to the receiver, which can only run it, and
// running it switches back to the owner's compartment first. (With the
// remote mechanisms it becomes an index into the owner's callback table.)
unsafe impl Crossing for Callback {}
