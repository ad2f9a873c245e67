//! Slices of shared, immutable buffers.
//!
//! The events of one POSTed body are ranges of that body, and a record's data
//! is the same range: one allocation per body instead of one per event. With
//! musl's malloc, copying each event of a 1,000-event body into its own
//! allocation cost ~75 mmap/munmap pairs per body (each munmap a TLB shootdown
//! across the threads), plus a copy and a cross-thread free per event.
//!
//! A slice keeps its whole buffer alive; `compact` copies the slices still
//! needed out of a buffer that is mostly unneeded (filtered events), so the
//! memory held stays close to what the buffer cap counts.

use std::ops::Deref;
use std::sync::Arc;

/// An immutable byte slice sharing its buffer.
#[derive(Clone)]
pub struct ByteSlice {
    buf: Arc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl ByteSlice {
    /// The range of `buf` that `part` occupies; `part` must lie inside it.
    pub fn slice_of(buf: &Arc<Vec<u8>>, part: &[u8]) -> ByteSlice {
        let start = (part.as_ptr() as usize)
            .checked_sub(buf.as_ptr() as usize)
            .filter(|s| s + part.len() <= buf.len())
            .expect("the part lies inside the buffer");
        ByteSlice {
            buf: buf.clone(),
            start,
            end: start + part.len(),
        }
    }

    /// Bytes of the buffer this slice keeps alive beyond its own.
    pub fn excess(&self) -> usize {
        self.buf.len() - (self.end - self.start)
    }
}

impl Deref for ByteSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

impl From<Vec<u8>> for ByteSlice {
    fn from(v: Vec<u8>) -> ByteSlice {
        let end = v.len();
        ByteSlice {
            buf: Arc::new(v),
            start: 0,
            end,
        }
    }
}

impl From<Box<[u8]>> for ByteSlice {
    fn from(b: Box<[u8]>) -> ByteSlice {
        ByteSlice::from(b.into_vec())
    }
}

impl From<&[u8]> for ByteSlice {
    fn from(b: &[u8]) -> ByteSlice {
        ByteSlice::from(b.to_vec())
    }
}

impl PartialEq for ByteSlice {
    fn eq(&self, other: &ByteSlice) -> bool {
        **self == **other
    }
}

impl Eq for ByteSlice {}

impl std::fmt::Debug for ByteSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// Shared UTF-8 text: a `ByteSlice` that is always valid UTF-8, because they are
/// only ever made from a `str`.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(ByteSlice);

impl Text {
    /// The range of `buf` that `part` occupies; `part` must lie inside it.
    pub fn slice_of(buf: &Arc<Vec<u8>>, part: &str) -> Text {
        Text(ByteSlice::slice_of(buf, part.as_bytes()))
    }

    pub fn into_bytes(self) -> ByteSlice {
        self.0
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        // SAFETY: a Text is made only from a `str` (`slice_of`, `From`), whose
        // bytes the shared buffer never changes (it is immutable).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(ByteSlice::from(s.into_bytes()))
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::from(s.to_string())
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

/// Copies the slices into one new buffer of their own, so they stop keeping
/// their old buffers alive.
pub fn compact(slices: Vec<&mut ByteSlice>) {
    let mut buf = Vec::with_capacity(slices.iter().map(|b| b.len()).sum());
    let mut ranges = Vec::with_capacity(slices.len());
    for b in &slices {
        let start = buf.len();
        buf.extend_from_slice(b);
        ranges.push((start, buf.len()));
    }
    let buf = Arc::new(buf);
    for (b, (start, end)) in slices.into_iter().zip(ranges) {
        *b = ByteSlice {
            buf: buf.clone(),
            start,
            end,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_share_and_compact() {
        let body = Arc::new(b"[{\"a\":1},{\"b\":2},{\"c\":3}]".to_vec());
        let text = std::str::from_utf8(&body).unwrap();
        let a = Text::slice_of(&body, &text[1..8]);
        let c = Text::slice_of(&body, &text[17..24]);
        assert_eq!((&*a, &*c), ("{\"a\":1}", "{\"c\":3}"));
        assert_eq!(Arc::strong_count(&body), 3);
        let (mut a, mut c) = (a.into_bytes(), c.into_bytes());
        assert_eq!(a.excess(), body.len() - 7);
        compact(vec![&mut a, &mut c]);
        assert_eq!((&*a, &*c), (&b"{\"a\":1}"[..], &b"{\"c\":3}"[..]));
        assert_eq!(Arc::strong_count(&body), 1, "the body is no longer held");
        assert_eq!(a.excess(), 7, "both share one 14-byte buffer");
        assert_eq!(ByteSlice::from(b"x".to_vec()).excess(), 0);
    }

    #[test]
    #[should_panic(expected = "inside the buffer")]
    fn a_part_from_elsewhere_is_refused() {
        let body = Arc::new(b"abc".to_vec());
        ByteSlice::slice_of(&body, b"elsewhere");
    }
}
