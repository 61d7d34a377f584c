//! Compile-time checks that the layer fits where users put it. These tests pass by compiling.

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_aci::attest::KeyHandle;
use tower_aci::e2ee::{RequestBody, ResponseBody};
use tower_aci::{BoxError, E2eeLayer};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_unpin<T: Unpin>() {}
fn assert_clone<T: Clone>() {}

/// The client type a hyper-util user builds: its request body is the layer's `RequestBody`.
type HyperClient = Client<HttpConnector, RequestBody<Full<Bytes>>>;

#[allow(dead_code)]
fn layered_hyper_client(keys: KeyHandle) -> impl Clone + Send + Sync {
    let client: HyperClient = Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new().layer(E2eeLayer::new(keys)).service(client)
}

#[test]
fn request_body_fits_hyper_util_client() {
    // hyper-util's legacy client needs `Body + Send + Unpin + 'static` request bodies.
    assert_send::<RequestBody<Full<Bytes>>>();
    assert_unpin::<RequestBody<Full<Bytes>>>();
}

#[test]
fn response_body_fits_reqwest_and_axum() {
    // reqwest::Body::wrap needs Send + Sync; axum's Body::new needs Send + Data = Bytes.
    assert_send::<ResponseBody<hyper::body::Incoming>>();
    assert_sync::<ResponseBody<hyper::body::Incoming>>();
    #[allow(dead_code)]
    fn wrap_real(
        b: ResponseBody<hyper::body::Incoming>,
        c: ResponseBody<hyper::body::Incoming>,
    ) -> (reqwest::Body, axum::body::Body) {
        (reqwest::Body::wrap(b), axum::body::Body::new(c))
    }
}

#[test]
fn service_is_clone_send_sync_with_a_send_future() {
    type Svc = tower_aci::E2ee<HyperClient>;
    assert_clone::<Svc>();
    assert_send::<Svc>();
    assert_sync::<Svc>();
    assert_send::<<Svc as tower::Service<http::Request<Full<Bytes>>>>::Future>();
    #[allow(dead_code)]
    fn boxed(
        svc: Svc,
    ) -> BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<ResponseBody<hyper::body::Incoming>>, BoxError>
    {
        BoxCloneSyncService::new(svc)
    }
}
