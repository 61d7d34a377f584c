//! The channel check (ACI §1.1, §4; protocol.md §6.4 item 7): the TLS key of the connection a
//! report was served over must be listed in the keyset that report attests, for the hostname
//! the client connected to.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::task::AtomicWaker;

use crate::attest::keyset::{AttestedKeyset, normalize_host};
use crate::error::{AttestationFailure, Error, Result};
use crate::hex;

/// The TLS channel a response travelled over: the hostname the client connected to and the
/// SHA-256 of the SubjectPublicKeyInfo of the certificate the server presented.
///
/// The attested TLS connector (feature `rustls`) puts one into the extensions of every response
/// it carries (hyper-util's `Connected::extra`). The [`KeyProvider`](crate::attest::KeyProvider)
/// reads it from the report's response and refuses a verified keyset that does not list this
/// SPKI for this host ([`ChannelBinding`](AttestationFailure::ChannelBinding)). A report fetched
/// over a transport that adds none is refused for an `https://` gateway
/// ([`ChannelBinding`](AttestationFailure::ChannelBinding)), and so is an E2EE answer; only plain
/// HTTP to a loopback address, or the `dangerous().accept_unbound_channel()` opt-outs of the
/// provider and the layer, go without.
#[derive(Clone)]
pub struct ChannelInfo {
    host: Arc<str>,
    spki_sha256: [u8; 32],
    state: Arc<ChannelState>,
}

/// Shared between a connection and every `ChannelInfo` of its responses.
#[derive(Default)]
pub(crate) struct ChannelState {
    revoked: AtomicBool,
    /// Woken on revocation, so an idle connection closes itself.
    pub(crate) reader: AtomicWaker,
}

impl ChannelState {
    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

impl ChannelInfo {
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn new(host: &str, spki_sha256: [u8; 32], state: Arc<ChannelState>) -> Self {
        ChannelInfo { host: normalize_host(host).to_ascii_lowercase().into(), spki_sha256, state }
    }

    /// The hostname (or IP address) the client connected to, lowercase, without a trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// SHA-256 of the server certificate's SubjectPublicKeyInfo (DER).
    pub fn spki_sha256(&self) -> &[u8; 32] {
        &self.spki_sha256
    }

    /// [`spki_sha256`](Self::spki_sha256) in lowercase hex, as `tls_public_keys[].spki_sha256`
    /// spells it.
    pub fn spki_sha256_hex(&self) -> String {
        hex::encode(self.spki_sha256)
    }

    /// Stop using this connection: nothing more is written on it, and it closes (and leaves the
    /// connection pool) the next time it is polled.
    pub(crate) fn revoke(&self) {
        self.state.revoked.store(true, Ordering::Release);
        self.state.reader.wake();
    }

    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    pub(crate) fn state(&self) -> &ChannelState {
        &self.state
    }

    /// Whether the connection was revoked (a keyset that listed its key was refused).
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn is_revoked(&self) -> bool {
        self.state.is_revoked()
    }
}

impl fmt::Debug for ChannelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelInfo")
            .field("host", &self.host)
            .field("spki_sha256", &self.spki_sha256_hex())
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

/// The SPKIs `keyset` lists for `host`, for messages.
pub(crate) fn attested_for(keyset: &AttestedKeyset, host: &str) -> String {
    let listed: Vec<&str> = keyset.tls_keys_for_host(host).map(|k| k.spki_sha256.as_str()).collect();
    if listed.is_empty() {
        if keyset.tls_keys().is_empty() {
            "none (the keyset publishes no TLS key)".to_owned()
        } else {
            format!("none for {host}")
        }
    } else {
        listed.join(", ")
    }
}

/// Whether `host` (as a URI spells it: an IPv6 address may keep its brackets) is a loopback
/// address: `127.0.0.0/8`, `::1` (also as an IPv4-mapped address), or the name `localhost`.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = normalize_host(host);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

/// What a request to a gateway URL needs from the channel its answer comes back over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelRule {
    /// The answer must carry a [`ChannelInfo`]: it came over a connection bound to the attested
    /// keyset. Every `https://` URL (and any URL that is not plain HTTP to loopback).
    Bound,
    /// No channel evidence is asked for: plain HTTP to a loopback address, or the user gave up
    /// the channel binding (`dangerous().accept_unbound_channel()`).
    Unchecked,
}

/// The rule for a gateway URL of this scheme and host. Plain `http://` is allowed only to a
/// loopback address (an on-path attacker elsewhere could read the request and forge the whole
/// answer); anything else fails with [`Config`](crate::error::ErrorKind::Config) before a byte is sent,
/// unless `unbound_ok` (the user's `dangerous()` opt-out). `what` names the URL for messages.
pub(crate) fn channel_rule(
    scheme: Option<&str>,
    host: Option<&str>,
    unbound_ok: bool,
    what: &str,
) -> Result<ChannelRule> {
    if unbound_ok {
        return Ok(ChannelRule::Unchecked);
    }
    let plain = scheme.is_some_and(|s| s.eq_ignore_ascii_case("http"));
    if !plain {
        return Ok(ChannelRule::Bound);
    }
    match host {
        Some(h) if is_loopback_host(h) => Ok(ChannelRule::Unchecked),
        host => Err(Error::new(
            crate::error::ErrorKind::Config,
            format!(
                "{what} is plain http:// to {host}, which is not a loopback address: anyone on the path could read \
                 the request and forge a complete answer that decrypts cleanly; use https:// through \
                 tower_aci::tls::AttestedTls (feature `rustls`), or http:// only to 127.0.0.1, ::1 or localhost",
                host = host.unwrap_or("(no host)"),
            ),
        )),
    }
}

/// The [`ChannelRule::Bound`] check of an answer: the response must name the channel it came
/// over (a [`ChannelInfo`] only this crate's attested connector makes), for the host the
/// request went to. `what` names the answer for messages; `opt_out` names the opt-out.
pub(crate) fn require_channel<'a>(
    extensions: &'a http::Extensions,
    host: Option<&str>,
    what: &str,
    opt_out: &str,
) -> Result<&'a ChannelInfo> {
    let host = host.map(|h| normalize_host(h.trim_start_matches('[').trim_end_matches(']')).to_ascii_lowercase());
    let shown = host.as_deref().unwrap_or("(no host)");
    let Some(channel) = extensions.get::<ChannelInfo>() else {
        return Err(Error::attestation(
            AttestationFailure::ChannelBinding,
            format!(
                "{what} from {shown} came over a connection that is not bound to the attested keyset (the response \
                 names no attested TLS channel): E2EE alone does not authenticate an answer, since anyone who sees \
                 the request can forge one; send it through tower_aci::tls::AttestedTls's connector (feature \
                 `rustls`), or opt out with {opt_out}"
            ),
        ));
    };
    if host.as_deref().is_some_and(|h| h != channel.host()) {
        return Err(Error::attestation(
            AttestationFailure::ChannelBinding,
            format!(
                "{what} for {shown} came over an attested TLS connection to another host ({other})",
                other = channel.host()
            ),
        ));
    }
    Ok(channel)
}

/// Whether the `workload_keyset` of a report that has *not* verified lists `channel`'s SPKI for
/// its host, read leniently (an entry that is not well formed names nothing): what attributes a
/// failed report to the holder of a TLS key the keyset itself names, and so lets it refuse the
/// keyset's digest (see `KeyProvider`'s refusal rule). Same matching as
/// `AttestedKeyset::lists_tls_key`.
pub(crate) fn unverified_keyset_names_channel(keyset: &serde_json::Value, channel: &ChannelInfo) -> bool {
    let seen = channel.spki_sha256_hex();
    let Some(entries) = keyset.get("tls_public_keys").and_then(serde_json::Value::as_array) else { return false };
    entries.iter().any(|entry| {
        let spki = entry.get("spki_sha256").and_then(serde_json::Value::as_str);
        let scoped = match entry.get("domain") {
            None | Some(serde_json::Value::Null) => true,
            Some(serde_json::Value::String(domain)) => normalize_host(domain).eq_ignore_ascii_case(channel.host()),
            Some(_) => false,
        };
        scoped && spki.is_some_and(|s| s.eq_ignore_ascii_case(&seen))
    })
}

/// The provider's check of the connection a report came over (when the transport says which).
/// A keyset that does not list the connection's SPKI for its host fails with `ChannelBinding`,
/// and the connection is revoked so the next fetch opens a fresh one. `None` is accepted here:
/// the caller decided ([`ChannelRule`]) that this report needs no channel.
pub(crate) fn check_report_channel(keyset: AttestedKeyset, channel: Option<&ChannelInfo>) -> Result<AttestedKeyset> {
    let Some(channel) = channel else { return Ok(keyset) };
    if keyset.lists_tls_key(channel.host(), channel.spki_sha256()) {
        return Ok(keyset);
    }
    channel.revoke();
    Err(Error::attestation(
        AttestationFailure::ChannelBinding,
        format!(
            "the report was served over a TLS connection to {host} whose certificate has SPKI sha256 {seen}, which \
             the verified keyset {digest} does not list for {host} (attested: {attested}); either TLS terminates \
             outside the attested workload, or the report was requested through a hostname the keyset does not \
             name",
            host = channel.host(),
            seen = channel.spki_sha256_hex(),
            digest = keyset.digest(),
            attested = attested_for(&keyset, channel.host()),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::report::parse_tls_keys;
    use crate::error::ErrorKind;
    use crate::protocol::keys::E2eeKey;
    use crate::protocol::suite::{SecretKey, Suite};

    /// `tls_public_keys` of the real production report (`tests/data/real_tdx_report_2026-06.json`):
    /// three domain-scoped entries.
    const TEE_REDPILL: &str = "11af02e1c69bb2227e9b65903010abb60fbb626930cd11b0866281bb291a352c";
    const PHALA: &str = "698c87b1ed32d3d67f23d14295fc443e91b82ad4e40482041ac1a9158c8212e2";
    const API_REDPILL: &str = "c2ebede7c2c632381123e3193b01f5f3fa45cc6c6327b2d0536749348ceeb408";

    /// A keyset carrying the real report's TLS entries, parsed by the report verifier's parser.
    fn real_keyset() -> AttestedKeyset {
        let report: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/real_tdx_report_2026-06.json")).unwrap();
        let keyset = report["attestation"]["workload_keyset"].as_object().unwrap();
        let tls_keys = parse_tls_keys(keyset).unwrap();
        assert_eq!(tls_keys.len(), 3);
        let key = SecretKey::from_bytes(Suite::X25519, &[0x55; 32]).unwrap().public_key();
        AttestedKeyset {
            digest: report["workload_keyset_digest"].as_str().unwrap().to_owned(),
            subject: None,
            not_after: u64::MAX,
            e2ee_keys: vec![E2eeKey::parse("k", Suite::X25519.algo(), key.to_hex()).unwrap()],
            selected: 0,
            receipt_keys: vec![],
            tls_keys,
            verified_at: 0,
            hardware_verified: false,
            generation: crate::attest::Generation::Legacy,
            hardware: None,
            anchor: crate::attest::Anchor::Unanchored,
            kms_identity: None,
            report: bytes::Bytes::new(),
            nonce: [0; 32],
        }
    }

    fn spki(hex_text: &str) -> [u8; 32] {
        hex::decode(hex_text).unwrap().try_into().unwrap()
    }

    fn channel(host: &str, spki_hex: &str) -> ChannelInfo {
        ChannelInfo::new(host, spki(spki_hex), Arc::default())
    }

    #[test]
    fn each_real_domain_accepts_its_own_spki_and_no_other() {
        let ks = real_keyset();
        let domains =
            [("tee.redpill.ai", TEE_REDPILL), ("inference.phala.com", PHALA), ("api.redpill.ai", API_REDPILL)];
        for (host, own) in domains {
            assert!(ks.lists_tls_key(host, &spki(own)), "{host}");
            for (other_host, other) in domains {
                if other_host != host {
                    assert!(!ks.lists_tls_key(host, &spki(other)), "{host} must refuse {other_host}'s SPKI");
                }
            }
            // Hostnames compare case-insensitively; a trailing dot is ignored.
            assert!(ks.lists_tls_key(&format!("{}.", host.to_uppercase()), &spki(own)));
        }
        // A host the keyset does not name has no entry (they are all domain-scoped).
        assert_eq!(ks.tls_keys_for_host("redpill.ai").count(), 0);
        assert!(!ks.lists_tls_key("evil.example", &spki(API_REDPILL)));
    }

    #[test]
    fn the_report_channel_must_be_listed_for_its_host() {
        let ks = real_keyset();
        // The right domain's SPKI: accepted, the connection left alone.
        let ok = channel("api.redpill.ai", API_REDPILL);
        assert!(check_report_channel(ks.clone(), Some(&ok)).is_ok());
        assert!(!ok.is_revoked());
        // Another domain's SPKI on api.redpill.ai: refused, naming what was seen and attested.
        let wrong = channel("API.redpill.ai.", PHALA);
        assert_eq!(wrong.host(), "api.redpill.ai");
        let e = check_report_channel(ks.clone(), Some(&wrong)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
        let m = e.to_string();
        assert!(m.contains(PHALA) && m.contains(API_REDPILL) && m.contains("api.redpill.ai"), "{m}");
        assert!(!m.contains(TEE_REDPILL), "only the entries for the host are listed: {m}");
        assert!(wrong.is_revoked(), "the connection that served it is revoked");
        // A hostname the keyset does not name.
        let e = check_report_channel(ks.clone(), Some(&channel("redpill.ai", API_REDPILL))).unwrap_err();
        assert!(e.to_string().contains("attested: none for redpill.ai"), "{e}");
        // No channel information (plain HTTP, another transport): no channel check.
        assert!(check_report_channel(ks, None).is_ok());
    }

    #[test]
    fn loopback_is_127_8_and_1_and_localhost_only() {
        for yes in ["127.0.0.1", "127.255.0.9", "::1", "[::1]", "[::ffff:127.0.0.1]", "localhost", "LocalHost."] {
            assert!(is_loopback_host(yes), "{yes}");
        }
        for no in ["10.0.0.1", "0.0.0.0", "[::]", "128.0.0.1", "localhost.example", "127.0.0.1.nip.io", "gw", ""] {
            assert!(!is_loopback_host(no), "{no}");
        }
    }

    #[test]
    fn channel_rules() {
        use ChannelRule::{Bound, Unchecked};
        let rule = |scheme, host, unbound| channel_rule(scheme, host, unbound, "the URL");
        assert_eq!(rule(Some("https"), Some("gw.example"), false).unwrap(), Bound);
        assert_eq!(rule(Some("https"), Some("127.0.0.1"), false).unwrap(), Bound, "https is always checked");
        assert_eq!(rule(None, None, false).unwrap(), Bound, "no scheme: the answer must show its channel");
        assert_eq!(rule(Some("http"), Some("127.0.0.1"), false).unwrap(), Unchecked);
        assert_eq!(rule(Some("HTTP"), Some("[::1]"), false).unwrap(), Unchecked);
        let e = rule(Some("http"), Some("gw.example"), false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("http:// to gw.example, which is not a loopback address"), "{e}");
        assert_eq!(rule(Some("http"), None, false).unwrap_err().kind(), ErrorKind::Config);
        // The opt-out gives up both checks.
        assert_eq!(rule(Some("http"), Some("gw.example"), true).unwrap(), Unchecked);
        assert_eq!(rule(Some("https"), Some("gw.example"), true).unwrap(), Unchecked);
    }

    #[test]
    fn an_answer_must_name_its_channel_for_the_request_host() {
        let mut ext = http::Extensions::new();
        let e = require_channel(&ext, Some("gw.example"), "the answer", "OPT-OUT").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
        assert!(e.to_string().contains("OPT-OUT") && e.to_string().contains("gw.example"), "{e}");
        ext.insert(channel("gw.example", API_REDPILL));
        assert_eq!(require_channel(&ext, Some("GW.example."), "the answer", "x").unwrap().host(), "gw.example");
        let e = require_channel(&ext, Some("other.example"), "the answer", "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Attestation(AttestationFailure::ChannelBinding));
    }

    #[test]
    fn an_unverified_keyset_names_a_channel_as_a_verified_one_would() {
        let report: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/real_tdx_report_2026-06.json")).unwrap();
        let keyset = &report["attestation"]["workload_keyset"];
        let verified = real_keyset();
        let domains = ["tee.redpill.ai", "inference.phala.com", "api.redpill.ai", "redpill.ai", "evil.example"];
        for host in domains {
            for spki_hex in [TEE_REDPILL, PHALA, API_REDPILL, &"ab".repeat(32)] {
                let ch = channel(host, spki_hex);
                assert_eq!(
                    unverified_keyset_names_channel(keyset, &ch),
                    verified.lists_tls_key(host, &spki(spki_hex)),
                    "{host} {spki_hex}"
                );
            }
        }
        // Uppercase hex, a trailing dot and an unscoped entry; malformed entries name nothing.
        let ks = serde_json::json!({"tls_public_keys": [
            {"spki_sha256": API_REDPILL.to_uppercase(), "domain": "API.redpill.ai."},
            {"spki_sha256": PHALA},
            {"spki_sha256": TEE_REDPILL, "domain": 7},
            {"spki_sha256": 7},
        ]});
        assert!(unverified_keyset_names_channel(&ks, &channel("api.redpill.ai", API_REDPILL)));
        assert!(unverified_keyset_names_channel(&ks, &channel("any.example", PHALA)));
        assert!(!unverified_keyset_names_channel(&ks, &channel("tee.redpill.ai", TEE_REDPILL)));
        assert!(!unverified_keyset_names_channel(&serde_json::json!({}), &channel("a", PHALA)));
        assert!(!unverified_keyset_names_channel(&serde_json::json!({"tls_public_keys": "x"}), &channel("a", PHALA)));
    }

    #[test]
    fn unscoped_entries_apply_to_every_host() {
        let mut ks = real_keyset();
        ks.tls_keys.push(crate::attest::TlsKey { spki_sha256: "ab".repeat(32), domain: None });
        assert!(ks.lists_tls_key("anything.example", &[0xab; 32]));
        assert!(ks.lists_tls_key("api.redpill.ai", &[0xab; 32]));
        assert_eq!(ks.tls_keys_for_host("api.redpill.ai").count(), 2);
    }
}
