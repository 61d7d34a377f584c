//! Helpers shared by the attestation tests: load vectors, build (seal) reports the way the
//! reference gateway does, and a test dstack KMS that issues custody chains.

use k256::ecdsa::SigningKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sha3::Keccak256;
use tower_aci::attest::{AttestedKeyset, Policy};
use tower_aci::protocol::jcs;
use tower_aci::protocol::{SecretKey, Suite};
use tower_aci::{AttestationFailure, ErrorKind};

/// The workspace's `tests/data/` (tower-aci's oracles), from whichever crate's tests run (this
/// file is also aci-proxy's).
pub(crate) fn data_dir() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|dir| dir.join("tests/data"))
        .find(|dir| dir.join("aci_vectors.json").is_file())
        .unwrap_or_else(|| panic!("no tests/data/aci_vectors.json above {}", here.display()))
}

/// Parse `tests/data/<name>`.
pub(crate) fn load(name: &str) -> Value {
    let path = data_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// `sha256:` + hex(SHA-256(JCS(keyset))), computed here rather than with the crate's helper.
pub(crate) fn digest_of(keyset: &Value) -> String {
    format!("sha256:{}", const_hex::encode(Sha256::digest(jcs::to_vec(keyset).unwrap())))
}

/// The report-data statement, spelled out.
pub(crate) fn statement_of(digest: &str, nonce: Option<&[u8; 32]>) -> String {
    let nonce = match nonce {
        Some(n) => format!("\"{}\"", const_hex::encode(n)),
        None => "null".to_owned(),
    };
    format!(r#"{{"keyset_digest":"{digest}","nonce":{nonce},"purpose":"aci.report_data.v1"}}"#)
}

pub(crate) fn report_data_of(digest: &str, nonce: Option<&[u8; 32]>) -> [u8; 32] {
    Sha256::digest(statement_of(digest, nonce).as_bytes()).into()
}

/// A stub-quoted report for `keyset` and `nonce`, shaped like the reference gateway's.
pub(crate) fn seal_report(keyset: &Value, nonce: Option<&[u8; 32]>) -> Value {
    let digest = digest_of(keyset);
    let rd = report_data_of(&digest, nonce);
    let mut slot = rd.to_vec();
    slot.extend_from_slice(&[0; 32]);
    let mut quote = b"aci-stub-quote|".to_vec();
    quote.extend_from_slice(&slot);
    json!({
        "api_version": "aci/1",
        "workload_keyset_digest": digest,
        "attestation": {
            "tee_type": "tdx",
            "workload_keyset": keyset,
            "report_data": const_hex::encode(rd),
            "source_provenance": {
                "repo_url": "https://github.com/Dstack-TEE/private-ai-gateway",
                "repo_commit": "deadbeef",
                "image_digest": null,
                "image_provenance": null
            },
            "evidence": {
                "quote": const_hex::encode(quote),
                "quote_report_data": const_hex::encode(slot),
                "event_log": null,
                "vm_config": "{}",
                "app_compose": null
            }
        },
        "service_capabilities": {"supported_e2ee_versions": ["2"], "serving": "direct"}
    })
}

/// The app id the real capture measures (`tests/data/real_tdx_report_2026-06.json`).
pub(crate) const REAL_APP_ID: &str = "fdb7a14e5a6675f752e2cb69c9067a98ca402918";

/// The KMS root the real capture's custody chains recover.
pub(crate) const REAL_KMS_ROOT: &str = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1";

/// The real capture's compose hash (`compose-hash` event).
pub(crate) const REAL_COMPOSE_HASH: &str = "5092ebbd4606f572ff5231a6e94d28964b55f66c769dad3a90d1bcc7ec190feb";

/// The real capture's boot measurements (MRTD, RTMR0-2 of its quote).
pub(crate) const REAL_BOOT: [&str; 4] = [
    "f06dfda6dce1cf904d4e2bab1dc370634cf95cefa2ceb2de2eee127c9382698090d7a4a13e14c536ec6c9c3c8fa87077",
    "ec216f1d1d591468ff4741b9b192f016b26d3f90303bfa9dbb97557273853183981f21a4bcb3ae908247538d371ad072",
    "07e6f51aa763abfe75c3ddfbf4f425fe3f0ceff66d807a75e049303dce9addf68e7218729bd419638af63a370f65878c",
    "a2a58c9a959a4fa44bd6da0c97a2270c051faf12084cfe91ae900e4fdff6cdd4f69a82005e04ee920f231497894d677f",
];

/// The real capture's KMS identity (the `id` of its `key-provider` event).
pub(crate) const REAL_KMS_IDENTITY: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200048844eb42ccdf8c52fd4f174f362fcb9bbd19c45fd48f1edec2d8f1ca23536ec1a74021b4cee610c074f8294d431b2b7fee2c39e5333fdaf0a4522d43fb159d9f";

/// A production-shaped builder: the sound combination of the real capture (compose hash, boot
/// measurements, KMS identity) with its app id and KMS root beside it, nothing relaxed.
pub(crate) fn pinned_builder() -> tower_aci::attest::PolicyBuilder {
    Policy::builder()
        .allow_compose_hash(REAL_COMPOSE_HASH)
        .allow_boot_measurements(REAL_BOOT[0], REAL_BOOT[1], REAL_BOOT[2], REAL_BOOT[3])
        .allow_kms_identity(REAL_KMS_IDENTITY)
        .allow_app_id(REAL_APP_ID)
        .accept_kms_root(REAL_KMS_ROOT)
}

/// [`pinned_builder`], built: hardware verification required.
pub(crate) fn pinned_policy() -> Policy {
    pinned_builder().build().unwrap()
}

/// An app pin with a KMS root whose custody is verified, the keys used without a sound anchor
/// (`dangerous().unanchored_pin()`): for tests of key custody on stub-quoted or unverified
/// reports, which can match no boot measurements.
pub(crate) fn custody_builder(app_id: &str, kms_root: &str) -> tower_aci::attest::DangerousPolicyBuilder {
    Policy::builder().allow_app_id(app_id).accept_kms_root(kms_root).dangerous().unanchored_pin()
}

/// The policy for stub-quoted reports.
pub(crate) fn stub_policy() -> Policy {
    Policy::builder().dangerous().accept_stub_quote().any_workload().build().unwrap()
}

/// The failure reason of a verification that must fail.
pub(crate) fn reason(result: tower_aci::Result<AttestedKeyset>) -> AttestationFailure {
    match result {
        Ok(k) => panic!("expected a failure, got {k:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Attestation(f) => f,
            other => panic!("expected an attestation failure, got {other:?}: {e}"),
        },
    }
}

pub(crate) fn secp_public_hex(seed: u8) -> String {
    SecretKey::from_bytes(Suite::Secp256k1, &[seed; 32]).unwrap().public_key().to_hex()
}

pub(crate) fn x25519_public_hex(seed: u8) -> String {
    SecretKey::from_bytes(Suite::X25519, &[seed; 32]).unwrap().public_key().to_hex()
}

pub(crate) fn ed25519_public_hex(seed: u8) -> String {
    const_hex::encode(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key().as_bytes())
}

/// A production-shaped keyset (receipt, secp256k1 and X25519 E2EE keys with the dstack ids).
pub(crate) fn production_keyset(subject: Option<&str>, not_after: u64) -> Value {
    json!({
        "subject": subject,
        "not_after": not_after,
        "receipt_signing_keys": [
            {"key_id": "dstack-kms-receipt-ed25519-v1", "algo": "ed25519", "public_key": ed25519_public_hex(0x31)}
        ],
        "e2ee_public_keys": [
            {"key_id": "dstack-kms-e2ee-v1", "algo": "secp256k1-aes-256-gcm-hkdf-sha256", "public_key": secp_public_hex(0x44)},
            {"key_id": "dstack-kms-e2ee-x25519-v1", "algo": "x25519-aes-256-gcm-hkdf-sha256", "public_key": x25519_public_hex(0x55)}
        ],
        "tls_public_keys": []
    })
}

pub(crate) fn signing_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32].into()).unwrap()
}

pub(crate) fn compressed_hex(key: &SigningKey) -> String {
    const_hex::encode(key.verifying_key().to_encoded_point(true).as_bytes())
}

/// `r‖s‖v` over Keccak-256(message), hex.
pub(crate) fn sign_keccak(key: &SigningKey, message: &[u8], v_offset: u8) -> String {
    let (sig, recid) = key.sign_prehash_recoverable(&Keccak256::digest(message)).unwrap();
    let mut out = sig.to_bytes().to_vec();
    out.push(recid.to_byte() + v_offset);
    const_hex::encode(out)
}

/// A test dstack KMS: a root key, an app key and the app id it issues to.
pub(crate) struct TestKms {
    pub(crate) root: SigningKey,
    pub(crate) app: SigningKey,
    pub(crate) app_id: Vec<u8>,
}

impl TestKms {
    pub(crate) fn new() -> TestKms {
        TestKms { root: signing_key(0x11), app: signing_key(0x22), app_id: vec![0xaa; 20] }
    }

    pub(crate) fn root_hex(&self) -> String {
        compressed_hex(&self.root)
    }

    /// The two-signature chain for a released key whose secp256k1 public key is `kms_public`.
    pub(crate) fn chain(&self, purpose: &str, kms_public_hex: &str) -> [String; 2] {
        let msg1 = format!("{purpose}:{kms_public_hex}");
        let mut msg2 = b"dstack-kms-issued:".to_vec();
        msg2.extend_from_slice(&self.app_id);
        msg2.extend_from_slice(self.app.verifying_key().to_encoded_point(true).as_bytes());
        [sign_keccak(&self.app, msg1.as_bytes(), 0), sign_keccak(&self.root, &msg2, 27)]
    }

    /// `key_custody` for [`production_keyset`], the way the production provider publishes it.
    pub(crate) fn custody(&self) -> Value {
        let receipt_kms = compressed_hex(&signing_key(0x33));
        let secp_kms = compressed_hex(&signing_key(0x44));
        let x_kms = compressed_hex(&signing_key(0x66));
        json!({
            "provider": "dstack-kms",
            "keys": [
                {
                    "role": "receipt", "path": "aci/receipt-ed25519/v1", "purpose": "aci.receipt.ed25519.v1",
                    "algo": "ed25519", "public_key": ed25519_public_hex(0x31), "kms_public_key": receipt_kms,
                    "signature_chain": self.chain("aci.receipt.ed25519.v1", &receipt_kms)
                },
                {
                    "role": "e2ee-secp256k1", "path": "aci/e2ee/v1", "purpose": "aci.e2ee.v1",
                    "algo": "secp256k1-aes-256-gcm-hkdf-sha256", "public_key": secp_public_hex(0x44),
                    "kms_public_key": secp_kms, "signature_chain": self.chain("aci.e2ee.v1", &secp_kms)
                },
                {
                    "role": "e2ee-x25519", "path": "aci/e2ee-x25519/v1", "purpose": "aci.e2ee.x25519.v1",
                    "algo": "x25519-aes-256-gcm-hkdf-sha256", "public_key": x25519_public_hex(0x55),
                    "kms_public_key": x_kms, "signature_chain": self.chain("aci.e2ee.x25519.v1", &x_kms)
                }
            ]
        })
    }
}

/// The provider's load timeout in tests: a sleep of this length never ends.
pub(crate) const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(999);

/// Started sleeps, each with the sender that ends it.
type PendingSleeps = std::sync::Arc<
    std::sync::Mutex<std::collections::VecDeque<(std::time::Duration, tokio::sync::oneshot::Sender<()>)>>,
>;

/// A sleep the test fires by hand: each call is queued with its duration.
#[derive(Clone, Default)]
pub(crate) struct Sleeps {
    pending: PendingSleeps,
    notify: std::sync::Arc<tokio::sync::Notify>,
}

impl Sleeps {
    pub(crate) fn sleep(
        &self,
        d: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        if d == LOAD_TIMEOUT {
            return Box::pin(std::future::pending());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap().push_back((d, tx));
        self.notify.notify_one();
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    /// The next sleep the provider started (real time bound: 10 s, never reached when passing).
    pub(crate) async fn next(&self) -> (std::time::Duration, tokio::sync::oneshot::Sender<()>) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                if let Some(s) = self.pending.lock().unwrap().pop_front() {
                    return s;
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait).await.expect("the provider never slept")
    }

    /// Sleeps started and not yet taken by [`next`](Self::next).
    #[allow(dead_code)]
    pub(crate) fn queued(&self) -> Vec<std::time::Duration> {
        self.pending.lock().unwrap().iter().map(|(d, _)| *d).collect()
    }
}
