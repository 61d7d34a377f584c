//! Quick start, fully offline: start a local attested ACI gateway in-process, check its
//! attestation report, send one encrypted chat completion and one streamed one, and verify the
//! signed receipt.
//!
//! ```text
//! cargo run --example quickstart --features test-gateway
//! ```
//!
//! The gateway's quote is a stub (there is no TEE on your machine); everything else, from the
//! keyset binding to the field encryption and the receipts, is the real wire protocol.

use bytes::{Bytes, BytesMut};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand_core::{OsRng, RngCore};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use tower_aci::gateway::{GatewayConfig, TestGateway};
use tower_aci::protocol::jcs;
use tower_aci::protocol::keys::E2eeKey;
use tower_aci::protocol::request::{EncryptOptions, EncryptedRequest, Endpoint, encrypt_request};
use tower_aci::protocol::response::decrypt_response;
use tower_aci::protocol::stream::{StreamDecryptor, StreamOutput};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn sha256_tag(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { format!("{}…", s.chars().take(n).collect::<String>()) }
}

/// POST an encrypted request with its five E2EE headers.
async fn post(
    client: &HttpClient,
    url: &str,
    req: &EncryptedRequest,
) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-e2ee-version", "2")
        .header("x-client-pub-key", &req.headers.client_pub_key)
        .header("x-model-pub-key", &req.headers.model_pub_key)
        .header("x-e2ee-nonce", &req.headers.nonce)
        .header("x-e2ee-timestamp", req.headers.timestamp.to_string())
        .body(Full::new(Bytes::from(req.body.clone())))?;
    Ok(client.request(request).await?)
}

async fn get(client: &HttpClient, url: &str) -> Result<Bytes, BoxError> {
    let resp = client.request(http::Request::get(url).body(Full::new(Bytes::new()))?).await?;
    Ok(resp.into_body().collect().await?.to_bytes())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let gateway = TestGateway::start(GatewayConfig::new()).await?;
    let base = gateway.base_url();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!("Local ACI gateway listening on {base}\n");

    // 1. Attestation: a fresh nonce, then check that the report binds the keyset to it.
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let nonce_hex = hex::encode(nonce);
    let report: Value =
        serde_json::from_slice(&get(&client, &format!("{base}/v1/aci/attestation?nonce={nonce_hex}")).await?)?;
    let keyset = &report["attestation"]["workload_keyset"];
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(jcs::to_vec(keyset)?)));
    let statement = format!(r#"{{"keyset_digest":"{digest}","nonce":"{nonce_hex}","purpose":"aci.report_data.v1"}}"#);
    let bound = report["workload_keyset_digest"] == digest.as_str()
        && report["attestation"]["report_data"] == hex::encode(Sha256::digest(statement.as_bytes())).as_str();
    if !bound {
        return Err("the report does not bind its keyset to our nonce".into());
    }
    println!("✔ Attestation report binds keyset {} to our nonce", shorten(&digest, 23));
    println!(
        "  (the quote is a stub: evidence.stub = {}; a real gateway sends a TDX quote)\n",
        report["attestation"]["evidence"]["stub"]
    );

    // The production default E2EE key: secp256k1, key id `dstack-kms-e2ee-v1`.
    let entry = keyset["e2ee_public_keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["key_id"] == "dstack-kms-e2ee-v1"))
        .ok_or("no dstack-kms-e2ee-v1 key in the keyset")?;
    let key = E2eeKey::parse(
        entry["key_id"].as_str().unwrap_or_default(),
        entry["algo"].as_str().unwrap_or_default(),
        entry["public_key"].as_str().unwrap_or_default(),
    )?;
    println!("Encrypting to {} ({})\n", key.key_id(), key.suite());

    // 2. One encrypted chat completion.
    let question = "What is attested confidential inference?";
    let body = json!({"model": "demo-model", "messages": [{"role": "user", "content": question}]});
    let req = encrypt_request(
        Endpoint::ChatCompletions,
        &serde_json::to_vec(&body)?,
        &key,
        &EncryptOptions::default(),
        now(),
        &mut OsRng,
    )?;
    let resp = post(&client, &format!("{base}/v1/chat/completions"), &req).await?;
    let receipt_id = resp.headers().get("x-receipt-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let wire_answer = resp.into_body().collect().await?.to_bytes();
    let answer: Value = serde_json::from_slice(&decrypt_response(&req.context, wire_answer.clone())?.body)?;
    println!("You:       {question}");
    println!("Assistant: {}\n", answer["choices"][0]["message"]["content"].as_str().unwrap_or_default());

    // What each side saw.
    let wire: Value = serde_json::from_slice(gateway.wire_log().last().ok_or("no request on the wire")?)?;
    let upstream = gateway.upstream_log().pop().ok_or("the upstream saw nothing")?;
    println!(
        "On the wire, the message was: {}",
        shorten(wire["messages"][0]["content"].as_str().unwrap_or_default(), 48)
    );
    println!("Inside the gateway, the model saw: {}\n", upstream["messages"][0]["content"]);

    // 3. One streamed chat completion, decrypted event by event as it arrives.
    let body = json!({"model": "demo-model", "stream": true,
        "messages": [{"role": "user", "content": "Stream a short answer, please."}]});
    let req = encrypt_request(
        Endpoint::ChatCompletions,
        &serde_json::to_vec(&body)?,
        &key,
        &EncryptOptions::default(),
        now(),
        &mut OsRng,
    )?;
    let resp = post(&client, &format!("{base}/v1/chat/completions"), &req).await?;
    let mut decryptor = StreamDecryptor::new(req.context, Default::default());
    let mut body = resp.into_body();
    let mut raw = BytesMut::new();
    print!("Streamed:  ");
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        raw.extend_from_slice(&data);
        decryptor.push(&data);
        while let Some(out) = decryptor.next_output()? {
            if let StreamOutput::Event(event) = out {
                for line in std::str::from_utf8(&event)?.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    if let Ok(chunk) = serde_json::from_str::<Value>(line) {
                        print!("{}", chunk["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
                    }
                }
            }
        }
    }
    let end = decryptor.finish()?;
    println!(
        "\n           ({} events decrypted, stream ended with [DONE], {} bytes on the wire)\n",
        end.decrypted_events,
        raw.len()
    );

    // 4. The signed receipt of the first exchange.
    let served = get(&client, &format!("{base}/v1/aci/receipts/{receipt_id}")).await?;
    let receipt: Value = serde_json::from_slice(&served)?;
    let signer = keyset["receipt_signing_keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["key_id"] == receipt["key_id"]))
        .ok_or("receipt key not in the attested keyset")?;
    let public: [u8; 32] =
        hex::decode(signer["public_key"].as_str().unwrap_or_default())?.try_into().map_err(|_| "bad key")?;
    let signature: [u8; 64] =
        hex::decode(receipt["signature"].as_str().unwrap_or_default())?.try_into().map_err(|_| "bad signature")?;
    let mut unsigned = receipt.clone();
    if let Some(map) = unsigned.as_object_mut() {
        map.remove("signature");
    }
    VerifyingKey::from_bytes(&public)?.verify(&jcs::to_vec(&unsigned)?, &Signature::from_bytes(&signature))?;
    let returned = receipt["event_log"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "response.returned"))
        .and_then(|e| e["body_hash"].as_str())
        .unwrap_or_default();
    if returned != sha256_tag(&wire_answer) || receipt["workload_keyset_digest"] != digest.as_str() {
        return Err("the receipt does not name the bytes we received".into());
    }
    println!("✔ Receipt {receipt_id}: Ed25519 signature valid, signed by the attested key,");
    println!("  and it names exactly the response bytes we received.");
    Ok(())
}
