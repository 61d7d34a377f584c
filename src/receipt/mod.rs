//! Receipts: what the gateway signed, checked against what the layer saw.

mod record;

pub use record::{ExchangeRecord, ResponseDigest};
