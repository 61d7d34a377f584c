//! What the E2EE layer saw of one exchange: the facts a receipt is checked against.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::hex;
use crate::protocol::Endpoint;
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
    ) -> crate::error::Result<ExchangeRecord> {
        use sha2::{Digest, Sha256};
        let endpoint = Endpoint::from_path(path).ok_or_else(|| {
            crate::error::Error::new(crate::error::ErrorKind::Config, format!("{path} is not an inference endpoint"))
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

impl ExchangeRecord {
    /// Rebuild the record of an E2EE exchange from stored facts, to re-verify an archived
    /// exchange offline against its receipt ([`verify_exchange`](crate::receipt::verify_exchange)).
    ///
    /// `path` is the request path as sent (it must name an inference endpoint), `model` the
    /// request's `model`. Set the rest with the builder: at least the request hash (SHA-256 of
    /// the body the gateway restored, as [`request_body_sha256`](Self::request_body_sha256)
    /// reported it) and the response hash (SHA-256 of the exact response bytes received, as
    /// [`response_body_sha256`](Self::response_body_sha256) reported it); a record without a
    /// response hash verifies nothing ([`ReceiptFailure::NotAvailable`](crate::error::ReceiptFailure)).
    ///
    /// ```
    /// use tower_aci::protocol::Suite;
    /// use tower_aci::receipt::ExchangeRecord;
    ///
    /// // Facts an audit log kept of one exchange.
    /// let record = ExchangeRecord::builder("/v1/chat/completions", "test-model")
    ///     .receipt_id("rcpt-724f6c755228abb5208c4fd6")
    ///     .request_body_sha256([0x67; 32])
    ///     .response_body_sha256([0x63; 32])
    ///     .keyset_digest("sha256:c3f9218a215b0e5a63c20c924493ef971ce78a516274521a4632ded4cd40d1b5")
    ///     .suite(Suite::X25519)
    ///     .streamed(true)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(record.receipt_id(), Some("rcpt-724f6c755228abb5208c4fd6"));
    /// assert!(record.streamed());
    /// assert!(ExchangeRecord::builder("/v1/messages", "m").build().is_err());
    /// ```
    pub fn builder(path: impl Into<String>, model: impl Into<String>) -> ExchangeRecordBuilder {
        ExchangeRecordBuilder {
            path: path.into(),
            model: model.into(),
            receipt_id: None,
            keyset_digest: None,
            attested_digest: None,
            suite: None,
            e2ee_public_key: None,
            request_body_sha256: None,
            response_body_sha256: None,
            streamed: false,
            status: 200,
        }
    }
}

/// Builds an [`ExchangeRecord`] from stored facts: see [`ExchangeRecord::builder`]. Methods
/// take and return the builder by value.
#[derive(Debug, Clone)]
#[must_use]
pub struct ExchangeRecordBuilder {
    path: String,
    model: String,
    receipt_id: Option<String>,
    keyset_digest: Option<String>,
    attested_digest: Option<String>,
    suite: Option<Suite>,
    e2ee_public_key: Option<String>,
    request_body_sha256: Option<[u8; 32]>,
    response_body_sha256: Option<[u8; 32]>,
    streamed: bool,
    status: u16,
}

impl ExchangeRecordBuilder {
    /// The receipt id the response named (`X-Receipt-Id`). When set, the receipt must carry it.
    pub fn receipt_id(mut self, id: impl Into<String>) -> Self {
        self.receipt_id = Some(id.into());
        self
    }

    /// `X-ACI-Keyset-Digest` of the replica that served. Also taken as the attested digest
    /// unless [`attested_keyset_digest`](Self::attested_keyset_digest) says otherwise.
    pub fn keyset_digest(mut self, digest: impl Into<String>) -> Self {
        self.keyset_digest = Some(digest.into());
        self
    }

    /// The digest of the attested keyset the request was encrypted to.
    pub fn attested_keyset_digest(mut self, digest: impl Into<String>) -> Self {
        self.attested_digest = Some(digest.into());
        self
    }

    /// The E2EE suite of the exchange (none: a plaintext exchange).
    pub fn suite(mut self, suite: Suite) -> Self {
        self.suite = Some(suite);
        self
    }

    /// The E2EE public key the request was encrypted to (`X-Model-Pub-Key`).
    pub fn e2ee_public_key(mut self, key: impl Into<String>) -> Self {
        self.e2ee_public_key = Some(key.into());
        self
    }

    /// SHA-256 of the body the gateway restored (for a plaintext exchange: of the raw request
    /// body). Required.
    pub fn request_body_sha256(mut self, digest: [u8; 32]) -> Self {
        self.request_body_sha256 = Some(digest);
        self
    }

    /// SHA-256 of the exact response body bytes received (SSE framing included).
    pub fn response_body_sha256(mut self, digest: [u8; 32]) -> Self {
        self.response_body_sha256 = Some(digest);
        self
    }

    /// Whether the response was an SSE stream (default `false`).
    pub fn streamed(mut self, streamed: bool) -> Self {
        self.streamed = streamed;
        self
    }

    /// The response status (default 200).
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// The record. Fails with [`ErrorKind::Config`](crate::error::ErrorKind::Config) when the path is
    /// not an inference endpoint or the request hash is missing.
    pub fn build(self) -> crate::error::Result<ExchangeRecord> {
        let config = |m: String| crate::error::Error::new(crate::error::ErrorKind::Config, m);
        let endpoint = Endpoint::from_path(&self.path)
            .ok_or_else(|| config(format!("{} is not an inference endpoint", self.path)))?;
        let request_body_sha256 =
            self.request_body_sha256.ok_or_else(|| config("an exchange record needs the request hash".into()))?;
        let response = Arc::new(ResponseDigest::default());
        if let Some(d) = self.response_body_sha256 {
            response.set(d);
        }
        let attested_digest = self.attested_digest.or_else(|| self.keyset_digest.clone()).unwrap_or_default();
        Ok(ExchangeRecord {
            receipt_id: self.receipt_id,
            keyset_digest: self.keyset_digest,
            attested_digest,
            suite: self.suite,
            e2ee_public_key: self.e2ee_public_key,
            endpoint,
            path: self.path,
            model: self.model,
            request_body_sha256,
            streamed: self.streamed,
            status: self.status,
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
pub(crate) struct ResponseDigest(OnceLock<[u8; 32]>);

impl ResponseDigest {
    pub(crate) fn set(&self, digest: [u8; 32]) {
        let _ = self.0.set(digest);
    }

    /// The digest, once final.
    pub(crate) fn get(&self) -> Option<[u8; 32]> {
        self.0.get().copied()
    }
}
