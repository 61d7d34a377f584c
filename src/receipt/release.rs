//! Verify before release: a layer, above [`E2eeLayer`](crate::E2eeLayer), that hands out a
//! buffered answer only after the gateway's receipt for it verified.
//!
//! ```no_run
//! # fn build<C, R>(keys: tower_aci::attest::KeyHandle, client: C, receipts: tower_aci::receipt::ReceiptClient<R>) {
//! use tower::ServiceBuilder;
//! use tower_aci::E2eeLayer;
//! use tower_aci::receipt::{ReceiptPolicy, VerifyBeforeReleaseLayer};
//!
//! let svc = ServiceBuilder::new()
//!     .layer(VerifyBeforeReleaseLayer::new(receipts, keys.clone(), ReceiptPolicy::new()))
//!     .layer(E2eeLayer::new(keys))
//!     .service(client);
//! # let _ = svc;
//! # }
//! ```
//!
//! A buffered answer is read whole, its receipt fetched (with the request's own bearer token)
//! and verified; only then does the caller get the body, with the
//! [`VerifiedReceipt`](crate::receipt::VerifiedReceipt) in the
//! response's extensions. Any failure — decryption, receipt missing, signature, a hash that does
//! not match — is the call's error and no byte of the answer is released. Streams pass through
//! as they arrive (their receipt exists only after the stream ended): verify them afterwards
//! with [`ReceiptClient::fetch_and_verify`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use tower_layer::Layer;
use tower_service::Service;

use crate::attest::KeyHandle;
use crate::error::BoxError;
use crate::receipt::fetch::ReceiptClient;
use crate::receipt::record::ExchangeRecord;
use crate::receipt::verify::ReceiptPolicy;

/// Applies [`VerifyBeforeRelease`]: buffered answers are handed out only after their receipt
/// verified; see the [`receipt`](crate::receipt) module.
pub struct VerifyBeforeReleaseLayer<R, RQ = Full<Bytes>> {
    shared: Arc<Shared<R, RQ>>,
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
        VerifyBeforeReleaseLayer { shared: Arc::new(Shared { receipts, keys, policy }) }
    }
}

impl<R, RQ> Clone for VerifyBeforeReleaseLayer<R, RQ> {
    fn clone(&self) -> Self {
        VerifyBeforeReleaseLayer { shared: self.shared.clone() }
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
        VerifyBeforeRelease { inner, shared: self.shared.clone() }
    }
}

/// The verify-before-release service. Made by [`VerifyBeforeReleaseLayer`].
pub struct VerifyBeforeRelease<S, R, RQ = Full<Bytes>> {
    inner: S,
    shared: Arc<Shared<R, RQ>>,
}

impl<S: Clone, R, RQ> Clone for VerifyBeforeRelease<S, R, RQ> {
    fn clone(&self) -> Self {
        VerifyBeforeRelease { inner: self.inner.clone(), shared: self.shared.clone() }
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
    type Response = Response<Either<Full<Bytes>, ResBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let bearer = crate::protocol::headers::bearer_token(req.headers()).map(str::to_owned);
        let fut = self.inner.call(req);
        let shared = self.shared.clone();
        Box::pin(async move {
            let res = fut.await.map_err(Into::into)?;
            let streamed = res.extensions().get::<ExchangeRecord>().is_some_and(ExchangeRecord::streamed);
            if streamed {
                return Ok(res.map(Either::Right));
            }
            let (res, verified) =
                shared.receipts.release_after_receipt(res, bearer.as_deref(), &shared.keys, &shared.policy).await?;
            let (mut parts, body) = res.into_parts();
            parts.extensions.insert(verified);
            Ok(Response::from_parts(parts, Either::Left(Full::new(body))))
        })
    }
}
