//! Pass-through body frames, converted to `Bytes` data and a boxed error; bodies read whole.

use std::task::Poll;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;

use crate::error::BoxError;

/// A pass-through body's frame with its data as `Bytes` (no copy when it already is) and its
/// error boxed.
pub(crate) fn bytes_frame<D: Buf, E: Into<BoxError>>(
    poll: Poll<Option<Result<Frame<D>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    poll.map(|f| f.map(|r| r.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))).map_err(Into::into)))
}

/// A body read whole, up to a limit. A body that arrives as one data frame (a buffered
/// request, most buffered answers) is kept as it came, without a copy; a second frame moves
/// everything into one buffer.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    first: Option<Bytes>,
    rest: BytesMut,
    len: usize,
}

/// More than the limit arrived.
#[derive(Debug)]
pub(crate) struct TooLarge;

impl Collector {
    /// Add one frame's data; fails once more than `limit` bytes arrived in all.
    pub(crate) fn push(&mut self, mut data: impl Buf, limit: usize) -> Result<(), TooLarge> {
        let n = data.remaining();
        if self.len + n > limit {
            return Err(TooLarge);
        }
        self.len += n;
        if self.len == n && self.first.is_none() {
            self.first = Some(data.copy_to_bytes(n));
            return Ok(());
        }
        if let Some(first) = self.first.take() {
            self.rest.reserve(self.len);
            self.rest.extend_from_slice(&first);
        }
        self.rest.put(data);
        Ok(())
    }

    /// Everything collected (the collector is left empty).
    pub(crate) fn take(&mut self) -> Bytes {
        self.len = 0;
        match self.first.take() {
            Some(first) => first,
            None => std::mem::take(&mut self.rest).freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_kept_and_more_are_joined_within_the_limit() {
        let one = Bytes::from_static(b"whole body");
        let mut c = Collector::default();
        c.push(one.clone(), 10).unwrap();
        let got = c.take();
        assert_eq!(got, one);
        assert_eq!(got.as_ptr(), one.as_ptr(), "a single frame is not copied");

        let mut c = Collector::default();
        for part in [&b""[..], b"ab", b"", b"cde", b"f"] {
            c.push(part, 6).unwrap();
        }
        assert_eq!(c.len, 6);
        assert_eq!(c.take(), Bytes::from_static(b"abcdef"));
        assert_eq!(c.take(), Bytes::new());

        let mut c = Collector::default();
        c.push(&b"abc"[..], 4).unwrap();
        assert!(c.push(&b"de"[..], 4).is_err());
        assert!(Collector::default().push(&b"abcde"[..], 4).is_err());
    }
}
