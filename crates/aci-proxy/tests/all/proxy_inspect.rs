//! `aci-proxy inspect`: the real TDX capture offline through the binary, and a live HTTPS test
//! gateway over the pinned channel through the library.

use std::process::Command;

use aci_proxy::ProxyConfig;
use aci_proxy::inspect::{Outcome, inspect_gateway};
use aci_test_gateway::{GatewayConfig, GatewayTls, TestGateway};
use serde_json::Value;
use tower_aci::protocol::Suite;

use crate::attest_support::{REAL_APP_ID, REAL_BOOT, REAL_KMS_IDENTITY, REAL_KMS_ROOT};
use crate::support::stub_policy;

const CAPTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/real_tdx_report_2026-06.json");
const NONCE: &str = "0000000000000000000000000000000000000000000000000000000000000001";
/// `attestation.freshness.fetched_at` of the capture.
const FETCHED_AT: &str = "1782664738";
const COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";
const OS_IMAGE_HASH: &str = "de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9";

fn inspect(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aci-proxy"))
        .env_clear()
        .args(["inspect", "--report", CAPTURE, "--nonce", NONCE, "--at", FETCHED_AT])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn the_real_capture_shows_what_to_pin_with_one_line_per_check_and_verifies_only_under_its_pins() {
    // No pins: every check it can run, the values, and exit 1 (nothing pinned).
    let (code, out, err) = inspect(&["--json"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let pins = &v["pins"];
    assert_eq!(pins["app_id"], REAL_APP_ID);
    assert_eq!(pins["compose_hash"], COMPOSE_HASH);
    assert_eq!(pins["kms_root"], REAL_KMS_ROOT);
    assert!(pins["generation"].as_str().unwrap().starts_with("legacy"), "{}", pins["generation"]);
    assert!(pins["keyset_digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(pins["boot_measurements"]["mrtd"].as_str().unwrap().len() == 96);
    assert_eq!(pins["boot_measurements"]["verified"], false);
    let domains: Vec<&str> = pins["tls_keys"].as_array().unwrap().iter().filter_map(|k| k["domain"].as_str()).collect();
    assert!(domains.contains(&"api.redpill.ai"), "{domains:?}");
    assert!(!pins["e2ee_keys"].as_array().unwrap().is_empty());
    let checks: Vec<(&str, &str)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["check"].as_str().unwrap(), c["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [
            ("report", "pass"),
            ("quote", "skip"), // no collateral offline
            ("binding", "pass"),
            ("expiry", "pass"),
            ("keys", "pass"),
            ("event log", "pass"),
            ("identity", "pass"),
            ("key custody", "pass"),
            ("pins", "fail"),
        ]
    );

    // The transcript: one line per check, each with its reason; the values with their flags.
    let (code, text, _) = inspect(&[]);
    assert_eq!(code, Some(1));
    assert!(text.lines().any(|l| l.starts_with("skip quote") && l.contains("collateral")), "{text}");
    assert!(text.contains(&format!("--app-id         {REAL_APP_ID}")), "{text}");
    assert!(text.contains(&format!("--os-image-hash  {OS_IMAGE_HASH}")), "{text}");
    assert!(text.contains(&format!("--kms-identity   {REAL_KMS_IDENTITY}")), "{text}");
    assert!(text.contains("--boot-measurements f06dfda6"), "{text}");
    let image = text.lines().find(|l| l.trim_start().starts_with("os image")).unwrap();
    assert!(image.contains("development") && image.contains("dstack-dev-0.5.9-de9c74f0"), "{image}");
    assert!(text.contains("NOT verified under the pins given"));

    // Under its pins, but the quote cannot be verified offline: still exit 1, and the pins line
    // says why.
    let boot = REAL_BOOT.join(",");
    let (code, text, _) = inspect(&[
        "--compose-hash",
        COMPOSE_HASH,
        "--boot-measurements",
        &boot,
        "--kms-identity",
        REAL_KMS_IDENTITY,
        "--app-id",
        REAL_APP_ID,
        "--kms-root",
        REAL_KMS_ROOT,
    ]);
    assert_eq!(code, Some(1), "{text}");
    let pins_line = text.lines().find(|l| l.starts_with("fail pins")).unwrap();
    assert!(pins_line.to_lowercase().contains("collateral") || pins_line.contains("hardware"), "{pins_line}");

    // A changed byte of the report_data: binding fails.
    let tampered = std::env::temp_dir().join(format!("aci-inspect-{}.json", std::process::id()));
    let text = std::fs::read_to_string(CAPTURE).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let rd = doc["attestation"]["report_data"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if rd.starts_with('0') { "1" } else { "0" }, &rd[1..]);
    doc["attestation"]["report_data"] = Value::String(flipped);
    std::fs::write(&tampered, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aci-proxy"))
        .env_clear()
        .args(["inspect", "--report", tampered.to_str().unwrap(), "--nonce", NONCE, "--at", FETCHED_AT])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("fail binding")), "{text}");
    let _ = std::fs::remove_file(&tampered);
}

#[test]
fn write_config_holds_the_pins_with_the_trust_on_first_use_comment_and_the_proxy_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aci-proxy.toml");
    let (_, _, err) = inspect(&["--write-config", file.to_str().unwrap()]);
    assert!(err.contains("trusted on first use"), "{err}");
    let toml = std::fs::read_to_string(&file).unwrap();
    assert!(toml.contains("TRUSTED ON FIRST USE"), "{toml}");
    assert!(toml.contains("the operator publishes"));
    let config = ProxyConfig::from_toml(&toml).unwrap();
    assert_eq!(config.pins.app_ids, [REAL_APP_ID]);
    assert_eq!(config.pins.compose_hashes, [COMPOSE_HASH]);
    assert_eq!(config.pins.kms_roots, [REAL_KMS_ROOT]);
    assert_eq!(config.pins.kms_identities, [REAL_KMS_IDENTITY]);
    // The capture's image is a development image: no require_production_os line.
    assert!(!config.pins.require_production_os && !toml.contains("require-production-os"), "{toml}");
    // Every key is spelt like its flag.
    for key in ["compose-hash = [", "kms-identity = [", "app-id = [", "kms-root = [", "[[pins.boot-measurements]]"] {
        assert!(toml.contains(key), "{key} missing: {toml}");
    }
    assert_eq!(config.pins.boot_measurements.len(), 1);
    // The pins it wrote make a policy.
    config.policy().unwrap();
    // The PCCS the proxy then fetches the quote's collateral from: the client's default.
    assert_eq!(config.pccs.as_deref(), Some(tower_aci::client::DEFAULT_PCCS), "{toml}");
    // Or the one inspect was told.
    let (_, _, err) = inspect(&["--pccs", "https://pccs.example/sgx/", "--write-config", file.to_str().unwrap()]);
    let config = ProxyConfig::from_toml(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(config.pccs.as_deref(), Some("https://pccs.example/sgx/"), "{err}");
}

/// Live, over HTTPS with a self-signed certificate: the report is fetched with a fresh nonce
/// over the attested connector, and the key the server presented is the one the report lists.
#[tokio::test]
async fn a_live_gateway_is_inspected_over_the_pinned_tls_channel() {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let gw = TestGateway::start(GatewayConfig::new().tls(GatewayTls::new(vec![cert.cert.der().clone()], key).unwrap()))
        .await
        .unwrap();
    let config =
        ProxyConfig::default().gateway(gw.base_url()).tls_pin_only(true).with_policy(stub_policy(Suite::Secp256k1));
    let found = inspect_gateway(&config).await.unwrap();
    assert!(found.verified, "{found}");
    let channel = found.checks.iter().find(|c| c.name == "tls channel").unwrap();
    assert_eq!(channel.outcome, Outcome::Pass, "{found}");
    assert_eq!(found.values.keyset_digest.as_deref(), Some(gw.keyset_digest().as_str()));
    assert!(found.values.e2ee_keys.iter().any(|(_, _, k)| gw.keys().e2ee_public_keys().contains(k)), "{found}");
    // The stub quote is no hardware: it fails its line, and a real policy refuses it.
    assert_eq!(found.checks.iter().find(|c| c.name == "quote").unwrap().outcome, Outcome::Fail);
    let mut pinned = config.any_workload(true);
    pinned.policy = None;
    let refused = inspect_gateway(&pinned).await.unwrap();
    assert!(!refused.verified, "{refused}");
}
