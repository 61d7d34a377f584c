//! Public-key and keyset-entry parsing on arbitrary text: never panics; what parses re-encodes
//! to a key that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::{PublicKey, Suite};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for suite in Suite::ALL {
        if let Ok(k) = PublicKey::parse(suite, text) {
            assert_eq!(PublicKey::parse(suite, &k.to_hex()).unwrap(), k);
        }
        let _ = E2eeKey::parse("k", suite.algo(), text);
    }
});
