//! The gateway's request opener (`open_request`, tower-aci's half of the gateway that the local
//! test gateway serves with, reached through `tower_aci::__private`) on arbitrary bodies, and on bodies the client encrypted with one byte changed:
//! never panics; fails with `Malformed` or `Decrypt` only; and a changed body that still opens
//! restores, at every location the gateway decrypted, exactly the plaintext the client sealed
//! for that path (the AAD binds path, model, nonce and timestamp).
//!
//! Control byte: bits 0–1 endpoint, bit 2 suite, bit 3 raw (the bytes are the wire body) or
//! tampered (two bytes of position and one XOR mask, then the plaintext body to encrypt).
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::Value;
use tower_aci::__private::open_request;
use tower_aci::ErrorKind;
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::{EncryptOptions, Endpoint, encrypt_request};
use tower_aci::protocol::{SecretKey, Suite};

const NOW: u64 = 1_750_000_000;
const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

static KEYS: LazyLock<[(SecretKey, E2eeKey); 2]> = LazyLock::new(|| {
    [Suite::X25519, Suite::Secp256k1].map(|suite| {
        let secret = SecretKey::from_bytes(suite, &[0x5a; 32]).unwrap();
        let key = E2eeKey::parse("k", suite.algo(), secret.public_key().to_hex()).unwrap();
        (secret, key)
    })
});

fn opener_error<T>(r: &tower_aci::Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => matches!(e.kind(), ErrorKind::Malformed | ErrorKind::Decrypt),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let endpoint = match ctl & 3 {
        1 => Endpoint::Completions,
        2 => Endpoint::Embeddings,
        _ => Endpoint::ChatCompletions,
    };
    let (secret, key) = &KEYS[usize::from(ctl & 4 != 0)];
    if ctl & 8 == 0 {
        let r = open_request(endpoint, rest, secret, NONCE, NOW);
        if std::env::var_os("FUZZ_PRINT").is_some() {
            eprintln!("{endpoint:?}: {:?}", r.as_ref().map(|o| String::from_utf8_lossy(&o.bytes)));
        }
        assert!(opener_error(&r), "unexpected error kind");
        if let Ok(opened) = r {
            assert_eq!(serde_json::to_vec(&opened.body).unwrap(), opened.bytes);
        }
        return;
    }
    let [p0, p1, mask, body @ ..] = rest else { return };
    let mut rng = ChaCha20Rng::from_seed([ctl; 32]);
    let Ok(req) = encrypt_request(endpoint, body, key, &EncryptOptions::default(), NOW, &mut rng) else { return };
    let nonce = req.context.nonce();
    let original = open_request(endpoint, &req.body, secret, nonce, NOW).expect("the client's body opens");
    assert_eq!(original.fields, req.fields);
    let mut wire = req.body.clone();
    let at = usize::from(u16::from_le_bytes([*p0, *p1])) % wire.len();
    wire[at] ^= if *mask == 0 { 1 } else { *mask };
    let r = open_request(endpoint, &wire, secret, nonce, NOW);
    assert!(opener_error(&r), "unexpected error kind");
    let Ok(opened) = r else { return };
    let tampered: Value = serde_json::from_slice(&wire).unwrap();
    let untampered: Value = serde_json::from_slice(&req.body).unwrap();
    let Ok(locations) = common::spec_locations(endpoint, tampered.as_object().unwrap()) else {
        panic!("the opener decrypted a body the spec walk refuses")
    };
    let before = common::spec_locations(endpoint, untampered.as_object().unwrap()).unwrap();
    let (mut a, mut b) = (original.body.clone(), opened.body.clone());
    for (path, steps, _) in &locations {
        assert!(before.iter().any(|(p, ..)| p == path), "{path} opened but the client sealed no field there");
        assert_eq!(common::slot(&mut b, steps), common::slot(&mut a, steps), "{path} restored another plaintext");
    }
});
