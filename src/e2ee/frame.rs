//! Pass-through body frames, converted to `Bytes` data and a boxed error.

use std::task::Poll;

use bytes::{Buf, Bytes};
use http_body::Frame;

use crate::error::BoxError;

/// A pass-through body's frame with its data as `Bytes` (no copy when it already is) and its
/// error boxed.
pub(crate) fn bytes_frame<D: Buf, E: Into<BoxError>>(
    poll: Poll<Option<Result<Frame<D>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    poll.map(|f| f.map(|r| r.map(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))).map_err(Into::into)))
}
