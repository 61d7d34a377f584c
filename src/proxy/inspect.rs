//! `aci-proxy inspect`: what a gateway runs, what to pin, and whether it verifies under the pins
//! given.
//!
//! [`inspect_report`] checks a report (fetched with a nonce of ours) step by step in the order
//! [`verify_report`] runs, and records one [`Check`] per step — passed, failed or skipped, with
//! why — and the values an operator pins ([`PinValues`]). The last check is the verdict: the
//! report verified under the policy the pins describe, or why not. [`inspect_gateway`] fetches
//! the report with a fresh nonce over the proxy's own HTTP client (HTTPS through the attested
//! connector, whose presented key the report must list) and the quote's collateral from a PCCS.
//!
//! The values are trusted on first use: compare them with what the operator publishes before
//! pinning them.

use std::fmt;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use crate::attest::dcap::{self, Collateral};
use crate::attest::{
    AttestedKeyset, ChannelInfo, KeyHandle, Policy, anchor, custody, eventlog, generation, keyset_digest,
};
use crate::attest::{verify_report, verify_report_with_collateral};
use crate::e2ee::RequestBody;
use crate::error::{Error, ErrorKind, Result};
use crate::hex;
use crate::proxy::ProxyConfig;

/// The PCCS `aci-proxy inspect` fetches collateral from when none is given: the client's and
/// the proxy's default, [`client::DEFAULT_PCCS`](crate::client::DEFAULT_PCCS).
pub const DEFAULT_PCCS: &str = crate::client::DEFAULT_PCCS;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// The check could not run (its reason says why).
    Skip,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

/// One step of the verification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Check {
    /// What was checked (`report`, `quote`, `binding`, …).
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// What was seen, or why it failed or was skipped.
    pub detail: String,
}

/// The values to pin, as the report shows them (hex, as the flags and the TOML file take them).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PinValues {
    /// `sha256:…` of the keyset.
    pub keyset_digest: Option<String>,
    /// The report generation (`current`, `legacy`).
    pub generation: Option<String>,
    /// The measured compose hash.
    pub compose_hash: Option<String>,
    /// The measured app id.
    pub app_id: Option<String>,
    /// The measured OS image hash.
    pub os_image_hash: Option<String>,
    /// The KMS root every key custody chain recovers to.
    pub kms_root: Option<String>,
    /// The KMS identity: the `id` of the `key-provider` event (the KMS that provisioned the app).
    pub kms_identity: Option<String>,
    /// The reviewed production image the OS image hash names (`dstack 0.5.9`, …), or `None` for a
    /// development or unknown image.
    pub production_os: Option<String>,
    /// `vm_config.image`, when the report carries it (e.g. `dstack-dev-0.5.9-de9c74f0`).
    pub vm_image: Option<String>,
    /// MRTD, RTMR0, RTMR1, RTMR2 of the quote.
    pub boot_measurements: Option<[String; 4]>,
    /// Whether the boot measurements come from a quote verified to Intel's root.
    pub boot_measurements_verified: bool,
    /// The platform's TCB status (hardware-verified quotes only).
    pub tcb_status: Option<String>,
    /// Intel advisories that apply to the platform's TCB level.
    pub advisory_ids: Vec<String>,
    /// TLS keys: (domain, SPKI SHA-256).
    pub tls_keys: Vec<(Option<String>, String)>,
    /// E2EE keys: (key id, suite, public key).
    pub e2ee_keys: Vec<(String, String, String)>,
    /// The keyset's `not_after` (Unix seconds).
    pub not_after: Option<u64>,
}

/// What `inspect` found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// The gateway inspected, when it was fetched.
    pub gateway: Option<String>,
    /// The PCCS the proxy fetches collateral from (`--pccs`, default [`DEFAULT_PCCS`]): the
    /// `pccs` line of [`config_toml`](Self::config_toml).
    pub pccs: String,
    /// The checks, in the order verification runs.
    pub checks: Vec<Check>,
    /// The values to pin.
    pub values: PinValues,
    /// Whether the report verified under the pins given (the last check).
    pub verified: bool,
}

impl Inspection {
    fn push(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check { name, outcome, detail: detail.into() });
    }

    /// The inspection as JSON (`--json`).
    pub fn to_json(&self) -> Value {
        let v = &self.values;
        json!({
            "gateway": self.gateway,
            "verified": self.verified,
            "checks": self.checks.iter().map(|c| json!({"check": c.name, "outcome": c.outcome.name(), "detail": c.detail})).collect::<Vec<_>>(),
            "pins": {
                "keyset_digest": v.keyset_digest,
                "generation": v.generation,
                "compose_hash": v.compose_hash,
                "app_id": v.app_id,
                "os_image_hash": v.os_image_hash,
                "kms_root": v.kms_root,
                "kms_identity": v.kms_identity,
                "os_image": {"production": v.production_os, "vm_image": v.vm_image},
                "boot_measurements": v.boot_measurements.as_ref().map(|[m, r0, r1, r2]| json!({"mrtd": m, "rtmr0": r0, "rtmr1": r1, "rtmr2": r2, "verified": v.boot_measurements_verified})),
                "tcb_status": v.tcb_status,
                "advisory_ids": v.advisory_ids,
                "tls_keys": v.tls_keys.iter().map(|(d, s)| json!({"domain": d, "spki_sha256": s})).collect::<Vec<_>>(),
                "e2ee_keys": v.e2ee_keys.iter().map(|(id, suite, k)| json!({"key_id": id, "suite": suite, "public_key": k})).collect::<Vec<_>>(),
                "not_after": v.not_after,
            },
        })
    }

    /// An `aci-proxy.toml` holding the values found as pins (`--write-config`).
    pub fn config_toml(&self) -> String {
        let v = &self.values;
        // A TOML basic string, escaped as TOML escapes it.
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let list = |o: &Option<String>| o.as_deref().map(|s| format!("[{}]", q(s))).unwrap_or_else(|| "[]".into());
        let mut out = String::from(
            "# Written by `aci-proxy inspect`: these values were TRUSTED ON FIRST USE, read from the\n\
             # gateway's own report. Check each against the values the operator publishes (compose\n\
             # hash, boot measurements, KMS identity, app id, KMS root) before relying on them.\n",
        );
        if let Some(g) = &self.gateway {
            out.push_str(&format!("gateway = {}\n", q(g)));
        }
        out.push_str(&format!(
            "# Intel-signed quote collateral (checked against Intel's root; the PCCS is not trusted)\npccs = {}\n",
            q(&self.pccs)
        ));
        out.push_str(
            "\n# The compose hash, the boot measurements and the KMS identity together cover every key\n\
             # (the app id and the KMS root are checked beside them).\n[pins]\n",
        );
        out.push_str(&format!("compose-hash = {}\n", list(&v.compose_hash)));
        out.push_str(&format!("kms-identity = {}\n", list(&v.kms_identity)));
        out.push_str(&format!("app-id = {}\n", list(&v.app_id)));
        out.push_str(&format!("kms-root = {}\n", list(&v.kms_root)));
        if v.production_os.is_some() {
            out.push_str("require-production-os = true\n");
        }
        if let Some(status) = &v.tcb_status {
            out.push_str(&format!("tcb-status = [{}]\n", q(status)));
        }
        if let Some([m, r0, r1, r2]) = &v.boot_measurements {
            if !v.boot_measurements_verified {
                out.push_str("# The boot measurements below were read from a quote that was not verified.\n");
            }
            out.push_str(&format!(
                "\n[[pins.boot-measurements]]\nmrtd = {}\nrtmr0 = {}\nrtmr1 = {}\nrtmr2 = {}\n",
                q(m),
                q(r0),
                q(r1),
                q(r2)
            ));
        }
        out
    }
}

impl fmt::Display for Inspection {
    /// The transcript: one line per check, then the values to pin.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(g) = &self.gateway {
            writeln!(f, "gateway {g}")?;
        }
        for c in &self.checks {
            writeln!(f, "{:<4} {:<13} {}", c.outcome.name(), c.name, c.detail)?;
        }
        let v = &self.values;
        let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        writeln!(f, "\nvalues to pin (trusted on first use: check them against the operator's published values)")?;
        writeln!(
            f,
            "  (the compose hash, boot measurements and KMS identity together are required; the rest are checks)"
        )?;
        writeln!(f, "  --compose-hash   {}", show(&v.compose_hash))?;
        match &v.boot_measurements {
            Some(b) => writeln!(
                f,
                "  --boot-measurements {}{}",
                b.join(","),
                if v.boot_measurements_verified { "" } else { "  (from an unverified quote)" }
            )?,
            None => writeln!(f, "  --boot-measurements -")?,
        }
        writeln!(f, "  --kms-identity   {}", show(&v.kms_identity))?;
        writeln!(f, "  --app-id         {}", show(&v.app_id))?;
        writeln!(f, "  --kms-root       {}", show(&v.kms_root))?;
        writeln!(f, "  --os-image-hash  {}", show(&v.os_image_hash))?;
        let image = v.vm_image.as_deref().map(|i| format!(" ({i})")).unwrap_or_default();
        match (&v.production_os, &v.os_image_hash) {
            (Some(name), _) => writeln!(f, "  os image         production: {name}{image} (--require-production-os)")?,
            (None, Some(_)) => writeln!(
                f,
                "  os image         development or unknown image{image}: not a reviewed production image \
                 (its operator may have a shell in the TD)"
            )?,
            (None, None) => writeln!(f, "  os image         -")?,
        }
        writeln!(f, "  --tcb-status     {}", show(&v.tcb_status))?;
        writeln!(
            f,
            "  advisories       {}",
            if v.advisory_ids.is_empty() { "-".into() } else { v.advisory_ids.join(", ") }
        )?;
        for (domain, spki) in &v.tls_keys {
            writeln!(f, "  tls key          {} {spki}", domain.as_deref().unwrap_or("(any host)"))?;
        }
        for (id, suite, key) in &v.e2ee_keys {
            writeln!(f, "  e2ee key         {id} {suite} {key}")?;
        }
        writeln!(f, "  not_after        {}", v.not_after.map_or("-".into(), |n| n.to_string()))?;
        writeln!(
            f,
            "\n{}",
            if self.verified { "verified under the pins given" } else { "NOT verified under the pins given" }
        )
    }
}

/// A lenient policy that verifies everything but the hardware quote and the pins: the report's
/// structure, binding and expiry, to read its values.
fn structural_policy() -> Result<Policy> {
    Policy::builder().dangerous().skip_hardware_verification().any_workload().build()
}

fn hex48(b: &[u8; 48]) -> String {
    hex::encode(b)
}

/// Check a report fetched with `nonce`, at `now`, step by step; the verdict is the policy of
/// `config` (its pins), with `collateral` for the quote when given.
pub fn inspect_report(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    config: &ProxyConfig,
    collateral: Option<&Collateral>,
) -> Inspection {
    let pccs = config.pccs.clone().unwrap_or_else(|| DEFAULT_PCCS.to_owned());
    let mut out = Inspection { gateway: None, pccs, checks: Vec::new(), values: PinValues::default(), verified: false };
    let doc: Value = match serde_json::from_slice(report) {
        Ok(v) => v,
        Err(_) => {
            out.push("report", Outcome::Fail, "not JSON");
            return out;
        }
    };
    let empty = Map::new();
    let top = doc.as_object().unwrap_or(&empty);
    let attestation = top.get("attestation").and_then(Value::as_object).unwrap_or(&empty);
    let evidence = attestation.get("evidence").and_then(Value::as_object).unwrap_or(&empty);
    let keyset = attestation.get("workload_keyset").and_then(Value::as_object).unwrap_or(&empty);
    // `vm_config` is a JSON string (or, served by some gateways, an object).
    let vm_config = match evidence.get("vm_config") {
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok(),
        Some(v @ Value::Object(_)) => Some(v.clone()),
        _ => None,
    };
    out.values.vm_image = vm_config.as_ref().and_then(|c| c.get("image")).and_then(Value::as_str).map(str::to_owned);

    // 1. Shape and generation.
    match top.get("api_version").and_then(Value::as_str) {
        Some(crate::attest::API_VERSION) => {}
        other => {
            out.push("report", Outcome::Fail, format!("api_version is {other:?}, not aci/1"));
            return out;
        }
    }
    match generation::detect(top, attestation, keyset) {
        Ok(g) => {
            out.values.generation = Some(g.name().to_owned());
            out.push("report", Outcome::Pass, format!("aci/1, {} report generation", g.name()));
        }
        Err(e) => {
            out.push("report", Outcome::Fail, e.to_string());
            return out;
        }
    }

    // 2. The hardware quote.
    let raw_quote = evidence.get("quote").and_then(Value::as_str).and_then(hex::decode);
    let mut rt_mr3 = None;
    match &raw_quote {
        None => out.push("quote", Outcome::Fail, "the report carries no TDX quote"),
        Some(q) if q.starts_with(b"aci-stub-quote|") => {
            out.push("quote", Outcome::Fail, "a stub quote (the crate's test gateway), not TDX hardware")
        }
        Some(q) => match dcap::parse_tdx(q) {
            Err(e) => out.push("quote", Outcome::Fail, e.to_string()),
            Ok(parsed) => {
                if let Some(td) = parsed.report.as_td10() {
                    rt_mr3 = Some(td.rt_mr3);
                    out.values.boot_measurements =
                        Some([hex48(&td.mr_td), hex48(&td.rt_mr0), hex48(&td.rt_mr1), hex48(&td.rt_mr2)]);
                }
                match collateral {
                    None => out.push(
                        "quote",
                        Outcome::Skip,
                        format!(
                            "TDX v{} quote parsed; not verified to Intel's root: no collateral (inspect online \
                             fetches it from --pccs, default {DEFAULT_PCCS})",
                            parsed.header.version
                        ),
                    ),
                    Some(c) => match dcap::verify_quote(q, c, now, None) {
                        Ok(v) => {
                            out.values.boot_measurements_verified = true;
                            out.values.tcb_status = Some(v.tcb_status().to_owned());
                            out.values.advisory_ids = v.advisory_ids().to_vec();
                            rt_mr3 = Some(*v.rt_mr3());
                            out.push(
                                "quote",
                                Outcome::Pass,
                                format!("verified to Intel's root; TCB status {}", v.tcb_status()),
                            );
                        }
                        Err(e) => out.push("quote", Outcome::Fail, e.to_string()),
                    },
                }
            }
        },
    }

    // 3-6. Binding, expiry, capabilities and keys: the verifier itself, without the quote and
    // the pins.
    let structural = structural_policy().and_then(|p| verify_report(report, nonce, now, &p));
    match &structural {
        Ok(k) => {
            record_keyset(&mut out.values, k);
            out.push("binding", Outcome::Pass, format!("report_data binds keyset {} and our nonce", k.digest()));
            out.push(
                "expiry",
                Outcome::Pass,
                format!("not_after {} ({} s from now)", k.not_after(), k.not_after().saturating_sub(now)),
            );
            out.push(
                "keys",
                Outcome::Pass,
                format!("{} E2EE v2 key(s), {} TLS key(s)", k.e2ee_keys().len(), k.tls_keys().len()),
            );
        }
        Err(e) => {
            let name = match e.kind() {
                ErrorKind::Attestation(crate::AttestationFailure::Expired)
                | ErrorKind::Attestation(crate::AttestationFailure::NotAfterTooFar) => "expiry",
                ErrorKind::Attestation(crate::AttestationFailure::E2eeUnsupported) => "keys",
                _ => "binding",
            };
            out.push(name, Outcome::Fail, e.to_string());
            if let Ok(d) = attestation.get("workload_keyset").map(keyset_digest).transpose() {
                out.values.keyset_digest = d;
            }
        }
    }

    // 7. The event log and the values it measures.
    let app_compose = evidence.get("app_compose").and_then(Value::as_str);
    let mut app_id = None;
    match evidence.get("event_log").and_then(Value::as_str).map(eventlog::parse) {
        None => out.push("event log", Outcome::Fail, "the report carries no event log"),
        Some(Err(e)) => out.push("event log", Outcome::Fail, e.to_string()),
        Some(Ok(events)) => {
            match (rt_mr3, eventlog::replay_rtmr(&events, 3)) {
                (_, Err(e)) => out.push("event log", Outcome::Fail, e.to_string()),
                (Some(q), Ok(r)) if q == r => {
                    out.push("event log", Outcome::Pass, format!("{} events replay to the quote's RTMR3", events.len()))
                }
                (Some(_), Ok(_)) => out.push("event log", Outcome::Fail, "does not replay to the quote's RTMR3"),
                (None, Ok(_)) => out.push("event log", Outcome::Skip, "no quote to replay it against"),
            }
            match eventlog::measured(&events, app_compose) {
                Ok(m) => {
                    out.values.compose_hash = m.compose_hash.map(hex::encode);
                    out.values.app_id = m.app_id.as_deref().map(hex::encode);
                    out.values.os_image_hash = m.os_image_hash.as_deref().map(hex::encode);
                    out.values.production_os =
                        m.os_image_hash.as_deref().and_then(anchor::production_os_image).map(str::to_owned);
                    out.values.kms_identity = m
                        .key_provider
                        .as_deref()
                        .map(anchor::KmsIdentity::from_payload)
                        .filter(|k| !k.id.is_empty())
                        .map(|k| k.id_hex());
                    app_id = m.app_id;
                    let compose = match app_compose {
                        Some(_) => "app_compose hashes to the measured compose-hash",
                        None => "no app_compose in the report: its compose hash is measured but has no preimage",
                    };
                    let kms = if out.values.kms_identity.is_some() { ", KMS identity" } else { "; no KMS identity" };
                    out.push(
                        "identity",
                        Outcome::Pass,
                        format!("app id, compose hash, OS image hash{kms} read; {compose}"),
                    );
                }
                Err(e) => out.push("identity", Outcome::Fail, e.to_string()),
            }
        }
    }

    // 8. Key custody: the root every chain recovers to.
    match (evidence.get("key_custody").filter(|v| !v.is_null()), &app_id) {
        (None, _) => out.push("key custody", Outcome::Skip, "the report carries no key_custody"),
        (Some(_), None) => out.push("key custody", Outcome::Skip, "no measured app id to recover the chains with"),
        (Some(kc), Some(app_id)) => match custody_root(kc, app_id) {
            Ok((root, n)) => {
                out.values.kms_root = Some(hex::encode(root));
                out.push("key custody", Outcome::Pass, format!("{n} chain(s) recover one KMS root"));
            }
            Err(e) => out.push("key custody", Outcome::Fail, e),
        },
    }

    // 9. The verdict: the pins given.
    let verdict = config.policy().and_then(|policy| match collateral {
        Some(c) => verify_report_with_collateral(report, nonce, now, &policy, c),
        None => verify_report(report, nonce, now, &policy),
    });
    match verdict {
        Ok(k) => {
            out.verified = true;
            record_keyset(&mut out.values, &k);
            out.push("pins", Outcome::Pass, "verified under the pins given");
        }
        Err(e) if e.kind() == ErrorKind::Attestation(crate::AttestationFailure::HardwareUnverifiable) => {
            let why = "the quote cannot be verified to Intel's root without collateral: inspect the gateway online \
                       (it fetches collateral from --pccs)";
            out.push("pins", Outcome::Fail, why);
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            out.push("pins", Outcome::Fail, first);
        }
    }
    out
}

fn record_keyset(v: &mut PinValues, k: &AttestedKeyset) {
    v.keyset_digest = Some(k.digest().to_owned());
    v.not_after = Some(k.not_after());
    v.tls_keys = k.tls_keys().iter().map(|t| (t.domain.clone(), t.spki_sha256.clone())).collect();
    v.e2ee_keys = k
        .e2ee_keys()
        .iter()
        .map(|e| (e.key_id().to_owned(), e.suite().algo().to_owned(), e.public_key_text().to_owned()))
        .collect();
    if let Some(b) = k.boot_measurements() {
        v.boot_measurements = Some([hex48(b.mrtd()), hex48(b.rtmr0()), hex48(b.rtmr1()), hex48(b.rtmr2())]);
        v.boot_measurements_verified = true;
    }
    if let Some(s) = k.tcb_status() {
        v.tcb_status = Some(s.to_owned());
        v.advisory_ids = k.advisory_ids().to_vec();
    }
}

/// The KMS root every custody chain of `key_custody` recovers to, and how many chains.
fn custody_root(key_custody: &Value, app_id: &[u8]) -> std::result::Result<([u8; 33], usize), String> {
    let entries = key_custody.get("keys").and_then(Value::as_array).ok_or("key_custody has no keys array")?;
    let mut root = None;
    let mut n = 0;
    for entry in entries.iter().filter_map(Value::as_object) {
        let (Some(purpose), Some(role)) =
            (entry.get("purpose").and_then(Value::as_str), entry.get("role").and_then(Value::as_str))
        else {
            continue;
        };
        let signed = if entry.contains_key("kms_public_key") { "kms_public_key" } else { "public_key" };
        // Ed25519 entries of the older generation cannot be checked from outside.
        let Ok(key) = custody::secp256k1_member(entry, signed, role) else { continue };
        let chain = custody::signature_chain(entry, role).map_err(|e| e.to_string())?;
        let keys = custody::recover_chain(purpose, &key, app_id, &chain, role).map_err(|e| e.to_string())?;
        match root {
            None => root = Some(keys.root),
            Some(r) if r != keys.root => return Err(format!("the {role} chain recovers another KMS root")),
            Some(_) => {}
        }
        n += 1;
    }
    root.map(|r| (r, n)).ok_or_else(|| "no custody chain could be checked".to_owned())
}

/// Fetch the gateway's report with a fresh nonce over the proxy's HTTP client (HTTPS through the
/// attested connector; the key the server presented must be listed by the report), the quote's
/// collateral from `config.pccs` (default [`DEFAULT_PCCS`]), and inspect it at the current time.
pub async fn inspect_gateway(config: &ProxyConfig) -> Result<Inspection> {
    let gateway = config.gateway.clone().ok_or_else(|| Error::new(ErrorKind::Config, "no gateway to inspect"))?;
    let base: Uri = gateway
        .parse()
        .map_err(|e| Error::new(ErrorKind::Config, format!("invalid gateway URL {gateway:?}")).with_source(e))?;
    let pccs: Uri = config
        .pccs
        .as_deref()
        .unwrap_or(DEFAULT_PCCS)
        .parse()
        .map_err(|e| Error::new(ErrorKind::Config, "invalid PCCS URL").with_source(e))?;
    let keys = KeyHandle::new();
    let mut fetch_config = config.clone();
    fetch_config.pccs = Some(pccs.to_string());
    let client = crate::proxy::http_client(&base, &keys, &fetch_config, Some(&pccs))?;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let uri = crate::proxy::upstream_uri(&base, &format!("/v1/aci/attestation?nonce={}", hex::encode(nonce)))?;
    let req = Request::get(uri)
        .body(RequestBody::from(Bytes::new()))
        .map_err(|e| Error::new(ErrorKind::Config, "cannot build the report request").with_source(e))?;
    let res = client
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| Error::new(ErrorKind::Transport, "cannot fetch the attestation report").with_source(e))?;
    let channel = res.extensions().get::<ChannelInfo>().cloned();
    let status = res.status();
    let body = Limited::new(res.into_body(), 4 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| Error::new(ErrorKind::Transport, "reading the attestation report failed").with_source(e))?
        .to_bytes();
    if !status.is_success() {
        return Err(Error::new(ErrorKind::Gateway, format!("the gateway answered the report request with {status}")));
    }
    let now = keys.now();
    let collateral = match raw_quote(&body) {
        Some(q) if !q.starts_with(b"aci-stub-quote|") => Some(dcap::fetch_collateral(client, &pccs, &q).await),
        _ => None,
    };
    let mut out = inspect_report(&body, &nonce, now, config, collateral.as_ref().and_then(|c| c.as_ref().ok()));
    out.gateway = Some(gateway);
    if let Some(Err(e)) = &collateral {
        let at = out.checks.iter().position(|c| c.name == "quote").unwrap_or(out.checks.len());
        out.checks
            .insert(at, Check { name: "collateral", outcome: Outcome::Fail, detail: format!("from {pccs}: {e}") });
    }
    // The channel: the TLS key the server presented is one the report lists for this host.
    let check = match (&channel, base.scheme_str()) {
        (Some(c), _) => {
            let listed = out.values.tls_keys.iter().any(|(d, s)| {
                *s == c.spki_sha256_hex()
                    && d.as_deref().is_none_or(|d| d.trim_end_matches('.').eq_ignore_ascii_case(c.host()))
            });
            let outcome = if listed { Outcome::Pass } else { Outcome::Fail };
            Check {
                name: "tls channel",
                outcome,
                detail: format!(
                    "{} presented SPKI {}{}",
                    c.host(),
                    c.spki_sha256_hex(),
                    if listed { ", listed by the report" } else { ", NOT listed by the report" }
                ),
            }
        }
        (None, Some("https")) => {
            Check { name: "tls channel", outcome: Outcome::Fail, detail: "no channel information".into() }
        }
        (None, _) => Check {
            name: "tls channel",
            outcome: Outcome::Skip,
            detail: "plain HTTP (loopback): no TLS channel to bind".into(),
        },
    };
    if check.outcome == Outcome::Fail {
        out.verified = false;
    }
    let at = out.checks.len().saturating_sub(1);
    out.checks.insert(at, check);
    Ok(out)
}

fn raw_quote(report: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(report).ok()?;
    v.get("attestation")?.get("evidence")?.get("quote")?.as_str().and_then(hex::decode)
}
