//! The shard's QUIC driver: quinn-proto run directly on the shard's thread, no tasks and no
//! channels per connection.
//!
//! The shard owns one UDP socket (`SO_REUSEPORT`), one `quinn_proto::Endpoint` whose connection
//! IDs carry the shard's mesh index, and its connections in a slab indexed like the endpoint's
//! handles. Everything is driven from the shard's existing loop with the shard's clock:
//!
//! 1. [`QuicDriver::receive`]: `recvmmsg` the socket; a datagram whose connection ID names
//!    another shard goes to that shard over the channel mesh; the rest feed the endpoint.
//!    New connections are accepted, refused or sent a stateless retry by the limits.
//! 2. [`QuicDriver::fire_timers`]: a heap of (deadline, connection) gives each due connection
//!    its `handle_timeout` (loss detection, keep-alive, idle timeout). A connection has at most
//!    one live entry, its earliest: a later deadline (the keep-alive that replaces a loss timer
//!    once the ACK came) is not pushed; the earlier entry re-arms when it comes up. A pushed
//!    entry per deadline change left ~30 stale entries per connection in a fanout (one per cue
//!    within the keep-alive interval) and made the heap the hottest part of the driver.
//! 3. [`QuicDriver::drive`]: connections touched since the last pass give up their events,
//!    turned into [`QuicEvent`]s for the core (stream opened, bytes read, writable, gone).
//! 4. The core writes (acceptance, cues) into streams through [`QuicDriver::stream_write`].
//! 5. [`QuicDriver::transmit`]: touched connections are polled for packets (several per call
//!    with GSO), queued in one arena and sent with `sendmmsg`.
//!
//! A connection the core has closed stays here until its stream is delivered (or
//! `close_grace` passes), then gets CONNECTION_CLOSE with the core's code and reason, and is
//! removed once quinn-proto says it is drained.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;
use quinn_proto::{
    Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event,
    ServerConfig, StreamEvent, StreamId, VarInt,
};

use super::config::QuicSettings;
use super::udp::{self, RxBatch, TxBatch, UdpSocket, MAX_GSO_SEGMENTS};
use crate::core::{ConnKey, Sent};
use crate::stats::{CloseReason, ShardStats};

/// A datagram for another shard's connection.
#[derive(Debug)]
pub struct Forwarded {
    /// The device's address.
    pub from: SocketAddr,
    /// The datagram.
    pub data: Vec<u8>,
}

/// What the core must hear about, by driver connection index.
#[derive(Debug)]
pub enum QuicEvent {
    /// The device opened its stream: a new session for the core.
    Opened(u32),
    /// Bytes the device wrote on its stream.
    Input(u32, Bytes),
    /// The stream takes writes again.
    Writable(u32),
    /// The connection ended (the core should forget the session of this key).
    Gone(ConnKey, CloseReason),
}

struct QConn {
    conn: Connection,
    stream: Option<StreamId>,
    /// The core's key, while the core holds the session.
    key: Option<ConnKey>,
    /// The connection's live entry in the timer heap (its earliest; later deadlines are
    /// looked at when it comes up).
    timer: Option<Instant>,
    dirty: bool,
    connected: bool,
    /// Established without a stream yet: it must open one by then.
    hello_by: Option<Instant>,
    /// Set when the core closed it: deadline, code, reason.
    closing: Option<(Instant, u16, Bytes)>,
}

/// One shard's QUIC endpoint and connections.
pub struct QuicDriver {
    endpoint: Endpoint,
    sock: UdpSocket,
    local_ip: Option<IpAddr>,
    mesh_index: u16,
    peers: Option<Rc<Senders<Forwarded>>>,
    inbox: Rc<RefCell<VecDeque<Forwarded>>>,
    conns: Vec<Option<QConn>>,
    live: usize,
    handshaking: usize,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    dirty: Vec<u32>,
    /// Receive buffers (taken out while their datagrams are handled, then put back).
    rx: Option<Box<RxBatch>>,
    tx: TxBatch,
    scratch: Vec<u8>,
    gso_max: usize,
    stats: Arc<ShardStats>,
    settings: QuicSettings,
    now: Instant,
    /// A handshake was worked on since the last [`QuicDriver::take_handshake_flag`].
    handshake_work: bool,
    /// The connection touched last (a datagram in, a stream write), whose events and
    /// packets are taken as soon as another connection is touched, while its state is still
    /// in cache (see [`QuicDriver::settle`]).
    hot: Option<u32>,
    /// Events of connections settled early, for the next [`QuicDriver::drive`].
    early: Vec<QuicEvent>,
}

impl std::fmt::Debug for QuicDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicDriver")
            .field("local", &self.sock.local)
            .field("live", &self.live)
            .field("handshaking", &self.handshaking)
            .finish()
    }
}

impl QuicDriver {
    /// A driver on `sock` for shard `mesh_index`; `peers` reaches the other shards (none with
    /// one shard), `inbox` is where their forwarded datagrams land.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sock: UdpSocket,
        endpoint_config: quinn_proto::EndpointConfig,
        server: ServerConfig,
        settings: QuicSettings,
        mesh_index: u16,
        peers: Option<Rc<Senders<Forwarded>>>,
        inbox: Rc<RefCell<VecDeque<Forwarded>>>,
        stats: Arc<ShardStats>,
        now: Instant,
    ) -> Self {
        let gso_max = if sock.gso { MAX_GSO_SEGMENTS } else { 1 };
        Self {
            endpoint: Endpoint::new(
                Arc::new(endpoint_config),
                Some(Arc::new(server)),
                false,
                None,
            ),
            local_ip: udp::local_ip(&sock),
            sock,
            mesh_index,
            peers,
            inbox,
            conns: Vec::new(),
            live: 0,
            handshaking: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            rx: Some(Box::default()),
            tx: TxBatch::default(),
            scratch: Vec::with_capacity(MAX_GSO_SEGMENTS * 1500),
            gso_max,
            stats,
            settings,
            now,
            handshake_work: false,
            hot: None,
            early: Vec::new(),
        }
    }

    /// The socket fd, for the shard's epoll set.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.sock.raw_fd()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local
    }

    /// Connections held (handshaking, open or closing).
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Whether work since the last call involved a handshake (for CPU accounting), and resets.
    pub fn take_handshake_flag(&mut self) -> bool {
        std::mem::take(&mut self.handshake_work)
    }

    /// Whether anything waits: touched connections, queued transmits or forwarded datagrams.
    pub fn busy(&self, now: Instant) -> bool {
        !self.dirty.is_empty()
            || !self.tx.is_empty()
            || !self.inbox.borrow().is_empty()
            || self.timers.peek().is_some_and(|Reverse((t, _))| *t <= now)
    }

    /// The earliest connection timer (it may be one already replaced: then early, never late).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Reads every waiting datagram (bounded per call) when the socket is `readable`, and the
    /// datagrams other shards forwarded, and feeds each to its connection.
    pub fn receive(&mut self, now: Instant, readable: bool) {
        self.now = now;
        for _ in 0..if readable { 64 } else { 0 } {
            let Some(mut rx) = self.rx.take() else { break };
            let n = match rx.recv(&self.sock) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "quic recv");
                    0
                }
            };
            if n > 0 {
                rx.for_each(|d| self.datagram(d.from, d.data));
            }
            self.rx = Some(rx);
            if n == 0 {
                break;
            }
        }
        let forwarded: Vec<Forwarded> = self.inbox.borrow_mut().drain(..).collect();
        for f in forwarded {
            self.handle(f.from, &f.data);
        }
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        self.stats.quic_datagrams_in.inc();
        if let (Some(owner), Some(peers)) = (super::cid::owner(data), self.peers.as_ref()) {
            if owner != self.mesh_index && (owner as usize) < peers.nr_consumers() {
                let msg = Forwarded {
                    from,
                    data: data.to_vec(),
                };
                match peers.try_send_to(owner as usize, msg) {
                    Ok(()) => self.stats.quic_forwarded.inc(),
                    Err(_) => self.stats.quic_forward_dropped.inc(),
                }
                return;
            }
        }
        self.handle(from, data);
    }

    fn handle(&mut self, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        self.scratch.clear();
        let ev = self.endpoint.handle(
            now,
            from,
            self.local_ip,
            None,
            BytesMut::from(data),
            &mut self.scratch,
        );
        match ev {
            None => {}
            Some(DatagramEvent::Response(t)) => {
                self.tx
                    .push(t.destination, &self.scratch[..t.size], t.segment_size)
            }
            Some(DatagramEvent::ConnectionEvent(ch, ce)) => {
                self.touch(ch.0 as u32);
                if let Some(q) = self.conns.get_mut(ch.0).and_then(Option::as_mut) {
                    q.conn.handle_event(ce);
                    if !q.connected {
                        self.handshake_work = true;
                    }
                    mark(&mut self.dirty, q, ch.0 as u32);
                }
            }
            Some(DatagramEvent::NewConnection(inc)) => {
                self.handshake_work = true;
                let s = &self.settings;
                if self.live >= s.max_connections || self.handshaking >= s.max_handshakes {
                    self.stats.quic_refused.inc();
                    let t = self.endpoint.refuse(inc, &mut self.scratch);
                    self.tx
                        .push(t.destination, &self.scratch[..t.size], t.segment_size);
                } else if self.handshaking >= s.retry_above
                    && !inc.remote_address_validated()
                    && inc.may_retry()
                {
                    self.stats.quic_retries.inc();
                    match self.endpoint.retry(inc, &mut self.scratch) {
                        Ok(t) => {
                            self.tx
                                .push(t.destination, &self.scratch[..t.size], t.segment_size)
                        }
                        Err(e) => self.endpoint.ignore(e.into_incoming()),
                    }
                } else {
                    match self.endpoint.accept(inc, now, &mut self.scratch, None) {
                        Ok((ch, conn)) => self.insert(ch, conn),
                        Err(e) => {
                            if let Some(t) = e.response {
                                self.tx.push(
                                    t.destination,
                                    &self.scratch[..t.size],
                                    t.segment_size,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Connection) {
        if self.conns.len() <= ch.0 {
            self.conns.resize_with(ch.0 + 1, || None);
        }
        let mut q = QConn {
            conn,
            stream: None,
            key: None,
            timer: None,
            dirty: false,
            connected: false,
            hello_by: None,
            closing: None,
        };
        mark(&mut self.dirty, &mut q, ch.0 as u32);
        self.conns[ch.0] = Some(q);
        self.live += 1;
        self.handshaking += 1;
        self.stats.quic_connections.add(1);
    }

    /// Gives every connection whose deadline has passed its timeout.
    pub fn fire_timers(&mut self, now: Instant) {
        self.now = now;
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
                continue;
            };
            if q.timer != Some(t) {
                continue; // superseded
            }
            q.timer = None;
            if let Some(next) = next_deadline(q).filter(|&n| n > now) {
                // The deadline moved later since this entry was armed: arm the new one.
                q.timer = Some(next);
                self.timers.push(Reverse((next, id)));
                continue;
            }
            if q.hello_by.is_some_and(|t| t <= now) && q.stream.is_none() {
                // Established, and no stream within the hello timeout.
                q.hello_by = None;
                q.conn.close(
                    now,
                    VarInt::from_u32(1008),
                    Bytes::from_static(b"hello timeout"),
                );
                self.stats.quic_hello_timeouts.inc();
            }
            if let Some((deadline, code, reason)) = q.closing.clone() {
                if deadline <= now {
                    q.conn.close(now, VarInt::from_u32(code as u32), reason);
                    q.closing = None;
                }
            }
            q.conn.handle_timeout(now);
            if !q.connected {
                self.handshake_work = true;
            }
            mark(&mut self.dirty, q, id);
        }
    }

    /// Collects the events of touched connections for the core.
    pub fn drive(&mut self, now: Instant, out: &mut Vec<QuicEvent>) {
        self.now = now;
        out.append(&mut self.early);
        for i in 0..self.dirty.len() {
            let id = self.dirty[i];
            self.drive_one(id, out);
        }
    }

    /// Hands connection `id`'s events (stream opened, bytes read, writable, gone) to `out`.
    fn drive_one(&mut self, id: u32, out: &mut Vec<QuicEvent>) {
        let now = self.now;
        let hello_timeout = self.settings.hello_timeout;
        let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        if !q.dirty {
            return; // settled early, nothing new since
        }
        endpoint_events(&mut self.endpoint, q, id);
        while let Some(ev) = q.conn.poll() {
            match ev {
                Event::Connected => {
                    q.connected = true;
                    self.handshaking -= 1;
                    if q.stream.is_none() {
                        q.hello_by = Some(now + hello_timeout);
                    }
                }
                Event::ConnectionLost { reason } => {
                    if !q.connected {
                        q.connected = true;
                        self.handshaking -= 1;
                    }
                    if let Some(k) = q.key.take() {
                        out.push(QuicEvent::Gone(k, lost_reason(&reason)));
                    }
                    q.closing = None;
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(sid) = q.conn.streams().accept(Dir::Bi) {
                        if q.stream.is_none() && q.closing.is_none() {
                            q.stream = Some(sid);
                            q.hello_by = None;
                            out.push(QuicEvent::Opened(id));
                        } else {
                            // One stream per device: a second one is refused.
                            let _ = q.conn.recv_stream(sid).stop(VarInt::from_u32(1002));
                            let _ = q.conn.send_stream(sid).reset(VarInt::from_u32(1002));
                        }
                    }
                    read_stream(q, id, out);
                }
                Event::Stream(StreamEvent::Readable { id: sid }) if Some(sid) == q.stream => {
                    read_stream(q, id, out);
                }
                Event::Stream(StreamEvent::Writable { id: sid })
                    if Some(sid) == q.stream && q.key.is_some() =>
                {
                    out.push(QuicEvent::Writable(id));
                }
                Event::Stream(StreamEvent::Finished { id: sid }) if Some(sid) == q.stream => {
                    if let Some((_, code, reason)) = q.closing.take() {
                        q.conn.close(now, VarInt::from_u32(code as u32), reason);
                    }
                }
                Event::Stream(StreamEvent::Stopped { id: sid, .. }) if Some(sid) == q.stream => {
                    if let Some(k) = q.key.take() {
                        out.push(QuicEvent::Gone(k, CloseReason::Client));
                    }
                    if let Some((_, code, reason)) = q.closing.take() {
                        q.conn.close(now, VarInt::from_u32(code as u32), reason);
                    }
                }
                _ => {}
            }
        }
    }

    /// Notes that connection `id` is being worked on. The connection touched before it, if
    /// another, is settled now: its events collected and its packets built while its state is
    /// still in cache. A fanout touches ~10 KB of quinn-proto state per connection; taking a
    /// connection's events and packets in later passes over all touched connections found it
    /// evicted every time.
    fn touch(&mut self, id: u32) {
        if self.hot == Some(id) {
            return;
        }
        if let Some(prev) = self.hot.replace(id) {
            self.settle(prev);
        }
    }

    /// Takes connection `id`'s events (kept for the next [`QuicDriver::drive`]) and packets.
    fn settle(&mut self, id: u32) {
        let mut early = std::mem::take(&mut self.early);
        self.drive_one(id, &mut early);
        self.early = early;
        let now = self.now;
        if !self.transmit_one(id, now) {
            if let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) {
                q.dirty = false;
            }
            if self.dirty.last() == Some(&id) {
                self.dirty.pop();
            }
        }
        if self.tx.len() >= 4 * udp::TX_BATCH {
            self.flush();
        }
    }

    /// The core's key for connection `id`, once it has one.
    pub fn set_key(&mut self, id: u32, key: ConnKey) {
        if let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) {
            q.key = Some(key);
        }
    }

    /// The core's key for connection `id`.
    pub fn key(&self, id: u32) -> Option<ConnKey> {
        self.conns.get(id as usize)?.as_ref()?.key
    }

    /// Writes into the device's stream (the core's send).
    pub fn stream_write(&mut self, id: u32, bytes: &[u8]) -> Sent {
        self.touch(id);
        let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return Sent::Closed;
        };
        let Some(sid) = q.stream else {
            return Sent::Closed;
        };
        match q.conn.send_stream(sid).write(bytes) {
            Ok(n) => {
                mark(&mut self.dirty, q, id);
                Sent::Took(n)
            }
            Err(quinn_proto::WriteError::Blocked) => Sent::WouldBlock,
            Err(_) => Sent::Closed,
        }
    }

    /// The core forgot connection `id`: finish its stream, and close the connection with
    /// `code`/`reason` once the stream is delivered or `close_grace` passes.
    pub fn close(&mut self, id: u32, code: u16, reason: &str) {
        let now = self.now;
        let grace = self.settings.close_grace;
        let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        q.key = None;
        let reason = Bytes::copy_from_slice(reason.as_bytes());
        let finished = q
            .stream
            .is_some_and(|sid| q.conn.send_stream(sid).finish().is_ok());
        if finished && !q.conn.is_closed() {
            q.closing = Some((now + grace, code, reason));
        } else {
            q.conn.close(now, VarInt::from_u32(code as u32), reason);
        }
        mark(&mut self.dirty, q, id);
    }

    /// Closes every connection now (shutdown) and sends the CONNECTION_CLOSEs.
    pub fn close_all_now(&mut self, now: Instant) {
        self.now = now;
        for id in 0..self.conns.len() {
            if let Some(q) = self.conns[id].as_mut() {
                q.key = None;
                q.conn
                    .close(now, VarInt::from_u32(1001), Bytes::from_static(b"shutdown"));
                mark(&mut self.dirty, q, id as u32);
            }
        }
        self.transmit(now);
    }

    /// Sends the packets of every touched connection, re-arms their timers and drops the
    /// drained ones.
    pub fn transmit(&mut self, now: Instant) {
        self.now = now;
        self.hot = None;
        let dirty = std::mem::take(&mut self.dirty);
        let mut again = Vec::new();
        for &id in &dirty {
            if self.transmit_one(id, now) {
                again.push(id);
            }
            if self.tx.len() >= 4 * udp::TX_BATCH {
                self.flush();
            }
        }
        self.flush();
        self.dirty = again;
    }

    /// Queues connection `id`'s packets (up to 32 calls of `poll_transmit`), re-arms its timer,
    /// drops it when drained. True when it has more to send.
    fn transmit_one(&mut self, id: u32, now: Instant) -> bool {
        let Some(q) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return false;
        };
        if !q.dirty {
            return false; // settled early, nothing new since
        }
        q.dirty = false;
        let mut more = true;
        for _ in 0..32 {
            self.scratch.clear();
            match q.conn.poll_transmit(now, self.gso_max, &mut self.scratch) {
                Some(t) => self
                    .tx
                    .push(t.destination, &self.scratch[..t.size], t.segment_size),
                None => {
                    more = false;
                    break;
                }
            }
        }
        endpoint_events(&mut self.endpoint, q, id);
        if more {
            q.dirty = true;
        }
        if let Some(t) = next_deadline(q) {
            if q.timer.is_none_or(|armed| t < armed) {
                q.timer = Some(t);
                self.timers.push(Reverse((t, id)));
            }
        }
        if q.conn.is_drained() {
            self.conns[id as usize] = None;
            self.live -= 1;
            self.stats.quic_connections.add(-1);
            if self.hot == Some(id) {
                self.hot = None;
            }
            return false;
        }
        more
    }

    fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let f = self.tx.flush(&self.sock);
        self.stats.quic_datagrams_out.add(f.datagrams);
        self.stats.quic_send_calls.add(f.calls);
    }
}

/// The connection's next deadline: quinn-proto's timers and the core's close grace.
fn next_deadline(q: &mut QConn) -> Option<Instant> {
    [
        q.conn.poll_timeout(),
        q.closing.as_ref().map(|c| c.0),
        q.hello_by,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Queues `q` for the next drive/transmit pass, once.
fn mark(dirty: &mut Vec<u32>, q: &mut QConn, id: u32) {
    if !q.dirty {
        q.dirty = true;
        dirty.push(id);
    }
}

fn endpoint_events(endpoint: &mut Endpoint, q: &mut QConn, id: u32) {
    while let Some(ev) = q.conn.poll_endpoint_events() {
        if let Some(ce) = endpoint.handle_event(ConnectionHandle(id as usize), ev) {
            q.conn.handle_event(ce);
        }
    }
}

fn read_stream(q: &mut QConn, id: u32, out: &mut Vec<QuicEvent>) {
    let Some(sid) = q.stream else { return };
    let mut rs = q.conn.recv_stream(sid);
    let Ok(mut chunks) = rs.read(true) else {
        return;
    };
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(c)) => {
                if q.key.is_some() || q.closing.is_none() {
                    out.push(QuicEvent::Input(id, c.bytes));
                }
            }
            // The device finished its side: fine, it has nothing more to say.
            Ok(None) => break,
            Err(quinn_proto::ReadError::Blocked) => break,
            Err(quinn_proto::ReadError::Reset(_)) => {
                if let Some(k) = q.key.take() {
                    out.push(QuicEvent::Gone(k, CloseReason::Client));
                }
                break;
            }
        }
    }
    let _ = chunks.finalize();
}

fn lost_reason(e: &ConnectionError) -> CloseReason {
    match e {
        ConnectionError::ApplicationClosed(_) | ConnectionError::ConnectionClosed(_) => {
            CloseReason::Client
        }
        ConnectionError::TimedOut => CloseReason::PingTimeout,
        ConnectionError::Reset => CloseReason::PeerGone,
        ConnectionError::TransportError(_) | ConnectionError::VersionMismatch => {
            CloseReason::ProtocolError
        }
        _ => CloseReason::IoError,
    }
}
