//! Prompt-cache partitioning: the `cache_salt` the proxy puts on every chat completion and
//! completion it forwards (`--cache-salt-env`).
//!
//! Prefix caches such as vLLM's reuse the computed prefix of one request for the next request
//! that starts the same way, and a request that hits the cache answers measurably sooner: a
//! tenant who shares the gateway's cache with another can probe for the other's prompts. A
//! request's `cache_salt` partitions the cache (only requests with the same salt share
//! prefixes), and the gateway passes it on in clear (it carries nothing private). The proxy's
//! salt is a secret of the operator; the value on the wire is the lowercase hex of
//! HMAC-SHA256 keyed with it over [`LABEL`], then, when the client sent a non-empty
//! `cache_salt` of its own, a zero byte and the client's value. So
//!
//! - every request through this proxy carries a salt, and one no client of another proxy can
//!   produce: choosing another tenant's value would take that tenant's secret;
//! - a client's own salts still partition the cache within this proxy's share (per end user,
//!   say), and cannot step out of it;
//! - the secret itself never leaves the process.
//!
//! Without `--cache-salt-env` the body passes unchanged, the client's `cache_salt` included.
//! Embeddings are left alone (no prompt prefix is cached for them).

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::errors::ProxyError;
use tower_aci::error::{Error, Result};

/// What the HMAC covers before the client's salt (versioned: a new derivation gets a new label).
pub(crate) const LABEL: &[u8] = b"aci-proxy cache_salt v1";

/// Shortest salt accepted: a salt that can be guessed partitions nothing.
pub(crate) const MIN_SALT_LEN: usize = 16;

/// SHA-256's block size, the length of an HMAC key block.
const BLOCK: usize = 64;

/// The proxy's cache salt, if it has one: the HMAC key block (zeroized on drop).
pub(crate) struct CacheSalt {
    key: Option<Zeroizing<[u8; BLOCK]>>,
}

impl std::fmt::Debug for CacheSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() { "CacheSalt([redacted])" } else { "CacheSalt(None)" })
    }
}

impl CacheSalt {
    /// The salt held by the environment variable `var` (`--cache-salt-env`), or none. A named
    /// variable that is unset, empty or shorter than [`MIN_SALT_LEN`] is a `Config` error that
    /// names the variable, never its value.
    pub(crate) fn from_env(var: Option<&str>) -> Result<CacheSalt> {
        let Some(var) = var else { return Ok(CacheSalt { key: None }) };
        let value = std::env::var(var).map(Zeroizing::new);
        let salt = value.as_ref().map_or("", |v| v.trim());
        if salt.len() < MIN_SALT_LEN {
            let seen = match &value {
                Err(_) => "unset".to_owned(),
                Ok(_) if salt.is_empty() => "empty".to_owned(),
                Ok(_) => format!("shorter than {MIN_SALT_LEN} characters"),
            };
            return Err(Error::config(format!(
                "--cache-salt-env {var}: the environment variable {var} is {seen}; it must hold this proxy's \
                     secret prompt-cache salt, at least {MIN_SALT_LEN} characters (e.g. {var}=$(openssl rand -hex 32))"
            )));
        }
        Ok(CacheSalt { key: Some(key_block(salt.as_bytes())) })
    }

    /// Whether the proxy salts requests.
    pub(crate) fn is_set(&self) -> bool {
        self.key.is_some()
    }

    /// The body the gateway gets for a `POST` to `path`: with a salt, on chat completions and
    /// completions, the client's JSON object with `cache_salt` set to the derived value; else
    /// `body` as it came. A body that is not a JSON object, or whose `cache_salt` is not a
    /// string, is refused (400): the proxy never forwards such a request unsalted.
    pub(crate) fn apply(&self, path: &str, body: Bytes) -> std::result::Result<Bytes, ProxyError> {
        let Some(key) = &self.key else { return Ok(body) };
        if !matches!(path, "/v1/chat/completions" | "/v1/completions") {
            return Ok(body);
        }
        let invalid = |m: &str| ProxyError::new(StatusCode::BAD_REQUEST, "invalid_request_error", m);
        let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&body) else {
            return Err(invalid("the request body is not a JSON object"));
        };
        let client = match doc.get("cache_salt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.as_bytes()),
            Some(_) => return Err(invalid("`cache_salt` must be a string")),
        };
        let wire = match client {
            None => hmac_sha256(key, &[LABEL]),
            Some(c) => hmac_sha256(key, &[LABEL, &[0], c]),
        };
        doc.insert("cache_salt".to_owned(), Value::String(const_hex::encode(wire)));
        serde_json::to_vec(&doc)
            .map(Bytes::from)
            .map_err(|e| invalid(&format!("the request body cannot be written back: {e}")))
    }
}

/// HMAC's key block for `key`: the key, zero-padded, or its SHA-256 when longer than a block.
fn key_block(key: &[u8]) -> Zeroizing<[u8; BLOCK]> {
    let mut block = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        let digest = Zeroizing::new(<[u8; 32]>::from(Sha256::digest(key)));
        block[..32].copy_from_slice(&*digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    block
}

/// HMAC-SHA256 (RFC 2104) under the key block `key` of the concatenation of `parts`.
fn hmac_sha256(key: &[u8; BLOCK], parts: &[&[u8]]) -> [u8; 32] {
    let padded = |with: u8| {
        let mut pad = Zeroizing::new([0u8; BLOCK]);
        for (p, k) in pad.iter_mut().zip(key) {
            *p = k ^ with;
        }
        pad
    };
    let mut inner = Sha256::new();
    inner.update(&padded(0x36)[..]);
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(&padded(0x5c)[..]);
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_aci::ErrorKind;

    #[test]
    fn the_hmac_is_rfc_2104_hmac_sha256() {
        // HKDF-Extract with the key as salt is HMAC(key, message), from the RustCrypto crates.
        for key in [&b"0123456789abcdef"[..], &[0x42; 64], &[7; 131]] {
            for msg in [&b""[..], b"aci-proxy cache_salt v1", &[0x61; 200]] {
                let (reference, _) = hkdf::Hkdf::<Sha256>::extract(Some(key), msg);
                assert_eq!(hmac_sha256(&key_block(key), &[msg]), reference[..], "{} {}", key.len(), msg.len());
            }
        }
        // Parts are concatenated.
        let k = key_block(b"0123456789abcdef");
        assert_eq!(hmac_sha256(&k, &[b"ab", b"", b"c"]), hmac_sha256(&k, &[b"abc"]));
    }

    #[test]
    fn a_named_salt_must_be_set_and_long_enough_and_is_never_shown() {
        assert!(!CacheSalt::from_env(None).unwrap().is_set());
        let e = CacheSalt::from_env(Some("TOWER_ACI_TEST_UNSET_CACHE_SALT")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("TOWER_ACI_TEST_UNSET_CACHE_SALT is unset"), "{e}");
        // Variables cargo sets for every test run (no test mutates the environment).
        let e = CacheSalt::from_env(Some("CARGO_PKG_NAME")).unwrap_err();
        assert!(e.to_string().contains("is shorter than 16 characters"), "{e}");
        assert!(!e.to_string().contains(env!("CARGO_PKG_NAME")), "the value is not shown: {e}");
        let salt = CacheSalt::from_env(Some("CARGO_PKG_DESCRIPTION")).unwrap();
        assert!(salt.is_set());
        assert_eq!(format!("{salt:?}"), "CacheSalt([redacted])");
    }

    #[test]
    fn only_json_objects_with_a_string_salt_are_salted_and_embeddings_are_left_alone() {
        let salt = CacheSalt::from_env(Some("CARGO_PKG_DESCRIPTION")).unwrap();
        let chat = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let out: Value = serde_json::from_slice(&salt.apply("/v1/chat/completions", chat.clone()).unwrap()).unwrap();
        assert_eq!(out["cache_salt"].as_str().map(str::len), Some(64));
        assert_eq!(salt.apply("/v1/embeddings", chat.clone()).unwrap(), chat);
        assert_eq!(CacheSalt::from_env(None).unwrap().apply("/v1/chat/completions", chat.clone()).unwrap(), chat);
        for bad in [&br#"[1]"#[..], b"not json", br#"{"model":"m","cache_salt":7}"#] {
            let e = salt.apply("/v1/completions", Bytes::from_static(bad)).unwrap_err();
            assert_eq!((e.status, e.kind), (StatusCode::BAD_REQUEST, "invalid_request_error"));
        }
    }
}
