//! Sans-IO incremental decoder for `text/event-stream` *framing* (HTML Living Standard,
//! "event stream interpretation"), with no knowledge of JSON or encryption.
//!
//! Bytes go in with [`SseDecoder::push`] in whatever chunks the network delivers; complete events
//! come out of [`SseDecoder::next_event`] as [`SseEvent`]s whose lines are [`Bytes`] slices of the
//! input (no per-line copy). An event is released exactly when its terminating blank line has
//! arrived, never earlier. Lines end with CRLF, LF or a lone CR, and a CRLF split across two
//! chunks is one terminator. Line and event sizes are bounded by [`SseLimits`], checked also while
//! a line is still incomplete, so memory stays bounded whatever the peer sends.
//!
//! [`SseEvent::encode`] re-frames an event with LF terminators, either verbatim or with its data
//! lines replaced by one `data:` line, as the gateway does after encrypting a chunk (protocol
//! §4.3).
//!
//! ```
//! use bytes::BytesMut;
//! use tower_aci::__private::SseDecoder;
//! use tower_aci::protocol::SseLimits;
//!
//! let mut dec = SseDecoder::new(SseLimits::default());
//! dec.push(b": PROCESSING\r\n\r\nevent: chunk\r\ndata: {\"a\":");
//! let keep_alive = dec.next_event()?.expect("complete");
//! assert_eq!(keep_alive.data(), None);
//! assert!(dec.next_event()?.is_none()); // the second event is not complete yet
//! dec.push(b"1}\r\n\r\ndata:[DONE]\n\n");
//! let chunk = dec.next_event()?.expect("complete");
//! assert_eq!(chunk.data().as_deref(), Some(&b"{\"a\":1}"[..]));
//! let mut out = BytesMut::new();
//! chunk.encode(Some(b"{\"a\":2}"), &mut out);
//! assert_eq!(&out[..], b"event: chunk\ndata: {\"a\":2}\n\n");
//! assert!(dec.next_event()?.expect("complete").is_done());
//! dec.finish()?;
//! # Ok::<(), tower_aci::Error>(())
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Error, ErrorKind};

/// The UTF-8 byte order mark, skipped once at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Size limits of an SSE stream's framing: what [`StreamDecryptor`](crate::protocol::StreamDecryptor)
/// and the E2EE layer ([`E2eeLayer::sse_limits`](crate::E2eeLayer::sse_limits)) accept before
/// they fail with [`ErrorKind::TooLarge`].
///
/// Sizes are counted in wire bytes: a line's length excludes its terminator; an event's size is
/// the sum of its lines' lengths plus one byte per line (its blank terminating line excluded).
///
/// ```
/// use tower_aci::protocol::SseLimits;
///
/// let limits = SseLimits::default().max_line_bytes(64 << 10).max_event_bytes(256 << 10).max_event_lines(512);
/// # let _ = limits;
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SseLimits {
    /// Longest accepted line, terminator excluded.
    pub(crate) max_line: usize,
    /// Largest accepted event.
    pub(crate) max_event: usize,
    /// Most lines in one event.
    pub(crate) max_event_lines: usize,
}

impl Default for SseLimits {
    /// 1 MiB per line, 4 MiB per event, 4,096 lines per event.
    fn default() -> Self {
        SseLimits { max_line: 1 << 20, max_event: 4 << 20, max_event_lines: 4096 }
    }
}

impl SseLimits {
    /// The longest accepted line, terminator excluded. Default 1 MiB.
    #[must_use]
    pub fn max_line_bytes(mut self, bytes: usize) -> Self {
        self.max_line = bytes;
        self
    }

    /// The largest accepted event. Default 4 MiB.
    #[must_use]
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.max_event = bytes;
        self
    }

    /// The most lines in one event (each line costs bookkeeping beyond its bytes, so this bounds
    /// memory for events made of many tiny lines). Default 4,096.
    #[must_use]
    pub fn max_event_lines(mut self, lines: usize) -> Self {
        self.max_event_lines = lines;
        self
    }
}

/// One dispatched event: its non-blank lines, split into `data` lines and all others.
///
/// The original interleaving of data and other lines is remembered, so
/// [`encode(None, …)`](SseEvent::encode) reproduces the event's lines exactly. Two events are
/// equal when they have the same lines in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// Every line of the event except `data` lines, in order, without line terminator:
    /// comments (`:…`), `event:`, `id:`, `retry:` and unknown fields.
    pub(crate) other_lines: Vec<Bytes>,
    /// The raw `data` lines as received (the full line, e.g. `data: {..}` or `data:[DONE]`),
    /// without terminator.
    pub(crate) data_lines: Vec<Bytes>,
    /// For each line in original order: `true` for a data line, `false` for another line.
    order: Vec<bool>,
}

impl SseEvent {
    #[cfg(test)]
    /// An event made of `other_lines` followed by `data_lines` (in that order for
    /// [`encode`](SseEvent::encode)). Lines are taken as given, without classification.
    #[must_use]
    pub(crate) fn new(other_lines: Vec<Bytes>, data_lines: Vec<Bytes>) -> Self {
        let mut order = vec![false; other_lines.len()];
        order.resize(other_lines.len() + data_lines.len(), true);
        SseEvent { other_lines, data_lines, order }
    }

    /// Append one line (without terminator), classified by its field name: a line whose field
    /// name is exactly `data` goes to [`data_lines`](SseEvent::data_lines), any other line to
    /// [`other_lines`](SseEvent::other_lines). The line should be non-empty and contain no CR or
    /// LF, or re-encoding will not reproduce the event.
    pub(crate) fn push_line(&mut self, line: Bytes) {
        let is_data = is_data_line(&line);
        if is_data {
            self.data_lines.push(line);
        } else {
            self.other_lines.push(line);
        }
        self.order.push(is_data);
    }

    /// `true` when the event has no line at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.other_lines.is_empty() && self.data_lines.is_empty()
    }

    /// How many lines the event holds.
    pub(crate) fn line_count(&self) -> usize {
        self.other_lines.len() + self.data_lines.len()
    }

    /// All lines of the event in their original order.
    pub fn lines(&self) -> impl Iterator<Item = &Bytes> + '_ {
        Lines { event: self, pos: 0, data: 0, other: 0 }
    }

    /// The data payloads joined with `'\n'`, each with its `data` field name, the colon and one
    /// optional following space stripped (a line `data` with no colon is an empty payload).
    /// `None` when the event has no data line. With exactly one data line the result is a slice
    /// of it (no copy).
    #[must_use]
    pub fn data(&self) -> Option<Bytes> {
        match self.data_lines.as_slice() {
            [] => None,
            [one] => Some(data_payload(one)),
            many => {
                let len = many.iter().map(|l| data_payload_range(l).len() + 1).sum::<usize>() - 1;
                let mut out = BytesMut::with_capacity(len);
                for (i, line) in many.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b'\n');
                    }
                    out.extend_from_slice(&line[data_payload_range(line)]);
                }
                Some(out.freeze())
            }
        }
    }

    /// `true` when [`data`](SseEvent::data) is exactly `[DONE]` (`data:[DONE]` and
    /// `data: [DONE]` both qualify).
    #[must_use]
    pub fn is_done(&self) -> bool {
        // Two or more data lines join with '\n', which `[DONE]` does not contain.
        match self.data_lines.as_slice() {
            [one] => &one[data_payload_range(one)] == b"[DONE]",
            _ => false,
        }
    }

    /// Re-encode the event with LF framing into `out`: each line followed by `\n`, then a blank
    /// line.
    ///
    /// With `replacement_data: None` every line is emitted verbatim in its original order. With
    /// `Some(payload)` the other lines are emitted in their original order, then `data: <payload>`
    /// (how the gateway re-frames an event after encrypting it, protocol §4.3). A payload
    /// containing `'\n'` is emitted as one `data:` line per `'\n'`-separated part, so that
    /// decoding the output yields `payload` again; it must not contain CR.
    ///
    /// An event with no line at all encodes to nothing.
    pub fn encode(&self, replacement_data: Option<&[u8]>, out: &mut BytesMut) {
        match replacement_data {
            None => {
                if self.is_empty() {
                    return;
                }
                out.reserve(self.lines().map(|l| l.len() + 1).sum::<usize>() + 1);
                for line in self.lines() {
                    out.extend_from_slice(line);
                    out.put_u8(b'\n');
                }
            }
            Some(payload) => {
                let parts = memchr::memchr_iter(b'\n', payload).count() + 1;
                out.reserve(
                    self.other_lines.iter().map(|l| l.len() + 1).sum::<usize>() + payload.len() + 7 * parts + 1,
                );
                for line in &self.other_lines {
                    out.extend_from_slice(line);
                    out.put_u8(b'\n');
                }
                for part in payload.split(|&b| b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(part);
                    out.put_u8(b'\n');
                }
            }
        }
        out.put_u8(b'\n');
    }
}

/// Iterator over an event's lines in original order; tolerates `order` and the public line
/// vectors disagreeing (after a caller edited them) by appending whatever is left.
struct Lines<'a> {
    event: &'a SseEvent,
    pos: usize,
    data: usize,
    other: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a Bytes;

    fn next(&mut self) -> Option<&'a Bytes> {
        let ev = self.event;
        while let Some(&is_data) = ev.order.get(self.pos) {
            self.pos += 1;
            let (list, idx) =
                if is_data { (&ev.data_lines, &mut self.data) } else { (&ev.other_lines, &mut self.other) };
            if let Some(line) = list.get(*idx) {
                *idx += 1;
                return Some(line);
            }
        }
        if let Some(line) = ev.other_lines.get(self.other) {
            self.other += 1;
            return Some(line);
        }
        let line = ev.data_lines.get(self.data)?;
        self.data += 1;
        Some(line)
    }
}

/// Whether the line's field name (everything before the first colon, or the whole line) is
/// exactly `data`.
fn is_data_line(line: &[u8]) -> bool {
    line.starts_with(b"data") && matches!(line.get(4), None | Some(b':'))
}

/// The value range of a field line: after the first colon and one optional space; empty when
/// there is no colon.
fn data_payload_range(line: &[u8]) -> std::ops::Range<usize> {
    match memchr::memchr(b':', line) {
        None => line.len()..line.len(),
        Some(colon) => {
            let start = if line.get(colon + 1) == Some(&b' ') { colon + 2 } else { colon + 1 };
            start..line.len()
        }
    }
}

fn data_payload(line: &Bytes) -> Bytes {
    line.slice(data_payload_range(line))
}

/// Incremental, sans-IO decoder of `text/event-stream` framing.
///
/// Feed bytes with [`push`](SseDecoder::push), take events with
/// [`next_event`](SseDecoder::next_event) until it returns `Ok(None)`, repeat; at end of input
/// call [`finish`](SseDecoder::finish) to learn whether the stream ended on an event boundary.
/// After an error the decoder is poisoned: it drops its buffers, ignores further input and
/// returns the same kind of error again.
#[derive(Debug, Default)]
pub struct SseDecoder {
    limits: SseLimits,
    /// Bytes not yet split into lines: at most one incomplete line, plus lines that follow an
    /// event already returned.
    buf: BytesMut,
    /// `buf[..scan]` is known to contain no CR or LF.
    scan: usize,
    /// The last terminator was a CR at the end of the buffered bytes: an LF that follows is part
    /// of it.
    skip_lf: bool,
    /// The start of the stream was examined for a BOM.
    bom_done: bool,
    /// Lines of the event being collected.
    pending: SseEvent,
    /// Size of `pending`, as counted by [`SseLimits`].
    pending_size: usize,
    /// Set once an error was returned.
    failed: Option<ErrorKind>,
}

impl SseDecoder {
    /// A decoder enforcing `limits`.
    #[must_use]
    pub fn new(limits: SseLimits) -> Self {
        SseDecoder { limits, ..SseDecoder::default() }
    }

    /// Append bytes from the network. Ignored after an error.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// Append bytes from the network, taking over `chunk`'s buffer without a copy when nothing is
    /// buffered and `chunk` is not shared. Ignored after an error.
    pub(crate) fn push_bytes(&mut self, chunk: Bytes) {
        if self.failed.is_some() {
            return;
        }
        if self.buf.is_empty() {
            match chunk.try_into_mut() {
                Ok(owned) => self.buf = owned,
                Err(shared) => self.buf.extend_from_slice(&shared),
            }
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next complete event, if one is complete in the buffered bytes; `Ok(None)` when more
    /// input is needed. Blank lines outside an event are skipped; events without data (comments,
    /// bare `event:`) are returned like any other.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::TooLarge`] when a line exceeds [`SseLimits::max_line_bytes`] or an event exceeds
    /// [`SseLimits::max_event_bytes`], checked also while the line is still incomplete.
    pub fn next_event(&mut self) -> crate::error::Result<Option<SseEvent>> {
        if let Some(kind) = self.failed {
            return Err(poisoned(kind));
        }
        if !self.skip_bom() {
            return Ok(None);
        }
        loop {
            if self.skip_lf && !self.buf.is_empty() {
                self.skip_lf = false;
                if self.buf[0] == b'\n' {
                    self.buf.advance(1);
                    self.scan = self.scan.saturating_sub(1);
                }
            }
            let Some(found) = memchr::memchr2(b'\n', b'\r', &self.buf[self.scan..]) else {
                self.scan = self.buf.len();
                let len = self.buf.len();
                if len > self.limits.max_line {
                    return Err(self.fail("SSE line exceeds the configured maximum"));
                }
                if len > 0 && self.pending_size.saturating_add(len) > self.limits.max_event {
                    return Err(self.fail("SSE event exceeds the configured maximum"));
                }
                return Ok(None);
            };
            let end = self.scan + found;
            let line = self.buf.split_to(end).freeze();
            // Consume the terminator: LF, CRLF, or CR (whose LF may be in the next chunk).
            let was_cr = self.buf[0] == b'\r';
            self.buf.advance(1);
            if was_cr {
                match self.buf.first() {
                    Some(b'\n') => self.buf.advance(1),
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            self.scan = 0;

            if line.is_empty() {
                if self.pending.is_empty() {
                    continue;
                }
                self.pending_size = 0;
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
            if line.len() > self.limits.max_line {
                return Err(self.fail("SSE line exceeds the configured maximum"));
            }
            self.pending_size = self.pending_size.saturating_add(line.len() + 1);
            if self.pending_size > self.limits.max_event {
                return Err(self.fail("SSE event exceeds the configured maximum"));
            }
            if self.pending.line_count() >= self.limits.max_event_lines {
                return Err(self.fail("SSE event has more lines than the configured maximum"));
            }
            self.pending.push_line(line);
        }
    }

    /// Call at end of input, after [`next_event`](SseDecoder::next_event) returned `Ok(None)`.
    /// `Ok(())` when nothing is pending: the stream ended on an event boundary, possibly followed
    /// by blank lines (or was empty).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Truncated`] when a partial line or an undispatched event remains (an event
    /// not yet taken with `next_event` counts as pending); the error of an earlier failure if the
    /// decoder is poisoned.
    pub fn finish(&mut self) -> crate::error::Result<()> {
        if let Some(kind) = self.failed {
            return Err(poisoned(kind));
        }
        let mut rest: &[u8] = &self.buf;
        if !self.bom_done {
            rest = rest.strip_prefix(BOM).unwrap_or(rest);
        }
        if !self.pending.is_empty() || rest.iter().any(|&b| b != b'\n' && b != b'\r') {
            return Err(Error::new(ErrorKind::Truncated, "SSE stream ended inside an event"));
        }
        Ok(())
    }

    #[cfg(test)]
    /// Bytes currently held: buffered input not yet returned plus the size of the event being
    /// collected (its lines plus one byte each, as counted by [`SseLimits`]).
    #[must_use]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() + self.pending_size
    }

    /// Skip a BOM at the very start of the stream. `false` while too few bytes have arrived to
    /// decide.
    fn skip_bom(&mut self) -> bool {
        if self.bom_done {
            return true;
        }
        if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
            return false;
        }
        if self.buf.starts_with(BOM) {
            self.buf.advance(BOM.len());
        }
        self.bom_done = true;
        true
    }

    fn fail(&mut self, message: &'static str) -> Error {
        self.failed = Some(ErrorKind::TooLarge);
        self.buf = BytesMut::new();
        self.scan = 0;
        self.pending = SseEvent::default();
        self.pending_size = 0;
        Error::new(ErrorKind::TooLarge, message)
    }
}

fn poisoned(kind: ErrorKind) -> Error {
    Error::new(kind, "SSE decoder already failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in `chunks` (byte lengths, the rest in one piece), draining after each
    /// push; returns the events and the result of `finish`.
    fn decode_chunked(input: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, crate::error::Result<()>) {
        let mut dec = SseDecoder::new(SseLimits::default());
        let mut events = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            let cut = cut.clamp(start, input.len());
            dec.push(&input[start..cut]);
            start = cut;
            while let Some(ev) = dec.next_event().expect("no limit hit") {
                events.push(ev);
            }
        }
        let fin = dec.finish();
        (events, fin)
    }

    fn decode(input: &[u8]) -> Vec<SseEvent> {
        let (events, fin) = decode_chunked(input, &[]);
        fin.expect("clean end");
        events
    }

    fn data_of(events: &[SseEvent]) -> Vec<Option<Vec<u8>>> {
        events.iter().map(|e| e.data().map(|d| d.to_vec())).collect()
    }

    fn encode_all(events: &[SseEvent]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for e in events {
            e.encode(None, &mut out);
        }
        out.to_vec()
    }

    fn some(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn events_made_of_many_tiny_lines_are_bounded() {
        let mut dec = SseDecoder::new(SseLimits { max_event_lines: 10, ..SseLimits::default() });
        dec.push(&b":\n".repeat(11));
        assert_eq!(dec.next_event().unwrap_err().kind(), crate::error::ErrorKind::TooLarge);
        let mut dec = SseDecoder::new(SseLimits { max_event_lines: 10, ..SseLimits::default() });
        dec.push(&b":\n".repeat(10));
        dec.push(b"\n");
        assert_eq!(dec.next_event().unwrap().unwrap().line_count(), 10);
    }

    #[test]
    fn lf_crlf_cr_framing() {
        for input in [
            &b"data: a\n\ndata: b\n\n"[..],
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            b"data: a\r\rdata: b\r\r",
            b"data: a\r\n\rdata: b\n\r\n",
        ] {
            let events = decode(input);
            assert_eq!(data_of(&events), vec![some("a"), some("b")], "{input:?}");
        }
    }

    #[test]
    fn crlf_split_across_chunks_is_one_terminator() {
        let mut dec = SseDecoder::new(SseLimits::default());
        dec.push(b"data: a\r");
        assert_eq!(dec.next_event().unwrap(), None);
        dec.push(b"\n");
        assert_eq!(dec.next_event().unwrap(), None, "CR|LF must not dispatch");
        dec.push(b"\r");
        let ev = dec.next_event().unwrap().expect("dispatched by the CR blank line");
        assert_eq!(ev.data().as_deref(), Some(&b"a"[..]));
        dec.push(b"\n");
        assert_eq!(dec.next_event().unwrap(), None);
        dec.push(b"data: b\r\n\r\n");
        let ev = dec.next_event().unwrap().expect("second event");
        assert_eq!(ev.data().as_deref(), Some(&b"b"[..]));
        assert_eq!(dec.next_event().unwrap(), None);
        dec.finish().unwrap();
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let input = b"\xEF\xBB\xBF: hi\r\nevent: e\rdata: x\r\n\r\n\n\ndata:[DONE]\r\r";
        let whole = decode(input);
        let cuts: Vec<usize> = (1..input.len()).collect();
        let (split, fin) = decode_chunked(input, &cuts);
        fin.unwrap();
        assert_eq!(whole, split);
        assert_eq!(whole.len(), 2);
    }

    #[test]
    fn comment_only_events_are_returned() {
        let events = decode(b": PROCESSING\n\n\n\n: PROCESSING\n\ndata: x\n\n");
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].other_lines, vec![Bytes::from_static(b": PROCESSING")]);
        assert!(events[0].data_lines.is_empty());
        assert_eq!(events[0].data(), None);
        assert!(!events[0].is_done());
        assert_eq!(data_of(&events[2..]), vec![some("x")]);
    }

    #[test]
    fn event_id_retry_and_unknown_fields() {
        let events = decode(b"event: chunk\nid: 7\ndata: {}\nretry: 100\ndatax: no\ndata2\n:c\n\n");
        assert_eq!(events.len(), 1);
        let ev = &events[0];
        let other: Vec<&[u8]> = ev.other_lines.iter().map(|b| &b[..]).collect();
        assert_eq!(other, vec![&b"event: chunk"[..], b"id: 7", b"retry: 100", b"datax: no", b"data2", b":c"]);
        assert_eq!(ev.data_lines, vec![Bytes::from_static(b"data: {}")]);
        assert_eq!(ev.data().as_deref(), Some(&b"{}"[..]));
        let lines: Vec<&[u8]> = ev.lines().map(|b| &b[..]).collect();
        assert_eq!(lines[2], b"data: {}");
    }

    #[test]
    fn multi_line_data_is_joined() {
        let events = decode(b"data: a\ndata:b\ndata\ndata:  c\ndata:\n\n");
        assert_eq!(data_of(&events), vec![some("a\nb\n\n c\n")]);
        let single = decode(b"data\n\ndata:\n\n");
        assert_eq!(data_of(&single), vec![some(""), some("")]);
    }

    #[test]
    fn done_with_and_without_space() {
        let events = decode(
            b"data:[DONE]\n\ndata: [DONE]\n\ndata:  [DONE]\n\ndata: [DONE] \n\ndata: [DONE]\ndata: [DONE]\n\n: c\n\n",
        );
        let done: Vec<bool> = events.iter().map(SseEvent::is_done).collect();
        assert_eq!(done, vec![true, true, false, false, false, false]);
    }

    #[test]
    fn single_data_line_is_not_copied() {
        let events = decode(b"data: payload\n\n");
        let line = &events[0].data_lines[0];
        let data = events[0].data().unwrap();
        assert_eq!(data.as_ptr(), line[6..].as_ptr());
    }

    #[test]
    fn encode_verbatim_round_trip() {
        let input: &[u8] = b": PROCESSING\n\nevent: a\ndata: 1\nid: x\ndata:2\nretry: 5\n\ndata:[DONE]\n\ndata\n:z\n\n";
        let events = decode(input);
        assert_eq!(encode_all(&events), input);
        // CRLF/CR framing re-encodes to LF framing; extra blank lines and the BOM disappear.
        let crlf = b"\xEF\xBB\xBF: PROCESSING\r\n\r\n\r\nevent: a\rdata: 1\r\nid: x\ndata:2\rretry: 5\r\n\r\ndata:[DONE]\r\n\r\ndata\r:z\r\r\n\n";
        assert_eq!(encode_all(&decode(crlf)), input);
    }

    #[test]
    fn encode_with_replacement() {
        let events = decode(b"event: x\ndata: a\nid: 1\ndata: b\n: c\n\n");
        let mut out = BytesMut::new();
        events[0].encode(Some(b"{\"k\":1}"), &mut out);
        assert_eq!(&out[..], b"event: x\nid: 1\n: c\ndata: {\"k\":1}\n\n");

        let mut out = BytesMut::new();
        events[0].encode(Some(b"l1\nl2"), &mut out);
        let back = decode(&out);
        assert_eq!(data_of(&back), vec![some("l1\nl2")]);

        let comment = decode(b": PROCESSING\n\n");
        let mut out = BytesMut::new();
        comment[0].encode(Some(b"x"), &mut out);
        assert_eq!(&out[..], b": PROCESSING\ndata: x\n\n");
    }

    #[test]
    fn constructed_events_encode() {
        let mut ev = SseEvent::new(vec![Bytes::from_static(b"event: e")], vec![Bytes::from_static(b"data: d")]);
        let mut out = BytesMut::new();
        ev.encode(None, &mut out);
        assert_eq!(&out[..], b"event: e\ndata: d\n\n");
        ev.push_line(Bytes::from_static(b"id: 1"));
        ev.push_line(Bytes::from_static(b"data"));
        // Edited by hand so that order and lines disagree: still encodes every line once.
        ev.other_lines.push(Bytes::from_static(b": extra"));
        ev.data_lines.remove(0);
        let mut out = BytesMut::new();
        ev.encode(None, &mut out);
        assert_eq!(&out[..], b"event: e\ndata\nid: 1\n: extra\n\n");
        let mut out = BytesMut::new();
        SseEvent::default().encode(None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn event_released_only_at_blank_line() {
        let mut dec = SseDecoder::new(SseLimits::default());
        dec.push(b"data: a\n");
        assert_eq!(dec.next_event().unwrap(), None);
        assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::Truncated);
        dec.push(b"data: b\n");
        assert_eq!(dec.next_event().unwrap(), None);
        dec.push(b"\n");
        assert_eq!(dec.next_event().unwrap().unwrap().data().as_deref(), Some(&b"a\nb"[..]));
        dec.finish().unwrap();
    }

    #[test]
    fn bom_only_at_stream_start() {
        let events = decode(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(events.len(), 2);
        assert_eq!(data_of(&events[..1]), vec![some("a")]);
        assert_eq!(events[1].data(), None, "a BOM later is part of the field name");
        assert_eq!(events[1].other_lines.len(), 1);

        let mut dec = SseDecoder::new(SseLimits::default());
        dec.push(b"\xEF\xBB");
        assert_eq!(dec.next_event().unwrap(), None);
        assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::Truncated);
        dec.push(b"\xBF");
        dec.finish().unwrap();
        assert_eq!(dec.next_event().unwrap(), None);
        dec.finish().unwrap();
    }

    #[test]
    fn finish_reports_truncation() {
        for partial in [&b"data: a"[..], b"data: a\n", b"data: a\r", b": c\r\n", b"\n\ndata: a\n\n:", b"\xEF\xBB"] {
            let (_, fin) = decode_chunked(partial, &[]);
            assert_eq!(fin.unwrap_err().kind(), ErrorKind::Truncated, "{partial:?}");
        }
        for clean in [&b""[..], b"\n\n\r\n", b"data: a\n\n", b"data: a\r\r\n\n\n", b"\xEF\xBB\xBF", b"\xEF\xBB\xBF\n"] {
            let (_, fin) = decode_chunked(clean, &[]);
            fin.unwrap_or_else(|e| panic!("{clean:?}: {e:?}"));
        }
    }

    #[test]
    fn long_line_is_rejected_with_bounded_buffer() {
        let limits = SseLimits::default();
        let mut dec = SseDecoder::new(limits);
        let chunk = [b'x'; 1024];
        dec.push(b"data: ");
        let mut err = None;
        for _ in 0..2048 {
            dec.push(&chunk);
            assert!(dec.buffered() <= limits.max_line + chunk.len());
            match dec.next_event() {
                Ok(None) => {}
                Ok(Some(_)) => panic!("no event expected"),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert_eq!(err.expect("must fail").kind(), ErrorKind::TooLarge);
        // Poisoned: memory released, further input ignored, same error again.
        assert_eq!(dec.buffered(), 0);
        dec.push(b"\n\n");
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_event().unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(dec.finish().unwrap_err().kind(), ErrorKind::TooLarge);
    }

    #[test]
    fn complete_long_line_is_rejected() {
        let mut dec = SseDecoder::new(SseLimits { max_line: 8, max_event: 100, ..SseLimits::default() });
        dec.push(b"data: 12\n\ndata: 123\n\n");
        assert_eq!(dec.next_event().unwrap().unwrap().data().as_deref(), Some(&b"12"[..]));
        assert_eq!(dec.next_event().unwrap_err().kind(), ErrorKind::TooLarge);
    }

    #[test]
    fn large_event_is_rejected() {
        let limits = SseLimits { max_line: 64, max_event: 256, ..SseLimits::default() };
        let mut dec = SseDecoder::new(limits);
        let mut err = None;
        for _ in 0..100 {
            dec.push(b"data: 0123456789\n");
            assert!(dec.buffered() <= limits.max_event + 17);
            if let Err(e) = dec.next_event() {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err.expect("must fail").kind(), ErrorKind::TooLarge);

        // The incomplete last line counts towards the event too.
        let mut dec = SseDecoder::new(SseLimits { max_line: 64, max_event: 48, ..SseLimits::default() });
        dec.push(b"data: 0123456789012345678901234\ndata: 0123");
        assert_eq!(dec.next_event().unwrap(), None);
        dec.push(b"456789xyz");
        assert_eq!(dec.next_event().unwrap_err().kind(), ErrorKind::TooLarge);

        // Blank lines between events do not count.
        let mut dec = SseDecoder::new(SseLimits { max_line: 16, max_event: 16, ..SseLimits::default() });
        for _ in 0..1000 {
            dec.push(b"data: x\n\n\n\r\n");
            assert!(dec.next_event().unwrap().is_some());
        }
    }

    #[test]
    fn push_bytes_matches_push() {
        let mut dec = SseDecoder::new(SseLimits::default());
        dec.push_bytes(Bytes::from(b"data: a\n".to_vec()));
        dec.push_bytes(Bytes::from_static(b"\ndata: b"));
        dec.push_bytes(Bytes::from_static(b"\n\n"));
        let a = dec.next_event().unwrap().unwrap();
        let b = dec.next_event().unwrap().unwrap();
        assert_eq!(data_of(&[a, b]), vec![some("a"), some("b")]);
        dec.finish().unwrap();
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// One line of an event (never blank, no CR/LF).
        fn line() -> impl Strategy<Value = Vec<u8>> {
            let text = proptest::collection::vec(
                prop_oneof![
                    8 => proptest::char::range(' ', '~').prop_map(|c| c as u8),
                    1 => any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
                ],
                0..12,
            );
            (0..9u8, text).prop_map(|(kind, text)| {
                let prefix: &[u8] = match kind {
                    0 => b":",
                    1 => b"event: ",
                    2 => b"id: ",
                    3 => b"retry: ",
                    4 => b"data: ",
                    5 => b"data:",
                    6 => b"data",
                    7 => b"foo:",
                    _ => b"data: [DONE]",
                };
                let mut l = prefix.to_vec();
                if kind == 6 || kind == 8 {
                    return l;
                }
                l.extend_from_slice(&text);
                l
            })
        }

        /// A stream and the events it must decode to (as lists of lines).
        fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<Vec<u8>>>)> {
            let events = proptest::collection::vec(proptest::collection::vec(line(), 1..5), 0..6);
            let terms = proptest::collection::vec(0..3u8, 64);
            (any::<bool>(), events, terms, 0..3usize).prop_map(|(bom, events, terms, trailing)| {
                let mut out = Vec::new();
                if bom {
                    out.extend_from_slice(BOM);
                }
                let mut t = terms.iter().cycle();
                let mut prev_cr = false;
                let mut term = |out: &mut Vec<u8>, blank: bool| {
                    let mut k = *t.next().unwrap_or(&0);
                    // A blank LF right after a lone CR would merge into one CRLF terminator.
                    if blank && prev_cr && k == 0 {
                        k = 1;
                    }
                    out.extend_from_slice(match k {
                        0 => b"\n",
                        1 => b"\r",
                        _ => b"\r\n",
                    });
                    prev_cr = k == 1;
                };
                for (i, ev) in events.iter().enumerate() {
                    for l in ev {
                        out.extend_from_slice(l);
                        term(&mut out, false);
                    }
                    term(&mut out, true);
                    if i % 2 == 1 {
                        term(&mut out, true);
                    }
                }
                for _ in 0..trailing {
                    term(&mut out, true);
                }
                (out, events)
            })
        }

        fn cuts_for(len: usize, raw: &[proptest::sample::Index]) -> Vec<usize> {
            let mut cuts: Vec<usize> = raw.iter().map(|i| i.index(len + 1)).collect();
            cuts.sort_unstable();
            cuts
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            #[test]
            fn any_chunking_gives_the_same_events(
                (input, model) in stream(),
                raw_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
            ) {
                let (whole, fin) = decode_chunked(&input, &[]);
                prop_assert!(fin.is_ok());
                let cuts = cuts_for(input.len(), &raw_cuts);
                let (split, fin) = decode_chunked(&input, &cuts);
                prop_assert!(fin.is_ok());
                prop_assert_eq!(&whole, &split);
                let bytewise: Vec<usize> = (1..input.len()).collect();
                let (bytes, fin) = decode_chunked(&input, &bytewise);
                prop_assert!(fin.is_ok());
                prop_assert_eq!(&whole, &bytes);

                // Against the model: same lines, and LF re-encoding is the normalised stream.
                let got: Vec<Vec<Vec<u8>>> =
                    whole.iter().map(|e| e.lines().map(|l| l.to_vec()).collect()).collect();
                prop_assert_eq!(&got, &model);
                let mut normalised = Vec::new();
                for ev in &model {
                    for l in ev {
                        normalised.extend_from_slice(l);
                        normalised.push(b'\n');
                    }
                    normalised.push(b'\n');
                }
                prop_assert_eq!(encode_all(&whole), normalised);
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_chunking_is_invisible(
                input in proptest::collection::vec(
                    prop_oneof![3 => Just(b'\n'), 3 => Just(b'\r'), 2 => Just(b':'), 4 => any::<u8>()],
                    0..200,
                ),
                raw_cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
            ) {
                let run = |cuts: &[usize]| {
                    let mut dec = SseDecoder::new(SseLimits { max_line: 24, max_event: 64, ..SseLimits::default() });
                    let mut events = Vec::new();
                    let mut start = 0;
                    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
                        dec.push(&input[start..cut]);
                        start = cut;
                        loop {
                            match dec.next_event() {
                                Ok(Some(ev)) => events.push(Ok(ev)),
                                Ok(None) => break,
                                Err(e) => {
                                    events.push(Err(e.kind()));
                                    break;
                                }
                            }
                        }
                        if matches!(events.last(), Some(Err(_))) {
                            break;
                        }
                    }
                    (events, dec.finish().map_err(|e| e.kind()))
                };
                let whole = run(&[]);
                let split = run(&cuts_for(input.len(), &raw_cuts));
                // A limit error may surface earlier (on the partial line) when chunked, but the
                // events before it and the error kind agree.
                let ok = |v: &[Result<SseEvent, ErrorKind>]| {
                    v.iter().filter_map(|r| r.as_ref().ok().cloned()).collect::<Vec<_>>()
                };
                prop_assert_eq!(whole.1, split.1);
                prop_assert_eq!(ok(&whole.0), ok(&split.0));
            }
        }
    }
}
