//! The body of a proxied stream: decrypted events pass through as the E2EE layer releases them;
//! a failure after the head was sent becomes one OpenAI-shaped error event, then the end; the
//! end of the stream triggers the receipt check (and, in before-release mode, holds `[DONE]`
//! until it passed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::error::{BoxError, Error};
use crate::proxy::errors::ProxyError;

/// What runs when the stream ended cleanly: verifies its receipt. `Ok` releases the held
/// `[DONE]` (if any).
pub(crate) type OnEnd = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send>;

enum State {
    Streaming,
    /// The inner body ended; the receipt check runs (before-release: `[DONE]` held).
    Checking(Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>),
    Done,
}

/// A proxied SSE body.
pub(crate) struct ProxyStream<B> {
    inner: Pin<Box<B>>,
    on_end: Option<OnEnd>,
    hold_done: bool,
    held: Option<Bytes>,
    state: State,
}

impl<B> ProxyStream<B> {
    /// `hold_done`: keep the terminal `[DONE]` event back until `on_end` succeeded.
    pub(crate) fn new(inner: B, on_end: Option<OnEnd>, hold_done: bool) -> Self {
        ProxyStream { inner: Box::pin(inner), on_end, hold_done, held: None, state: State::Streaming }
    }
}

/// Whether an SSE event (as the layer re-frames it: one event per frame) is the `[DONE]` terminal.
fn is_done_event(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        let Some(rest) = line.strip_prefix(b"data:") else { return false };
        rest.strip_prefix(b" ").unwrap_or(rest) == b"[DONE]"
    })
}

impl<B> Body for ProxyStream<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Checking(check) => {
                    let outcome = ready!(check.as_mut().poll(cx));
                    this.state = State::Done;
                    return Poll::Ready(match outcome {
                        Ok(()) => this.held.take().map(|d| Ok(Frame::data(d))),
                        Err(e) => {
                            this.held = None;
                            Some(Ok(Frame::data(ProxyError::from_error(&e).sse_event())))
                        }
                    });
                }
                State::Streaming => match ready!(this.inner.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if this.hold_done && is_done_event(&data) => this.held = Some(data),
                        Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Err(_) => continue, // trailers: dropped
                    },
                    Some(Err(e)) => {
                        // The head is gone: tell the client in-band, then end the stream.
                        let err = ProxyError::from_box(&e);
                        tracing::warn!(kind = err.kind, "the stream failed: {}", err.message);
                        this.state = State::Done;
                        this.held = None;
                        return Poll::Ready(Some(Ok(Frame::data(err.sse_event()))));
                    }
                    None => match this.on_end.take() {
                        Some(on_end) => this.state = State::Checking(on_end()),
                        None => {
                            this.state = State::Done;
                            return Poll::Ready(this.held.take().map(|d| Ok(Frame::data(d))));
                        }
                    },
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_events() {
        assert!(is_done_event(b"data: [DONE]\n\n"));
        assert!(is_done_event(b"data:[DONE]\n\n"));
        assert!(!is_done_event(b"data: {\"x\":\"[DONE]\"}\n\n"));
        assert!(!is_done_event(b": comment [DONE]\n\n"));
    }
}
