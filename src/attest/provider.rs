//! The key provider: fetch, verify and publish the gateway's attested keyset, and keep it fresh.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, WeakShared, select};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use rand_core::{OsRng, RngCore};
use tower::ServiceExt;
use tower_service::Service;

use crate::attest::channel::{
    ChannelInfo, ChannelRule, channel_rule, check_report_channel, is_loopback_host, require_channel,
    unverified_keyset_names_channel,
};
use crate::attest::clock::{Clock, SystemClock};
use crate::attest::handle::{AttestFuture, Attester, KeyHandle};
use crate::attest::keyset::AttestedKeyset;
use crate::attest::policy::Policy;
use crate::attest::report::verify_report;
use crate::error::{AttestationFailure, BoxError, Error, ErrorKind, Result};
use crate::hex;
use crate::protocol::GatewayError;
use crate::telemetry::VerifiedKeyset;

/// An injected sleep: returns a future that completes after the given duration.
///
/// The default is `tokio::time::sleep`; supply your own for other executors or for tests driven
/// by a manual clock. The provider uses it for refresh timers, retry backoff and the load
/// timeout.
pub type SleepFn = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Path of the attestation endpoint, appended to the base URL's path.
const ATTESTATION_PATH: &str = "/v1/aci/attestation";

/// Default number of report fetches spent looking for one unknown keyset digest.
const DEFAULT_DIGEST_PROBES: u32 = 8;

/// Default largest report body accepted (a report with a TDX quote and event log is well under).
const DEFAULT_MAX_REPORT_SIZE: usize = 4 * 1024 * 1024;

/// Default re-attestation ceiling ([`KeyProviderBuilder::max_keyset_age`]): one day.
pub(crate) const DEFAULT_MAX_KEYSET_AGE: Duration = Duration::from_secs(24 * 3600);

/// The shortest re-attestation ceiling [`KeyProviderBuilder::max_keyset_age`] accepts.
pub(crate) const MIN_MAX_KEYSET_AGE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Timing {
    refresh_buffer: Duration,
    refresh_jitter: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    load_timeout: Duration,
    min_refresh_interval: Duration,
    /// Report fetches spent looking for one unknown keyset digest.
    digest_probes: u32,
    /// The re-attestation ceiling.
    max_keyset_age: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh_buffer: Duration::from_secs(600),
            refresh_jitter: Duration::from_secs(60),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            load_timeout: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(10),
            digest_probes: DEFAULT_DIGEST_PROBES,
            max_keyset_age: DEFAULT_MAX_KEYSET_AGE,
        }
    }
}

/// Builds a [`KeyProvider`]. Created by [`KeyProvider::builder`].
/// `ReqB` is the request body type of the HTTP service (any body that is `From<Bytes>`), so
/// one client can serve the E2EE layer, the provider and the receipt client.
#[must_use]
pub struct KeyProviderBuilder<S, ReqB = Full<Bytes>> {
    service: S,
    _body: PhantomData<fn() -> ReqB>,
    base: Option<Uri>,
    policy: Option<Policy>,
    clock: Arc<dyn Clock>,
    handle: Option<KeyHandle>,
    sleep: Option<SleepFn>,
    timing: Timing,
    max_report_size: usize,
    /// `dangerous().accept_unbound_channel()`.
    unbound_channel: bool,
    #[cfg(feature = "dcap")]
    pccs: Option<Uri>,
}

impl<S, ReqB> fmt::Debug for KeyProviderBuilder<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyProviderBuilder")
            .field("base", &self.base)
            .field("policy", &self.policy)
            .field("clock", &self.clock)
            .field("timing", &self.timing)
            .field("max_report_size", &self.max_report_size)
            .field("unbound_channel", &self.unbound_channel)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB> KeyProviderBuilder<S, ReqB> {
    /// The gateway's base URL (scheme and authority, optionally a path prefix). Required.
    ///
    /// `https://`: every report must come over a connection bound to the keyset it attests,
    /// which is what `tls::AttestedTls`'s connector (feature `rustls`)
    /// provides: a report whose response names no attested channel fails with
    /// [`ChannelBinding`](crate::error::AttestationFailure::ChannelBinding). Plain `http://` is allowed
    /// only to a loopback address (`127.0.0.0/8`, `::1`, `localhost`); any other host fails
    /// [`build`](Self::build). [`dangerous`](Self::dangerous) opts out of both.
    pub fn base_url(mut self, base: Uri) -> Self {
        self.base = Some(base);
        self
    }

    /// The policy reports must satisfy. Required.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The clock expiry and refresh are judged by (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Publish into this handle (made with [`KeyHandle::new`]) instead of a new one, for
    /// something that must hold the handle before the provider exists: the attested TLS
    /// connector (feature `rustls`) of the very client the provider fetches reports with. The
    /// handle's clock then judges expiry and refresh (a [`clock`](Self::clock) given here is not
    /// used).
    pub fn handle(mut self, handle: KeyHandle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// The sleep the refresher and the load timeout use (default: `tokio::time::sleep`, which
    /// needs a Tokio runtime with time enabled).
    pub fn sleep<F, Fut>(mut self, sleep: F) -> Self
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.sleep = Some(Arc::new(move |d| Box::pin(sleep(d))));
        self
    }

    /// Refresh this long before `not_after` (default 10 minutes).
    pub fn refresh_buffer(mut self, buffer: Duration) -> Self {
        self.timing.refresh_buffer = buffer;
        self
    }

    /// Refresh up to this much earlier still, at random, so clients do not refresh in lockstep
    /// (default 1 minute; zero disables jitter).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn refresh_jitter(mut self, jitter: Duration) -> Self {
        self.timing.refresh_jitter = jitter;
        self
    }

    /// Retry a failed fetch after `initial`, doubling up to `max` (defaults 1 s and 60 s).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.timing.retry_initial = initial;
        self.timing.retry_max = max;
        self
    }

    /// Give up on one fetch (request, body and verification) after this long (default 30 s).
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.timing.load_timeout = timeout;
        self
    }

    /// Space refreshes the handle asks for (unknown digest, key mismatch, expiry) and timer
    /// refreshes at least this far apart (default 10 s).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.timing.min_refresh_interval = interval;
        self
    }

    /// How many reports (each with a fresh nonce, on a fresh connection) to fetch at most when
    /// looking for a keyset digest a receipt names and the handle does not know (default 8; see
    /// [`Keysets::attest_digest`](crate::receipt::Keysets::attest_digest)). Behind a load balancer each fetch may reach another
    /// replica; with `n` replicas behind a round-robin balancer `n` fetches reach them all.
    /// Zero disables the search: unknown digests are then learnt only by the refresher.
    pub fn digest_probes(mut self, probes: u32) -> Self {
        self.timing.digest_probes = probes;
        self
    }

    /// The re-attestation ceiling (default one day): a keyset is
    /// current for at most this long after its report was verified, however far its `not_after`
    /// lies, and the refresher re-attests before then (`refresh_buffer` and `refresh_jitter`
    /// earlier, as before `not_after`). Re-attesting judges the TCB status, the revocation lists
    /// and the advisories again against fresh collateral, and ends the life of a keyset whose
    /// validity is claimed by the gateway alone: the production `not_after` is launch + 30 days,
    /// and the older report generation's `freshness.stale_after` is not bound by the quote, so an
    /// on-path attacker can push it to the policy's horizon. Past the ceiling without a
    /// successful re-attestation, [`KeyHandle::current`] fails with
    /// [`KeyUnavailable`](ErrorKind::KeyUnavailable), as for an expired keyset.
    ///
    /// [`build`](Self::build) fails with [`Config`](ErrorKind::Config) for zero or anything
    /// shorter than a minute. The ceiling is set on the provider's
    /// [`KeyHandle`]; a [`KeyHandle::fixed`] handle has none.
    ///
    /// ```
    /// # fn demo(client: tower::util::BoxCloneService<http::Request<http_body_util::Full<bytes::Bytes>>, http::Response<http_body_util::Full<bytes::Bytes>>, tower_aci::BoxError>, policy: tower_aci::attest::Policy) -> tower_aci::Result<()> {
    /// use std::time::Duration;
    /// use tower_aci::attest::KeyProvider;
    ///
    /// let provider = KeyProvider::builder(client)
    ///     .base_url("https://gateway.example.com".parse().unwrap())
    ///     .policy(policy)
    ///     .max_keyset_age(Duration::from_secs(6 * 3600)) // re-attest at least every six hours
    ///     .build()?;
    /// # let _ = provider; Ok(()) }
    /// ```
    pub fn max_keyset_age(mut self, age: Duration) -> Self {
        self.timing.max_keyset_age = age;
        self
    }

    /// The largest report body accepted (default 4 MiB).
    pub fn max_report_size(mut self, bytes: usize) -> Self {
        self.max_report_size = bytes;
        self
    }

    /// Fetch the collateral for the gateway's TDX quote from this PCCS (feature `dcap`), through
    /// the same HTTP service, at every attestation; it is used in place of the policy's offline
    /// collateral. The service must route absolute URIs. See
    /// [`fetch_collateral`](crate::attest::dcap::fetch_collateral); for example
    /// `https://pccs.phala.network`, the reference verifier's default.
    #[cfg(feature = "dcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
    pub fn pccs(mut self, url: Uri) -> Self {
        self.pccs = Some(url);
        self
    }

    /// Relaxations that give up part of what the provider checks. Each is named for what it
    /// gives up; none is needed against a real gateway reached through
    /// `tls::AttestedTls`.
    pub fn dangerous(self) -> DangerousKeyProviderBuilder<S, ReqB> {
        DangerousKeyProviderBuilder { inner: self }
    }

    /// The provider, or a [`Config`](ErrorKind::Config) error (also for a plain `http://`
    /// base URL whose host is not a loopback address).
    pub fn build(self) -> Result<KeyProvider<S, ReqB>> {
        let config = |m: &'static str| Error::new(ErrorKind::Config, m);
        let base = self.base.ok_or_else(|| config("the key provider needs a base_url"))?;
        if base.scheme().is_none() || base.authority().is_none() {
            return Err(config("the base_url needs a scheme and an authority"));
        }
        if base.query().is_some() {
            return Err(config("the base_url must not carry a query"));
        }
        let channel_rule =
            channel_rule(base.scheme_str(), base.host(), self.unbound_channel, "the key provider's base_url")?;
        let local_path = base.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("http"))
            && base.host().is_some_and(is_loopback_host);
        let policy = self.policy.ok_or_else(|| config("the key provider needs a policy"))?;
        let t = self.timing;
        if t.load_timeout.is_zero() {
            return Err(config("load_timeout must be positive"));
        }
        if t.retry_initial.is_zero() || t.retry_max < t.retry_initial {
            return Err(config("retry_backoff needs 0 < initial <= max"));
        }
        if self.max_report_size == 0 {
            return Err(config("max_report_size must be positive"));
        }
        if t.max_keyset_age.is_zero() {
            return Err(config("max_keyset_age must be positive: it is how often the gateway is re-attested"));
        }
        if t.max_keyset_age < MIN_MAX_KEYSET_AGE {
            return Err(config("max_keyset_age must be at least one minute"));
        }
        #[cfg(feature = "dcap")]
        if self.pccs.as_ref().is_some_and(|u| u.scheme().is_none() || u.authority().is_none()) {
            return Err(config("the PCCS URL needs a scheme and an authority"));
        }
        let sleep = self.sleep.unwrap_or_else(|| Arc::new(|d| Box::pin(tokio::time::sleep(d))));
        let handle = self.handle.unwrap_or_else(|| KeyHandle::empty(self.clock));
        handle.set_max_keyset_age(t.max_keyset_age);
        Ok(KeyProvider {
            inner: Arc::new(Inner {
                service: Mutex::new(self.service),
                base,
                policy,
                handle,
                sleep,
                timing: t,
                max_report_size: self.max_report_size,
                channel_rule,
                local_path,
                #[cfg(feature = "dcap")]
                pccs: self.pccs,
                flight: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                last_outcome: Mutex::new(None),
                searches: Mutex::new(HashMap::new()),
                unreachable: Mutex::new(HashMap::new()),
                _body: PhantomData,
            }),
        })
    }
}

/// The relaxations of a [`KeyProviderBuilder`], from [`KeyProviderBuilder::dangerous`].
#[must_use]
pub struct DangerousKeyProviderBuilder<S, ReqB = Full<Bytes>> {
    inner: KeyProviderBuilder<S, ReqB>,
}

impl<S, ReqB> fmt::Debug for DangerousKeyProviderBuilder<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DangerousKeyProviderBuilder").field(&self.inner).finish()
    }
}

impl<S, ReqB> DangerousKeyProviderBuilder<S, ReqB> {
    /// Give up the channel binding: accept a report that came over a connection the keyset is
    /// not known to be bound to (an `https://` response that names no attested TLS channel, a
    /// transport of your own), and plain `http://` to any host. The keyset is still verified,
    /// so requests stay confidential to the attested key; but nothing then shows that the
    /// answers come from the attested workload, since anyone who sees a request can forge a
    /// complete answer to it. Verify receipts before release
    /// ([`VerifyBeforeReleaseLayer`](crate::receipt::VerifyBeforeReleaseLayer)) if you use this.
    pub fn accept_unbound_channel(mut self) -> Self {
        self.inner.unbound_channel = true;
        self
    }

    /// Back to the ordinary builder methods.
    pub fn end_dangerous(self) -> KeyProviderBuilder<S, ReqB> {
        self.inner
    }

    /// [`KeyProviderBuilder::build`].
    pub fn build(self) -> Result<KeyProvider<S, ReqB>> {
        self.inner.build()
    }
}

/// Fetches, verifies and refreshes a gateway's attested keyset, publishing it into a
/// [`KeyHandle`]. Cheap to clone.
///
/// ```no_run
/// # async fn demo<S, B>(client: S) -> tower_aci::Result<()>
/// # where
/// #     S: tower_service::Service<http::Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>>
/// #         + Clone + Send + 'static,
/// #     S::Error: Into<tower_aci::BoxError>,
/// #     S::Future: Send,
/// #     B: http_body::Body + Send + 'static,
/// #     B::Data: Send,
/// #     B::Error: Into<tower_aci::BoxError>,
/// # {
/// use tower_aci::attest::{KeyProvider, Policy};
/// # const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
/// # const MRTD: &str = "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077";
/// # const RTMR0: &str = "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072";
/// # const RTMR1: &str = "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c";
/// # const RTMR2: &str = "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f";
/// # const KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";
/// # const KMS_ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";
///
/// // `client`: a hyper-util client over `tower_aci::tls::AttestedTls`'s connector (see
/// // `tower_aci::tls`), so that each report is bound to the TLS channel it came over.
/// let provider = KeyProvider::builder(client)
///     .base_url("https://gateway.example.com".parse().unwrap())
///     .policy(
///         // The real June 2026 capture's values (`aci-proxy inspect` prints a gateway's).
///         Policy::builder()
///             .allow_compose_hash(COMPOSE_HASH)
///             .allow_boot_measurements(MRTD, RTMR0, RTMR1, RTMR2)
///             .allow_kms_identity(KMS_IDENTITY)
///             .accept_kms_root(KMS_ROOT)
///             .build()?,
///     )
///     .build()?;
/// // Fail early if the gateway cannot be attested…
/// provider.establish().await?;
/// // …then keep the key fresh in the background; dropping `task` stops the refresher.
/// let (handle, task) = provider.spawn()?;
/// # let _ = (handle, task);
/// # Ok(())
/// # }
/// ```
///
/// The HTTP service is any tower service for `http::Request<B>` whose body `B` is `From<Bytes>`
/// (a hyper-util client, a `tower::util::BoxCloneService`, a test `service_fn`): `Full<Bytes>`,
/// or the E2EE layer's [`RequestBody`](crate::e2ee::RequestBody), so that the client *under* the
/// layer serves the provider too (one connection pool). It must be that plain transport, never
/// the E2EE-wrapped service. Each fetch clones it, as tower services are meant to be used.
///
/// # Refresh
///
/// The refresher fetches a new report `refresh_buffer` (default 10 minutes, minus up to
/// `refresh_jitter`) before the current keyset's `not_after` or the re-attestation ceiling
/// ([`max_keyset_age`](KeyProviderBuilder::max_keyset_age), one day after the report was
/// verified by default), whichever comes first — or halfway through its remaining life when that
/// is shorter — and whenever the [`KeyHandle`] is asked to (a response named an
/// unknown `X-ACI-Keyset-Digest`, the gateway answered `e2ee_model_key_mismatch`, or the keyset
/// expired). Woken refreshes are spaced at least `min_refresh_interval` apart. A failed refresh
/// is retried with exponential backoff (`retry_backoff`), and nothing shortens the backoff: the
/// requests refused while the key is expired do not each cause a fetch. The last valid keyset
/// keeps serving until its `not_after` or the ceiling, never after. All concurrent fetches —
/// [`KeyProvider::establish`] callers and the refresher — share one request (single flight).
///
/// # Replicas and restarts
///
/// Every replica of a deployment, and every restart of one, serves the same keys under its own
/// keyset digest (its `not_after` and TLS keys differ). The handle remembers a bounded set of
/// verified keysets (see [`KeyHandle`]). When a receipt names a digest the handle does not know,
/// the receipt client asks the provider to look for it ([`Keysets::attest_digest`](crate::receipt::Keysets::attest_digest)): up to
/// [`digest_probes`](KeyProviderBuilder::digest_probes) reports, each with a fresh nonce and
/// `Connection: close` so that the next one opens a new connection and a load balancer may send
/// it to another replica. Each report that verifies under the policy is remembered; none of them
/// replaces the current key (the refresher does that). A digest that was not reached is not
/// looked for again for `min_refresh_interval`.
///
/// A report that is fetched — by a search or by the refresher — over a channel its own keyset
/// names, and fails verification for a reason that is a verdict on the workload, is not
/// forgotten: its keyset digest is remembered as *refused* on the handle, with the failure
/// ([`Keysets::refused_keyset`](crate::receipt::Keysets::refused_keyset), logged at warn once per digest), and receipts naming it fail
/// with [`ReceiptFailure::RefusedKeyset`](crate::error::ReceiptFailure::RefusedKeyset) instead of being
/// vouched for by the same-key rule. This is what catches a replica running another, unpinned
/// build of the same application: it holds the same KMS-derived receipt key. A failure an
/// on-path attacker can cause (the channel check, a replayed nonce) or one of time or of our
/// verifier refuses nothing, and the record cannot be flushed. A search stops as soon as the
/// digest it looks for is refused. See [`RefusedKeyset`](crate::attest::RefusedKeyset) for the
/// rule, failure by failure.
pub struct KeyProvider<S, ReqB = Full<Bytes>> {
    inner: Arc<Inner<S, ReqB>>,
}

impl<S, ReqB> Clone for KeyProvider<S, ReqB> {
    fn clone(&self) -> Self {
        KeyProvider { inner: self.inner.clone() }
    }
}

impl<S, ReqB> fmt::Debug for KeyProvider<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyProvider")
            .field("base", &self.inner.base)
            .field("policy", &self.inner.policy)
            .field("handle", &self.inner.handle)
            .finish_non_exhaustive()
    }
}

type Outcome = std::result::Result<Arc<AttestedKeyset>, (ErrorKind, String)>;

struct Inner<S, ReqB> {
    service: Mutex<S>,
    base: Uri,
    policy: Policy,
    handle: KeyHandle,
    sleep: SleepFn,
    timing: Timing,
    max_report_size: usize,
    /// Whether each report must name the attested channel it came over.
    channel_rule: ChannelRule,
    /// The base URL is plain HTTP to a loopback address: a report that names no channel came
    /// from this machine (see [`attributable_digest`]).
    local_path: bool,
    #[cfg(feature = "dcap")]
    pccs: Option<Uri>,
    /// Held while a fetch runs: concurrent callers wait here and take its outcome.
    flight: tokio::sync::Mutex<()>,
    /// Counts finished fetches.
    generation: AtomicU64,
    last_outcome: Mutex<Option<Outcome>>,
    /// Digest searches in flight (single flight per digest).
    searches: Mutex<HashMap<String, WeakShared<AttestFuture>>>,
    /// Digests a search did not reach, and until when (clock seconds) not to search again.
    unreachable: Mutex<HashMap<String, u64>>,
    _body: PhantomData<fn() -> ReqB>,
}

impl<S, ReqB> KeyProvider<S, ReqB> {
    /// A builder around the HTTP service reports are fetched with (its request body type is
    /// taken from the service).
    pub fn builder(service: S) -> KeyProviderBuilder<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        KeyProviderBuilder {
            service,
            _body: PhantomData,
            base: None,
            policy: None,
            clock: Arc::new(SystemClock),
            handle: None,
            sleep: None,
            timing: Timing::default(),
            max_report_size: DEFAULT_MAX_REPORT_SIZE,
            unbound_channel: false,
            #[cfg(feature = "dcap")]
            pccs: None,
        }
    }

    /// The handle this provider publishes into (the E2EE layer reads it).
    pub fn handle(&self) -> KeyHandle {
        self.inner.handle.clone()
    }

    /// The policy reports are verified under.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }
}

impl<S, ReqB, B> KeyProvider<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: From<Bytes> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Fetch and verify a report now and publish its keyset.
    ///
    /// Single flight: callers that arrive while a fetch is running (from another caller or the
    /// refresher) wait for it and share its outcome instead of fetching again. On failure the
    /// handle keeps serving the previous keyset until its `not_after`.
    pub async fn establish(&self) -> Result<Arc<AttestedKeyset>> {
        self.install_attester();
        let inner = &self.inner;
        let seen = inner.generation.load(Ordering::Acquire);
        let _flight = inner.flight.lock().await;
        if inner.generation.load(Ordering::Acquire) != seen {
            let shared = inner.last_outcome.lock().ok().and_then(|o| o.clone());
            if let Some(outcome) = shared {
                return outcome.map_err(|(kind, message)| Error::new(kind, message));
            }
        }
        let span = crate::telemetry::establish_span();
        let result = tracing::Instrument::instrument(inner.fetch(false, &mut None), span.clone()).await;
        let seen = result.as_ref().map(|k| VerifiedKeyset { digest: k.digest(), not_after: k.not_after() });
        crate::telemetry::keyset_outcome(&span, seen);
        match &result {
            Ok(keyset) => {
                tracing::debug!(digest = keyset.digest(), not_after = keyset.not_after(), "attested keyset published");
                inner.handle.publish(keyset.clone());
            }
            Err(e) => {
                tracing::warn!(error = %e, "attestation failed");
                if let Ok(mut last) = inner.handle.shared.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
        if let Ok(mut last) = inner.last_outcome.lock() {
            *last = Some(match &result {
                Ok(k) => Ok(k.clone()),
                Err(e) => Err((e.kind(), e.to_string())),
            });
        }
        inner.generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// Run the refresher on the current Tokio runtime. Returns the handle and a guard; dropping
    /// the guard stops the refresher. Fails with `Config` outside a Tokio runtime.
    pub fn spawn(&self) -> Result<(KeyHandle, RefreshTask)> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(ErrorKind::Config, "KeyProvider::spawn needs a Tokio runtime; use pair() elsewhere")
        })?;
        let (handle, worker) = self.pair();
        let task = runtime.spawn(worker);
        Ok((handle, RefreshTask { task }))
    }

    /// The handle and the refresher as a future, for any executor (like tower's `Buffer::pair`).
    /// The refresher runs until the future is dropped. Outside Tokio, supply a
    /// [`sleep`](KeyProviderBuilder::sleep).
    pub fn pair(&self) -> (KeyHandle, RefreshWorker) {
        self.install_attester();
        let provider = self.clone();
        (self.handle(), RefreshWorker { inner: Box::pin(async move { provider.run().await }) })
    }

    /// Let the handle ask this provider to look for keyset digests it does not know
    /// ([`Keysets::attest_digest`](crate::receipt::Keysets::attest_digest)). The handle holds only a weak reference: dropping every
    /// provider clone turns the search off.
    fn install_attester(&self) {
        let shared = &self.inner.handle.shared;
        if shared.attester.get().is_some() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let attester: Attester = Arc::new(move |digest: &str| Inner::search(weak.upgrade()?, digest));
        let _ = shared.attester.set(attester);
    }

    async fn run(self) {
        let inner = &*self.inner;
        let shared = &inner.handle.shared;
        shared.refresher.store(true, Ordering::Release);
        let _running = RefresherFlag(&shared.refresher);
        let clock = &shared.clock;
        let t = inner.timing;
        let mut failures: u32 = 0;
        let mut last_attempt: Option<u64> = None;
        loop {
            let now = clock.now();
            let current = shared.current.load_full().filter(|k| inner.handle.serves_at(k, now));
            let delay = if failures > 0 {
                backoff(&t, failures)
            } else if let Some(k) = &current {
                // Before its not_after, and before the re-attestation ceiling.
                refresh_delay(&t, inner.handle.serves_until(k), now)
            } else {
                Duration::ZERO
            };
            if failures > 0 {
                // Backing off after a failed attempt: wake-ups do not cut the backoff short, so
                // requests refused while the key is expired (each of which signals) cannot turn
                // the backoff into a fetch every `min_refresh_interval`.
                (inner.sleep)(delay).await;
            } else if !delay.is_zero() {
                let timer = (inner.sleep)(delay);
                let woken = std::pin::pin!(shared.wake.notified());
                if let Either::Right(_) = select(timer, woken).await {
                    // Asked to refresh now: keep requests at least min_refresh_interval apart.
                    let since = last_attempt.map(|at| clock.now().saturating_sub(at));
                    if let Some(since) = since {
                        let gap = t.min_refresh_interval.saturating_sub(Duration::from_secs(since));
                        if !gap.is_zero() {
                            (inner.sleep)(gap).await;
                        }
                    }
                }
            }
            last_attempt = Some(clock.now());
            match tracing::Instrument::instrument(self.establish(), crate::telemetry::refresh_span()).await {
                Ok(_) => failures = 0,
                Err(_) => failures = failures.saturating_add(1),
            }
            // This attempt answers every wake-up raised before it ended. `Notify` keeps one
            // permit for a signal that found no waiter (the second of the two signals a key
            // mismatch response raises, or the responses naming the same unknown digest while
            // the refresher was busy); left in place it would start a redundant refresh.
            // Anything still wrong signals again on the next response (the digest is checked
            // against the known set each time, a mismatch recurs, an expired key wakes on
            // every read).
            let _ = shared.wake.notified().now_or_never();
        }
    }
}

impl<S, ReqB, B> Inner<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    ReqB: From<Bytes> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Start, or join, a search for the keyset named `digest`: up to `digest_probes` report
    /// fetches, each on a fresh connection, until a verified keyset with that digest is
    /// remembered. `None` when there is nothing to do: the digest is known, searching is off,
    /// the digest was not reached by a search less than `min_refresh_interval` ago, or too many
    /// digests were (hostile receipts naming random digests cannot make us fetch without bound).
    fn search(self: Arc<Self>, digest: &str) -> Option<AttestFuture> {
        if self.timing.digest_probes == 0 || self.handle.knows(digest) {
            return None;
        }
        let now = self.handle.shared.clock.now();
        {
            let mut unreachable = lock(&self.unreachable);
            unreachable.retain(|_, until| *until > now);
            if unreachable.contains_key(digest) || unreachable.len() >= MAX_UNREACHABLE_DIGESTS {
                return None;
            }
        }
        let mut searches = lock(&self.searches);
        searches.retain(|_, s| s.upgrade().is_some());
        if let Some(running) = searches.get(digest).and_then(|s| s.upgrade()) {
            return Some(Box::pin(running));
        }
        if searches.len() >= MAX_UNREACHABLE_DIGESTS {
            return None;
        }
        let digest = digest.to_owned();
        let inner = self.clone();
        let work: AttestFuture = Box::pin(inner.search_unshared(digest.clone()));
        let shared = work.shared();
        if let Some(weak) = shared.downgrade() {
            searches.insert(digest, weak);
        }
        Some(Box::pin(shared))
    }

    async fn search_unshared(self: Arc<Self>, digest: String) {
        let mut reached_and_refused = false;
        for probe in 0..self.timing.digest_probes {
            let mut refused = None;
            let result = {
                let _flight = self.flight.lock().await;
                if self.handle.knows(&digest) {
                    break;
                }
                self.fetch(true, &mut refused).await
            };
            match result {
                Ok(keyset) => {
                    tracing::debug!(probe, wanted = %digest, got = keyset.digest(), "report fetched while looking for a keyset digest");
                    self.handle.remember(keyset);
                }
                Err(e) => {
                    tracing::debug!(probe, wanted = %digest, refused = ?refused, error = %e, "report fetch failed while looking for a keyset digest")
                }
            }
            if refused.as_deref() == Some(digest.as_str()) {
                // Reached: its report failed the policy (the handle logged and remembers it).
                reached_and_refused = true;
                break;
            }
        }
        if !self.handle.knows(&digest) {
            if reached_and_refused {
                tracing::debug!(digest = %digest, "the keyset looked for was refused; not looking again for min_refresh_interval");
            } else {
                tracing::warn!(
                    digest = %digest,
                    probes = self.timing.digest_probes,
                    "no report with this keyset digest was reached; not looking again for min_refresh_interval"
                );
            }
            let until =
                self.handle.shared.clock.now().saturating_add(self.timing.min_refresh_interval.as_secs().max(1));
            lock(&self.unreachable).insert(digest.clone(), until);
        }
        lock(&self.searches).remove(&digest);
    }

    /// One fetch and verification, bounded by the load timeout. `fresh_connection` sends
    /// `Connection: close`, so that the next request opens a new connection (which a
    /// per-connection load balancer may route to another replica).
    /// `refused` is set to the keyset digest the fetched report was refused under, if it was.
    async fn fetch(&self, fresh_connection: bool, refused: &mut Option<String>) -> Result<Arc<AttestedKeyset>> {
        let work = std::pin::pin!(self.fetch_unbounded(fresh_connection, refused));
        match select(work, (self.sleep)(self.timing.load_timeout)).await {
            Either::Left((result, _)) => result,
            Either::Right(_) => Err(Error::new(ErrorKind::Transport, "fetching the attestation report timed out")),
        }
    }

    async fn fetch_unbounded(
        &self,
        fresh_connection: bool,
        refused: &mut Option<String>,
    ) -> Result<Arc<AttestedKeyset>> {
        // While this runs, an attested TLS connector may open a connection to a certificate the
        // current keyset does not list (only report requests travel over it; see `crate::tls`).
        let _attesting = self.handle.attesting();
        let mut nonce = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| Error::new(ErrorKind::Transport, "the OS random generator failed").with_source(e))?;
        let uri = attestation_uri(&self.base, &hex::encode(nonce))?;
        let mut request = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(ReqB::from(Bytes::new()))
            .map_err(|e| Error::new(ErrorKind::Config, "cannot build the attestation request").with_source(e))?;
        if fresh_connection {
            request.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }

        let service = match self.service.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        #[cfg(feature = "dcap")]
        let pccs_service = self.pccs.as_ref().map(|_| service.clone());
        // A cause of ours (a refused TLS key, an HTTPS proxy's refusal) is named in the message.
        let transport = |e: S::Error| {
            let e: BoxError = e.into();
            let message = match Error::find(e.as_ref()) {
                Some(cause) => format!("fetching the attestation report failed: {cause}"),
                None => "fetching the attestation report failed".to_owned(),
            };
            Error::new(ErrorKind::Transport, message).with_source(e)
        };
        let response = service.oneshot(request).await.map_err(transport)?;
        let channel = match self.channel_rule {
            ChannelRule::Bound => Some(
                require_channel(
                    response.extensions(),
                    self.base.host(),
                    "the attestation report",
                    "KeyProviderBuilder::dangerous().accept_unbound_channel()",
                )?
                .clone(),
            ),
            ChannelRule::Unchecked => response.extensions().get::<ChannelInfo>().cloned(),
        };
        let status = response.status();
        let answer_headers = response.headers().clone();
        let body = Limited::new(response.into_body(), self.max_report_size)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    Error::new(ErrorKind::TooLarge, "the attestation report exceeds max_report_size")
                } else {
                    Error::new(ErrorKind::Transport, "reading the attestation report failed").with_source(e)
                }
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let now = self.handle.shared.clock.now();
            return Err(GatewayError::error_for(
                status,
                &answer_headers,
                now,
                &body,
                "fetching the attestation report",
            ));
        }
        #[cfg(feature = "dcap")]
        if let (Some(pccs), Some(service)) = (&self.pccs, pccs_service) {
            if let Some(quote) = crate::attest::report::quote_to_verify(&body, &self.policy) {
                let collateral = match crate::attest::dcap::fetch_collateral(service, pccs, &quote).await {
                    Ok(collateral) => collateral,
                    // An unreadable quote fails the report (`Quote`, which refuses no digest: see
                    // `refusable_failure`); an unreachable PCCS is a `Transport` error.
                    Err(e) => return self.judged(&body, Err(e), channel.as_ref(), refused),
                };
                let now = self.handle.shared.clock.now();
                let verified =
                    crate::attest::report::verify_report_with_collateral(&body, &nonce, now, &self.policy, &collateral)
                        .and_then(|k| check_report_channel(k, channel.as_ref()));
                return self.judged(&body, verified, channel.as_ref(), refused);
            }
        }
        let now = self.handle.shared.clock.now();
        let verified =
            verify_report(&body, &nonce, now, &self.policy).and_then(|k| check_report_channel(k, channel.as_ref()));
        self.judged(&body, verified, channel.as_ref(), refused)
    }

    /// The outcome of verifying a fetched report. A verdict on the workload against it (a
    /// [`refusable_failure`]) refuses its keyset's digest on the handle when the report is the
    /// keyset holder's own (see [`attributable_digest`]); `refused` is then set to that digest.
    fn judged(
        &self,
        body: &[u8],
        verified: Result<AttestedKeyset>,
        channel: Option<&ChannelInfo>,
        refused: &mut Option<String>,
    ) -> Result<Arc<AttestedKeyset>> {
        let error = match verified {
            Ok(keyset) => return Ok(Arc::new(keyset)),
            Err(e) => e,
        };
        let ErrorKind::Attestation(failure) = error.kind() else { return Err(error) };
        if !refusable_failure(failure) {
            tracing::debug!(
                ?failure,
                "a fetched report failed verification for a reason of the path, the time, our nonce or our verifier:                  no keyset digest is refused"
            );
            return Err(error);
        }
        match attributable_digest(body, channel, self.local_path) {
            Some(digest) => {
                self.handle.refuse(&digest, failure, &error.to_string());
                *refused = Some(digest);
            }
            None => tracing::debug!(
                ?failure,
                "a fetched report failed verification, but it is not attributable to the holder of the keyset it                  names (its keyset does not hash to the digest it names, or it did not come over a TLS key that                  keyset lists): no keyset digest is refused"
            ),
        }
        Err(error)
    }
}

/// Whether a verification failure is a verdict on the workload that serves the report — what it
/// runs, on what platform, with which keys — and so may refuse the keyset's digest
/// ([`RefusedKeyset`](crate::attest::RefusedKeyset) has the table and the reasons). A failure of
/// the path (`ChannelBinding`), of the time (`Expired`, `NotAfterTooFar`), of our nonce
/// (`Nonce`, `ReportData`: a replayed genuine report fails so) or of our verifier
/// (`HardwareUnverifiable`, `Quote`, whose signature chain is judged against our collateral at
/// our clock) is not.
pub(crate) fn refusable_failure(failure: AttestationFailure) -> bool {
    use AttestationFailure as F;
    match failure {
        F::ApiVersion
        | F::Shape
        | F::Generation
        | F::E2eeUnsupported
        | F::NoUsableKey
        | F::BadKey
        | F::TcbStatus
        | F::EventLog
        | F::NotAllowed
        | F::Custody
        | F::WorkloadId
        | F::Endorsement
        | F::Unanchored => true,
        // No digest to attribute: the keyset does not hash to the one it names.
        F::KeysetDigest | F::Canonicalization => false,
        F::ChannelBinding
        | F::Nonce
        | F::ReportData
        | F::Expired
        | F::NotAfterTooFar
        | F::HardwareUnverifiable
        | F::Quote => false,
    }
}

/// The keyset digest a failed report is attributed to, if it is the keyset holder's own report:
/// its `workload_keyset_digest`, only when its `attestation.workload_keyset` recomputes to it (so
/// a forged document cannot get another keyset's digest refused by naming it next to a keyset of
/// its own) **and** it came over a channel that keyset names — a TLS connection whose SPKI the
/// keyset lists for the host (only the holder of that key can serve over it), or, with no TLS
/// channel, plain HTTP to loopback (`local_path`: this machine). A report over any other path
/// (a TLS interceptor's certificate, an unbound transport to a remote host) may have been
/// rewritten on the way, so it refuses nothing.
fn attributable_digest(body: &[u8], channel: Option<&ChannelInfo>, local_path: bool) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let published = doc.get("workload_keyset_digest")?.as_str()?;
    let keyset = doc.get("attestation")?.get("workload_keyset").filter(|k| k.is_object())?;
    let recomputed = crate::attest::report::keyset_digest(keyset).ok()?;
    if recomputed != published {
        return None;
    }
    let own_channel = match channel {
        Some(channel) => unverified_keyset_names_channel(keyset, channel),
        None => local_path,
    };
    own_channel.then_some(recomputed)
}

/// At most this many digests are remembered as unreachable, or searched at once.
const MAX_UNREACHABLE_DIGESTS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `{base path}/v1/aci/attestation?nonce=<hex>`.
fn attestation_uri(base: &Uri, nonce_hex: &str) -> Result<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    let path_and_query = format!("{prefix}{ATTESTATION_PATH}?nonce={nonce_hex}");
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| Error::new(ErrorKind::Config, "cannot build the attestation URL").with_source(e))?,
    );
    Uri::from_parts(parts).map_err(|e| Error::new(ErrorKind::Config, "cannot build the attestation URL").with_source(e))
}

/// How long to wait before refreshing a keyset valid until `not_after`.
fn refresh_delay(t: &Timing, not_after: u64, now: u64) -> Duration {
    let remaining = not_after.saturating_sub(now);
    let jitter = match t.refresh_jitter.as_secs() {
        0 => 0,
        max => OsRng.try_next_u64_or_zero() % (max + 1),
    };
    let lead = t.refresh_buffer.as_secs().saturating_add(jitter).min(remaining / 2);
    Duration::from_secs(remaining - lead).max(t.min_refresh_interval)
}

/// The wait before retry number `failures` (1-based): `initial * 2^(failures-1)`, capped.
fn backoff(t: &Timing, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    t.retry_initial.checked_mul(factor).unwrap_or(t.retry_max).min(t.retry_max)
}

trait TryNextU64 {
    fn try_next_u64_or_zero(&mut self) -> u64;
}

impl TryNextU64 for OsRng {
    fn try_next_u64_or_zero(&mut self) -> u64 {
        let mut b = [0u8; 8];
        match self.try_fill_bytes(&mut b) {
            Ok(()) => u64::from_le_bytes(b),
            Err(_) => 0,
        }
    }
}

/// The refresher spawned by [`KeyProvider::spawn`]; dropping it stops the refresher.
#[derive(Debug)]
#[must_use = "dropping the RefreshTask stops the refresher: keep it as long as the keys are used"]
pub struct RefreshTask {
    task: tokio::task::JoinHandle<()>,
}

impl RefreshTask {
    /// Stop the refresher now (dropping the guard does the same).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The refresher returned by [`KeyProvider::pair`]: a future that runs until dropped.
pub struct RefreshWorker {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl fmt::Debug for RefreshWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshWorker").finish_non_exhaustive()
    }
}

impl Future for RefreshWorker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

/// Clears the handle's "a refresher runs" flag when the worker stops.
struct RefresherFlag<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for RefresherFlag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keeps_the_base_path() {
        let n = "ab".repeat(32);
        let u = attestation_uri(&"http://127.0.0.1:8080".parse().unwrap(), &n).unwrap();
        assert_eq!(u.to_string(), format!("http://127.0.0.1:8080/v1/aci/attestation?nonce={n}"));
        let u = attestation_uri(&"https://gw.example/prefix/".parse().unwrap(), &n).unwrap();
        assert_eq!(u.to_string(), format!("https://gw.example/prefix/v1/aci/attestation?nonce={n}"));
    }

    #[test]
    fn refresh_delay_and_backoff() {
        let t = Timing { refresh_jitter: Duration::ZERO, ..Timing::default() };
        assert_eq!(refresh_delay(&t, 1_000 + 3_600, 1_000), Duration::from_secs(3_000));
        // Short-lived keysets refresh halfway, but never more often than the minimum interval.
        assert_eq!(refresh_delay(&t, 1_000 + 600, 1_000), Duration::from_secs(300));
        assert_eq!(refresh_delay(&t, 1_000 + 4, 1_000), Duration::from_secs(10));
        let j = Timing { refresh_jitter: Duration::from_secs(60), ..t };
        for _ in 0..20 {
            let d = refresh_delay(&j, 1_000 + 3_600, 1_000).as_secs();
            assert!((2_940..=3_000).contains(&d), "{d}");
        }
        assert_eq!(backoff(&t, 1), Duration::from_secs(1));
        assert_eq!(backoff(&t, 2), Duration::from_secs(2));
        assert_eq!(backoff(&t, 6), Duration::from_secs(32));
        assert_eq!(backoff(&t, 7), Duration::from_secs(60));
        assert_eq!(backoff(&t, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn gateway_errors_keep_their_type() {
        let none = http::HeaderMap::new();
        let e = GatewayError::error_for(
            StatusCode::BAD_REQUEST,
            &none,
            0,
            br#"{"error":{"type":"invalid_request_error","message":"bad nonce"}}"#,
            "fetching the attestation report",
        );
        assert_eq!(e.kind(), ErrorKind::Gateway);
        assert_eq!(e.gateway_error_type(), Some("invalid_request_error"));
        let e =
            GatewayError::error_for(StatusCode::BAD_GATEWAY, &none, 0, b"<html>", "fetching the attestation report");
        assert_eq!(e.kind(), ErrorKind::Transport);
    }

    #[test]
    fn a_refused_report_is_attributed_only_to_the_digest_its_keyset_hashes_to() {
        let refusable_digest = |body: &[u8]| attributable_digest(body, None, true);
        let keyset = serde_json::json!({"subject": null, "not_after": 2_000_000_000u64, "receipt_signing_keys": []});
        let digest = crate::attest::report::keyset_digest(&keyset).unwrap();
        let report = |published: &str, keyset: &serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({
                "api_version": "aci/1",
                "workload_keyset_digest": published,
                "attestation": {"workload_keyset": keyset},
            }))
            .unwrap()
        };
        assert_eq!(refusable_digest(&report(&digest, &keyset)), Some(digest.clone()));
        // The reference gateway's own stub report (bytes this crate did not produce).
        assert_eq!(
            refusable_digest(include_bytes!("../../tests/data/report_stub_quote.json")).as_deref(),
            Some("sha256:e338157d18d77aaa3d1186c9d96147c2d4edc0f1a169ace1243c0bc3ad701fad")
        );
        // And a production gateway's report (a real TDX capture).
        assert_eq!(
            refusable_digest(include_bytes!("../../tests/data/real_tdx_report_2026-06.json")).as_deref(),
            Some("sha256:46cdea445e5f2abcb78a5db0a630e7ba2127bc4f24033aa628b49e310e3928e2")
        );
        // A document naming that (honest) digest next to another keyset refuses nothing.
        let other = serde_json::json!({"subject": null, "not_after": 2_000_000_001u64, "receipt_signing_keys": []});
        assert_eq!(refusable_digest(&report(&digest, &other)), None);
        assert_eq!(refusable_digest(b"<html>"), None);
        assert_eq!(refusable_digest(br#"{"workload_keyset_digest":"sha256:00"}"#), None);
        let mut no_object = serde_json::from_slice::<serde_json::Value>(&report(&digest, &keyset)).unwrap();
        no_object["attestation"]["workload_keyset"] = serde_json::json!("a string");
        assert_eq!(refusable_digest(&serde_json::to_vec(&no_object).unwrap()), None);
    }

    #[test]
    fn a_refused_report_is_attributed_only_over_a_channel_its_keyset_names() {
        let real = include_bytes!("../../tests/data/real_tdx_report_2026-06.json");
        let digest = "sha256:46cdea445e5f2abcb78a5db0a630e7ba2127bc4f24033aa628b49e310e3928e2";
        // The TLS key the real keyset lists for api.redpill.ai, and another one.
        let listed: [u8; 32] = crate::hex::decode("c2ebede7c2c632381123e3193b01f5f3fa45cc6c6327b2d0536749348ceeb408")
            .unwrap()
            .try_into()
            .unwrap();
        let channel = |host: &str, spki: [u8; 32]| ChannelInfo::new(host, spki, Arc::default());
        assert_eq!(attributable_digest(real, Some(&channel("api.redpill.ai", listed)), false).as_deref(), Some(digest));
        // An interceptor's certificate, or the right key for a host the entry is not scoped to.
        assert_eq!(attributable_digest(real, Some(&channel("api.redpill.ai", [7; 32])), true), None);
        assert_eq!(attributable_digest(real, Some(&channel("tee.redpill.ai", listed)), true), None);
        // No TLS channel: only plain HTTP to loopback is this machine's path.
        assert_eq!(attributable_digest(real, None, true).as_deref(), Some(digest));
        assert_eq!(attributable_digest(real, None, false), None);
    }

    #[test]
    fn only_verdicts_on_the_workload_are_refusable() {
        use AttestationFailure as F;
        let refusable = [
            F::ApiVersion,
            F::Shape,
            F::Generation,
            F::E2eeUnsupported,
            F::NoUsableKey,
            F::BadKey,
            F::TcbStatus,
            F::EventLog,
            F::NotAllowed,
            F::Custody,
            F::WorkloadId,
            F::Endorsement,
        ];
        // The path, the time, our nonce, our verifier; and no digest to attribute.
        let not = [
            F::ChannelBinding,
            F::Nonce,
            F::ReportData,
            F::Expired,
            F::NotAfterTooFar,
            F::HardwareUnverifiable,
            F::Quote,
            F::KeysetDigest,
            F::Canonicalization,
        ];
        for f in refusable {
            assert!(refusable_failure(f), "{f:?}");
        }
        for f in not {
            assert!(!refusable_failure(f), "{f:?}");
        }
    }
}
