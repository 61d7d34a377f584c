//! Compile-time checks of the public surface's semver promises, run by `cargo test --doc` and
//! compiled nowhere else (`#[cfg(doctest)]`). Each `compile_fail` block below compiled before
//! its attribute or gate was added.
//!
//! Enums that will grow are `#[non_exhaustive]`: a match outside the crate needs a wildcard arm.
//!
//! ```compile_fail
//! fn path(e: tower_aci::protocol::Endpoint) -> u8 {
//!     use tower_aci::protocol::Endpoint::*;
//!     match e { ChatCompletions => 0, Completions => 1, Embeddings => 2 }
//! }
//! ```
//!
//! ```compile_fail
//! fn algo(s: tower_aci::protocol::Suite) -> u8 {
//!     use tower_aci::protocol::Suite::*;
//!     match s { Secp256k1 => 0, X25519 => 1 }
//! }
//! ```
//!
//! ```compile_fail
//! fn out(o: tower_aci::protocol::StreamOutput) -> u8 {
//!     use tower_aci::protocol::StreamOutput::*;
//!     match o { Event(_) => 0, InBandError(..) => 1 }
//! }
//! ```
//!
//! With the wildcard arm the same match compiles:
//!
//! ```
//! fn path(e: tower_aci::protocol::Endpoint) -> u8 {
//!     use tower_aci::protocol::Endpoint::*;
//!     match e { ChatCompletions => 0, Completions => 1, Embeddings => 2, _ => 3 }
//! }
//! ```
//!
//! Structs the crate produces may gain fields: no struct literal outside the crate.
//!
//! Settings users fill in are built from `Default` with setters, never a struct literal (they may
//! gain fields too): `SseLimits::default().max_event_bytes(…)`, `EncryptOptions::default().strict(…)`.
//!
//! ```compile_fail
//! let _ = tower_aci::protocol::SseLimits { max_line: 1, max_event: 1, max_event_lines: 1 };
//! ```
//!
//! ```compile_fail
//! let _ = tower_aci::protocol::EncryptOptions { strict: true };
//! ```
//!
//! ```
//! let _ = tower_aci::protocol::SseLimits::default().max_event_bytes(1 << 20);
//! let _ = tower_aci::protocol::EncryptOptions::default().strict(true);
//! ```
//!
//! ```compile_fail
//! let _ = tower_aci::GatewayError { status: http::StatusCode::BAD_REQUEST, error_type: None, message: None, retry_after: None };
//! ```
//!
//! An error of a verdict (an attestation, a receipt, a decryption) is made only by the crate:
//! no public constructor takes a kind.
//!
//! ```compile_fail
//! let forged = tower_aci::Error::new(
//!     tower_aci::ErrorKind::Attestation(tower_aci::AttestationFailure::ChannelBinding),
//!     "forged",
//! );
//! ```
//!
//! Those that are no verdict have their own constructors.
//!
//! ```
//! assert_eq!(tower_aci::Error::config("x").kind(), tower_aci::ErrorKind::Config);
//! assert_eq!(tower_aci::Error::transport("x").kind(), tower_aci::ErrorKind::Transport);
//! ```
//!
//! Builders and the refresher guard are `#[must_use]`: a dropped one is a warning.
//!
//! ```compile_fail
//! #![deny(unused_must_use)]
//! fn f() {
//!     tower_aci::attest::Policy::builder().allow_compose_hash("00");
//! }
//! ```
//!
//! ```compile_fail
//! #![deny(unused_must_use)]
//! fn spawn() -> tower_aci::attest::RefreshTask { unimplemented!() }
//! fn f() {
//!     spawn();
//! }
//! ```
//!
//! ```compile_fail
//! #![deny(unused_must_use)]
//! fn f(keys: tower_aci::attest::KeyHandle) {
//!     tower_aci::E2eeLayer::new(keys).strict(true);
//! }
//! ```
#![cfg_attr(
    not(feature = "__internal-test-vectors"),
    doc = r#"
Raw ECDH secrets (`protocol::suite::kat`) and the test-randomness hook exist only with the hidden
feature `__internal-test-vectors`:

```compile_fail
use tower_aci::protocol::kat;
```

```compile_fail
fn f(keys: tower_aci::attest::KeyHandle) {
    let _ = tower_aci::E2eeLayer::new(keys).dangerous_randomness_for_tests(|b| b.fill(0));
}
```
"#
)]
