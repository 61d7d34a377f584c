//! What an attestation report must satisfy before its keys are trusted.

use std::fmt;
use std::time::Duration;

use crate::attest::generation::Generation;
use crate::attest::keyset::BootMeasurements;
use crate::error::{Error, ErrorKind, Result};
use crate::hex;
use crate::protocol::suite::Suite;

/// The default horizon for `not_after`: 400 days.
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(400 * 24 * 3600);

/// The TCB status accepted by default.
pub const DEFAULT_TCB_STATUS: &str = "UpToDate";

/// Which E2EE key of a keyset requests are encrypted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeySelection {
    /// The first suite of the list that has a key wins; within a suite the production key id
    /// (`dstack-kms-e2ee-v1`, `dstack-kms-e2ee-x25519-v1`) is preferred, else the first listed.
    Suites(Vec<Suite>),
    /// Exactly this key id (of any E2EE v2 suite).
    KeyId(String),
}

/// How hardware evidence is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hardware {
    /// The quote must verify to the vendor root (feature `dcap`).
    Required,
    /// Dangerous: a stub quote (`aci-stub-quote|` ‖ slot) is accepted in place of a hardware
    /// quote; its slot is still checked. Other quotes still require hardware verification.
    AcceptStub,
    /// Dangerous: the quote is not verified at all (a stub's slot is still checked).
    Skip,
}

/// How `key_custody` is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Custody {
    /// No KMS root is accepted: there is nothing to verify `key_custody` against, so it is not
    /// judged (the pin then rests on boot measurements, or on a `dangerous()` opt-out).
    NoRoot,
    /// Must be present, cover every key role and verify to an accepted KMS root.
    Required,
    /// Dangerous: ignored.
    Skip,
}

/// Allowlists of measured or declared values. `None` means "no constraint".
#[derive(Clone, Debug, Default)]
pub(crate) struct Allowlists {
    pub(crate) compose_hashes: Option<Vec<[u8; 32]>>,
    pub(crate) app_ids: Option<Vec<Vec<u8>>>,
    pub(crate) os_image_hashes: Option<Vec<Vec<u8>>>,
    pub(crate) sources: Option<Vec<(String, String)>>,
    pub(crate) image_digests: Option<Vec<String>>,
    /// Allowed MRTD/RTMR0–2 sets of the hardware-verified quote.
    pub(crate) boot_measurements: Option<Vec<BootMeasurements>>,
}

/// What an attestation report must satisfy. Build one with [`Policy::builder`] (fallible: an
/// invalid value, or a policy that pins no workload or does not anchor its pin, surfaces as a
/// [`Config`](ErrorKind::Config) error from `build`).
///
/// There is no `Default`: a policy must say *which* workload it trusts, and no default can. A
/// genuine TDX VM proves only that *some* code runs in a TEE; the policy binds it to the code you
/// mean. [`PolicyBuilder::build`] fails unless the workload is pinned:
///
/// | pin | builder method | where the value comes from |
/// | --- | --- | --- |
/// | compose hash | [`allow_compose_hash`](PolicyBuilder::allow_compose_hash) | SHA-256 of the report's `attestation.evidence.app_compose` (the dstack app's `app-compose.json`), measured into RTMR3 by the `compose-hash` event |
/// | app id | [`allow_app_id`](PolicyBuilder::allow_app_id) | the `app-id` event of the report's event log (the dstack app id, e.g. on the dstack dashboard or in the keyset `subject` `app-id:0x…`) |
///
/// and the pin is anchored, so that the RTMR3 values it names cannot be replayed by a TD of
/// someone else's making:
///
/// | anchor | builder method | what it proves |
/// | --- | --- | --- |
/// | KMS root | [`accept_kms_root`](PolicyBuilder::accept_kms_root) | key custody becomes required for every key role: the keys were released by that dstack KMS to the pinned app, which the KMS does only for a TD it attested |
/// | boot measurements | [`allow_boot_measurements`](PolicyBuilder::allow_boot_measurements) | the hardware-verified quote's MRTD and RTMR0–2 are the pinned firmware and boot chain, so RTMR3 was extended by the genuine dstack OS |
///
/// The OS image ([`allow_os_image_hash`](PolicyBuilder::allow_os_image_hash), the
/// `os-image-hash` event) pins the dstack OS, not the app on it, and declared source provenance
/// ([`allow_source`](PolicyBuilder::allow_source),
/// [`allow_image_digest`](PolicyBuilder::allow_image_digest)) is not measured: both are checked
/// when given, neither counts as a pin. Tests against the local gateway opt out explicitly with
/// [`DangerousPolicyBuilder::any_workload`] (no pin) or
/// [`DangerousPolicyBuilder::unanchored_pin`] (a pin without an anchor).
///
/// The other defaults fail closed too: the hardware quote must verify (feature `dcap`, against
/// collateral given to `PolicyBuilder::collateral` or fetched by the key provider from a PCCS; a
/// build without the feature, or a quote without collateral, fails with `HardwareUnverifiable`);
/// only the `UpToDate` TCB status is accepted (and no Intel advisory is refused until
/// [`refuse_advisories`](PolicyBuilder::refuse_advisories) lists some); `not_after` may lie at
/// most 400 days ahead; once a KMS root is accepted, `key_custody` is *required* (without one
/// there is nothing to verify it against and it is not judged); keys are selected secp256k1
/// first (preferring `dstack-kms-e2ee-v1`), X25519 when the keyset has no secp256k1 key.
///
/// ```
/// use std::time::Duration;
/// use tower_aci::attest::Policy;
///
/// let policy = Policy::builder()
///     // The workload: SHA-256 of the report's app_compose.
///     .allow_compose_hash("6f1ed002ab5595859014ebf0951522d9e1f1f3a3c5e2b6d8c7a9e0f1d2c3b4a5")
///     // Its anchor, the dstack KMS root: key custody becomes required and must chain to it.
///     .accept_kms_root("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
///     .max_validity(Duration::from_secs(45 * 24 * 3600))
///     .build()?;
/// assert!(policy.requires_hardware_verification());
/// assert!(policy.requires_key_custody());
/// assert!(policy.pins_workload() && policy.anchors_pin());
///
/// // A policy that pins no workload does not build, and says what to pin.
/// let err = Policy::builder().accept_kms_root("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798").build().unwrap_err();
/// assert!(err.to_string().contains("allow_compose_hash"));
/// // Nor does a pin without an anchor; the message names both anchors.
/// let err = Policy::builder().allow_app_id("0xab").build().unwrap_err();
/// assert!(err.to_string().contains("accept_kms_root") && err.to_string().contains("allow_boot_measurements"));
/// // Boot measurements anchor a pin too (MRTD, RTMR0, RTMR1, RTMR2; hex, 48 bytes each).
/// let policy = Policy::builder()
///     .allow_app_id("0xab")
///     .allow_boot_measurements(&"11".repeat(48), &"22".repeat(48), &"33".repeat(48), &"44".repeat(48))
///     .build()?;
/// assert!(policy.anchors_pin() && !policy.requires_key_custody());
/// // Invalid values surface when the policy is built.
/// assert!(Policy::builder().allow_app_id("0xab").accept_kms_root("not hex").build().is_err());
/// # Ok::<(), tower_aci::Error>(())
/// ```
///
/// Relaxations meant only for tests against a local gateway live behind the explicitly named
/// [`PolicyBuilder::dangerous`] step:
///
/// ```
/// use tower_aci::attest::Policy;
///
/// let policy = Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap();
/// assert!(policy.is_dangerous());
/// let pinned = Policy::builder().allow_app_id("0xab").dangerous().accept_stub_quote().unanchored_pin().build().unwrap();
/// assert!(pinned.is_dangerous() && pinned.pins_workload() && !pinned.anchors_pin());
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) selection: KeySelection,
    pub(crate) max_validity: u64,
    pub(crate) hardware: Hardware,
    pub(crate) tcb_statuses: Vec<String>,
    pub(crate) kms_roots: Vec<[u8; 33]>,
    pub(crate) custody: Custody,
    pub(crate) allow: Allowlists,
    pub(crate) assumed_app_id: Option<Vec<u8>>,
    /// `dangerous().any_workload()`: no workload pin required.
    pub(crate) any_workload: bool,
    /// `current_generation_only()`: the older (June 2026) report generation is refused.
    pub(crate) current_generation_only: bool,
    /// `dangerous().unanchored_pin()`: a workload pin needs neither a KMS root nor boot
    /// measurements.
    pub(crate) unanchored_pin: bool,
    /// Intel advisory ids (`INTEL-SA-…`) a verified quote's TCB level must not be affected by.
    pub(crate) refused_advisories: Vec<String>,
    /// Offline collateral for hardware verification, one per platform (FMSPC).
    #[cfg(feature = "dcap")]
    pub(crate) collateral: Vec<crate::attest::dcap::Collateral>,
}

impl Policy {
    /// A builder starting from the defaults described above. Its
    /// [`build`](PolicyBuilder::build) fails until a workload is pinned.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder { policy: Policy::defaults(), error: None }
    }

    /// Whether any `dangerous()` relaxation is in effect.
    pub fn is_dangerous(&self) -> bool {
        self.hardware != Hardware::Required
            || self.custody == Custody::Skip
            || self.assumed_app_id.is_some()
            || self.any_workload
            || self.unanchored_pin
    }

    /// Whether a report must carry a `key_custody` object that verifies (a KMS root was
    /// accepted, or [`require_key_custody`](PolicyBuilder::require_key_custody) was called).
    pub fn requires_key_custody(&self) -> bool {
        self.custody == Custody::Required
    }

    /// Whether the policy pins the workload: a compose hash or an app id (an OS image hash pins
    /// only the OS); `false` only under [`any_workload`](DangerousPolicyBuilder::any_workload).
    pub fn pins_workload(&self) -> bool {
        self.allow.pins_workload()
    }

    /// Whether the workload pin is anchored: by an accepted KMS root with key custody required
    /// (the keys must be ones the KMS released to the pinned app), or by pinned boot measurements
    /// (the whole VM image is the one pinned). `false` only under a `dangerous()` opt-out.
    pub fn anchors_pin(&self) -> bool {
        self.anchored_by_kms() || self.allow.boot_measurements.is_some()
    }

    fn anchored_by_kms(&self) -> bool {
        !self.kms_roots.is_empty() && self.custody == Custody::Required
    }

    /// The MRTD/RTMR0–2 sets a hardware-verified quote must match one of (empty: not pinned).
    pub fn allowed_boot_measurements(&self) -> &[BootMeasurements] {
        self.allow.boot_measurements.as_deref().unwrap_or_default()
    }

    /// The Intel advisory ids a verified quote's TCB level must not be affected by.
    pub fn refused_advisories(&self) -> &[String] {
        &self.refused_advisories
    }

    /// Whether the policy demands that the hardware quote verify (no `dangerous()` relaxation of
    /// it).
    pub fn requires_hardware_verification(&self) -> bool {
        self.hardware == Hardware::Required
    }

    /// The TCB statuses the hardware verifier accepts.
    pub fn accepted_tcb_statuses(&self) -> &[String] {
        &self.tcb_statuses
    }

    /// Whether a report of `generation` may be verified under this policy (both generations by
    /// default; only the current one after
    /// [`current_generation_only`](PolicyBuilder::current_generation_only)).
    pub fn accepts_generation(&self, generation: Generation) -> bool {
        !self.current_generation_only || generation == Generation::Current
    }
}

impl Allowlists {
    /// A measured workload identity is pinned: the app (its compose hash or app id), not only the
    /// OS image it runs on.
    fn pins_workload(&self) -> bool {
        self.compose_hashes.is_some() || self.app_ids.is_some()
    }
}

/// The message of the error a policy without a workload pin fails with.
const UNPINNED: &str = "the policy pins no workload: any code running in a genuine TEE would pass. Pin what the \
gateway runs with at least one of: allow_compose_hash (hex SHA-256 of the report's \
attestation.evidence.app_compose, which the compose-hash event measures into RTMR3), allow_app_id (the dstack \
app id: the payload of the event log's app-id event, also named by the keyset subject app-id:0x…). \
allow_os_image_hash (the event log's os-image-hash event) pins the OS image only, not the app on it, and declared \
source provenance (allow_source, allow_image_digest) is not measured: neither counts alone. Then anchor the pin \
with accept_kms_root (the dstack KMS root public key, as the KMS publishes it) or allow_boot_measurements \
(the TD's MRTD and RTMR0-2). Tests against a local gateway opt out with .dangerous().any_workload()";

/// The message of the error a workload pin without an anchor fails with.
const UNANCHORED: &str = "the policy pins the workload (compose hash or app id) but nothing anchors that pin: \
a custom TD could extend RTMR3 with the pinned values and pass. Anchor it in one of two ways: \
accept_kms_root (the dstack KMS root public key: key custody then becomes required, and every key must be \
released by that KMS to the pinned app), or allow_boot_measurements(mrtd, rtmr0, rtmr1, rtmr2) (hex, 48 bytes \
each, the MRTD and RTMR0-2 of the dstack OS image the gateway boots, as its quote reports them; add one set per \
image). Tests against a local gateway opt out with .dangerous().unanchored_pin()";

impl Policy {
    fn defaults() -> Self {
        Policy {
            selection: KeySelection::Suites(vec![Suite::Secp256k1, Suite::X25519]),
            max_validity: DEFAULT_MAX_VALIDITY.as_secs(),
            hardware: Hardware::Required,
            tcb_statuses: vec![DEFAULT_TCB_STATUS.to_owned()],
            kms_roots: Vec::new(),
            custody: Custody::NoRoot,
            allow: Allowlists::default(),
            assumed_app_id: None,
            any_workload: false,
            current_generation_only: false,
            unanchored_pin: false,
            refused_advisories: Vec::new(),
            #[cfg(feature = "dcap")]
            collateral: Vec::new(),
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex_list = |v: &[[u8; 33]]| v.iter().map(hex::encode).collect::<Vec<_>>();
        let mut d = f.debug_struct("Policy");
        d.field("selection", &self.selection)
            .field("max_validity_secs", &self.max_validity)
            .field("hardware", &self.hardware)
            .field("tcb_statuses", &self.tcb_statuses)
            .field("kms_roots", &hex_list(&self.kms_roots))
            .field("custody", &self.custody)
            .field("allow", &self.allow)
            .field("assumed_app_id", &self.assumed_app_id.as_ref().map(hex::encode))
            .field("any_workload", &self.any_workload)
            .field("current_generation_only", &self.current_generation_only)
            .field("unanchored_pin", &self.unanchored_pin)
            .field("refused_advisories", &self.refused_advisories);
        #[cfg(feature = "dcap")]
        d.field("collateral", &self.collateral);
        d.finish()
    }
}

/// Builds a [`Policy`]. Methods take and return the builder by value; an invalid value is
/// remembered and reported by [`build`](Self::build) as a [`Config`](ErrorKind::Config) error.
#[derive(Debug)]
pub struct PolicyBuilder {
    policy: Policy,
    error: Option<Error>,
}

impl PolicyBuilder {
    fn fail(mut self, message: String) -> Self {
        if self.error.is_none() {
            self.error = Some(Error::new(ErrorKind::Config, message));
        }
        self
    }

    /// Encrypt only to keys of `suite` (the production key id of that suite is preferred).
    pub fn select_suite(mut self, suite: Suite) -> Self {
        self.policy.selection = KeySelection::Suites(vec![suite]);
        self
    }

    /// Prefer the X25519 key, falling back to secp256k1 when the keyset has none.
    pub fn prefer_x25519(mut self) -> Self {
        self.policy.selection = KeySelection::Suites(vec![Suite::X25519, Suite::Secp256k1]);
        self
    }

    /// Encrypt only to the E2EE key with this `key_id`; a keyset without it fails with
    /// `NoUsableKey`.
    pub fn pin_key_id(mut self, key_id: impl Into<String>) -> Self {
        let key_id = key_id.into();
        if key_id.is_empty() {
            return self.fail("the pinned key id is empty".to_owned());
        }
        self.policy.selection = KeySelection::KeyId(key_id);
        self
    }

    /// How far in the future `not_after` may lie (default 400 days). A report whose keyset is
    /// valid for longer is refused with `NotAfterTooFar`.
    pub fn max_validity(mut self, horizon: Duration) -> Self {
        if horizon.is_zero() {
            return self.fail("max_validity must be positive".to_owned());
        }
        self.policy.max_validity = horizon.as_secs();
        self
    }

    /// The TCB statuses the hardware verifier accepts (replaces the default `["UpToDate"]`).
    pub fn accept_tcb_statuses<I, T>(mut self, statuses: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let statuses: Vec<String> = statuses.into_iter().map(Into::into).collect();
        if statuses.is_empty() || statuses.iter().any(String::is_empty) {
            return self.fail("the accepted TCB statuses must be a non-empty list of names".to_owned());
        }
        self.policy.tcb_statuses = statuses;
        self
    }

    /// Offline collateral for verifying the gateway's TDX quote (feature `dcap`): the collateral
    /// of one platform, as [`Collateral::from_json`](crate::attest::dcap::Collateral::from_json)
    /// reads it or [`fetch_collateral`](crate::attest::dcap::fetch_collateral) fetched it. Add one
    /// per platform (FMSPC) the gateway's replicas run on; a quote is verified against the one
    /// for its FMSPC, at the verification time, so collateral past its `nextUpdate` refuses every
    /// quote until it is replaced. A key provider with a PCCS
    /// ([`KeyProviderBuilder::pccs`](crate::attest::KeyProviderBuilder::pccs)) uses the fetched
    /// collateral instead.
    #[cfg(feature = "dcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dcap")))]
    pub fn collateral(mut self, collateral: crate::attest::dcap::Collateral) -> Self {
        if collateral.fmspc().is_none() {
            return self.fail("the collateral's TCB info names no FMSPC".to_owned());
        }
        self.policy.collateral.push(collateral);
        self
    }

    /// Accept a dstack KMS root public key (secp256k1, hex of its SEC1 encoding; compressed is
    /// the usual form). Key custody chains must end in one of the accepted roots, and a report
    /// must then carry `key_custody` covering every key role (the identity key where the keyset
    /// has one, every receipt key, every E2EE key; a report that drops it fails with `Custody`),
    /// unless [`skip_key_custody`](DangerousPolicyBuilder::skip_key_custody) is in effect. This
    /// anchors a workload pin: the keys are ones the KMS released to the pinned app.
    pub fn accept_kms_root(mut self, public_key_hex: &str) -> Self {
        let parsed = decode_hex(public_key_hex)
            .and_then(|b| k256::PublicKey::from_sec1_bytes(&b).ok())
            .and_then(|pk| compressed(&pk));
        match parsed {
            Some(root) => {
                if !self.policy.kms_roots.contains(&root) {
                    self.policy.kms_roots.push(root);
                }
                if self.policy.custody == Custody::NoRoot {
                    self.policy.custody = Custody::Required;
                }
                self
            }
            None => self.fail(format!("KMS root {public_key_hex:?} is not a secp256k1 public key in hex")),
        }
    }

    /// Require a `key_custody` object: a report without one fails with `Custody`. Needs at least
    /// one accepted KMS root (which implies this).
    pub fn require_key_custody(mut self) -> Self {
        if self.policy.custody == Custody::NoRoot {
            self.policy.custody = Custody::Required;
        }
        self
    }

    /// Pin the workload to a compose hash: hex of SHA-256 of the report's
    /// `attestation.evidence.app_compose` (equal to the payload of the event log's `compose-hash`
    /// event). Once any is allowed, the report's compose hash must be one of them.
    pub fn allow_compose_hash(mut self, hex_hash: &str) -> Self {
        match decode_hex(hex_hash).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(h) => {
                self.policy.allow.compose_hashes.get_or_insert_with(Vec::new).push(h);
                self
            }
            None => self.fail(format!("compose hash {hex_hash:?} is not 32 bytes of hex")),
        }
    }

    /// Pin the workload to a dstack app id (hex, optional `0x`): the payload of the event log's
    /// `app-id` event, also named by a keyset `subject` `app-id:0x…`. Once any is allowed, the
    /// report's app id must be one of them.
    pub fn allow_app_id(mut self, hex_app_id: &str) -> Self {
        match decode_hex(hex_app_id).filter(|b| !b.is_empty()) {
            Some(id) => {
                self.policy.allow.app_ids.get_or_insert_with(Vec::new).push(id);
                self
            }
            None => self.fail(format!("app id {hex_app_id:?} is not hex")),
        }
    }

    /// Pin the OS image (hex; the payload of the `os-image-hash` event). Once any is allowed, the
    /// report's OS image hash must be one of them. This pins the dstack OS, not the app on it, so
    /// it is not a workload pin: a policy with only this does not build; pair it with a compose
    /// hash or app id.
    pub fn allow_os_image_hash(mut self, hex_hash: &str) -> Self {
        match decode_hex(hex_hash).filter(|b| !b.is_empty()) {
            Some(h) => {
                self.policy.allow.os_image_hashes.get_or_insert_with(Vec::new).push(h);
                self
            }
            None => self.fail(format!("OS image hash {hex_hash:?} is not hex")),
        }
    }

    /// Allow a declared source provenance (`repo_url` and `repo_commit`, compared exactly). Once
    /// any is allowed, the report's `source_provenance` must name one of them. Declared
    /// provenance is not measured, so it is not a workload pin on its own: pair it with a
    /// compose hash or app id.
    pub fn allow_source(mut self, repo_url: impl Into<String>, repo_commit: impl Into<String>) -> Self {
        let (url, commit) = (repo_url.into(), repo_commit.into());
        if url.is_empty() || commit.is_empty() {
            return self.fail("allowed source provenance needs a repo_url and a repo_commit".to_owned());
        }
        self.policy.allow.sources.get_or_insert_with(Vec::new).push((url, commit));
        self
    }

    /// Allow a declared container image digest (compared exactly). Once any is allowed, the
    /// report's `source_provenance.image_digest` must be one of them.
    pub fn allow_image_digest(mut self, digest: impl Into<String>) -> Self {
        let digest = digest.into();
        if digest.is_empty() {
            return self.fail("allowed image digest is empty".to_owned());
        }
        self.policy.allow.image_digests.get_or_insert_with(Vec::new).push(digest);
        self
    }

    /// Refuse reports of the older (June 2026) generation
    /// ([`Generation::Legacy`]) with [`Generation`](crate::AttestationFailure::Generation).
    ///
    /// By default both generations are accepted, and both are verified with the same
    /// hardware, event-log, allowlist and key-custody checks (the older one adds a keyset
    /// endorsement and takes its validity from `freshness.stale_after`, bounded by
    /// [`max_validity`](Self::max_validity)). Use this once every gateway you talk to serves the
    /// current generation.
    pub fn current_generation_only(mut self) -> Self {
        self.policy.current_generation_only = true;
        self
    }

    /// Pin the TD's boot measurements: the MRTD and RTMR0–2 (hex, optional `0x`, 48 bytes each)
    /// of the hardware-verified quote must equal one allowed set. Call once per set (one per OS
    /// image or firmware the gateway's replicas boot). Take the values from a quote of a
    /// gateway you trust ([`AttestedKeyset::boot_measurements`](crate::attest::AttestedKeyset::boot_measurements),
    /// `aci-proxy inspect`) or from dstack's reproducible image build.
    ///
    /// This anchors a workload pin without a KMS root: RTMR3 (and so the compose hash and app
    /// id) is only meaningful in a TD whose firmware and boot chain are the pinned ones. A quote
    /// that was not hardware-verified (a `dangerous()` relaxation) measures none, and fails
    /// with `NotAllowed`.
    pub fn allow_boot_measurements(mut self, mrtd: &str, rtmr0: &str, rtmr1: &str, rtmr2: &str) -> Self {
        let mut registers = [[0u8; 48]; 4];
        for (slot, (name, text)) in
            registers.iter_mut().zip([("MRTD", mrtd), ("RTMR0", rtmr0), ("RTMR1", rtmr1), ("RTMR2", rtmr2)])
        {
            match decode_hex(text).and_then(|b| <[u8; 48]>::try_from(b).ok()) {
                Some(v) => *slot = v,
                None => return self.fail(format!("boot measurement {name} {text:?} is not 48 bytes of hex")),
            }
        }
        let [mrtd, rtmr0, rtmr1, rtmr2] = registers;
        let set = BootMeasurements { mrtd, rtmr0, rtmr1, rtmr2 };
        let list = self.policy.allow.boot_measurements.get_or_insert_with(Vec::new);
        if !list.contains(&set) {
            list.push(set);
        }
        self
    }

    /// Refuse a quote whose platform TCB level is affected by any of these Intel security
    /// advisories (ids as the collateral lists them, e.g. `INTEL-SA-00837`; compared
    /// case-insensitively). The ids that apply to a verified keyset are on
    /// [`AttestedKeyset::advisory_ids`](crate::attest::AttestedKeyset::advisory_ids). A quote
    /// affected by a refused advisory fails with `TcbStatus`. Adds to earlier calls.
    pub fn refuse_advisories<I, T>(mut self, ids: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        for id in ids {
            let id: String = id.into();
            let id = id.trim();
            if id.is_empty() {
                return self.fail("a refused advisory id is empty".to_owned());
            }
            if !self.policy.refused_advisories.iter().any(|r| r.eq_ignore_ascii_case(id)) {
                self.policy.refused_advisories.push(id.to_owned());
            }
        }
        self
    }

    /// Relaxations that weaken what a verified keyset proves. Only for tests and local
    /// development; every method on the returned builder is named for what it gives up.
    pub fn dangerous(self) -> DangerousPolicyBuilder {
        DangerousPolicyBuilder { inner: self }
    }

    /// The policy, or the first invalid value given to the builder. Fails with
    /// [`Config`](ErrorKind::Config) when no workload is pinned (the message says what to pin and
    /// where each value comes from), unless `dangerous().any_workload()` opted out, and when the
    /// pin is not anchored by a KMS root or boot measurements (the message names both), unless
    /// `dangerous().unanchored_pin()` (or `any_workload()`) opted out.
    pub fn build(self) -> Result<Policy> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let p = self.policy;
        if p.custody == Custody::Required && p.kms_roots.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "require_key_custody() needs at least one accepted KMS root (accept_kms_root: the dstack KMS \
                 root public key)",
            ));
        }
        if p.any_workload {
            return Ok(p);
        }
        if !p.allow.pins_workload() {
            return Err(Error::new(ErrorKind::Config, UNPINNED));
        }
        if !p.anchors_pin() && !p.unanchored_pin {
            if p.custody == Custody::Skip && !p.kms_roots.is_empty() {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("{UNANCHORED} (a KMS root does not anchor the pin while skip_key_custody() is in effect)"),
                ));
            }
            return Err(Error::new(ErrorKind::Config, UNANCHORED));
        }
        Ok(p)
    }
}

/// The `dangerous()` part of a [`PolicyBuilder`]. Each method gives up part of what a verified
/// keyset proves; a keyset verified under such a policy reports
/// [`hardware_verified() == false`](crate::attest::AttestedKeyset::hardware_verified).
#[derive(Debug)]
pub struct DangerousPolicyBuilder {
    inner: PolicyBuilder,
}

impl DangerousPolicyBuilder {
    /// Accept the local test gateway's stub quote (`aci-stub-quote|` followed by the report-data
    /// slot) in place of a hardware quote. The slot (and `quote_report_data`, if present) must
    /// still equal `report_data` (optionally followed by 32 zero bytes). Any other quote still
    /// needs hardware verification.
    pub fn accept_stub_quote(mut self) -> Self {
        if self.inner.policy.hardware == Hardware::Required {
            self.inner.policy.hardware = Hardware::AcceptStub;
        }
        self
    }

    /// Do not verify the hardware quote at all. A stub quote's slot and `quote_report_data` are
    /// still checked when present; measured values (app id, compose hash) are read from the
    /// unverified event log.
    pub fn skip_hardware_verification(mut self) -> Self {
        self.inner.policy.hardware = Hardware::Skip;
        self
    }

    /// The dstack app id to verify key custody against when no hardware-measured one exists
    /// (hex, optional `0x`). It must agree with the event log and the keyset `subject` when
    /// those name one.
    pub fn assume_app_id(mut self, hex_app_id: &str) -> Self {
        match decode_hex(hex_app_id).filter(|b| !b.is_empty()) {
            Some(id) => {
                self.inner.policy.assumed_app_id = Some(id);
                self
            }
            None => Self { inner: self.inner.fail(format!("app id {hex_app_id:?} is not hex")) },
        }
    }

    /// Build without a workload pin: any workload whose report otherwise verifies passes (pins
    /// given anyway are still enforced, anchored or not). For tests against the local gateway
    /// (whose stub report measures nothing) and for exploring a gateway before you know its
    /// compose hash; never for production.
    pub fn any_workload(mut self) -> Self {
        self.inner.policy.any_workload = true;
        self
    }

    /// Build a workload pin (compose hash or app id) that neither a KMS root nor boot
    /// measurements anchor. The pin then rests on RTMR3 alone, which a custom TD can extend with
    /// the pinned values: for tests against a local gateway (whose stub quote measures nothing
    /// else), never for production.
    pub fn unanchored_pin(mut self) -> Self {
        self.inner.policy.unanchored_pin = true;
        self
    }

    /// Ignore `key_custody` entirely (also when a KMS root is accepted; the root then no longer
    /// anchors a workload pin).
    pub fn skip_key_custody(mut self) -> Self {
        self.inner.policy.custody = Custody::Skip;
        self
    }

    /// Back to the ordinary builder methods.
    pub fn end_dangerous(self) -> PolicyBuilder {
        self.inner
    }

    /// The policy, or the first invalid value given to the builder.
    pub fn build(self) -> Result<Policy> {
        self.inner.build()
    }
}

/// Hex with an optional lowercase `0x`, any case.
pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode_prefixed(text)
}

/// The 33-byte compressed SEC1 form of a secp256k1 key.
pub(crate) fn compressed(pk: &k256::PublicKey) -> Option<[u8; 33]> {
    use k256::elliptic_curve::sec1::ToEncodedPoint;
    pk.to_encoded_point(true).as_bytes().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
    const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";

    fn boot(mrtd: u8) -> [String; 4] {
        [mrtd, 0x10, 0x11, 0x12].map(|b| hex::encode([b; 48]))
    }

    /// A pin anchored by boot measurements only.
    fn measured_pin() -> PolicyBuilder {
        let [m, r0, r1, r2] = boot(0x0d);
        Policy::builder().allow_app_id(APP_ID).allow_boot_measurements(&m, &r0, &r1, &r2)
    }

    #[test]
    fn defaults_fail_closed() {
        let p = measured_pin().build().unwrap();
        assert!(p.requires_hardware_verification());
        assert!(!p.is_dangerous());
        assert!(p.pins_workload() && p.anchors_pin());
        assert_eq!(p.custody, Custody::NoRoot);
        assert_eq!(p.tcb_statuses, vec!["UpToDate".to_owned()]);
        assert!(p.refused_advisories().is_empty());
        assert_eq!(p.max_validity, 400 * 24 * 3600);
    }

    #[test]
    fn an_unpinned_policy_does_not_build_and_says_what_to_pin() {
        let [m, r0, r1, r2] = boot(0x0d);
        for builder in [
            Policy::builder(),
            Policy::builder().accept_kms_root(ROOT),
            Policy::builder().allow_os_image_hash("de9c74f0").accept_kms_root(ROOT),
            Policy::builder().allow_boot_measurements(&m, &r0, &r1, &r2),
            Policy::builder().allow_source("https://github.com/o/r", "abc").allow_image_digest("sha256:aa"),
            Policy::builder().dangerous().accept_stub_quote().end_dangerous(),
        ] {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let m = e.to_string();
            for what in [
                "allow_compose_hash",
                "app_compose",
                "allow_app_id",
                "app-id event",
                "allow_os_image_hash",
                "accept_kms_root",
                "allow_boot_measurements",
                "any_workload",
            ] {
                assert!(m.contains(what), "{what} missing from: {m}");
            }
        }
        // Each anchored app pin, or the explicit opt-out, builds.
        assert!(Policy::builder().allow_compose_hash(&"ab".repeat(32)).accept_kms_root(ROOT).build().is_ok());
        assert!(Policy::builder().allow_app_id(APP_ID).accept_kms_root(ROOT).build().is_ok());
        assert!(measured_pin().build().is_ok());
        let any = Policy::builder().dangerous().any_workload().build().unwrap();
        assert!(any.is_dangerous() && !any.pins_workload() && any.requires_hardware_verification());
    }

    #[test]
    fn an_unanchored_pin_does_not_build_and_names_both_anchors() {
        for builder in [
            Policy::builder().allow_compose_hash(&"ab".repeat(32)),
            Policy::builder().allow_app_id(APP_ID).allow_os_image_hash("de9c74f0"),
            Policy::builder().allow_app_id(APP_ID).dangerous().accept_stub_quote().end_dangerous(),
            // A KMS root whose custody is skipped anchors nothing.
            Policy::builder().allow_app_id(APP_ID).accept_kms_root(ROOT).dangerous().skip_key_custody().end_dangerous(),
        ] {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let m = e.to_string();
            for what in ["accept_kms_root", "allow_boot_measurements", "MRTD", "unanchored_pin"] {
                assert!(m.contains(what), "{what} missing from: {m}");
            }
        }
        // The dangerous opt-outs build, and say so.
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().unanchored_pin().build().unwrap();
        assert!(p.pins_workload() && !p.anchors_pin() && p.is_dangerous());
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().any_workload().build().unwrap();
        assert!(p.pins_workload() && !p.anchors_pin() && p.is_dangerous());
    }

    #[test]
    fn boot_measurements_are_48_bytes_of_hex_and_sets_accumulate() {
        let [m, r0, r1, r2] = boot(0x0d);
        let [m2, ..] = boot(0x0e);
        let p = measured_pin()
            .allow_boot_measurements(&format!("0x{}", m2.to_uppercase()), &r0, &r1, &r2)
            .allow_boot_measurements(&m, &r0, &r1, &r2)
            .build()
            .unwrap();
        assert_eq!(p.allowed_boot_measurements().len(), 2);
        assert_eq!(p.allowed_boot_measurements()[1].mrtd(), &[0x0e; 48]);
        assert_eq!(p.allowed_boot_measurements()[0].rtmr2(), &[0x12; 48]);
        for (i, bad) in ["", "zz", &"ab".repeat(47), &"ab".repeat(49), &"ab".repeat(32)].into_iter().enumerate() {
            let mut regs = [m.as_str(), &r0, &r1, &r2];
            regs[i % 4] = bad;
            let e = measured_pin().allow_boot_measurements(regs[0], regs[1], regs[2], regs[3]).build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let name = ["MRTD", "RTMR0", "RTMR1", "RTMR2"][i % 4];
            assert!(e.to_string().contains(&format!("boot measurement {name}")), "{e}");
        }
    }

    #[test]
    fn refused_advisories_are_kept_once() {
        let p = measured_pin()
            .refuse_advisories(["INTEL-SA-00837", " intel-sa-00837 "])
            .refuse_advisories(["INTEL-SA-01036"]);
        assert_eq!(p.build().unwrap().refused_advisories(), ["INTEL-SA-00837", "INTEL-SA-01036"]);
        assert_eq!(measured_pin().refuse_advisories([""]).build().unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn a_kms_root_makes_custody_required() {
        let p = Policy::builder().accept_kms_root(ROOT).allow_app_id(APP_ID).build().unwrap();
        assert!(p.requires_key_custody() && p.anchors_pin());
        // Explicitly skipped (dangerous), in either order: the pin then needs another anchor.
        let p = measured_pin().accept_kms_root(ROOT).dangerous().skip_key_custody().build();
        assert_eq!(p.unwrap().custody, Custody::Skip);
        let p = Policy::builder().dangerous().skip_key_custody().unanchored_pin().end_dangerous().accept_kms_root(ROOT);
        assert_eq!(p.allow_app_id(APP_ID).build().unwrap().custody, Custody::Skip);
        assert!(!measured_pin().build().unwrap().requires_key_custody());
    }

    #[test]
    fn builder_reports_the_first_invalid_value() {
        let e = Policy::builder().accept_kms_root("zz").allow_app_id("").build().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("KMS root"));
        assert!(measured_pin().require_key_custody().build().is_err());
        assert!(measured_pin().accept_tcb_statuses(Vec::<String>::new()).build().is_err());
        assert!(measured_pin().max_validity(Duration::ZERO).build().is_err());
        assert!(measured_pin().allow_compose_hash("abcd").build().is_err());
        assert!(measured_pin().dangerous().assume_app_id("xyz").build().is_err());
    }

    #[test]
    fn roots_are_normalised_to_compressed() {
        // The generator point, uncompressed.
        let uncompressed = "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                            483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";
        let p =
            Policy::builder().accept_kms_root(ROOT).accept_kms_root(uncompressed).allow_app_id(APP_ID).build().unwrap();
        assert_eq!(p.kms_roots.len(), 1);
        assert_eq!(hex::encode(p.kms_roots[0]), ROOT);
    }

    #[test]
    fn dangerous_steps_are_recorded() {
        let p = Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap();
        assert_eq!(p.hardware, Hardware::AcceptStub);
        assert!(p.is_dangerous());
        let p = Policy::builder()
            .dangerous()
            .skip_hardware_verification()
            .accept_stub_quote()
            .skip_key_custody()
            .any_workload()
            .end_dangerous()
            .prefer_x25519()
            .build()
            .unwrap();
        assert_eq!(p.hardware, Hardware::Skip);
        assert_eq!(p.custody, Custody::Skip);
        assert_eq!(p.selection, KeySelection::Suites(vec![Suite::X25519, Suite::Secp256k1]));
        // A pinned, anchored policy with only the stub relaxation is still dangerous.
        let p = measured_pin().dangerous().accept_stub_quote().build().unwrap();
        assert!(p.is_dangerous() && p.pins_workload());
        // So is an unanchored one, even with a real quote required.
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().unanchored_pin().build().unwrap();
        assert!(p.is_dangerous() && p.requires_hardware_verification());
    }
}
