//! The local test gateway over real loopback HTTP, driven with only the protocol core on the
//! client side (`encrypt_request`, `decrypt_response`, `StreamDecryptor`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use aci_test_gateway::{Fault, GatewayConfig, TestGateway, UpstreamResponse, sign_receipt};
use tower_aci::__private::jcs_to_vec;
use tower_aci::ErrorKind;
use tower_aci::attest::{Clock, ManualClock, SystemClock};
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::SseLimits;
use tower_aci::protocol::decrypt_response;
use tower_aci::protocol::{EncryptOptions, EncryptedRequest, Endpoint, encrypt_request};
use tower_aci::protocol::{SecretKey, Suite};
use tower_aci::protocol::{StreamDecryptor, StreamOutput};

/// The spec's vectors, from the workspace's `tests/data/` (tower-aci's oracles).
mod data {
    use serde_json::Value;

    /// Parse `tests/data/<name>` of the workspace root.
    pub(crate) fn load(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// Decode hex into a fixed array.
    pub(crate) fn arr32(hex_str: &str) -> [u8; 32] {
        const_hex::decode(hex_str).unwrap().try_into().unwrap()
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    fn error_type(&self) -> String {
        self.json()["error"]["type"].as_str().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn open(
    c: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> http::Response<Incoming> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    c.request(b.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap()
}

async fn send(c: &HttpClient, method: Method, url: &str, headers: &[(String, String)], body: Vec<u8>) -> Reply {
    let resp = open(c, method, url, headers, body).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

fn h(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

fn e2ee_headers(req: &EncryptedRequest) -> Vec<(String, String)> {
    // The five headers `encrypt_request` returns, as the test's client sends them.
    req.headers.iter().map(|(k, v)| h(k.as_str(), v.to_str().unwrap())).collect()
}

fn now() -> u64 {
    SystemClock.now()
}

async fn start(config: GatewayConfig) -> (TestGateway, HttpClient) {
    (TestGateway::start(config).await.unwrap(), client())
}

async fn report(c: &HttpClient, gw: &TestGateway, nonce: Option<&str>) -> Reply {
    let url = match nonce {
        Some(n) => format!("{}/v1/aci/attestation?nonce={n}", gw.base_url()),
        None => format!("{}/v1/aci/attestation", gw.base_url()),
    };
    send(c, Method::GET, &url, &[], Vec::new()).await
}

/// The keyset entry of `suite`, straight from the served report.
async fn key_for(c: &HttpClient, gw: &TestGateway, suite: Suite) -> E2eeKey {
    let r = report(c, gw, None).await.json();
    let entry = r["attestation"]["workload_keyset"]["e2ee_public_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["algo"] == suite.algo())
        .unwrap()
        .clone();
    E2eeKey::parse(entry["key_id"].as_str().unwrap(), suite.algo(), entry["public_key"].as_str().unwrap()).unwrap()
}

fn encrypt(endpoint: Endpoint, body: &Value, key: &E2eeKey, ts: u64) -> EncryptedRequest {
    encrypt_request(
        endpoint,
        &serde_json::to_vec(body).unwrap(),
        key,
        &EncryptOptions::default(),
        ts,
        &mut rand_core::OsRng,
    )
    .unwrap()
}

async fn post_encrypted(c: &HttpClient, gw: &TestGateway, endpoint: Endpoint, req: &EncryptedRequest) -> Reply {
    let url = format!("{}{}", gw.base_url(), endpoint.path());
    send(c, Method::POST, &url, &e2ee_headers(req), req.body.clone()).await
}

fn sha256_tag(bytes: &[u8]) -> String {
    format!("sha256:{}", const_hex::encode(Sha256::digest(bytes)))
}

async fn fetch_receipt(c: &HttpClient, gw: &TestGateway, id: &str, bearer: Option<&str>) -> Reply {
    let headers: Vec<_> = bearer.map(|t| h("authorization", t)).into_iter().collect();
    send(c, Method::GET, &format!("{}/v1/aci/receipts/{id}", gw.base_url()), &headers, Vec::new()).await
}

/// Verify a served receipt against the receipt key in the gateway's report; returns the parsed
/// document.
async fn verified_receipt(c: &HttpClient, gw: &TestGateway, id: &str) -> Value {
    let reply = fetch_receipt(c, gw, id, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    check_signature(c, gw, &reply.body).await
}

async fn check_signature(c: &HttpClient, gw: &TestGateway, served: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(served).unwrap();
    assert_eq!(jcs_to_vec(&doc).unwrap(), served, "served as JCS bytes");
    let ks = report(c, gw, None).await.json()["attestation"]["workload_keyset"].clone();
    let key = ks["receipt_signing_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == doc["key_id"])
        .expect("key id in the keyset");
    let vk = VerifyingKey::from_bytes(&data::arr32(key["public_key"].as_str().unwrap())).unwrap();
    let sig: [u8; 64] = const_hex::decode(doc["signature"].as_str().unwrap()).unwrap().try_into().unwrap();
    let mut unsigned = doc.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    vk.verify(&jcs_to_vec(&unsigned).unwrap(), &Signature::from_bytes(&sig)).expect("receipt signature");
    assert_eq!(doc["api_version"], "aci/1");
    doc
}

fn event_hash(doc: &Value, kind: &str) -> String {
    doc["event_log"].as_array().unwrap().iter().find(|e| e["type"] == kind).unwrap_or_else(|| panic!("no {kind} event"))
        ["body_hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn chat_body(text: &str) -> Value {
    json!({"model": "demo-model", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": text}
    ]})
}

/// Read a streamed response to its end (or until `limit` passes without data), feeding the
/// decryptor. Returns the raw bytes and the decrypted events (or the first error).
async fn read_stream(
    resp: http::Response<Incoming>,
    dec: &mut StreamDecryptor,
    limit: Duration,
) -> (Bytes, Vec<tower_aci::Result<StreamOutput>>, bool) {
    let mut body = resp.into_body();
    let mut raw = BytesMut::new();
    let mut out = Vec::new();
    let mut ended = false;
    loop {
        match tokio::time::timeout(limit, body.frame()).await {
            Err(_) => break,
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(frame)) => {
                let Ok(data) = frame.unwrap().into_data() else { continue };
                raw.extend_from_slice(&data);
                dec.push(&data);
                loop {
                    match dec.next_output() {
                        Ok(Some(o)) => out.push(Ok(o)),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Err(e));
                            break;
                        }
                    }
                }
            }
        }
    }
    (raw.freeze(), out, ended)
}

/// Per-choice concatenation of a decrypted delta member over all events.
fn assemble(events: &[tower_aci::Result<StreamOutput>], member: &str, endpoint_text: bool) -> Vec<String> {
    let mut acc: Vec<String> = Vec::new();
    for e in events {
        let Ok(StreamOutput::Event(bytes)) = e else { continue };
        let text = std::str::from_utf8(bytes).unwrap();
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            for ch in v["choices"].as_array().into_iter().flatten() {
                let i = ch["index"].as_u64().unwrap() as usize;
                let piece = if endpoint_text { &ch["text"] } else { &ch["delta"][member] };
                if let Some(s) = piece.as_str() {
                    if acc.len() <= i {
                        acc.resize(i + 1, String::new());
                    }
                    acc[i].push_str(s);
                }
            }
        }
    }
    acc
}

#[tokio::test]
async fn chat_buffered_round_trip_in_both_suites_with_a_verified_receipt() {
    let (gw, c) = start(GatewayConfig::new().fixed_seeds()).await;
    for suite in Suite::ALL {
        let key = key_for(&c, &gw, suite).await;
        let req = encrypt(Endpoint::ChatCompletions, &chat_body("hello gateway"), &key, now());
        let reply = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.header("x-e2ee-applied"), Some("true"));
        assert_eq!(reply.header("x-e2ee-version"), Some("2"));
        assert_eq!(reply.header("x-e2ee-algo"), Some(suite.algo()));
        assert_eq!(reply.header("x-aci-version"), Some("aci/1"));
        assert_eq!(reply.header("x-aci-keyset-digest"), Some(gw.keyset_digest().as_str()));
        let receipt_id = reply.header("x-receipt-id").unwrap().to_owned();
        assert!(receipt_id.starts_with("rcpt-") && receipt_id.len() == 29);
        assert!(!String::from_utf8_lossy(&reply.body).contains("You said"), "answer encrypted on the wire");

        let plain = decrypt_response(&req.context, reply.body.clone()).unwrap();
        assert_eq!(plain.decrypted_fields, 2);
        let v: Value = serde_json::from_slice(&plain.body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "You said: hello gateway");
        assert!(v["choices"][0]["message"]["reasoning_content"].as_str().unwrap().starts_with("The user wrote 13"));

        // The upstream saw plaintext; the wire carried only ciphertext.
        let seen = gw.upstream_log().pop().unwrap();
        assert_eq!(seen["messages"][1]["content"], "hello gateway");
        let wire = gw.wire_log().pop().unwrap();
        assert_eq!(wire, Bytes::from(req.body.clone()));
        assert!(!String::from_utf8_lossy(&wire).contains("hello gateway"));
        assert!(!String::from_utf8_lossy(&wire).contains("be brief"));

        // The receipt names exactly what was restored and what came back.
        let doc = verified_receipt(&c, &gw, &receipt_id).await;
        let restored = format!("sha256:{}", const_hex::encode(req.restored_body_sha256));
        assert_eq!(event_hash(&doc, "request.received"), restored);
        assert_eq!(event_hash(&doc, "request.forwarded"), restored);
        assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&reply.body));
        let types: Vec<_> = doc["event_log"].as_array().unwrap().iter().map(|e| e["type"].clone()).collect();
        assert_eq!(types, ["request.received", "request.forwarded", "response.returned"]);
        assert_eq!(doc["receipt_id"], receipt_id.as_str());
        assert_eq!(doc["chat_id"], reply.json()["id"]);
        assert_eq!(doc["model"], "demo-model");
        assert_eq!(doc["endpoint"], "/v1/chat/completions");
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["key_id"], "dstack-kms-receipt-ed25519-v1");
        assert_eq!(doc["workload_keyset_digest"], gw.keyset_digest().as_str());
        assert!(doc["served_at"].as_u64().unwrap().abs_diff(now()) < 60);
        // Also found by the response id.
        let by_chat = fetch_receipt(&c, &gw, reply.json()["id"].as_str().unwrap(), None).await;
        assert_eq!(by_chat.status, 200);
        assert_eq!(by_chat.body, jcs_to_vec(&doc).unwrap());
    }
    assert_eq!(gw.requests_seen(), 2);
}

#[tokio::test]
async fn chat_stream_in_both_suites_with_n_2_and_per_chunk_ids() {
    let (gw, c) = start(GatewayConfig::new()).await;
    for suite in Suite::ALL {
        let key = key_for(&c, &gw, suite).await;
        let mut body = chat_body("stream me please");
        body["stream"] = json!(true);
        body["n"] = json!(2);
        let req = encrypt(Endpoint::ChatCompletions, &body, &key, now());
        let url = format!("{}/v1/chat/completions", gw.base_url());
        let resp = open(&c, Method::POST, &url, &e2ee_headers(&req), req.body.clone()).await;
        assert_eq!(resp.status(), 200);
        let hd = resp.headers().clone();
        assert_eq!(hd["content-type"], "text/event-stream");
        assert_eq!(hd["cache-control"], "no-cache");
        assert_eq!(hd["x-accel-buffering"], "no");
        assert_eq!(hd["x-e2ee-algo"], suite.algo());
        let receipt_id = hd["x-receipt-id"].to_str().unwrap().to_owned();
        let mut dec = StreamDecryptor::new(req.context, SseLimits::default());
        let (raw, events, ended) = read_stream(resp, &mut dec, Duration::from_secs(10)).await;
        assert!(ended);
        assert!(events.iter().all(Result::is_ok));
        let end = dec.finish().unwrap();
        assert!(end.decrypted_events >= 4);
        let raw_text = String::from_utf8_lossy(&raw);
        assert!(!raw_text.contains("You said"), "content encrypted on the wire");
        assert!(raw_text.ends_with("data: [DONE]\n\n"));
        assert!(!raw_text.contains("\"content\":\"\""), "delta.content \"\" is removed");

        let content = assemble(&events, "content", false);
        assert_eq!(content, ["You said: stream me please", "You said: stream me please (choice 1)"]);
        let reasoning = assemble(&events, "reasoning_content", false);
        assert_eq!(reasoning.len(), 2);

        // Chunk ids differ from chunk to chunk; the receipt's chat_id is the first one.
        let ids: Vec<String> = raw_text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        assert!(ids.len() > 3 && ids[0] != ids[2]);
        let doc = verified_receipt(&c, &gw, &receipt_id).await;
        assert_eq!(doc["chat_id"], ids[0].as_str());
        assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&raw));
        assert_eq!(
            event_hash(&doc, "request.received"),
            format!("sha256:{}", const_hex::encode(req.restored_body_sha256))
        );
    }
}

#[tokio::test]
async fn completions_buffered_and_streamed() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let key = key_for(&c, &gw, Suite::X25519).await;
    let body = json!({"model": "demo-model", "prompt": ["once upon", 17, "a time"]});
    let req = encrypt(Endpoint::Completions, &body, &key, now());
    let reply = post_encrypted(&c, &gw, Endpoint::Completions, &req).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let v: Value = serde_json::from_slice(&decrypt_response(&req.context, reply.body.clone()).unwrap().body).unwrap();
    assert_eq!(v["choices"][0]["text"], "Echo: once upon a time");
    assert_eq!(gw.upstream_log().pop().unwrap()["prompt"], json!(["once upon", 17, "a time"]));

    let key = key_for(&c, &gw, Suite::Secp256k1).await;
    let req =
        encrypt(Endpoint::Completions, &json!({"model": "demo-model", "prompt": "tell", "stream": true}), &key, now());
    let url = format!("{}/v1/completions", gw.base_url());
    let resp = open(&c, Method::POST, &url, &e2ee_headers(&req), req.body.clone()).await;
    let receipt_id = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let mut dec = StreamDecryptor::new(req.context, SseLimits::default());
    let (raw, events, _) = read_stream(resp, &mut dec, Duration::from_secs(10)).await;
    dec.finish().unwrap();
    assert_eq!(assemble(&events, "", true), ["Echo: tell"]);
    let doc = verified_receipt(&c, &gw, &receipt_id).await;
    assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&raw));
    assert_eq!(doc["endpoint"], "/v1/completions");
}

/// The built-in embedding of `text`, computed independently.
fn expected_embedding(text: &str) -> Vec<f64> {
    Sha256::digest(text.as_bytes())[..8].iter().map(|&b| (f64::from(b) - 128.0) / 128.0).collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().filter(|&&c| c != b'=').count();
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= u32::from(if c == b'=' { 0 } else { val(c) }) << (18 - 6 * i);
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..n]);
    }
    out
}

#[tokio::test]
async fn embeddings_float_and_base64() {
    let (gw, c) = start(GatewayConfig::new()).await;
    for suite in Suite::ALL {
        let key = key_for(&c, &gw, suite).await;
        let req = encrypt(Endpoint::Embeddings, &json!({"model": "embed", "input": ["alpha", "beta"]}), &key, now());
        let reply = post_encrypted(&c, &gw, Endpoint::Embeddings, &req).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let wire = reply.json();
        assert!(wire["data"][0]["embedding"].is_string(), "embedding sealed");
        let v: Value =
            serde_json::from_slice(&decrypt_response(&req.context, reply.body.clone()).unwrap().body).unwrap();
        for (i, text) in ["alpha", "beta"].into_iter().enumerate() {
            let got: Vec<f64> =
                v["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(got, expected_embedding(text));
        }
        let doc = verified_receipt(&c, &gw, reply.header("x-receipt-id").unwrap()).await;
        assert_eq!(doc["chat_id"], Value::Null, "embeddings carry no id");

        let req = encrypt(
            Endpoint::Embeddings,
            &json!({"model": "embed", "input": "gamma", "encoding_format": "base64"}),
            &key,
            now(),
        );
        let reply = post_encrypted(&c, &gw, Endpoint::Embeddings, &req).await;
        let v: Value =
            serde_json::from_slice(&decrypt_response(&req.context, reply.body.clone()).unwrap().body).unwrap();
        let b64 = v["data"][0]["embedding"].as_str().expect("a base64 string");
        let floats: Vec<f64> =
            base64_decode(b64).chunks(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap()))).collect();
        assert_eq!(floats, expected_embedding("gamma"));
    }
}

/// Send `body` with the headers of `req`, edited.
async fn send_with(
    c: &HttpClient,
    gw: &TestGateway,
    path: &str,
    req: &EncryptedRequest,
    edit: impl FnOnce(&mut Vec<(String, String)>),
    body: Vec<u8>,
) -> Reply {
    let mut headers = e2ee_headers(req);
    edit(&mut headers);
    send(c, Method::POST, &format!("{}{path}", gw.base_url()), &headers, body).await
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| k != name);
    if let Some(v) = value {
        headers.push(h(name, v));
    }
}

fn assert_rejected(reply: &Reply, status: u16, kind: &str) {
    assert_eq!((reply.status, reply.error_type().as_str()), (status, kind), "{:?}", reply.body);
    let err = &reply.json()["error"];
    assert!(err["message"].is_string() && err["code"].is_null() && err["param"].is_null());
    assert_eq!(reply.header("x-e2ee-applied"), None, "no E2EE headers on rejections");
    assert_eq!(reply.header("x-receipt-id"), None);
    assert_eq!(reply.header("x-aci-version"), Some("aci/1"));
    assert!(reply.header("x-aci-keyset-digest").unwrap().starts_with("sha256:"));
}

#[tokio::test]
async fn every_request_error_type_with_its_status() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let x = key_for(&c, &gw, Suite::X25519).await;
    let k = key_for(&c, &gw, Suite::Secp256k1).await;
    let fresh = |key: &E2eeKey| encrypt(Endpoint::ChatCompletions, &chat_body("hi"), key, now());
    let chat = "/v1/chat/completions";

    // Step 0: E2EE on endpoints without a field contract.
    for path in ["/v1/messages", "/v1/responses"] {
        let r =
            send(&c, Method::POST, &format!("{}{path}", gw.base_url()), &[h("x-e2ee-version", "2")], b"{}".to_vec())
                .await;
        assert_rejected(&r, 400, "e2ee_unsupported_endpoint");
        let r = send(
            &c,
            Method::POST,
            &format!("{}{path}", gw.base_url()),
            &[h("x-signing-algo", "ecdsa")],
            b"{}".to_vec(),
        )
        .await;
        assert_rejected(&r, 400, "e2ee_unsupported_endpoint");
    }
    // Step 3/4: missing headers; a lone E2EE header engages E2EE.
    let r = send(
        &c,
        Method::POST,
        &format!("{}{chat}", gw.base_url()),
        &[h("x-e2ee-nonce", "ab".repeat(32))],
        b"{}".to_vec(),
    )
    .await;
    assert_rejected(&r, 400, "e2ee_header_missing");
    for missing in ["x-client-pub-key", "x-model-pub-key", "x-e2ee-nonce", "x-e2ee-timestamp"] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |hs| set(hs, missing, None), req.body.clone()).await;
        assert_rejected(&r, 400, "e2ee_header_missing");
    }
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-e2ee-version", Some("1")), req.body.clone()).await;
    assert_rejected(&r, 400, "e2ee_invalid_version");
    // Step 5: nonce format.
    for bad in ["ab".repeat(31) + "a", "zz".repeat(32), "ab".repeat(33)] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-e2ee-nonce", Some(&bad)), req.body.clone()).await;
        assert_rejected(&r, 400, "e2ee_invalid_nonce");
    }
    // Step 6: timestamp format.
    for bad in ["soon", "-5", "1.5", " 12"] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-e2ee-timestamp", Some(bad)), req.body.clone()).await;
        assert_rejected(&r, 400, "e2ee_invalid_timestamp");
    }
    // Step 8: model key.
    let stranger = SecretKey::generate(Suite::X25519, &mut rand_core::OsRng).public_key().to_hex();
    let upper_0x = format!("0X{}", x.public_key_text());
    for bad in [stranger.as_str(), upper_0x.as_str(), "not hex"] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-model-pub-key", Some(bad)), req.body.clone()).await;
        assert_rejected(&r, 400, "e2ee_model_key_mismatch");
    }
    // Step 9: client key invalid for the model key's suite.
    let req = fresh(&k);
    let x_client = SecretKey::generate(Suite::X25519, &mut rand_core::OsRng).public_key().to_hex();
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-client-pub-key", Some(&x_client)), req.body.clone()).await;
    assert_rejected(&r, 400, "e2ee_invalid_public_key");
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-client-pub-key", Some("abcd")), req.body.clone()).await;
    assert_rejected(&r, 400, "e2ee_invalid_public_key");
    // Step 10: not JSON.
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |_| {}, b"{not json".to_vec()).await;
    assert_rejected(&r, 400, "e2ee_decryption_failed");
    // Step 11: model.
    for body in [json!({"messages": []}), json!({"model": 7, "messages": []}), json!([1])] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |_| {}, serde_json::to_vec(&body).unwrap()).await;
        assert_rejected(&r, 400, "e2ee_invalid_payload_model");
    }
    // Step 13: plaintext content, a tampered ciphertext, no encrypted field at all.
    let req = fresh(&x);
    let mut wire: Value = serde_json::from_slice(&req.body).unwrap();
    wire["messages"][0]["content"] = json!("system prompt in clear");
    let r = send_with(&c, &gw, chat, &req, |_| {}, serde_json::to_vec(&wire).unwrap()).await;
    assert_rejected(&r, 400, "e2ee_decryption_failed");
    let req = fresh(&k);
    let mut wire: Value = serde_json::from_slice(&req.body).unwrap();
    let ct = wire["messages"][1]["content"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", &ct[..ct.len() - 1], if ct.ends_with('0') { '1' } else { '0' });
    wire["messages"][1]["content"] = json!(flipped);
    let r = send_with(&c, &gw, chat, &req, |_| {}, serde_json::to_vec(&wire).unwrap()).await;
    assert_rejected(&r, 400, "e2ee_decryption_failed");
    for body in [
        json!({"model": "m", "messages": []}),
        json!({"model": "m", "messages": [{"role": "user", "content": null}]}),
        json!({"model": "m", "messages": "hi"}),
    ] {
        let req = fresh(&x);
        let r = send_with(&c, &gw, chat, &req, |_| {}, serde_json::to_vec(&body).unwrap()).await;
        assert_rejected(&r, 400, "e2ee_decryption_failed");
    }
    let req = encrypt(Endpoint::Completions, &json!({"model": "m", "prompt": "p"}), &x, now());
    let r = send_with(&c, &gw, "/v1/completions", &req, |_| {}, br#"{"model":"m","prompt":[1,2,3]}"#.to_vec()).await;
    assert_rejected(&r, 400, "e2ee_decryption_failed");
    // Step 12: replay (the same request twice).
    let req = fresh(&x);
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 200);
    let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
    assert_rejected(&r, 400, "e2ee_replay_detected");
    // The legacy path is refused.
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-signing-algo", Some("rsa")), req.body.clone()).await;
    assert_rejected(&r, 400, "e2ee_invalid_signing_algo");
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-signing-algo", Some("ecdsa")), req.body.clone()).await;
    assert_rejected(&r, 400, "e2ee_model_key_mismatch");
    // Step 14: ordinary validation after decryption.
    let req = fresh(&x);
    let r = send_with(&c, &gw, chat, &req, |hs| set(hs, "x-upstream-verification", Some("required")), req.body.clone())
        .await;
    assert_rejected(&r, 400, "invalid_request_error");
    // Only the one successful request reached the upstream.
    assert_eq!(gw.upstream_log().len(), 1);
}

#[tokio::test]
async fn timestamp_window_is_inclusive_at_300_seconds() {
    let t = 1_750_000_000;
    let clock = ManualClock::new(t);
    let (gw, c) = start(GatewayConfig::new().clock(Arc::new(clock.clone()))).await;
    let key = key_for(&c, &gw, Suite::X25519).await;
    for (ts, ok) in [(t - 300, true), (t + 300, true), (t - 301, false), (t + 301, false), (t, true)] {
        let req = encrypt(Endpoint::ChatCompletions, &chat_body("tick"), &key, ts);
        let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
        if ok {
            assert_eq!(r.status, 200, "ts {ts}: {:?}", r.body);
        } else {
            assert_rejected(&r, 400, "e2ee_invalid_timestamp");
        }
    }
    // A leading `+` and zeros parse (the AAD still uses the integer).
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("tock"), &key, t);
    let r = send_with(
        &c,
        &gw,
        "/v1/chat/completions",
        &req,
        |hs| set(hs, "x-e2ee-timestamp", Some(&format!("+00{t}"))),
        req.body.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Replay entries expire 300 s after they were claimed (server clock).
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("again"), &key, t);
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 200);
    clock.advance(299);
    assert_rejected(&post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await, 400, "e2ee_replay_detected");
    clock.advance(1);
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 200);
}

#[tokio::test]
async fn the_nonce_is_burned_before_decryption() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let key = key_for(&c, &gw, Suite::Secp256k1).await;
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("burn"), &key, now());
    let mut wire: Value = serde_json::from_slice(&req.body).unwrap();
    wire["messages"][1]["content"] = json!("clear text");
    let r = send_with(&c, &gw, "/v1/chat/completions", &req, |_| {}, serde_json::to_vec(&wire).unwrap()).await;
    assert_rejected(&r, 400, "e2ee_decryption_failed");
    // The genuine body under the same nonce is now a replay, even with the nonce in upper case.
    let upper = req.context.nonce().to_uppercase();
    let r =
        send_with(&c, &gw, "/v1/chat/completions", &req, |hs| set(hs, "x-e2ee-nonce", Some(&upper)), req.body.clone())
            .await;
    assert_rejected(&r, 400, "e2ee_replay_detected");
    let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
    assert_rejected(&r, 400, "e2ee_replay_detected");

    // StatusOnce answers after the nonce is burned: a retry must re-encrypt.
    gw.set_fault(Some(Fault::StatusOnce(503)));
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("retry"), &key, now());
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 503);
    assert_rejected(&post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await, 400, "e2ee_replay_detected");
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("retry"), &key, now());
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 200);
}

#[tokio::test]
async fn plaintext_requests_get_receipts_over_the_raw_wire_bytes() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let wire =
        br#"{ "model" : "demo-model", "messages": [ {"role":"user","content":"plain \u00e9","tool_calls":[]} ] }"#
            .to_vec();
    let r = send(&c, Method::POST, &format!("{}/v1/chat/completions", gw.base_url()), &[], wire.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-e2ee-applied"), Some("false"));
    assert_eq!(r.header("x-e2ee-version"), None);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "You said: plain é");
    let doc = verified_receipt(&c, &gw, r.header("x-receipt-id").unwrap()).await;
    assert_eq!(event_hash(&doc, "request.received"), sha256_tag(&wire));
    // The direct path drops the empty `tool_calls` before forwarding.
    let forwarded = gw.upstream_log().pop().unwrap();
    assert!(forwarded["messages"][0].get("tool_calls").is_none());
    assert_eq!(event_hash(&doc, "request.forwarded"), sha256_tag(&serde_json::to_vec(&forwarded).unwrap()));
    assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&r.body));

    let bad = send(&c, Method::POST, &format!("{}/v1/chat/completions", gw.base_url()), &[], b"nope".to_vec()).await;
    assert_rejected(&bad, 400, "invalid_request_error");

    // A plaintext stream is re-framed without encryption and still signed.
    let body = br#"{"model":"demo-model","stream":true,"messages":[{"role":"user","content":"s"}]}"#.to_vec();
    let r = send(&c, Method::POST, &format!("{}/v1/chat/completions", gw.base_url()), &[], body).await;
    assert_eq!(r.header("x-e2ee-applied"), Some("false"));
    assert!(String::from_utf8_lossy(&r.body).contains("\"content\":\"said: \""), "plaintext deltas");
    let doc = verified_receipt(&c, &gw, r.header("x-receipt-id").unwrap()).await;
    assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&r.body));
}

#[tokio::test]
async fn receipts_follow_bearer_ownership() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let key = key_for(&c, &gw, Suite::X25519).await;
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("mine"), &key, now());
    let mut headers = e2ee_headers(&req);
    headers.push(h("authorization", "Bearer sk-owner"));
    let r = send(&c, Method::POST, &format!("{}/v1/chat/completions", gw.base_url()), &headers, req.body.clone()).await;
    assert_eq!(r.status, 200);
    let rid = r.header("x-receipt-id").unwrap().to_owned();
    let chat_id = r.json()["id"].as_str().unwrap().to_owned();
    for id in [rid.as_str(), chat_id.as_str()] {
        let none = fetch_receipt(&c, &gw, id, None).await;
        assert_eq!((none.status, none.error_type().as_str()), (401, "unauthorized"));
        let other = fetch_receipt(&c, &gw, id, Some("Bearer sk-other")).await;
        assert_eq!((other.status, other.error_type().as_str()), (404, "not_found"));
        for auth in ["Bearer sk-owner", "bearer sk-owner"] {
            let ok = fetch_receipt(&c, &gw, id, Some(auth)).await;
            assert_eq!(ok.status, 200);
            check_signature(&c, &gw, &ok.body).await;
        }
    }
    let missing = fetch_receipt(&c, &gw, "rcpt-000000000000000000000000", Some("Bearer sk-owner")).await;
    assert_eq!((missing.status, missing.error_type().as_str()), (404, "not_found"));
    assert_eq!(missing.header("x-aci-version"), Some("aci/1"));
}

#[test]
fn sign_receipt_reproduces_the_spec_vector_byte_exact() {
    let v = data::load("aci_vectors.json");
    let r = &v["receipt"];
    let signing_input = r["signing_input_jcs"].as_str().unwrap();
    let mut unsigned: Value = serde_json::from_str(signing_input).unwrap();
    unsigned.as_object_mut().unwrap().remove("key_id");
    let key = ed25519_dalek::SigningKey::from_bytes(&data::arr32(v["keys"]["receipt-1"]["seed_hex"].as_str().unwrap()));
    assert_eq!(
        const_hex::encode(key.verifying_key().as_bytes()),
        v["keys"]["receipt-1"]["public_key"].as_str().unwrap()
    );
    let doc = sign_receipt(&unsigned, "receipt-1", &key).unwrap();
    assert_eq!(std::str::from_utf8(&doc).unwrap(), r["document"].as_str().unwrap());
    assert_eq!(
        const_hex::encode(Sha256::digest(signing_input.as_bytes())),
        r["signing_input_sha256"].as_str().unwrap()
    );
    assert_eq!(sha256_tag(r["request_body"].as_str().unwrap().as_bytes()), r["request_body_hash"].as_str().unwrap());
    assert_eq!(sha256_tag(r["response_body"].as_str().unwrap().as_bytes()), r["response_body_hash"].as_str().unwrap());
    // A stale signature member is replaced, not signed over.
    let mut stale = unsigned.clone();
    stale["signature"] = json!("00");
    assert_eq!(sign_receipt(&stale, "receipt-1", &key).unwrap(), doc);
    // Not an object: the caller's mistake (a Config error: this crate makes no verdict errors).
    assert_eq!(sign_receipt(&json!([1]), "k", &key).unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(sign_receipt(&json!({"x": 0.5}), "k", &key).unwrap_err().kind(), ErrorKind::Malformed);
}

#[tokio::test]
async fn the_report_binds_keyset_and_nonce() {
    let (gw, c) = start(GatewayConfig::new().fixed_seeds().not_after(2_000_000_000)).await;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce_hex = const_hex::encode(nonce);
    let reply = report(&c, &gw, Some(&nonce_hex)).await;
    assert_eq!(reply.status, 200);
    let r = reply.json();
    assert_eq!(r["api_version"], "aci/1");
    let ks = &r["attestation"]["workload_keyset"];
    let digest = format!("sha256:{}", const_hex::encode(Sha256::digest(jcs_to_vec(ks).unwrap())));
    assert_eq!(r["workload_keyset_digest"], digest.as_str());
    assert_eq!(reply.header("x-aci-keyset-digest"), Some(digest.as_str()));
    assert_eq!(gw.keyset_digest(), digest);
    let statement = format!(r#"{{"keyset_digest":"{digest}","nonce":"{nonce_hex}","purpose":"aci.report_data.v1"}}"#);
    let rd = Sha256::digest(statement.as_bytes());
    assert_eq!(r["attestation"]["report_data"], const_hex::encode(rd).as_str());
    let ev = &r["attestation"]["evidence"];
    let mut quote = b"aci-stub-quote|".to_vec();
    quote.extend_from_slice(&rd);
    assert_eq!(ev["quote"], const_hex::encode(quote).as_str());
    assert_eq!(ev["quote_report_data"], const_hex::encode(rd).as_str());
    assert_eq!(ev["stub"], true);
    assert_eq!(r["attestation"]["tee_type"], "tdx");
    assert_eq!(r["service_capabilities"], json!({"supported_e2ee_versions": ["2"], "serving": "direct"}));
    // Fixed seeds: the reference test tree's keys (protocol.md §8.3) under production key ids.
    assert_eq!(
        ks,
        &json!({
            "subject": null,
            "not_after": 2_000_000_000u64,
            "receipt_signing_keys": [{"key_id": "dstack-kms-receipt-ed25519-v1", "algo": "ed25519",
                "public_key": "34b4d9043156cb6dcf0beb0a2949b7559c940d2bcb6dbe8c53a9b30278e3a746"}],
            "e2ee_public_keys": [
                {"key_id": "dstack-kms-e2ee-v1", "algo": "secp256k1-aes-256-gcm-hkdf-sha256",
                 "public_key": "042c0b7cf95324a07d05398b240174dc0c2be444d96b159aa6c7f7b1e668680991ae31a9c671a36543f46cea8fce6984608aa316aa0472a7eed08847440218cb2f"},
                {"key_id": "dstack-kms-e2ee-x25519-v1", "algo": "x25519-aes-256-gcm-hkdf-sha256",
                 "public_key": "38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67"}
            ],
            "tls_public_keys": []
        })
    );
    // The crate's own verifier accepts it only when told to accept a stub quote.
    let verified = tower_aci::attest::verify_report(
        &reply.body,
        &nonce,
        now(),
        &tower_aci::attest::Policy::builder()
            .max_validity(Duration::from_secs(20 * 365 * 24 * 3600))
            .dangerous()
            .accept_stub_quote()
            .any_workload()
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(verified.digest(), digest);
    assert!(!verified.hardware_verified());
    let strict = tower_aci::attest::Policy::builder().dangerous().any_workload().build().unwrap();
    assert!(tower_aci::attest::verify_report(&reply.body, &nonce, now(), &strict).is_err());

    // No nonce: the null statement.
    let r = report(&c, &gw, None).await.json();
    let statement = format!(r#"{{"keyset_digest":"{digest}","nonce":null,"purpose":"aci.report_data.v1"}}"#);
    assert_eq!(r["attestation"]["report_data"], const_hex::encode(Sha256::digest(statement.as_bytes())).as_str());
    // Attestation nonces must be 64 lowercase hex.
    for bad in
        [nonce_hex.to_uppercase(), nonce_hex[1..].to_owned(), String::new(), format!("{nonce_hex}&nonce={nonce_hex}")]
    {
        let reply = report(&c, &gw, Some(&bad)).await;
        assert_rejected(&reply, 400, "invalid_request_error");
    }
    // Percent-encoding is decoded first.
    let encoded = format!("%{:02x}{}", nonce_hex.as_bytes()[0], &nonce_hex[1..]);
    assert_eq!(
        report(&c, &gw, Some(&encoded)).await.json()["attestation"]["report_data"],
        const_hex::encode(rd).as_str()
    );
    assert_eq!(gw.attestations_served(), 7);
}

#[tokio::test]
async fn keyset_renewal_and_e2ee_key_rotation() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let key = key_for(&c, &gw, Suite::X25519).await;
    let first = gw.keyset_digest();
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("one"), &key, now());
    let rid = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.header("x-receipt-id").unwrap().to_owned();

    gw.renew_keyset(now() + 1000);
    assert_ne!(gw.keyset_digest(), first);
    // Same keys: the old key still works; responses name the new digest.
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("two"), &key, now());
    let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-aci-keyset-digest"), Some(gw.keyset_digest().as_str()));
    // An old receipt still names the digest of the keyset that served it.
    let old = fetch_receipt(&c, &gw, &rid, None).await.json();
    assert_eq!(old["workload_keyset_digest"], first.as_str());

    gw.rotate_e2ee_keys();
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("three"), &key, now());
    assert_rejected(&post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await, 400, "e2ee_model_key_mismatch");
    let key = key_for(&c, &gw, Suite::X25519).await;
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("four"), &key, now());
    assert_eq!(post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await.status, 200);
}

/// Start an encrypted chat stream; returns the response and its decryptor.
async fn stream_chat(c: &HttpClient, gw: &TestGateway, text: &str) -> (http::Response<Incoming>, StreamDecryptor) {
    let key = key_for(c, gw, Suite::X25519).await;
    let mut body = chat_body(text);
    body["stream"] = json!(true);
    let req = encrypt(Endpoint::ChatCompletions, &body, &key, now());
    let url = format!("{}/v1/chat/completions", gw.base_url());
    let resp = open(c, Method::POST, &url, &e2ee_headers(&req), req.body.clone()).await;
    (resp, StreamDecryptor::new(req.context, SseLimits::default()))
}

#[tokio::test]
async fn stream_faults() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let long = Duration::from_secs(10);

    // Transport error after two events: the gateway's error chunk and [DONE]; signed.
    gw.set_fault(Some(Fault::TransportErrorAfter { events: 2 }));
    let (resp, mut dec) = stream_chat(&c, &gw, "a b c d e f").await;
    let rid = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let (raw, events, ended) = read_stream(resp, &mut dec, long).await;
    assert!(ended);
    assert!(raw.ends_with(b"data: {\"error\":{\"message\":\"The upstream provider returned an error\",\"type\":\"upstream_error\",\"code\":502,\"param\":null}}\n\ndata: [DONE]\n\n"));
    assert!(events.iter().any(|e| matches!(e, Ok(StreamOutput::InBandError(..)))));
    assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::InBandError);
    let doc = verified_receipt(&c, &gw, &rid).await;
    assert_eq!(event_hash(&doc, "response.returned"), sha256_tag(&raw));

    // Cut mid-event: the partial event is dropped, nothing appended, the receipt still signs it.
    gw.set_fault(Some(Fault::CutMidEvent { after_events: 3 }));
    let (resp, mut dec) = stream_chat(&c, &gw, "a b c d e f").await;
    let rid = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let (raw, events, _) = read_stream(resp, &mut dec, long).await;
    assert_eq!(events.len(), 3);
    assert!(!String::from_utf8_lossy(&raw).contains("[DONE]"));
    assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::Truncated);
    assert_eq!(event_hash(&verified_receipt(&c, &gw, &rid).await, "response.returned"), sha256_tag(&raw));

    // A non-JSON data event ends the stream with no receipt, although the header named one.
    gw.set_fault(Some(Fault::NonJsonEvent));
    let (resp, mut dec) = stream_chat(&c, &gw, "x").await;
    let rid = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let (_, events, ended) = read_stream(resp, &mut dec, long).await;
    assert!(ended && events.len() == 1);
    assert!(dec.finish().is_err());
    assert_eq!(fetch_receipt(&c, &gw, &rid, None).await.status, 404);

    // A stall after two events: both are released, then nothing; dropping leaves no receipt.
    gw.set_fault(Some(Fault::StallAfter { events: 2 }));
    let (resp, mut dec) = stream_chat(&c, &gw, "x y").await;
    let rid = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    let (_, events, ended) = read_stream(resp, &mut dec, Duration::from_millis(100)).await;
    assert!(!ended);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(Result::is_ok));
    assert_eq!(fetch_receipt(&c, &gw, &rid, None).await.status, 404);

    // Delay between events: slower, same result.
    gw.set_fault(Some(Fault::EventDelay(Duration::from_millis(5))));
    let (resp, mut dec) = stream_chat(&c, &gw, "slow").await;
    let (_, events, _) = read_stream(resp, &mut dec, long).await;
    dec.finish().unwrap();
    assert_eq!(assemble(&events, "content", false), ["You said: slow"]);

    // Tampering on the wire is caught by the client, at the event it hits.
    gw.set_fault(Some(Fault::TamperEvent { index: 1 }));
    let (resp, mut dec) = stream_chat(&c, &gw, "tamper").await;
    let (_, events, _) = read_stream(resp, &mut dec, long).await;
    let first_err = events.iter().position(Result::is_err).expect("tamper detected");
    assert_eq!(events[first_err].as_ref().unwrap_err().kind(), ErrorKind::Decrypt);
    assert_eq!(first_err, 2, "role chunk (no ciphertext), reasoning chunk, then the tampered one");
    gw.set_fault(Some(Fault::TamperEvent { index: 0 }));
    let key = key_for(&c, &gw, Suite::Secp256k1).await;
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("tamper"), &key, now());
    let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
    assert_eq!(decrypt_response(&req.context, r.body.clone()).unwrap_err().kind(), ErrorKind::Decrypt);
    // The receipt names what the gateway sent, before the attacker's flip.
    let doc = verified_receipt(&c, &gw, r.header("x-receipt-id").unwrap()).await;
    assert_ne!(event_hash(&doc, "response.returned"), sha256_tag(&r.body));

    // An early disconnect leaves no receipt either.
    // (The whole stream would take ~80 ms; wait past that.)
    gw.set_fault(Some(Fault::EventDelay(Duration::from_millis(10))));
    let (resp, _) = stream_chat(&c, &gw, "bye").await;
    let rid = resp.headers()["x-receipt-id"].to_str().unwrap().to_owned();
    drop(resp);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch_receipt(&c, &gw, &rid, None).await.status, 404);
    gw.set_fault(None);
}

#[tokio::test]
async fn upstream_errors_and_custom_handlers() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let key = key_for(&c, &gw, Suite::X25519).await;

    // A JSON upstream error comes back in clear, with E2EE headers and a receipt.
    gw.set_fault(Some(Fault::UpstreamStatus(429, r#"{"error":{"message":"slow down","type":"rate_limit"}}"#.into())));
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("x"), &key, now());
    let r = post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await;
    assert_eq!((r.status, r.error_type().as_str()), (429, "rate_limit"));
    assert_eq!(r.header("x-e2ee-applied"), Some("true"));
    assert_eq!(decrypt_response(&req.context, r.body.clone()).unwrap().decrypted_fields, 0);
    verified_receipt(&c, &gw, r.header("x-receipt-id").unwrap()).await;
    // Streaming: a buffered error, no E2EE headers, no receipt.
    let (resp, _) = stream_chat(&c, &gw, "x").await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("x-e2ee-applied").is_none() && resp.headers().get("x-receipt-id").is_none());
    // A non-JSON upstream error under E2EE: 500 internal_error, no receipt.
    gw.set_fault(Some(Fault::UpstreamStatus(502, "bad gateway".into())));
    let req = encrypt(Endpoint::ChatCompletions, &chat_body("x"), &key, now());
    assert_rejected(&post_encrypted(&c, &gw, Endpoint::ChatCompletions, &req).await, 500, "internal_error");
    gw.set_fault(None);

    // A custom upstream: out-of-order choice indices, and a content array it cannot seal.
    let gw2 = TestGateway::start(GatewayConfig::new().upstream(|req| {
        let text = req.body["messages"][0]["content"].as_str().unwrap_or("").to_owned();
        if text == "array" {
            return UpstreamResponse::json(
                200,
                json!({"id": "c", "choices": [{"index": 0, "message": {"content": [1]}}]}),
            );
        }
        if req.stream {
            return UpstreamResponse::sse_events(
                vec![json!({"id": "s1", "choices": [{"index": 3, "delta": {"content": "late"}}]})],
                false,
            );
        }
        UpstreamResponse::json(
            200,
            json!({"id": "c", "choices": [
                {"index": 3, "message": {"content": "three"}},
                {"message": {"content": "position one"}}
            ]}),
        )
    }))
    .await
    .unwrap();
    let key2 = key_for(&c, &gw2, Suite::Secp256k1).await;
    let one = |t: &str| json!({"model": "m", "messages": [{"role": "user", "content": t}]});
    let req = encrypt(Endpoint::ChatCompletions, &one("order"), &key2, now());
    let r = post_encrypted(&c, &gw2, Endpoint::ChatCompletions, &req).await;
    let v: Value = serde_json::from_slice(&decrypt_response(&req.context, r.body.clone()).unwrap().body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "three");
    assert_eq!(v["choices"][1]["message"]["content"], "position one");
    let req = encrypt(Endpoint::ChatCompletions, &one("array"), &key2, now());
    assert_rejected(&post_encrypted(&c, &gw2, Endpoint::ChatCompletions, &req).await, 500, "internal_error");
    // A stream without [DONE] gets the gateway's own.
    let mut body = one("s");
    body["stream"] = json!(true);
    let req = encrypt(Endpoint::ChatCompletions, &body, &key2, now());
    let resp = open(
        &c,
        Method::POST,
        &format!("{}/v1/chat/completions", gw2.base_url()),
        &e2ee_headers(&req),
        req.body.clone(),
    )
    .await;
    let mut dec = StreamDecryptor::new(req.context, SseLimits::default());
    let (raw, events, _) = read_stream(resp, &mut dec, Duration::from_secs(10)).await;
    dec.finish().unwrap();
    assert!(raw.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(assemble(&events, "content", false)[3], "late");
}

#[tokio::test]
async fn routes_limits_and_aci_headers() {
    let (gw, c) = start(GatewayConfig::new()).await;
    let models = send(&c, Method::GET, &format!("{}/v1/models", gw.base_url()), &[], Vec::new()).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "demo-model");
    let missing = send(&c, Method::GET, &format!("{}/v2/nothing", gw.base_url()), &[], Vec::new()).await;
    assert_eq!(missing.status, 404);
    let wrong = send(&c, Method::GET, &format!("{}/v1/chat/completions", gw.base_url()), &[], Vec::new()).await;
    assert_eq!(wrong.status, 405);
    for r in [&models, &missing, &wrong] {
        assert_eq!(r.header("x-aci-version"), Some("aci/1"));
        assert_eq!(r.header("x-aci-keyset-digest"), Some(gw.keyset_digest().as_str()));
    }
    // 32 MiB request limit.
    let mut big = br#"{"model":"m","prompt":""#.to_vec();
    big.resize(32 * 1024 * 1024 + 1, b'a');
    let r = send(&c, Method::POST, &format!("{}/v1/completions", gw.base_url()), &[], big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-aci-version"), Some("aci/1"));
}
