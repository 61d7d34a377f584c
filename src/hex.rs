//! The crate's one hex codec: [`const_hex`] (SIMD), with the strict decoding rules of the wire
//! format.
//!
//! `const_hex` strips a leading `0x` *or* `0X` when it decodes; the protocol accepts a prefix only
//! where it says so (a lowercase `0x` on keys and measured values, protocol.md §2), so
//! [`decode`] refuses any prefix and [`decode_prefixed`] strips exactly a lowercase `0x`.

/// Lowercase hex of `data`.
pub(crate) fn encode(data: impl AsRef<[u8]>) -> String {
    const_hex::encode(data)
}

/// Uppercase hex of `data`.
#[cfg(feature = "dcap")]
pub(crate) fn encode_upper(data: impl AsRef<[u8]>) -> String {
    const_hex::encode_upper(data)
}

/// Hex (either case) to bytes; no prefix accepted.
pub(crate) fn decode(text: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    let text = text.as_ref();
    if text.starts_with(b"0x") || text.starts_with(b"0X") {
        return None;
    }
    const_hex::decode(text).ok()
}

/// Hex (either case) with an optional lowercase `0x` (not `0X`) to bytes.
pub(crate) fn decode_prefixed(text: &str) -> Option<Vec<u8>> {
    decode(text.strip_prefix("0x").unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_strict() {
        assert_eq!(decode("0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode("0x0a"), None);
        assert_eq!(decode("0X0a"), None);
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(decode_prefixed("0x0a"), Some(vec![0x0a]));
        assert_eq!(decode_prefixed("0X0a"), None);
        assert_eq!(decode_prefixed("0x0x0a"), None);
        assert_eq!(encode([0xab, 0x01]), "ab01");
    }
}
