use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::e2ee::config::{Config, Route};
use crate::e2ee::frame::bytes_frame;
use crate::e2ee::future::ResponseFuture;
use crate::error::BoxError;

/// The E2EE v2 middleware service. Made by [`E2eeLayer`](crate::E2eeLayer).
#[derive(Clone, Debug)]
pub struct E2ee<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S> E2ee<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwrap the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for E2ee<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<crate::e2ee::body::ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready goes into the future; a clone stays behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // A body of unknown size may carry a prompt: only one known to be empty is no body.
        let body = req.body();
        let may_have_body = !(body.is_end_stream() || body.size_hint().upper() == Some(0));
        match self.config.route(req.method(), req.uri().path(), may_have_body) {
            Route::Passthrough => ResponseFuture::passthrough(inner, req.map(|b| RequestBody::passthrough(b))),
            Route::Refuse(e) => {
                tracing::warn!(method = %req.method(), path = req.uri().path(), "refused a plaintext request outside E2EE v2");
                ResponseFuture::error(e)
            }
            Route::Encrypt(endpoint) => match self.config.target(req.uri().scheme_str(), req.uri().host()) {
                Ok(target) => ResponseFuture::encrypt(inner, self.config.clone(), endpoint, target, req),
                Err(e) => ResponseFuture::error(e),
            },
        }
    }
}

pin_project! {
    /// The request body the inner service receives: the encrypted JSON, or the caller's body
    /// untouched for pass-through requests.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Encrypted { #[pin] body: Full<Bytes> },
        Passthrough { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn encrypted(bytes: Bytes) -> Self {
        RequestBody { kind: RequestKind::Encrypted { body: Full::new(bytes) } }
    }

    pub(crate) fn passthrough(body: B) -> Self {
        RequestBody { kind: RequestKind::Passthrough { body } }
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Encrypted { body } => {
                f.debug_tuple("RequestBody::Encrypted").field(&body.size_hint().exact()).finish()
            }
            RequestKind::Passthrough { .. } => f.write_str("RequestBody::Passthrough"),
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            RequestKindProj::Encrypted { body } => body.poll_frame(cx).map_err(|never| match never {}),
            RequestKindProj::Passthrough { body } => bytes_frame(body.poll_frame(cx)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Encrypted { body } => body.is_end_stream(),
            RequestKind::Passthrough { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Encrypted { body } => body.size_hint(),
            RequestKind::Passthrough { body } => body.size_hint(),
        }
    }
}

/// A complete body of these bytes, so that the client under the layer can also serve the key
/// provider and the receipt client (which build their `GET`s from `Bytes`): one connection pool
/// for all three.
impl<B> From<Bytes> for RequestBody<B> {
    fn from(bytes: Bytes) -> Self {
        RequestBody::encrypted(bytes)
    }
}
