//! Counters behind `GET /aci/status`.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the proxy has done since it started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) exchanges: AtomicU64,
    pub(crate) failed_exchanges: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) receipts_verified: AtomicU64,
    pub(crate) receipts_failed: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, and how many keysets the key provider refused (their report was fetched
    /// and failed the policy; their receipts are refused).
    pub(crate) fn to_json_with(&self, refused_keysets: usize) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "exchanges": get(&self.exchanges),
            "failed_exchanges": get(&self.failed_exchanges),
            "refused_requests": get(&self.refused),
            "receipts_verified": get(&self.receipts_verified),
            "receipts_failed": get(&self.receipts_failed),
            "refused_keysets": refused_keysets,
        })
    }
}
