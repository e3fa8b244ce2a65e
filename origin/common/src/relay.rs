//! The origin-edge relay protocol, sans-IO: frame codec, catch-up, liveness and backoff.
//!
//! An edge dials the origin's relay listener and says which seq it holds per event (`HELLO`).
//! The origin answers with the newest cue of every event the edge is behind on, a `CAUGHT_UP`
//! marker, then live cues as they are published. Both sides send `PING` when they have sent
//! nothing for a heartbeat interval and drop the link when they have heard nothing for
//! `dead_after`. Only the newest cue of an event matters, so neither side ever queues a
//! backlog: a lagging edge is re-synchronised from the origin's newest state instead.
//!
//! Frame layout (all integers big-endian):
//!
//! ```text
//! u32 len        length of what follows (type + body), 1..=MAX_FRAME
//! u8  type       1 HELLO, 2 CUE, 3 PING, 4 PONG, 5 CAUGHT_UP, 6 RETIRED, 7 CUE_CLASS
//! body
//!   HELLO:      u8 version (1..=3), u8 id_len, id (UTF-8, 1..=64), u32 n,
//!               n x (u8 elen, event, u64 seq)
//!   CUE:        the cue's binary form (see `cue`)
//!   PING/PONG:  u64 nonce (PONG echoes the PING's)
//!   CAUGHT_UP:  u32 number of cues the catch-up carried
//!   RETIRED:    u8 elen, event (origin to edges of version 2: forget the event's cue)
//!   CUE_CLASS:  u8 class (0 critical, 2 background), the cue's binary form (version 3)
//! ```
//!
//! Version 2 adds RETIRED, version 3 CUE_CLASS (a cue of an event whose class is not normal);
//! an origin sends each only to edges whose HELLO says so (others get RETIRED not at all and a
//! plain CUE), so older edges keep working with a newer origin (upgrade origins first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::cue::{Cue, CueError, EventName, Priority};

/// Largest frame accepted (a HELLO for [`MAX_HELLO_EVENTS`] events fits).
pub const MAX_FRAME: usize = 1 << 20;
/// Most events one HELLO may list.
pub const MAX_HELLO_EVENTS: usize = 10_000;
/// Relay protocol version this build speaks (carried in HELLO).
pub const VERSION: u8 = 3;
/// Oldest HELLO version accepted.
pub const MIN_VERSION: u8 = 1;

const T_HELLO: u8 = 1;
const T_CUE: u8 = 2;
const T_PING: u8 = 3;
const T_PONG: u8 = 4;
const T_CAUGHT_UP: u8 = 5;
const T_RETIRED: u8 = 6;
const T_CUE_CLASS: u8 = 7;

/// One relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Edge to origin, first frame: who the edge is and what it holds.
    Hello {
        /// Protocol version the edge speaks ([`MIN_VERSION`]..=[`VERSION`]).
        version: u8,
        /// Edge identity, for logs and metrics.
        edge_id: String,
        /// Newest seq the edge holds per event.
        since: Vec<(EventName, u64)>,
    },
    /// A cue (catch-up or live).
    Cue(Cue),
    /// Liveness probe.
    Ping(u64),
    /// Liveness answer.
    Pong(u64),
    /// End of the catch-up after a HELLO.
    CaughtUp(u32),
    /// The event was retired: forget its cue (version 2).
    Retired(EventName),
    /// A cue of an event whose class is not normal (version 3).
    ClassedCue(Cue, Priority),
}

/// Why relay input was refused. Every variant ends the link; re-dialling helps unless the peer
/// keeps sending the same thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The length prefix is 0 or larger than [`MAX_FRAME`].
    #[error("relay frame length {0} out of range")]
    BadLength(usize),
    /// Unknown frame type.
    #[error("unknown relay frame type {0}")]
    BadType(u8),
    /// A frame whose body does not match its type.
    #[error("malformed relay {0} frame")]
    Malformed(&'static str),
    /// A HELLO of another protocol version.
    #[error("relay protocol version {0} not supported")]
    BadVersion(u8),
    /// A CUE frame whose cue is invalid.
    #[error("bad cue in relay frame: {0}")]
    BadCue(#[from] CueError),
}

/// Appends one encoded frame to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    match frame {
        Frame::Hello {
            version,
            edge_id,
            since,
        } => {
            out.push(T_HELLO);
            out.push(*version);
            let id = &edge_id.as_bytes()[..edge_id.len().min(64)];
            out.push(id.len() as u8);
            out.extend_from_slice(id);
            // At most MAX_HELLO_EVENTS entries, and only as many as fit in MAX_FRAME (10,000
            // tenants' longest names would not): an event left out is caught up as if the edge
            // held nothing of it.
            let count_at = out.len();
            out.extend_from_slice(&[0, 0, 0, 0]);
            let mut n = 0u32;
            for (ev, seq) in since.iter().take(MAX_HELLO_EVENTS) {
                let e = ev.as_str().as_bytes();
                if out.len() - start - 4 + 1 + e.len() + 8 > MAX_FRAME {
                    break;
                }
                out.push(e.len() as u8);
                out.extend_from_slice(e);
                out.extend_from_slice(&seq.to_be_bytes());
                n += 1;
            }
            out[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
        }
        Frame::Cue(c) => {
            out.push(T_CUE);
            c.write_binary(out);
        }
        Frame::ClassedCue(c, p) => {
            out.push(T_CUE_CLASS);
            out.push(p.index() as u8);
            c.write_binary(out);
        }
        Frame::Ping(n) => {
            out.push(T_PING);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Frame::Pong(n) => {
            out.push(T_PONG);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Frame::CaughtUp(n) => {
            out.push(T_CAUGHT_UP);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Frame::Retired(ev) => {
            out.push(T_RETIRED);
            out.push(ev.as_str().len() as u8);
            out.extend_from_slice(ev.as_str().as_bytes());
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// frame and how many bytes it used. A bad length is detected from the prefix alone.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, RelayError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(RelayError::BadLength(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let body = &buf[5..4 + len];
    let frame = match buf[4] {
        T_HELLO => decode_hello(body)?,
        T_CUE => Frame::Cue(Cue::from_binary(body)?),
        T_CUE_CLASS => {
            let bad = RelayError::Malformed("CUE_CLASS");
            let (&class, cue) = body.split_first().ok_or(bad.clone())?;
            Frame::ClassedCue(Cue::from_binary(cue)?, Priority::from_u8(class).ok_or(bad)?)
        }
        T_PING => Frame::Ping(u64_body(body, "PING")?),
        T_PONG => Frame::Pong(u64_body(body, "PONG")?),
        T_CAUGHT_UP => {
            let b: [u8; 4] = body
                .try_into()
                .map_err(|_| RelayError::Malformed("CAUGHT_UP"))?;
            Frame::CaughtUp(u32::from_be_bytes(b))
        }
        T_RETIRED => {
            let bad = RelayError::Malformed("RETIRED");
            let (&elen, name) = body.split_first().ok_or(bad.clone())?;
            if name.len() != elen as usize {
                return Err(bad);
            }
            let name = std::str::from_utf8(name).map_err(|_| bad)?;
            Frame::Retired(EventName::new(name)?)
        }
        t => return Err(RelayError::BadType(t)),
    };
    Ok(Some((frame, 4 + len)))
}

fn u64_body(body: &[u8], what: &'static str) -> Result<u64, RelayError> {
    let b: [u8; 8] = body.try_into().map_err(|_| RelayError::Malformed(what))?;
    Ok(u64::from_be_bytes(b))
}

fn decode_hello(body: &[u8]) -> Result<Frame, RelayError> {
    let bad = RelayError::Malformed("HELLO");
    let mut r = Reader(body);
    let version = r.u8().ok_or(bad.clone())?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(RelayError::BadVersion(version));
    }
    let id_len = r.u8().ok_or(bad.clone())? as usize;
    let id = r.take(id_len).ok_or(bad.clone())?;
    let edge_id = std::str::from_utf8(id)
        .map_err(|_| bad.clone())?
        .to_string();
    if edge_id.is_empty() {
        return Err(bad);
    }
    let n = r.u32().ok_or(bad.clone())? as usize;
    if n > MAX_HELLO_EVENTS {
        return Err(bad);
    }
    let mut since = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let elen = r.u8().ok_or(bad.clone())? as usize;
        let ev = r.take(elen).ok_or(bad.clone())?;
        let ev = std::str::from_utf8(ev).map_err(|_| bad.clone())?;
        let ev = EventName::new(ev).map_err(RelayError::BadCue)?;
        let seq = r.u64().ok_or(bad.clone())?;
        since.push((ev, seq));
    }
    if !r.0.is_empty() {
        return Err(bad);
    }
    Ok(Frame::Hello {
        version,
        edge_id,
        since,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")))
    }
}

/// The cues an edge holding `since` is missing: the newest cue of every event in `latest` whose
/// seq is above what the edge holds (or that the edge does not hold at all). Conflated by
/// construction: one cue per event, never a backlog. Sorted by event for determinism.
pub fn catch_up<'a>(
    latest: impl IntoIterator<Item = &'a Cue>,
    since: &HashMap<EventName, u64>,
) -> Vec<Cue> {
    let mut out: Vec<Cue> = latest
        .into_iter()
        .filter(|c| since.get(c.event()).is_none_or(|&s| c.seq() > s))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.event().cmp(b.event()));
    out
}

/// Events a [`Newest`] holds by default.
pub const NEWEST_EVENTS: usize = 65_536;

/// Newest cue per event, as an edge (or any relay hop) holds it. Accepts a cue only when it is
/// newer than what it holds, so duplicates from several origins or a replayed catch-up are
/// dropped here. Bounded: at `cap` events, a cue of a new event pushes out the event whose
/// newest cue came longest ago (counted in `evicted`), so the number of events ever published
/// never grows it; an event pushed out is simply taken as new if a cue of it comes again.
#[derive(Debug, Clone)]
pub struct Newest {
    by_event: HashMap<EventName, (Cue, u64)>,
    /// Arrival order (a counter) -> event: the oldest first.
    order: std::collections::BTreeMap<u64, EventName>,
    next: u64,
    cap: usize,
    /// Events pushed out at the bound.
    pub evicted: u64,
}

impl Default for Newest {
    fn default() -> Self {
        Self::with_cap(NEWEST_EVENTS)
    }
}

impl Newest {
    /// Empty state, holding at most [`NEWEST_EVENTS`] events.
    pub fn new() -> Self {
        Self::default()
    }
    /// Empty state, holding at most `cap` (at least 1) events.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            by_event: HashMap::new(),
            order: std::collections::BTreeMap::new(),
            next: 0,
            cap: cap.max(1),
            evicted: 0,
        }
    }
    /// Takes `cue` if it is newer than the held cue of its event; returns whether it did.
    pub fn offer(&mut self, cue: &Cue) -> bool {
        let tick = self.next;
        match self.by_event.get_mut(cue.event()) {
            Some((held, _)) if held.seq() >= cue.seq() => return false,
            Some((held, at)) => {
                self.order.remove(at);
                *held = cue.clone();
                *at = tick;
            }
            None => {
                if self.by_event.len() >= self.cap {
                    if let Some((_, old)) = self.order.pop_first() {
                        self.by_event.remove(&old);
                        self.evicted += 1;
                    }
                }
                self.by_event
                    .insert(cue.event().clone(), (cue.clone(), tick));
            }
        }
        self.order.insert(tick, cue.event().clone());
        self.next += 1;
        true
    }
    /// Forgets `event` (it was retired); returns whether it was held.
    pub fn remove(&mut self, event: &EventName) -> bool {
        match self.by_event.remove(event) {
            Some((_, at)) => {
                self.order.remove(&at);
                true
            }
            None => false,
        }
    }
    /// The HELLO body: seq held per event.
    pub fn since(&self) -> Vec<(EventName, u64)> {
        let mut v: Vec<_> = self
            .by_event
            .values()
            .map(|(c, _)| (c.event().clone(), c.seq()))
            .collect();
        v.sort();
        v
    }
    /// The held cue of `event`.
    pub fn get(&self, event: &EventName) -> Option<&Cue> {
        self.by_event.get(event).map(|(c, _)| c)
    }
    /// Every held cue.
    pub fn cues(&self) -> impl Iterator<Item = &Cue> {
        self.by_event.values().map(|(c, _)| c)
    }
    /// Number of events held.
    pub fn len(&self) -> usize {
        self.by_event.len()
    }
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.by_event.is_empty()
    }
}

/// What a link should do now, from [`Liveness::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessAction {
    /// Nothing due.
    Idle,
    /// Nothing was sent for a heartbeat interval: send a PING.
    SendPing,
    /// Nothing was heard for `dead_after`: drop the link.
    Dead,
}

/// Heartbeats for one link, driven by the caller's clock.
#[derive(Debug, Clone)]
pub struct Liveness {
    heartbeat: Duration,
    dead_after: Duration,
    last_sent: Instant,
    last_heard: Instant,
}

impl Liveness {
    /// Starts both timers at `now`.
    pub fn new(now: Instant, heartbeat: Duration, dead_after: Duration) -> Self {
        Self {
            heartbeat,
            dead_after,
            last_sent: now,
            last_heard: now,
        }
    }
    /// Any frame arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }
    /// Any frame was sent.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }
    /// What is due at `now`.
    pub fn poll(&self, now: Instant) -> LivenessAction {
        if now.saturating_duration_since(self.last_heard) >= self.dead_after {
            LivenessAction::Dead
        } else if now.saturating_duration_since(self.last_sent) >= self.heartbeat {
            LivenessAction::SendPing
        } else {
            LivenessAction::Idle
        }
    }
    /// When [`Liveness::poll`] next has something to say.
    pub fn next_deadline(&self) -> Instant {
        (self.last_sent + self.heartbeat).min(self.last_heard + self.dead_after)
    }
}

/// Jittered exponential backoff for re-dialling ("full jitter": a uniform delay in
/// `[base/2, min(max, base * 2^attempt)]`), so a fleet of edges that lost the origin together
/// does not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `base`, capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }
    /// The next delay; `unit` is a uniform random number in `[0, 1)` from the caller's RNG.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let floor = (self.base / 2).min(ceiling);
        floor + (ceiling - floor).mul_f64(unit.clamp(0.0, 1.0))
    }
    /// A link came up and stayed: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cue(e: &str, seq: u64) -> Cue {
        Cue::new(e, "k", seq, 1000 + seq).unwrap()
    }

    #[test]
    fn a_class_byte_out_of_range_is_malformed() {
        let mut b = Vec::new();
        encode(
            &Frame::ClassedCue(cue("fight", 9), Priority::Background),
            &mut b,
        );
        b[5] = 3;
        assert_eq!(decode(&b), Err(RelayError::Malformed("CUE_CLASS")));
        assert_eq!(Priority::parse("critical"), Some(Priority::Critical));
        assert_eq!(Priority::parse("urgent"), None);
    }

    fn round_trip(f: Frame) {
        let mut b = Vec::new();
        encode(&f, &mut b);
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut]).unwrap(), None, "prefix {cut} of {f:?}");
        }
        assert_eq!(decode(&b).unwrap(), Some((f, b.len())));
    }

    #[test]
    fn a_hello_of_ten_thousand_longest_tenant_events_fits_in_a_frame() {
        let since: Vec<(EventName, u64)> = (0..MAX_HELLO_EVENTS)
            .map(|i| {
                let t = format!("{i:0>32}");
                let e = format!("{i:e>64}");
                (EventName::qualify(Some(&t), &e).unwrap(), i as u64)
            })
            .collect();
        let mut b = Vec::new();
        encode(
            &Frame::Hello {
                version: VERSION,
                edge_id: "edge".into(),
                since: since.clone(),
            },
            &mut b,
        );
        assert!(b.len() - 4 <= MAX_FRAME, "{}", b.len());
        let Some((Frame::Hello { since: got, .. }, _)) = decode(&b).unwrap() else {
            panic!("not a hello");
        };
        // As many as fit, in order: the rest are caught up as unknown.
        assert!(
            got.len() > 9_000 && got.len() < MAX_HELLO_EVENTS,
            "{}",
            got.len()
        );
        assert_eq!(got[..], since[..got.len()]);
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Hello {
            version: VERSION,
            edge_id: "edge-1".into(),
            since: vec![
                (EventName::new("a").unwrap(), 3),
                (EventName::new("b").unwrap(), 0),
            ],
        });
        round_trip(Frame::Hello {
            version: MIN_VERSION,
            edge_id: "e".into(),
            since: vec![],
        });
        round_trip(Frame::Retired(EventName::new("fight").unwrap()));
        round_trip(Frame::Cue(cue("fight", 9)));
        round_trip(Frame::ClassedCue(cue("fight", 9), Priority::Critical));
        round_trip(Frame::ClassedCue(cue("fight", 9), Priority::Background));
        round_trip(Frame::Ping(u64::MAX));
        round_trip(Frame::Pong(1));
        round_trip(Frame::CaughtUp(12));
    }

    #[test]
    fn bad_frames_refused() {
        assert_eq!(decode(&[0, 0, 0, 0]).unwrap_err(), RelayError::BadLength(0));
        assert_eq!(
            decode(&[0, 0x20, 0, 0]).unwrap_err(),
            RelayError::BadLength(0x20_0000)
        );
        assert_eq!(
            decode(&[0, 0, 0, 1, 99]).unwrap_err(),
            RelayError::BadType(99)
        );
        assert_eq!(
            decode(&[0, 0, 0, 2, T_PING, 1]).unwrap_err(),
            RelayError::Malformed("PING")
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, T_HELLO, 4, 0]).unwrap_err(),
            RelayError::BadVersion(4)
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, T_HELLO, 0, 0]).unwrap_err(),
            RelayError::BadVersion(0)
        );
        assert_eq!(
            decode(&[0, 0, 0, 3, T_RETIRED, 5, b'a']).unwrap_err(),
            RelayError::Malformed("RETIRED")
        );
        // HELLO with trailing garbage.
        let mut b = Vec::new();
        encode(
            &Frame::Hello {
                version: VERSION,
                edge_id: "e".into(),
                since: vec![],
            },
            &mut b,
        );
        b.push(0);
        b[3] += 1;
        assert_eq!(decode(&b).unwrap_err(), RelayError::Malformed("HELLO"));
    }

    #[test]
    fn catch_up_sends_only_newer_and_absent() {
        let latest = [cue("a", 5), cue("b", 2), cue("c", 1)];
        let since: HashMap<_, _> = [
            (EventName::new("a").unwrap(), 5),
            (EventName::new("b").unwrap(), 1),
        ]
        .into_iter()
        .collect();
        let got = catch_up(&latest, &since);
        assert_eq!(got, vec![cue("b", 2), cue("c", 1)]);
    }

    #[test]
    fn newest_drops_duplicates_and_old() {
        let mut n = Newest::new();
        assert!(n.offer(&cue("a", 2)));
        assert!(!n.offer(&cue("a", 2)));
        assert!(!n.offer(&cue("a", 1)));
        assert!(n.offer(&cue("a", 3)));
        assert_eq!(n.since(), vec![(EventName::new("a").unwrap(), 3)]);
    }

    #[test]
    fn newest_is_bounded_and_pushes_out_the_longest_quiet_event() {
        let mut n = Newest::with_cap(3);
        for (e, s) in [("a", 1), ("b", 1), ("c", 1), ("a", 2)] {
            assert!(n.offer(&cue(e, s)));
        }
        // b is the longest quiet: a new event pushes it out.
        assert!(n.offer(&cue("d", 1)));
        assert_eq!(n.len(), 3);
        assert_eq!(n.evicted, 1);
        assert!(n.get(&EventName::new("b").unwrap()).is_none());
        // Then c; a pushed-out event is new again when it comes back.
        assert!(n.offer(&cue("b", 1)));
        assert!(n.get(&EventName::new("c").unwrap()).is_none());
        assert!(n.remove(&EventName::new("a").unwrap()));
        assert!(!n.remove(&EventName::new("a").unwrap()));
        assert_eq!(n.len(), 2);
        for i in 0..10_000 {
            n.offer(&cue(&format!("e{i}"), 1));
        }
        assert_eq!(n.len(), 3);
        assert_eq!(n.order.len(), 3, "the order index stays in step");
    }

    #[test]
    fn liveness_pings_then_dies() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(15));
        assert_eq!(l.poll(t0 + Duration::from_secs(4)), LivenessAction::Idle);
        assert_eq!(
            l.poll(t0 + Duration::from_secs(5)),
            LivenessAction::SendPing
        );
        l.sent(t0 + Duration::from_secs(5));
        l.heard(t0 + Duration::from_secs(6));
        assert_eq!(l.next_deadline(), t0 + Duration::from_secs(10));
        assert_eq!(l.poll(t0 + Duration::from_secs(21)), LivenessAction::Dead);
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        for _ in 0..30 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(2));
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
        }

        #[test]
        fn newest_ends_on_max(seqs in proptest::collection::vec(1u64..50, 1..40)) {
            let mut n = Newest::new();
            for s in &seqs {
                n.offer(&cue("e", *s));
            }
            prop_assert_eq!(n.get(&EventName::new("e").unwrap()).unwrap().seq(), *seqs.iter().max().unwrap());
        }
    }
}
