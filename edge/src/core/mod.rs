//! The shard's device logic, sans-IO and transport-neutral: admission (WebSocket upgrade or
//! QUIC hello, one shared auth/subscribe path), catch-up, fanout with conflation, pings, close
//! handshake, drain. It owns every device record of one shard and never touches a socket or a
//! clock: the driver passes `now`, input bytes and readiness in, and the [`Io`] it passes does
//! the sends. Tests drive it with an in-memory `Io` and a fake clock.
//!
//! A device record says its transport (its [`Encoding`]); the [`Link`] handed to the [`Io`] is
//! the driver's handle for it: a socket fd for WebSocket (plain or TLS, which the driver hides),
//! a connection index for QUIC, where a send is a write into the device's one stream.
//!
//! Delivery rule (conflation): each device remembers, per subscribed event, the newest seq it has
//! been given. A new cue is written at once to every device whose socket is not blocked. A
//! blocked device is skipped; when its socket drains it is given the *current* cue of each event
//! it is behind on. So a slow device never accumulates a backlog and always ends on the newest
//! cue; seq lets it drop duplicates.

mod admit;
pub mod conn;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cue_origin::cue::EventName;
use cue_origin::token::TokenKeys;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::encoded::{EncodedCue, Transport};
use crate::quic::hello::HelloLimits;
use crate::stats::{CloseReason, ShardStats};
use crate::ws::frame::{decode_frame, encode_close, encode_frame, Decoded, Message, Opcode, Role};
use crate::ws::handshake::parse_request;
use crate::ws::query::QueryLimits;
use conn::{Conn, Slab, State, BLOCKED, PING_OUT};

pub use crate::encoded::Encoding;
pub use conn::ConnKey;

/// The driver's handle for one device connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link {
    /// Which transport.
    pub transport: Transport,
    /// Socket fd (WebSocket) or QUIC connection index.
    pub id: u32,
}

impl Link {
    /// A WebSocket connection on socket `fd`.
    pub fn ws(fd: i32) -> Self {
        Self {
            transport: Transport::Ws,
            id: fd as u32,
        }
    }
    /// A QUIC connection with driver index `id`.
    pub fn quic(id: u32) -> Self {
        Self {
            transport: Transport::Quic,
            id,
        }
    }
    /// The socket fd of a WebSocket link.
    pub fn fd(self) -> i32 {
        self.id as i32
    }
}

/// What a send did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Took this many bytes (may be fewer than offered).
    Took(usize),
    /// Took nothing: the socket buffer is full.
    WouldBlock,
    /// The connection is gone (reset, broken pipe).
    Closed,
}

/// The I/O the core asks of its driver.
pub trait Io {
    /// Non-blocking send (QUIC: a write into the device's stream, which may take part of it or
    /// nothing when flow control or the send buffer is full).
    fn send(&mut self, link: Link, bytes: &[u8]) -> Sent;
    /// Ask (or stop asking) to be told when `link` is writable.
    fn want_write(&mut self, link: Link, key: ConnKey, want: bool);
    /// Close the connection (the core has forgotten it). WebSocket: close the socket (any close
    /// frame was already sent). QUIC: finish the stream, let queued bytes (a refusal line) be
    /// delivered, then close the connection with application error `code` and `reason`.
    fn close(&mut self, link: Link, code: u16, reason: &str);
}

/// What one cue's fanout wrote, per transport (the driver splits its CPU time by these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Cues written to WebSocket devices.
    pub ws: u64,
    /// Cues written to QUIC devices.
    pub quic: u64,
}

/// The core's clock reading: monotonic for timers, Unix time for tokens and lag.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Device-facing limits and timers of a shard.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Token keys; `None` turns auth off.
    pub auth: Option<TokenKeys>,
    /// Largest upgrade request head.
    pub max_request: usize,
    /// Query limits (length, events per device).
    pub query: QueryLimits,
    /// QUIC hello limits (line length, events per device).
    pub hello: HelloLimits,
    /// Largest frame a device may send.
    pub max_frame: usize,
    /// Largest message a device may send.
    pub max_message: usize,
    /// Unsent bytes held for one device before it is closed as a slow consumer (cue frames are
    /// never queued, only the rest of a partly written frame and control replies).
    pub max_output: usize,
    /// Time allowed for the upgrade request.
    pub handshake_timeout: Duration,
    /// Idle time before a ping; a device that answers nothing for another interval is closed.
    pub ping_interval: Duration,
    /// Time allowed for the device's close frame after ours.
    pub close_timeout: Duration,
    /// Most open sessions on this shard; more get 503.
    pub max_connections: usize,
    /// Most distinct events on this shard; subscribing to more gets 503.
    pub max_events: usize,
    /// Retry-After range (seconds) for 503 when full or draining, and for the drain close hint.
    pub retry_after_s: (u32, u32),
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            auth: None,
            max_request: 8192,
            query: QueryLimits::default(),
            hello: HelloLimits::default(),
            max_frame: 4096,
            max_message: 16384,
            max_output: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            max_connections: 1_000_000,
            max_events: 4096,
            retry_after_s: (5, 60),
        }
    }
}

struct Slot {
    name: EventName,
    current: Option<Arc<EncodedCue>>,
    subscribers: Vec<u32>,
}

struct Drain {
    start: Instant,
    window: Duration,
    total: usize,
    closed: usize,
}

/// One shard's devices and newest cues.
pub struct ShardCore {
    cfg: CoreConfig,
    stats: Arc<ShardStats>,
    rng: SmallRng,
    epoch: Instant,
    conns: Slab,
    slots: Vec<Slot>,
    by_name: HashMap<EventName, u16>,
    open: usize,
    sweep: u32,
    drain: Option<Drain>,
    drain_cursor: u32,
    to_close: Vec<Closing>,
    out: Vec<u8>,
}

/// A connection to close at the end of the current call, with what a QUIC device is told.
#[derive(Debug, Clone, Copy)]
struct Closing {
    idx: u32,
    reason: CloseReason,
    /// QUIC application error code (WebSocket close codes, HTTP statuses for refusals).
    code: u16,
    /// Retry hint in seconds (drain), 0 for none.
    hint: u32,
}

impl Closing {
    fn new(idx: u32, reason: CloseReason) -> Self {
        let code = match reason {
            CloseReason::Client | CloseReason::PeerGone => 1000,
            CloseReason::ProtocolError => 1002,
            CloseReason::HandshakeTimeout | CloseReason::SlowConsumer => 1008,
            CloseReason::Drain => 1001,
            CloseReason::Refused => 400,
            _ => 1011,
        };
        Self {
            idx,
            reason,
            code,
            hint: 0,
        }
    }
}

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore")
            .field("conns", &self.conns.len())
            .field("open", &self.open)
            .finish()
    }
}

impl ShardCore {
    /// A shard with no devices. `epoch` anchors its seconds clock; `rng` jitters retry hints.
    pub fn new(cfg: CoreConfig, stats: Arc<ShardStats>, rng: SmallRng, epoch: Instant) -> Self {
        Self {
            cfg,
            stats,
            rng,
            epoch,
            conns: Slab::default(),
            slots: Vec::new(),
            by_name: HashMap::new(),
            open: 0,
            sweep: 0,
            drain: None,
            drain_cursor: 0,
            to_close: Vec::new(),
            out: Vec::with_capacity(512),
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    /// Connections held (handshaking, open or closing).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Open sessions.
    pub fn open_sessions(&self) -> usize {
        self.open
    }

    /// True once a drain has started.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The newest cue this shard holds for `event`.
    pub fn current(&self, event: &str) -> Option<&Arc<EncodedCue>> {
        let ev = EventName::new(event).ok()?;
        self.slots[*self.by_name.get(&ev)? as usize]
            .current
            .as_ref()
    }

    /// A new connection: an accepted TCP socket, or a QUIC connection whose device opened its
    /// stream. Returns its key for the driver's readiness registration.
    pub fn accept(&mut self, link: Link, now: Now) -> ConnKey {
        self.stats.accepted.inc();
        let s = self.secs(now.mono);
        self.conns.insert(link.id, link.transport, s)
    }

    /// A new cue from the relay link: keep it as current and write it to every device that
    /// follows its event and is not blocked.
    /// The driver times the call and records lag and fanout time (the core reads no clock).
    pub fn on_cue(&mut self, cue: Arc<EncodedCue>, io: &mut impl Io) -> Fanout {
        self.stats.cues_in.inc();
        let Some(slot_idx) = self.slot_for(cue.cue.event()) else {
            tracing::warn!(event = %cue.cue.event(), "shard at max_events; cue for a new event dropped");
            return Fanout::default();
        };
        let slot = &mut self.slots[slot_idx as usize];
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.cue.seq() >= cue.cue.seq())
        {
            return Fanout::default();
        }
        slot.current = Some(cue.clone());
        let seq = cue.cue.seq();
        let mut fanout = Fanout::default();
        for i in 0..slot.subscribers.len() {
            let idx = slot.subscribers[i];
            let Some(c) = self.conns.at(idx) else {
                continue;
            };
            if c.state != State::Open || c.flags & BLOCKED != 0 {
                continue;
            }
            let Some(sub) = c.subs.iter_mut().find(|s| s.slot == slot_idx) else {
                continue;
            };
            if sub.seq >= seq {
                continue;
            }
            match write_cue(c, idx, cue.frame(c.format), io, &self.stats) {
                Written::Whole | Written::Part => {
                    let sub = c
                        .subs
                        .iter_mut()
                        .find(|s| s.slot == slot_idx)
                        .expect("found above");
                    sub.seq = seq;
                    match c.transport() {
                        Transport::Ws => fanout.ws += 1,
                        Transport::Quic => fanout.quic += 1,
                    }
                }
                Written::Blocked => {}
                Written::Gone => self.to_close.push(Closing::new(idx, CloseReason::IoError)),
            }
        }
        self.stats.deliveries.add(fanout.ws + fanout.quic);
        self.stats.quic_deliveries.add(fanout.quic);
        self.close_pending(io);
        fanout
    }

    /// The socket of `key` is readable and `data` was read from it.
    pub fn on_input(&mut self, key: ConnKey, data: &[u8], now: Now, io: &mut impl Io) {
        let secs = self.secs(now.mono);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        c.last_seen = secs;
        c.flags &= !PING_OUT;
        let idx = key.idx();
        // Work on partial input joined with the new bytes, or on the new bytes alone.
        let mut buf = match c.extra.as_mut() {
            Some(e) if !e.input.is_empty() => {
                let mut b = std::mem::take(&mut e.input);
                b.extend_from_slice(data);
                b
            }
            _ => data.to_vec(),
        };
        let used = self.process(idx, &mut buf, now, io);
        if let Some(c) = self.conns.at(idx) {
            if c.gen == key.gen() && used < buf.len() {
                let rest = &buf[used..];
                c.extra().input.extend_from_slice(rest);
            } else if c.gen == key.gen() {
                c.shrink();
            }
        }
        self.close_pending(io);
    }

    /// The device closed its end (read returned 0).
    pub fn on_eof(&mut self, key: ConnKey, io: &mut impl Io) {
        if self.conns.get_mut(key).is_some() {
            let reason = match self.conns.at(key.idx()).map(|c| c.state) {
                Some(State::Closing) => CloseReason::Client,
                _ => CloseReason::PeerGone,
            };
            self.to_close.push(Closing::new(key.idx(), reason));
            self.close_pending(io);
        }
    }

    /// The transport ended the connection (QUIC: the device closed it, it timed out, or it broke
    /// the protocol). `reason` is counted; nothing more is sent.
    pub fn on_gone(&mut self, key: ConnKey, reason: CloseReason, io: &mut impl Io) {
        if self.conns.get_mut(key).is_some() {
            self.to_close.push(Closing::new(key.idx(), reason));
            self.close_pending(io);
        }
    }

    /// A read or socket error on `key`.
    pub fn on_error(&mut self, key: ConnKey, io: &mut impl Io) {
        if self.conns.get_mut(key).is_some() {
            self.to_close
                .push(Closing::new(key.idx(), CloseReason::IoError));
            self.close_pending(io);
        }
    }

    /// The socket of `key` is writable again: finish unsent output, then give the device the
    /// current cue of every event it is behind on.
    pub fn on_writable(&mut self, key: ConnKey, io: &mut impl Io) {
        if self.conns.get_mut(key).is_none() {
            return;
        }
        self.flush(key.idx(), io);
        self.close_pending(io);
    }

    /// Timers: handshake and close timeouts, pings for idle devices, drain progress. Visits a
    /// share of the slab per call so a full sweep takes about `ping_interval` at `tick` spacing.
    pub fn tick(&mut self, now: Now, tick: Duration, io: &mut impl Io) {
        let secs = self.secs(now.mono);
        let cap = self.conns.capacity() as u32;
        if cap > 0 {
            let steps =
                (tick.as_secs_f64() / self.cfg.ping_interval.as_secs_f64().max(0.001)) * cap as f64;
            let steps = (steps.ceil() as u32).clamp(1, cap);
            for _ in 0..steps {
                self.sweep = (self.sweep + 1) % cap;
                self.check_timers(self.sweep, secs, io);
            }
        }
        self.drain_step(now, io);
        self.close_pending(io);
    }

    /// Starts draining: new upgrades get 503, open sessions are closed with 1001 and a jittered
    /// `retry-after` hint, spread evenly over `window`.
    pub fn start_drain(&mut self, window: Duration, now: Now) {
        if self.drain.is_none() {
            self.drain = Some(Drain {
                start: now.mono,
                window,
                total: self.open,
                closed: 0,
            });
        }
    }

    /// True when draining and no session is left.
    pub fn drained(&self) -> bool {
        self.drain.is_some() && self.conns.is_empty()
    }

    fn check_timers(&mut self, idx: u32, secs: u32, io: &mut impl Io) {
        let Some(c) = self.conns.at(idx) else { return };
        let age = secs.saturating_sub(c.last_seen) as u64;
        match c.state {
            State::Handshaking if age >= self.cfg.handshake_timeout.as_secs().max(1) => {
                self.to_close
                    .push(Closing::new(idx, CloseReason::HandshakeTimeout));
            }
            State::Closing if age >= self.cfg.close_timeout.as_secs().max(1) => {
                self.to_close
                    .push(Closing::new(idx, CloseReason::CloseTimeout));
            }
            // QUIC liveness is the transport's (keep-alive and idle timeout, see on_gone).
            State::Open
                if c.transport() == Transport::Ws
                    && age >= self.cfg.ping_interval.as_secs().max(1) =>
            {
                if c.flags & PING_OUT != 0 {
                    self.to_close
                        .push(Closing::new(idx, CloseReason::PingTimeout));
                } else {
                    c.flags |= PING_OUT;
                    c.last_seen = secs;
                    self.out.clear();
                    encode_frame(Opcode::Ping, b"", None, &mut self.out);
                    self.stats.pings.inc();
                    let out = std::mem::take(&mut self.out);
                    self.write_control(idx, &out, io);
                    self.out = out;
                }
            }
            _ => {}
        }
    }

    fn drain_step(&mut self, now: Now, io: &mut impl Io) {
        let Some(d) = &self.drain else { return };
        let elapsed = now.mono.saturating_duration_since(d.start);
        let frac = if d.window.is_zero() {
            1.0
        } else {
            (elapsed.as_secs_f64() / d.window.as_secs_f64()).min(1.0)
        };
        let target = ((d.total as f64) * frac).ceil() as usize;
        let mut quota = target.saturating_sub(d.closed);
        let cap = self.conns.capacity() as u32;
        let secs = self.secs(now.mono);
        let mut visited = 0;
        while quota > 0 && visited < cap {
            let idx = self.drain_cursor % cap.max(1);
            self.drain_cursor = self.drain_cursor.wrapping_add(1);
            visited += 1;
            let Some(c) = self.conns.at(idx) else {
                continue;
            };
            if c.state != State::Open {
                continue;
            }
            let (lo, hi) = self.cfg.retry_after_s;
            let hint = self.rng.gen_range(lo..=hi.max(lo));
            quota -= 1;
            if let Some(d) = self.drain.as_mut() {
                d.closed += 1;
            }
            if c.transport() == Transport::Quic {
                // QUIC: CONNECTION_CLOSE with 1001 and the hint as its reason.
                self.to_close.push(Closing {
                    hint,
                    ..Closing::new(idx, CloseReason::Drain)
                });
                continue;
            }
            self.out.clear();
            encode_close(1001, &format!("retry-after={hint}"), None, &mut self.out);
            c.state = State::Closing;
            c.last_seen = secs;
            self.open -= 1;
            self.stats.connections.add(-1);
            self.stats.close(CloseReason::Drain);
            self.unsubscribe(idx);
            let out = std::mem::take(&mut self.out);
            self.write_control(idx, &out, io);
            self.out = out;
        }
    }

    /// Consumes complete requests/frames from `buf`; returns bytes used.
    fn process(&mut self, idx: u32, buf: &mut [u8], now: Now, io: &mut impl Io) -> usize {
        let mut used = 0;
        loop {
            let Some(c) = self.conns.at(idx) else {
                return buf.len();
            };
            if c.transport() == Transport::Quic {
                return self.process_quic(idx, &buf[used..], now, io) + used;
            }
            match c.state {
                State::Handshaking => match parse_request(&buf[used..], self.cfg.max_request) {
                    Ok(None) => return used,
                    Ok(Some((req, n))) => {
                        used += n;
                        self.upgrade(idx, req, now, io);
                    }
                    Err(e) => {
                        self.refuse(idx, admit::Refusal::new(e.status, e.reason), io);
                        return buf.len();
                    }
                },
                State::Open | State::Closing => {
                    let decoded = decode_frame(&mut buf[used..], Role::Server, self.cfg.max_frame);
                    match decoded {
                        Ok(Decoded::Incomplete) => return used,
                        Ok(Decoded::Frame {
                            fin,
                            opcode,
                            payload,
                            consumed,
                        }) => {
                            let start = used;
                            used += consumed;
                            let payload = start + payload.start..start + payload.end;
                            if !self.on_frame(idx, fin, opcode, &buf[payload], io) {
                                return buf.len();
                            }
                        }
                        Err(e) => {
                            self.protocol_close(idx, e.code, e.reason, io);
                            return buf.len();
                        }
                    }
                }
            }
        }
    }

    /// Handles one device frame; false when the connection is finished.
    fn on_frame(
        &mut self,
        idx: u32,
        fin: bool,
        op: Opcode,
        payload: &[u8],
        io: &mut impl Io,
    ) -> bool {
        let Some(c) = self.conns.at(idx) else {
            return false;
        };
        let closing = c.state == State::Closing;
        match c.msg.on_frame(fin, op, payload, self.cfg.max_message) {
            Err(e) => {
                self.protocol_close(idx, e.code, e.reason, io);
                false
            }
            Ok(Some(Message::Ping(p))) if !closing => {
                self.out.clear();
                encode_frame(Opcode::Pong, p, None, &mut self.out);
                let out = std::mem::take(&mut self.out);
                self.write_control(idx, &out, io);
                self.out = out;
                true
            }
            Ok(Some(Message::Close(code))) => {
                if !closing {
                    // Echo the device's close, then close the TCP connection (the server closes
                    // first, RFC 6455 7.1.1).
                    self.out.clear();
                    encode_close(code.map_or(1000, |(c, _)| c), "", None, &mut self.out);
                    let out = std::mem::take(&mut self.out);
                    self.write_control(idx, &out, io);
                    self.out = out;
                }
                self.to_close.push(Closing::new(idx, CloseReason::Client));
                false
            }
            // Pongs refresh liveness (done on input); device data messages carry nothing the
            // edge needs and are dropped after validation.
            Ok(_) => true,
        }
    }

    fn protocol_close(&mut self, idx: u32, code: u16, reason: &str, io: &mut impl Io) {
        self.out.clear();
        encode_close(code, reason, None, &mut self.out);
        let out = std::mem::take(&mut self.out);
        self.write_control(idx, &out, io);
        self.out = out;
        self.to_close
            .push(Closing::new(idx, CloseReason::ProtocolError));
    }

    /// Writes a control frame or handshake bytes; queues what the socket does not take.
    fn write_control(&mut self, idx: u32, bytes: &[u8], io: &mut impl Io) {
        let Some(c) = self.conns.at(idx) else { return };
        if c.has_output() {
            let e = c.extra();
            e.output.extend_from_slice(bytes);
            if e.output.len() > self.cfg.max_output {
                self.to_close
                    .push(Closing::new(idx, CloseReason::SlowConsumer));
            }
            return;
        }
        match io.send(c.handle(), bytes) {
            Sent::Took(n) if n == bytes.len() => {}
            Sent::Took(n) => {
                c.extra().output.extend_from_slice(&bytes[n..]);
                block(c, idx, io, &self.stats);
            }
            Sent::WouldBlock => {
                c.extra().output.extend_from_slice(bytes);
                block(c, idx, io, &self.stats);
            }
            Sent::Closed => self.to_close.push(Closing::new(idx, CloseReason::IoError)),
        }
    }

    /// Sends unsent output, then the current cue of each event the device is behind on.
    fn flush(&mut self, idx: u32, io: &mut impl Io) {
        let Some(c) = self.conns.at(idx) else { return };
        let link = c.handle();
        if let Some(e) = c.extra.as_mut().filter(|e| !e.output.is_empty()) {
            match io.send(link, &e.output) {
                Sent::Took(n) => {
                    e.output.drain(..n);
                }
                Sent::WouldBlock => {}
                Sent::Closed => {
                    self.to_close.push(Closing::new(idx, CloseReason::IoError));
                    return;
                }
            }
            if !e.output.is_empty() {
                block(c, idx, io, &self.stats);
                return;
            }
            c.shrink();
        }
        if c.flags & BLOCKED != 0 {
            c.flags &= !BLOCKED;
            io.want_write(c.handle(), ConnKey::new(idx, c.gen), false);
        }
        if c.state != State::Open {
            return;
        }
        let mut delivered = 0;
        for i in 0..c.subs.len() {
            let sub = c.subs[i];
            let Some(cur) = &self.slots[sub.slot as usize].current else {
                continue;
            };
            if cur.cue.seq() <= sub.seq {
                continue;
            }
            // Seqs are consecutive per event: a device given seq s and now cur skipped the rest.
            let skipped = if sub.seq > 0 {
                cur.cue.seq() - sub.seq - 1
            } else {
                0
            };
            match write_cue(c, idx, cur.frame(c.format), io, &self.stats) {
                Written::Whole => {
                    c.subs[i].seq = cur.cue.seq();
                    delivered += 1;
                    self.stats.conflated.add(skipped);
                }
                Written::Part => {
                    // The rest of this frame must go out before anything else.
                    c.subs[i].seq = cur.cue.seq();
                    delivered += 1;
                    self.stats.conflated.add(skipped);
                    break;
                }
                Written::Blocked => break,
                Written::Gone => {
                    self.to_close.push(Closing::new(idx, CloseReason::IoError));
                    break;
                }
            }
        }
        self.stats.deliveries.add(delivered);
        if c.transport() == Transport::Quic {
            self.stats.quic_deliveries.add(delivered);
        }
    }

    fn slot_for(&mut self, name: &EventName) -> Option<u16> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        if self.slots.len() >= self.cfg.max_events.min(u16::MAX as usize) {
            return None;
        }
        let i = self.slots.len() as u16;
        self.slots.push(Slot {
            name: name.clone(),
            current: None,
            subscribers: Vec::new(),
        });
        self.by_name.insert(name.clone(), i);
        Some(i)
    }

    /// Removes `idx` from every subscriber list it is on (O(1) each: swap-remove and fix the
    /// moved device's position).
    fn unsubscribe(&mut self, idx: u32) {
        let Some(c) = self.conns.at(idx) else { return };
        let subs = std::mem::take(&mut c.subs);
        for s in subs.iter() {
            let list = &mut self.slots[s.slot as usize].subscribers;
            let pos = s.pos as usize;
            debug_assert_eq!(list.get(pos), Some(&idx));
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                if let Some(m) = self.conns.at(moved) {
                    if let Some(ms) = m.subs.iter_mut().find(|x| x.slot == s.slot) {
                        ms.pos = pos as u32;
                    }
                }
            }
        }
    }

    fn close_pending(&mut self, io: &mut impl Io) {
        while let Some(Closing {
            idx,
            reason,
            code,
            hint,
        }) = self.to_close.pop()
        {
            let Some(c) = self.conns.at(idx) else {
                continue;
            };
            match c.state {
                State::Open => {
                    self.open -= 1;
                    self.stats.connections.add(-1);
                    if c.transport() == Transport::Quic {
                        self.stats.quic_sessions.add(-1);
                    }
                    self.stats.close(reason);
                }
                // A drained session was counted when its close frame went out.
                State::Closing => {}
                State::Handshaking => self.stats.close(reason),
            }
            self.unsubscribe(idx);
            if let Some(c) = self.conns.remove(idx) {
                // Only QUIC sends a reason here (WebSocket sent its close frame already).
                let why = match (c.transport(), reason, hint) {
                    (Transport::Ws, ..) => String::new(),
                    (_, CloseReason::Drain, h) if h > 0 => format!("retry-after={h}"),
                    (_, r, _) => crate::stats::CLOSE_REASONS[r as usize].to_string(),
                };
                io.close(c.handle(), code, &why);
            }
        }
    }

    /// The driver's handle of `key`, while it is the same connection.
    pub fn link_of(&mut self, key: ConnKey) -> Option<Link> {
        self.conns.get_mut(key).map(|c| c.handle())
    }

    /// Closes every connection (shutdown after drain).
    pub fn close_all(&mut self, io: &mut impl Io) {
        for idx in 0..self.conns.capacity() as u32 {
            if self.conns.at(idx).is_some() {
                self.to_close.push(Closing::new(idx, CloseReason::Drain));
            }
        }
        self.close_pending(io);
    }

    /// The slot names and current seqs (for tests and the admin view).
    pub fn snapshot(&self) -> Vec<(String, Option<u64>, usize)> {
        self.slots
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.current.as_ref().map(|c| c.cue.seq()),
                    s.subscribers.len(),
                )
            })
            .collect()
    }
}

impl Conn {
    /// The driver's handle for this connection.
    pub fn handle(&self) -> Link {
        Link {
            transport: self.transport(),
            id: self.link,
        }
    }
}

enum Written {
    Whole,
    Part,
    Blocked,
    Gone,
}

/// Writes one cue frame to an unblocked device; the unsent rest of a partial write is kept so
/// the frame stays whole on the wire.
fn write_cue(
    c: &mut Conn,
    idx: u32,
    frame: &[u8],
    io: &mut impl Io,
    stats: &ShardStats,
) -> Written {
    match io.send(c.handle(), frame) {
        Sent::Took(n) if n == frame.len() => Written::Whole,
        Sent::Took(n) => {
            c.extra().output.extend_from_slice(&frame[n..]);
            block(c, idx, io, stats);
            Written::Part
        }
        Sent::WouldBlock => {
            block(c, idx, io, stats);
            Written::Blocked
        }
        Sent::Closed => Written::Gone,
    }
}

fn block(c: &mut Conn, idx: u32, io: &mut impl Io, stats: &ShardStats) {
    if c.flags & BLOCKED == 0 {
        stats.write_blocked.inc();
        c.flags |= BLOCKED;
        io.want_write(c.handle(), ConnKey::new(idx, c.gen), true);
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
pub mod testkit;
#[cfg(test)]
mod tests;
