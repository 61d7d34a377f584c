//! Percent-encoding (RFC 3986), with the `percent-encoding` crate: strict decoding for values
//! from the network, and encoding of one URL path segment.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters (`A–Z a–z 0–9 - . _ ~`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Decode `%XX` escapes. Unlike the lenient decoder of the `percent-encoding` crate, a `%` that
/// does not start a two-digit hex escape makes the whole input invalid (`None`): a value from the
/// network that is not what it claims to be is refused, not passed through.
pub(crate) fn decode_strict(input: &[u8]) -> Option<Vec<u8>> {
    let mut rest = input;
    while let Some(i) = memchr::memchr(b'%', rest) {
        let escape = rest.get(i + 1..i + 3)?;
        if !escape.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        rest = &rest[i + 3..];
    }
    Some(percent_encoding::percent_decode(input).collect())
}

/// Percent-encode `segment` for use as one URL path segment.
pub(crate) fn encode_path_segment(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding() {
        assert_eq!(decode_strict(b"-----BEGIN%20CERT%0A").as_deref(), Some(&b"-----BEGIN CERT\n"[..]));
        assert_eq!(decode_strict(b"a%ffb").as_deref(), Some(&[b'a', 0xff, b'b'][..]));
        assert_eq!(decode_strict(b"plain").as_deref(), Some(&b"plain"[..]));
        for bad in [&b"%"[..], b"%2", b"%zz", b"a%g0", b"%%41"] {
            assert_eq!(decode_strict(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn path_segments() {
        assert_eq!(encode_path_segment("rcpt-0a_b.c~d"), "rcpt-0a_b.c~d");
        assert_eq!(encode_path_segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }
}
