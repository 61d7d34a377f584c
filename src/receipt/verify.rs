//! Receipt verification: the signature under an attested key, then the receipt against what the
//! E2EE layer saw of the exchange.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use crate::attest::{AttestedKeyset, KeyHandle, RefusedKeyset};
use crate::error::{Error, ReceiptFailure, Result};
use crate::hex;
use crate::receipt::document::{Event, Receipt, UpstreamVerified};
use crate::receipt::record::ExchangeRecord;
use crate::receipt::session::{AttestedSession, VerifiedSession, is_session_id};
use crate::telemetry::ReceiptKeyset;

/// The receipt format this crate verifies.
pub(crate) const RECEIPT_API_VERSION: &str = "aci/1";

use ReceiptFailure as F;

fn fail(failure: ReceiptFailure, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::receipt(failure, message)
}

/// `sha256:<lowercase hex>`, as receipts spell body hashes.
pub(crate) fn hash_string(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// A boxed future that resolves once an attempt to attest a keyset digest is over.
pub type AttestDigestFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the verifier finds the verified keyset a receipt names by its digest.
///
/// Implemented for a [`KeyHandle`] (the current keyset, then every keyset it remembers,
/// expired ones included, so a receipt from another replica or from before a refresh still
/// verifies), for slices and vectors of `Arc<AttestedKeyset>` (e.g. keysets you archived) and for
/// a single `Arc<AttestedKeyset>`. Only keysets that passed
/// [`verify_report`](crate::attest::verify_report) exist, so whatever the lookup returns was
/// attested.
///
/// Two optional methods serve receipts that name a keyset digest not (yet) known — a replica or
/// a restarted gateway (see [`KeysetMatch`]): [`same_policy_keysets`](Self::same_policy_keysets)
/// and [`attest_digest`](Self::attest_digest). Only the [`KeyHandle`] implementation provides
/// them; slices, vectors and single keysets match receipts to keysets exactly.
pub trait Keysets {
    /// The verified keyset whose digest is `digest`, if known.
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>>;

    /// Every keyset this source holds, all verified under one policy, for the same-key replica
    /// rule ([`KeysetMatch::SameKey`]). The default, no keysets, disables the rule: implement it
    /// only when your keysets were all verified under the policy you apply to receipts.
    fn same_policy_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        Vec::new()
    }

    /// Start (or join) attesting the gateway until `digest` is known; `None` when this source
    /// cannot attest (the default) or has nothing to do.
    /// [`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify)
    /// waits for it, bounded, before verifying a receipt naming an unknown digest.
    fn attest_digest(&self, digest: &str) -> Option<AttestDigestFuture> {
        let _ = digest;
        None
    }

    /// The refusal of the keyset `digest`, when its report was fetched and failed verification
    /// (see [`RefusedKeyset`]): a receipt naming it then fails with
    /// [`RefusedKeyset`](ReceiptFailure::RefusedKeyset) whatever the same-key rule would say.
    /// The default knows of no refusal.
    fn refused_keyset(&self, digest: &str) -> Option<RefusedKeyset> {
        let _ = digest;
        None
    }
}

impl Keysets for KeyHandle {
    fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        KeyHandle::keyset_for_digest(self, digest)
            .or_else(|| self.known_keysets().into_iter().find(|k| k.digest() == digest))
    }

    /// The keysets the handle remembers: one key provider verified them all, under its policy.
    fn same_policy_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        let mut all = self.known_keysets();
        if let Some(current) = self.shared.current.load_full() {
            if !all.iter().any(|k| k.digest() == current.digest()) {
                all.push(current);
            }
        }
        all
    }

    fn attest_digest(&self, digest: &str) -> Option<AttestDigestFuture> {
        KeyHandle::attest_digest(self, digest).map(|f| Box::pin(f) as AttestDigestFuture)
    }

    fn refused_keyset(&self, digest: &str) -> Option<RefusedKeyset> {
        KeyHandle::refused_keyset(self, digest)
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

    fn same_policy_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        (**self).same_policy_keysets()
    }

    fn attest_digest(&self, digest: &str) -> Option<AttestDigestFuture> {
        (**self).attest_digest(digest)
    }

    fn refused_keyset(&self, digest: &str) -> Option<RefusedKeyset> {
        (**self).refused_keyset(digest)
    }
}

/// How the keyset a receipt names was matched to a verified keyset.
///
/// A receipt names the keyset of the gateway process that signed it by its digest
/// (`workload_keyset_digest`). Every replica of a deployment, and every restart of one, has its
/// own digest: its `not_after` (launch time + 30 days) and TLS keys differ, while its E2EE and
/// receipt keys — derived by the KMS for the application — are the same.
///
/// - [`Exact`](Self::Exact): the named keyset itself was attested under the policy (its report,
///   fetched with our nonce, verified), and its receipt key verified the signature.
/// - [`SameKey`](Self::SameKey): the named keyset was never attested (not even after the receipt
///   client tried: the replica was unreachable behind the balancer, or its report endpoint
///   failed) and no report of it was fetched and refused, but the receipt's `key_id` names a receipt key of a keyset that *was* attested
///   under the same policy, and the signature verifies under that key — byte for byte the same
///   Ed25519 public key — and the receipt was served before that keyset's `not_after`.
///   [`VerifiedReceipt::keyset`] is then that vouching keyset, not the one the receipt names.
///
/// What the keyset digest adds over the key: it binds the receipt to one attested process —
/// its measured code (compose hash, OS image, event log), its TLS keys and `not_after` — that
/// *your* policy accepted. The receipt key alone proves that the signer holds the application's
/// KMS-derived key. Accepting [`SameKey`](Self::SameKey) therefore trusts the KMS's release rule
/// for that key (the application's on-chain authorisation of builds) rather than your own
/// allowlists for the unseen replica: a replica running a build the application owner
/// authorised but your policy does not pin (an upgrade, a different OS image) would be accepted,
/// and a third party re-checking the receipt cannot be shown the serving process's report. If
/// you pin measurements because you do not trust the owner's upgrades, or you archive receipts
/// as evidence about a specific process, require the exact keyset
/// ([`ReceiptPolicy::require_exact_keyset`]).
///
/// A keyset whose report *was* fetched and failed the policy is never vouched for this way: the
/// key provider remembers it as refused ([`RefusedKeyset`]) and its receipts fail with
/// [`ReceiptFailure::RefusedKeyset`]. That catches an honest replica running a build your policy
/// does not pin; it cannot catch one that hides its report (answers errors, or serves a
/// document whose keyset does not hash to the digest it names) — only the exact rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeysetMatch {
    /// The receipt's keyset was attested: its digest is that of a verified keyset.
    Exact,
    /// The receipt's keyset was not attested; its signing key (same key id, same Ed25519 public
    /// key) is that of a keyset verified under the same policy: another replica or process of
    /// the same deployment.
    SameKey,
}

/// The `keyset_match` label of a verified receipt's span and metric.
impl From<KeysetMatch> for ReceiptKeyset {
    fn from(matched: KeysetMatch) -> Self {
        match matched {
            KeysetMatch::Exact => ReceiptKeyset::Exact,
            KeysetMatch::SameKey => ReceiptKeyset::SameKey,
        }
    }
}

/// What a receipt must show beyond its signature and hashes. Builder methods take and return
/// the policy by value.
///
/// The default accepts rewrites (reporting them in [`VerifiedReceipt::rewritten`]), verifies
/// the attested session an aggregator's receipt cites, does not require verified upstream
/// serving (a receipt recording best-effort serving verifies, and says so in
/// [`VerifiedReceipt::upstream`]), and accepts a receipt of an unattested replica whose signing
/// key is the attested one (reported in [`VerifiedReceipt::keyset_match`]).
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
#[must_use]
pub struct ReceiptPolicy {
    reject_rewrites: bool,
    verify_sessions: bool,
    require_verified_upstream: bool,
    require_exact_keyset: bool,
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
            require_exact_keyset: false,
            accepted_sessions: Vec::new(),
        }
    }

    /// Accept only receipts whose named keyset was itself attested ([`KeysetMatch::Exact`]): a
    /// receipt from a replica or gateway process whose report could not be verified fails with
    /// [`UnknownKeyset`](ReceiptFailure::UnknownKeyset) even when its signing key is the
    /// attested one (a keyset whose report was refused fails with
    /// [`RefusedKeyset`](ReceiptFailure::RefusedKeyset) with or without this). Off by default (see [`KeysetMatch`] for what accepting the same key gives
    /// up).
    pub fn require_exact_keyset(mut self, require: bool) -> Self {
        self.require_exact_keyset = require;
        self
    }

    /// Whether only exactly matched keysets are accepted.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn requires_exact_keyset(&self) -> bool {
        self.require_exact_keyset
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

    /// Whether cited sessions are fetched and checked.
    pub(crate) fn verifies_sessions(&self) -> bool {
        self.verify_sessions
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
    keyset_match: KeysetMatch,
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

    /// The attested keyset whose receipt key signed it: the keyset the receipt names
    /// ([`KeysetMatch::Exact`]), or the attested keyset with the same signing key
    /// ([`KeysetMatch::SameKey`]). Archive it with the receipt to re-verify offline.
    pub fn keyset(&self) -> &Arc<AttestedKeyset> {
        &self.keyset
    }

    /// How the receipt's keyset was matched: exactly, or by its signing key (another replica).
    pub fn keyset_match(&self) -> KeysetMatch {
        self.keyset_match
    }

    /// The keyset digest the receipt names (the replica that signed it); equals
    /// `keyset().digest()` for an exact match.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn named_keyset_digest(&self) -> &str {
        self.receipt.workload_keyset_digest()
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
            .field("keyset_match", &self.keyset_match)
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
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
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
#[cfg_attr(not(feature = "__internal-test-vectors"), allow(unreachable_pub))]
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
        let legacy = match keyset.generation() {
            crate::attest::Generation::Current => "",
            _ => {
                " (the keyset is of the older report generation, whose secp256k1 receipt keys this crate does not use)"
            }
        };
        fail(
            F::UnknownKey,
            format!("key id {:?} is not a receipt signing key of the attested keyset{legacy}", receipt.key_id()),
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
/// 2. The keyset the receipt names is among `keysets`, then the key it names in that keyset,
///    signature, `api_version`. When it is not and `keysets` refused it (its report was fetched
///    and failed the policy, [`Keysets::refused_keyset`]),
///    [`RefusedKeyset`](ReceiptFailure::RefusedKeyset). Otherwise, if the policy allows it, the same-key replica
///    rule ([`KeysetMatch::SameKey`]): a keyset of `keysets`'
///    [`same_policy_keysets`](Keysets::same_policy_keysets) holds the receipt's key id, the
///    signature verifies under that key, and the receipt was served before that keyset's
///    `not_after`. Else [`UnknownKeyset`](ReceiptFailure::UnknownKeyset). This function does
///    not attest anything; [`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify)
///    first tries to attest an unknown digest, so that an exact match is found when possible.
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
    verify_cow(std::borrow::Cow::Borrowed(receipt), record, keysets, policy)
}

/// [`verify_exchange`] of a receipt the caller owns (a fetched one): the verified receipt keeps
/// it instead of a copy.
pub(crate) fn verify_exchange_owned<K>(
    receipt: Receipt,
    record: &ExchangeRecord,
    keysets: &K,
    policy: &ReceiptPolicy,
) -> Result<VerifiedReceipt>
where
    K: Keysets + ?Sized,
{
    verify_cow(std::borrow::Cow::Owned(receipt), record, keysets, policy)
}

fn verify_cow<K>(
    owned: std::borrow::Cow<'_, Receipt>,
    record: &ExchangeRecord,
    keysets: &K,
    policy: &ReceiptPolicy,
) -> Result<VerifiedReceipt>
where
    K: Keysets + ?Sized,
{
    let receipt: &Receipt = &owned;
    // 1. The response hash must be final.
    let response_sha256 = record.response_body_sha256().ok_or_else(|| {
        fail(
            F::NotAvailable,
            "the response body was not read to its end, so its hash is not final and no receipt can be \
             verified yet (the gateway stores a stream's receipt only when the stream ends)",
        )
    })?;

    // 2. Keyset, key, signature, version.
    let named = receipt.workload_keyset_digest();
    let (keyset, keyset_match) = match keysets.keyset_for_digest(named) {
        Some(keyset) => {
            verify_against_keyset(receipt, &keyset)?;
            (keyset, KeysetMatch::Exact)
        }
        None => {
            if let Some(refused) = keysets.refused_keyset(named) {
                return Err(fail(
                    F::RefusedKeyset(refused.failure()),
                    format!(
                        "the receipt names keyset {named}, whose attestation report was fetched and refused under the \
                         policy ({:?}: {}); the receipts of a refused keyset are not accepted, not even on the same-key \
                         rule. If that build should be trusted, pin it in the policy",
                        refused.failure(),
                        refused.message()
                    ),
                ));
            }
            if policy.require_exact_keyset {
                return Err(fail(
                    F::UnknownKeyset,
                    format!(
                        "the receipt names keyset {named}, which is not among the verified keysets (the policy \
                         requires the exact keyset)"
                    ),
                ));
            }
            (verify_by_same_key(receipt, &keysets.same_policy_keysets())?, KeysetMatch::SameKey)
        }
    };

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

    let forwarded = forwarded.is_some();
    Ok(VerifiedReceipt {
        receipt: owned.into_owned(),
        keyset,
        keyset_match,
        forwarded,
        rewritten,
        upstream,
        session: None,
    })
}

/// The same-key replica rule: a keyset verified under the same policy whose receipt key with
/// the receipt's `key_id` verifies the signature, and whose `not_after` the receipt was served
/// before. The latest-expiring such keyset is returned.
fn verify_by_same_key(receipt: &Receipt, candidates: &[Arc<AttestedKeyset>]) -> Result<Arc<AttestedKeyset>> {
    let named = receipt.workload_keyset_digest();
    let mut holders: Vec<&Arc<AttestedKeyset>> =
        candidates.iter().filter(|k| k.receipt_key(receipt.key_id()).is_some()).collect();
    if holders.is_empty() {
        return Err(fail(
            F::UnknownKeyset,
            format!(
                "the receipt names keyset {named}, which is not among the verified keysets, and no verified keyset has \
                 a receipt key {:?}",
                receipt.key_id()
            ),
        ));
    }
    holders.sort_by_key(|k| std::cmp::Reverse(k.not_after()));
    let mut signed_too_late = false;
    for keyset in holders {
        let Some(key) = keyset.receipt_key(receipt.key_id()) else { continue };
        if verify_signature(receipt, key.verifying_key()).is_err() {
            continue;
        }
        if receipt.api_version() != RECEIPT_API_VERSION {
            return Err(fail(
                F::ApiVersion,
                format!("the receipt's api_version is {:?}, not aci/1", receipt.api_version()),
            ));
        }
        if receipt.served_at() >= keyset.not_after() {
            signed_too_late = true;
            continue;
        }
        return Ok(keyset.clone());
    }
    Err(fail(
        F::UnknownKeyset,
        if signed_too_late {
            format!(
                "the receipt names keyset {named}, which is not among the verified keysets; its key is an attested \
                 receipt key, but the receipt was served after every such keyset's not_after"
            )
        } else {
            format!(
                "the receipt names keyset {named}, which is not among the verified keysets, and its signature does \
                 not verify under any attested receipt key {:?} (another deployment, or a rotated key)",
                receipt.key_id()
            )
        },
    ))
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
                crate::error::ErrorKind::Receipt(f) => Some(f),
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
