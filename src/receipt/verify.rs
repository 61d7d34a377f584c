//! Receipt verification: the signature under an attested key, then the receipt against what the
//! E2EE layer saw of the exchange.

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::attest::{AttestedKeyset, KeyHandle};
use crate::error::{Error, ReceiptFailure, Result};
use crate::hex;
use crate::receipt::document::{Event, Receipt, UpstreamVerified};
use crate::receipt::record::ExchangeRecord;
use crate::receipt::session::{AttestedSession, VerifiedSession, is_session_id};

/// The receipt format this crate verifies.
pub const RECEIPT_API_VERSION: &str = "aci/1";

use ReceiptFailure as F;

fn fail(failure: ReceiptFailure, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::receipt(failure, message)
}

/// `sha256:<lowercase hex>`, as receipts spell body hashes.
pub(crate) fn hash_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// Where the verifier finds the verified keyset a receipt names by its digest.
///
/// Implemented for a [`KeyHandle`] (the current keyset, then every keyset it remembers,
/// expired ones included, so a receipt from another replica or from before a refresh still
/// verifies), for slices and vectors of `Arc<AttestedKeyset>` (e.g. keysets you archived) and for
/// a single `Arc<AttestedKeyset>`. Only keysets that passed
/// [`verify_report`](crate::attest::verify_report) exist, so whatever the lookup returns was
/// attested.
pub trait Keysets {
    /// The verified keyset whose digest is `digest`, if known.
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>>;
}

impl Keysets for KeyHandle {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        KeyHandle::keyset_for_digest(self, digest)
            .or_else(|| self.known_keysets().into_iter().find(|k| k.digest() == digest))
    }
}

impl Keysets for [Arc<AttestedKeyset>] {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        self.iter().find(|k| k.digest() == digest).cloned()
    }
}

impl Keysets for Vec<Arc<AttestedKeyset>> {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        self.as_slice().keyset_for_digest(digest)
    }
}

impl Keysets for Arc<AttestedKeyset> {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        (self.digest() == digest).then(|| self.clone())
    }
}

impl<T: Keysets + ?Sized> Keysets for &T {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        (**self).keyset_for_digest(digest)
    }
}

/// What a receipt must show beyond its signature and hashes. Builder methods take and return
/// the policy by value.
///
/// The default accepts rewrites (reporting them in [`VerifiedReceipt::rewritten`]), verifies
/// the attested session an aggregator's receipt cites, and does not require verified upstream
/// serving (a receipt recording best-effort serving verifies, and says so in
/// [`VerifiedReceipt::upstream`]).
///
/// ```
/// use tower_aci::receipt::ReceiptPolicy;
///
/// let strict = ReceiptPolicy::new()
///     .reject_rewrites(true)
///     .require_verified_upstream(true)
///     .accept_sessions(["95ad1cb4dd25445808c2e9d116caf420b05703730b506395e8fc1ca6faeae28f"]);
/// # let _ = strict;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptPolicy {
    reject_rewrites: bool,
    verify_sessions: bool,
    require_verified_upstream: bool,
    accepted_sessions: Vec<String>,
}

impl Default for ReceiptPolicy {
    fn default() -> Self {
        ReceiptPolicy::new()
    }
}

impl ReceiptPolicy {
    /// The default policy (see the type's docs).
    pub fn new() -> Self {
        ReceiptPolicy {
            reject_rewrites: false,
            verify_sessions: true,
            require_verified_upstream: false,
            accepted_sessions: Vec::new(),
        }
    }

    /// Fail with [`ReceiptFailure::Rewritten`] when the gateway forwarded other bytes than it
    /// received (`request.forwarded` or `middleware.forwarded` ≠ `request.received`). Note that
    /// an aggregator strips `provider.aci_*` serving constraints before forwarding, which shows
    /// as a rewrite.
    pub fn reject_rewrites(mut self, reject: bool) -> Self {
        self.reject_rewrites = reject;
        self
    }

    /// Fetch and check the attested session an `upstream.verified` event cites (default on).
    /// Only [`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify)
    /// fetches; [`verify_exchange`] leaves it to [`VerifiedReceipt::attach_session`].
    pub fn verify_sessions(mut self, verify: bool) -> Self {
        self.verify_sessions = verify;
        self
    }

    /// Require verified upstream serving: an `upstream.verified` event with `result`
    /// `"verified"`, `required: true` and a session id, else [`ReceiptFailure::Session`]. A
    /// receipt without any `upstream.verified` event (a direct service, which has no upstream
    /// hop) still passes.
    pub fn require_verified_upstream(mut self, require: bool) -> Self {
        self.require_verified_upstream = require;
        self
    }

    /// Accept only these session ids (64 lowercase hex, as sent in `provider.aci_session_ids`):
    /// the receipt must cite one of them in a verified `upstream.verified` event, else
    /// [`ReceiptFailure::Session`]. Adds to the ids accepted so far.
    pub fn accept_sessions<I, T>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.accepted_sessions.extend(ids.into_iter().map(Into::into));
        self
    }

    /// Whether rewrites are rejected.
    pub fn rejects_rewrites(&self) -> bool {
        self.reject_rewrites
    }

    /// Whether cited sessions are fetched and checked.
    pub fn verifies_sessions(&self) -> bool {
        self.verify_sessions
    }

    /// Whether verified upstream serving is required.
    pub fn requires_verified_upstream(&self) -> bool {
        self.require_verified_upstream
    }

    /// The pinned session ids (empty: any).
    pub fn accepted_sessions(&self) -> &[String] {
        &self.accepted_sessions
    }
}

/// A receipt that verified against an exchange: only [`verify_exchange`] makes one.
///
/// It carries the receipt (archive [`Receipt::as_bytes`]), the attested keyset that signed it,
/// whether the gateway rewrote the request, and, behind an aggregator, the upstream outcome and
/// the attested session once checked.
#[derive(Clone)]
pub struct VerifiedReceipt {
    receipt: Receipt,
    keyset: Arc<AttestedKeyset>,
    forwarded: bool,
    rewritten: bool,
    upstream: Option<UpstreamVerified>,
    session: Option<VerifiedSession>,
}

impl VerifiedReceipt {
    /// The receipt.
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The receipt, by value.
    pub fn into_receipt(self) -> Receipt {
        self.receipt
    }

    /// The attested keyset whose receipt key signed it.
    pub fn keyset(&self) -> &Arc<AttestedKeyset> {
        &self.keyset
    }

    /// Whether the receipt records that the request was forwarded for inference
    /// (`request.forwarded`); false for a refusal.
    pub fn forwarded(&self) -> bool {
        self.forwarded
    }

    /// Whether the gateway forwarded other bytes than it received: `request.forwarded` (or
    /// `middleware.forwarded`) differs from `request.received`.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    /// The last `upstream.verified` event (the outcome of the upstream that served), if the
    /// gateway is an aggregator.
    pub fn upstream(&self) -> Option<&UpstreamVerified> {
        self.upstream.as_ref()
    }

    /// The session id a verified `upstream.verified` event cites.
    pub fn cited_session_id(&self) -> Option<&str> {
        self.upstream.as_ref().filter(|u| u.is_verified()).and_then(|u| u.session_id.as_deref())
    }

    /// The cited attested session, once checked ([`attach_session`](Self::attach_session), done
    /// by [`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify)).
    pub fn session(&self) -> Option<&VerifiedSession> {
        self.session.as_ref()
    }

    /// Whether a cited session is still to be checked.
    pub fn session_pending(&self) -> bool {
        self.cited_session_id().is_some() && self.session.is_none()
    }

    /// Check the attested session this receipt cites (ACI §9.2, §9.3 item 6): the document
    /// hashes to the cited id, is `aci/1`, its evidence hashes to its digest, and the receipt's
    /// `served_at` lies inside `[established_at, expires_at]`. Fails with
    /// [`ReceiptFailure::Session`].
    pub fn attach_session(mut self, session: &AttestedSession) -> Result<VerifiedReceipt> {
        let id = self
            .cited_session_id()
            .ok_or_else(|| fail(F::Session, "the receipt cites no attested session"))?
            .to_owned();
        let verified = session.verify(&id)?;
        let served_at = self.receipt.served_at();
        if !session.covers(served_at) {
            return Err(fail(
                F::Session,
                format!(
                    "served_at {served_at} lies outside the session's window [{:?}, {:?}]",
                    session.established_at(),
                    session.expires_at()
                ),
            ));
        }
        self.session = Some(verified);
        Ok(self)
    }
}

impl fmt::Debug for VerifiedReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedReceipt")
            .field("receipt_id", &self.receipt.receipt_id())
            .field("keyset_digest", &self.keyset.digest())
            .field("forwarded", &self.forwarded)
            .field("rewritten", &self.rewritten)
            .field("upstream", &self.upstream)
            .field("session", &self.session)
            .finish()
    }
}

/// Verify the receipt's Ed25519 signature over [`Receipt::signing_input`] with `key`.
///
/// The lowest-level check, for a key you obtained yourself; prefer [`verify_against_keyset`],
/// which resolves the key in an attested keyset. Uses strict verification (no small-order keys,
/// no malleable signatures). Fails with [`ReceiptFailure::Signature`].
pub fn verify_signature(receipt: &Receipt, key: &VerifyingKey) -> Result<()> {
    let bytes = hex::decode(receipt.signature())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| fail(F::Signature, "the receipt signature is not 64 bytes of hex"))?;
    let signature = Signature::from_bytes(&bytes);
    key.verify_strict(receipt.signing_input(), &signature)
        .map_err(|_| fail(F::Signature, "the receipt signature does not verify"))
}

/// Verify a receipt against one attested keyset: the keyset is the one the receipt names
/// ([`UnknownKeyset`](ReceiptFailure::UnknownKeyset)), `key_id` is one of its receipt signing
/// keys ([`UnknownKey`](ReceiptFailure::UnknownKey)), the signature verifies
/// ([`Signature`](ReceiptFailure::Signature)), `api_version` is `aci/1`
/// ([`ApiVersion`](ReceiptFailure::ApiVersion)) and the receipt was served before the keyset's
/// `not_after` ([`UnknownKeyset`](ReceiptFailure::UnknownKeyset)).
///
/// This is what re-verifies an archived receipt offline; it does not compare the receipt with an
/// exchange (see [`verify_exchange`]).
pub fn verify_against_keyset(receipt: &Receipt, keyset: &AttestedKeyset) -> Result<()> {
    if receipt.workload_keyset_digest() != keyset.digest() {
        return Err(fail(
            F::UnknownKeyset,
            format!(
                "the receipt names keyset {}, not the attested keyset {}",
                receipt.workload_keyset_digest(),
                keyset.digest()
            ),
        ));
    }
    let key = keyset.receipt_key(receipt.key_id()).ok_or_else(|| {
        fail(
            F::UnknownKey,
            format!("key id {:?} is not a receipt signing key of the attested keyset", receipt.key_id()),
        )
    })?;
    verify_signature(receipt, key.verifying_key())?;
    if receipt.api_version() != RECEIPT_API_VERSION {
        return Err(fail(
            F::ApiVersion,
            format!("the receipt's api_version is {:?}, not aci/1", receipt.api_version()),
        ));
    }
    if receipt.served_at() >= keyset.not_after() {
        return Err(fail(F::UnknownKeyset, "the receipt was served after its keyset's not_after"));
    }
    Ok(())
}

/// A hint appended to a request-hash mismatch when this build parses floats unlike the gateway
/// (protocol.md §5.3): then the mismatch may be number normalisation rather than tampering.
fn number_normalisation_hint() -> &'static str {
    // Without `float_roundtrip`/`arbitrary_precision` serde_json reads this value 1 ULP off, as
    // the gateway does.
    let probe: Option<Value> = serde_json::from_str("4.545896140860994e-14").ok();
    let exact = probe.and_then(|v| v.as_f64()) == Some(4.545896140860994e-14);
    if exact {
        " (note: this build's serde_json parses floats exactly — its `float_roundtrip` or \
         `arbitrary_precision` feature is on — unlike the gateway's; a request with unusual floats then \
         hashes differently: number normalisation, not necessarily tampering)"
    } else {
        ""
    }
}

/// Verify a receipt against the exchange the E2EE layer recorded, under `policy`.
///
/// In order, each failing with its own [`ReceiptFailure`]:
///
/// 1. The response body was read to its end, so its hash is final
///    ([`NotAvailable`](ReceiptFailure::NotAvailable)).
/// 2. The keyset the receipt names is among `keysets`
///    ([`UnknownKeyset`](ReceiptFailure::UnknownKeyset)); then [`verify_against_keyset`]:
///    key, signature, `api_version`.
/// 3. `receipt_id` is the one the response named, `method` is `POST`, `endpoint` is the path sent
///    (or the canonical endpoint path, when a proxy prefix was stripped), `model` is the request's
///    ([`Mismatch`](ReceiptFailure::Mismatch)).
/// 4. The event log starts with the one `request.received`, has one `response.returned` and at
///    most one `request.forwarded` ([`Shape`](ReceiptFailure::Shape)).
/// 5. `request.received.body_hash` is the hash of the body the gateway restored
///    ([`RequestHash`](ReceiptFailure::RequestHash)); `response.returned.body_hash` is the hash of
///    the exact response bytes received, SSE framing included
///    ([`ResponseHash`](ReceiptFailure::ResponseHash)).
/// 6. A rewrite fails only under [`ReceiptPolicy::reject_rewrites`]
///    ([`Rewritten`](ReceiptFailure::Rewritten)).
/// 7. The upstream outcome satisfies the policy ([`Session`](ReceiptFailure::Session)). The cited
///    session itself is not fetched here: see [`VerifiedReceipt::attach_session`], or use
///    [`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify), which
///    does everything.
pub fn verify_exchange<K>(
    receipt: &Receipt,
    record: &ExchangeRecord,
    keysets: &K,
    policy: &ReceiptPolicy,
) -> Result<VerifiedReceipt>
where
    K: Keysets + ?Sized,
{
    // 1. The response hash must be final.
    let response_sha256 = record.response_body_sha256().ok_or_else(|| {
        fail(
            F::NotAvailable,
            "the response body was not read to its end, so its hash is not final and no receipt can be \
             verified yet (the gateway stores a stream's receipt only when the stream ends)",
        )
    })?;

    // 2. Keyset, key, signature, version.
    let keyset = keysets.keyset_for_digest(receipt.workload_keyset_digest()).ok_or_else(|| {
        fail(
            F::UnknownKeyset,
            format!(
                "the receipt names keyset {}, which is not among the verified keysets",
                receipt.workload_keyset_digest()
            ),
        )
    })?;
    verify_against_keyset(receipt, &keyset)?;

    // 3. The exchange's identity.
    if let Some(id) = record.receipt_id() {
        if receipt.receipt_id() != id {
            return Err(fail(
                F::Mismatch,
                format!("the receipt is {:?}, but the response named receipt {id:?}", receipt.receipt_id()),
            ));
        }
    }
    if receipt.method() != "POST" {
        return Err(fail(F::Mismatch, format!("the receipt records method {:?}, not POST", receipt.method())));
    }
    if receipt.endpoint() != record.path() && receipt.endpoint() != record.endpoint().path() {
        return Err(fail(
            F::Mismatch,
            format!(
                "the receipt records endpoint {:?}, but the request went to {:?}",
                receipt.endpoint(),
                record.path()
            ),
        ));
    }
    if receipt.model() != Some(record.model()) {
        return Err(fail(
            F::Mismatch,
            format!("the receipt records model {:?}, but the request named {:?}", receipt.model(), record.model()),
        ));
    }

    // 4. The event log's skeleton.
    let events = receipt.events();
    let received = match events.first() {
        Some(Event::RequestReceived { body_hash }) => body_hash,
        _ => return Err(fail(F::Shape, "the receipt's first event is not request.received")),
    };
    let mut forwarded = None;
    let mut returned = None;
    let mut rewritten = false;
    let mut upstream = None;
    for event in &events[1..] {
        match event {
            Event::RequestReceived { .. } => {
                return Err(fail(F::Shape, "the receipt records request.received more than once"));
            }
            Event::RequestForwarded { body_hash } => {
                if forwarded.replace(body_hash).is_some() {
                    return Err(fail(F::Shape, "the receipt records request.forwarded more than once"));
                }
                rewritten |= body_hash != received;
            }
            Event::MiddlewareForwarded { body_hash: Some(body_hash) } => rewritten |= body_hash != received,
            Event::ResponseReturned { .. } if returned.is_some() => {
                return Err(fail(F::Shape, "the receipt records response.returned more than once"));
            }
            Event::ResponseReturned { body_hash } => returned = Some(body_hash),
            Event::UpstreamVerified(u) => upstream = Some(u.clone()),
            _ => {}
        }
    }
    let returned = returned.ok_or_else(|| fail(F::Shape, "the receipt has no response.returned event"))?;

    // 5. The hashes.
    let expected_request = hash_string(&record.request_body_sha256());
    if *received != expected_request {
        return Err(fail(
            F::RequestHash,
            format!(
                "request.received is {received}, but the body the gateway restored from our request hashes to \
                 {expected_request}{}",
                number_normalisation_hint()
            ),
        ));
    }
    let expected_response = hash_string(&response_sha256);
    if *returned != expected_response {
        return Err(fail(
            F::ResponseHash,
            format!("response.returned is {returned}, but the response bytes we received hash to {expected_response}"),
        ));
    }

    // 6. Rewrites.
    if rewritten && policy.reject_rewrites {
        return Err(fail(
            F::Rewritten,
            "the gateway forwarded other bytes than it received, and the policy rejects rewrites",
        ));
    }

    // 7. The upstream outcome.
    check_upstream(upstream.as_ref(), policy)?;

    Ok(VerifiedReceipt {
        receipt: receipt.clone(),
        keyset,
        forwarded: forwarded.is_some(),
        rewritten,
        upstream,
        session: None,
    })
}

fn check_upstream(upstream: Option<&UpstreamVerified>, policy: &ReceiptPolicy) -> Result<()> {
    let pinned = !policy.accepted_sessions.is_empty();
    let Some(u) = upstream else {
        if pinned {
            return Err(fail(F::Session, "sessions are pinned, but the receipt records no upstream.verified event"));
        }
        return Ok(());
    };
    let needs_session = policy.verify_sessions || policy.require_verified_upstream || pinned;
    if u.is_verified() && needs_session {
        match u.session_id.as_deref() {
            Some(id) if is_session_id(id) => {}
            Some(_) => {
                return Err(fail(F::Session, "upstream.verified cites a session id that is not 64 lowercase hex"));
            }
            None => return Err(fail(F::Session, "upstream.verified is \"verified\" but cites no session")),
        }
    }
    if policy.require_verified_upstream || pinned {
        if !u.is_verified() {
            return Err(fail(
                F::Session,
                format!(
                    "the upstream was not verified (result {:?}, reason {:?}) and the policy requires verified serving",
                    u.result, u.reason
                ),
            ));
        }
        if !u.required {
            return Err(fail(
                F::Session,
                "the receipt records best-effort serving (required: false) and the policy requires verified serving",
            ));
        }
    }
    if pinned {
        let cited = u.session_id.as_deref().unwrap_or_default();
        if !policy.accepted_sessions.iter().any(|s| s == cited) {
            return Err(fail(
                F::Session,
                format!("the receipt cites session {cited}, which is not among the pinned sessions"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(result: &str, required: bool, session: Option<&str>) -> UpstreamVerified {
        UpstreamVerified {
            result: result.into(),
            required,
            model_id: None,
            session_id: session.map(str::to_owned),
            reason: None,
            upstream_name: None,
        }
    }

    fn reason(r: Result<()>) -> Option<ReceiptFailure> {
        match r {
            Ok(()) => None,
            Err(e) => match e.kind() {
                crate::ErrorKind::Receipt(f) => Some(f),
                other => panic!("{other:?}"),
            },
        }
    }

    #[test]
    fn upstream_policy() {
        let id = "ab".repeat(32);
        let def = ReceiptPolicy::new();
        let strict = ReceiptPolicy::new().require_verified_upstream(true);
        let pinned = ReceiptPolicy::new().accept_sessions([id.clone()]);
        assert_eq!(reason(check_upstream(None, &def)), None);
        assert_eq!(reason(check_upstream(None, &strict)), None);
        assert_eq!(reason(check_upstream(None, &pinned)), Some(F::Session));
        assert_eq!(reason(check_upstream(Some(&up("verified", true, Some(&id))), &strict)), None);
        assert_eq!(reason(check_upstream(Some(&up("verified", true, Some(&id))), &pinned)), None);
        assert_eq!(
            reason(check_upstream(Some(&up("verified", true, Some(&"cd".repeat(32)))), &pinned)),
            Some(F::Session)
        );
        assert_eq!(reason(check_upstream(Some(&up("verified", false, Some(&id))), &def)), None);
        assert_eq!(reason(check_upstream(Some(&up("verified", false, Some(&id))), &strict)), Some(F::Session));
        assert_eq!(reason(check_upstream(Some(&up("failed", true, None)), &def)), None);
        assert_eq!(reason(check_upstream(Some(&up("failed", true, None)), &strict)), Some(F::Session));
        assert_eq!(reason(check_upstream(Some(&up("verified", true, None)), &def)), Some(F::Session));
        assert_eq!(reason(check_upstream(Some(&up("verified", true, Some("AB"))), &def)), Some(F::Session));
        let lax = ReceiptPolicy::new().verify_sessions(false);
        assert_eq!(reason(check_upstream(Some(&up("verified", true, None)), &lax)), None);
    }

    #[test]
    fn hint_matches_this_builds_float_parsing() {
        // The crate does not enable float_roundtrip; the hint is empty unless feature unification
        // turned it on.
        let v: Value = serde_json::from_str("4.545896140860994e-14").unwrap();
        assert_eq!(v.to_string(), "4.5458961408609944e-14", "serde_json parses 1 ULP off, like the gateway");
        assert!(number_normalisation_hint().is_empty());
    }
}
