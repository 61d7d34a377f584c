//! Test support: a hand-built [`ExchangeRecord`], for checking receipts against known hashes.

use crate::protocol::suite::Suite;
use crate::receipt::record::ExchangeRecord;

impl ExchangeRecord {
    /// A record as the E2EE layer would have made it for a request to `path` naming `model`,
    /// whose restored body hashes to `request_body_sha256`, answered with receipt id `receipt_id`
    /// and a response body hashing to `response_body_sha256` (`None`: not read to its end).
    /// A `path` that names no inference endpoint is recorded as chat completions.
    ///
    /// Not part of the stable API: use [`ExchangeRecord::builder`].
    #[doc(hidden)]
    pub fn for_tests(
        path: &str,
        model: &str,
        receipt_id: Option<&str>,
        request_body_sha256: [u8; 32],
        response_body_sha256: Option<[u8; 32]>,
    ) -> ExchangeRecord {
        let endpoint_path =
            if crate::protocol::Endpoint::from_path(path).is_some() { path } else { "/v1/chat/completions" };
        let mut b =
            ExchangeRecord::builder(endpoint_path, model).suite(Suite::X25519).request_body_sha256(request_body_sha256);
        if let Some(id) = receipt_id {
            b = b.receipt_id(id);
        }
        if let Some(d) = response_body_sha256 {
            b = b.response_body_sha256(d);
        }
        let mut record = b.build().expect("an inference path and a request hash");
        record.path = path.to_owned();
        record
    }
}
