//! Shared by the fuzz targets: the spec vectors (copied into `tests/data/`) and a stub-quoted
//! report sealed the way the reference gateway seals one.
#![allow(dead_code)]

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower_aci::attest::Policy;
use tower_aci::protocol::jcs;

/// `tests/data/aci_vectors.json`.
pub const ACI_VECTORS: &str = include_str!("../../tests/data/aci_vectors.json");

/// The nonce the fuzz targets attest with.
pub const REPORT_NONCE: [u8; 32] = [0x42; 32];

/// Ten days before the vector keyset's `not_after` (1800000000).
pub const VECTOR_NOW: u64 = 1_800_000_000 - 10 * 24 * 3600;

pub fn vectors() -> Value {
    serde_json::from_str(ACI_VECTORS).unwrap()
}

/// A member of the vectors that holds JSON text.
pub fn vector_text(a: &str, b: &str) -> String {
    vectors()[a][b].as_str().unwrap().to_owned()
}

/// `sha256:` + hex(SHA-256(JCS(keyset))), or `None` when the keyset has no JCS form.
pub fn digest_of(keyset: &Value) -> Option<String> {
    Some(format!("sha256:{}", hex::encode(Sha256::digest(jcs::to_vec(keyset).ok()?))))
}

/// The report-data statement of protocol.md §6, spelled out.
pub fn report_data_of(digest: &str, nonce: &[u8; 32]) -> [u8; 32] {
    let statement =
        format!(r#"{{"keyset_digest":"{digest}","nonce":"{}","purpose":"aci.report_data.v1"}}"#, hex::encode(nonce));
    Sha256::digest(statement.as_bytes()).into()
}

/// Bind `report` (a report document whose `attestation.workload_keyset` is kept) to its keyset
/// and `nonce` with a stub quote: digest, `report_data`, quote and `quote_report_data` are
/// recomputed; everything else is left as it is. `None` when the document is not shaped enough.
pub fn reseal(report: &mut Value, nonce: &[u8; 32]) -> Option<()> {
    let keyset = report.get("attestation")?.get("workload_keyset")?;
    let digest = digest_of(keyset)?;
    let rd = report_data_of(&digest, nonce);
    let mut slot = rd.to_vec();
    slot.extend_from_slice(&[0; 32]);
    let mut quote = b"aci-stub-quote|".to_vec();
    quote.extend_from_slice(&slot);
    let top = report.as_object_mut()?;
    top.insert("workload_keyset_digest".into(), Value::String(digest));
    let att = top.get_mut("attestation")?.as_object_mut()?;
    att.insert("report_data".into(), Value::String(hex::encode(rd)));
    let ev = att.entry("evidence").or_insert_with(|| json!({}));
    if let Value::Object(ev) = ev {
        ev.insert("quote".into(), Value::String(hex::encode(&quote)));
        if ev.contains_key("quote_report_data") {
            ev.insert("quote_report_data".into(), Value::String(hex::encode(&slot)));
        }
    }
    Some(())
}

/// A report for `keyset`, shaped like the reference gateway's, bound to `nonce`.
pub fn seal_report(keyset: Value, nonce: &[u8; 32]) -> Option<Value> {
    let mut report = json!({
        "api_version": "aci/1",
        "attestation": {
            "tee_type": "tdx",
            "workload_keyset": keyset,
            "source_provenance": {"repo_url": "https://github.com/Dstack-TEE/private-ai-gateway", "repo_commit": "deadbeef"},
            "evidence": {"quote_report_data": "", "event_log": null, "vm_config": "{}", "app_compose": null}
        },
        "service_capabilities": {"supported_e2ee_versions": ["2"], "serving": "direct"}
    });
    reseal(&mut report, nonce)?;
    Some(report)
}

/// Stub quotes accepted, key custody verified when present.
pub fn stub_policy() -> Policy {
    Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap()
}

// ---- The spec walk of protocol.md §3.4, independent of the crate's walker ----

use serde_json::Map;
use tower_aci::protocol::Endpoint;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `messages.{m}.content`: restored as an array when the plaintext parses as one.
    Whole,
    /// Part fields, prompts and inputs: always strings.
    Text,
}

/// The spec walk (§3.4) over a body: every location the gateway decrypts, as paths into the
/// document, or why the gateway refuses the body.
pub fn spec_locations(
    endpoint: Endpoint,
    body: &Map<String, Value>,
) -> Result<Vec<(String, Vec<PathStep>, Kind)>, &'static str> {
    let mut out = Vec::new();
    match endpoint {
        Endpoint::ChatCompletions => {
            let Some(Value::Array(messages)) = body.get("messages") else { return Err("messages not an array") };
            for (m, msg) in messages.iter().enumerate() {
                let Some(content) = msg.as_object().and_then(|o| o.get("content")) else { continue };
                let base = vec![PathStep::Key("messages".into()), PathStep::Index(m), PathStep::Key("content".into())];
                match content {
                    Value::String(_) => out.push((format!("messages.{m}.content"), base, Kind::Whole)),
                    Value::Array(parts) => {
                        for (c, part) in parts.iter().enumerate() {
                            let Some(part) = part.as_object() else { continue };
                            let (outer, inner) = match part.get("type") {
                                Some(Value::String(t)) if t == "text" => ("text", None),
                                Some(Value::String(t)) if t == "image_url" => ("image_url", Some("url")),
                                Some(Value::String(t)) if t == "input_audio" => ("input_audio", Some("data")),
                                _ => continue,
                            };
                            let leaf = match inner {
                                None => part.get(outer),
                                Some(i) => part.get(outer).and_then(Value::as_object).and_then(|o| o.get(i)),
                            };
                            if !leaf.is_some_and(Value::is_string) {
                                continue;
                            }
                            let mut steps = base.clone();
                            steps.push(PathStep::Index(c));
                            steps.push(PathStep::Key(outer.into()));
                            let mut path = format!("messages.{m}.content.{c}.{outer}");
                            if let Some(i) = inner {
                                steps.push(PathStep::Key(i.into()));
                                path.push('.');
                                path.push_str(i);
                            }
                            out.push((path, steps, Kind::Text));
                        }
                    }
                    _ => {}
                }
            }
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            let name = if endpoint == Endpoint::Completions { "prompt" } else { "input" };
            match body.get(name) {
                Some(Value::String(_)) => out.push((name.to_owned(), vec![PathStep::Key(name.into())], Kind::Text)),
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if item.is_string() {
                            out.push((
                                format!("{name}.{i}"),
                                vec![PathStep::Key(name.into()), PathStep::Index(i)],
                                Kind::Text,
                            ));
                        }
                    }
                }
                _ => return Err("prompt/input neither a string nor an array"),
            }
        }
        _ => return Err("an endpoint this target does not know"),
    }
    if out.is_empty() {
        return Err("no field to decrypt");
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

pub fn slot<'a>(root: &'a mut Value, steps: &[PathStep]) -> &'a mut Value {
    let mut v = root;
    for s in steps {
        v = match s {
            PathStep::Key(k) => v.get_mut(k.as_str()).unwrap(),
            PathStep::Index(i) => v.get_mut(*i).unwrap(),
        };
    }
    v
}

/// The spec's restoration of a decrypted field (§3.4 "Restoration").
pub fn restore(kind: Kind, plain: String) -> Value {
    if kind == Kind::Whole {
        if let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(&plain) {
            return v;
        }
    }
    Value::String(plain)
}
