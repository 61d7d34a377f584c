//! What an attestation report must satisfy before its keys are trusted.

use std::fmt;
use std::time::Duration;

use crate::attest::generation::Generation;
use crate::attest::keyset::BootMeasurements;
use crate::error::{Error, ErrorKind, Result};
use crate::hex;
use crate::protocol::suite::Suite;

/// The default horizon for `not_after`: 400 days.
pub(crate) const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(400 * 24 * 3600);

/// The TCB status accepted by default.
pub(crate) const DEFAULT_TCB_STATUS: &str = "UpToDate";

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
    /// Allowed KMS identities: the `id` of the `key-provider` event, decoded.
    pub(crate) kms_identities: Option<Vec<Vec<u8>>>,
    /// `require_production_os()`: the `os-image-hash` event must name a reviewed production image.
    pub(crate) production_os: bool,
}

/// What an attestation report must satisfy. Build one with [`Policy::builder`] (fallible: an
/// invalid value, or a policy whose pins do not anchor every key it would use, surfaces as a
/// [`Config`](ErrorKind::Config) error from `build`).
///
/// There is no `Default`: a policy must say *which* workload it trusts, and no default can. A
/// genuine TDX VM proves only that *some* code runs in a TEE; the policy binds it to the code you
/// mean, and says who holds the secret of every key the crate will use. The sound combination,
/// the only one [`PolicyBuilder::build`] accepts without a `dangerous()` step:
///
/// | pin | builder method | where the value comes from |
/// | --- | --- | --- |
/// | compose hash (the code) | [`allow_compose_hash`](PolicyBuilder::allow_compose_hash) | SHA-256 of the report's `attestation.evidence.app_compose`, measured into RTMR3 by the `compose-hash` event |
/// | boot measurements (genuine firmware and OS) | [`allow_boot_measurements`](PolicyBuilder::allow_boot_measurements) | MRTD and RTMR0–2 of the hardware-verified quote (`aci-proxy inspect`, or dstack's reproducible image build) |
/// | KMS identity (who provisioned the app) | [`allow_kms_identity`](PolicyBuilder::allow_kms_identity) | the `id` of the event log's `key-provider` event (`{"name":"kms","id":"…"}`) |
///
/// Together they cover every key of the keyset the quote binds (see
/// [`Anchor`](crate::attest::Anchor) for the table of which anchor covers which key): genuine
/// firmware and OS (which measure RTMR3 honestly), running the pinned code, provisioned by the
/// KMS you named. Beside them, optional checks: [`allow_app_id`](PolicyBuilder::allow_app_id)
/// (the `app-id` event; a label the app's owner authorises on chain, not a measurement of code,
/// so it never replaces the compose hash), [`accept_kms_root`](PolicyBuilder::accept_kms_root)
/// (key custody then becomes required and must chain to that root — a second anchor for the
/// keys whose chain signs their own bytes), [`require_production_os`](PolicyBuilder::require_production_os)
/// and [`allow_os_image_hash`](PolicyBuilder::allow_os_image_hash) (the `os-image-hash` event,
/// meaningful under pinned boot measurements), and declared source provenance
/// ([`allow_source`](PolicyBuilder::allow_source), [`allow_image_digest`](PolicyBuilder::allow_image_digest),
/// not measured). A policy that pins less fails to build and its message leads with what to add.
///
/// The other defaults fail closed too: the hardware quote must verify (feature `dcap`, against
/// collateral given to `PolicyBuilder::collateral` or fetched by the key provider from a PCCS; a
/// build without the feature, or a quote without collateral, fails with `HardwareUnverifiable`);
/// only the `UpToDate` TCB status is accepted (and no Intel advisory is refused until
/// [`refuse_advisories`](PolicyBuilder::refuse_advisories) lists some); `not_after` may lie at
/// most 400 days ahead; once a KMS root is accepted, `key_custody` is *required*; keys are
/// selected secp256k1 first (preferring `dstack-kms-e2ee-v1`), X25519 when the keyset has no
/// secp256k1 key, always among the keys an anchor covers.
///
/// The values below are those of the real June 2026 production report in `tests/data/`:
///
/// ```
/// use std::time::Duration;
/// use tower_aci::attest::Policy;
///
/// let policy = Policy::builder()
///     // The code: SHA-256 of the report's app_compose (the compose-hash event).
///     .allow_compose_hash("5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb")
///     // The genuine firmware and dstack OS: MRTD, RTMR0, RTMR1, RTMR2 of the quote.
///     .allow_boot_measurements(
///         "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077",
///         "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072",
///         "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c",
///         "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f",
///     )
///     // The KMS that provisioned it: the id of the key-provider event.
///     .allow_kms_identity(concat!(
///         "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bb",
///         "d19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f",
///     ))
///     // Optional: the app id, and the KMS root its custody chains end in.
///     .allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918")
///     .accept_kms_root("0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1")
///     .max_validity(Duration::from_secs(45 * 24 * 3600))
///     .build()?;
/// # let _ = policy;
///
/// // A policy that pins no workload does not build, and says what to pin.
/// let err = Policy::builder().build().unwrap_err();
/// assert!(err.to_string().contains("allow_compose_hash"));
/// // Nor does an app id anchored by a KMS root alone: the message leads with what to add.
/// let err = Policy::builder()
///     .allow_app_id("fdb7a14e5a6675f752e2cb69c9067a98ca402918")
///     .accept_kms_root("0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1")
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().starts_with("add allow_compose_hash, allow_boot_measurements and allow_kms_identity"));
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
/// // A pin no anchor covers builds only when said so, in the dangerous step.
/// assert!(Policy::builder().allow_app_id("0xab").build().is_err());
/// let pinned = Policy::builder().allow_app_id("0xab").dangerous().accept_stub_quote().unanchored_pin().build().unwrap();
/// # let _ = (policy, pinned);
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
    /// `dangerous().accept_unauthenticated_answers()`: a KMS root may anchor the pin alone; only
    /// the keys its custody covers are used, and nothing need authenticate an answer.
    pub(crate) unauthenticated_answers: bool,
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
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn is_dangerous(&self) -> bool {
        self.hardware != Hardware::Required
            || self.custody == Custody::Skip
            || self.assumed_app_id.is_some()
            || self.any_workload
            || self.unanchored_pin
            || self.unauthenticated_answers
    }

    /// Whether a report must carry a `key_custody` object that verifies (a KMS root was
    /// accepted, or [`require_key_custody`](PolicyBuilder::require_key_custody) was called).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn requires_key_custody(&self) -> bool {
        self.custody == Custody::Required
    }

    /// Whether the policy pins the workload: a compose hash or an app id (an OS image hash pins
    /// only the OS); `false` only under [`any_workload`](DangerousPolicyBuilder::any_workload).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn pins_workload(&self) -> bool {
        self.allow.pins_workload()
    }

    /// Whether the workload pin is soundly anchored: boot measurements, a KMS identity and a
    /// compose hash are all pinned (every key of a keyset that passes is covered; see
    /// [`Anchor`](crate::attest::Anchor)), or, under
    /// [`accept_unauthenticated_answers`](DangerousPolicyBuilder::accept_unauthenticated_answers),
    /// a KMS root with key custody required. `false` under the other `dangerous()` opt-outs.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn anchors_pin(&self) -> bool {
        self.pins_measured_workload() || (self.unauthenticated_answers && self.anchored_by_kms())
    }

    /// Whether the policy pins the measured workload: boot measurements, a KMS identity and a
    /// compose hash, the combination that covers every key of the keyset.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn pins_measured_workload(&self) -> bool {
        self.allow.compose_hashes.is_some()
            && self.allow.boot_measurements.is_some()
            && self.allow.kms_identities.is_some()
    }

    pub(crate) fn anchored_by_kms(&self) -> bool {
        !self.kms_roots.is_empty() && self.custody == Custody::Required
    }

    /// Every key is treated as covered although no anchor may cover it (`dangerous()`
    /// `any_workload` or `unanchored_pin`).
    pub(crate) fn covers_unanchored(&self) -> bool {
        self.any_workload || self.unanchored_pin
    }

    /// The MRTD/RTMR0–2 sets a hardware-verified quote must match one of (empty: not pinned).
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn allowed_boot_measurements(&self) -> &[BootMeasurements] {
        self.allow.boot_measurements.as_deref().unwrap_or_default()
    }

    /// The Intel advisory ids a verified quote's TCB level must not be affected by.
    #[doc(hidden)] // for aci-proxy (crates/aci-proxy): not API
    pub fn refused_advisories(&self) -> &[String] {
        &self.refused_advisories
    }

    /// Whether the policy demands that the hardware quote verify (no `dangerous()` relaxation of
    /// it).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn requires_hardware_verification(&self) -> bool {
        self.hardware == Hardware::Required
    }

    /// The TCB statuses the hardware verifier accepts.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn accepted_tcb_statuses(&self) -> &[String] {
        &self.tcb_statuses
    }

    /// Whether a report of `generation` may be verified under this policy (both generations by
    /// default; only the current one after
    /// [`current_generation_only`](PolicyBuilder::current_generation_only)).
    pub(crate) fn accepts_generation(&self, generation: Generation) -> bool {
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
const UNPINNED: &str = "add allow_compose_hash, allow_boot_measurements and allow_kms_identity: the policy pins \
no workload, so any code running in a genuine TEE would pass. The compose hash is hex SHA-256 of the report's \
attestation.evidence.app_compose (which the compose-hash event measures into RTMR3); the boot measurements are the \
TD's MRTD and RTMR0-2 (the genuine firmware and dstack OS); the KMS identity is the id of the event log's \
key-provider event (the KMS that provisioned the app). allow_app_id (the payload of the app-id event, also named by \
the keyset subject app-id:0x…) and accept_kms_root (the dstack KMS root public key) add checks but do not replace \
them; allow_os_image_hash (the os-image-hash event) pins the OS image only, and declared source provenance \
(allow_source, allow_image_digest) is not measured. `aci-proxy inspect` prints every value. Tests against a local \
gateway opt out with .dangerous().any_workload()";

/// The part of the message of an insufficient pin that says why, after what to add.
const INSUFFICIENT: &str = "only boot measurements, a KMS identity and a compose hash together cover every key the \
crate uses (the sound combination; allow_app_id and accept_kms_root may be added to it). A KMS root alone covers only \
the keys whose custody chain signs their own bytes (the secp256k1 E2EE key), not the TLS and receipt keys that \
authenticate answers; an app id is a label its owner authorises on chain, not the code; without a pinned KMS \
identity another KMS can provision the genuine image; without boot measurements a TD of anyone's making can \
extend RTMR3 with the pinned values. Tests against a local gateway opt out with .dangerous().unanchored_pin()";

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
            unauthenticated_answers: false,
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
            .field("unauthenticated_answers", &self.unauthenticated_answers)
            .field("refused_advisories", &self.refused_advisories);
        #[cfg(feature = "dcap")]
        d.field("collateral", &self.collateral);
        d.finish()
    }
}

/// Builds a [`Policy`]. Methods take and return the builder by value; an invalid value is
/// remembered and reported by [`build`](Self::build) as a [`Config`](ErrorKind::Config) error.
#[derive(Debug)]
#[must_use]
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
    /// unless [`skip_key_custody`](DangerousPolicyBuilder::skip_key_custody) is in effect.
    ///
    /// A KMS root covers only the keys whose custody chain signs their own bytes (the secp256k1
    /// E2EE key; every key of an older-generation keyset, through its identity key's
    /// endorsement): a second anchor beside the sound combination, not a replacement for it
    /// (see [`Anchor`](crate::attest::Anchor)).
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
    /// ([`Generation::Legacy`]) with [`Generation`](crate::error::AttestationFailure::Generation).
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
    /// One of the three pins of the sound combination (with
    /// [`allow_compose_hash`](Self::allow_compose_hash) and
    /// [`allow_kms_identity`](Self::allow_kms_identity)): RTMR3 (and so the compose hash, app id,
    /// KMS identity and OS image hash) is only meaningful in a TD whose firmware and boot chain
    /// are the pinned ones. A quote that was not hardware-verified (a `dangerous()` relaxation)
    /// measures none, and fails with `NotAllowed`.
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

    /// Pin the KMS that provisioned the app: the `id` (hex, optional `0x`) of the event log's
    /// `key-provider` event, whose payload dstack measures as `{"name":"kms","id":"…"}` (the
    /// KMS's public key; `aci-proxy inspect` prints it). Once any is allowed, the report's must
    /// be one of them; another is refused with `NotAllowed` naming the measured identity in full.
    /// Call once per KMS the gateway's replicas may use.
    ///
    /// One of the three pins of the sound combination: a host can boot the genuine, pinned
    /// dstack image against a KMS it runs, which then knows every KMS-derived key (the E2EE
    /// secret included) and, with an app-id pin, may provision any compose.
    pub fn allow_kms_identity(mut self, hex_id: &str) -> Self {
        match decode_hex(hex_id).filter(|b| !b.is_empty()) {
            Some(id) => {
                let list = self.policy.allow.kms_identities.get_or_insert_with(Vec::new);
                if !list.contains(&id) {
                    list.push(id);
                }
                self
            }
            None => self.fail(format!("KMS identity {hex_id:?} is not hex (the id of the key-provider event)")),
        }
    }

    /// Require a reviewed dstack production OS image: the `os-image-hash` event must be one of
    /// [`PRODUCTION_OS_IMAGES`](crate::attest::PRODUCTION_OS_IMAGES) (a development image, which
    /// gives its operator a root shell in the TD, is refused with `NotAllowed`). The event is
    /// extended by the OS itself, so this means something only under pinned boot measurements,
    /// which the sound combination includes.
    pub fn require_production_os(mut self) -> Self {
        self.policy.allow.production_os = true;
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
    /// [`Config`](ErrorKind::Config) when no workload is pinned, and when the pins are not the
    /// sound combination (compose hash, boot measurements and KMS identity): the message leads
    /// with what to add and says why. `dangerous().any_workload()` and
    /// `dangerous().unanchored_pin()` opt out (every key is then used unanchored), and
    /// `dangerous().accept_unauthenticated_answers()` lets an accepted KMS root anchor the pin
    /// alone (only the keys its custody covers are used).
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
        if p.pins_measured_workload() || p.unanchored_pin {
            return Ok(p);
        }
        if p.unauthenticated_answers {
            if p.anchored_by_kms() {
                return Ok(p);
            }
            let why = if p.kms_roots.is_empty() { "" } else { " (and key custody not skipped)" };
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "add accept_kms_root{why}: accept_unauthenticated_answers() lets a KMS root anchor the pin alone, \
                     and the policy has none to cover even the E2EE key"
                ),
            ));
        }
        let allow = &p.allow;
        let missing: Vec<&str> = [
            (allow.compose_hashes.is_none(), "allow_compose_hash"),
            (allow.boot_measurements.is_none(), "allow_boot_measurements"),
            (allow.kms_identities.is_none(), "allow_kms_identity"),
        ]
        .into_iter()
        .filter_map(|(missing, name)| missing.then_some(name))
        .collect();
        let missing = match missing.as_slice() {
            [one] => (*one).to_owned(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => unreachable!("pins_measured_workload() is false"),
        };
        Err(Error::new(ErrorKind::Config, format!("add {missing}: {INSUFFICIENT}")))
    }
}

/// The `dangerous()` part of a [`PolicyBuilder`]. Each method gives up part of what a verified
/// keyset proves; a keyset verified under such a policy reports
/// [`hardware_verified() == false`](crate::attest::AttestedKeyset::hardware_verified).
#[derive(Debug)]
#[must_use]
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

    /// Build a workload pin (compose hash or app id) without the sound combination of anchors
    /// (compose hash, boot measurements, KMS identity). Every key of a keyset that passes is then
    /// used although nothing says who holds its secret ([`Anchor::Unanchored`](crate::attest::Anchor)):
    /// the pin rests on RTMR3 alone, which a custom TD can extend with the pinned values. For
    /// tests against a local gateway (whose stub quote measures nothing else), never for
    /// production.
    pub fn unanchored_pin(mut self) -> Self {
        self.inner.policy.unanchored_pin = true;
        self
    }

    /// Let an accepted KMS root anchor the pin alone, for prompt confidentiality only. The keyset
    /// then keeps only the keys the root covers (those whose custody chain signs their own bytes:
    /// the secp256k1 E2EE key; see [`Anchor::KmsCustody`](crate::attest::Anchor)), so prompts
    /// are sealed to a key only an app the KMS attested can hold. Nothing then authenticates an
    /// answer: no TLS or receipt key is covered, so an `https://` gateway also needs the
    /// provider's `accept_unbound_channel()`, and anyone who sees the request can forge an answer
    /// that decrypts. Needs [`accept_kms_root`](PolicyBuilder::accept_kms_root).
    pub fn accept_unauthenticated_answers(mut self) -> Self {
        self.inner.policy.unauthenticated_answers = true;
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

    const ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";
    const APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";
    const COMPOSE: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
    const KMS_ID: &str = "3059301306072a8648ce3d0201";

    fn boot(mrtd: u8) -> [String; 4] {
        [mrtd, 0x10, 0x11, 0x12].map(|b| hex::encode([b; 48]))
    }

    /// The sound combination: compose hash, boot measurements, KMS identity.
    fn measured_pin() -> PolicyBuilder {
        let [m, r0, r1, r2] = boot(0x0d);
        Policy::builder()
            .allow_compose_hash(COMPOSE)
            .allow_boot_measurements(&m, &r0, &r1, &r2)
            .allow_kms_identity(KMS_ID)
    }

    #[test]
    fn defaults_fail_closed() {
        let p = measured_pin().build().unwrap();
        assert!(p.requires_hardware_verification());
        assert!(!p.is_dangerous());
        assert!(p.pins_workload() && p.anchors_pin() && p.pins_measured_workload());
        assert_eq!(p.custody, Custody::NoRoot);
        assert_eq!(p.tcb_statuses, vec!["UpToDate".to_owned()]);
        assert!(p.refused_advisories().is_empty());
        assert_eq!(p.max_validity, 400 * 24 * 3600);
        assert!(!p.allow.production_os);
    }

    #[test]
    fn an_unpinned_policy_does_not_build_and_says_what_to_pin() {
        let [m, r0, r1, r2] = boot(0x0d);
        for builder in [
            Policy::builder(),
            Policy::builder().accept_kms_root(ROOT),
            Policy::builder().allow_os_image_hash("de9c74f0").accept_kms_root(ROOT),
            Policy::builder().allow_boot_measurements(&m, &r0, &r1, &r2).allow_kms_identity(KMS_ID),
            Policy::builder().allow_source("https://github.com/o/r", "abc").allow_image_digest("sha256:aa"),
            Policy::builder().dangerous().accept_stub_quote().end_dangerous(),
        ] {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let m = e.to_string();
            assert!(m.starts_with("add allow_compose_hash, allow_boot_measurements and allow_kms_identity"), "{m}");
            for what in [
                "app_compose",
                "MRTD",
                "key-provider",
                "allow_app_id",
                "app-id event",
                "accept_kms_root",
                "allow_os_image_hash",
                "any_workload",
            ] {
                assert!(m.contains(what), "{what} missing from: {m}");
            }
        }
        // The sound combination, or the explicit opt-out, builds.
        assert!(measured_pin().build().is_ok());
        assert!(measured_pin().allow_app_id(APP_ID).accept_kms_root(ROOT).build().is_ok());
        let any = Policy::builder().dangerous().any_workload().build().unwrap();
        assert!(any.is_dangerous() && !any.pins_workload() && any.requires_hardware_verification());
    }

    #[test]
    fn an_insufficient_pin_does_not_build_and_leads_with_what_to_add() {
        let [m, r0, r1, r2] = boot(0x0d);
        for (builder, adds) in [
            (Policy::builder().allow_compose_hash(COMPOSE), "allow_boot_measurements and allow_kms_identity"),
            (Policy::builder().allow_compose_hash(COMPOSE).accept_kms_root(ROOT), "allow_boot_measurements and"),
            (Policy::builder().allow_app_id(APP_ID).accept_kms_root(ROOT), "allow_compose_hash, allow_boot"),
            (Policy::builder().allow_app_id(APP_ID).allow_os_image_hash("de9c74f0"), "allow_compose_hash, allow"),
            (
                Policy::builder()
                    .allow_app_id(APP_ID)
                    .allow_boot_measurements(&m, &r0, &r1, &r2)
                    .allow_kms_identity(KMS_ID),
                "allow_compose_hash:",
            ),
            (
                Policy::builder().allow_compose_hash(COMPOSE).allow_boot_measurements(&m, &r0, &r1, &r2),
                "allow_kms_identity:",
            ),
            (Policy::builder().allow_compose_hash(COMPOSE).allow_kms_identity(KMS_ID), "allow_boot_measurements:"),
            // A KMS root whose custody is skipped anchors nothing either.
            (
                Policy::builder()
                    .allow_app_id(APP_ID)
                    .accept_kms_root(ROOT)
                    .dangerous()
                    .skip_key_custody()
                    .end_dangerous(),
                "allow_compose_hash",
            ),
        ] {
            let e = builder.build().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let m = e.to_string();
            assert!(m.starts_with(&format!("add {adds}")), "{adds} does not lead: {m}");
            for what in
                ["sound combination", "KMS root alone", "secp256k1 E2EE key", "app id is a label", "unanchored_pin"]
            {
                assert!(m.contains(what), "{what} missing from: {m}");
            }
        }
        // The dangerous opt-outs build, and say so.
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().unanchored_pin().build().unwrap();
        assert!(p.pins_workload() && !p.anchors_pin() && p.is_dangerous() && p.covers_unanchored());
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().any_workload().build().unwrap();
        assert!(p.pins_workload() && !p.anchors_pin() && p.is_dangerous());
        // A KMS root may anchor the pin alone only for prompt confidentiality, and only with
        // custody required.
        let p =
            Policy::builder().allow_app_id(APP_ID).accept_kms_root(ROOT).dangerous().accept_unauthenticated_answers();
        let p = p.build().unwrap();
        assert!(p.anchors_pin() && p.is_dangerous() && !p.covers_unanchored() && !p.pins_measured_workload());
        for builder in [
            Policy::builder().allow_app_id(APP_ID).dangerous().accept_unauthenticated_answers(),
            Policy::builder()
                .allow_app_id(APP_ID)
                .accept_kms_root(ROOT)
                .dangerous()
                .skip_key_custody()
                .accept_unauthenticated_answers(),
        ] {
            let e = builder.build().unwrap_err();
            assert!(e.to_string().starts_with("add accept_kms_root"), "{e}");
        }
    }

    #[test]
    fn kms_identities_are_hex_and_kept_once() {
        let p = measured_pin().allow_kms_identity(&format!("0x{}", KMS_ID.to_uppercase())).build().unwrap();
        assert_eq!(p.allow.kms_identities.as_deref(), Some(&[hex::decode(KMS_ID).unwrap()][..]));
        for bad in ["", "zz", "0x"] {
            let e = measured_pin().allow_kms_identity(bad).build().unwrap_err();
            assert!(e.to_string().contains("KMS identity"), "{e}");
        }
        assert!(measured_pin().require_production_os().build().unwrap().allow.production_os);
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
        let p = measured_pin().accept_kms_root(ROOT).allow_app_id(APP_ID).build().unwrap();
        assert!(p.requires_key_custody() && p.anchors_pin() && p.anchored_by_kms());
        // Explicitly skipped (dangerous), in either order.
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
        // The generator point, compressed and uncompressed.
        let g = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";
        let uncompressed = "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798\
                            483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8";
        let p = measured_pin().accept_kms_root(g).accept_kms_root(uncompressed).build().unwrap();
        assert_eq!(p.kms_roots.len(), 1);
        assert_eq!(hex::encode(p.kms_roots[0]), g);
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
        // A sound policy with only the stub relaxation is still dangerous.
        let p = measured_pin().dangerous().accept_stub_quote().build().unwrap();
        assert!(p.is_dangerous() && p.pins_workload());
        // So is an unanchored one, even with a real quote required.
        let p = Policy::builder().allow_app_id(APP_ID).dangerous().unanchored_pin().build().unwrap();
        assert!(p.is_dangerous() && p.requires_hardware_verification());
    }
}
