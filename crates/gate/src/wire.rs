//! The byte encoding of gate arguments and results in a remote call frame.
//!
//! A remote callee must not trust the bytes a caller wrote into shared
//! memory, so values are not copied bit for bit: every [`Crossing`](crate::Crossing)
//! type encodes itself into a [`Writer`] and decodes from a [`Reader`],
//! and decoding rejects what no value of the type could be (a `bool` of 2,
//! an unknown enum tag, a handle outside shared memory is caught later by
//! `validate`).

use core::mem::MaybeUninit;

/// Writes encoded values into a fixed buffer (which need not be
/// initialized: a call frame's buffers are not zeroed, for speed);
/// remembers when it ran out of room.
pub struct Writer<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    len: usize,
    overflowed: bool,
    unencodable: Option<&'static str>,
}

impl<'a> Writer<'a> {
    /// A writer filling `buf` from its start.
    pub fn new(buf: &'a mut [MaybeUninit<u8>]) -> Writer<'a> {
        Writer { buf, len: 0, overflowed: false, unencodable: None }
    }

    /// Appends `bytes`, or records an overflow when they do not fit.
    pub fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) if !self.overflowed => {
                // SAFETY: `dst` has exactly `bytes.len()` elements, and
                // MaybeUninit<u8> has the layout of u8.
                unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_mut_ptr().cast::<u8>(), bytes.len()) };
                self.len += bytes.len();
            }
            _ => self.overflowed = true,
        }
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        // SAFETY: the first `len` elements were written by `put`.
        unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.len) }
    }

    /// Records that a value cannot be encoded at all (`what` says which).
    pub fn unencodable(&mut self, what: &'static str) {
        self.unencodable.get_or_insert(what);
    }

    /// Bytes written so far, or why the encoding failed.
    pub fn finish(&self) -> Result<usize, &'static str> {
        match (self.unencodable, self.overflowed) {
            (Some(what), _) => Err(what),
            (None, true) => Err("the values do not fit into a call frame"),
            (None, false) => Ok(self.len),
        }
    }
}

/// Reads encoded values from bytes; every read is bounds-checked.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// The next `n` bytes, or `None` when fewer are left.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().expect("took exactly N bytes"))
    }

    /// Whether every byte was consumed (a well-formed frame has no trailing bytes).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_remembered_and_reads_are_bounded() {
        let mut buf = [MaybeUninit::uninit(); 4];
        let mut w = Writer::new(&mut buf);
        w.put(&[1, 2, 3]);
        assert_eq!(w.finish(), Ok(3));
        assert_eq!(w.written(), &[1, 2, 3]);
        w.put(&[4, 5]);
        assert!(w.finish().is_err());
        w.put(&[6]);
        assert!(w.finish().is_err(), "stays overflowed");
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.take(2), Some(&[1u8, 2][..]));
        assert_eq!(r.array::<2>(), None);
        assert_eq!(r.array::<1>(), Some([3]));
        assert!(r.is_empty());
    }
}
