//! Incremental decryption of an E2EE v2 server-sent-event stream.
//!
//! Feed network bytes with [`push`](StreamDecryptor::push), take decrypted, re-framed events
//! with [`next_output`](StreamDecryptor::next_output) as soon as each one is complete and
//! authenticated, and call [`finish`](StreamDecryptor::finish) at end of input to learn whether
//! the stream ended cleanly. Memory is bounded by the largest event ([`SseLimits`]).
//!
//! ```
//! use tower_aci::protocol::request::{Endpoint, ExchangeContext};
//! use tower_aci::protocol::stream::{StreamDecryptor, StreamOutput};
//! use tower_aci::protocol::suite::{SecretKey, Suite};
//! use tower_aci::ErrorKind;
//!
//! let ctx = ExchangeContext::new(Endpoint::ChatCompletions,
//!     SecretKey::generate(Suite::X25519, &mut rand_core::OsRng), "m", "00", 1);
//! let mut dec = StreamDecryptor::new(ctx, Default::default());
//! dec.push(b": keep-alive\n\ndata: {\"choices\":[]}\n\n");
//! assert!(matches!(dec.next_output().unwrap(), Some(StreamOutput::Event(_))));
//! assert!(matches!(dec.next_output().unwrap(), Some(StreamOutput::Event(_))));
//! assert!(dec.next_output().unwrap().is_none());
//! // No `[DONE]`: the stream was cut short.
//! assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::Truncated);
//! ```

use bytes::{Bytes, BytesMut};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::request::ExchangeContext;
use crate::protocol::response::{ChunkOutcome, decrypt_chunk};
use crate::protocol::sse::{SseDecoder, SseEvent, SseLimits};

/// One item produced by [`StreamDecryptor::next_output`].
#[derive(Debug)]
pub enum StreamOutput {
    /// A complete event, decrypted and re-framed (LF line endings, blank-line terminated).
    Event(Bytes),
    /// An in-band `{"error": …}` event: the bytes of the event (in clear, as the gateway sent it)
    /// and the error it carries ([`ErrorKind::InBandError`]).
    InBandError(Bytes, Error),
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// Events decrypted (data events that carried at least one encrypted field).
    pub decrypted_events: u64,
    /// Paths of generated content seen in clear (first occurrence of each).
    pub cleartext_fields: Vec<String>,
}

/// Incremental decryptor of one exchange's SSE stream.
#[derive(Debug)]
pub struct StreamDecryptor {
    ctx: ExchangeContext,
    decoder: SseDecoder,
    done: bool,
    in_band_error: Option<(Box<str>, String)>,
    decrypted_events: u64,
    cleartext: Vec<String>,
    out: BytesMut,
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
            out: BytesMut::new(),
        }
    }

    /// The exchange this stream belongs to.
    pub fn context(&self) -> &ExchangeContext {
        &self.ctx
    }

    /// Append bytes read from the network.
    pub fn push(&mut self, chunk: &[u8]) {
        self.decoder.push(chunk);
    }

    /// Append bytes read from the network, without copying when possible.
    pub fn push_bytes(&mut self, chunk: Bytes) {
        self.decoder.push_bytes(chunk);
    }

    /// Whether `[DONE]` has been seen.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// Paths of generated content seen in clear so far.
    pub fn cleartext_fields(&self) -> &[String] {
        &self.cleartext
    }

    /// The next complete event, decrypted. `Ok(None)` means more input is needed.
    pub fn next_output(&mut self) -> Result<Option<StreamOutput>> {
        let Some(event) = self.decoder.next_event()? else { return Ok(None) };
        self.process(event).map(Some)
    }

    fn process(&mut self, event: SseEvent) -> Result<StreamOutput> {
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
        match decrypt_chunk(&self.ctx, &data)? {
            ChunkOutcome::Unchanged { cleartext } => {
                self.note_cleartext(cleartext);
                Ok(StreamOutput::Event(self.encode(&event, None)))
            }
            ChunkOutcome::Decrypted { payload, cleartext } => {
                self.note_cleartext(cleartext);
                self.decrypted_events += 1;
                Ok(StreamOutput::Event(self.encode(&event, Some(&payload))))
            }
            ChunkOutcome::InBandError { error_type, message } => {
                let err = Error::in_band(error_type.as_str(), &message);
                if self.in_band_error.is_none() {
                    self.in_band_error = Some((error_type.into(), message));
                }
                Ok(StreamOutput::InBandError(self.encode(&event, None), err))
            }
        }
    }

    fn note_cleartext(&mut self, paths: Vec<String>) {
        for p in paths {
            if !self.cleartext.contains(&p) {
                self.cleartext.push(p);
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
