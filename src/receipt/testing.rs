//! Test support: a hand-built [`ExchangeRecord`], for checking receipts against known hashes.

use std::sync::Arc;

use crate::protocol::request::Endpoint;
use crate::protocol::suite::Suite;
use crate::receipt::record::{ExchangeRecord, ResponseDigest};

impl ExchangeRecord {
    /// A record as the E2EE layer would have made it for a request to `path` naming `model`,
    /// whose restored body hashes to `request_body_sha256`, answered with receipt id `receipt_id`
    /// and a response body hashing to `response_body_sha256` (`None`: not read to its end).
    ///
    /// Not part of the stable API: for tests and for re-checking archived exchanges.
    #[doc(hidden)]
    pub fn for_tests(
        path: &str,
        model: &str,
        receipt_id: Option<&str>,
        request_body_sha256: [u8; 32],
        response_body_sha256: Option<[u8; 32]>,
    ) -> ExchangeRecord {
        let response = Arc::new(ResponseDigest::default());
        if let Some(d) = response_body_sha256 {
            response.set(d);
        }
        ExchangeRecord {
            receipt_id: receipt_id.map(str::to_owned),
            keyset_digest: None,
            attested_digest: String::new(),
            e2ee_public_key: None,
            suite: Some(Suite::X25519),
            endpoint: Endpoint::from_path(path).unwrap_or(Endpoint::ChatCompletions),
            path: path.to_owned(),
            model: model.to_owned(),
            request_body_sha256,
            streamed: false,
            status: 200,
            response,
        }
    }
}
