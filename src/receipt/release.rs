//! Verify before release: [`VerifyBeforeReleaseLayer`], above [`E2eeLayer`](crate::E2eeLayer),
//! hands out answers only once their receipt verified; for streams, `[DONE]` and the end of the
//! body wait for it, or, with [`hold_whole_stream`](VerifyBeforeReleaseLayer::hold_whole_stream),
//! the whole stream does.
//!
//! # What each receipt mode guarantees
//!
//! E2EE v2 does not authenticate answers (they are sealed to the client's ephemeral key, which
//! travels in clear): the attested TLS channel does, and so does the gateway's signed receipt
//! over the exact bytes. From weakest to strongest, for the caller of the stack:
//!
//! | mode | a buffered answer | a stream | cost |
//! | --- | --- | --- | --- |
//! | off (no receipt checked) | released as decrypted | each event released as it authenticates | none |
//! | background (`Client`'s `ReceiptMode::Background`, `aci-proxy --receipts verify`) | released as decrypted; the receipt is checked after the body was read, and a failure is reported (logged, `ReceiptCheck`), too late to withhold anything | the same | none on the answer's path |
//! | before release (this layer, the default; `Client`'s `ReceiptMode::BeforeRelease`, `aci-proxy --receipts before-release`) | released only once its receipt verified; else the call's error, no byte released | each event released as it authenticates, but `[DONE]` and the end of the body only once the receipt verified; else the body ends with the receipt error. A forged, dropped, duplicated or reordered event may reach the caller before that error | the receipt fetch before `[DONE]` |
//! | whole stream (this layer with [`hold_whole_stream`](VerifyBeforeReleaseLayer::hold_whole_stream); `Client`'s `ReceiptMode::HoldUntilVerified`) | as before release | **no byte** released before the receipt verified: the stream is read to its end and held, its receipt fetched and verified, then released whole, in order; on any failure the body's first frame is the error | the whole stream's latency and up to `max_held` bytes of memory per stream (`TooLarge` beyond, with nothing released) |
//!
//! Every mode keeps what the layer below guarantees on its own: each field and event
//! authenticates under the exchange's key before any byte of it is released, and a stream that
//! does not reach `[DONE]` ends with an error.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::attest::KeyHandle;
use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::protocol::sse::{SseDecoder, SseLimits};
use crate::receipt::fetch::ReceiptClient;
use crate::receipt::record::ExchangeRecord;
use crate::receipt::verify::{ReceiptPolicy, VerifiedReceipt};

/// Verify before release: a layer, above [`E2eeLayer`](crate::E2eeLayer), that hands out an
/// answer only once the gateway's receipt for it verified. Applies [`VerifyBeforeRelease`].
///
/// ```no_run
/// # fn build<C, R>(keys: tower_aci::attest::KeyHandle, client: C, receipts: tower_aci::receipt::ReceiptClient<R>) {
/// use tower::ServiceBuilder;
/// use tower_aci::E2eeLayer;
/// use tower_aci::receipt::{ReceiptPolicy, VerifyBeforeReleaseLayer};
///
/// let svc = ServiceBuilder::new()
///     .layer(VerifyBeforeReleaseLayer::new(receipts, keys.clone(), ReceiptPolicy::new()))
///     .layer(E2eeLayer::new(keys))
///     .service(client);
/// # let _ = svc;
/// # }
/// ```
///
/// A buffered answer is read whole, its receipt fetched (with the request's own bearer token)
/// and verified; only then does the caller get the body, with the
/// [`VerifiedReceipt`](crate::receipt::VerifiedReceipt) in the
/// response's extensions. Any failure — decryption, receipt missing, signature, a hash that does
/// not match — is the call's error and no byte of the answer is released.
///
/// A stream's receipt exists only once the gateway sent the whole stream, and every encrypted
/// event authenticates on its own but not its place in the stream (see
/// [the stream module](crate::protocol::StreamDecryptor#what-a-streams-encryption-does-not-protect)): an
/// on-path attacker can drop, duplicate or reorder events undetected until the receipt's
/// response hash is compared. The layer offers two ways to release a stream:
///
/// - **By default** events are released as they authenticate, but the terminal
///   `data: [DONE]` event and the end of the body are **held** until the stream has been read to
///   its end, its receipt fetched and verified against the exact bytes received. Then `[DONE]`
///   and the end follow, and the [`StreamVerification`] in the response's extensions holds the
///   [`VerifiedReceipt`](crate::receipt::VerifiedReceipt). When the receipt does not verify, the
///   body ends with that error (kind [`Receipt`](crate::error::ErrorKind::Receipt)) instead of
///   `[DONE]`. A consumer that acts only on a complete stream (one that reached `[DONE]` and its
///   end) thus never acts on an unverified one; one that acts on each event as it arrives gets
///   the per-event guarantee only, and must treat a stream that ends in an error as
///   untrustworthy.
/// - **[`hold_whole_stream`](Self::hold_whole_stream)** releases no byte of the stream before
///   its receipt verified: the whole stream is held (bounded), then released in order; on any
///   failure the body's first frame is the error.
///
/// # What each receipt mode guarantees
///
/// | mode | a buffered answer | a stream | cost |
/// | --- | --- | --- | --- |
/// | off (no receipt checked) | released as decrypted | each event released as it authenticates | none |
/// | background (`Client`'s `ReceiptMode::Background`, `aci-proxy --receipts verify`) | released as decrypted; the receipt is checked once the body was read and a failure is reported, too late to withhold anything | the same | none on the answer's path |
/// | before release (this layer; `Client`'s `ReceiptMode::BeforeRelease`, `aci-proxy --receipts before-release`) | released only once its receipt verified; else the call's error, no byte released | events released as they authenticate; `[DONE]` and the end only once the receipt verified, else the body ends with the receipt's error. A forged, dropped, duplicated or reordered event may reach the caller before that error | the receipt fetch before `[DONE]` |
/// | whole stream ([`hold_whole_stream`](Self::hold_whole_stream); `Client`'s `ReceiptMode::HoldUntilVerified`) | as before release | **no byte** released before the receipt verified; then the whole stream, in order; on any failure the body's first frame is the error | the stream's whole latency, and up to `max_held` bytes of memory per stream (`TooLarge` beyond, nothing released) |
///
/// In every mode each field and event authenticates under the exchange's key before any byte
/// of it is released (the [`E2eeLayer`](crate::E2eeLayer) below), and a stream that does not
/// reach `[DONE]` ends with an error.
pub struct VerifyBeforeReleaseLayer<R, RQ = Full<Bytes>> {
    shared: Arc<Shared<R, RQ>>,
    /// `hold_whole_stream`: the most bytes of a stream held.
    hold: Option<usize>,
}

struct Shared<R, RQ> {
    receipts: ReceiptClient<R, RQ>,
    keys: KeyHandle,
    policy: ReceiptPolicy,
}

impl<R, RQ> VerifyBeforeReleaseLayer<R, RQ> {
    /// Verify receipts fetched with `receipts` against the keysets `keys` remembers, under
    /// `policy`.
    pub fn new(receipts: ReceiptClient<R, RQ>, keys: KeyHandle, policy: ReceiptPolicy) -> Self {
        VerifyBeforeReleaseLayer { shared: Arc::new(Shared { receipts, keys, policy }), hold: None }
    }

    /// Release no byte of a stream before its receipt verified: read the whole (decrypted)
    /// stream, holding at most `max_held` bytes of it, fetch and verify its receipt, then release
    /// it whole and in order. For callers who prefer waiting for the end of a stream to ever
    /// seeing a forged answer; the caller sees no event until the gateway finished.
    ///
    /// On any failure — an event that fails to decrypt, a truncated stream, a receipt that does
    /// not verify — the body's first frame is the error and nothing is released. A stream
    /// longer than `max_held` fails with [`TooLarge`](crate::error::ErrorKind::TooLarge) as soon as it
    /// exceeds it (no receipt is fetched; raise the bound, or use the default mode, which
    /// releases events as they authenticate). Buffered answers are unaffected: they are always
    /// released only after their receipt verified, bounded by the receipt client's
    /// [`max_release_body`](crate::receipt::ReceiptClient::max_release_body).
    ///
    /// ```no_run
    /// # fn build<C, R>(keys: tower_aci::attest::KeyHandle, client: C, receipts: tower_aci::receipt::ReceiptClient<R>) {
    /// use tower::ServiceBuilder;
    /// use tower_aci::E2eeLayer;
    /// use tower_aci::receipt::{ReceiptPolicy, VerifyBeforeReleaseLayer};
    ///
    /// let hold = VerifyBeforeReleaseLayer::new(receipts, keys.clone(), ReceiptPolicy::new())
    ///     .hold_whole_stream(64 << 20); // 64 MiB, as for a buffered answer
    /// let svc = ServiceBuilder::new().layer(hold).layer(E2eeLayer::new(keys)).service(client);
    /// # let _ = svc;
    /// # }
    /// ```
    pub fn hold_whole_stream(mut self, max_held: usize) -> Self {
        self.hold = Some(max_held);
        self
    }
}

impl<R, RQ> Clone for VerifyBeforeReleaseLayer<R, RQ> {
    fn clone(&self) -> Self {
        VerifyBeforeReleaseLayer { shared: self.shared.clone(), hold: self.hold }
    }
}

impl<R, RQ> fmt::Debug for VerifyBeforeReleaseLayer<R, RQ> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyBeforeReleaseLayer").field("policy", &self.shared.policy).finish_non_exhaustive()
    }
}

impl<S, R, RQ> Layer<S> for VerifyBeforeReleaseLayer<R, RQ> {
    type Service = VerifyBeforeRelease<S, R, RQ>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyBeforeRelease { inner, shared: self.shared.clone(), hold: self.hold }
    }
}

/// The verify-before-release service. Made by [`VerifyBeforeReleaseLayer`].
pub struct VerifyBeforeRelease<S, R, RQ = Full<Bytes>> {
    inner: S,
    shared: Arc<Shared<R, RQ>>,
    hold: Option<usize>,
}

impl<S: Clone, R, RQ> Clone for VerifyBeforeRelease<S, R, RQ> {
    fn clone(&self) -> Self {
        VerifyBeforeRelease { inner: self.inner.clone(), shared: self.shared.clone(), hold: self.hold }
    }
}

impl<S, R, RQ> fmt::Debug for VerifyBeforeRelease<S, R, RQ> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyBeforeRelease").finish_non_exhaustive()
    }
}

impl<S, R, RQ, ReqBody, ResBody, RB> Service<Request<ReqBody>> for VerifyBeforeRelease<S, R, RQ>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    R: Service<Request<RQ>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    RQ: From<Bytes> + Send + 'static,
    R::Error: Into<BoxError>,
    R::Future: Send,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ReleaseBody<ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let bearer = crate::protocol::headers::bearer_token(req.headers()).map(str::to_owned);
        let fut = self.inner.call(req);
        let shared = self.shared.clone();
        let hold = self.hold;
        Box::pin(async move {
            let res = fut.await.map_err(Into::into)?;
            let record = res.extensions().get::<ExchangeRecord>().filter(|r| r.streamed()).cloned();
            if let Some(record) = record {
                if res.status().is_success() {
                    let (mut parts, body) = res.into_parts();
                    let verification = StreamVerification::default();
                    parts.extensions.insert(verification.clone());
                    let verify: VerifyFn = Box::new(move || {
                        Box::pin(async move {
                            shared
                                .receipts
                                .fetch_and_verify(&record, bearer.as_deref(), &shared.keys, &shared.policy)
                                .await
                        })
                    });
                    let body = ReleaseBody::stream(body, verify, verification, hold);
                    return Ok(Response::from_parts(parts, body));
                }
            }
            if !res.status().is_success() {
                // An error answer (the gateway's error document) carries no answer to verify: it
                // passes through with its extensions, so a retry above can still act on it.
                let (parts, body) = res.into_parts();
                let body = Limited::new(body, shared.receipts.max_release_body_limit())
                    .collect()
                    .await
                    .map_err(|e| Error::new(ErrorKind::Transport, "reading the error answer failed").with_source(e))?
                    .to_bytes();
                return Ok(Response::from_parts(parts, ReleaseBody::full(body)));
            }
            let (res, verified) =
                shared.receipts.release_after_receipt(res, bearer.as_deref(), &shared.keys, &shared.policy).await?;
            let (mut parts, body) = res.into_parts();
            parts.extensions.insert(verified);
            Ok(Response::from_parts(parts, ReleaseBody::full(body)))
        })
    }
}

/// The receipt of a stream released by [`VerifyBeforeRelease`], in the response's extensions:
/// set once the stream was read to its end and its receipt verified (just before `[DONE]` is
/// released).
#[derive(Clone, Default)]
pub struct StreamVerification(Arc<OnceLock<VerifiedReceipt>>);

impl StreamVerification {
    /// The verified receipt, once the body released `[DONE]`; `None` before, or when the
    /// receipt did not verify (the body then ended with the error).
    pub fn receipt(&self) -> Option<&VerifiedReceipt> {
        self.0.get()
    }
}

impl fmt::Debug for StreamVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamVerification").field("verified", &self.0.get().is_some()).finish()
    }
}

type VerifyFuture = Pin<Box<dyn Future<Output = Result<VerifiedReceipt>> + Send>>;
type VerifyFn = Box<dyn FnOnce() -> VerifyFuture + Send>;

/// Most bytes held back from the `[DONE]` event on (the event itself and what may follow it
/// before the end: comments).
const MAX_HELD: usize = 64 * 1024;

pin_project! {
    /// The response body of [`VerifyBeforeRelease`]: a buffered answer already verified, or a
    /// stream whose `[DONE]` and end are held until its receipt verified (see
    /// [`VerifyBeforeReleaseLayer`]).
    pub struct ReleaseBody<B> {
        #[pin]
        kind: ReleaseKind<B>,
    }
}

pin_project! {
    #[project = ReleaseKindProj]
    enum ReleaseKind<B> {
        Full { #[pin] body: Full<Bytes> },
        Stream { #[pin] inner: B, state: Box<StreamState> },
    }
}

struct StreamState {
    /// `hold_whole_stream`: hold every frame, at most this many bytes.
    hold_all: Option<usize>,
    /// Finds the `[DONE]` event in the released (decrypted, re-framed) bytes.
    events: SseDecoder,
    /// Frames held back, from the one that completes `[DONE]` on.
    held: VecDeque<Bytes>,
    held_bytes: usize,
    holding: bool,
    verify: Option<VerifyFn>,
    verifying: Option<VerifyFuture>,
    verification: StreamVerification,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    Verifying,
    Releasing,
    Done,
}

impl<B> ReleaseBody<B> {
    fn full(bytes: Bytes) -> Self {
        ReleaseBody { kind: ReleaseKind::Full { body: Full::new(bytes) } }
    }

    fn stream(inner: B, verify: VerifyFn, verification: StreamVerification, hold_all: Option<usize>) -> Self {
        // The layer below bounds every event; here only the framing is followed.
        let limits =
            SseLimits::default().max_line_bytes(usize::MAX).max_event_bytes(usize::MAX).max_event_lines(usize::MAX);
        let state = Box::new(StreamState {
            hold_all,
            events: SseDecoder::new(limits),
            held: VecDeque::new(),
            held_bytes: 0,
            holding: false,
            verify: Some(verify),
            verifying: None,
            verification,
            phase: Phase::Streaming,
        });
        ReleaseBody { kind: ReleaseKind::Stream { inner, state } }
    }
}

impl<B> fmt::Debug for ReleaseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            ReleaseKind::Full { .. } => "verified",
            ReleaseKind::Stream { .. } => "stream",
        };
        f.debug_struct("ReleaseBody").field("kind", &kind).finish()
    }
}

impl StreamState {
    /// Whether `data` completes the `[DONE]` event.
    fn completes_done(&mut self, data: &Bytes) -> Result<bool> {
        self.events.push(data);
        let mut done = false;
        while let Some(event) = self.events.next_event()? {
            done |= event.is_done();
        }
        Ok(done)
    }

    fn hold(&mut self, data: Bytes) -> Result<()> {
        self.held_bytes += data.len();
        if let Some(max) = self.hold_all {
            if self.held_bytes > max {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!(
                        "the stream exceeds the {max} bytes verify-before-release holds until its receipt verified \
                         (hold_whole_stream); nothing of it was released. Raise the bound, or release events as \
                         they authenticate (the default mode)"
                    ),
                ));
            }
        } else if self.held_bytes > MAX_HELD {
            return Err(Error::new(ErrorKind::Protocol, "the stream goes on after [DONE]"));
        }
        self.held.push_back(data);
        Ok(())
    }
}

impl<B> Body for ReleaseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (mut inner, state) = match self.project().kind.project() {
            ReleaseKindProj::Full { body } => return body.poll_frame(cx).map_err(|never| match never {}),
            ReleaseKindProj::Stream { inner, state } => (inner, state),
        };
        loop {
            match state.phase {
                Phase::Streaming => match inner.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => {
                        // The stream failed (decryption, truncation, an in-band error): its
                        // error ends the body; nothing held is released.
                        state.phase = Phase::Done;
                        state.held.clear();
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else { continue }; // trailers: none here
                        // Holding the whole stream: every frame waits for the receipt.
                        let holding = state.holding || state.hold_all.is_some();
                        if !holding {
                            match state.completes_done(&data) {
                                Ok(false) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                                Ok(true) => state.holding = true,
                                Err(e) => {
                                    state.phase = Phase::Done;
                                    return Poll::Ready(Some(Err(e.into())));
                                }
                            }
                        }
                        if let Err(e) = state.hold(data) {
                            state.phase = Phase::Done;
                            state.held.clear();
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                    Poll::Ready(None) => {
                        // The layer below ends a stream cleanly only after `[DONE]`, with the
                        // wire digest final: now the receipt.
                        let verify = state.verify.take().expect("verified once");
                        state.verifying = Some(verify());
                        state.phase = Phase::Verifying;
                    }
                },
                Phase::Verifying => {
                    let fut = state.verifying.as_mut().expect("set with the phase");
                    match fut.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(result) => {
                            state.verifying = None;
                            match result {
                                Ok(verified) => {
                                    tracing::debug!(
                                        receipt = verified.receipt().receipt_id(),
                                        "stream receipt verified"
                                    );
                                    let _ = state.verification.0.set(verified);
                                    state.phase = Phase::Releasing;
                                }
                                Err(e) => {
                                    tracing::warn!(kind = ?e.kind(), "the stream's receipt did not verify: [DONE] withheld");
                                    state.phase = Phase::Done;
                                    state.held.clear();
                                    return Poll::Ready(Some(Err(e.into())));
                                }
                            }
                        }
                    }
                }
                Phase::Releasing => match state.held.pop_front() {
                    Some(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    None => {
                        state.phase = Phase::Done;
                        return Poll::Ready(None);
                    }
                },
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ReleaseKind::Full { body } => body.is_end_stream(),
            ReleaseKind::Stream { state, .. } => state.phase == Phase::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ReleaseKind::Full { body } => body.size_hint(),
            ReleaseKind::Stream { state, .. } if state.phase == Phase::Done => SizeHint::with_exact(0),
            ReleaseKind::Stream { .. } => SizeHint::default(),
        }
    }
}
