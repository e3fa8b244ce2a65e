//! The request target's query, parsed without allocating for the common case: `device=ID` and,
//! for browsers that cannot set headers, `token=JWT`. Percent-decoding follows
//! `application/x-www-form-urlencoded` (`+` is a space). Bounded: a query longer than
//! [`MAX_QUERY`] or a device id longer than [`MAX_DEVICE`] is refused.

use std::borrow::Cow;

/// Longest query accepted, bytes.
pub const MAX_QUERY: usize = 4096;
/// Longest device id accepted, bytes (after decoding).
pub const MAX_DEVICE: usize = 256;

/// What a prefetch or schedule request says in its query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchQuery<'a> {
    /// `device=`.
    pub device: Option<Cow<'a, str>>,
    /// `token=`.
    pub token: Option<Cow<'a, str>>,
}

/// Why a query was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Longer than [`MAX_QUERY`].
    #[error("query longer than {MAX_QUERY} bytes")]
    TooLong,
    /// Bad percent-encoding or not UTF-8.
    #[error("{0}: bad percent-encoding")]
    BadEncoding(&'static str),
    /// Device id empty, too long or holding control characters.
    #[error("device must be 1-{MAX_DEVICE} bytes without control characters")]
    BadDevice,
    /// The same parameter twice.
    #[error("{0} given twice")]
    Duplicate(&'static str),
}

/// Parses `query` (without the `?`). Unknown parameters are ignored.
pub fn parse(query: &str) -> Result<PrefetchQuery<'_>, QueryError> {
    if query.len() > MAX_QUERY {
        return Err(QueryError::TooLong);
    }
    let mut q = PrefetchQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (slot, name) = match k {
            "device" => (&mut q.device, "device"),
            "token" => (&mut q.token, "token"),
            _ => continue,
        };
        if slot.is_some() {
            return Err(QueryError::Duplicate(name));
        }
        *slot = Some(decode(v).ok_or(QueryError::BadEncoding(name))?);
    }
    if let Some(d) = &q.device {
        if d.is_empty() || d.len() > MAX_DEVICE || d.chars().any(char::is_control) {
            return Err(QueryError::BadDevice);
        }
    }
    Ok(q)
}

/// Percent-decodes one form value; `None` for a bad escape or invalid UTF-8.
pub fn decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Percent-encodes `s` for a URL path segment or query value (everything but unreserved
/// characters).
pub fn encode(s: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if s.bytes().all(keep) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_device_and_token() {
        let q = parse("device=tv-1&token=abc.def&x=1").unwrap();
        assert_eq!(q.device.as_deref(), Some("tv-1"));
        assert_eq!(q.token.as_deref(), Some("abc.def"));
        assert_eq!(parse("").unwrap(), PrefetchQuery::default());
        assert_eq!(
            parse("device=a%20b+c%C3%A9").unwrap().device.as_deref(),
            Some("a b cé")
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("device=").unwrap_err(), QueryError::BadDevice);
        assert_eq!(parse("device=%0A").unwrap_err(), QueryError::BadDevice);
        assert_eq!(
            parse(&format!("device={}", "a".repeat(257))).unwrap_err(),
            QueryError::BadDevice
        );
        assert_eq!(
            parse("device=%zz").unwrap_err(),
            QueryError::BadEncoding("device")
        );
        assert_eq!(
            parse("device=%ff").unwrap_err(),
            QueryError::BadEncoding("device")
        );
        assert_eq!(
            parse("device=a&device=b").unwrap_err(),
            QueryError::Duplicate("device")
        );
        assert_eq!(parse(&"x".repeat(5000)).unwrap_err(), QueryError::TooLong);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(s in "\\PC{0,40}") {
            let enc = encode(&s).into_owned();
            prop_assert_eq!(decode(&enc).unwrap().into_owned(), s);
        }

        #[test]
        fn parse_never_panics(s in "[a-z=&%+0-9A-F]{0,80}") {
            let _ = parse(&s);
        }
    }
}
