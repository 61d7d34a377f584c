//! Header names of E2EE v2 and ACI.

use http::HeaderName;

/// `X-E2EE-Version` (request: `2`; response: `2`).
pub const E2EE_VERSION: HeaderName = HeaderName::from_static("x-e2ee-version");
/// `X-Client-Pub-Key`: the client's per-exchange public key.
pub const CLIENT_PUB_KEY: HeaderName = HeaderName::from_static("x-client-pub-key");
/// `X-Model-Pub-Key`: the keyset entry's `public_key`, verbatim.
pub const MODEL_PUB_KEY: HeaderName = HeaderName::from_static("x-model-pub-key");
/// `X-E2EE-Nonce`: 64 lowercase hex chars.
pub const E2EE_NONCE: HeaderName = HeaderName::from_static("x-e2ee-nonce");
/// `X-E2EE-Timestamp`: Unix seconds.
pub const E2EE_TIMESTAMP: HeaderName = HeaderName::from_static("x-e2ee-timestamp");
/// `X-Signing-Algo`: the legacy path. Never sent; stripped if a caller set it.
pub const SIGNING_ALGO: HeaderName = HeaderName::from_static("x-signing-algo");
/// `X-E2EE-Applied` (response).
pub const E2EE_APPLIED: HeaderName = HeaderName::from_static("x-e2ee-applied");
/// `X-E2EE-Algo` (response): the suite used.
pub const E2EE_ALGO: HeaderName = HeaderName::from_static("x-e2ee-algo");
/// `X-Receipt-Id` (response).
pub const RECEIPT_ID: HeaderName = HeaderName::from_static("x-receipt-id");
/// `X-ACI-Version` (response): `aci/1`.
pub const ACI_VERSION: HeaderName = HeaderName::from_static("x-aci-version");
/// `X-ACI-Keyset-Digest` (response): `sha256:<hex>` of the serving process's keyset.
pub const ACI_KEYSET_DIGEST: HeaderName = HeaderName::from_static("x-aci-keyset-digest");

/// The six request headers whose presence makes the gateway treat a request as E2EE.
pub const E2EE_REQUEST_HEADERS: [HeaderName; 6] =
    [SIGNING_ALGO, CLIENT_PUB_KEY, MODEL_PUB_KEY, E2EE_VERSION, E2EE_NONCE, E2EE_TIMESTAMP];

/// The bearer token of an `Authorization` header (`Bearer ` or `bearer ` prefix, as the gateway
/// accepts them; trimmed; `None` when absent or empty). Receipts are owned by this token
/// (protocol.md §5.5).
pub(crate) fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim();
    (!token.is_empty()).then_some(token)
}

/// The wait a `Retry-After` header asks for (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// (IMF-fixdate, or the obsolete RFC 850 and asctime forms) read against `now` (Unix seconds; a
/// date in the past is no wait). At most `max`: a longer wait is read as `max`. `None` when the
/// header is absent or unreadable.
pub(crate) fn retry_after(
    headers: &http::HeaderMap,
    now: u64,
    max: std::time::Duration,
) -> Option<std::time::Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Any run of digits is a wait; one too long for u64 is longer than `max`.
        value.parse::<u64>().unwrap_or(u64::MAX)
    } else {
        http_date(value)?.saturating_sub(now)
    };
    Some(std::time::Duration::from_secs(secs).min(max))
}

/// An HTTP-date as Unix seconds: `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate),
/// `Sunday, 06-Nov-94 08:49:37 GMT` (RFC 850) or `Sun Nov  6 08:49:37 1994` (asctime).
pub(crate) fn http_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u64 + 1);
    let number = |s: &str, digits: std::ops::RangeInclusive<usize>| {
        (digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten()
    };
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        // IMF-fixdate: "Sun," "06" "Nov" "1994" "08:49:37" "GMT"
        [weekday, day, mon, year, time, "GMT"] if weekday.ends_with(',') => {
            (number(day, 2..=2)?, month(mon)?, number(year, 4..=4)?, *time)
        }
        // RFC 850: "Sunday," "06-Nov-94" "08:49:37" "GMT"; two-digit years as RFC 9110 says
        // (more than 50 years ahead is the previous century).
        [weekday, date, time, "GMT"] if weekday.ends_with(',') => {
            let mut d = date.split('-');
            let (day, mon, yy) = (d.next()?, d.next()?, d.next()?);
            if d.next().is_some() {
                return None;
            }
            let yy = number(yy, 2..=2)?;
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (number(day, 2..=2)?, month(mon)?, year, *time)
        }
        // asctime: "Sun" "Nov" "6" "08:49:37" "1994"
        [_weekday, mon, day, time, year] => (number(day, 1..=2)?, month(mon)?, number(year, 4..=4)?, *time),
        _ => return None,
    };
    let mut t = time.split(':');
    let (h, m, s) = (number(t.next()?, 2..=2)?, number(t.next()?, 2..=2)?, number(t.next()?, 2..=2)?);
    if t.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3_600 + m * 60 + s)
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;
    use std::time::Duration;

    const HOUR: Duration = Duration::from_secs(3_600);

    fn with(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn http_dates_in_each_form_read_as_the_same_instant() {
        // 784111777 = 1994-11-06T08:49:37Z, RFC 9110's example.
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(http_date("Sun Nov  6 08:49:37 1994"), Some(784_111_777));
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Tue, 29 Feb 2028 23:59:59 GMT"), Some(1_835_481_599));
        for bad in [
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_bounded() {
        let now = 784_111_777;
        assert_eq!(retry_after(&with("120"), now, HOUR), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&with(" 0 "), now, HOUR), Some(Duration::ZERO));
        assert_eq!(retry_after(&with("Sun, 06 Nov 1994 08:50:37 GMT"), now, HOUR), Some(Duration::from_secs(60)));
        // A date in the past is no wait; an absurd wait is the bound.
        assert_eq!(retry_after(&with("Sun, 06 Nov 1994 08:00:00 GMT"), now, HOUR), Some(Duration::ZERO));
        assert_eq!(retry_after(&with("99999999999999999999999"), now, HOUR), Some(HOUR));
        assert_eq!(retry_after(&with("Fri, 31 Dec 9999 23:59:59 GMT"), now, HOUR), Some(HOUR));
        // Unreadable or absent: none.
        for bad in ["-5", "1.5", "soon", "0x10"] {
            assert_eq!(retry_after(&with(bad), now, HOUR), None, "{bad}");
        }
        assert_eq!(retry_after(&http::HeaderMap::new(), now, HOUR), None);
    }
}
