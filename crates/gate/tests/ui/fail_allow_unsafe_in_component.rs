//! A component is `#![forbid(unsafe_code)]`: unlike `deny`, no `allow`
//! inside it can undo that, so it cannot declare a type fit to cross.
#![forbid(unsafe_code)]

struct Secret<'a>(&'a u64);

#[allow(unsafe_code)]
unsafe impl flexos_gate::Crossing for Secret<'_> {
    const MAX_ENCODED: usize = 0;
    fn encode(&self, _: &mut flexos_gate::wire::Writer<'_>) {}
    fn decode(_: &mut flexos_gate::wire::Reader<'_>) -> Option<Self> {
        None
    }
}

fn main() {}
