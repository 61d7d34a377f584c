//! Buffered response decryption on arbitrary bodies: never panics, never returns a body with a
//! protected field left in clear.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_aci::protocol::request::{Endpoint, ExchangeContext};
use tower_aci::protocol::response::decrypt_response;
use tower_aci::protocol::suite::{SecretKey, Suite};

fuzz_target!(|data: &[u8]| {
    for (endpoint, suite) in [
        (Endpoint::ChatCompletions, Suite::X25519),
        (Endpoint::Completions, Suite::Secp256k1),
        (Endpoint::Embeddings, Suite::X25519),
    ] {
        let ctx = ExchangeContext::new(endpoint, SecretKey::from_bytes(suite, &[5; 32]).unwrap(), "m", "n", 1);
        let _ = decrypt_response(&ctx, bytes::Bytes::copy_from_slice(data));
    }
});
