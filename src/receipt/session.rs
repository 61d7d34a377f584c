//! Attested sessions of aggregators (`GET /v1/aci/sessions/{session_id}`, ACI spec §8, §9.2).

use std::fmt;

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, ReceiptFailure, Result};
use crate::hex;
use crate::protocol::jcs;

/// The largest session document [`AttestedSession::from_bytes`] parses (evidence bundles can be
/// large: a TDX quote, GPU evidence, certificate chains).
pub(crate) const MAX_SESSION_SIZE: usize = 16 * 1024 * 1024;

fn session(message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::receipt(ReceiptFailure::Session, message)
}

/// An aggregator's attested session: the saved proof that it verified the upstream TEE that
/// served a request. Receipts cite it by `session_id = hex(SHA-256(JCS(document)))`.
///
/// [`from_bytes`](Self::from_bytes) parses and computes the id; [`verify`](Self::verify) runs the
/// ACI §9.2 checks 1–2 (the id recomputes to the cited one, `api_version` is `aci/1`,
/// `evidence.data` hashes to `evidence.digest`). The shallow audit of claims and channel
/// bindings is policy and left to the caller (their members in [`document`](Self::document)).
///
/// ```
/// use tower_aci::receipt::AttestedSession;
///
/// let doc = r#"{"api_version":"aci/1","established_at":1,"expires_at":9,
///   "evidence":{"data":"data:text/plain;base64,aGk=","digest":"sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"}}"#;
/// let session = AttestedSession::from_bytes(doc.as_bytes().to_vec().into())?;
/// let id = session.session_id().to_owned();
/// let checked = session.verify(&id)?;
/// assert_eq!(checked.evidence(), b"hi");
/// assert!(session.covers(5) && !session.covers(10));
/// # Ok::<(), tower_aci::Error>(())
/// ```
#[derive(Clone)]
pub struct AttestedSession {
    raw: Bytes,
    document: Value,
    session_id: String,
    /// The id computed without an embedded `session_id` member (older gateways list it inside).
    embedded_id: Option<String>,
}

/// A session whose id, version and evidence digest checked out, with its decoded evidence.
#[derive(Clone)]
pub struct VerifiedSession {
    session: AttestedSession,
    evidence: Bytes,
}

impl AttestedSession {
    /// Parse a session document and compute its id. Fails with [`ReceiptFailure::Session`]
    /// when the bytes are not a JSON object, exceed 16 MiB or cannot be put in
    /// canonical form.
    pub fn from_bytes(raw: Bytes) -> Result<AttestedSession> {
        if raw.len() > MAX_SESSION_SIZE {
            return Err(session(format!("the session document is larger than {MAX_SESSION_SIZE} bytes")));
        }
        let document: Value =
            serde_json::from_slice(&raw).map_err(|e| session(format!("the session document is not JSON: {e}")))?;
        let map = document.as_object().ok_or_else(|| session("the session document is not a JSON object"))?;
        let id_of = |v: &Value| -> Result<String> {
            let canonical =
                jcs::to_vec(v).map_err(|e| session(format!("the session document cannot be canonicalised: {e}")))?;
            Ok(hex::encode(Sha256::digest(&canonical)))
        };
        let session_id = id_of(&document)?;
        let embedded_id = match map.get("session_id") {
            Some(Value::String(_)) => {
                let mut stripped = map.clone();
                stripped.remove("session_id");
                Some(id_of(&Value::Object(stripped))?)
            }
            _ => None,
        };
        Ok(AttestedSession { raw, document, session_id, embedded_id })
    }

    /// The exact bytes served.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The parsed document.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// `hex(SHA-256(JCS(document)))`: the content address receipts cite.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    fn str_member(&self, name: &str) -> Option<&str> {
        self.document.get(name).and_then(Value::as_str)
    }

    /// `api_version`.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn api_version(&self) -> Option<&str> {
        self.str_member("api_version")
    }

    /// `upstream_name`: the aggregator's label of the upstream.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn upstream_name(&self) -> Option<&str> {
        self.str_member("upstream_name")
    }

    /// `endpoint`: the verified upstream origin, if the channel has one.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn endpoint(&self) -> Option<&str> {
        self.str_member("endpoint")
    }

    /// `verifier_id`: the aggregator's verifier implementation.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn verifier_id(&self) -> Option<&str> {
        self.str_member("verifier_id")
    }

    /// `established_at` (Unix seconds).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn established_at(&self) -> Option<u64> {
        self.document.get("established_at").and_then(Value::as_u64)
    }

    /// `expires_at` (Unix seconds).
    pub fn expires_at(&self) -> Option<u64> {
        self.document.get("expires_at").and_then(Value::as_u64)
    }

    /// Whether `at` lies inside `[established_at, expires_at]` (false if either is missing).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn covers(&self, at: u64) -> bool {
        matches!((self.established_at(), self.expires_at()), (Some(from), Some(to)) if from <= at && at <= to)
    }

    /// `claims`: the typed claims (ACI §8.3), for a shallow audit under your policy.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn claims(&self) -> Option<&Value> {
        self.document.get("claims")
    }

    /// `channel_binding`: what the aggregator enforced when connecting to the upstream.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn channel_binding(&self) -> Option<&Value> {
        self.document.get("channel_binding")
    }

    /// `evidence.digest` (`sha256:<hex>`).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn evidence_digest(&self) -> Option<&str> {
        self.document.get("evidence")?.get("digest")?.as_str()
    }

    /// Check that this document is the session `expected_id` names (ACI §9.2 checks 1–2): the id
    /// recomputes to it, `api_version` is `aci/1`, and `evidence.data` (a `data:` URL) decodes
    /// to bytes whose SHA-256 is `evidence.digest`. Every failure is
    /// [`ReceiptFailure::Session`].
    pub fn verify(&self, expected_id: &str) -> Result<VerifiedSession> {
        let embedded = self.document.get("session_id").and_then(Value::as_str);
        let id_matches = self.session_id == expected_id
            || (self.embedded_id.as_deref() == Some(expected_id) && embedded == Some(expected_id));
        if !id_matches {
            return Err(session(format!(
                "the session document hashes to {}, not to the cited session id {expected_id}",
                self.session_id
            )));
        }
        match self.api_version() {
            Some("aci/1") => {}
            _ => return Err(session("the session's api_version is not aci/1")),
        }
        let evidence = self.document.get("evidence").ok_or_else(|| session("the session carries no evidence"))?;
        let digest = evidence
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| session("the session evidence has no digest"))?;
        let data = evidence
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| session("the session evidence has no data (an abbreviated list entry?)"))?;
        let bytes =
            decode_data_url(data).ok_or_else(|| session("the session evidence data is not a valid data: URL"))?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(session(format!("the session evidence hashes to {actual}, not to its digest {digest}")));
        }
        Ok(VerifiedSession { session: self.clone(), evidence: Bytes::from(bytes) })
    }
}

impl VerifiedSession {
    /// The session document.
    pub fn session(&self) -> &AttestedSession {
        &self.session
    }

    /// The decoded evidence bytes (hashed to `evidence.digest`), for a deep audit.
    pub fn evidence(&self) -> &[u8] {
        &self.evidence
    }
}

impl fmt::Debug for AttestedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedSession")
            .field("session_id", &self.session_id)
            .field("upstream_name", &self.upstream_name())
            .field("endpoint", &self.endpoint())
            .field("established_at", &self.established_at())
            .field("expires_at", &self.expires_at())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for VerifiedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedSession")
            .field("session", &self.session)
            .field("evidence_len", &self.evidence.len())
            .finish()
    }
}

/// Pin a request to attested sessions you verified (ACI spec §5.3): set
/// `provider.aci_session_ids` in a request body, keeping any other `provider` members.
///
/// The aggregator then serves the request only through one of these sessions, or refuses it
/// with `session_not_accepted`; check the receipt with
/// [`ReceiptPolicy::accept_sessions`](crate::receipt::ReceiptPolicy::accept_sessions) and the same
/// ids. The aggregator removes these members before forwarding, which the receipt shows as a
/// rewrite, so do not combine pinning with
/// [`reject_rewrites`](crate::receipt::ReceiptPolicy::reject_rewrites). A direct gateway refuses
/// any pinned request.
///
/// Fails with `Config` for an empty list, an id that is not 64 lowercase hex, or
/// `provider.aci_verified: false` (an invalid combination), and with `Malformed` when the body or
/// its `provider` is not a JSON object.
///
/// ```
/// use serde_json::json;
/// use tower_aci::receipt::pin_sessions;
///
/// let mut body = json!({"model": "m", "messages": [], "provider": {"order": ["a"]}});
/// let id = "95ad1cb4dd25445808c2e9d116caf420b05703730b506395e8fc1ca6faeae28f";
/// pin_sessions(&mut body, [id])?;
/// assert_eq!(body["provider"], json!({"order": ["a"], "aci_session_ids": [id]}));
/// # Ok::<(), tower_aci::Error>(())
/// ```
pub fn pin_sessions<I, T>(body: &mut Value, session_ids: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<String>,
{
    let ids: Vec<String> = session_ids.into_iter().map(Into::into).collect();
    if ids.is_empty() {
        return Err(Error::new(ErrorKind::Config, "pin at least one session id"));
    }
    if let Some(bad) = ids.iter().find(|id| !is_session_id(id)) {
        return Err(Error::new(ErrorKind::Config, format!("{bad:?} is not a session id (64 lowercase hex)")));
    }
    let map = body.as_object_mut().ok_or_else(|| Error::malformed("the request body is not a JSON object"))?;
    let provider = map.entry("provider").or_insert_with(|| Value::Object(Default::default()));
    let provider = provider.as_object_mut().ok_or_else(|| Error::malformed("`provider` is not a JSON object"))?;
    if provider.get("aci_verified") == Some(&Value::Bool(false)) {
        return Err(Error::new(
            ErrorKind::Config,
            "`provider.aci_verified: false` cannot be combined with pinned sessions",
        ));
    }
    provider.insert("aci_session_ids".into(), Value::Array(ids.into_iter().map(Value::String).collect()));
    Ok(())
}

/// Whether `id` has the shape of a session id: 64 lowercase hex.
pub(crate) fn is_session_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Decode an RFC 2397 `data:` URL: base64 when the header ends in `;base64`, else
/// percent-encoded. The header is everything before the first comma (a multipart media type
/// may carry parameters there).
pub(crate) fn decode_data_url(url: &str) -> Option<Vec<u8>> {
    let rest = url.get(..5).filter(|p| p.eq_ignore_ascii_case("data:")).map(|_| &url[5..])?;
    let (header, data) = rest.split_once(',')?;
    let is_base64 = header.len() >= 7 && header[header.len() - 7..].eq_ignore_ascii_case(";base64");
    if is_base64 { base64_decode(data.as_bytes()) } else { crate::percent::decode_strict(data.as_bytes()) }
}

/// Standard base64 (RFC 4648 §4); padding optional but, when present, correct.
/// Standard base64, padded or not; non-canonical encodings (stray low bits) and any other
/// byte are refused.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(input).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        assert_eq!(base64_decode(b"").unwrap(), b"");
        assert_eq!(base64_decode(b"aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode(b"aGk").unwrap(), b"hi");
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode(b"ZXhhbXBsZS1ldmlkZW5jZQ==").unwrap(), b"example-evidence");
        assert_eq!(base64_decode(b"+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in [&b"a"[..], b"aGk==", b"a===", b"aG=k", b"aGk*", b"aGl=", b"=", b"aGk=\n"] {
            assert!(base64_decode(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn pinning_sessions() {
        let id = "ab".repeat(32);
        let mut body = serde_json::json!({"model": "m"});
        pin_sessions(&mut body, [id.clone()]).unwrap();
        assert_eq!(body["provider"]["aci_session_ids"][0], id.as_str());
        let kind = |r: Result<()>| r.unwrap_err().kind();
        assert_eq!(kind(pin_sessions(&mut body, Vec::<String>::new())), ErrorKind::Config);
        assert_eq!(kind(pin_sessions(&mut body, ["AB".repeat(32)])), ErrorKind::Config);
        assert_eq!(kind(pin_sessions(&mut body, ["ab"])), ErrorKind::Config);
        assert_eq!(kind(pin_sessions(&mut serde_json::json!([]), [id.clone()])), ErrorKind::Malformed);
        assert_eq!(kind(pin_sessions(&mut serde_json::json!({"provider": 1}), [id.clone()])), ErrorKind::Malformed);
        let mut off = serde_json::json!({"provider": {"aci_verified": false}});
        assert_eq!(kind(pin_sessions(&mut off, [id])), ErrorKind::Config);
    }

    #[test]
    fn data_urls() {
        assert_eq!(decode_data_url("data:text/plain;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_data_url("DATA:;BASE64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_data_url("data:multipart/mixed;boundary=x;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_data_url("data:,a%20b").unwrap(), b"a b");
        assert!(decode_data_url("data:,a%2").is_none());
        assert!(decode_data_url("data:text/plain;base64").is_none());
        assert!(decode_data_url("http://x/,aGk=").is_none());
        assert!(decode_data_url("dat").is_none());
        assert!(decode_data_url("dαta:,x").is_none());
    }
}
