//! aci-proxy's integration tests: one binary (keeps link time down on small machines). They
//! drive the library (`aci_proxy::Proxy`) and the `aci-proxy` binary against the local test
//! gateway, the binary through `--local-test-gateway` (hence `required-features` in
//! Cargo.toml); `cargo test --workspace --all-features` at the workspace root runs them.
//!
//! `support`, `attest_support` and `doubles` are tower-aci's own test helpers (helper-only
//! files, no tests), included by path so that each helper exists once in the workspace.

#[allow(dead_code)]
#[path = "../../../../tests/all/attest_support.rs"]
mod attest_support;
#[path = "../../../../tests/all/doubles.rs"]
mod doubles;
#[allow(dead_code)]
#[path = "../../../../tests/all/support.rs"]
mod support;

mod egress;
mod metrics_golden;
mod proxy;
mod proxy_binary;
mod proxy_cache_salt;
mod proxy_cli;
mod proxy_exposure;
mod proxy_inspect;
mod proxy_local;
mod proxy_ops;
#[cfg(unix)]
mod proxy_systemd;
mod replicas;
mod stack;
