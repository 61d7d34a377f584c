//! One encrypted chat completion through `E2eeLayer` over hyper-util's client, in the stack the
//! crate recommends: trace → retry (transient answers, then key rotations) → timeout → E2EE →
//! client, with one connection pool shared by the key provider, the layer and the receipt client.
//!
//! ```text
//! cargo run --example chat                         # local gateway, plain HTTP
//! cargo run --example chat -- --tls                # local gateway over pinned TLS
//! cargo run --example chat -- "your question"
//! RUST_LOG=tower_aci=debug,tower_http=debug cargo run --example chat   # with spans
//!
//! # A real gateway (README, "What to pin"): pin the workload, HTTPS pinned to the keyset.
//! ACI_API_KEY=sk-… cargo run --example chat -- \
//!     --base-url https://api.redpill.ai --compose-hash <hex> --boot-measurements <mrtd,rtmr0,rtmr1,rtmr2> \
//!     --kms-identity <hex> --model <model> "question"
//! ```
//!
//! Flags: `--base-url URL` (a real gateway; `https://` needs feature `rustls`), `--model NAME`,
//! the pins `--compose-hash HEX`, `--boot-measurements MRTD,RTMR0,RTMR1,RTMR2` and
//! `--kms-identity HEX` (all three needed; `aci-proxy inspect` prints them), with `--app-id HEX`,
//! `--kms-root HEX` and `--os-image-hash HEX` checked beside them (all repeatable),
//! `--tcb-status NAME` (repeatable; default `UpToDate`), `--pccs URL` (feature
//! `dcap`; default `https://pccs.phala.network`), `--pin-only` (a self-signed gateway: the attested
//! keyset is the only trust anchor), `--tls` (the local gateway over HTTPS with a self-signed
//! certificate, pinned).

use std::time::Duration;

use aci_test_gateway::{GatewayConfig, TestGateway};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::rt::TokioExecutor;
use tower::retry::{Policy as RetryPolicy, RetryLayer};
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_aci::E2eeLayer;
use tower_aci::GatewayError;
use tower_aci::attest::{ChannelInfo, KeyHandle, KeyProvider, Policy};
use tower_aci::e2ee::{KeyMismatchRetry, RequestBody};
use tower_aci::receipt::{ExchangeRecord, ReceiptClient, ReceiptPolicy};
use tower_http::trace::TraceLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Retry transient gateway answers (502/503/504) up to twice. It sits above the E2EE layer, so
/// each attempt is encrypted afresh: the gateway burns a nonce before it decrypts.
#[derive(Clone)]
struct RetryTransient(usize);

impl<B, E> RetryPolicy<http::Request<Full<Bytes>>, http::Response<B>, E> for RetryTransient {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut http::Request<Full<Bytes>>,
        res: &mut Result<http::Response<B>, E>,
    ) -> Option<Self::Future> {
        let transient = matches!(res, Ok(r) if matches!(r.status().as_u16(), 502..=504));
        (transient && self.0 > 0).then(|| {
            self.0 -= 1;
            tokio::time::sleep(Duration::from_millis(200))
        })
    }

    fn clone_request(&mut self, req: &http::Request<Full<Bytes>>) -> Option<http::Request<Full<Bytes>>> {
        let mut clone = http::Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// The command line.
#[derive(Default)]
#[cfg_attr(not(feature = "rustls"), allow(dead_code))]
struct Args {
    base_url: Option<String>,
    model: Option<String>,
    compose_hashes: Vec<String>,
    app_ids: Vec<String>,
    os_images: Vec<String>,
    kms_roots: Vec<String>,
    kms_identities: Vec<String>,
    boot_measurements: Vec<String>,
    tcb_statuses: Vec<String>,
    pccs: Option<String>,
    pin_only: bool,
    tls: bool,
    question: Option<String>,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--base-url" => args.base_url = Some(value()?),
            "--model" => args.model = Some(value()?),
            "--compose-hash" => args.compose_hashes.push(value()?),
            "--app-id" => args.app_ids.push(value()?),
            "--os-image-hash" => args.os_images.push(value()?),
            "--kms-root" => args.kms_roots.push(value()?),
            "--kms-identity" => args.kms_identities.push(value()?),
            "--boot-measurements" => args.boot_measurements.push(value()?),
            "--tcb-status" => args.tcb_statuses.push(value()?),
            "--pccs" => args.pccs = Some(value()?),
            "--pin-only" => args.pin_only = true,
            "--tls" => args.tls = true,
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}").into()),
            _ => args.question = Some(a),
        }
    }
    Ok(args)
}

/// The policy for a real gateway: the pins given on the command line (building fails, saying
/// what to pin, when there is none).
fn real_policy(args: &Args) -> Result<Policy, BoxError> {
    let mut b = Policy::builder();
    for h in &args.compose_hashes {
        b = b.allow_compose_hash(h);
    }
    for id in &args.app_ids {
        b = b.allow_app_id(id);
    }
    for h in &args.os_images {
        b = b.allow_os_image_hash(h);
    }
    for root in &args.kms_roots {
        b = b.accept_kms_root(root);
    }
    for id in &args.kms_identities {
        b = b.allow_kms_identity(id);
    }
    for set in &args.boot_measurements {
        let [mrtd, rtmr0, rtmr1, rtmr2] = <[&str; 4]>::try_from(set.split(',').collect::<Vec<_>>())
            .map_err(|_| format!("--boot-measurements {set:?}: expected MRTD,RTMR0,RTMR1,RTMR2"))?;
        b = b.allow_boot_measurements(mrtd, rtmr0, rtmr1, rtmr2);
    }
    if !args.tcb_statuses.is_empty() {
        b = b.accept_tcb_statuses(args.tcb_statuses.clone());
    }
    Ok(b.build()?)
}

/// The local gateway's policy: its stub quote measures nothing, so only `dangerous()` accepts it.
fn local_policy() -> Result<Policy, BoxError> {
    Ok(Policy::builder().dangerous().accept_stub_quote().any_workload().build()?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let question = args.question.clone().unwrap_or_else(|| "What is a TEE, in one sentence?".to_owned());
    let keys = KeyHandle::new();

    match args.base_url.clone() {
        // A real gateway.
        Some(base) if base.starts_with("https://") => real_https(&args, keys, base, &question).await,
        // Plain HTTP: only to a gateway on loopback (the key provider and the layer refuse any
        // other host, since nothing would then authenticate the answers).
        Some(base) => {
            let policy = real_policy(&args)?;
            let http = Client::builder(TokioExecutor::new()).build_http();
            chat(http, keys, base, policy, &args, &question).await
        }
        // The crate's local gateway, over pinned TLS.
        None if args.tls => local_https(&args, keys, &question).await,
        // The crate's local gateway, plain HTTP on loopback.
        None => {
            let gw = TestGateway::start(GatewayConfig::new()).await?;
            let http = Client::builder(TokioExecutor::new()).build_http();
            chat(http, keys, gw.base_url(), local_policy()?, &args, &question).await
        }
    }
}

#[cfg(feature = "rustls")]
async fn real_https(args: &Args, keys: KeyHandle, base: String, question: &str) -> Result<(), BoxError> {
    use tower_aci::tls::AttestedTls;

    let policy = real_policy(args)?;
    let mut tls = AttestedTls::builder(keys.clone()).with_webpki_roots();
    if args.pin_only {
        tls = tls.pin_only();
    }
    // The PCCS the provider fetches quote collateral from is an ordinary WebPKI host.
    if let Some(host) = pccs_url(args).parse::<http::Uri>()?.host() {
        tls = tls.unpinned_host(host);
    }
    let http = Client::builder(TokioExecutor::new()).build(tls.build()?.connector());
    chat(http, keys, base, policy, args, question).await
}

#[cfg(not(feature = "rustls"))]
async fn real_https(_: &Args, _: KeyHandle, _: String, _: &str) -> Result<(), BoxError> {
    Err("an https:// gateway needs the attested TLS connector: add --features rustls".into())
}

#[cfg(feature = "rustls")]
async fn local_https(args: &Args, keys: KeyHandle, question: &str) -> Result<(), BoxError> {
    use aci_test_gateway::GatewayTls;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tower_aci::tls::AttestedTls;

    // A self-signed certificate; the gateway publishes its SPKI in `tls_public_keys`.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let gw = TestGateway::start(GatewayConfig::new().tls(GatewayTls::new(vec![cert.cert.der().clone()], key)?)).await?;
    // Pin-only: no CA vouches for a self-signed certificate; the attested keyset does.
    let tls = AttestedTls::builder(keys.clone()).pin_only().build()?;
    let http = Client::builder(TokioExecutor::new()).build(tls.connector());
    chat(http, keys, gw.base_url(), local_policy()?, args, question).await
}

#[cfg(not(feature = "rustls"))]
async fn local_https(_: &Args, _: KeyHandle, _: &str) -> Result<(), BoxError> {
    Err("--tls needs --features rustls".into())
}

fn pccs_url(args: &Args) -> String {
    args.pccs.clone().unwrap_or_else(|| "https://pccs.phala.network".to_owned())
}

/// Attest, send one question through the layer, verify the receipt: all over one client.
async fn chat<C>(
    http: Client<C, RequestBody<Full<Bytes>>>,
    keys: KeyHandle,
    base: String,
    policy: Policy,
    args: &Args,
    question: &str,
) -> Result<(), BoxError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let token = std::env::var("ACI_API_KEY").ok();

    // 1. Establish: fetch the report with a fresh nonce and verify it (never through the E2EE
    //    layer); the refresher keeps it fresh and follows key rotations.
    let provider = KeyProvider::builder(http.clone()).handle(keys.clone()).base_url(base.parse()?).policy(policy);
    #[cfg(feature = "dcap")]
    let provider = provider.pccs(pccs_url(args).parse()?);
    #[cfg(not(feature = "dcap"))]
    let _ = pccs_url(args);
    let provider = provider.build()?;
    let keyset = provider.establish().await?;
    let (_, _refresher) = provider.spawn()?;
    println!("attested keyset {} (key {})", keyset.digest(), keyset.e2ee_key().key_id());

    // 2. Send through the layer: the body is encrypted on the way out, decrypted on the way back.
    //    Outermost first: trace → retry → timeout (to the response head) → E2EE → client.
    let client = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(RetryLayer::new(RetryTransient(2)))
        .layer(RetryLayer::new(KeyMismatchRetry::new(keys.clone())))
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        .layer(E2eeLayer::new(keys.clone()))
        .service(http.clone());
    let model = args.model.clone().unwrap_or_else(|| "demo-model".to_owned());
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": question}]});
    let mut req = http::Request::post(format!("{base}/v1/chat/completions")).header("content-type", "application/json");
    if let Some(t) = &token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = client.oneshot(req.body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?).await?;
    let status = res.status();
    if let Some(err) = res.extensions().get::<GatewayError>() {
        return Err(err.to_error().into());
    }
    if let Some(channel) = res.extensions().get::<ChannelInfo>() {
        println!("over TLS to {} (SPKI sha256 {}, attested)", channel.host(), channel.spki_sha256_hex());
    }
    let record = res.extensions().get::<ExchangeRecord>().cloned();
    let answer: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
    println!("{status}: {}", answer["choices"][0]["message"]["content"].as_str().unwrap_or("<no content>"));

    // 3. The gateway's signed receipt of this exchange, fetched over the same client.
    if let Some(record) = record {
        let receipts = ReceiptClient::new(http, base.parse()?);
        let verified = receipts.fetch_and_verify(&record, token.as_deref(), &keys, &ReceiptPolicy::new()).await?;
        println!("receipt {} verified (suite {:?})", verified.receipt().receipt_id(), record.suite());
    }
    Ok(())
}
