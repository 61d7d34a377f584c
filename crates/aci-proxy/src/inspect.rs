//! `aci-proxy inspect`: what a gateway runs, what to pin, and whether it verifies under the pins
//! given.
//!
//! [`inspect_report`] is tower-aci's step-by-step check of a report
//! ([`tower_aci::attest::inspect`]), one [`Check`] per step — passed, failed or skipped, with why
//! — and the values an operator pins ([`PinValues`]), verified under the pins of a
//! [`ProxyConfig`]; [`Inspection`] adds what the proxy prints and writes (the transcript, JSON,
//! an `aci-proxy.toml`). [`inspect_gateway`] fetches the report with a fresh nonce over the
//! proxy's own HTTP client (HTTPS through the attested connector, whose presented key the
//! report must list) and the quote's collateral from a PCCS.
//!
//! The values are trusted on first use: compare them with what the operator publishes before
//! pinning them.

use std::fmt;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_aci::attest::dcap::{self, Collateral};
use tower_aci::attest::inspect::ReportInspection;
pub use tower_aci::attest::inspect::{Check, Outcome, PinValues};
use tower_aci::attest::{ChannelInfo, KeyHandle};
use tower_aci::e2ee::RequestBody;
use tower_aci::error::{Error, Result};

use crate::config::ProxyConfig;

/// The PCCS `aci-proxy inspect` fetches collateral from when none is given: the client's and
/// the proxy's default, [`tower_aci::client::DEFAULT_PCCS`].
pub const DEFAULT_PCCS: &str = tower_aci::client::DEFAULT_PCCS;

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
    /// The inspection as JSON (`--json`).
    pub fn to_json(&self) -> Value {
        let v = &self.values;
        json!({
            "gateway": self.gateway,
            "verified": self.verified,
            "checks": self.checks.iter().map(|c| json!({"check": c.name, "outcome": c.outcome.as_str(), "detail": c.detail})).collect::<Vec<_>>(),
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
            writeln!(f, "{:<4} {:<13} {}", c.outcome.as_str(), c.name, c.detail)?;
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

/// Check a report fetched with `nonce`, at `now`, step by step
/// ([`tower_aci::attest::inspect::inspect_report`]); the verdict is the policy of `config` (its
/// pins: when they are not enough, the `pins` check fails saying which to add), with
/// `collateral` for the quote when given.
pub fn inspect_report(
    report: &[u8],
    nonce: &[u8; 32],
    now: u64,
    config: &ProxyConfig,
    collateral: Option<&Collateral>,
) -> Inspection {
    let pccs = config.pccs.clone().unwrap_or_else(|| DEFAULT_PCCS.to_owned());
    let policy = config.policy();
    let ReportInspection { mut checks, values, verified, .. } =
        tower_aci::attest::inspect::inspect_report(report, nonce, now, policy.as_ref().ok(), collateral);
    for check in &mut checks {
        if check.name == "quote" && check.outcome == Outcome::Skip && collateral.is_none() {
            check.detail.push_str(&format!(" (inspect online fetches it from --pccs, default {DEFAULT_PCCS})"));
        }
    }
    let read = checks.first().is_some_and(|c| c.outcome != Outcome::Fail);
    if let (Err(e), true) = (&policy, read) {
        let first = e.to_string().lines().next().unwrap_or_default().to_owned();
        checks.push(Check::new("pins", Outcome::Fail, first));
    }
    Inspection { gateway: None, pccs, checks, values, verified }
}

/// Fetch the gateway's report with a fresh nonce over the proxy's HTTP client (HTTPS through the
/// attested connector; the key the server presented must be listed by the report), the quote's
/// collateral from `config.pccs` (default [`DEFAULT_PCCS`]), and inspect it at the current time.
pub async fn inspect_gateway(config: &ProxyConfig) -> Result<Inspection> {
    let gateway = config.gateway.clone().ok_or_else(|| Error::config("no gateway to inspect"))?;
    let base: Uri =
        gateway.parse().map_err(|e| Error::config(format!("invalid gateway URL {gateway:?}")).with_source(e))?;
    let pccs: Uri = config
        .pccs
        .as_deref()
        .unwrap_or(DEFAULT_PCCS)
        .parse()
        .map_err(|e| Error::config("invalid PCCS URL").with_source(e))?;
    let keys = KeyHandle::new();
    let mut fetch_config = config.clone();
    fetch_config.pccs = Some(pccs.to_string());
    let client = crate::upstream::http_client(&base, &keys, &fetch_config, Some(&pccs))?;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let uri = crate::upstream::upstream_uri(&base, &format!("/v1/aci/attestation?nonce={}", const_hex::encode(nonce)))
        .map_err(|e| Error::config("invalid gateway URL").with_source(e))?;
    let req = Request::get(uri)
        .body(RequestBody::from(Bytes::new()))
        .map_err(|e| Error::config("cannot build the report request").with_source(e))?;
    let res = client
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| Error::transport("cannot fetch the attestation report").with_source(e))?;
    let channel = res.extensions().get::<ChannelInfo>().cloned();
    let status = res.status();
    let body = Limited::new(res.into_body(), 4 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| Error::transport("reading the attestation report failed").with_source(e))?
        .to_bytes();
    if !status.is_success() {
        return Err(Error::transport(format!("the gateway answered the report request with {status}")));
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
        out.checks.insert(at, Check::new("collateral", Outcome::Fail, format!("from {pccs}: {e}")));
    }
    // The channel: the TLS key the server presented is one the report lists for this host.
    let check = match (&channel, base.scheme_str()) {
        (Some(c), _) => {
            let listed = out.values.tls_keys.iter().any(|(d, s)| {
                *s == c.spki_sha256_hex()
                    && d.as_deref().is_none_or(|d| d.trim_end_matches('.').eq_ignore_ascii_case(c.host()))
            });
            let outcome = if listed { Outcome::Pass } else { Outcome::Fail };
            Check::new(
                "tls channel",
                outcome,
                format!(
                    "{} presented SPKI {}{}",
                    c.host(),
                    c.spki_sha256_hex(),
                    if listed { ", listed by the report" } else { ", NOT listed by the report" }
                ),
            )
        }
        (None, Some("https")) => Check::new("tls channel", Outcome::Fail, "no channel information"),
        (None, _) => Check::new("tls channel", Outcome::Skip, "plain HTTP (loopback): no TLS channel to bind"),
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
    v.get("attestation")?
        .get("evidence")?
        .get("quote")?
        .as_str()
        .filter(|q| !q.starts_with("0x") && !q.starts_with("0X"))
        .and_then(|q| const_hex::decode(q).ok())
}
