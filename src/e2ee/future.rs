use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::e2ee::body::ResponseBody;
use crate::e2ee::config::{Config, Target};
use crate::e2ee::exchange::{Exchange, decrypting_response, encrypt, error_response};
use crate::e2ee::frame::Collector;
use crate::e2ee::request_body::RequestBody;
use crate::error::{BoxError, Error, ErrorKind};
use crate::protocol::Endpoint;

pin_project! {
    /// The response future of [`E2ee`](crate::E2ee).
    pub struct ResponseFuture<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        #[pin]
        state: State<S, ReqBody, ResBody>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>>,
    {
        Failed { error: Option<Error> },
        Collecting {
            #[pin]
            body: ReqBody,
            buf: Collector,
            head: Option<(http::request::Parts, S)>,
            config: Arc<Config>,
            endpoint: Endpoint,
            target: Option<Target>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            exchange: Option<Box<Exchange>>,
        },
        ReadingError {
            #[pin]
            body: ResBody,
            buf: Collector,
            head: Option<(http::response::Parts, Box<Exchange>)>,
        },
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>>,
    ReqBody: Body,
{
    pub(crate) fn error(error: Error) -> Self {
        ResponseFuture { state: State::Failed { error: Some(error) }, span: tracing::Span::none() }
    }

    pub(crate) fn passthrough(mut inner: S, req: Request<RequestBody<ReqBody>>) -> Self {
        ResponseFuture { state: State::Calling { fut: inner.call(req), exchange: None }, span: tracing::Span::none() }
    }

    pub(crate) fn encrypt(
        inner: S,
        config: Arc<Config>,
        endpoint: Endpoint,
        target: Target,
        req: Request<ReqBody>,
    ) -> Self {
        let (parts, body) = req.into_parts();
        let head = Some((parts, inner));
        let target = Some(target);
        let span = crate::telemetry::exchange_span(endpoint);
        ResponseFuture {
            state: State::Collecting { body, buf: Collector::default(), head, config, endpoint, target },
            span,
        }
    }
}

enum CollectError {
    TooLarge,
    Body(BoxError),
}

impl CollectError {
    fn context(self, what: &str) -> Error {
        match self {
            CollectError::TooLarge => {
                Error::new(ErrorKind::TooLarge, format!("{what} body exceeds the E2EE layer's limit"))
            }
            CollectError::Body(e) => {
                Error::new(ErrorKind::Transport, format!("reading the {what} body failed")).with_source(e)
            }
        }
    }
}

/// Zeroize the plaintext body once it is encrypted, when no one else holds it: the copy
/// `poll_collect` made of a body of several frames, or the caller's single frame when the caller
/// kept no other reference to it (a `KeyMismatchRetry` above keeps one, for its next attempt).
fn wipe(body: Bytes) {
    if let Ok(mut own) = body.try_into_mut() {
        zeroize::Zeroize::zeroize(&mut own[..]);
    }
}

/// Read a whole body into `buf`, up to `limit` bytes.
fn poll_collect<B>(
    mut body: Pin<&mut B>,
    buf: &mut Collector,
    limit: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, CollectError>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    loop {
        match ready!(body.as_mut().poll_frame(cx)) {
            None => return Poll::Ready(Ok(buf.take())),
            Some(Err(e)) => return Poll::Ready(Err(CollectError::Body(e.into()))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.push(data, limit).is_err() {
                        return Poll::Ready(Err(CollectError::TooLarge));
                    }
                }
            }
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody, ResBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let span = self.span.clone();
        let _entered = span.enter(); // inside one poll only, never across an await
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e =
                        error.take().unwrap_or_else(|| Error::new(ErrorKind::Config, "future polled after completion"));
                    return Poll::Ready(Err(e.into()));
                }
                StateProj::Collecting { body, buf, head, config, endpoint, target } => {
                    let collected = ready!(poll_collect(body, buf, config.max_request_body, cx));
                    let (Some((mut parts, mut inner)), Some(target)) = (head.take(), target.take()) else {
                        this.state.set(State::Failed { error: None });
                        continue;
                    };
                    let body = match collected {
                        Ok(b) => b,
                        Err(e) => {
                            this.state.set(State::Failed { error: Some(e.context("request")) });
                            continue;
                        }
                    };
                    let path = parts.uri.path().to_owned();
                    let encrypted = encrypt(config, *endpoint, &path, target, &mut parts.headers, &body);
                    wipe(body);
                    match encrypted {
                        Ok((wire, exchange)) => {
                            let fut = inner.call(Request::from_parts(parts, RequestBody::encrypted(wire)));
                            this.state.set(State::Calling { fut, exchange: Some(exchange) });
                        }
                        Err(e) => {
                            tracing::debug!(kind = ?e.kind(), "request not sent: {e}");
                            crate::telemetry::error(&e);
                            this.state.set(State::Failed { error: Some(e) });
                        }
                    }
                }
                StateProj::Calling { fut, exchange } => {
                    let res = ready!(fut.poll(cx)).map_err(Into::into)?;
                    let Some(exchange) = exchange.take() else {
                        return Poll::Ready(Ok(res.map(ResponseBody::passthrough)));
                    };
                    let (mut parts, body) = res.into_parts();
                    if !parts.status.is_success() {
                        this.state.set(State::ReadingError {
                            body,
                            buf: Collector::default(),
                            head: Some((parts, exchange)),
                        });
                        continue;
                    }
                    let body = decrypting_response(&mut parts, body, exchange)?;
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                StateProj::ReadingError { body, buf, head } => {
                    let limit = head.as_ref().map_or(0, |h| h.1.config.max_response_body);
                    let collected = ready!(poll_collect(body, buf, limit, cx));
                    let Some((mut parts, exchange)) = head.take() else {
                        this.state.set(State::Failed { error: None });
                        continue;
                    };
                    let bytes = collected.map_err(|e| e.context("error response"))?;
                    error_response(&mut parts, &bytes, &exchange)?;
                    return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::full(bytes))));
                }
            }
        }
    }
}
