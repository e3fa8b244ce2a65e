//! The cue: Cue's broadcast unit, `{event, key, seq, ts}`, and its two wire encodings.
//!
//! * JSON: `{"event":"fight-night","key":"round-3","seq":42,"ts":1764460800123}`. Event and key
//!   are restricted to characters that never need escaping, so the encoder writes bytes directly.
//! * Binary (`format=binary` on WebSocket, binary QUIC records, the origin-edge relay and the
//!   durable log), version 1, all integers big-endian:
//!
//! ```text
//! offset  size  field
//! 0       1     version = 1
//! 1       1     E = event length (1..=97)
//! 2       E     event bytes ([a-z0-9._-], or TENANT/EVENT: see below)
//! 2+E     1     K = key length (1..=64)
//! 3+E     K     key bytes ([A-Za-z0-9._:-])
//! 3+E+K   8     seq (u64)
//! 11+E+K  8     ts  (u64, ms since the Unix epoch)
//! ```
//!
//! Total length is `19 + E + K` bytes (21..=180).
//!
//! **Tenants.** An event of a tenant other than the default one is stored, relayed and held by
//! edges under its qualified name `TENANT/EVENT` (tenant 1-32 chars of `[a-z0-9-]`; a `/` is
//! never in an event name, so two tenants' `fight-night` never meet, and no tenant's events meet
//! the default tenant's bare names). Devices see the bare name ([`Cue::for_device`]).

use std::fmt;

/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 64;
/// Longest tenant name, in bytes.
pub const MAX_TENANT_LEN: usize = 32;
/// Longest qualified event name (`TENANT/EVENT`), in bytes.
pub const MAX_QUALIFIED_EVENT_LEN: usize = MAX_TENANT_LEN + 1 + MAX_EVENT_LEN;
/// Longest stage key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Version byte of the binary encoding.
pub const BINARY_VERSION: u8 = 1;
/// Longest binary encoding of a cue.
pub const MAX_BINARY_LEN: usize = 19 + MAX_QUALIFIED_EVENT_LEN + MAX_KEY_LEN;
/// Longest binary encoding of a [`Record`]: a cue with its class in front.
pub const MAX_RECORD_LEN: usize = 2 + MAX_BINARY_LEN;

/// Why an event name, stage key or encoded cue was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CueError {
    /// The event name is empty, too long, or has a character outside `[a-z0-9._-]`.
    #[error("event must be 1-64 chars of [a-z0-9._-]")]
    BadEvent,
    /// The tenant name is empty, too long, or has a character outside `[a-z0-9-]`.
    #[error("tenant must be 1-32 chars of [a-z0-9-]")]
    BadTenant,
    /// The stage key is empty, too long, or has a character outside `[A-Za-z0-9._:-]`.
    #[error("key must be 1-64 chars of [A-Za-z0-9._:-]")]
    BadKey,
    /// A binary cue is shorter than its lengths say, or has trailing bytes.
    #[error("binary cue has the wrong length")]
    BadLength,
    /// A binary cue carries a version this build does not know.
    #[error("binary cue version {0} is not supported")]
    BadVersion(u8),
    /// A stored cue names a priority class this build does not know.
    #[error("priority class byte {0} is not known")]
    BadClass(u8),
}

/// An event name as stored and relayed: 1-64 chars of `[a-z0-9._-]` for the default tenant,
/// `TENANT/EVENT` for another one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName(Box<str>);

impl EventName {
    /// Validates and wraps a stored name: a bare event name or a qualified `TENANT/EVENT`. For
    /// a name from a device or a URL use [`EventName::qualify`], which takes the bare name only.
    pub fn new(s: &str) -> Result<Self, CueError> {
        match s.split_once('/') {
            None if valid_event(s) => Ok(Self(s.into())),
            Some((t, e)) if valid_tenant(t) && valid_event(e) => Ok(Self(s.into())),
            _ => Err(CueError::BadEvent),
        }
    }

    /// The stored name of the bare event name `event` of `tenant` (`None`: the default tenant).
    pub fn qualify(tenant: Option<&str>, event: &str) -> Result<Self, CueError> {
        if !valid_event(event) {
            return Err(CueError::BadEvent);
        }
        match tenant {
            None => Ok(Self(event.into())),
            Some(t) if valid_tenant(t) => Ok(Self(format!("{t}/{event}").into())),
            Some(_) => Err(CueError::BadTenant),
        }
    }

    /// The name as a string slice (qualified for a tenant's event).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant, `None` for the default one.
    pub fn tenant(&self) -> Option<&str> {
        self.0.split_once('/').map(|(t, _)| t)
    }

    /// The bare event name, as the tenant's devices and publishers name it.
    pub fn local(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, e)| e)
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The seq the origin gives the next cue of an event: `max(previous + 1, now_ms)`, a hybrid
/// logical clock. It is strictly increasing per event whatever the clock does, and it stays
/// close to the publish time, so a store that is wiped and recreated (an empty data directory, a
/// recreated JetStream stream) goes on above every seq it gave before as long as its clock is
/// later than that seq: edges and devices never take its new cues for old ones. A seq runs
/// ahead of the clock only while an event gets more than one cue per millisecond. Seqs stay below
/// 2^53, so JavaScript devices read them exactly, until the year 287,396.
pub fn next_seq(previous: u64, now_ms: u64) -> u64 {
    previous.saturating_add(1).max(now_ms)
}

/// True when `s` is a valid event name.
pub fn valid_event(s: &str) -> bool {
    (1..=MAX_EVENT_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
}

/// True when `s` is a valid tenant name: 1-32 chars of `[a-z0-9-]`.
pub fn valid_tenant(s: &str) -> bool {
    (1..=MAX_TENANT_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
}

/// True when `s` is a valid stage key.
pub fn valid_key(s: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// An event's priority class between the origin and the edges' shards (never sent to devices):
/// when cues wait for a shard, critical ones go first and background ones last. Set by the
/// publish that carries it (`"priority"` in the body; default normal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Priority {
    /// Goes first.
    Critical = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Goes last.
    Background = 2,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Background];

    /// `critical`, `normal` or `background`.
    pub fn parse(s: &str) -> Option<Priority> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The class's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Background => "background",
        }
    }

    /// The class from its wire byte.
    pub fn from_u8(b: u8) -> Option<Priority> {
        Self::ALL.get(b as usize).copied()
    }

    /// Its index in [`Priority::ALL`] (also its wire byte).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One cue. Constructed only through [`Cue::new`] or a decoder, so its fields are always valid.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cue {
    event: EventName,
    key: Box<str>,
    seq: u64,
    ts: u64,
}

impl fmt::Debug for Cue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Cue({}#{} {} @{})",
            self.event, self.seq, self.key, self.ts
        )
    }
}

impl Cue {
    /// Builds a cue, validating the event and key.
    pub fn new(event: &str, key: &str, seq: u64, ts: u64) -> Result<Self, CueError> {
        let event = EventName::new(event)?;
        if !valid_key(key) {
            return Err(CueError::BadKey);
        }
        Ok(Self {
            event,
            key: key.into(),
            seq,
            ts,
        })
    }

    /// The event this cue belongs to.
    pub fn event(&self) -> &EventName {
        &self.event
    }
    /// The stage key the device looks up in its prefetched map.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// Per-event sequence number assigned by the origin.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Publish time at the origin, ms since the Unix epoch.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// The cue as its tenant's devices see it: the bare event name (the same cue for the
    /// default tenant).
    pub fn for_device(&self) -> Cue {
        match self.event.tenant() {
            None => self.clone(),
            Some(_) => Cue {
                event: EventName(self.event.local().into()),
                key: self.key.clone(),
                seq: self.seq,
                ts: self.ts,
            },
        }
    }

    /// Appends the JSON form to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Event and key never need escaping: their alphabets exclude '"' and '\\'.
        out.extend_from_slice(b"{\"event\":\"");
        out.extend_from_slice(self.event.as_str().as_bytes());
        out.extend_from_slice(b"\",\"key\":\"");
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        out.extend_from_slice(self.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(self.ts.to_string().as_bytes());
        out.push(b'}');
    }

    /// The JSON form as a new string.
    pub fn to_json(&self) -> String {
        let mut v = Vec::with_capacity(64 + self.key.len());
        self.write_json(&mut v);
        String::from_utf8(v).expect("cue JSON is ASCII")
    }

    /// The JSON form as a `serde_json::Value` (for APIs that embed a cue in a larger object).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::json!({
            "event": self.event.as_str(),
            "key": &*self.key,
            "seq": self.seq,
            "ts": self.ts,
        })
    }

    /// Parses the JSON form (any field order, extra fields refused).
    pub fn from_json(bytes: &[u8]) -> Result<Self, CueJsonError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            #[serde(borrow)]
            event: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            key: std::borrow::Cow<'a, str>,
            seq: u64,
            ts: u64,
        }
        let raw: Raw<'_> = serde_json::from_slice(bytes).map_err(CueJsonError::Json)?;
        Cue::new(&raw.event, &raw.key, raw.seq, raw.ts).map_err(CueJsonError::Cue)
    }

    /// Length of the binary form.
    pub fn binary_len(&self) -> usize {
        19 + self.event.as_str().len() + self.key.len()
    }

    /// Appends the binary form to `out`.
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        out.reserve(self.binary_len());
        out.push(BINARY_VERSION);
        out.push(self.event.as_str().len() as u8);
        out.extend_from_slice(self.event.as_str().as_bytes());
        out.push(self.key.len() as u8);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts.to_be_bytes());
    }

    /// The binary form as a new vector.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.binary_len());
        self.write_binary(&mut v);
        v
    }

    /// Parses exactly one binary cue; trailing bytes are an error.
    pub fn from_binary(b: &[u8]) -> Result<Self, CueError> {
        let (&version, rest) = b.split_first().ok_or(CueError::BadLength)?;
        if version != BINARY_VERSION {
            return Err(CueError::BadVersion(version));
        }
        let (&elen, rest) = rest.split_first().ok_or(CueError::BadLength)?;
        let elen = elen as usize;
        if rest.len() < elen + 1 {
            return Err(CueError::BadLength);
        }
        let (event, rest) = rest.split_at(elen);
        let (&klen, rest) = rest.split_first().ok_or(CueError::BadLength)?;
        let klen = klen as usize;
        if rest.len() != klen + 16 {
            return Err(CueError::BadLength);
        }
        let (key, rest) = rest.split_at(klen);
        let event = std::str::from_utf8(event).map_err(|_| CueError::BadEvent)?;
        let key = std::str::from_utf8(key).map_err(|_| CueError::BadKey)?;
        let seq = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let ts = u64::from_be_bytes(rest[8..16].try_into().expect("8 bytes"));
        Cue::new(event, key, seq, ts)
    }
}

/// First byte of a retirement's binary form, which is stored where cues are (the embedded log,
/// the JetStream stream) and can never be taken for a cue (whose first byte is
/// [`BINARY_VERSION`]).
pub const RETIRED_TAG: u8 = 0xF0;

/// First byte of a cue of a class other than normal in a store: `CLASSED_TAG`, the class's byte
/// ([`Priority::index`]), then the cue's binary form. A normal cue is stored as the cue alone,
/// so a log written without classes reads the same.
pub const CLASSED_TAG: u8 = 0xF1;

/// What a store holds for an event: a cue and its event's class, or its retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A cue, and the class its publish gave its event.
    Cue(Cue, Priority),
    /// The event was retired when its newest cue had `seq` (0: it had none), at `ts` (Unix
    /// ms). Cues up to `seq` are gone with it; a later cue (its seq follows the clock, so it is
    /// higher) starts the event anew.
    Retired {
        /// The event.
        event: EventName,
        /// Newest seq it had.
        seq: u64,
        /// When it was retired, Unix ms.
        ts: u64,
    },
}

impl Record {
    /// Appends the binary form: a normal cue's; `CLASSED_TAG, u8 class` and the cue's for
    /// another class; or `RETIRED_TAG, u8 elen, event, u64 seq, u64 ts` (big-endian).
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        match self {
            Record::Cue(c, Priority::Normal) => c.write_binary(out),
            Record::Cue(c, class) => {
                out.push(CLASSED_TAG);
                out.push(class.index() as u8);
                c.write_binary(out);
            }
            Record::Retired { event, seq, ts } => {
                out.push(RETIRED_TAG);
                out.push(event.as_str().len() as u8);
                out.extend_from_slice(event.as_str().as_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ts.to_be_bytes());
            }
        }
    }

    /// Length of the binary form.
    pub fn binary_len(&self) -> usize {
        match self {
            Record::Cue(c, Priority::Normal) => c.binary_len(),
            Record::Cue(c, _) => 2 + c.binary_len(),
            Record::Retired { event, .. } => 18 + event.as_str().len(),
        }
    }

    /// The binary form as a new vector.
    pub fn to_binary(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_binary(&mut v);
        v
    }

    /// Parses exactly one record; trailing bytes are an error.
    pub fn from_binary(b: &[u8]) -> Result<Self, CueError> {
        match b.first() {
            Some(&RETIRED_TAG) => {}
            Some(&CLASSED_TAG) => {
                let (&class, cue) = b[1..].split_first().ok_or(CueError::BadLength)?;
                // Normal is never tagged: one record, one encoding.
                let class = Priority::from_u8(class)
                    .filter(|&c| c != Priority::Normal)
                    .ok_or(CueError::BadClass(class))?;
                return Ok(Record::Cue(Cue::from_binary(cue)?, class));
            }
            _ => return Cue::from_binary(b).map(|c| Record::Cue(c, Priority::Normal)),
        }
        let rest = &b[1..];
        let (&elen, rest) = rest.split_first().ok_or(CueError::BadLength)?;
        let elen = elen as usize;
        if rest.len() != elen + 16 {
            return Err(CueError::BadLength);
        }
        let (event, rest) = rest.split_at(elen);
        let event = std::str::from_utf8(event).map_err(|_| CueError::BadEvent)?;
        Ok(Record::Retired {
            event: EventName::new(event)?,
            seq: u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
            ts: u64::from_be_bytes(rest[8..].try_into().expect("8 bytes")),
        })
    }

    /// The event the record is about.
    pub fn event(&self) -> &EventName {
        match self {
            Record::Cue(c, _) => c.event(),
            Record::Retired { event, .. } => event,
        }
    }

    /// The cue's seq, or the retired event's newest.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Cue(c, _) => c.seq(),
            Record::Retired { seq, .. } => *seq,
        }
    }
}

/// Why a JSON cue was refused.
#[derive(Debug, thiserror::Error)]
pub enum CueJsonError {
    /// Not JSON of the cue's shape.
    #[error("bad cue JSON: {0}")]
    Json(serde_json::Error),
    /// JSON of the right shape whose values are invalid.
    #[error("bad cue: {0}")]
    Cue(CueError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_matches_contract_example() {
        let c = Cue::new("fight-night", "round-3", 42, 1764460800123).unwrap();
        assert_eq!(
            c.to_json(),
            r#"{"event":"fight-night","key":"round-3","seq":42,"ts":1764460800123}"#
        );
        assert_eq!(Cue::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn tenant_events_are_qualified_and_devices_see_the_bare_name() {
        let a = EventName::qualify(Some("acme"), "fight-night").unwrap();
        let b = EventName::qualify(Some("brand-b"), "fight-night").unwrap();
        let d = EventName::qualify(None, "fight-night").unwrap();
        assert_eq!(a.as_str(), "acme/fight-night");
        assert_ne!(a, b);
        assert_ne!(a, d);
        assert_eq!((a.tenant(), a.local()), (Some("acme"), "fight-night"));
        assert_eq!((d.tenant(), d.local()), (None, "fight-night"));
        assert_eq!(EventName::new("acme/fight-night").unwrap(), a);
        // A bare name from a device or URL never names another tenant's event.
        assert_eq!(
            EventName::qualify(None, "acme/fight-night"),
            Err(CueError::BadEvent)
        );
        assert_eq!(
            EventName::qualify(Some("Acme"), "x"),
            Err(CueError::BadTenant)
        );
        assert_eq!(
            EventName::qualify(Some(&"t".repeat(MAX_TENANT_LEN + 1)), "x"),
            Err(CueError::BadTenant)
        );
        for bad in ["/x", "acme/", "a/b/c", "ac.me/x", "acme/X", "a_b/x"] {
            assert!(EventName::new(bad).is_err(), "{bad}");
        }
        let c = Cue::new("acme/fight-night", "round-3", 42, 7).unwrap();
        assert_eq!(
            c.for_device().to_json(),
            r#"{"event":"fight-night","key":"round-3","seq":42,"ts":7}"#
        );
        assert_eq!(Cue::from_binary(&c.to_binary()).unwrap(), c);
        let plain = Cue::new("fight-night", "round-3", 42, 7).unwrap();
        assert_eq!(plain.for_device(), plain);
    }

    #[test]
    fn validation() {
        assert_eq!(Cue::new("", "k", 1, 1).unwrap_err(), CueError::BadEvent);
        assert_eq!(
            Cue::new("Fight", "k", 1, 1).unwrap_err(),
            CueError::BadEvent
        );
        assert_eq!(
            Cue::new(&"a".repeat(65), "k", 1, 1).unwrap_err(),
            CueError::BadEvent
        );
        assert!(Cue::new(&"a".repeat(64), &"K".repeat(64), 1, 1).is_ok());
        assert_eq!(Cue::new("e", "a b", 1, 1).unwrap_err(), CueError::BadKey);
        assert_eq!(Cue::new("e", "", 1, 1).unwrap_err(), CueError::BadKey);
        assert_eq!(Cue::new("e", "a\"", 1, 1).unwrap_err(), CueError::BadKey);
    }

    #[test]
    fn binary_layout_is_exact() {
        let c = Cue::new("ev", "k:1", 0x0102, 0x0304).unwrap();
        let b = c.to_binary();
        assert_eq!(b.len(), 19 + 2 + 3);
        assert_eq!(&b[..3], &[1, 2, b'e']);
        assert_eq!(b[4], 3);
        assert_eq!(&b[8..16], &0x0102u64.to_be_bytes());
        assert_eq!(&b[16..24], &0x0304u64.to_be_bytes());
    }

    #[test]
    fn binary_refuses_truncation_and_trailing_bytes() {
        let b = Cue::new("ev", "k", 7, 9).unwrap().to_binary();
        for n in 0..b.len() {
            assert!(Cue::from_binary(&b[..n]).is_err(), "prefix {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Cue::from_binary(&long).unwrap_err(), CueError::BadLength);
        let mut v2 = b;
        v2[0] = 2;
        assert_eq!(Cue::from_binary(&v2).unwrap_err(), CueError::BadVersion(2));
    }

    fn arb_cue() -> impl Strategy<Value = Cue> {
        (
            "[a-z0-9._-]{1,64}",
            "[A-Za-z0-9._:-]{1,64}",
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(e, k, s, t)| Cue::new(&e, &k, s, t).unwrap())
    }

    #[test]
    fn records_round_trip_and_a_retirement_is_never_a_cue() {
        let c = Cue::new("fight-night", "round-3", 42, 1764460800123).unwrap();
        let r = Record::Cue(c.clone(), Priority::Normal);
        assert_eq!(r.to_binary(), c.to_binary());
        assert_eq!(Record::from_binary(&r.to_binary()).unwrap(), r);
        for class in [Priority::Critical, Priority::Background] {
            let r = Record::Cue(c.clone(), class);
            let b = r.to_binary();
            assert_eq!(b.len(), r.binary_len());
            assert_eq!(&b[..2], &[CLASSED_TAG, class.index() as u8]);
            assert_eq!(&b[2..], &c.to_binary()[..]);
            assert_eq!(Record::from_binary(&b).unwrap(), r);
            assert_eq!(Cue::from_binary(&b), Err(CueError::BadVersion(CLASSED_TAG)));
        }
        let mut unknown = Record::Cue(c.clone(), Priority::Critical).to_binary();
        unknown[1] = 3;
        assert_eq!(Record::from_binary(&unknown), Err(CueError::BadClass(3)));
        unknown[1] = Priority::Normal.index() as u8;
        assert_eq!(Record::from_binary(&unknown), Err(CueError::BadClass(1)));
        assert_eq!(
            Record::from_binary(&[CLASSED_TAG]),
            Err(CueError::BadLength)
        );
        let longest_name = format!(
            "{}/{}",
            "t".repeat(MAX_TENANT_LEN),
            "e".repeat(MAX_EVENT_LEN)
        );
        let longest = Cue::new(&longest_name, &"k".repeat(MAX_KEY_LEN), 1, 2).unwrap();
        assert_eq!(longest.to_binary().len(), MAX_BINARY_LEN);
        assert_eq!(
            Record::Cue(longest, Priority::Background).binary_len(),
            MAX_RECORD_LEN
        );
        let t = Record::Retired {
            event: EventName::new("fight-night").unwrap(),
            seq: 42,
            ts: 7,
        };
        let b = t.to_binary();
        assert_eq!(b.len(), 18 + 11);
        assert_eq!(b.len(), t.binary_len());
        assert!(b.len() <= MAX_BINARY_LEN);
        assert_eq!(Record::from_binary(&b).unwrap(), t);
        assert_eq!(Cue::from_binary(&b), Err(CueError::BadVersion(RETIRED_TAG)));
        assert_eq!(
            Record::from_binary(&b[..b.len() - 1]),
            Err(CueError::BadLength)
        );
        assert_eq!((t.event().as_str(), t.seq()), ("fight-night", 42));
    }

    proptest! {
        #[test]
        fn record_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            for tag in [RETIRED_TAG, CLASSED_TAG] {
                let mut b = b.clone();
                if let Some(f) = b.first_mut() {
                    *f = tag;
                }
                if let Ok(r) = Record::from_binary(&b) {
                    prop_assert_eq!(r.to_binary(), b);
                }
            }
        }

        #[test]
        fn binary_round_trip(c in arb_cue()) {
            let b = c.to_binary();
            prop_assert_eq!(b.len(), c.binary_len());
            prop_assert_eq!(Cue::from_binary(&b).unwrap(), c);
        }

        #[test]
        fn json_round_trip(c in arb_cue()) {
            prop_assert_eq!(Cue::from_json(c.to_json().as_bytes()).unwrap(), c);
        }

        #[test]
        fn next_seq_increases_and_tracks_the_clock(prev in 0u64..1 << 50, now in 0u64..1 << 50) {
            let s = next_seq(prev, now);
            prop_assert!(s > prev);
            prop_assert!(s >= now);
            prop_assert!(s == prev + 1 || s == now);
        }

        #[test]
        fn binary_decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Cue::from_binary(&b);
        }
    }
}
