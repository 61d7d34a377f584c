//! What the gateway forwards to and the deterministic built-in upstream.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use const_hex as hex;

/// A replacement upstream ([`GatewayConfig::upstream`](crate::GatewayConfig::upstream)).
pub(crate) type UpstreamFn = dyn Fn(UpstreamRequest) -> UpstreamResponse + Send + Sync + 'static;

/// A request as the upstream receives it: the plaintext body after the gateway decrypted
/// (E2EE) or accepted (plaintext) it, and after the direct path's forwarding rewrites.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamRequest {
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The forwarded body, parsed.
    pub body: Value,
    /// The forwarded body bytes (what `request.forwarded.body_hash` names).
    pub bytes: Bytes,
    /// Whether the request asked for a stream (`"stream": true`; always `false` for embeddings).
    pub stream: bool,
    /// The gateway's sequence number of this request (0, 1, …), for deterministic ids.
    pub seq: u64,
    /// The gateway clock's Unix time when the request was forwarded.
    pub now: u64,
}

#[derive(Debug, Clone)]
pub(crate) enum UpstreamBody {
    /// A complete body.
    Full(Bytes),
    /// A body delivered in pieces; for SSE each piece is normally one complete event, and
    /// stream faults count these pieces as "events".
    Chunks(Vec<Bytes>),
}

/// What the upstream answers: a status, a content type and a buffered or chunked body.
///
/// ```
/// use aci_test_gateway::UpstreamResponse;
/// let ok = UpstreamResponse::json(200, serde_json::json!({"id": "x", "choices": []}));
/// assert_eq!(ok.status(), 200);
/// let stream = UpstreamResponse::sse_events(vec![serde_json::json!({"choices": []})], true);
/// assert_eq!(stream.content_type(), Some("text/event-stream"));
/// ```
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) body: UpstreamBody,
}

impl UpstreamResponse {
    /// A JSON body (serialised compactly) with `status`.
    pub fn json(status: u16, body: Value) -> Self {
        let bytes = serde_json::to_vec(&body).expect("serialising a Value cannot fail");
        UpstreamResponse {
            status,
            content_type: Some("application/json".into()),
            body: UpstreamBody::Full(bytes.into()),
        }
    }

    /// Any body bytes with `status` and a content type (`None`: no `content-type` header, which
    /// the gateway treats as SSE on a streaming request, like the reference's direct path).
    pub fn raw(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> Self {
        UpstreamResponse {
            status,
            content_type: content_type.map(str::to_owned),
            body: UpstreamBody::Full(body.into()),
        }
    }

    /// A `200 text/event-stream` body delivered in the given pieces (raw SSE bytes; each piece
    /// is one "event" for the stream faults).
    pub fn sse(chunks: Vec<Bytes>) -> Self {
        UpstreamResponse {
            status: 200,
            content_type: Some("text/event-stream".into()),
            body: UpstreamBody::Chunks(chunks),
        }
    }

    /// A `200 text/event-stream` body with one `data: <compact JSON>` event per value, followed
    /// by `data: [DONE]` when `done`.
    pub fn sse_events(events: Vec<Value>, done: bool) -> Self {
        let mut chunks: Vec<Bytes> = events.iter().map(|e| Bytes::from(format!("data: {e}\n\n"))).collect();
        if done {
            chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        UpstreamResponse::sse(chunks)
    }

    /// The built-in deterministic upstream's answer to `req` (what the gateway uses when no
    /// handler is configured). A custom handler can delegate to it.
    pub fn echo(req: &UpstreamRequest) -> Self {
        echo(req)
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The content type, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }
}

/// A response id derived from the request's sequence number and bytes.
fn response_id(prefix: &str, req: &UpstreamRequest) -> String {
    let mut h = Sha256::new();
    h.update(req.seq.to_be_bytes());
    h.update(&req.bytes);
    format!("{prefix}-{}", hex::encode(&h.finalize()[..12]))
}

fn model(req: &UpstreamRequest) -> String {
    req.body.get("model").and_then(Value::as_str).unwrap_or("demo-model").to_owned()
}

fn choices_n(req: &UpstreamRequest) -> usize {
    // Bounded so a hostile `n` cannot make the gateway allocate without limit.
    req.body.get("n").and_then(Value::as_u64).map_or(1, |n| n.clamp(1, 16) as usize)
}

/// The text of the last user message: a string content, or the `text` parts joined by spaces.
fn last_user_text(body: &Value) -> String {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else { return String::new() };
    let Some(msg) = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user")) else {
        return String::new();
    };
    match msg.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Split `s` into at most `max` consecutive pieces on word boundaries (concatenation = `s`).
fn pieces(s: &str, max: usize) -> Vec<String> {
    let tokens: Vec<&str> = s.split_inclusive(' ').collect();
    if tokens.is_empty() {
        return vec![String::new()];
    }
    let per = tokens.len().div_ceil(max);
    tokens.chunks(per).map(|c| c.concat()).collect()
}

fn chat_content(text: &str, i: usize) -> String {
    if i == 0 { format!("You said: {text}") } else { format!("You said: {text} (choice {i})") }
}

fn completion_text(prompt: &str, i: usize) -> String {
    if i == 0 { format!("Echo: {prompt}") } else { format!("Echo: {prompt} (choice {i})") }
}

fn reasoning(text: &str) -> String {
    format!("The user wrote {} characters; echoing them back.", text.chars().count())
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

fn echo(req: &UpstreamRequest) -> UpstreamResponse {
    match req.path.as_str() {
        "/v1/chat/completions" => chat(req),
        "/v1/completions" => completions(req),
        "/v1/embeddings" => embeddings(req),
        _ => UpstreamResponse::json(
            404,
            json!({"error": {"message": format!("the built-in upstream does not serve {}", req.path),
                "type": "not_found_error", "code": null, "param": null}}),
        ),
    }
}

fn chat(req: &UpstreamRequest) -> UpstreamResponse {
    let text = last_user_text(&req.body);
    let n = choices_n(req);
    let model = model(req);
    let id = response_id("chatcmpl", req);
    let contents: Vec<String> = (0..n).map(|i| chat_content(&text, i)).collect();
    let completion_tokens: u64 = contents.iter().map(|c| words(c)).sum();
    let usage = usage(words(&text), completion_tokens);
    if !req.stream {
        let choices: Vec<Value> = contents
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": c, "reasoning_content": reasoning(&text)},
                    "logprobs": null,
                    "finish_reason": "stop",
                })
            })
            .collect();
        return UpstreamResponse::json(
            200,
            json!({"id": id, "object": "chat.completion", "created": req.now, "model": model,
                "choices": choices, "usage": usage}),
        );
    }
    // Each chunk carries its own id (the first is the response id), as some upstreams do.
    let mut events = Vec::new();
    let chunk = |k: usize, choices: Vec<Value>| -> Value {
        let cid = if k == 0 { id.clone() } else { format!("{id}-{k}") };
        json!({"id": cid, "object": "chat.completion.chunk", "created": req.now, "model": model, "choices": choices})
    };
    let all = |delta: &dyn Fn(usize) -> Value, finish: Value| -> Vec<Value> {
        (0..n).map(|i| json!({"index": i, "delta": delta(i), "logprobs": null, "finish_reason": finish})).collect()
    };
    events.push(chunk(0, all(&|_| json!({"role": "assistant", "content": ""}), Value::Null)));
    events.push(chunk(1, all(&|_| json!({"reasoning_content": reasoning(&text)}), Value::Null)));
    let split: Vec<Vec<String>> = contents.iter().map(|c| pieces(c, 4)).collect();
    let steps = split.iter().map(Vec::len).max().unwrap_or(0);
    for s in 0..steps {
        let choices: Vec<Value> = (0..n)
            .filter_map(|i| {
                split[i]
                    .get(s)
                    .map(|p| json!({"index": i, "delta": {"content": p}, "logprobs": null, "finish_reason": null}))
            })
            .collect();
        events.push(chunk(events.len(), choices));
    }
    events.push(chunk(events.len(), all(&|_| json!({}), Value::String("stop".into()))));
    let mut last = chunk(events.len(), Vec::new());
    last["usage"] = usage;
    events.push(last);
    UpstreamResponse::sse_events(events, true)
}

/// The prompt strings of a completions request.
fn prompt_text(body: &Value) -> String {
    match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
        _ => String::new(),
    }
}

fn completions(req: &UpstreamRequest) -> UpstreamResponse {
    let prompt = prompt_text(&req.body);
    let n = choices_n(req);
    let model = model(req);
    let id = response_id("cmpl", req);
    let texts: Vec<String> = (0..n).map(|i| completion_text(&prompt, i)).collect();
    let usage = usage(words(&prompt), texts.iter().map(|t| words(t)).sum());
    if !req.stream {
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "text": t, "logprobs": null, "finish_reason": "stop"}))
            .collect();
        return UpstreamResponse::json(
            200,
            json!({"id": id, "object": "text_completion", "created": req.now, "model": model,
                "choices": choices, "usage": usage}),
        );
    }
    let chunk = |choices: Vec<Value>| -> Value {
        json!({"id": id, "object": "text_completion", "created": req.now, "model": model, "choices": choices})
    };
    let split: Vec<Vec<String>> = texts.iter().map(|t| pieces(t, 3)).collect();
    let steps = split.iter().map(Vec::len).max().unwrap_or(0);
    let mut events = Vec::new();
    for s in 0..steps {
        events.push(chunk(
            (0..n)
                .filter_map(|i| {
                    split[i].get(s).map(|p| json!({"index": i, "text": p, "logprobs": null, "finish_reason": null}))
                })
                .collect(),
        ));
    }
    events.push(chunk(
        (0..n).map(|i| json!({"index": i, "text": "", "logprobs": null, "finish_reason": "stop"})).collect(),
    ));
    let mut last = chunk(Vec::new());
    last["usage"] = usage;
    events.push(last);
    UpstreamResponse::sse_events(events, true)
}

/// Dimensions of the built-in embeddings.
const EMBEDDING_DIMS: usize = 8;

/// A deterministic vector for `text`: SHA-256 bytes mapped to multiples of 1/128 in [-1, 1),
/// exact in both `f32` and `f64`, so float and base64 encodings agree bit for bit.
pub(crate) fn embedding_vector(text: &str) -> Vec<f64> {
    let digest = Sha256::digest(text.as_bytes());
    digest[..EMBEDDING_DIMS].iter().map(|&b| (f64::from(b) - 128.0) / 128.0).collect()
}

fn embeddings(req: &UpstreamRequest) -> UpstreamResponse {
    let inputs: Vec<String> = match req.body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let base64 = req.body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = embedding_vector(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                json!(v)
            };
            let mut item = Map::new();
            item.insert("object".into(), "embedding".into());
            item.insert("index".into(), i.into());
            item.insert("embedding".into(), embedding);
            Value::Object(item)
        })
        .collect();
    let tokens: u64 = inputs.iter().map(|s| words(s)).sum();
    UpstreamResponse::json(
        200,
        json!({"object": "list", "data": data, "model": model(req),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

/// Standard base64 with padding.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], c.get(1).copied().unwrap_or(0), c.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                out.push(ALPHABET[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, body: Value, stream: bool) -> UpstreamRequest {
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        UpstreamRequest { path: path.into(), body, bytes, stream, seq: 0, now: 1 }
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pieces_concatenate_back() {
        for s in ["", "a", "You said: hello there my friend", "x y"] {
            let p = pieces(s, 4);
            assert!(p.len() <= 4);
            assert_eq!(p.concat(), s);
        }
    }

    #[test]
    fn chat_is_deterministic_and_honours_n() {
        let body = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]});
        let a = echo(&req("/v1/chat/completions", body.clone(), false));
        let b = echo(&req("/v1/chat/completions", body, false));
        let (UpstreamBody::Full(a), UpstreamBody::Full(b)) = (a.body, b.body) else { panic!() };
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        assert_eq!(v["choices"][0]["message"]["content"], "You said: hi");
    }
}
