//! The request body the inner service receives: the encrypted JSON document, or the caller's
//! body untouched for a request that passes through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use crate::e2ee::frame::bytes_frame;
use crate::error::BoxError;

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
