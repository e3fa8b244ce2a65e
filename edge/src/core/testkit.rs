//! In-memory harness for the sans-IO core: a fake socket layer ([`FakeIo`]) and simulated
//! devices that speak real WebSocket bytes (client handshake, masked frames) and decode what the
//! core sends. Used by the core's unit tests and the deterministic system test.

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::{ConnKey, Io, Link, Now, Sent, ShardCore};
use crate::ws::frame::{decode_frame, encode_frame, Decoded, Opcode, Role};
use crate::ws::handshake::{accept_key, client_key, parse_response, write_client_request};

/// One fake socket, seen from the device side.
#[derive(Debug, Default)]
pub struct Peer {
    /// Bytes the core sent that the device has not parsed yet.
    pub inbox: Vec<u8>,
    /// Bytes the socket takes before it "would block"; `None` = unlimited.
    pub room: Option<usize>,
    /// The core closed it.
    pub closed: bool,
    /// The core asked for writability.
    pub want_write: bool,
    /// Key to report writability with.
    pub key: Option<ConnKey>,
}

/// A fake socket layer.
#[derive(Debug, Default)]
pub struct FakeIo {
    /// Sockets by fd.
    pub peers: HashMap<RawFd, Peer>,
    /// fds the core closed, in order.
    pub closed: Vec<RawFd>,
    /// Code and reason of every close, by fd (QUIC devices see these in CONNECTION_CLOSE).
    pub close_info: HashMap<RawFd, (u16, String)>,
    /// The fds of each fanout batch ([`Io::send_cue_batch`]), in order.
    pub batches: Vec<Vec<RawFd>>,
}

impl Io for FakeIo {
    fn send_cue_batch(&mut self, cue: &crate::encoded::EncodedCue, batch: &mut [super::BatchSend]) {
        self.batches
            .push(batch.iter().map(|b| b.link.id as RawFd).collect());
        // Each result as a send would give it, all filled in before the core looks at any.
        for b in batch {
            b.result = self.send(b.link, cue.frame(b.encoding));
        }
    }

    fn send(&mut self, link: Link, bytes: &[u8]) -> Sent {
        let fd = link.id as RawFd;
        let p = self.peers.get_mut(&fd).expect("send to unknown fd");
        if p.closed {
            return Sent::Closed;
        }
        let n = p.room.map_or(bytes.len(), |r| r.min(bytes.len()));
        if n == 0 {
            return Sent::WouldBlock;
        }
        if let Some(r) = p.room.as_mut() {
            *r -= n;
        }
        p.inbox.extend_from_slice(&bytes[..n]);
        Sent::Took(n)
    }

    fn want_write(&mut self, link: Link, key: ConnKey, want: bool) {
        let fd = link.id as RawFd;
        let p = self.peers.get_mut(&fd).expect("want_write on unknown fd");
        p.want_write = want;
        p.key = Some(key);
    }

    fn close(&mut self, link: Link, code: u16, reason: &str) {
        let fd = link.id as RawFd;
        if let Some(p) = self.peers.get_mut(&fd) {
            p.closed = true;
        }
        self.closed.push(fd);
        self.close_info.insert(fd, (code, reason.to_string()));
    }
}

/// A fake clock: monotonic plus Unix ms, advanced by hand.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Start of the simulation.
    pub base: Instant,
    /// Simulated time since `base`.
    pub at: Duration,
    /// Unix ms at `base`.
    pub unix0: u64,
}

impl Clock {
    /// A clock at Unix time 1_700_000_000_000 ms.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            at: Duration::ZERO,
            unix0: 1_700_000_000_000,
        }
    }
    /// The reading.
    pub fn now(&self) -> Now {
        Now {
            mono: self.base + self.at,
            unix_ms: self.unix0 + self.at.as_millis() as u64,
        }
    }
    /// Moves on.
    pub fn advance(&mut self, d: Duration) {
        self.at += d;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// What a simulated device has seen.
#[derive(Debug, Default)]
pub struct Device {
    /// Its socket.
    pub fd: RawFd,
    /// Its connection key.
    pub key: Option<ConnKey>,
    /// HTTP status of the upgrade answer, once parsed.
    pub status: Option<u16>,
    /// Body of a refusal.
    pub refusal: String,
    /// Newest (seq, key) per event, from cue frames.
    pub newest: HashMap<String, (u64, String)>,
    /// Every cue frame, in order (event, seq).
    pub cues: Vec<(String, u64)>,
    /// Close frames received (code, reason).
    pub closes: Vec<(u16, String)>,
    /// Pings received.
    pub pings: usize,
    expected_accept: String,
}

impl Device {
    /// Parses everything the core sent to this device so far.
    pub fn read(&mut self, io: &mut FakeIo) {
        let p = io.peers.get_mut(&self.fd).expect("device socket");
        let mut buf = std::mem::take(&mut p.inbox);
        let mut used = 0;
        if self.status.is_none() {
            match parse_response(&buf, &self.expected_accept) {
                Ok(Some((status, n))) => {
                    self.status = Some(status);
                    used = n;
                    if status != 101 {
                        self.refusal = String::from_utf8_lossy(&buf[n..]).into_owned();
                        return;
                    }
                }
                Ok(None) => {
                    p.inbox = buf;
                    return;
                }
                Err(e) => panic!("bad upgrade response: {e}"),
            }
        }
        loop {
            match decode_frame(&mut buf[used..], Role::Client, 1 << 20).expect("valid server frame")
            {
                Decoded::Incomplete => break,
                Decoded::Frame {
                    opcode,
                    payload,
                    consumed,
                    fin,
                } => {
                    assert!(fin, "the edge never fragments");
                    let pl = &buf[used + payload.start..used + payload.end];
                    match opcode {
                        Opcode::Text => {
                            let c = cue_common::cue::Cue::from_json(pl).expect("cue JSON");
                            self.got(c);
                        }
                        Opcode::Binary => {
                            let c = cue_common::cue::Cue::from_binary(pl).expect("binary cue");
                            self.got(c);
                        }
                        Opcode::Close => {
                            let code = if pl.len() >= 2 {
                                u16::from_be_bytes([pl[0], pl[1]])
                            } else {
                                1005
                            };
                            let reason =
                                String::from_utf8_lossy(pl.get(2..).unwrap_or(&[])).into_owned();
                            self.closes.push((code, reason));
                        }
                        Opcode::Ping => self.pings += 1,
                        _ => {}
                    }
                    used += consumed;
                }
            }
        }
        p.inbox = buf[used..].to_vec();
    }

    fn got(&mut self, c: cue_common::cue::Cue) {
        self.cues.push((c.event().to_string(), c.seq()));
        let e = self
            .newest
            .entry(c.event().to_string())
            .or_insert((0, String::new()));
        if c.seq() > e.0 {
            *e = (c.seq(), c.key().to_string());
        }
    }

    /// The newest seq seen for `event`.
    pub fn seq(&self, event: &str) -> u64 {
        self.newest.get(event).map_or(0, |x| x.0)
    }
}

/// Connects a device: accept + the upgrade request for `path_and_query` (with an optional
/// bearer token), delivered in one read.
pub fn connect(
    core: &mut ShardCore,
    io: &mut FakeIo,
    clock: &Clock,
    fd: RawFd,
    path_and_query: &str,
    bearer: Option<&str>,
) -> Device {
    io.peers.insert(fd, Peer::default());
    let key = core.accept(Link::ws(fd), clock.now());
    let nonce = [fd as u8; 16];
    let k = client_key(nonce);
    let mut req = Vec::new();
    write_client_request("edge.test", path_and_query, &k, bearer, None, &mut req);
    core.on_input(key, &req, clock.now(), io);
    let mut d = Device {
        fd,
        key: Some(key),
        expected_accept: accept_key(&k),
        ..Default::default()
    };
    d.read(io);
    d
}

/// A masked client frame.
pub fn client_frame(op: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(op, payload, Some([1, 2, 3, 4]), &mut v);
    v
}

/// Reports writability for every socket that asked for it and has room.
pub fn pump_writable(core: &mut ShardCore, io: &mut FakeIo) {
    let ready: Vec<ConnKey> = io
        .peers
        .values()
        .filter(|p| p.want_write && !p.closed && p.room.is_none_or(|r| r > 0))
        .filter_map(|p| p.key)
        .collect();
    let mut seen = HashSet::new();
    for k in ready {
        if seen.insert(k) {
            core.on_writable(k, io);
        }
    }
}

/// What a simulated QUIC device has seen on its stream.
#[derive(Debug, Default)]
pub struct QuicDevice {
    /// Its connection index (the fake socket's key).
    pub id: RawFd,
    /// Its connection key.
    pub key: Option<ConnKey>,
    /// The answer line to the hello, once complete.
    pub answer: Option<serde_json::Value>,
    /// Binary records (true) or JSON lines (false) after the answer.
    pub binary: bool,
    /// Every cue, in order (event, seq).
    pub cues: Vec<(String, u64)>,
}

impl QuicDevice {
    /// Parses everything the core wrote to this device's stream so far.
    pub fn read(&mut self, io: &mut FakeIo) {
        let p = io.peers.get_mut(&self.id).expect("device stream");
        let buf = std::mem::take(&mut p.inbox);
        let mut used = 0;
        if self.answer.is_none() {
            let Some(n) = buf.iter().position(|&b| b == b'\n') else {
                p.inbox = buf;
                return;
            };
            self.answer = Some(serde_json::from_slice(&buf[..n]).expect("JSON answer line"));
            used = n + 1;
        }
        loop {
            let rest = &buf[used..];
            if self.binary {
                if rest.len() < 2 {
                    break;
                }
                let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                if rest.len() < 2 + n {
                    break;
                }
                let c = cue_common::cue::Cue::from_binary(&rest[2..2 + n]).expect("binary record");
                self.cues.push((c.event().to_string(), c.seq()));
                used += 2 + n;
            } else {
                let Some(n) = rest.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let c = cue_common::cue::Cue::from_json(&rest[..n]).expect("JSON cue line");
                self.cues.push((c.event().to_string(), c.seq()));
                used += n + 1;
            }
        }
        p.inbox = buf[used..].to_vec();
    }
}

/// Connects a QUIC device: its stream is opened (accept) and `hello` (one line, newline added)
/// arrives in one read.
pub fn connect_quic(
    core: &mut ShardCore,
    io: &mut FakeIo,
    clock: &Clock,
    id: RawFd,
    hello: &str,
) -> QuicDevice {
    io.peers.insert(id, Peer::default());
    let key = core.accept(Link::quic(id as u32), clock.now());
    let mut line = hello.as_bytes().to_vec();
    line.push(b'\n');
    core.on_input(key, &line, clock.now(), io);
    let mut d = QuicDevice {
        id,
        key: Some(key),
        binary: hello.contains("\"binary\""),
        ..Default::default()
    };
    d.read(io);
    d
}
