//! Test vectors, loaded by name from `tests/data/` (copied from the protocol spec's folder).

use serde_json::Value;

/// Parse `tests/data/<name>`.
pub(crate) fn load(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Decode hex into a fixed array.
pub(crate) fn arr32(hex_str: &str) -> [u8; 32] {
    const_hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// The receipt failure an operation ended with; panics on success or on another error kind.
pub(crate) fn reason<T: std::fmt::Debug>(r: tower_aci::Result<T>) -> tower_aci::ReceiptFailure {
    match r {
        Ok(v) => panic!("expected a receipt failure, got {v:?}"),
        Err(e) => match e.kind() {
            tower_aci::ErrorKind::Receipt(f) => f,
            other => panic!("expected a receipt failure, got {other:?}: {e}"),
        },
    }
}

/// A record as the E2EE layer would have made it for an X25519 request to `path` naming `model`,
/// whose restored body hashes to `request_body_sha256`, answered with receipt id `receipt_id`
/// and a response body hashing to `response_body_sha256` (`None`: not read to its end); built
/// with the public `ExchangeRecord::builder`.
pub(crate) fn exchange_record(
    path: &str,
    model: &str,
    receipt_id: Option<&str>,
    request_body_sha256: [u8; 32],
    response_body_sha256: Option<[u8; 32]>,
) -> tower_aci::receipt::ExchangeRecord {
    let mut b = tower_aci::receipt::ExchangeRecord::builder(path, model)
        .suite(tower_aci::protocol::Suite::X25519)
        .request_body_sha256(request_body_sha256);
    if let Some(id) = receipt_id {
        b = b.receipt_id(id);
    }
    if let Some(d) = response_body_sha256 {
        b = b.response_body_sha256(d);
    }
    b.build().expect("an inference path and a request hash")
}
