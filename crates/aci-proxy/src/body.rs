//! The body of a proxied stream: decrypted events pass through as the E2EE stack releases them
//! (in before-release mode its `[DONE]` comes only after the receipt verified); a failure after
//! the head was sent becomes one OpenAI-shaped error event, then the end, so the client never
//! mistakes a broken stream for a complete one; a clean end starts the receipt check. A stream
//! that runs past the request timeout, or is still open when a shutdown's drain time ran out,
//! ends the same way, with an error event. Its access-log line is written when it ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::access::ExchangeLog;
use crate::errors::ProxyError;
use crate::ops::AbortFuture;
use tower_aci::error::{BoxError, Error, ErrorKind};

/// Runs once when the stream ended cleanly.
pub(crate) type OnEnd = Box<dyn FnOnce() + Send>;
/// Runs once when the stream failed, with the kind of the crate error, if it was one.
pub(crate) type OnFailure = Box<dyn FnOnce(Option<ErrorKind>) + Send>;

/// A proxied SSE body.
pub(crate) struct ProxyStream<B> {
    inner: Pin<Box<B>>,
    on_end: Option<OnEnd>,
    on_failure: Option<OnFailure>,
    done: bool,
    abort: AbortFuture,
    log: Option<ExchangeLog>,
}

impl<B> ProxyStream<B> {
    pub(crate) fn new(
        inner: B,
        on_end: Option<OnEnd>,
        on_failure: OnFailure,
        abort: AbortFuture,
        mut log: ExchangeLog,
    ) -> Self {
        log.stream_opened();
        ProxyStream { inner: Box::pin(inner), on_end, on_failure: Some(on_failure), done: false, abort, log: Some(log) }
    }

    /// End the stream with an error event.
    fn fail(&mut self, err: &ProxyError, kind: Option<ErrorKind>, outcome: &'static str) -> Bytes {
        tracing::warn!(kind = err.kind, "the stream failed: {}", err.message);
        self.done = true;
        if let Some(f) = self.on_failure.take() {
            f(kind);
        }
        if let Some(log) = self.log.take() {
            log.finish(outcome);
        }
        err.sse_event()
    }
}

impl<B> Body for ProxyStream<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(why) = this.abort.as_mut().poll(cx) {
            // Past the request timeout, or the drain time of a shutdown ran out.
            let event = this.fail(&why.error(), None, why.outcome());
            return Poll::Ready(Some(Ok(Frame::data(event))));
        }
        loop {
            return match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(log) = &mut this.log {
                            log.first_event();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(_) => continue, // trailers: dropped
                },
                Some(Err(e)) => {
                    // The head is gone: tell the client in-band, then end the stream.
                    let err = ProxyError::from_box(&e);
                    let event = this.fail(&err, Error::find(e.as_ref()).map(Error::kind), err.kind);
                    Poll::Ready(Some(Ok(Frame::data(event))))
                }
                None => {
                    this.done = true;
                    if let Some(f) = this.on_end.take() {
                        f();
                    }
                    if let Some(log) = this.log.take() {
                        log.finish("ok");
                    }
                    Poll::Ready(None)
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
