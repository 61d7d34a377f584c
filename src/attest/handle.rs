//! The handle through which the E2EE layer reads the current attested key, without locking.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use crate::attest::clock::{Clock, SystemClock};
use crate::attest::keyset::AttestedKeyset;
use crate::error::{AttestationFailure, Error, ErrorKind, Result};

/// Ends a report fetch's "attesting" window when dropped.
pub(crate) struct AttestingGuard(Arc<Shared>);

impl Drop for AttestingGuard {
    fn drop(&mut self) {
        self.0.attesting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Default for KeyHandle {
    /// [`KeyHandle::new`].
    fn default() -> Self {
        KeyHandle::new()
    }
}

/// How many verified keysets (replicas, restarts, rotations) a handle remembers by digest.
pub(crate) const KNOWN_KEYSETS: usize = 16;

/// How long after its `not_after` a keyset stays remembered (for verifying receipts it signed):
/// one day, far beyond the reference gateway's one-hour receipt retention.
pub(crate) const RETAIN_AFTER_EXPIRY_SECS: u64 = 24 * 3600;

/// How many refused keyset digests a handle remembers. A refusal is never forgotten (only lifted
/// by a verification of the same digest); beyond this many the handle refuses every keyset it has
/// not verified (see [`RefusedKeyset`]).
pub(crate) const REFUSED_KEYSETS: usize = 64;

/// A keyset whose attestation report was fetched and failed verification under the policy.
///
/// The key provider remembers them on its [`KeyHandle`] ([`KeyHandle::refused_keysets`]), and a
/// receipt naming one fails with
/// [`ReceiptFailure::RefusedKeyset`](crate::error::ReceiptFailure::RefusedKeyset) instead of being
/// vouched for by the same-key rule ([`KeysetMatch`](crate::receipt::KeysetMatch)). Since a
/// refusal turns honest receipts into failures, only the keyset's own holder can cause one: a
/// refusal needs a report that is attributable to it *and* a failure that is a verdict on it.
///
/// # Which reports refuse a digest
///
/// A refused report proves nothing, so the digest it names is not taken on its word. The
/// refusal is recorded under the report's `workload_keyset_digest` only when
///
/// - the report's `workload_keyset` recomputes (JCS, SHA-256) to it — a forged document that
///   names an honest replica's digest next to another keyset is not attributed to anyone; and
/// - the report came over a channel that keyset names: a TLS connection whose certificate's
///   SPKI that very keyset lists for the host (only the holder of that key can serve over it),
///   or, with no TLS channel, plain HTTP to a loopback address (this machine). A report that
///   came through a TLS interceptor (a middlebox or CDN with its own certificate), or over a
///   transport that names no channel to a remote host
///   (`KeyProviderBuilder::dangerous().accept_unbound_channel()`), may have been rewritten on
///   the way: it refuses nothing, whatever it fails; and
/// - the failure is a verdict on the workload, as below.
///
/// | failure | refuses? | why |
/// | --- | --- | --- |
/// | `NotAllowed`, `EventLog`, `Custody` | yes | what the workload runs, measured, or where its keys come from |
/// | `TcbStatus` | yes | the platform it runs on, as Intel's collateral judges it |
/// | `BadKey`, `NoUsableKey`, `E2eeUnsupported` | yes | the keyset itself (part of what the digest hashes) |
/// | `ApiVersion`, `Shape`, `Generation`, `WorkloadId`, `Endorsement` | yes | the document the workload serves over its own channel |
/// | `ChannelBinding` | no | the path: an on-path TLS interceptor serving the genuine report causes it |
/// | `Nonce`, `ReportData` | no | our request: a genuine report replayed for another nonce fails so |
/// | `Expired`, `NotAfterTooFar` | no | our clock against the keyset's `not_after` and the policy's horizon |
/// | `HardwareUnverifiable` | no | our verifier: a build without `dcap`, or no collateral |
/// | `Quote` | no | the quote's chain is judged against our collateral at our clock (a CRL or TCB info past its validity fails so), and its report-data slot is the nonce binding |
/// | `KeysetDigest`, `Canonicalization` | no | no digest to attribute |
///
/// A report endpoint that fails, a timeout, or an unreachable PCCS refuse nothing either (the
/// keyset is then *unreachable*, not refused). A refusal never overrides a keyset of the same
/// digest that verified (the handle's verified keysets are looked up first), and a later
/// verification of that digest lifts it.
///
/// # The record cannot be flushed
///
/// A refusal is never forgotten while the handle lives (only lifted by a verification of the
/// same digest): a gateway that triggers many digest searches, each reaching a new refused
/// keyset, cannot push a real refusal out and make its receipts pass the same-key rule again.
/// The record holds 64 refusals; once a 65th distinct digest is refused, the handle *saturates*:
/// it keeps the 64, logs an error once, and from then on treats every keyset digest it has not
/// verified as refused ([`Keysets::refused_keyset`](crate::receipt::Keysets::refused_keyset) answers for it, with the failure of the
/// refusal that did not fit, and [`KeyHandle::refusals_saturated`] says so). Receipts of
/// keysets that were verified still verify exactly; only the same-key rule is off, fail closed.
/// A new process (a restarted proxy) starts with an empty record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedKeyset {
    digest: String,
    failure: AttestationFailure,
    message: String,
    refused_at: u64,
}

impl RefusedKeyset {
    /// The refused keyset's digest (`sha256:…`).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Why its report was refused.
    pub fn failure(&self) -> AttestationFailure {
        self.failure
    }

    /// The verification error's message (for example which measured value is not allowed).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When the report was last refused (the handle's clock, Unix seconds).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn refused_at(&self) -> u64 {
        self.refused_at
    }
}

/// The refusals a handle remembers.
#[derive(Default)]
pub(crate) struct Refusals {
    /// Oldest first, at most [`REFUSED_KEYSETS`].
    list: VecDeque<RefusedKeyset>,
    /// The latest refusal that did not fit: once set, every digest not verified is refused.
    overflow: Option<RefusedKeyset>,
}

/// A future that attests a gateway until a keyset digest is known (or its bounds run out).
pub(crate) type AttestFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Installed by the key provider: start (or join) attesting a digest.
pub(crate) type Attester = Arc<dyn Fn(&str) -> Option<AttestFuture> + Send + Sync>;

/// A cheap, cloneable handle to the current [`AttestedKeyset`].
///
/// The E2EE layer calls [`current`](KeyHandle::current) on every request: a lock-free load.
/// A key provider (see [`KeyProvider`](crate::attest::KeyProvider)) publishes fresh keysets into
/// it, and serves each keyset until its `not_after` or the provider's re-attestation ceiling
/// ([`max_keyset_age`](crate::attest::KeyProviderBuilder::max_keyset_age): one day after its
/// report was verified, by default), whichever comes first.
/// [`KeyHandle::fixed`] makes a handle for one keyset you verified yourself, which simply stops
/// serving it at its `not_after` (it has no ceiling: nothing would re-attest).
///
/// # Replicas, restarts and rotations
///
/// A handle remembers up to 16 verified keysets by digest: the replicas of one deployment
/// (same keys, their own `not_after`, hence their own digest), the keysets of earlier gateway
/// processes, and keysets from before a key rotation, so that receipts naming any of them
/// verify. Each is kept until a day after its `not_after`; when more are known, the one that
/// expires first is forgotten first (never the current one). All the keysets of a handle were
/// verified by one key provider, under one [`Policy`](crate::attest::Policy).
///
/// A keyset with the same selected E2EE key as the current one is a *replica*: when the current
/// keyset reaches its `not_after`, a remembered replica that is still valid takes over. A keyset
/// whose E2EE key differs is a *rotation*: it is never used in place of the current key unless
/// the provider publishes it.
#[derive(Clone, Debug)]
pub struct KeyHandle {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) current: ArcSwapOption<AttestedKeyset>,
    pub(crate) known: Mutex<Vec<Arc<AttestedKeyset>>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Wakes the refresher to re-attest now (unknown digest, key mismatch, expiry).
    pub(crate) wake: Notify,
    /// Signalled whenever a new keyset is published.
    pub(crate) published: Notify,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Whether a refresher task runs for this handle (set by the provider's worker).
    pub(crate) refresher: std::sync::atomic::AtomicBool,
    /// Attests a named digest on demand (set by the key provider).
    pub(crate) attester: OnceLock<Attester>,
    /// How many report fetches are running for this handle (the attested TLS connector accepts a
    /// certificate the current keyset does not list only while one runs; see `crate::tls`).
    pub(crate) attesting: std::sync::atomic::AtomicUsize,
    /// Keyset digests whose report was fetched and refused, oldest first (bounded; see
    /// [`RefusedKeyset`]).
    pub(crate) refused: Mutex<Refusals>,
    /// The re-attestation ceiling in seconds (`u64::MAX`: none), set by the key provider.
    max_keyset_age: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("current", &self.current.load().as_ref().map(|k| k.digest().to_owned()))
            .field("known", &self.known.lock().map(|k| k.len()).unwrap_or(0))
            .field("clock", &self.clock)
            .field("attester", &self.attester.get().is_some())
            .field("refused", &self.refused.lock().map(|r| r.list.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl KeyHandle {
    pub(crate) fn empty(clock: Arc<dyn Clock>) -> KeyHandle {
        KeyHandle {
            shared: Arc::new(Shared {
                current: ArcSwapOption::empty(),
                known: Mutex::new(Vec::new()),
                clock,
                wake: Notify::new(),
                published: Notify::new(),
                last_error: Mutex::new(None),
                refresher: std::sync::atomic::AtomicBool::new(false),
                attester: OnceLock::new(),
                attesting: std::sync::atomic::AtomicUsize::new(0),
                refused: Mutex::new(Refusals::default()),
                max_keyset_age: std::sync::atomic::AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// An empty handle (judging expiry by the system clock) for a key provider to publish into
    /// ([`KeyProviderBuilder::handle`](crate::attest::KeyProviderBuilder::handle)). Make it first
    /// when something must read the keys before the provider exists, such as the attested TLS
    /// connector the provider's own client uses (feature `rustls`).
    pub fn new() -> KeyHandle {
        KeyHandle::empty(Arc::new(SystemClock))
    }

    /// [`new`](Self::new) with an injected clock.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn with_clock(clock: Arc<dyn Clock>) -> KeyHandle {
        KeyHandle::empty(clock)
    }

    /// The current keyset if there is one and it is valid now; no side effects.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn current_valid(&self) -> Option<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        self.shared.current.load_full().filter(|k| self.serves_at(k, now))
    }

    /// Set by the key provider ([`KeyProviderBuilder::max_keyset_age`](crate::attest::KeyProviderBuilder::max_keyset_age)).
    pub(crate) fn set_max_keyset_age(&self, age: std::time::Duration) {
        self.shared.max_keyset_age.store(age.as_secs(), std::sync::atomic::Ordering::Release);
    }

    /// The re-attestation ceiling of the key provider serving this handle
    /// ([`KeyProviderBuilder::max_keyset_age`](crate::attest::KeyProviderBuilder::max_keyset_age));
    /// `None` for a handle no provider serves ([`KeyHandle::fixed`], or before one is built).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn max_keyset_age(&self) -> Option<std::time::Duration> {
        match self.shared.max_keyset_age.load(std::sync::atomic::Ordering::Acquire) {
            u64::MAX => None,
            secs => Some(std::time::Duration::from_secs(secs)),
        }
    }

    /// Until when (Unix seconds, exclusive) this handle serves `keyset`: its `not_after`, or its
    /// [`verified_at`](AttestedKeyset::verified_at) plus the
    /// [re-attestation ceiling](Self::max_keyset_age), whichever comes first.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn serves_until(&self, keyset: &AttestedKeyset) -> u64 {
        let age = self.shared.max_keyset_age.load(std::sync::atomic::Ordering::Acquire);
        keyset.not_after().min(keyset.verified_at().saturating_add(age))
    }

    /// Whether this handle serves `keyset` at `now`: `now < serves_until(keyset)`.
    pub(crate) fn serves_at(&self, keyset: &AttestedKeyset, now: u64) -> bool {
        now < self.serves_until(keyset)
    }

    /// Marks a report fetch as running until the guard is dropped.
    pub(crate) fn attesting(&self) -> AttestingGuard {
        self.shared.attesting.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        AttestingGuard(self.shared.clone())
    }

    /// Whether a report fetch is running.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn is_attesting(&self) -> bool {
        self.shared.attesting.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Ask the refresher to re-attest now (spaced by its minimum refresh interval).
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn request_refresh(&self) {
        self.shared.wake.notify_one();
    }

    /// A handle serving one keyset, with no refresher and no re-attestation ceiling. After the
    /// keyset's `not_after`, [`current`](Self::current) fails with `KeyUnavailable`.
    pub fn fixed(keyset: AttestedKeyset) -> KeyHandle {
        Self::fixed_with_clock(keyset, Arc::new(SystemClock))
    }

    /// [`fixed`](Self::fixed) with an injected clock.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn fixed_with_clock(keyset: AttestedKeyset, clock: Arc<dyn Clock>) -> KeyHandle {
        let h = KeyHandle::empty(clock);
        h.publish(Arc::new(keyset));
        h
    }

    /// The keyset to encrypt to now. Fails with `KeyUnavailable` when none has been established
    /// yet, or the current one is past its `not_after` (a key is never served after it) or was
    /// verified longer ago than the provider's re-attestation ceiling
    /// ([`KeyProviderBuilder::max_keyset_age`](crate::attest::KeyProviderBuilder::max_keyset_age)),
    /// and no remembered replica of it (same E2EE key) is still served.
    pub fn current(&self) -> Result<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        match self.shared.current.load_full() {
            Some(k) if self.serves_at(&k, now) => Ok(k),
            Some(expired) => {
                if let Some(replica) = self.valid_replica_of(&expired, now) {
                    tracing::debug!(
                        expired = expired.digest(),
                        replica = replica.digest(),
                        "the current keyset expired; a remembered replica with the same E2EE key takes over"
                    );
                    self.shared.current.store(Some(replica.clone()));
                    return Ok(replica);
                }
                // The refresher ignores this while it is backing off after failures.
                self.shared.wake.notify_one();
                if !expired.is_valid_at(now) {
                    return Err(Error::new(ErrorKind::KeyUnavailable, "the attested keyset has expired"));
                }
                let why = self.shared.last_error.lock().ok().and_then(|e| e.clone());
                Err(Error::new(
                    ErrorKind::KeyUnavailable,
                    format!(
                        "the attested keyset was verified {} s ago, longer than max_keyset_age allows, and no \
                         re-attestation has succeeded since{}",
                        now.saturating_sub(expired.verified_at()),
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    ),
                ))
            }
            None => {
                let why = self.shared.last_error.lock().ok().and_then(|e| e.clone());
                Err(Error::new(
                    ErrorKind::KeyUnavailable,
                    match why {
                        Some(why) => format!("no attested keyset: {why}"),
                        None => "no attested keyset has been established yet".to_owned(),
                    },
                ))
            }
        }
    }

    /// The remembered keyset valid at `now` with the same selected E2EE key as `of` and the
    /// latest `not_after`.
    fn valid_replica_of(&self, of: &AttestedKeyset, now: u64) -> Option<Arc<AttestedKeyset>> {
        let known = self.shared.known.lock().ok()?;
        known
            .iter()
            .filter(|k| self.serves_at(k, now) && k.same_e2ee_key(of))
            .max_by_key(|k| self.serves_until(k))
            .cloned()
    }

    /// A verified keyset by its digest (current or remembered), if still served
    /// ([`serves_until`](Self::serves_until)).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        if let Some(k) = self.shared.current.load_full() {
            if k.digest() == digest && self.serves_at(&k, now) {
                return Some(k);
            }
        }
        let known = self.shared.known.lock().ok()?;
        known.iter().find(|k| k.digest() == digest && self.serves_at(k, now)).cloned()
    }

    /// Every remembered verified keyset, including expired ones (for verifying old receipts),
    /// in the order they were first verified.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn known_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        self.shared.known.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// Whether a keyset with this digest is remembered (valid or not).
    pub(crate) fn knows(&self, digest: &str) -> bool {
        self.shared.known.lock().map(|k| k.iter().any(|k| k.digest() == digest)).unwrap_or(false)
    }

    /// The refusal of the keyset named `digest`, if its report was fetched and failed
    /// verification and no keyset of that digest verified since (see [`RefusedKeyset`]). Once
    /// the record is saturated ([`refusals_saturated`](Self::refusals_saturated)), every digest
    /// the handle has not verified answers with a refusal carrying the failure of the refusal
    /// that did not fit.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn refused_keyset(&self, digest: &str) -> Option<RefusedKeyset> {
        // Looked up before the refusals (one lock at a time).
        let verified = self.knows(digest);
        let refused = self.shared.refused.lock().ok()?;
        if let Some(r) = refused.list.iter().find(|r| r.digest == digest) {
            return Some(r.clone());
        }
        let overflow = refused.overflow.as_ref().filter(|_| !verified)?;
        Some(RefusedKeyset {
            digest: digest.to_owned(),
            failure: overflow.failure,
            message: format!(
                "more than {REFUSED_KEYSETS} keysets were refused since this process started, so the handle no longer \
                 tells a refused keyset from one it never reached and refuses every keyset it has not verified (the \
                 refusal that did not fit: {} for {})",
                overflow.message, overflow.digest
            ),
            refused_at: overflow.refused_at,
        })
    }

    /// Every remembered refusal, oldest first (at most 64).
    pub fn refused_keysets(&self) -> Vec<RefusedKeyset> {
        self.shared.refused.lock().map(|r| r.list.iter().cloned().collect()).unwrap_or_default()
    }

    /// Whether more keysets were refused than the handle remembers: it then refuses every keyset
    /// digest it has not verified (see [`RefusedKeyset`]). Stays set for the handle's life.
    pub fn refusals_saturated(&self) -> bool {
        self.shared.refused.lock().map(|r| r.overflow.is_some()).unwrap_or(true)
    }

    /// Remember that the report of the keyset `digest` was fetched and refused with `failure`.
    /// Logged at warn the first time a digest is refused; a repeated refusal updates the reason
    /// and time in place. Nothing is forgotten: beyond [`REFUSED_KEYSETS`] the handle saturates.
    pub(crate) fn refuse(&self, digest: &str, failure: AttestationFailure, message: &str) {
        let now = self.shared.clock.now();
        let Ok(mut refused) = self.shared.refused.lock() else { return };
        if let Some(r) = refused.list.iter_mut().find(|r| r.digest == digest) {
            r.failure = failure;
            r.message = message.to_owned();
            r.refused_at = now;
            return;
        }
        let refusal =
            RefusedKeyset { digest: digest.to_owned(), failure, message: message.to_owned(), refused_at: now };
        if refused.list.len() < REFUSED_KEYSETS {
            tracing::warn!(
                digest,
                ?failure,
                "a keyset's attestation report failed the policy: receipts naming this keyset will be refused: {message}"
            );
            refused.list.push_back(refusal);
            return;
        }
        if refused.overflow.is_none() {
            tracing::error!(
                digest,
                ?failure,
                "more than {REFUSED_KEYSETS} keysets were refused: from now on every keyset this process has not \
                 verified is refused (the same-key rule is off); the gateway keeps serving reports that fail the \
                 policy: {message}"
            );
        }
        refused.overflow = Some(refusal);
    }
    /// Tell the handle which keyset digest a response named (`X-ACI-Keyset-Digest`). An unknown
    /// digest asks the refresher to re-attest in the background; the current key keeps serving.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn observe_digest(&self, digest: &str) {
        if !self.knows(digest) {
            tracing::debug!(digest, "unknown keyset digest; asking for re-attestation");
            self.shared.wake.notify_one();
        }
    }

    /// Attest the gateway until the keyset named `digest` is known, if a key provider serves
    /// this handle: the provider fetches a few reports with fresh nonces, each on a fresh
    /// connection so that a load balancer can route it to another replica, and remembers every
    /// keyset that verifies (without making it current). Concurrent calls for one digest share
    /// one attempt; a digest that could not be reached is not tried again for the provider's
    /// `min_refresh_interval`. Returns `None` when the digest is already known or no provider
    /// serves the handle ([`KeyHandle::fixed`]).
    ///
    /// The receipt client calls this when a receipt names a keyset it does not know; it bounds
    /// how long it waits ([`ReceiptClient::keyset_wait`](crate::receipt::ReceiptClient::keyset_wait)).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn attest_digest(&self, digest: &str) -> Option<impl Future<Output = ()> + Send + 'static + use<>> {
        if self.knows(digest) {
            return None;
        }
        let attester = self.shared.attester.get()?;
        attester(digest)
    }

    /// Tell the handle the gateway answered `e2ee_model_key_mismatch`: re-attest now.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn report_key_mismatch(&self) {
        tracing::info!("gateway reported e2ee_model_key_mismatch; asking for re-attestation");
        self.shared.wake.notify_one();
    }

    /// Publish a verified keyset: it becomes current and is remembered by digest.
    pub(crate) fn publish(&self, keyset: Arc<AttestedKeyset>) {
        if let Ok(mut e) = self.shared.last_error.lock() {
            *e = None;
        }
        // Current first, so that remembering it protects it rather than the keyset it replaces.
        self.shared.current.store(Some(keyset.clone()));
        self.remember(keyset);
        self.shared.published.notify_waiters();
    }

    /// Remember a verified keyset by digest without making it current (a replica learnt while
    /// verifying a receipt). Retires keysets a day past their `not_after` and, beyond
    /// [`KNOWN_KEYSETS`], the one that expires first (never the current one).
    pub(crate) fn remember(&self, keyset: Arc<AttestedKeyset>) {
        let now = self.shared.clock.now();
        let current = self.shared.current.load_full();
        let is_current = |k: &Arc<AttestedKeyset>| current.as_ref().is_some_and(|c| c.digest() == k.digest());
        if let Ok(mut refused) = self.shared.refused.lock() {
            // Verified now: an earlier refusal of this digest no longer stands. (A saturated
            // record stays saturated: the refusals that did not fit may still stand.)
            refused.list.retain(|r| r.digest != keyset.digest());
        }
        if let Ok(mut known) = self.shared.known.lock() {
            match known.iter_mut().find(|k| k.digest() == keyset.digest()) {
                // Same digest, verified again: keep its first position, hold the newest proof.
                Some(slot) => *slot = keyset,
                None => known.push(keyset),
            }
            known.retain(|k| is_current(k) || k.not_after().saturating_add(RETAIN_AFTER_EXPIRY_SECS) > now);
            while known.len() > KNOWN_KEYSETS {
                let evict = known
                    .iter()
                    .enumerate()
                    .filter(|(_, k)| !is_current(k))
                    .min_by_key(|(_, k)| k.not_after())
                    .map(|(i, _)| i);
                match evict {
                    Some(i) => {
                        known.remove(i);
                    }
                    None => break,
                }
            }
        }
    }

    /// Whether a key provider's refresher keeps this handle current.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn has_refresher(&self) -> bool {
        self.shared.refresher.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the current keyset's selected E2EE key differs from `old_key` (the
    /// `public_key` text requests were encrypted to).
    pub(crate) async fn wait_for_other_key(self, old_key: String) {
        loop {
            // Registered before the check, so a publish in between is not lost.
            let published = self.shared.published.notified();
            if self.current().is_ok_and(|k| k.e2ee_key().public_key_text() != old_key) {
                return;
            }
            published.await;
        }
    }

    /// The clock the handle judges expiry with.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn now(&self) -> u64 {
        self.shared.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::ManualClock;
    use crate::protocol::keys::E2eeKey;
    use crate::protocol::suite::{SecretKey, Suite};

    fn e2ee_key() -> E2eeKey {
        let public = SecretKey::generate(Suite::X25519, &mut rand_core::OsRng).public_key();
        E2eeKey::parse("k", Suite::X25519.algo(), public.to_hex()).unwrap()
    }

    fn keyset(digest: &str, not_after: u64, key: &E2eeKey) -> Arc<AttestedKeyset> {
        Arc::new(AttestedKeyset {
            digest: digest.to_owned(),
            subject: None,
            not_after,
            e2ee_keys: vec![key.clone()],
            selected: 0,
            receipt_keys: Vec::new(),
            tls_keys: Vec::new(),
            verified_at: 0,
            hardware_verified: false,
            generation: crate::attest::Generation::Current,
            hardware: None,
            anchor: crate::attest::Anchor::Unanchored,
            kms_identity: None,
            report: bytes::Bytes::new(),
            nonce: [0; 32],
        })
    }

    #[test]
    fn an_expired_current_keyset_hands_over_to_a_valid_replica_never_to_a_rotated_key() {
        let clock = ManualClock::new(1_000);
        let handle = KeyHandle::empty(Arc::new(clock.clone()));
        let (key, other) = (e2ee_key(), e2ee_key());
        // Remembered: a replica (same key) valid until 3000, one until 2500, and a keyset with
        // another E2EE key valid until 9000.
        handle.remember(keyset("replica-late", 3_000, &key));
        handle.remember(keyset("replica-early", 2_500, &key));
        handle.remember(keyset("rotated", 9_000, &other));
        handle.publish(keyset("current", 2_000, &key));
        assert_eq!(handle.current().unwrap().digest(), "current");

        clock.set(2_000);
        assert_eq!(handle.current().unwrap().digest(), "replica-late", "the longest-lived replica takes over");
        clock.set(3_000);
        let err = handle.current().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyUnavailable, "a keyset with another E2EE key is never a fallback");
        assert!(handle.knows("rotated"));
    }

    #[test]
    fn past_the_ceiling_a_keyset_is_not_served_but_a_replica_verified_later_takes_over() {
        let clock = ManualClock::new(1_000);
        let handle = KeyHandle::empty(Arc::new(clock.clone()));
        assert_eq!(handle.max_keyset_age(), None);
        handle.set_max_keyset_age(std::time::Duration::from_secs(100));
        let key = e2ee_key();
        let verified_at = |digest: &str, at: u64| {
            let mut k = (*keyset(digest, 1_000_000, &key)).clone();
            k.verified_at = at;
            Arc::new(k)
        };
        handle.publish(verified_at("current", 1_000));
        assert_eq!(handle.serves_until(&handle.current().unwrap()), 1_100, "verified_at + the ceiling");
        // A replica (same E2EE key) learnt by a search at 1_050.
        handle.remember(verified_at("replica", 1_050));
        clock.set(1_099);
        assert_eq!(handle.current().unwrap().digest(), "current");
        clock.set(1_100);
        assert_eq!(handle.current().unwrap().digest(), "replica", "verified more recently: it takes over");
        assert!(handle.keyset_for_digest("current").is_none() && handle.keyset_for_digest("replica").is_some());
        clock.set(1_150);
        let e = handle.current().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::KeyUnavailable);
        assert!(e.to_string().contains("max_keyset_age"), "{e}");
        // A later verification of either is served again.
        handle.publish(verified_at("current", 1_150));
        assert_eq!(handle.current().unwrap().digest(), "current");
    }

    #[test]
    fn remembered_keysets_are_bounded_and_retired_by_not_after() {
        let clock = ManualClock::new(1_000);
        let handle = KeyHandle::empty(Arc::new(clock.clone()));
        let key = e2ee_key();
        handle.publish(keyset("current", 1_500, &key));
        for i in 0..KNOWN_KEYSETS as u64 + 4 {
            handle.remember(keyset(&format!("r{i}"), 10_000 + i, &key));
        }
        let known = handle.known_keysets();
        assert_eq!(known.len(), KNOWN_KEYSETS);
        // The current keyset stays although it expires first; the earliest others went.
        assert!(handle.knows("current"));
        for gone in ["r0", "r1", "r2", "r3", "r4"] {
            assert!(!handle.knows(gone), "{gone}");
        }
        assert!(handle.knows("r5") && handle.knows(&format!("r{}", KNOWN_KEYSETS + 3)));

        // Publishing another keyset makes room by the same rule: the old current one expires first.
        handle.publish(keyset("next", 50_000, &key));
        assert!(!handle.knows("current") && handle.knows("r5") && handle.knows("next"));

        // A day after its not_after a keyset that is not current is retired at the next change.
        let handle = KeyHandle::empty(Arc::new(clock.clone()));
        handle.remember(keyset("old", 1_500, &key));
        handle.publish(keyset("new", 50_000, &key));
        clock.set(1_500 + RETAIN_AFTER_EXPIRY_SECS - 1);
        handle.remember(keyset("x", 60_000, &key));
        assert!(handle.knows("old"), "kept a day past its not_after");
        clock.set(1_500 + RETAIN_AFTER_EXPIRY_SECS);
        handle.remember(keyset("y", 60_000, &key));
        assert!(!handle.knows("old"));
        assert_eq!(handle.known_keysets().len(), 3);
    }

    #[test]
    fn refusals_are_never_forgotten_and_a_full_record_refuses_every_unverified_keyset() {
        let clock = ManualClock::new(1_000);
        let handle = KeyHandle::empty(Arc::new(clock.clone()));
        let key = e2ee_key();
        handle.publish(keyset("verified", 9_000, &key));
        handle.refuse("d0", AttestationFailure::NotAllowed, "the compose hash is not on the policy's allowlist");
        clock.set(1_010);
        // Refused again: updated in place, not a second entry.
        handle.refuse("d0", AttestationFailure::TcbStatus, "tcb");
        let r = handle.refused_keyset("d0").unwrap();
        assert_eq!(
            (r.digest(), r.failure(), r.message(), r.refused_at()),
            ("d0", AttestationFailure::TcbStatus, "tcb", 1_010)
        );
        assert_eq!(handle.refused_keysets().len(), 1);
        for i in 1..REFUSED_KEYSETS {
            handle.refuse(&format!("d{i}"), AttestationFailure::NotAllowed, "m");
        }
        assert_eq!(handle.refused_keysets().len(), REFUSED_KEYSETS);
        assert!(!handle.refusals_saturated());
        assert!(handle.refused_keyset("never-seen").is_none(), "not saturated: an unreached keyset is not refused");

        // One more: nothing is forgotten; the handle saturates.
        clock.set(1_020);
        handle.refuse("one-too-many", AttestationFailure::Custody, "custody");
        let refused = handle.refused_keysets();
        assert_eq!(refused.len(), REFUSED_KEYSETS);
        assert_eq!(refused[0].digest(), "d0", "the oldest refusal is kept");
        assert_eq!(handle.refused_keyset("d0").unwrap().failure(), AttestationFailure::TcbStatus);
        assert!(handle.refusals_saturated());
        // Every digest not verified is refused now, with the failure of the refusal that did not fit.
        for digest in ["one-too-many", "never-seen"] {
            let r = handle.refused_keyset(digest).expect("refused once saturated");
            assert_eq!((r.digest(), r.failure(), r.refused_at()), (digest, AttestationFailure::Custody, 1_020));
            assert!(r.message().contains("more than 64 keysets were refused"), "{}", r.message());
        }
        // A verified keyset never is.
        assert!(handle.refused_keyset("verified").is_none());

        // A keyset of a refused digest that verifies lifts that refusal; the handle stays saturated.
        handle.remember(keyset("d5", 9_000, &key));
        assert!(handle.refused_keyset("d5").is_none());
        assert_eq!(handle.refused_keysets().len(), REFUSED_KEYSETS - 1);
        assert!(handle.refusals_saturated() && handle.refused_keyset("never-seen").is_some());
    }
}
