//! Which JSON fields E2EE v2 encrypts, as the reference gateway walks them (protocol.md §3.4,
//! §4.1–§4.3). One walker per direction, shared by the client (this crate's layer) and the
//! server side (the local test gateway), so both agree by construction.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::protocol::endpoint::Endpoint;

/// How a request field is restored by the server after decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestField {
    /// `messages.{m}.content` in whole-content mode: a plaintext that parses as a JSON array
    /// becomes structured content, anything else a string.
    WholeContent,
    /// A part field, prompt or input: always a string.
    Text,
}

fn unsupported(msg: &'static str) -> Error {
    Error::new(ErrorKind::UnsupportedBody, msg)
}

/// Visit every request field the server will decrypt, in document order, with its path.
/// Structural problems the server would reject are `UnsupportedBody` errors. Returns how many
/// fields were visited; zero is an error (the server requires at least one).
pub(crate) fn walk_request(
    endpoint: Endpoint,
    body: &mut Map<String, Value>,
    f: &mut dyn FnMut(&str, RequestField, &mut Value) -> Result<()>,
) -> Result<usize> {
    let mut path = String::with_capacity(48);
    let mut count = 0usize;
    match endpoint {
        Endpoint::ChatCompletions => {
            let Some(Value::Array(messages)) = body.get_mut("messages") else {
                return Err(unsupported("`messages` must be an array"));
            };
            for (m, msg) in messages.iter_mut().enumerate() {
                let Some(content) = msg.as_object_mut().and_then(|o| o.get_mut("content")) else {
                    continue;
                };
                match content {
                    Value::String(_) => {
                        path.clear();
                        let _ = write!(path, "messages.{m}.content");
                        f(&path, RequestField::WholeContent, content)?;
                        count += 1;
                    }
                    Value::Array(parts) => {
                        for (c, part) in parts.iter_mut().enumerate() {
                            let Some(part) = part.as_object_mut() else { continue };
                            let (outer, inner) = match part.get("type").and_then(Value::as_str) {
                                Some("text") => ("text", None),
                                Some("image_url") => ("image_url", Some("url")),
                                Some("input_audio") => ("input_audio", Some("data")),
                                _ => continue,
                            };
                            let slot = match inner {
                                None => part.get_mut(outer),
                                Some(inner) => {
                                    part.get_mut(outer).and_then(Value::as_object_mut).and_then(|o| o.get_mut(inner))
                                }
                            };
                            let Some(slot) = slot.filter(|v| v.is_string()) else { continue };
                            path.clear();
                            let _ = write!(path, "messages.{m}.content.{c}.{outer}");
                            if let Some(inner) = inner {
                                path.push('.');
                                path.push_str(inner);
                            }
                            f(&path, RequestField::Text, slot)?;
                            count += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            let name = if endpoint == Endpoint::Completions { "prompt" } else { "input" };
            match body.get_mut(name) {
                Some(v @ Value::String(_)) => {
                    f(name, RequestField::Text, v)?;
                    count += 1;
                }
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if item.is_string() {
                            path.clear();
                            let _ = write!(path, "{name}.{i}");
                            f(&path, RequestField::Text, item)?;
                            count += 1;
                        }
                    }
                    if count == 0 {
                        return Err(unsupported(
                            "a prompt or input made only of token ids cannot be sent under E2EE v2",
                        ));
                    }
                }
                _ => {
                    return Err(unsupported(
                        "`prompt`/`input` must be a string or an array holding at least one string",
                    ));
                }
            }
        }
    }
    if count == 0 {
        return Err(unsupported("the request holds no field E2EE v2 can encrypt"));
    }
    Ok(count)
}

/// Buffered response or one SSE chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseShape {
    /// A buffered JSON response (`message.*`).
    Buffered,
    /// One SSE chunk (`delta.*`).
    Chunk,
}

/// A response field slot handed to the visitor.
pub(crate) struct ResponseSlot<'a> {
    /// The member holding the field (so the server can remove `delta.content: ""`).
    pub(crate) parent: &'a mut Map<String, Value>,
    /// The member name inside `parent`.
    pub(crate) key: &'static str,
    /// Whether the plaintext is JSON text (embeddings) rather than a string.
    pub(crate) json: bool,
}

fn choice_index(choice: &Map<String, Value>, position: usize) -> u64 {
    choice.get("index").and_then(Value::as_u64).unwrap_or(position as u64)
}

/// Visit every response field E2EE v2 protects (present members only, any value type), with its
/// path. The visitor decides what a value of the wrong type means.
pub(crate) fn walk_response(
    endpoint: Endpoint,
    shape: ResponseShape,
    root: &mut Map<String, Value>,
    f: &mut dyn FnMut(&str, ResponseSlot<'_>) -> Result<()>,
) -> Result<()> {
    let mut path = String::with_capacity(48);
    match endpoint {
        Endpoint::Embeddings => {
            let Some(Value::Array(data)) = root.get_mut("data") else { return Ok(()) };
            for (k, item) in data.iter_mut().enumerate() {
                let Some(item) = item.as_object_mut() else { continue };
                if !item.contains_key("embedding") {
                    continue;
                }
                let i = choice_index(item, k);
                path.clear();
                let _ = write!(path, "data.{i}.embedding");
                f(&path, ResponseSlot { parent: item, key: "embedding", json: true })?;
            }
        }
        Endpoint::ChatCompletions | Endpoint::Completions => {
            let Some(Value::Array(choices)) = root.get_mut("choices") else { return Ok(()) };
            for (p, choice) in choices.iter_mut().enumerate() {
                let Some(choice) = choice.as_object_mut() else { continue };
                let i = choice_index(choice, p);
                if endpoint == Endpoint::Completions {
                    if choice.contains_key("text") {
                        path.clear();
                        let _ = write!(path, "choices.{i}.text");
                        f(&path, ResponseSlot { parent: choice, key: "text", json: false })?;
                    }
                    continue;
                }
                let holder = if shape == ResponseShape::Buffered { "message" } else { "delta" };
                let Some(Value::Object(msg)) = choice.get_mut(holder) else { continue };
                for key in ["content", "reasoning", "reasoning_content"] {
                    if msg.contains_key(key) {
                        path.clear();
                        let _ = write!(path, "choices.{i}.{holder}.{key}");
                        f(&path, ResponseSlot { parent: msg, key, json: false })?;
                    }
                }
                if shape == ResponseShape::Buffered {
                    if let Some(Value::Object(audio)) = msg.get_mut("audio") {
                        if audio.get("data").is_some_and(Value::is_string) {
                            path.clear();
                            let _ = write!(path, "choices.{i}.message.audio.data");
                            f(&path, ResponseSlot { parent: audio, key: "data", json: false })?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Members of a chat `message`/`delta` that carry generated content the gateway leaves in clear,
/// reported whole when present (protocol.md §4.1, §9 item 35).
const CLEAR_MEMBERS: [&str; 7] =
    ["refusal", "annotations", "images", "reasoning_details", "thinking_blocks", "reasoning_items", "function_call"];

/// Paths of generated content the gateway leaves in clear (protocol.md §4.1, §9 item 35), choice
/// by choice, in the reference's convention: a tool call's `function.name` and
/// `function.arguments` (whenever they are strings, even empty: the call itself is generated) at
/// `…tool_calls.{t}.function.…` with `{t}` the position in the `tool_calls` array (a tool call
/// of another shape whole), `audio.transcript`, `logprobs`, and `function_call`, refusals,
/// annotations, images and reasoning details whole. `null`, empty strings and empty arrays do not count.
/// Empty when the response carries none.
pub(crate) fn cleartext_fields(endpoint: Endpoint, shape: ResponseShape, root: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let present = |v: Option<&Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    if endpoint == Endpoint::Embeddings {
        return out;
    }
    let Some(Value::Array(choices)) = root.get("choices") else { return out };
    for (p, choice) in choices.iter().enumerate() {
        let Some(choice) = choice.as_object() else { continue };
        let i = choice_index(choice, p);
        let holder = if shape == ResponseShape::Buffered { "message" } else { "delta" };
        if let Some(Value::Object(msg)) = choice.get(holder) {
            if let Some(Value::Array(calls)) = msg.get("tool_calls") {
                for (t, call) in calls.iter().enumerate() {
                    let function = call.get("function").and_then(Value::as_object);
                    let mut named = false;
                    for key in ["name", "arguments"] {
                        if function.and_then(|f| f.get(key)).is_some_and(Value::is_string) {
                            out.push(format!("choices.{i}.{holder}.tool_calls.{t}.function.{key}"));
                            named = true;
                        }
                    }
                    // Another kind of tool call (a custom tool's input, …): the call as a whole.
                    if !named && present(Some(call)) {
                        out.push(format!("choices.{i}.{holder}.tool_calls.{t}"));
                    }
                }
            } else if present(msg.get("tool_calls")) {
                out.push(format!("choices.{i}.{holder}.tool_calls"));
            }
            for key in CLEAR_MEMBERS {
                if present(msg.get(key)) {
                    out.push(format!("choices.{i}.{holder}.{key}"));
                }
            }
            if let Some(Value::Object(audio)) = msg.get("audio") {
                if present(audio.get("transcript")) {
                    out.push(format!("choices.{i}.{holder}.audio.transcript"));
                }
            }
        }
        if present(choice.get("logprobs")) {
            out.push(format!("choices.{i}.logprobs"));
        }
    }
    out
}
