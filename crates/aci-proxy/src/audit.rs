//! The audit file: verified receipts, byte for byte, with the facts of their exchange and the
//! attestation report their keyset was verified from, as JSON lines that
//! [`verify_audit`] re-verifies offline.
//!
//! Two kinds of line:
//!
//! ```text
//! {"type":"keyset","digest":"sha256:…","nonce":"<64 hex>","verified_at":1750000000,"report":"<the report's exact JSON text>"}
//! {"type":"receipt","verified_at":…,"keyset_digest":"sha256:…","rule":"exact"|"same_key","exchange":{…},"receipt":"<the receipt's exact JSON text>"}
//! ```
//!
//! A keyset line is written before the first receipt verified under it. A receipt line's
//! `keyset_digest` is the keyset that verified it and `rule` how
//! ([`KeysetMatch`](tower_aci::receipt::KeysetMatch)): `exact` — the receipt names that keyset —
//! or `same_key` — the receipt names a keyset that could not be attested, and was accepted
//! because its signing key is a receipt key of that attested keyset. Re-verification verifies
//! each report again — with the nonce it was fetched with, at the time it was verified, under
//! the policy given — and each receipt under its recorded rule (an `exact` line only against
//! the keyset the receipt names, a `same_key` line only by the same-key rule against the
//! recorded keyset, which a receipt policy requiring the exact keyset refuses) and against the
//! recorded exchange (request hash, exact response hash, endpoint, model, receipt id). A line
//! without `rule` (written before it was recorded) is an `exact` line.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use const_hex as hex;
use tower_aci::attest::{AttestedKeyset, Policy, verify_report};
use tower_aci::error::{Error, Result};
use tower_aci::receipt::Receipt;
use tower_aci::receipt::{ExchangeRecord, KeysetMatch, Keysets, ReceiptPolicy, VerifiedReceipt, verify_exchange};

/// Appends verified receipts (and the reports of their keysets) to a JSON-lines file.
pub(crate) struct AuditLog {
    file: tokio::sync::Mutex<tokio::fs::File>,
    written_keysets: Mutex<HashSet<String>>,
}

impl AuditLog {
    pub(crate) async fn open(path: &Path) -> Result<AuditLog> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|e| Error::config(format!("cannot open the audit file {}", path.display())).with_source(e))?;
        Ok(AuditLog { file: tokio::sync::Mutex::new(file), written_keysets: Mutex::default() })
    }

    /// Append one verified receipt with the rule it verified under, preceded by its keyset's
    /// report if not written yet.
    pub(crate) async fn append(&self, verified: &VerifiedReceipt, record: &ExchangeRecord) -> Result<()> {
        let (keyset, receipt) = (verified.keyset(), verified.receipt());
        // One writer at a time: the keyset line is written once, before its first receipt.
        let mut file = self.file.lock().await;
        let mut lines = String::new();
        let digest = keyset.digest();
        let new_keyset = self.written_keysets.lock().map(|w| !w.contains(digest)).unwrap_or(true);
        if new_keyset {
            // The exact report the keyset was verified from, and the nonce it answered.
            match keyset.report() {
                [] => tracing::warn!(
                    digest,
                    "the report of this keyset was not kept; its receipts cannot be re-verified offline"
                ),
                report => {
                    let text = String::from_utf8_lossy(report);
                    let line = json!({"type": "keyset", "digest": digest, "nonce": hex::encode(keyset.nonce()),
                        "verified_at": keyset.verified_at(), "report": text});
                    lines.push_str(&line.to_string());
                    lines.push('\n');
                }
            }
        }
        let exchange = json!({
            "path": record.path(),
            "model": record.model(),
            "receipt_id": record.receipt_id(),
            "request_sha256": hex::encode(record.request_body_sha256()),
            "response_sha256": record.response_body_sha256().map(hex::encode),
            "streamed": record.streamed(),
            "suite": record.suite().map(|s| s.algo()),
            "e2ee_public_key": record.e2ee_public_key(),
            "served_by": record.keyset_digest(),
        });
        let text = String::from_utf8_lossy(receipt.as_bytes());
        let line = json!({"type": "receipt", "verified_at": keyset.verified_at().max(receipt.served_at()),
            "keyset_digest": digest, "rule": rule_name(verified.keyset_match()), "exchange": exchange, "receipt": text});
        lines.push_str(&line.to_string());
        lines.push('\n');
        file.write_all(lines.as_bytes())
            .await
            .and(file.flush().await)
            .map_err(|e| Error::transport("cannot append to the audit file").with_source(e))?;
        if new_keyset {
            if let Ok(mut w) = self.written_keysets.lock() {
                w.insert(digest.to_owned());
            }
        }
        Ok(())
    }
}

impl AuditLog {
    /// Flush what was appended to the disk (on shutdown).
    pub(crate) async fn sync(&self) -> Result<()> {
        let file = self.file.lock().await;
        file.sync_all().await.map_err(|e| Error::transport("cannot flush the audit file").with_source(e))
    }
}

/// The outcome of [`verify_audit`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct AuditSummary {
    /// Reports that verified again.
    pub keysets_verified: usize,
    /// Receipts that verified again.
    pub receipts_verified: usize,
    /// Lines that did not verify, with why (1-based line numbers).
    pub failures: Vec<(usize, LineFailure)>,
}

impl AuditSummary {
    /// Whether every line verified.
    pub fn is_clean(&self) -> bool {
        self.failures.is_empty()
    }
}

/// How a receipt line spells the rule its receipt verified under.
fn rule_name(rule: KeysetMatch) -> &'static str {
    match rule {
        KeysetMatch::Exact => "exact",
        KeysetMatch::SameKey => "same_key",
        // A rule added later: written as such, and refused when the file is verified.
        _ => "unknown",
    }
}

/// One attested keyset, offered to the verifier for the same-key rule only: a `same_key` line is
/// not re-verified as exact.
struct SameKeyOnly(Arc<AttestedKeyset>);

impl Keysets for SameKeyOnly {
    fn keyset_for_digest(&self, _digest: &str) -> Option<Arc<AttestedKeyset>> {
        None
    }

    fn same_policy_keysets(&self) -> Vec<Arc<AttestedKeyset>> {
        vec![self.0.clone()]
    }
}

/// Hex (either case) without a `0x` prefix, as the audit file writes it.
fn strict_hex(text: &str) -> Option<Vec<u8>> {
    if text.starts_with("0x") || text.starts_with("0X") {
        return None;
    }
    const_hex::decode(text).ok()
}

fn bad_line(message: impl Into<String>) -> LineFailure {
    LineFailure::Malformed(message.into())
}

/// Why a line of an audit file did not verify.
#[derive(Debug)]
#[non_exhaustive]
pub enum LineFailure {
    /// Not a line `aci-proxy` writes, or one that contradicts itself: not JSON, a member missing
    /// or malformed, a receipt that verifies under another rule or keyset than the line records,
    /// a `same_key` line whose vouching keyset has no verified line before it.
    Malformed(String),
    /// Its report or its receipt failed verification: tower-aci's verdict, with its kind
    /// (`Attestation(…)`, `Receipt(…)`).
    NotVerified(Error),
}

impl LineFailure {
    /// The library's verdict, when the line was read but did not verify.
    pub fn error(&self) -> Option<&Error> {
        match self {
            LineFailure::NotVerified(e) => Some(e),
            LineFailure::Malformed(_) => None,
        }
    }
}

impl std::fmt::Display for LineFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineFailure::Malformed(why) => write!(f, "audit line: {why}"),
            LineFailure::NotVerified(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LineFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error().map(|e| e as _)
    }
}

impl From<Error> for LineFailure {
    fn from(e: Error) -> Self {
        LineFailure::NotVerified(e)
    }
}

/// Re-verify an audit file's text offline: every report under `policy` (at the time and with
/// the nonce it was verified with), every receipt against the keyset it names and its recorded
/// exchange under `receipts`.
///
/// A report whose policy needs hardware verification needs collateral in the policy; a stub
/// quote (the local test gateway) needs a `dangerous()` policy that accepts it.
pub fn verify_audit(text: &str, policy: &Policy, receipts: &ReceiptPolicy) -> AuditSummary {
    let mut summary = AuditSummary::default();
    let mut keysets: Vec<Arc<AttestedKeyset>> = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let n = n + 1;
        let outcome = serde_json::from_str::<Value>(line).map_err(|_| bad_line("not JSON")).and_then(|v| {
            match v.get("type").and_then(Value::as_str) {
                Some("keyset") => verify_keyset_line(&v, policy).map(|k| {
                    keysets.push(Arc::new(k));
                    summary.keysets_verified += 1;
                }),
                Some("receipt") => verify_receipt_line(&v, &keysets, receipts).map(|()| summary.receipts_verified += 1),
                _ => Err(bad_line("unknown type")),
            }
        });
        if let Err(e) = outcome {
            summary.failures.push((n, e));
        }
    }
    summary
}

fn verify_keyset_line(v: &Value, policy: &Policy) -> std::result::Result<AttestedKeyset, LineFailure> {
    let report = v.get("report").and_then(Value::as_str).ok_or_else(|| bad_line("keyset without report"))?;
    let nonce: [u8; 32] = v
        .get("nonce")
        .and_then(Value::as_str)
        .and_then(strict_hex)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_line("keyset nonce is not 32 bytes of hex"))?;
    let at = v.get("verified_at").and_then(Value::as_u64).ok_or_else(|| bad_line("keyset without verified_at"))?;
    let keyset = verify_report(report.as_bytes(), &nonce, at, policy)?;
    if v.get("digest").and_then(Value::as_str) != Some(keyset.digest()) {
        return Err(bad_line("the keyset line's digest is not its report's"));
    }
    Ok(keyset)
}

fn verify_receipt_line(
    v: &Value,
    keysets: &[Arc<AttestedKeyset>],
    policy: &ReceiptPolicy,
) -> std::result::Result<(), LineFailure> {
    let receipt = v.get("receipt").and_then(Value::as_str).ok_or_else(|| bad_line("receipt line without receipt"))?;
    let receipt = Receipt::from_bytes(Bytes::copy_from_slice(receipt.as_bytes()))?;
    let x = v.get("exchange").ok_or_else(|| bad_line("receipt line without exchange"))?;
    let s = |k: &str| x.get(k).and_then(Value::as_str);
    let hash = |k: &str| -> std::result::Result<[u8; 32], LineFailure> {
        s(k).and_then(strict_hex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad_line("a hash is not 32 bytes of hex"))
    };
    let mut record = ExchangeRecord::builder(
        s("path").ok_or_else(|| bad_line("exchange without path"))?,
        s("model").ok_or_else(|| bad_line("exchange without model"))?,
    )
    .request_body_sha256(hash("request_sha256")?)
    .response_body_sha256(hash("response_sha256")?)
    .streamed(x.get("streamed").and_then(Value::as_bool).unwrap_or(false));
    if let Some(id) = s("receipt_id") {
        record = record.receipt_id(id);
    }
    if let Some(suite) = s("suite").and_then(tower_aci::protocol::Suite::from_algo) {
        record = record.suite(suite);
    }
    if let Some(d) = s("served_by") {
        record = record.keyset_digest(d);
    }
    if let Some(k) = s("e2ee_public_key") {
        record = record.e2ee_public_key(k);
    }
    let record = record.build()?;
    let digest =
        v.get("keyset_digest").and_then(Value::as_str).ok_or_else(|| bad_line("receipt line without keyset_digest"))?;
    let rule = match v.get("rule") {
        None => KeysetMatch::Exact,
        Some(r) => match r.as_str() {
            Some("exact") => KeysetMatch::Exact,
            Some("same_key") => KeysetMatch::SameKey,
            _ => return Err(bad_line("unknown rule (exact or same_key)")),
        },
    };
    let named = receipt.workload_keyset_digest();
    let verified = match rule {
        KeysetMatch::Exact => {
            if named != digest {
                return Err(bad_line("an exact line's receipt names another keyset than the line's keyset_digest"));
            }
            verify_exchange(&receipt, &record, keysets, policy)?
        }
        KeysetMatch::SameKey => {
            if named == digest {
                return Err(bad_line(
                    "a same_key line's receipt names the keyset that vouched for it: it is an exact match",
                ));
            }
            let vouching = keysets.iter().find(|k| k.digest() == digest).cloned().ok_or_else(|| {
                bad_line(format!(
                    "the keyset {digest} that vouched for this receipt has no verified report in the file"
                ))
            })?;
            verify_exchange(&receipt, &record, &SameKeyOnly(vouching), policy)?
        }
        _ => return Err(bad_line("unknown rule (exact or same_key)")),
    };
    if verified.keyset_match() != rule || verified.keyset().digest() != digest {
        return Err(bad_line("the receipt verifies under another rule or keyset than the line records"));
    }
    Ok(())
}
