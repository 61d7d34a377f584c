//! Incremental decryption of an E2EE v2 server-sent-event stream: [`StreamDecryptor`].

use bytes::{Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::request::ExchangeContext;
use crate::protocol::response::decrypt_chunk;
use crate::protocol::sse::{SseDecoder, SseEvent, SseLimits};

/// Most distinct kinds of cleartext path a stream's summary keeps
/// ([`StreamDecryptor::cleartext_fields`]).
pub(crate) const MAX_CLEARTEXT_KINDS: usize = 32;

/// One item produced by [`StreamDecryptor::next_output`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamOutput {
    /// A complete event, decrypted and re-framed (LF line endings, blank-line terminated).
    Event(Bytes),
    /// An event that signals an in-band error (a non-null `error` member, or a `finish_reason`
    /// of `"error"` or ending in `_error`, as the reference gateway detects them): the event's
    /// bytes, decrypted like any other (an error event cannot carry a protected field in clear),
    /// and the error it carries ([`ErrorKind::InBandError`], its strings capped at 200
    /// characters).
    InBandError(Bytes, Error),
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamEnd {
    /// Events decrypted (data events that carried at least one encrypted field).
    pub decrypted_events: u64,
    /// The kinds of generated content seen in clear, first occurrence first: paths with every
    /// index replaced by `*` (`choices.*.delta.tool_calls.*.function.arguments`), at most
    /// 32.
    pub cleartext_fields: Vec<String>,
}

/// Incremental decryptor of one exchange's E2EE v2 server-sent-event stream.
///
/// Feed network bytes with [`push`](StreamDecryptor::push), take decrypted, re-framed events
/// with [`next_output`](StreamDecryptor::next_output) as soon as each one is complete and
/// authenticated, and call [`finish`](StreamDecryptor::finish) at end of input to learn whether
/// the stream ended cleanly. Memory is bounded by the largest event ([`SseLimits`]).
///
/// # What a stream's encryption does not protect
///
/// Each event's fields are authenticated, but every event of a stream is sealed under the same
/// AAD for the same field (same path, same chunk `id`, same request nonce and timestamp): the
/// AAD binds a ciphertext to its exchange and its place *in an event*, not to its position *in
/// the stream*. An on-path attacker who can read and rewrite the stream can therefore **drop,
/// duplicate or reorder** encrypted events, or cut the stream before `[DONE]` and append a
/// forged clear `[DONE]`, and every event still decrypts. Nor is anything the gateway leaves in
/// clear (`finish_reason`, tool calls, usage) authenticated. Only the gateway's signed receipt
/// covers the stream as a whole: its `response.returned` hash is over the exact bytes sent. So:
///
/// - check the receipt against the bytes received
///   ([`ReceiptClient::fetch_and_verify`](crate::receipt::ReceiptClient::fetch_and_verify) with
///   the [`ExchangeRecord`](crate::receipt::ExchangeRecord) the layer records), or
/// - let [`VerifyBeforeReleaseLayer`](crate::receipt::VerifyBeforeReleaseLayer) do it: events are
///   released as they authenticate, but the terminal `[DONE]` and the end of the body are held
///   until the receipt verified, and a stream whose receipt fails ends with an error instead.
///   A consumer that acts only on a complete stream never acts on a tampered one.
///
/// ```
/// use tower_aci::protocol::{StreamDecryptor, StreamOutput};
/// use tower_aci::ErrorKind;
/// # use tower_aci::protocol::*;
/// # let ctx = ExchangeContext::new(Endpoint::ChatCompletions, SecretKey::generate(Suite::X25519, &mut rand_core::OsRng), "m", "00", 1);
///
/// // `ctx`: the `context` of the `EncryptedRequest` that `encrypt_request` sealed.
/// let mut dec = StreamDecryptor::new(ctx, Default::default());
/// dec.push(b": keep-alive\n\ndata: {\"choices\":[]}\n\n");
/// assert!(matches!(dec.next_output().unwrap(), Some(StreamOutput::Event(_))));
/// assert!(matches!(dec.next_output().unwrap(), Some(StreamOutput::Event(_))));
/// assert!(dec.next_output().unwrap().is_none());
/// // No `[DONE]`: the stream was cut short.
/// assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::Truncated);
/// ```
#[derive(Debug)]
pub struct StreamDecryptor {
    ctx: ExchangeContext,
    decoder: SseDecoder,
    done: bool,
    in_band_error: Option<(Box<str>, String)>,
    decrypted_events: u64,
    /// Index-free kinds of cleartext path seen so far (bounded).
    cleartext: Vec<String>,
    last_decrypted: Vec<String>,
    last_cleartext: Vec<String>,
    out: BytesMut,
}

/// A path with its numeric segments (indexes, which the peer chooses) replaced by `*`.
fn path_kind(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (n, segment) in path.split('.').enumerate() {
        if n > 0 {
            out.push('.');
        }
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push('*');
        } else {
            out.push_str(segment);
        }
    }
    out
}

impl StreamDecryptor {
    /// A decryptor for the exchange `ctx`.
    pub fn new(ctx: ExchangeContext, limits: SseLimits) -> Self {
        StreamDecryptor {
            ctx,
            decoder: SseDecoder::new(limits),
            done: false,
            in_band_error: None,
            decrypted_events: 0,
            cleartext: Vec::new(),
            last_decrypted: Vec::new(),
            last_cleartext: Vec::new(),
            out: BytesMut::new(),
        }
    }

    /// The exchange this stream belongs to.
    #[doc(hidden)] // for the test gateway and the crate's own tests: not API
    pub fn context(&self) -> &ExchangeContext {
        &self.ctx
    }

    /// Append bytes read from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.decoder.push(chunk);
    }

    /// Append bytes read from the network, without copying when possible.
    pub(crate) fn push_bytes(&mut self, chunk: Bytes) {
        self.decoder.push_bytes(chunk);
    }

    /// Whether `[DONE]` has been seen.
    #[doc(hidden)] // for the test gateway (crates/aci-test-gateway): not API
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// The kinds of generated content seen in clear so far: paths with every index replaced by
    /// `*`, first occurrence first, at most 32.
    pub fn cleartext_fields(&self) -> &[String] {
        &self.cleartext
    }

    /// The field paths that held ciphertext in the event [`next_output`](Self::next_output)
    /// returned last, as the AAD names them (`choices.1.delta.content`); empty for an event
    /// without ciphertext.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn last_decrypted_paths(&self) -> &[String] {
        &self.last_decrypted
    }

    /// The paths of generated content that came in clear in the event
    /// [`next_output`](Self::next_output) returned last (`choices.0.delta.tool_calls.0.function.arguments`);
    /// empty when none.
    #[doc(hidden)] // a hook for the crate's own tests: not API
    pub fn last_cleartext_paths(&self) -> &[String] {
        &self.last_cleartext
    }

    /// The next complete event, decrypted. `Ok(None)` means more input is needed.
    pub fn next_output(&mut self) -> Result<Option<StreamOutput>> {
        let Some(event) = self.next_event()? else { return Ok(None) };
        self.process(event).map(Some)
    }

    /// The next complete event, framed but not yet decrypted: [`process`](Self::process) it
    /// (possibly on another thread) before taking the next. Together they are
    /// [`next_output`](Self::next_output).
    pub(crate) fn next_event(&mut self) -> Result<Option<SseEvent>> {
        self.last_decrypted.clear();
        self.last_cleartext.clear();
        self.decoder.next_event()
    }

    /// Decrypt and re-frame one event taken with [`next_event`](Self::next_event).
    pub(crate) fn process(&mut self, event: SseEvent) -> Result<StreamOutput> {
        let Some(data) = event.data() else {
            // Comments, keep-alives, bare `event:` lines: re-emitted as they are.
            return Ok(StreamOutput::Event(self.encode(&event, None)));
        };
        if self.done {
            return Err(Error::new(ErrorKind::Protocol, "data event after [DONE]"));
        }
        if event.is_done() {
            self.done = true;
            return Ok(StreamOutput::Event(self.encode(&event, None)));
        }
        let chunk = decrypt_chunk(&self.ctx, &data)?;
        if !chunk.decrypted.is_empty() {
            self.decrypted_events += 1;
        }
        self.note_cleartext(&chunk.cleartext);
        self.last_decrypted = chunk.decrypted;
        self.last_cleartext = chunk.cleartext;
        let bytes = self.encode(&event, chunk.payload.as_deref());
        match chunk.error {
            None => Ok(StreamOutput::Event(bytes)),
            Some((error_type, message)) => {
                let err = Error::in_band(error_type.as_str(), &message);
                if self.in_band_error.is_none() {
                    self.in_band_error = Some((error_type.into(), message));
                }
                Ok(StreamOutput::InBandError(bytes, err))
            }
        }
    }

    /// Add the kinds of `paths` to the summary: a bounded list of index-free paths, so neither
    /// its length nor the cost of adding to it grows with what the peer sends.
    fn note_cleartext(&mut self, paths: &[String]) {
        for p in paths {
            if self.cleartext.len() >= MAX_CLEARTEXT_KINDS {
                return;
            }
            let kind = path_kind(p);
            if !self.cleartext.contains(&kind) {
                self.cleartext.push(kind);
            }
        }
    }

    fn encode(&mut self, event: &SseEvent, replacement: Option<&[u8]>) -> Bytes {
        event.encode(replacement, &mut self.out);
        self.out.split().freeze()
    }

    /// Call at end of input. Clean only when `[DONE]` was seen with no in-band error before it
    /// and no partial event is left over; otherwise `Truncated` (or the in-band error).
    pub fn finish(&mut self) -> Result<StreamEnd> {
        self.decoder.finish()?;
        if let Some((t, msg)) = &self.in_band_error {
            return Err(Error::in_band(t.clone(), msg));
        }
        if !self.done {
            return Err(Error::new(ErrorKind::Truncated, "stream ended without [DONE]"));
        }
        Ok(StreamEnd { decrypted_events: self.decrypted_events, cleartext_fields: self.cleartext.clone() })
    }
}
