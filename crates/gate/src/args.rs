//! Applying a gate's argument tuple to the callee's function.

/// An argument tuple that can be applied to a function `F` returning `R`.
pub trait Args<F, R> {
    /// Calls `f` with the tuple's elements as arguments.
    fn apply(self, f: F) -> R;
}

macro_rules! impl_args {
    ($($name:ident),*) => {
        impl<Func, Ret, $($name),*> Args<Func, Ret> for ($($name,)*)
        where
            Func: FnOnce($($name),*) -> Ret,
        {
            #[inline(always)]
            #[allow(non_snake_case)]
            fn apply(self, f: Func) -> Ret {
                let ($($name,)*) = self;
                f($($name),*)
            }
        }
    };
}

impl_args!();
impl_args!(A);
impl_args!(A, B);
impl_args!(A, B, C);
impl_args!(A, B, C, D);
impl_args!(A, B, C, D, E);
impl_args!(A, B, C, D, E, G);
impl_args!(A, B, C, D, E, G, H);
