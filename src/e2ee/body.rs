use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::e2ee::config::Config;
use crate::e2ee::frame::{Collector, bytes_frame};
use crate::error::{BoxError, Error, ErrorKind};
use crate::protocol::request::ExchangeContext;
use crate::protocol::response::{DecryptedBody, decrypt_response};
use crate::protocol::stream::{StreamDecryptor, StreamOutput};
use crate::receipt::ResponseDigest;

pin_project! {
    /// The response body of [`E2ee`](crate::E2ee): decrypted JSON, a decrypted SSE stream, or
    /// the inner body untouched for pass-through requests.
    ///
    /// Decryption errors surface when the body is read, as a [`BoxError`] holding an
    /// [`Error`](crate::error::Error) (`Decrypt`, `MissingEncryption`, `Truncated`, `InBandError`, …).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough { #[pin] inner: B },
        Decrypting { #[pin] inner: B, state: Box<DecryptState> },
        Full { data: Option<Bytes> },
    }
}

struct DecryptState {
    mode: Mode,
    hasher: Sha256,
    digest: Arc<ResponseDigest>,
    inner_done: bool,
    finished: bool,
    strict: bool,
    /// A stream carried an in-band error: the rest of the wire is read (not decoded, at most
    /// [`MAX_DRAIN`] bytes) so the wire digest is final, then this error ends the body.
    draining: Option<(Error, usize)>,
    /// Generated content in clear was already warned about.
    warned: bool,
    counts: Option<Arc<crate::telemetry::FieldCounts>>,
}

/// Most bytes read after a stream's in-band error to complete the wire digest. The gateway
/// follows its error event with `data: [DONE]\n\n` only.
const MAX_DRAIN: usize = 64 * 1024;

/// The strict-mode error for generated content in clear at `paths`.
fn cleartext_error(what: &str, paths: &[String]) -> Error {
    const SHOWN: usize = 8;
    let mut list = paths.iter().take(SHOWN).map(String::as_str).collect::<Vec<_>>().join(", ");
    if paths.len() > SHOWN {
        list.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    Error::new(ErrorKind::Cleartext, format!("strict mode: {what} carries generated content in clear at {list}"))
}

/// A large event's decryption on the blocking pool; it hands the decryptor back with the event.
type SseTask = JoinHandle<(Box<StreamDecryptor>, Result<StreamOutput, Error>)>;

enum Mode {
    Buffered {
        ctx: Option<ExchangeContext>,
        buf: Collector,
        limit: usize,
        blocking_threshold: usize,
        task: Option<JoinHandle<Result<DecryptedBody, Error>>>,
        output: Option<Bytes>,
    },
    Sse {
        /// `None` while a large event is decrypted on the blocking pool (`task`).
        dec: Option<Box<StreamDecryptor>>,
        task: Option<SseTask>,
        /// Events whose data exceed this many bytes are decrypted on Tokio's blocking pool.
        blocking_threshold: usize,
    },
}

impl<B> ResponseBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        ResponseBody { kind: Kind::Passthrough { inner } }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        ResponseBody { kind: Kind::Full { data: (!data.is_empty()).then_some(data) } }
    }

    fn decrypting(inner: B, mode: Mode, config: &Config, digest: Arc<ResponseDigest>) -> Self {
        let state = Box::new(DecryptState {
            mode,
            hasher: Sha256::new(),
            digest,
            inner_done: false,
            finished: false,
            strict: config.strict,
            draining: None,
            warned: false,
            counts: None,
        });
        ResponseBody { kind: Kind::Decrypting { inner, state } }
    }

    pub(crate) fn buffered(inner: B, ctx: ExchangeContext, config: &Config, digest: Arc<ResponseDigest>) -> Self {
        let mode = Mode::Buffered {
            ctx: Some(ctx),
            buf: Collector::default(),
            limit: config.max_response_body,
            blocking_threshold: config.blocking_threshold,
            task: None,
            output: None,
        };
        Self::decrypting(inner, mode, config, digest)
    }

    pub(crate) fn sse(inner: B, ctx: ExchangeContext, config: &Config, digest: Arc<ResponseDigest>) -> Self {
        let mode = Mode::Sse {
            dec: Some(Box::new(StreamDecryptor::new(ctx, config.sse_limits))),
            task: None,
            blocking_threshold: config.blocking_threshold,
        };
        Self::decrypting(inner, mode, config, digest)
    }

    /// Count the fields this body opens into `counts` (the exchange's [`FieldCounts`]).
    ///
    /// [`FieldCounts`]: crate::telemetry::FieldCounts
    pub(crate) fn counting(mut self, counts: Arc<crate::telemetry::FieldCounts>) -> Self {
        if let Kind::Decrypting { state, .. } = &mut self.kind {
            state.counts = Some(counts);
        }
        self
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Decrypting { state, .. } => match state.mode {
                Mode::Buffered { .. } => "buffered",
                Mode::Sse { .. } => "sse",
            },
            Kind::Full { .. } => "full",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

fn decrypt_now(ctx: ExchangeContext, body: Bytes, strict: bool) -> Result<DecryptedBody, Error> {
    let span = tracing::debug_span!("aci.e2ee.decrypt", endpoint = ctx.endpoint().path(), bytes = body.len());
    let _e = span.enter();
    let out = decrypt_response(&ctx, body)?;
    if !out.cleartext_fields.is_empty() {
        if strict {
            return Err(cleartext_error("the response", &out.cleartext_fields));
        }
        tracing::warn!(fields = ?out.cleartext_fields, "the gateway returned generated content in clear");
    }
    tracing::debug!(fields = out.decrypted_fields, "response decrypted");
    Ok(out)
}

impl DecryptState {
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.finished = true;
        crate::telemetry::error(&e);
        Poll::Ready(Some(Err(e.into())))
    }

    /// Called once the inner body ended: the wire digest is final.
    fn end_of_wire(&mut self) {
        self.inner_done = true;
        let h = std::mem::take(&mut self.hasher);
        self.digest.set(h.finalize().into());
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Passthrough { inner } => bytes_frame(inner.poll_frame(cx)),
            KindProj::Decrypting { mut inner, state } => {
                if state.finished {
                    return Poll::Ready(None);
                }
                loop {
                    // 1. Hand out whatever is ready.
                    match &mut state.mode {
                        Mode::Sse { .. } if state.draining.is_some() => {
                            if state.inner_done {
                                let (e, _) = state.draining.take().expect("checked");
                                return state.fail(e);
                            }
                        }
                        Mode::Sse { dec, task, blocking_threshold } => {
                            let next = if let Some(t) = task {
                                // A large event is being decrypted on the blocking pool: nothing
                                // more is read or released until it is back (order and
                                // back-pressure kept).
                                let joined = match Pin::new(t).poll(cx) {
                                    Poll::Pending => return Poll::Pending,
                                    Poll::Ready(j) => j,
                                };
                                *task = None;
                                match joined {
                                    Ok((d, out)) => {
                                        *dec = Some(d);
                                        out.map(Some)
                                    }
                                    Err(join) => {
                                        return state.fail(
                                            Error::new(ErrorKind::Decrypt, "decryption task failed").with_source(join),
                                        );
                                    }
                                }
                            } else {
                                let Some(d) = dec.as_mut() else { return state.fail(Error::decrypt()) };
                                match d.next_event() {
                                    Err(e) => Err(e),
                                    Ok(None) => Ok(None),
                                    Ok(Some(event)) => {
                                        let size: usize = event.data_lines.iter().map(Bytes::len).sum();
                                        match tokio::runtime::Handle::try_current() {
                                            Ok(rt) if size > *blocking_threshold => {
                                                let Some(mut d) = dec.take() else {
                                                    return state.fail(Error::decrypt());
                                                };
                                                *task = Some(rt.spawn_blocking(move || {
                                                    let out = crate::telemetry::timed_event(|| d.process(event));
                                                    (d, out)
                                                }));
                                                continue;
                                            }
                                            _ => crate::telemetry::timed_event(|| d.process(event)).map(Some),
                                        }
                                    }
                                }
                            };
                            let Some(dec) = dec.as_mut() else { return state.fail(Error::decrypt()) };
                            match next {
                                Ok(Some(StreamOutput::Event(bytes))) => {
                                    crate::telemetry::FieldCounts::opened(
                                        &state.counts,
                                        dec.last_decrypted_paths().len(),
                                    );
                                    let clear = dec.last_cleartext_paths();
                                    if !clear.is_empty() {
                                        if state.strict {
                                            // Fail at this event: it is never released.
                                            let e = cleartext_error("the stream", clear);
                                            return state.fail(e);
                                        }
                                        if !state.warned {
                                            state.warned = true;
                                            tracing::warn!(fields = ?clear, "the stream carries generated content in clear");
                                        }
                                    }
                                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                                }
                                Ok(Some(StreamOutput::InBandError(_, e))) => {
                                    tracing::debug!(error_type = ?e.gateway_error_type(), "stream carried an error event");
                                    if state.inner_done {
                                        return state.fail(e);
                                    }
                                    // Read the rest of the wire first, so that the receipt (which
                                    // signs all of it) can still be checked.
                                    state.draining = Some((e, 0));
                                    continue;
                                }
                                Err(e) => return state.fail(e),
                                Ok(None) if state.inner_done => {
                                    let r = dec.finish();
                                    state.finished = true;
                                    return match r {
                                        Ok(end) => {
                                            tracing::debug!(events = end.decrypted_events, "stream ended cleanly");
                                            Poll::Ready(None)
                                        }
                                        Err(e) => {
                                            tracing::debug!(kind = ?e.kind(), "stream ended badly");
                                            Poll::Ready(Some(Err(e.into())))
                                        }
                                    };
                                }
                                Ok(None) => {}
                            }
                        }
                        Mode::Buffered { ctx, buf, blocking_threshold, task, output, .. } => {
                            if let Some(out) = output.take() {
                                state.finished = true;
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            if let Some(t) = task {
                                let joined = match Pin::new(t).poll(cx) {
                                    Poll::Pending => return Poll::Pending,
                                    Poll::Ready(j) => j,
                                };
                                *task = None;
                                match joined {
                                    Ok(Ok(d)) => {
                                        crate::telemetry::FieldCounts::opened(&state.counts, d.decrypted_fields);
                                        *output = Some(d.body);
                                        continue;
                                    }
                                    Ok(Err(e)) => return state.fail(e),
                                    Err(join) => {
                                        return state.fail(
                                            Error::new(ErrorKind::Decrypt, "decryption task failed").with_source(join),
                                        );
                                    }
                                }
                            }
                            if state.inner_done {
                                let Some(ctx) = ctx.take() else { return state.fail(Error::decrypt()) };
                                let body = buf.take();
                                let strict = state.strict;
                                match tokio::runtime::Handle::try_current() {
                                    Ok(rt) if body.len() > *blocking_threshold => {
                                        *task = Some(rt.spawn_blocking(move || decrypt_now(ctx, body, strict)));
                                    }
                                    _ => match decrypt_now(ctx, body, strict) {
                                        Ok(d) => {
                                            crate::telemetry::FieldCounts::opened(&state.counts, d.decrypted_fields);
                                            *output = Some(d.body);
                                        }
                                        Err(e) => return state.fail(e),
                                    },
                                }
                                continue;
                            }
                        }
                    }
                    if state.inner_done {
                        // Buffered output was handed out (or empty) above.
                        state.finished = true;
                        return Poll::Ready(None);
                    }
                    // 2. Read more wire bytes; tee them into the digest before parsing.
                    match inner.as_mut().poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(None) => state.end_of_wire(),
                        Poll::Ready(Some(Err(e))) => {
                            if let Some((e, _)) = state.draining.take() {
                                return state.fail(e);
                            }
                            let e = Error::new(ErrorKind::Transport, "reading the response body failed")
                                .with_source(e.into());
                            return state.fail(e);
                        }
                        Poll::Ready(Some(Ok(frame))) => {
                            let Ok(mut data) = frame.into_data() else { continue }; // trailers: dropped
                            let bytes = data.copy_to_bytes(data.remaining());
                            state.hasher.update(&bytes);
                            if let Some((_, drained)) = &mut state.draining {
                                *drained += bytes.len();
                                if *drained > MAX_DRAIN {
                                    // Not the short tail the gateway sends: give up on the digest.
                                    let (e, _) = state.draining.take().expect("checked");
                                    return state.fail(e);
                                }
                                continue;
                            }
                            match &mut state.mode {
                                Mode::Sse { dec: Some(dec), .. } => dec.push_bytes(bytes),
                                // Not reached: nothing is read while a decryption task runs.
                                Mode::Sse { dec: None, .. } => return state.fail(Error::decrypt()),
                                Mode::Buffered { buf, limit, .. } => {
                                    if buf.push(bytes, *limit).is_err() {
                                        return state.fail(Error::new(
                                            ErrorKind::TooLarge,
                                            "response body exceeds the E2EE layer's limit",
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { inner } => inner.is_end_stream(),
            Kind::Decrypting { state, .. } => state.finished,
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { inner } => inner.size_hint(),
            Kind::Decrypting { state, .. } => match &state.mode {
                Mode::Buffered { output: Some(o), .. } => SizeHint::with_exact(o.len() as u64),
                _ if state.finished => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use http_body_util::Full;
    use serde_json::json;

    use super::*;
    use crate::attest::{KeyHandle, SystemClock};
    use crate::e2ee::E2eeLayer;
    use crate::protocol::Endpoint;
    use crate::protocol::aad;
    use crate::protocol::suite::{SecretKey, Suite, seal};

    /// A sealed embeddings answer of 100 fields (a few milliseconds of secp256k1 work).
    fn large_answer() -> Bytes {
        let client = SecretKey::from_bytes(Suite::Secp256k1, &[3; 32]).unwrap().public_key();
        let data: Vec<_> = (0..100)
            .map(|i| {
                let plain = json!([0.5, -0.25, i]).to_string();
                let aad = aad::response(Suite::Secp256k1, &format!("data.{i}.embedding"), "", "e", "n", 1);
                json!({"index": i, "embedding": seal(&client, plain.as_bytes(), &aad, &mut rand_core::OsRng)})
            })
            .collect();
        Bytes::from(serde_json::to_vec(&json!({"data": data})).unwrap())
    }

    fn body(threshold: usize) -> ResponseBody<Full<Bytes>> {
        let layer = E2eeLayer::new(KeyHandle::empty(Arc::new(SystemClock))).blocking_threshold(threshold);
        let ctx = ExchangeContext::new(
            Endpoint::Embeddings,
            SecretKey::from_bytes(Suite::Secp256k1, &[3; 32]).unwrap(),
            "e",
            "n",
            1,
        );
        ResponseBody::buffered(Full::new(large_answer()), ctx, &layer.config, Arc::default())
    }

    /// A stream of a small event, an event of `big` content fields (each 2 KiB of text), a small
    /// one and `[DONE]`, all in one body.
    fn stream(big: usize, threshold: usize) -> ResponseBody<Full<Bytes>> {
        let client = SecretKey::from_bytes(Suite::X25519, &[5; 32]).unwrap();
        let public = client.public_key();
        let mut ctx = ExchangeContext::new(Endpoint::ChatCompletions, client, "m", "n", 1);
        ctx.stream = true;
        let layer = E2eeLayer::new(KeyHandle::empty(Arc::new(SystemClock))).blocking_threshold(threshold);
        let event = |id: &str, texts: Vec<String>| {
            let choices: Vec<_> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let aad = aad::response(Suite::X25519, &format!("choices.{i}.delta.content"), id, "m", "n", 1);
                    json!({"index": i, "delta": {"content": seal(&public, t.as_bytes(), &aad, &mut rand_core::OsRng)}})
                })
                .collect();
            format!("data: {}\n\n", json!({"id": id, "choices": choices}))
        };
        let large: Vec<String> = (0..big).map(|i| format!("{i}:{}", "L".repeat(2048))).collect();
        let wire = [
            event("a", vec!["first".into()]),
            event("b", large),
            event("c", vec!["third".into()]),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        ResponseBody::sse(Full::new(Bytes::from(wire)), ctx, &layer.config, Arc::default())
    }

    /// The decrypted contents of each event of a stream body, in the order released.
    async fn contents(mut body: ResponseBody<Full<Bytes>>) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let data = frame.unwrap().into_data().unwrap();
            let text = std::str::from_utf8(&data).unwrap();
            let payload = text.trim_end().strip_prefix("data: ").unwrap();
            if payload == "[DONE]" {
                out.push(vec!["[DONE]".to_owned()]);
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            let texts = v["choices"].as_array().unwrap().iter();
            out.push(texts.map(|c| c["delta"]["content"].as_str().unwrap().to_owned()).collect());
        }
        out
    }

    /// A large SSE event (64 fields, 128 KiB) is decrypted on the blocking pool: the poll that
    /// reaches it returns `Pending` (the executor thread is free), the small event after it is
    /// not released before it, and every event decrypts to its text.
    #[tokio::test(flavor = "current_thread")]
    async fn large_sse_events_are_decrypted_on_the_blocking_pool_in_order() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut body = stream(64, crate::e2ee::config::DEFAULT_BLOCKING_THRESHOLD);
        // The first (small) event is decrypted inline.
        assert!(matches!(Pin::new(&mut body).poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));
        // The large one goes to the blocking pool.
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending(), "the large event was decrypted inline");
        let rest = contents(body).await;
        assert_eq!(rest.len(), 3, "large, third, [DONE]");
        assert_eq!(rest[0].len(), 64);
        for (i, text) in rest[0].iter().enumerate() {
            assert_eq!(text, &format!("{i}:{}", "L".repeat(2048)));
        }
        assert_eq!(rest[1], vec!["third".to_owned()]);
        assert_eq!(rest[2], vec!["[DONE]".to_owned()]);

        // The same stream decrypted inline gives the same events.
        let all = contents(stream(64, usize::MAX)).await;
        assert_eq!(all[0], vec!["first".to_owned()]);
        assert_eq!(all[1..], rest[..]);
    }

    /// Above the threshold the first poll hands the work to the blocking pool and returns
    /// `Pending` (the executor thread is free); below it, decryption happens inline.
    #[tokio::test(flavor = "current_thread")]
    async fn large_buffered_bodies_are_decrypted_on_the_blocking_pool() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut inline = body(usize::MAX);
        assert!(matches!(Pin::new(&mut inline).poll_frame(&mut cx), Poll::Ready(Some(Ok(_)))));

        let mut offloaded = body(0);
        assert!(Pin::new(&mut offloaded).poll_frame(&mut cx).is_pending(), "decryption was not offloaded");
        let out = http_body_util::BodyExt::collect(offloaded).await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][99]["embedding"], json!([0.5, -0.25, 99]));
    }
}
