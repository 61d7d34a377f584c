//! The sans-IO protocol core: E2EE v2 field encryption, AAD, request rewriting, response and
//! SSE decryption, canonical JSON. Synchronous, no tower, randomness and time injected.

pub mod aad;
pub mod jcs;
pub mod keys;
pub mod suite;
