//! Shared set-up for the tests that run over loopback against the local gateway.

use std::sync::{Arc, Mutex};

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_aci::attest::{KeyHandle, KeyProvider, Policy};
use tower_aci::e2ee::RequestBody;
use tower_aci::protocol::Suite;
use tower_aci::{BoxError, E2eeLayer};

/// A plain hyper-util client.
pub(crate) type Hyper = Client<HttpConnector, Full<Bytes>>;
/// The client under the E2EE layer.
pub(crate) type LayerClient = Client<HttpConnector, RequestBody<Full<Bytes>>>;

pub(crate) fn hyper() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) fn layer_client() -> LayerClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The policy tests use with the local gateway's stub quote.
pub(crate) fn stub_policy(suite: Suite) -> Policy {
    Policy::builder().select_suite(suite).dangerous().accept_stub_quote().any_workload().build().unwrap()
}

/// Attest the gateway (stub quote accepted) and return the provider's handle.
pub(crate) async fn establish(gw: &TestGateway, suite: Suite) -> KeyHandle {
    let provider = KeyProvider::builder(hyper())
        .base_url(gw.base_url().parse().unwrap())
        .policy(stub_policy(suite))
        .build()
        .unwrap();
    provider.establish().await.unwrap();
    provider.handle()
}

/// A gateway, its attested key, and the bytes the wire carried back to the client.
pub(crate) struct Env {
    pub(crate) gw: TestGateway,
    pub(crate) keys: KeyHandle,
    pub(crate) response_wire: Arc<Mutex<Vec<u8>>>,
}

impl Env {
    pub(crate) async fn start(suite: Suite) -> Env {
        Self::with(GatewayConfig::new(), suite).await
    }

    pub(crate) async fn with(config: GatewayConfig, suite: Suite) -> Env {
        let gw = TestGateway::start(config).await.unwrap();
        let keys = establish(&gw, suite).await;
        Env { gw, keys, response_wire: Arc::default() }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gw.base_url())
    }

    /// The layered client: E2EE over a recorder of the response wire bytes over hyper-util.
    pub(crate) fn client(
        &self,
        layer: E2eeLayer,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + Unpin + use<>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + use<> {
        let log = self.response_wire.clone();
        ServiceBuilder::new()
            .layer(layer)
            .map_response(move |res: Response<hyper::body::Incoming>| {
                let log = log.clone();
                res.map(move |b| {
                    b.map_frame(move |f| {
                        if let Some(d) = f.data_ref() {
                            log.lock().unwrap().extend_from_slice(d);
                        }
                        f
                    })
                })
            })
            .service(layer_client())
    }

    pub(crate) fn layer(&self) -> E2eeLayer {
        E2eeLayer::new(self.keys.clone())
    }

    pub(crate) fn wire_text(&self) -> String {
        String::from_utf8_lossy(&self.response_wire.lock().unwrap()).into_owned()
    }
}

pub(crate) fn post(url: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

/// Send one request through a cloned service.
pub(crate) async fn send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> Result<Response<B>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(req).await
}

/// Read a whole body.
pub(crate) async fn read<B>(body: B) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    Ok(body.collect().await?.to_bytes())
}

/// The kind of a tower-aci error inside a boxed error.
pub(crate) fn kind(e: &BoxError) -> Option<tower_aci::ErrorKind> {
    tower_aci::Error::find(e.as_ref()).map(tower_aci::Error::kind)
}

/// The decrypted content deltas of an SSE body, joined (all choices).
pub(crate) fn sse_text(body: &[u8], field: &str) -> String {
    sse_choice(body, field, None)
}

/// The decrypted deltas of one choice (`index` member), or of all choices.
pub(crate) fn sse_choice(body: &[u8], field: &str, index: Option<u64>) -> String {
    let mut out = String::new();
    for line in body.split(|b| *b == b'\n') {
        if let Some(json) = line.strip_prefix(b"data: ") {
            if let Ok(v) = serde_json::from_slice::<Value>(json) {
                if let Some(choices) = v["choices"].as_array() {
                    for c in choices {
                        if index.is_some_and(|i| c["index"].as_u64() != Some(i)) {
                            continue;
                        }
                        let s = if field == "text" { &c["text"] } else { &c["delta"][field] };
                        if let Some(s) = s.as_str() {
                            out.push_str(s);
                        }
                    }
                }
            }
        }
    }
    out
}
