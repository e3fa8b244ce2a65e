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
mod deliver;
mod input;
pub mod tenants;
mod timers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cue_common::cue::EventName;
use cue_common::keys::Verifier;
use rand::rngs::SmallRng;

use crate::encoded::{EncodedCue, Transport};
use crate::quic::hello::HelloLimits;
use crate::stats::{CloseReason, ShardStats};
use crate::ws::query::QueryLimits;
use conn::{Conn, Slab, State};

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
    /// Sends `cue` to every link of `batch` (each in its own encoding) and fills in each
    /// entry's result, exactly as [`Io::send`] would have answered for it. The fanout hands
    /// its devices over this way, a slice at a time, so a driver can submit them together (the
    /// shard's io_uring path, [`crate::uring`]). A link appears at most once in a batch.
    fn send_cue_batch(&mut self, cue: &EncodedCue, batch: &mut [BatchSend]) {
        for b in batch {
            b.result = self.send(b.link, cue.frame(b.encoding));
        }
    }
}

/// One device of a fanout batch ([`Io::send_cue_batch`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchSend {
    /// Where to.
    pub link: Link,
    /// Which of the cue's frames.
    pub encoding: Encoding,
    /// What the send did (filled in by the driver).
    pub result: Sent,
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
    pub auth: Option<Verifier>,
    /// The host's admission-ticket key: with a public key set, a verified device is handed a
    /// ticket that spares its next admission, at any shard or process holding the key, the
    /// signature check. `None`: no tickets (the per-shard cache still serves exact repeats).
    pub tickets: Option<cue_common::keys::TicketKey>,
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
    /// Time allowed for the upgrade request (QUIC: the hello line), counted from the accept:
    /// bytes that trickle in do not extend it.
    pub handshake_timeout: Duration,
    /// Most connections in handshake (accepted, not yet admitted) at once; an accept beyond is
    /// answered 503 at once, before anything is read.
    pub max_handshakes: usize,
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
    /// Devices one fanout slice visits before the shard serves its other work (input,
    /// accepts, pings, QUIC) again: a fanout to many devices runs as slices.
    pub fanout_slice: usize,
    /// The tenants this edge carries (its relay certificate names them); a device of another
    /// is refused 403. `None`: every tenant.
    pub tenants: Option<cue_common::tenant::Scope>,
    /// Devices and events followed per tenant in this shard; beyond, 429.
    pub tenant_quotas: tenants::Quotas,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            auth: None,
            tickets: None,
            max_request: 8192,
            query: QueryLimits::default(),
            hello: HelloLimits::default(),
            max_frame: 4096,
            max_message: 16384,
            max_output: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 1024,
            ping_interval: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            max_connections: 1_000_000,
            max_events: 4096,
            retry_after_s: (5, 60),
            fanout_slice: 1024,
            tenants: None,
            tenant_quotas: tenants::Quotas::default(),
        }
    }
}

struct Slot {
    name: EventName,
    /// Its event's tenant, an index of the shard's tenant table.
    tenant: u16,
    current: Option<Arc<EncodedCue>>,
    subscribers: Vec<u32>,
    /// In `ShardCore::unfollowed` (it may have gained subscribers since; checked on reuse).
    unfollowed_listed: bool,
}

/// A fanout in progress: one cue to the devices that followed its event when it arrived.
struct Sweep {
    slot: u16,
    cue: Arc<EncodedCue>,
    /// The slot's subscribers when the cue arrived (devices that subscribe later get the cue
    /// as their catch-up; entries of devices gone since are skipped).
    devices: Vec<u32>,
    next: usize,
    /// When the driver handed the cue in (Unix microseconds, the driver's clock).
    taken_us: u64,
    /// Devices written to so far.
    reached: u64,
}

/// A cue whose fanout on this shard finished (every device it had to visit was visited).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The cue's event, seq, publish time (Unix ms) and class.
    pub event: cue_common::cue::EventName,
    pub seq: u64,
    pub published_ms: u64,
    pub class: cue_common::cue::Priority,
    /// When the driver handed the cue in ([`ShardCore::take_cue_at`]), Unix microseconds.
    pub taken_us: u64,
    /// Devices that followed the event when the cue came (the fanout's list).
    pub followers: u64,
    /// Devices its fanout wrote it to.
    pub reached: u64,
}

/// Catch-up requests a shard queues between two driver turns; beyond, they are dropped and
/// counted (those devices get their event's next cue).
pub const MAX_CATCHUPS: usize = 4096;

struct Drain {
    start: Instant,
    window: Duration,
    total: usize,
    closed: usize,
}

/// Admissions per shard remembered as verified (~70 bytes each with the map: ~1.1 MiB at the
/// bound). A reconnect storm of devices this shard admitted before then costs a SHA-256 per
/// device instead of an EdDSA check.
pub const ADMIT_CACHE: usize = 16_384;

/// One shard's devices and newest cues.
pub struct ShardCore {
    cfg: CoreConfig,
    /// Admissions a public key set passed before (see `AdmitCache`).
    admit_cache: cue_common::keys::AdmitCache,
    stats: Arc<ShardStats>,
    rng: SmallRng,
    epoch: Instant,
    conns: Slab,
    slots: Vec<Slot>,
    by_name: HashMap<EventName, u16>,
    /// Slots no device follows (some may have gained one since), the longest unfollowed first:
    /// what a full table reuses for a device's new event.
    unfollowed: std::collections::VecDeque<u16>,
    /// Events whose new slot waits for the relay link's catch-up.
    catchups: Vec<EventName>,
    /// Connections in handshake, and their deadlines in accept order (deadlines are accept +
    /// a fixed timeout, so the front is always the next due; entries of connections admitted
    /// or gone since are skipped when they come due).
    handshaking: usize,
    handshake_deadlines: std::collections::VecDeque<(ConnKey, u32)>,
    open: usize,
    sweep: u32,
    drain: Option<Drain>,
    drain_cursor: u32,
    to_close: Vec<Closing>,
    out: Vec<u8>,
    /// Fanouts in progress, oldest first, at most one per slot.
    sweeps: std::collections::VecDeque<Sweep>,
    /// A finished sweep's device list, kept for the next one.
    spare: Vec<u32>,
    /// The fanout's batch of sends, and the device index and subscription of each (kept
    /// between slices so a slice allocates nothing).
    batch: Vec<BatchSend>,
    batch_of: Vec<(u32, u32)>,
    /// Cues whose fanout finished since the driver last took them ([`ShardCore::take_finished`]):
    /// at most one per cue taken in between two driver turns.
    finished: Vec<Finished>,
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
        let mut admit_cache = cue_common::keys::AdmitCache::new(ADMIT_CACHE);
        if let Some(k) = &cfg.tickets {
            admit_cache = admit_cache.with_tickets(k.clone());
        }
        *stats.tenants.lock().expect("tenants lock") =
            tenants::Table::new(cfg.tenant_quotas.clone());
        Self {
            cfg,
            admit_cache,
            stats,
            rng,
            epoch,
            conns: Slab::default(),
            slots: Vec::new(),
            by_name: HashMap::new(),
            unfollowed: std::collections::VecDeque::new(),
            catchups: Vec::new(),
            handshaking: 0,
            handshake_deadlines: std::collections::VecDeque::new(),
            open: 0,
            sweep: 0,
            drain: None,
            drain_cursor: 0,
            to_close: Vec::new(),
            out: Vec::with_capacity(512),
            sweeps: std::collections::VecDeque::new(),
            spare: Vec::new(),
            batch: Vec::new(),
            batch_of: Vec::new(),
            finished: Vec::new(),
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

    /// Checks new sessions with `auth` from now on (a key set reloaded on SIGHUP); sessions
    /// already admitted stay.
    pub fn set_auth(&mut self, auth: Option<Verifier>) {
        self.cfg.auth = auth;
        // A retired key's tokens must stop admitting: nothing verified before counts now.
        self.admit_cache.clear();
    }

    /// True once a drain has started.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// The origin retired `event`: its cue is forgotten (a device that subscribes later gets no
    /// catch-up for it; devices following it stay subscribed and get its next cue, whose seq,
    /// following the clock, is above every old one).
    pub fn retire(&mut self, event: &EventName) {
        if let Some(&i) = self.by_name.get(event) {
            self.slots[i as usize].current = None;
            self.sweeps.retain(|s| s.slot != i);
        }
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
        let key = self.conns.insert(link.id, link.transport, s);
        self.handshaking += 1;
        self.stats.handshaking.set(self.handshaking as i64);
        let timeout = self
            .cfg
            .handshake_timeout
            .as_secs()
            .clamp(1, u32::MAX as u64) as u32;
        self.handshake_deadlines
            .push_back((key, s.saturating_add(timeout)));
        key
    }

    /// True when `max_handshakes` connections are in handshake: the driver answers the next
    /// accept 503 at once ([`crate::ws::handshake::write_refusal`]) instead of calling
    /// [`ShardCore::accept`].
    pub fn handshakes_full(&self) -> bool {
        self.handshaking >= self.cfg.max_handshakes
    }

    /// A connection left the handshake (admitted or gone).
    fn handshake_done(&mut self) {
        self.handshaking = self.handshaking.saturating_sub(1);
        self.stats.handshaking.set(self.handshaking as i64);
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

    /// The slot of `name` for a cue from the relay: an existing one, or a new one while the table
    /// has room. A full table takes no slot for a cue (it would push out an event some device
    /// may come back to for nothing): the cue is dropped here; the relay link holds it for
    /// catch-up.
    fn slot_for_cue(&mut self, name: &EventName) -> Option<u16> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        if self.slots.len() >= self.max_slots() {
            return None;
        }
        Some(self.new_slot(name))
    }

    /// The slot of `name` for a subscribing device: an existing one, a new one, or, with the
    /// table full, one that no device follows, reused (the event that went unfollowed longest
    /// first). A new slot has no cue yet: its event is queued for the relay link's catch-up
    /// ([`ShardCore::drain_catchups`]). `None` only when every slot has subscribers (or is in
    /// `keep`: the slots the same device is being given).
    pub(super) fn slot_for_device(&mut self, name: &EventName, keep: &[u16]) -> Option<u16> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        let i = if self.slots.len() < self.max_slots() {
            self.new_slot(name)
        } else {
            let i = self.reusable_slot(keep)?;
            let old = std::mem::replace(&mut self.slots[i as usize].name, name.clone());
            self.by_name.remove(&old);
            self.by_name.insert(name.clone(), i);
            self.slots[i as usize].current = None;
            self.stats.event_slots_reused.inc();
            i
        };
        if self.catchups.len() < MAX_CATCHUPS {
            self.catchups.push(name.clone());
        } else {
            self.stats.catchups_dropped.inc();
        }
        Some(i)
    }

    fn max_slots(&self) -> usize {
        self.cfg.max_events.clamp(1, u16::MAX as usize)
    }

    /// A new slot, listed as unfollowed until a device takes it.
    fn new_slot(&mut self, name: &EventName) -> u16 {
        let i = self.slots.len() as u16;
        self.slots.push(Slot {
            name: name.clone(),
            tenant: tenants::DEFAULT,
            current: None,
            subscribers: Vec::new(),
            unfollowed_listed: true,
        });
        self.unfollowed.push_back(i);
        self.by_name.insert(name.clone(), i);
        self.stats.event_slots.add(1);
        i
    }

    /// Takes the unfollowed slot listed longest ago. Listed slots a device took since are
    /// unlisted on the way (listed again when their last device leaves).
    fn reusable_slot(&mut self, keep: &[u16]) -> Option<u16> {
        // One pass over the list at most: slots in `keep` go round to the back (the device
        // is about to follow them).
        for _ in 0..self.unfollowed.len() {
            let i = self.unfollowed.pop_front()?;
            let slot = &mut self.slots[i as usize];
            if keep.contains(&i) {
                self.unfollowed.push_back(i);
            } else if !slot.subscribers.is_empty() {
                slot.unfollowed_listed = false;
            } else {
                // Reused at once, so it stays listed: listed again at the back.
                self.unfollowed.push_back(i);
                return Some(i);
            }
        }
        None
    }

    /// Hands the driver each event a device subscribed to whose new slot has no cue yet, for the
    /// relay link to send its newest cue to this shard.
    pub fn drain_catchups(&mut self, mut f: impl FnMut(EventName)) {
        for e in self.catchups.drain(..) {
            f(e);
        }
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
            let now_unfollowed = list.is_empty();
            if let Some(&moved) = list.get(pos) {
                if let Some(m) = self.conns.at(moved) {
                    if let Some(ms) = m.subs.iter_mut().find(|x| x.slot == s.slot) {
                        ms.pos = pos as u32;
                    }
                }
            }
            let slot = &mut self.slots[s.slot as usize];
            if now_unfollowed {
                let mut t = self.stats.tenants.lock().expect("tenants lock");
                let e = &mut t.entries[slot.tenant as usize];
                e.events = e.events.saturating_sub(1);
            }
            if now_unfollowed && !slot.unfollowed_listed {
                slot.unfollowed_listed = true;
                self.unfollowed.push_back(s.slot);
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
                    let tenant = c.subs.first().map(|s| self.slots[s.slot as usize].tenant);
                    self.stats.tenant_device_left(tenant);
                    if c.transport() == Transport::Quic {
                        self.stats.quic_sessions.add(-1);
                    }
                    self.stats.close(reason);
                }
                // A drained session was counted when its close frame went out.
                State::Closing => {}
                State::Handshaking => {
                    self.handshake_done();
                    self.stats.close(reason);
                }
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

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
pub mod testkit;
#[cfg(test)]
mod tests;
