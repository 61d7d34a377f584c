//! RFC 8785 (JCS) canonical JSON, on the domain ACI documents use.
//!
//! Like the reference gateway's hand-written canonicaliser, this sorts object members by the bytes
//! of their names, writes compact `serde_json` output, and **rejects** any non-integer number and
//! any non-ASCII member name. On that domain the output equals RFC 8785.
//!
//! ```
//! let v: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":[true,null,"é"]}"#).unwrap();
//! let bytes = tower_aci::protocol::jcs::to_vec(&v).unwrap();
//! assert_eq!(bytes, r#"{"a":[true,null,"é"],"b":1}"#.as_bytes());
//! ```

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

/// Canonicalise `value` into a new buffer.
pub fn to_vec(value: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

/// Canonicalise `value`, appending to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if !(n.is_i64() || n.is_u64()) {
                return Err(Error::new(ErrorKind::Malformed, "canonical JSON refuses non-integer numbers"));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            if let Some((k, _)) = members.iter().find(|(k, _)| !k.is_ascii()) {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!("canonical JSON refuses non-ASCII member name {k:?}"),
                ));
            }
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Append `s` as a JSON string literal: raw UTF-8, escaping only `"`, `\` and control characters
/// (`\b \t \n \f \r`, others as lowercase `\u00xx`). Identical to `serde_json` and RFC 8785.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    // Runs that need no escape (hex, ids, model names: nearly everything) are found with one
    // table load per byte and copied whole.
    while let Some(i) = bytes[start..].iter().position(|&b| ESCAPED[b as usize]).map(|i| start + i) {
        out.extend_from_slice(&bytes[start..i]);
        let b = bytes[i];
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            _ => b"",
        };
        if esc.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The bytes a JSON string literal escapes: `"`, `\` and the control characters.
static ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_escaping_matches_serde_json() {
        let samples = [
            "plain",
            "q\"b\\",
            "\u{0}\u{1f}\n\r\t\u{8}\u{c}",
            "é模型 \u{2028}",
            "/",
            "",
            "\"",
            "tail\\",
            "\u{7f}\u{80}\u{ff} ~",
            "a\u{1}b\"c\\d\te",
        ];
        for s in samples {
            let mut out = Vec::new();
            write_str(s, &mut out);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    proptest::proptest! {
        /// Any string, control characters and escapes included, is written as serde_json
        /// writes it.
        #[test]
        fn any_string_is_escaped_as_serde_json_does(
            s in proptest::string::string_regex("(?s)[\\x00-\\x7f\"\\\\é模\\u{2028}]{0,40}").unwrap()
        ) {
            let mut out = Vec::new();
            write_str(&s, &mut out);
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
    }

    #[test]
    fn refuses_floats_and_non_ascii_names() {
        let v: Value = serde_json::from_str(r#"{"a":1.5}"#).unwrap();
        assert_eq!(to_vec(&v).unwrap_err().kind(), ErrorKind::Malformed);
        let v: Value = serde_json::from_str(r#"{"é":1}"#).unwrap();
        assert_eq!(to_vec(&v).unwrap_err().kind(), ErrorKind::Malformed);
    }

    #[test]
    fn sorts_members_by_bytes_and_keeps_array_order() {
        let v: Value = serde_json::from_str(r#"{"b":[3,1],"a":{"z":-1,"B":null},"_":false}"#).unwrap();
        assert_eq!(to_vec(&v).unwrap(), br#"{"_":false,"a":{"B":null,"z":-1},"b":[3,1]}"#.to_vec());
    }
}
