//! Header names of E2EE v2 and ACI.

use http::HeaderName;

/// `X-E2EE-Version` (request: `2`; response: `2`).
pub const E2EE_VERSION: HeaderName = HeaderName::from_static("x-e2ee-version");
/// `X-Client-Pub-Key`: the client's per-exchange public key.
pub const CLIENT_PUB_KEY: HeaderName = HeaderName::from_static("x-client-pub-key");
/// `X-Model-Pub-Key`: the keyset entry's `public_key`, verbatim.
pub const MODEL_PUB_KEY: HeaderName = HeaderName::from_static("x-model-pub-key");
/// `X-E2EE-Nonce`: 64 lowercase hex chars.
pub const E2EE_NONCE: HeaderName = HeaderName::from_static("x-e2ee-nonce");
/// `X-E2EE-Timestamp`: Unix seconds.
pub const E2EE_TIMESTAMP: HeaderName = HeaderName::from_static("x-e2ee-timestamp");
/// `X-Signing-Algo`: the legacy path. Never sent; stripped if a caller set it.
pub const SIGNING_ALGO: HeaderName = HeaderName::from_static("x-signing-algo");
/// `X-E2EE-Applied` (response).
pub const E2EE_APPLIED: HeaderName = HeaderName::from_static("x-e2ee-applied");
/// `X-E2EE-Algo` (response): the suite used.
pub const E2EE_ALGO: HeaderName = HeaderName::from_static("x-e2ee-algo");
/// `X-Receipt-Id` (response).
pub const RECEIPT_ID: HeaderName = HeaderName::from_static("x-receipt-id");
/// `X-ACI-Version` (response): `aci/1`.
pub const ACI_VERSION: HeaderName = HeaderName::from_static("x-aci-version");
/// `X-ACI-Keyset-Digest` (response): `sha256:<hex>` of the serving process's keyset.
pub const ACI_KEYSET_DIGEST: HeaderName = HeaderName::from_static("x-aci-keyset-digest");

/// The six request headers whose presence makes the gateway treat a request as E2EE.
pub const E2EE_REQUEST_HEADERS: [HeaderName; 6] =
    [SIGNING_ALGO, CLIENT_PUB_KEY, MODEL_PUB_KEY, E2EE_VERSION, E2EE_NONCE, E2EE_TIMESTAMP];

/// The bearer token of an `Authorization` header (`Bearer ` or `bearer ` prefix, as the gateway
/// accepts them; trimmed; `None` when absent or empty). Receipts are owned by this token
/// (protocol.md §5.5).
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}
