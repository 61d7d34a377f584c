//! The handle through which the E2EE layer reads the current attested key, without locking.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use crate::attest::clock::{Clock, SystemClock};
use crate::attest::keyset::AttestedKeyset;
use crate::error::{Error, ErrorKind, Result};

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

/// How many verified keysets (replicas, restarts) a handle remembers by digest.
pub(crate) const KNOWN_KEYSETS: usize = 16;

/// A cheap, cloneable handle to the current [`AttestedKeyset`].
///
/// The E2EE layer calls [`current`](KeyHandle::current) on every request: a lock-free load.
/// A key provider (see [`KeyProvider`](crate::attest::KeyProvider)) publishes fresh keysets into
/// it; [`KeyHandle::fixed`] makes a handle for one keyset you verified yourself, which simply
/// stops serving it at its `not_after`.
#[derive(Clone, Debug)]
pub struct KeyHandle {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) current: ArcSwapOption<AttestedKeyset>,
    pub(crate) known: Mutex<Vec<Arc<AttestedKeyset>>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Wakes the refresher to re-attest now (unknown digest, key mismatch).
    pub(crate) wake: Notify,
    /// Signalled whenever a new keyset is published.
    pub(crate) published: Notify,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Whether a refresher task runs for this handle (set by the provider's worker).
    pub(crate) refresher: std::sync::atomic::AtomicBool,
    /// How many report fetches are running for this handle (the attested TLS connector accepts a
    /// certificate the current keyset does not list only while one runs; see `crate::tls`).
    pub(crate) attesting: std::sync::atomic::AtomicUsize,
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
                attesting: std::sync::atomic::AtomicUsize::new(0),
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
    pub fn with_clock(clock: Arc<dyn Clock>) -> KeyHandle {
        KeyHandle::empty(clock)
    }

    /// The current keyset if there is one and it is valid now; no side effects.
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn current_valid(&self) -> Option<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        self.shared.current.load_full().filter(|k| k.is_valid_at(now))
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

    /// A handle serving one keyset, with no refresher. After the keyset's `not_after`,
    /// [`current`](Self::current) fails with `KeyUnavailable`.
    pub fn fixed(keyset: AttestedKeyset) -> KeyHandle {
        Self::fixed_with_clock(keyset, Arc::new(SystemClock))
    }

    /// [`fixed`](Self::fixed) with an injected clock.
    pub fn fixed_with_clock(keyset: AttestedKeyset, clock: Arc<dyn Clock>) -> KeyHandle {
        let h = KeyHandle::empty(clock);
        h.publish(Arc::new(keyset));
        h
    }

    /// The keyset to encrypt to now. Fails with `KeyUnavailable` when none has been established
    /// yet or the current one is past its `not_after` (a key is never served after it).
    pub fn current(&self) -> Result<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        match self.shared.current.load_full() {
            Some(k) if k.is_valid_at(now) => Ok(k),
            Some(_) => {
                self.shared.wake.notify_one();
                Err(Error::new(ErrorKind::KeyUnavailable, "the attested keyset has expired"))
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

    /// A verified keyset by its digest (current or remembered), if still valid.
    pub fn keyset_for_digest(&self, digest: &str) -> Option<Arc<AttestedKeyset>> {
        let now = self.shared.clock.now();
        if let Some(k) = self.shared.current.load_full() {
            if k.digest() == digest && k.is_valid_at(now) {
                return Some(k);
            }
        }
        let known = self.shared.known.lock().ok()?;
        known.iter().find(|k| k.digest() == digest && k.is_valid_at(now)).cloned()
    }

    /// Every remembered verified keyset, including expired ones (for verifying old receipts).
    pub fn known_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        self.shared.known.lock().map(|k| k.clone()).unwrap_or_default()
    }

    /// Tell the handle which keyset digest a response named (`X-ACI-Keyset-Digest`). An unknown
    /// digest asks the refresher to re-attest in the background; the current key keeps serving.
    pub fn observe_digest(&self, digest: &str) {
        let known = self.shared.known.lock().map(|k| k.iter().any(|k| k.digest() == digest)).unwrap_or(false);
        if !known {
            tracing::debug!(digest, "unknown keyset digest; asking for re-attestation");
            self.shared.wake.notify_one();
        }
    }

    /// Tell the handle the gateway answered `e2ee_model_key_mismatch`: re-attest now.
    pub fn report_key_mismatch(&self) {
        tracing::info!("gateway reported e2ee_model_key_mismatch; asking for re-attestation");
        self.shared.wake.notify_one();
    }

    /// Publish a verified keyset: it becomes current and is remembered by digest.
    pub(crate) fn publish(&self, keyset: Arc<AttestedKeyset>) {
        if let Ok(mut known) = self.shared.known.lock() {
            known.retain(|k| k.digest() != keyset.digest());
            known.push(keyset.clone());
            if known.len() > KNOWN_KEYSETS {
                known.remove(0);
            }
        }
        if let Ok(mut e) = self.shared.last_error.lock() {
            *e = None;
        }
        self.shared.current.store(Some(keyset));
        self.shared.published.notify_waiters();
    }

    /// Whether a key provider's refresher keeps this handle current.
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
    pub fn now(&self) -> u64 {
        self.shared.clock.now()
    }
}
