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
