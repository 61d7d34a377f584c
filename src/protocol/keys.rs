//! E2EE public keys as a keyset publishes them.

use std::fmt;

use crate::error::{Error, Result};
use crate::protocol::suite::{PublicKey, Suite};

/// The production key id of the secp256k1 E2EE v2 key (RedPill, Phala, dstack KMS).
pub(crate) const DEFAULT_KEY_ID: &str = "dstack-kms-e2ee-v1";

/// One entry of a keyset's `e2ee_public_keys`: key id, suite, the `public_key` string exactly as
/// published (sent back verbatim in `X-Model-Pub-Key`) and the parsed key.
///
/// Parsing an entry does not make it trustworthy: the E2EE layer only encrypts to keys that come
/// out of a verified [`AttestedKeyset`](crate::attest::AttestedKeyset).
#[derive(Clone, PartialEq, Eq)]
pub struct E2eeKey {
    key_id: String,
    text: String,
    public: PublicKey,
}

impl E2eeKey {
    /// Parse a keyset entry. Fails with `Malformed` for an unknown `algo` or an invalid key.
    pub fn parse(key_id: impl Into<String>, algo: &str, public_key: impl Into<String>) -> Result<E2eeKey> {
        let suite =
            Suite::from_algo(algo).ok_or_else(|| Error::malformed(format!("unknown E2EE algorithm {algo:?}")))?;
        let text = public_key.into();
        let public = PublicKey::parse(suite, &text)?;
        Ok(E2eeKey { key_id: key_id.into(), text, public })
    }

    /// The entry's `key_id`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The suite the entry's `algo` names.
    pub fn suite(&self) -> Suite {
        self.public.suite()
    }

    /// The `public_key` string verbatim, as sent in `X-Model-Pub-Key`.
    pub fn public_key_text(&self) -> &str {
        &self.text
    }

    /// The parsed public key.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl fmt::Debug for E2eeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2eeKey")
            .field("key_id", &self.key_id)
            .field("algo", &self.suite().algo())
            .field("public_key", &self.text)
            .finish()
    }
}
