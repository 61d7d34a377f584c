//! Additional authenticated data: the RFC 8785 form of the request (6-member) and response
//! (7-member) objects, built directly since the members are fixed.
//!
//! ```
//! use tower_aci::protocol::aad;
//! use tower_aci::protocol::suite::Suite;
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
    build(suite, field, None, model, nonce, REQUEST_PURPOSE, ts)
}

/// The AAD of a response field: `{"algo","field","id","model","nonce","purpose","ts"}` in JCS
/// form. `id` is the response's (or SSE chunk's) string `id`, or `""`; `model` the *request's*.
pub fn response(suite: Suite, field: &str, id: &str, model: &str, nonce: &str, ts: u64) -> Vec<u8> {
    build(suite, field, Some(id), model, nonce, RESPONSE_PURPOSE, ts)
}

fn build(suite: Suite, field: &str, id: Option<&str>, model: &str, nonce: &str, purpose: &str, ts: u64) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(120 + field.len() + model.len() + nonce.len() + id.map_or(0, str::len) + suite.algo().len());
    out.extend_from_slice(b"{\"algo\":");
    write_str(suite.algo(), &mut out);
    out.extend_from_slice(b",\"field\":");
    write_str(field, &mut out);
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        write_str(id, &mut out);
    }
    out.extend_from_slice(b",\"model\":");
    write_str(model, &mut out);
    out.extend_from_slice(b",\"nonce\":");
    write_str(nonce, &mut out);
    out.extend_from_slice(b",\"purpose\":");
    write_str(purpose, &mut out);
    out.extend_from_slice(b",\"ts\":");
    out.extend_from_slice(ts.to_string().as_bytes());
    out.push(b'}');
    out
}
