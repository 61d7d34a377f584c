use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http_body::Body;
use tower_service::Service;

use crate::e2ee::body::ResponseBody;
use crate::e2ee::config::{Config, Route};
use crate::e2ee::future::ResponseFuture;
use crate::e2ee::request_body::RequestBody;
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
    type Response = http::Response<ResponseBody<ResBody>>;
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
