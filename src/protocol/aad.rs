//! Additional authenticated data: the RFC 8785 form of the request (6-member) and response
//! (7-member) objects, built directly since the members are fixed.
//!
//! ```
//! use tower_aci::protocol::aad;
//! use tower_aci::protocol::Suite;
//! let a = aad::request(Suite::X25519, "messages.0.content", "demo-model", "00ff", 1750000000);
//! assert_eq!(
//!     std::str::from_utf8(&a).unwrap(),
//!     r#"{"algo":"x25519-aes-256-gcm-hkdf-sha256","field":"messages.0.content","model":"demo-model","nonce":"00ff","purpose":"aci.e2ee.request.v2","ts":1750000000}"#
//! );
//! ```

use crate::protocol::jcs::write_str;
use crate::protocol::suite::Suite;

/// `purpose` of request fields.
pub const REQUEST_PURPOSE: &str = "aci.e2ee.request.v2";
/// `purpose` of response fields.
pub const RESPONSE_PURPOSE: &str = "aci.e2ee.response.v2";

/// The AAD of a request field: `{"algo","field","model","nonce","purpose","ts"}` in JCS form.
/// `nonce` is the `X-E2EE-Nonce` header string verbatim; `model` the body's `model` exactly.
pub fn request(suite: Suite, field: &str, model: &str, nonce: &str, ts: u64) -> Vec<u8> {
    let mut out = head(suite, field, model.len() + nonce.len() + 64);
    write_tail(model, nonce, REQUEST_PURPOSE, ts, &mut out);
    out
}

/// The AAD of a response field: `{"algo","field","id","model","nonce","purpose","ts"}` in JCS
/// form. `id` is the response's (or SSE chunk's) string `id`, or `""`; `model` the *request's*.
pub fn response(suite: Suite, field: &str, id: &str, model: &str, nonce: &str, ts: u64) -> Vec<u8> {
    let mut out = head(suite, field, id.len() + model.len() + nonce.len() + 72);
    out.extend_from_slice(b",\"id\":");
    write_str(id, &mut out);
    write_tail(model, nonce, RESPONSE_PURPOSE, ts, &mut out);
    out
}

/// The part of every response AAD of one exchange after `id`:
/// `,"model":…,"nonce":…,"purpose":"aci.e2ee.response.v2","ts":…}`. Built once per exchange
/// ([`ExchangeContext`](crate::protocol::request::ExchangeContext)) rather than per field.
pub(crate) fn response_tail(model: &str, nonce: &str, ts: u64) -> Box<[u8]> {
    let mut out = Vec::with_capacity(model.len() + nonce.len() + 64);
    write_tail(model, nonce, RESPONSE_PURPOSE, ts, &mut out);
    out.into_boxed_slice()
}

/// A response AAD from the exchange's [`response_tail`]: the bytes [`response`] builds.
pub(crate) fn response_with_tail(suite: Suite, field: &str, id: &str, tail: &[u8]) -> Vec<u8> {
    let mut out = head(suite, field, id.len() + tail.len() + 8);
    out.extend_from_slice(b",\"id\":");
    write_str(id, &mut out);
    out.extend_from_slice(tail);
    out
}

/// `{"algo":…,"field":…`, with room for `more` bytes after it.
fn head(suite: Suite, field: &str, more: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + suite.algo().len() + field.len() + more);
    out.extend_from_slice(b"{\"algo\":");
    write_str(suite.algo(), &mut out);
    out.extend_from_slice(b",\"field\":");
    write_str(field, &mut out);
    out
}

/// `,"model":…,"nonce":…,"purpose":…,"ts":…}`.
fn write_tail(model: &str, nonce: &str, purpose: &str, ts: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"model\":");
    write_str(model, out);
    out.extend_from_slice(b",\"nonce\":");
    write_str(nonce, out);
    out.extend_from_slice(b",\"purpose\":");
    write_str(purpose, out);
    out.extend_from_slice(b",\"ts\":");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = ts;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-exchange tail gives the same bytes as building each AAD whole, with strings that
    /// need escaping and timestamps of every width.
    #[test]
    fn response_tail_matches_the_whole_aad() {
        for (model, nonce, id, ts) in [
            ("m", "00", "", 0),
            ("demo-model", "ab".repeat(32).as_str(), "chatcmpl-1", 1_750_000_000),
            ("q\"\\\u{1}é", "n\n", "id\t\"", u64::MAX),
        ] {
            for suite in Suite::ALL {
                let whole = response(suite, "choices.0.delta.content", id, model, nonce, ts);
                let tail = response_tail(model, nonce, ts);
                assert_eq!(response_with_tail(suite, "choices.0.delta.content", id, &tail), whole);
                let v: serde_json::Value = serde_json::from_slice(&whole).unwrap();
                assert_eq!(v["ts"], serde_json::json!(ts));
                assert_eq!(v["model"], model);
                assert_eq!(v["id"], id);
            }
        }
        assert!(request(Suite::X25519, "f", "m", "n", 7).ends_with(br#""purpose":"aci.e2ee.request.v2","ts":7}"#));
    }
}
