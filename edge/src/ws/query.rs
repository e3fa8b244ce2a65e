//! The subscribe query of `GET /v1/subscribe?events=E1,E2[&since=E1:SEQ,E2:SEQ]
//! [&format=json|binary][&token=JWT]`.
//!
//! A device names the events it wants, optionally the last seq it holds for some of them (so the
//! edge sends a catch-up cue only where the device is behind), the encoding of the cues, and, for
//! browsers that cannot set `Authorization`, its token. Everything wrong with the query is a 400
//! before the upgrade, with a message that names the parameter, so a device developer can fix the
//! URL from the response body alone.
//!
//! Parameter names are matched literally; values are percent-decoded (`%XX`; `+` stays `+`,
//! because this is a URL query, not a form). Unknown parameters are ignored so that devices may
//! send newer parameters to older edges; a repeated known parameter is refused rather than
//! guessed at.

use std::borrow::Cow;

use cue_common::cue::valid_event;

/// Bounds on a subscribe query. Both keep the per-connection work of a hostile query small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest query in bytes, before decoding. Default 4096: 16 events of 64 bytes with their
    /// `since` seqs and a token fit comfortably.
    pub max_query_len: usize,
    /// Most distinct events per connection. Default 16: each one costs the edge a subscription
    /// entry for as long as the device stays, so devices needing more should split.
    pub max_events: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_query_len: 4096,
            max_events: 16,
        }
    }
}

/// How cues are encoded on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// One JSON object per text frame (the default).
    #[default]
    Json,
    /// One binary cue per binary frame.
    Binary,
}

/// A valid subscribe query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The distinct events in the order first named, each with the device's `since` seq if it
    /// gave one. Never empty.
    pub events: Vec<(String, Option<u64>)>,
    /// How cues are encoded; `json` when not given.
    pub format: Format,
    /// The `token` parameter, percent-decoded, if given.
    pub token: Option<String>,
    /// An admission ticket (QUIC hello `ticket`; for WebSocket it comes in the `cue_admit`
    /// cookie, see [`crate::ws::handshake::Request::ticket`]).
    pub ticket: Option<String>,
}

/// Why a subscribe query was refused (answer 400 with its Display as the body). The device's URL
/// is wrong, so retrying it unchanged does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct QueryError {
    /// The parameter at fault (`events`, `since`, `format`, `token`), or `query` for the whole.
    pub param: &'static str,
    /// What is wrong with it, quoting (a bounded part of) the offending value.
    pub message: String,
}

fn error(param: &'static str, message: String) -> QueryError {
    QueryError { param, message }
}

/// Parses and checks a subscribe query (the part after `?`, still percent-encoded).
///
/// `events` is required and holds 1 to `max_events` distinct valid event names (repeats
/// collapse). `since` holds `EVENT:SEQ` pairs whose events are all in `events`, each at most
/// once; an empty `since` is the same as none. `format` is `json` or `binary`. `token` must not
/// be empty when present.
pub fn parse_subscribe(query: &str, limits: &QueryLimits) -> Result<Subscribe, QueryError> {
    if query.len() > limits.max_query_len {
        return Err(error(
            "query",
            format!("longer than {} bytes", limits.max_query_len),
        ));
    }

    let mut events_raw = None;
    let mut since_raw = None;
    let mut format_raw = None;
    let mut token_raw = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (slot, param) = match name {
            "events" => (&mut events_raw, "events"),
            "since" => (&mut since_raw, "since"),
            "format" => (&mut format_raw, "format"),
            "token" => (&mut token_raw, "token"),
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(error(param, "given more than once".into()));
        }
    }

    let Some(events_raw) = events_raw else {
        return Err(error("events", "missing".into()));
    };
    let mut events = parse_events(&percent_decode("events", events_raw)?, limits.max_events)?;
    if let Some(raw) = since_raw {
        apply_since(&percent_decode("since", raw)?, &mut events)?;
    }
    let format = match format_raw {
        None => Format::Json,
        Some(raw) => match &*percent_decode("format", raw)? {
            "json" => Format::Json,
            "binary" => Format::Binary,
            other => {
                return Err(error(
                    "format",
                    format!("{} is not json or binary", quoted(other)),
                ))
            }
        },
    };
    let token = match token_raw {
        None => None,
        Some(raw) => {
            let token = percent_decode("token", raw)?;
            if token.is_empty() {
                return Err(error("token", "empty".into()));
            }
            Some(token.into_owned())
        }
    };
    Ok(Subscribe {
        events,
        format,
        token,
        ticket: None,
    })
}

fn parse_events(list: &str, max_events: usize) -> Result<Vec<(String, Option<u64>)>, QueryError> {
    if list.is_empty() {
        return Err(error("events", "empty".into()));
    }
    let mut events: Vec<(String, Option<u64>)> = Vec::new();
    for name in list.split(',') {
        if !valid_event(name) {
            return Err(error(
                "events",
                format!("{} is not a valid event name", quoted(name)),
            ));
        }
        // A linear scan: the list is at most `max_events` long.
        if events.iter().any(|(e, _)| e == name) {
            continue;
        }
        if events.len() == max_events {
            return Err(error("events", format!("more than {max_events} events")));
        }
        events.push((name.to_owned(), None));
    }
    Ok(events)
}

fn apply_since(list: &str, events: &mut [(String, Option<u64>)]) -> Result<(), QueryError> {
    if list.is_empty() {
        return Ok(());
    }
    for pair in list.split(',') {
        let parsed = pair.split_once(':').and_then(|(event, seq)| {
            // `u64::from_str` would also take a leading `+`; a seq is digits only.
            let digits = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
            let seq = seq.parse::<u64>().ok().filter(|_| digits)?;
            valid_event(event).then_some((event, seq))
        });
        let Some((event, seq)) = parsed else {
            return Err(error("since", format!("{} is not EVENT:SEQ", quoted(pair))));
        };
        let Some((_, since)) = events.iter_mut().find(|(e, _)| e == event) else {
            return Err(error(
                "since",
                format!("{} is not in events", quoted(event)),
            ));
        };
        if since.replace(seq).is_some() {
            return Err(error(
                "since",
                format!("{} is given more than once", quoted(event)),
            ));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes; borrows when there are none, which is the usual case.
fn percent_decode<'a>(param: &'static str, s: &'a str) -> Result<Cow<'a, str>, QueryError> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (hex(i + 1), hex(i + 2)) {
            (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
            _ => return Err(error(param, "bad percent-escape".into())),
        }
        i += 3;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| error(param, "not UTF-8 after percent-decoding".into()))
}

/// `s` in quotes for an error message: at most 64 bytes of it, control characters escaped, so a
/// hostile query (or hello) cannot make the refusal large or odd.
pub(crate) fn quoted(s: &str) -> String {
    const MAX: usize = 64;
    let mut end = s.len().min(MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < s.len() { "..." } else { "" };
    format!("'{}{ellipsis}'", s[..end].escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(q: &str) -> Result<Subscribe, QueryError> {
        parse_subscribe(q, &QueryLimits::default())
    }

    fn err(q: &str) -> String {
        parse(q).unwrap_err().to_string()
    }

    fn events(q: &str) -> Vec<(String, Option<u64>)> {
        parse(q).unwrap().events
    }

    fn ev(name: &str, since: Option<u64>) -> (String, Option<u64>) {
        (name.to_owned(), since)
    }

    #[test]
    fn defaults() {
        assert_eq!(
            QueryLimits::default(),
            QueryLimits {
                max_query_len: 4096,
                max_events: 16
            }
        );
        assert_eq!(
            parse("events=match.42"),
            Ok(Subscribe {
                events: vec![ev("match.42", None)],
                format: Format::Json,
                token: None,
                ticket: None
            })
        );
    }

    #[test]
    fn full_query() {
        let s = parse("events=a,b-c,d_e&since=a:41,d_e:0&format=binary&token=x.y.z").unwrap();
        assert_eq!(
            s.events,
            [ev("a", Some(41)), ev("b-c", None), ev("d_e", Some(0))]
        );
        assert_eq!(s.format, Format::Binary);
        assert_eq!(s.token.as_deref(), Some("x.y.z"));
    }

    #[test]
    fn parameter_order_does_not_matter() {
        assert_eq!(parse("since=a:1&events=a"), parse("events=a&since=a:1"));
    }

    #[test]
    fn duplicate_events_collapse_in_first_order() {
        assert_eq!(events("events=b,a,b,a"), [ev("b", None), ev("a", None)]);
    }

    #[test]
    fn missing_events() {
        assert_eq!(err("format=json"), "events: missing");
        assert_eq!(err(""), "events: missing");
    }

    #[test]
    fn empty_events() {
        assert_eq!(err("events="), "events: empty");
        assert_eq!(err("events"), "events: empty");
    }

    #[test]
    fn invalid_event_name() {
        assert_eq!(err("events=a,B"), "events: 'B' is not a valid event name");
        assert_eq!(err("events=a,,b"), "events: '' is not a valid event name");
        let long = err(&format!("events={}", "x".repeat(65)));
        assert_eq!(
            long,
            format!("events: '{}...' is not a valid event name", "x".repeat(64))
        );
    }

    #[test]
    fn too_many_events() {
        let names: Vec<String> = (0..17).map(|i| format!("e{i}")).collect();
        assert_eq!(
            events(&format!("events={}", names[..16].join(","))).len(),
            16
        );
        assert_eq!(
            err(&format!("events={}", names.join(","))),
            "events: more than 16 events"
        );
        // Repeats do not count.
        let with_dup = format!("events={},e0", names[..16].join(","));
        assert_eq!(events(&with_dup).len(), 16);
        let limits = QueryLimits {
            max_events: 2,
            ..QueryLimits::default()
        };
        assert!(parse_subscribe("events=a,b,c", &limits).is_err());
    }

    #[test]
    fn since_not_event_seq() {
        assert_eq!(
            err("events=x&since=x:abc"),
            "since: 'x:abc' is not EVENT:SEQ"
        );
        assert_eq!(err("events=x&since=x"), "since: 'x' is not EVENT:SEQ");
        assert_eq!(err("events=x&since=x:"), "since: 'x:' is not EVENT:SEQ");
        assert_eq!(err("events=x&since=x:+5"), "since: 'x:+5' is not EVENT:SEQ");
        assert_eq!(err("events=x&since=x:-1"), "since: 'x:-1' is not EVENT:SEQ");
        assert_eq!(err("events=x&since=:5"), "since: ':5' is not EVENT:SEQ");
        assert_eq!(err("events=x&since=x:1,"), "since: '' is not EVENT:SEQ");
    }

    #[test]
    fn since_seq_range() {
        assert_eq!(
            events("events=x&since=x:18446744073709551615"),
            [ev("x", Some(u64::MAX))]
        );
        assert_eq!(
            err("events=x&since=x:18446744073709551616"),
            "since: 'x:18446744073709551616' is not EVENT:SEQ"
        );
    }

    #[test]
    fn since_event_not_in_events() {
        assert_eq!(err("events=a&since=b:1"), "since: 'b' is not in events");
    }

    #[test]
    fn since_event_twice() {
        assert_eq!(
            err("events=a&since=a:1,a:2"),
            "since: 'a' is given more than once"
        );
    }

    #[test]
    fn empty_since_is_none() {
        assert_eq!(events("events=a&since="), [ev("a", None)]);
    }

    #[test]
    fn repeated_parameters() {
        assert_eq!(err("events=a&events=b"), "events: given more than once");
        assert_eq!(
            err("events=a&since=a:1&since=a:1"),
            "since: given more than once"
        );
        assert_eq!(
            err("events=a&format=json&format=json"),
            "format: given more than once"
        );
        assert_eq!(
            err("events=a&token=t&token=t"),
            "token: given more than once"
        );
    }

    #[test]
    fn unknown_parameters_are_ignored() {
        assert_eq!(events("v=2&events=a&x&&y=%zz&"), [ev("a", None)]);
    }

    #[test]
    fn formats() {
        assert_eq!(parse("events=a&format=json").unwrap().format, Format::Json);
        assert_eq!(
            parse("events=a&format=binary").unwrap().format,
            Format::Binary
        );
        assert_eq!(
            err("events=a&format=JSON"),
            "format: 'JSON' is not json or binary"
        );
        assert_eq!(err("events=a&format="), "format: '' is not json or binary");
    }

    #[test]
    fn tokens() {
        let token = |q: &str| parse(q).unwrap().token;
        assert_eq!(token("events=a&token=a%2Eb+c").as_deref(), Some("a.b+c"));
        assert_eq!(err("events=a&token="), "token: empty");
    }

    #[test]
    fn percent_decoding() {
        // Over-encoded separators, as `encodeURIComponent` produces them, still separate.
        assert_eq!(
            events("events=a%2Cb&since=a%3A7"),
            [ev("a", Some(7)), ev("b", None)]
        );
        assert_eq!(events("events=%61"), [ev("a", None)]);
        assert_eq!(err("events=a+b"), "events: 'a+b' is not a valid event name");
    }

    #[test]
    fn bad_percent_escapes() {
        assert_eq!(err("events=a%2"), "events: bad percent-escape");
        assert_eq!(err("events=a%zz"), "events: bad percent-escape");
        assert_eq!(err("events=a&since=%"), "since: bad percent-escape");
        assert_eq!(err("events=a&token=%g0"), "token: bad percent-escape");
        assert_eq!(err("events=a&format=%+1"), "format: bad percent-escape");
    }

    #[test]
    fn non_utf8_after_decoding() {
        assert_eq!(
            err("events=a%FF"),
            "events: not UTF-8 after percent-decoding"
        );
    }

    #[test]
    fn query_too_long() {
        let long = format!("events=a&pad={}", "x".repeat(4096));
        assert_eq!(err(&long), "query: longer than 4096 bytes");
    }

    #[test]
    fn quoted_values_are_bounded_and_escaped() {
        let msg = err(&format!("events=a&format={}%0A", "y".repeat(200)));
        assert!(msg.len() < 120, "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(quoted("a\nb"), "'a\\nb'");
        assert_eq!(
            quoted(&"\u{e9}".repeat(40)),
            format!("'{}...'", "\u{e9}".repeat(32))
        );
    }

    fn event_name() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,64}"
    }

    proptest! {
        #[test]
        fn never_panics(q in any::<String>()) {
            let _ = parse(&q);
        }

        #[test]
        fn never_panics_on_query_shaped_input(
            q in "((events|since|format|token|x)(=([a-z0-9:,%+]|%[0-9A-Fa-f]{2})*)?&?){0,6}"
        ) {
            let _ = parse(&q);
        }

        #[test]
        fn round_trip(
            names in prop::collection::vec(event_name(), 1..=16),
            seqs in prop::collection::vec(any::<Option<u64>>(), 16),
            binary in any::<bool>(),
            token in proptest::option::of("[A-Za-z0-9._-]{1,40}"),
        ) {
            let mut expect: Vec<(String, Option<u64>)> = Vec::new();
            for (name, seq) in names.iter().zip(&seqs) {
                if !expect.iter().any(|(e, _)| e == name) {
                    expect.push((name.clone(), *seq));
                }
            }
            let mut q = format!("events={}", names.join(","));
            let since: Vec<String> =
                expect.iter().filter_map(|(e, s)| s.map(|s| format!("{e}:{s}"))).collect();
            if !since.is_empty() {
                q += &format!("&since={}", since.join(","));
            }
            if binary {
                q += "&format=binary";
            }
            if let Some(t) = &token {
                q += &format!("&token={t}");
            }
            let limits = QueryLimits { max_query_len: 1 << 16, ..QueryLimits::default() };
            let got = parse_subscribe(&q, &limits).unwrap();
            prop_assert_eq!(got.events, expect);
            prop_assert_eq!(got.format, if binary { Format::Binary } else { Format::Json });
            prop_assert_eq!(got.token, token);
        }
    }
}
