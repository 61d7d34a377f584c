//! One E2EE exchange, independent of the transport: encrypt a collected request body and rewrite
//! its headers, then check the answer's headers, record the exchange and wrap the body in the
//! decrypting body. Shared by the tower layer and the reqwest-middleware adapter.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use sha2::{Digest, Sha256};

use crate::attest::channel::{ChannelRule, require_channel};
use crate::e2ee::body::ResponseBody;
use crate::e2ee::config::{Config, LAYER_OPT_OUT, Target};
use crate::error::{Error, ErrorKind};
use crate::protocol::request::{EncryptOptions, ExchangeContext, encrypt_request};
use crate::protocol::{Endpoint, GatewayError, headers};
use crate::receipt::{ExchangeRecord, ResponseDigest};

/// An exchange in flight: what decrypts the answer and what the record will hold.
pub(crate) struct Exchange {
    pub(crate) ctx: ExchangeContext,
    pub(crate) config: Arc<Config>,
    pub(crate) attested_digest: String,
    pub(crate) path: String,
    pub(crate) restored_sha256: [u8; 32],
    /// The `X-Model-Pub-Key` the request was encrypted to.
    pub(crate) model_key: String,
    pub(crate) counts: Arc<crate::telemetry::FieldCounts>,
    /// Where the request went: what the answer's channel must show.
    pub(crate) target: Target,
}

/// Encrypt a collected body: rewrite `headers` in place, return the wire body and the exchange.
/// Shared by the tower layer and the reqwest middleware.
pub(crate) fn encrypt(
    config: &Arc<Config>,
    endpoint: Endpoint,
    path: &str,
    target: Target,
    h: &mut http::HeaderMap,
    body: &[u8],
) -> Result<(Bytes, Box<Exchange>), Error> {
    let keyset = config.keys.current()?;
    let key = keyset.e2ee_key();
    crate::telemetry::exchange_encrypted(endpoint, key.suite(), key.key_id());
    let span = tracing::debug_span!("aci.e2ee.encrypt", endpoint = endpoint.path(), suite = %key.suite(), key_id = key.key_id());
    let _enter = span.enter();
    let options = EncryptOptions::default().strict(config.strict);
    let now = config.keys.now();
    let enc = config.randomness.with(|mut rng| encrypt_request(endpoint, body, key, &options, now, &mut rng))?;
    tracing::debug!(fields = enc.fields, bytes = enc.body.len(), "request encrypted");
    if !enc.clear_members.is_empty() {
        // Names only, never values; once per request.
        tracing::warn!(
            members = ?enc.clear_members,
            "the request carries members that travel in clear and may hold private data (strict mode refuses them)"
        );
    }

    for name in headers::E2EE_REQUEST_HEADERS {
        h.remove(name);
    }
    let model_key = key.public_key_text().to_owned();
    for (name, value) in enc.headers {
        if let Some(name) = name {
            h.insert(name, value);
        }
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(enc.body.len()));

    let exchange = Box::new(Exchange {
        ctx: enc.context,
        config: config.clone(),
        attested_digest: keyset.digest().to_owned(),
        path: path.to_owned(),
        restored_sha256: enc.restored_body_sha256,
        model_key,
        counts: crate::telemetry::FieldCounts::sealed(enc.fields),
        target,
    });
    Ok((Bytes::from(enc.body), exchange))
}

/// A 2xx answer to an E2EE request: check its headers, record the exchange, and wrap the body
/// in the decrypting body (SSE or buffered).
///
/// A 2xx that says `X-E2EE-Applied: false` means the gateway saw a plaintext request: something
/// between us stripped the E2EE headers (and the gateway forwarded our ciphertext as if it were
/// the prompt). That is a [`ErrorKind::Protocol`] error here, before any byte of the body.
pub(crate) fn decrypting_response<B>(
    parts: &mut http::response::Parts,
    body: B,
    exchange: Box<Exchange>,
) -> Result<ResponseBody<B>, Error> {
    check_channel(parts, &exchange)?;
    if parts
        .headers
        .get(headers::E2EE_APPLIED)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"false"))
    {
        return Err(Error::new(
            ErrorKind::Protocol,
            "the gateway answered an encrypted request with X-E2EE-Applied: false: something between client and \
             gateway stripped the E2EE headers, so the gateway took the request for plaintext",
        ));
    }
    // The request's `stream` flag decides which decoder applies; a content type that disagrees
    // is refused, so that an answer served as SSE to a buffered request cannot be released event
    // by event (before its receipt verified, under `VerifyBeforeReleaseLayer`), and a buffered
    // answer to a stream request is not taken for a stream.
    let streamed = exchange.ctx.stream();
    if streamed != is_event_stream(parts) {
        let (asked, got) = if streamed {
            ("a stream (\"stream\": true)", "not text/event-stream")
        } else {
            ("a buffered answer", "text/event-stream")
        };
        return Err(Error::new(
            ErrorKind::Protocol,
            format!(
                "the request asked for {asked} but the answer's content type is {got} ({ct}); refusing to decode \
                 it as the other kind",
                ct = header_str(parts, &CONTENT_TYPE).map_or("none".into(), |c| c.chars().take(80).collect::<String>()),
            ),
        ));
    }
    let digest = Arc::new(ResponseDigest::default());
    let record = inspect(parts, &exchange, streamed, digest.clone())?;
    parts.headers.remove(CONTENT_LENGTH);
    parts.extensions.insert(record);
    parts.extensions.insert(exchange.counts.clone());
    let Exchange { ctx, config, counts, .. } = *exchange;
    Ok(if streamed {
        ResponseBody::sse(body, ctx, &config, digest)
    } else {
        ResponseBody::buffered(body, ctx, &config, digest)
    }
    .counting(counts))
}

/// A non-2xx answer to an E2EE request, read whole: record it, surface the gateway's error
/// document in the extensions, and pass the bytes through readable.
pub(crate) fn error_response(
    parts: &mut http::response::Parts,
    bytes: &Bytes,
    exchange: &Exchange,
) -> Result<(), Error> {
    check_channel(parts, exchange)?;
    let digest = Arc::new(ResponseDigest::default());
    digest.set(Sha256::digest(bytes).into());
    let record = inspect(parts, exchange, false, digest)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let gw = GatewayError::parse(parts.status, bytes).with_headers(&parts.headers, now);
    tracing::debug!(status = gw.status.as_u16(), error_type = ?gw.error_type, "gateway answered an error");
    if gw.error_type.as_deref() == Some("e2ee_model_key_mismatch") {
        exchange.config.keys.report_key_mismatch();
    }
    parts.extensions.insert(record);
    parts.extensions.insert(exchange.counts.clone());
    parts.extensions.insert(gw);
    Ok(())
}

/// An answer to a request that needs a bound channel must name the attested TLS channel it came
/// over: E2EE seals the answer to the client's ephemeral key, which travels in clear, so anyone
/// who sees the request can forge an answer that decrypts cleanly.
fn check_channel(parts: &http::response::Parts, exchange: &Exchange) -> Result<(), Error> {
    if exchange.target.rule == ChannelRule::Bound {
        require_channel(
            &parts.extensions,
            exchange.target.host.as_deref(),
            "the answer to an E2EE request",
            LAYER_OPT_OUT,
        )?;
    }
    Ok(())
}

fn header_str<'a>(parts: &'a http::response::Parts, name: &http::HeaderName) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Check the E2EE response headers and build the record of the exchange.
fn inspect(
    parts: &http::response::Parts,
    exchange: &Exchange,
    streamed: bool,
    digest: Arc<ResponseDigest>,
) -> Result<ExchangeRecord, Error> {
    if let Some(v) = parts.headers.get(headers::E2EE_VERSION) {
        if v.as_bytes() != b"2" {
            return Err(Error::new(ErrorKind::Protocol, "the response claims another E2EE version than 2"));
        }
    }
    if let Some(algo) = header_str(parts, &headers::E2EE_ALGO) {
        if algo != exchange.ctx.suite().algo() {
            return Err(Error::new(ErrorKind::Protocol, "the response names another E2EE suite than the request's"));
        }
    }
    let keyset_digest = header_str(parts, &headers::ACI_KEYSET_DIGEST).map(str::to_owned);
    if let Some(d) = &keyset_digest {
        exchange.config.keys.observe_digest(d);
    }
    Ok(ExchangeRecord {
        receipt_id: header_str(parts, &headers::RECEIPT_ID).map(str::to_owned),
        keyset_digest,
        attested_digest: exchange.attested_digest.clone(),
        suite: Some(exchange.ctx.suite()),
        e2ee_public_key: Some(exchange.model_key.clone()),
        endpoint: exchange.ctx.endpoint(),
        path: exchange.path.clone(),
        model: exchange.ctx.model().to_owned(),
        request_body_sha256: exchange.restored_sha256,
        streamed,
        status: parts.status.as_u16(),
        response: digest,
    })
}

fn is_event_stream(parts: &http::response::Parts) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    header_str(parts, &CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.trim_start().as_bytes();
        ct.len() >= SSE.len() && ct[..SSE.len()].eq_ignore_ascii_case(SSE)
    })
}
