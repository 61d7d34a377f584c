//! What the E2EE layer saw of one exchange: the facts a receipt is checked against.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::hex;
use crate::protocol::request::Endpoint;
use crate::protocol::suite::Suite;

/// The facts of one exchange, recorded by the E2EE layer in the response's extensions.
///
/// Holds no key and no plaintext: the receipt id, the keyset digest the gateway named, the suite,
/// the hash of the body the gateway will have restored, and a running SHA-256 of the exact
/// response bytes that becomes final when the body has been read to its end.
///
/// ```no_run
/// # fn f(response: http::Response<()>) {
/// use tower_aci::receipt::ExchangeRecord;
/// let record = response.extensions().get::<ExchangeRecord>().expect("set by the E2EE layer");
/// println!("receipt {:?} from keyset {:?}", record.receipt_id(), record.keyset_digest());
/// # }
/// ```
#[derive(Clone)]
pub struct ExchangeRecord {
    pub(crate) receipt_id: Option<String>,
    pub(crate) keyset_digest: Option<String>,
    pub(crate) attested_digest: String,
    pub(crate) suite: Option<Suite>,
    pub(crate) e2ee_public_key: Option<String>,
    pub(crate) endpoint: Endpoint,
    pub(crate) path: String,
    pub(crate) model: String,
    pub(crate) request_body_sha256: [u8; 32],
    pub(crate) streamed: bool,
    pub(crate) status: u16,
    pub(crate) response: Arc<ResponseDigest>,
}

impl ExchangeRecord {
    /// `X-Receipt-Id`, if the gateway sent one.
    pub fn receipt_id(&self) -> Option<&str> {
        self.receipt_id.as_deref()
    }

    /// `X-ACI-Keyset-Digest` of the replica that served, if sent.
    pub fn keyset_digest(&self) -> Option<&str> {
        self.keyset_digest.as_deref()
    }

    /// Digest of the attested keyset the request was encrypted to.
    pub fn attested_keyset_digest(&self) -> &str {
        &self.attested_digest
    }

    /// The suite of an E2EE exchange; `None` for a plaintext one ([`plaintext`](Self::plaintext)).
    pub fn suite(&self) -> Option<Suite> {
        self.suite
    }

    /// The attested E2EE public key the request was encrypted to (`X-Model-Pub-Key`, as the
    /// keyset lists it); `None` for a plaintext exchange.
    pub fn e2ee_public_key(&self) -> Option<&str> {
        self.e2ee_public_key.as_deref()
    }

    /// The E2EE endpoint.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The request path as sent.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request's `model`.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// SHA-256 of the body the gateway restores after decrypting, or of the raw wire body of a
    /// plaintext exchange (the receipt's `request.received.body_hash`).
    pub fn request_body_sha256(&self) -> [u8; 32] {
        self.request_body_sha256
    }

    /// Whether the response was an SSE stream.
    pub fn streamed(&self) -> bool {
        self.streamed
    }

    /// The response status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// SHA-256 of the exact response body bytes, once the body has been read to its end;
    /// `None` before that (a stream read half-way cannot be checked against a receipt).
    pub fn response_body_sha256(&self) -> Option<[u8; 32]> {
        self.response.get()
    }
}

impl ExchangeRecord {
    /// The record of a plaintext (non-E2EE) exchange made without the layer — for example a
    /// request to a gateway that serves plaintext too. Its receipt names SHA-256 of the raw
    /// request body as sent and of the raw response body as received (protocol.md §5.3–§5.4).
    ///
    /// Fails with `Config` when `path` is not an inference endpoint.
    ///
    /// ```
    /// use tower_aci::receipt::ExchangeRecord;
    /// let sent = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    /// let record = ExchangeRecord::plaintext("/v1/chat/completions", "m", sent, "rcpt-1", b"{}").unwrap();
    /// assert_eq!(record.suite(), None);
    /// assert!(record.response_body_sha256().is_some());
    /// ```
    pub fn plaintext(
        path: &str,
        model: &str,
        request_body: &[u8],
        receipt_id: &str,
        response_body: &[u8],
    ) -> crate::Result<ExchangeRecord> {
        use sha2::{Digest, Sha256};
        let endpoint = Endpoint::from_path(path).ok_or_else(|| {
            crate::Error::new(crate::ErrorKind::Config, format!("{path} is not an inference endpoint"))
        })?;
        let response = Arc::new(ResponseDigest::default());
        response.set(Sha256::digest(response_body).into());
        Ok(ExchangeRecord {
            receipt_id: Some(receipt_id.to_owned()),
            keyset_digest: None,
            attested_digest: String::new(),
            suite: None,
            e2ee_public_key: None,
            endpoint,
            path: path.to_owned(),
            model: model.to_owned(),
            request_body_sha256: Sha256::digest(request_body).into(),
            streamed: false,
            status: 200,
            response,
        })
    }
}

impl fmt::Debug for ExchangeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeRecord")
            .field("receipt_id", &self.receipt_id)
            .field("keyset_digest", &self.keyset_digest)
            .field("suite", &self.suite)
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field("request_body_sha256", &hex::encode(self.request_body_sha256))
            .field("response_body_sha256", &self.response_body_sha256().map(hex::encode))
            .finish()
    }
}

/// The SHA-256 of a response body, set once when the body ends.
#[derive(Debug, Default)]
pub struct ResponseDigest(OnceLock<[u8; 32]>);

impl ResponseDigest {
    pub(crate) fn set(&self, digest: [u8; 32]) {
        let _ = self.0.set(digest);
    }

    /// The digest, once final.
    pub fn get(&self) -> Option<[u8; 32]> {
        self.0.get().copied()
    }
}
