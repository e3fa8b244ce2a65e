//! The QUIC device hello: the first line a device writes on its stream,
//! `{"events":["E1"],"since":{"E1":41},"token":"JWT","format":"json"}` then `\n`.
//!
//! Sans-IO and strict: the line is at most `max_len` bytes (the newline excluded), one JSON
//! object whose only keys are `events` (required: 1..=`max_events` distinct valid event names,
//! repeats collapse as in the WebSocket query), `since` (an object of subscribed event -> u64
//! seq), `token` (a non-empty string), `ticket` (the admission ticket an earlier `{"ok":true,
//! "ticket":...}` answer handed out, at most 64 bytes) and `format` (`"json"` or `"binary"`).
//! Unknown or repeated
//! keys are refused, so a typo is an error the developer sees, not a silently ignored field.
//! The result is the same [`Subscribe`] the WebSocket query produces, so both transports share
//! one admission path (auth, event slots, catch-up).

use std::fmt;

use cue_common::cue::valid_event;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use crate::ws::query::{quoted, Format, Subscribe};

/// Longest admission ticket accepted (they are [`cue_common::keys::TICKET_LEN`] bytes).
pub const MAX_TICKET: usize = 64;

/// Bounds on a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloLimits {
    /// Longest hello line in bytes, newline excluded. Default 4096 (as the WebSocket query).
    pub max_len: usize,
    /// Most distinct events. Default 16.
    pub max_events: usize,
}

impl Default for HelloLimits {
    fn default() -> Self {
        Self {
            max_len: 4096,
            max_events: 16,
        }
    }
}

/// Why a hello was refused (the device gets `{"ok":false,"status":400,"error":DISPLAY}`). The
/// device's hello is wrong, so sending it again unchanged does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HelloError {
    /// The key at fault (`events`, `since`, `token`, `format`), or `hello` for the whole line.
    pub field: &'static str,
    /// What is wrong, quoting at most 64 bytes of the offending value.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> HelloError {
    HelloError {
        field,
        message: message.into(),
    }
}

/// What the line scanner found in a device's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// No newline yet, and still within the limit: wait for more bytes.
    Incomplete,
    /// A whole line of `len` bytes; the hello and its newline use `len + 1` bytes.
    Line(usize),
}

/// Finds the end of the hello line in `buf`, or refuses a line over `max_len` bytes.
pub fn scan_line(buf: &[u8], max_len: usize) -> Result<Scan, HelloError> {
    match buf.iter().take(max_len + 1).position(|&b| b == b'\n') {
        Some(n) => Ok(Scan::Line(n)),
        None if buf.len() > max_len => {
            Err(err("hello", format!("no newline within {max_len} bytes")))
        }
        None => Ok(Scan::Incomplete),
    }
}

/// Parses one hello line (without its newline).
pub fn parse_hello(line: &[u8], limits: &HelloLimits) -> Result<Subscribe, HelloError> {
    if line.len() > limits.max_len {
        return Err(err(
            "hello",
            format!("longer than {} bytes", limits.max_len),
        ));
    }
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut de = serde_json::Deserializer::from_slice(line);
    let mut field_err = None;
    let raw = HelloSeed {
        limits,
        field_err: &mut field_err,
    }
    .deserialize(&mut de);
    let raw = match (raw, field_err) {
        (_, Some(e)) => return Err(e),
        (Ok(r), None) => r,
        (Err(e), None) => return Err(err("hello", format!("not a JSON object: {e}"))),
    };
    de.end()
        .map_err(|_| err("hello", "trailing bytes after the JSON object"))?;
    let Some(mut events) = raw.events else {
        return Err(err("events", "missing"));
    };
    if let Some(since) = raw.since {
        for (event, seq) in since {
            let Some((_, s)) = events.iter_mut().find(|(e, _)| *e == event) else {
                return Err(err("since", format!("{} is not in events", quoted(&event))));
            };
            *s = Some(seq);
        }
    }
    Ok(Subscribe {
        events,
        format: raw.format.unwrap_or(Format::Json),
        token: raw.token,
        ticket: raw.ticket,
    })
}

#[derive(Default)]
struct RawHello {
    events: Option<Vec<(String, Option<u64>)>>,
    since: Option<Vec<(String, u64)>>,
    token: Option<String>,
    ticket: Option<String>,
    format: Option<Format>,
}

/// Deserialises the object while recording the first field-level problem, so the device is told
/// which key is wrong rather than a generic serde message.
struct HelloSeed<'a> {
    limits: &'a HelloLimits,
    field_err: &'a mut Option<HelloError>,
}

impl<'de> DeserializeSeed<'de> for HelloSeed<'_> {
    type Value = RawHello;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawHello, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HelloSeed<'_> {
    type Value = RawHello;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with events, since, token, ticket, format")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHello, A::Error> {
        let mut raw = RawHello::default();
        macro_rules! fail {
            ($field:expr, $msg:expr) => {{
                *self.field_err = Some(err($field, $msg));
                return Err(de::Error::custom("refused"));
            }};
        }
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "events" => {
                    if raw.events.is_some() {
                        fail!("events", "given more than once");
                    }
                    let mut problem = None;
                    let evs = map.next_value_seed(EventsSeed {
                        max: self.limits.max_events,
                        problem: &mut problem,
                    });
                    if let Some(p) = problem {
                        fail!("events", p);
                    }
                    let evs = match evs {
                        Ok(e) => e,
                        Err(_) => fail!("events", "must be an array of event names"),
                    };
                    if evs.is_empty() {
                        fail!("events", "empty");
                    }
                    raw.events = Some(evs);
                }
                "since" => {
                    if raw.since.is_some() {
                        fail!("since", "given more than once");
                    }
                    let mut problem = None;
                    let since = map.next_value_seed(SinceSeed {
                        max: self.limits.max_events,
                        problem: &mut problem,
                    });
                    if let Some(p) = problem {
                        fail!("since", p);
                    }
                    match since {
                        Ok(s) => raw.since = Some(s),
                        Err(_) => fail!("since", "must be an object of event name to seq"),
                    }
                }
                "token" => {
                    if raw.token.is_some() {
                        fail!("token", "given more than once");
                    }
                    match map.next_value::<String>() {
                        Ok(t) if t.is_empty() => fail!("token", "empty"),
                        Ok(t) => raw.token = Some(t),
                        Err(_) => fail!("token", "must be a string"),
                    }
                }
                "ticket" => {
                    if raw.ticket.is_some() {
                        fail!("ticket", "given more than once");
                    }
                    match map.next_value::<String>() {
                        Ok(t) if t.is_empty() || t.len() > MAX_TICKET => {
                            fail!("ticket", format!("must be 1..={MAX_TICKET} bytes"))
                        }
                        Ok(t) => raw.ticket = Some(t),
                        Err(_) => fail!("ticket", "must be a string"),
                    }
                }
                "format" => {
                    if raw.format.is_some() {
                        fail!("format", "given more than once");
                    }
                    match map.next_value::<std::borrow::Cow<'de, str>>() {
                        Ok(f) if f == "json" => raw.format = Some(Format::Json),
                        Ok(f) if f == "binary" => raw.format = Some(Format::Binary),
                        Ok(f) => fail!("format", format!("{} is not json or binary", quoted(&f))),
                        Err(_) => fail!("format", "must be \"json\" or \"binary\""),
                    }
                }
                other => fail!(
                    "hello",
                    format!(
                        "unknown key {} (allowed: events, since, token, ticket, format)",
                        quoted(other)
                    )
                ),
            }
        }
        Ok(raw)
    }
}

struct EventsSeed<'a> {
    max: usize,
    problem: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = Vec<(String, Option<u64>)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = Vec<(String, Option<u64>)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of event names")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Option<u64>)> = Vec::new();
        while let Some(name) = seq.next_element::<std::borrow::Cow<'de, str>>()? {
            if !valid_event(&name) {
                *self.problem = Some(format!("{} is not a valid event name", quoted(&name)));
                return Err(de::Error::custom("refused"));
            }
            if out.iter().any(|(e, _)| *e == *name) {
                continue;
            }
            if out.len() == self.max {
                *self.problem = Some(format!("more than {} events", self.max));
                return Err(de::Error::custom("refused"));
            }
            out.push((name.into_owned(), None));
        }
        Ok(out)
    }
}

struct SinceSeed<'a> {
    max: usize,
    problem: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for SinceSeed<'_> {
    type Value = Vec<(String, u64)>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SinceSeed<'_> {
    type Value = Vec<(String, u64)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of event name to seq")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, u64)> = Vec::new();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !valid_event(&name) {
                *self.problem = Some(format!("{} is not a valid event name", quoted(&name)));
                return Err(de::Error::custom("refused"));
            }
            if out.iter().any(|(e, _)| *e == *name) {
                *self.problem = Some(format!("{} is given more than once", quoted(&name)));
                return Err(de::Error::custom("refused"));
            }
            if out.len() == self.max {
                *self.problem = Some(format!("more than {} entries", self.max));
                return Err(de::Error::custom("refused"));
            }
            let Ok(seq) = map.next_value::<u64>() else {
                *self.problem = Some(format!(
                    "seq of {} must be an unsigned integer",
                    quoted(&name)
                ));
                return Err(de::Error::custom("refused"));
            };
            out.push((name.into_owned(), seq));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Subscribe, HelloError> {
        parse_hello(s.as_bytes(), &HelloLimits::default())
    }

    fn fails(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn contract_example() {
        let h = parse(r#"{"events":["E1"],"since":{"E1":41},"token":"JWT","format":"json"}"#)
            .unwrap_err();
        // "E1" has upper case: not a valid event name.
        assert_eq!(h.field, "events");
        let h =
            parse(r#"{"events":["e1","e2"],"since":{"e1":41},"token":"JWT","format":"binary"}"#)
                .unwrap();
        assert_eq!(
            h.events,
            vec![("e1".to_string(), Some(41)), ("e2".to_string(), None)]
        );
        assert_eq!(h.format, Format::Binary);
        assert_eq!(h.token.as_deref(), Some("JWT"));
        assert_eq!(h.ticket, None);
        let h = parse(r#"{"events":["e1"],"token":"JWT","ticket":"abc-_1"}"#).unwrap();
        assert_eq!(h.ticket.as_deref(), Some("abc-_1"));
        let long = format!(
            r#"{{"events":["e1"],"ticket":"{}"}}"#,
            "t".repeat(MAX_TICKET + 1)
        );
        assert_eq!(parse(&long).unwrap_err().field, "ticket");
    }

    #[test]
    fn defaults_and_whitespace() {
        let h = parse(" { \"events\" : [ \"fight\" , \"fight\" ] } \r").unwrap();
        assert_eq!(h.events, vec![("fight".to_string(), None)]);
        assert_eq!(h.format, Format::Json);
        assert_eq!(h.token, None);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            ("", "hello"),
            ("[]", "hello"),
            ("{}", "events"),
            (r#"{"events":[]}"#, "events"),
            (r#"{"events":"fight"}"#, "events"),
            (r#"{"events":["Bad*"]}"#, "events"),
            (r#"{"events":[1]}"#, "events"),
            (r#"{"events":["a"],"events":["b"]}"#, "events"),
            (r#"{"events":["a"],"since":{"b":1}}"#, "since"),
            (r#"{"events":["a"],"since":{"a":-1}}"#, "since"),
            (r#"{"events":["a"],"since":{"a":1.5}}"#, "since"),
            (r#"{"events":["a"],"since":{"a":1,"a":2}}"#, "since"),
            (r#"{"events":["a"],"since":[]}"#, "since"),
            (r#"{"events":["a"],"token":""}"#, "token"),
            (r#"{"events":["a"],"token":7}"#, "token"),
            (r#"{"events":["a"],"ticket":""}"#, "ticket"),
            (r#"{"events":["a"],"ticket":1}"#, "ticket"),
            (r#"{"events":["a"],"ticket":"t","ticket":"t"}"#, "ticket"),
            (r#"{"events":["a"],"format":"xml"}"#, "format"),
            (r#"{"events":["a"],"format":null}"#, "format"),
            (r#"{"events":["a"],"extra":1}"#, "hello"),
            (r#"{"events":["a"]} {}"#, "hello"),
            (r#"{"events":["a"]"#, "hello"),
        ];
        for (line, field) in cases {
            let e = parse(line).expect_err(line);
            assert_eq!(e.field, field, "{line}: {e}");
        }
        assert!(fails(r#"{"events":["a"],"extra":1}"#).contains("unknown key 'extra'"));
    }

    #[test]
    fn limits() {
        let many: Vec<String> = (0..17).map(|i| format!("\"e{i}\"")).collect();
        let line = format!("{{\"events\":[{}]}}", many.join(","));
        assert!(fails(&line).contains("more than 16 events"));
        let long = format!("{{\"events\":[\"a\"],\"token\":\"{}\"}}", "x".repeat(5000));
        assert_eq!(parse(&long).unwrap_err().field, "hello");
        assert_eq!(scan_line(&[b'x'; 5000], 4096).unwrap_err().field, "hello");
        assert_eq!(scan_line(b"{}", 4096).unwrap(), Scan::Incomplete);
        assert_eq!(scan_line(b"{}\nrest", 4096).unwrap(), Scan::Line(2));
        let exact = [b'x'; 4096];
        assert_eq!(scan_line(&exact, 4096).unwrap(), Scan::Incomplete);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_hello(
            deep.as_bytes(),
            &HelloLimits {
                max_len: 1 << 20,
                max_events: 16
            }
        )
        .is_err());
    }

    #[test]
    fn errors_quote_at_most_64_bytes() {
        let e = fails(&format!("{{\"events\":[\"{}\"]}}", "Z".repeat(500)));
        assert!(e.len() < 140, "{e}");
    }

    fn event_name() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,64}"
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_hello(&bytes, &HelloLimits::default());
            let _ = scan_line(&bytes, 64);
        }

        #[test]
        fn never_panics_on_hello_shaped_input(s in r#"\{("(events|since|token|format|x)":(\[("[a-z.\-]{0,4}",?){0,4}\]|\{("[a-z]{0,3}":[0-9\-.]{0,4},?){0,3}\}|"[a-z]{0,6}"|[0-9]{0,3}|null),?){0,5}\}"#) {
            let _ = parse(&s);
        }

        #[test]
        fn round_trip(
            evs in proptest::collection::vec((event_name(), proptest::option::of(any::<u64>())), 1..8),
            token in proptest::option::of("[A-Za-z0-9._-]{1,40}"),
            binary in any::<bool>(),
        ) {
            let mut seen = std::collections::HashSet::new();
            let evs: Vec<_> = evs.into_iter().filter(|(e, _)| seen.insert(e.clone())).collect();
            let mut v = serde_json::json!({
                "events": evs.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
                "since": evs.iter().filter_map(|(e, s)| s.map(|s| (e.clone(), serde_json::json!(s)))).collect::<serde_json::Map<_, _>>(),
                "format": if binary { "binary" } else { "json" },
            });
            if let Some(t) = &token {
                v["token"] = serde_json::json!(t);
            }
            let line = serde_json::to_vec(&v).unwrap();
            let h = parse_hello(&line, &HelloLimits { max_len: 1 << 16, max_events: 16 }).unwrap();
            prop_assert_eq!(h.events, evs);
            prop_assert_eq!(h.token, token);
            prop_assert_eq!(h.format, if binary { Format::Binary } else { Format::Json });
        }
    }
}
