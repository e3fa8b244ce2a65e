//! A game-day fleet worker: up to ~18k devices that behave like real ones. Each device connects
//! at its own moment on the ramp, asks the prefetch service when to fetch its stage map, fetches
//! it then (and again when its jittered `max-age` runs out), follows the event over WebSocket,
//! reconnects with jittered backoff and `since=` when it loses the edge, and on every cue checks
//! that the cue's stage key is in the map it prefetched (the device needs nothing else at the
//! broadcast). One mio event loop and a timer heap per worker; no task or thread per device.
//!
//! Parent protocol (lines): the worker prints a status JSON line every `status_ms`; stdin
//! `drop F` abruptly drops a fraction F of its open devices (RST), `report` prints the final
//! report and exits, `quit` exits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cue_edge::ws::frame::{decode_frame, encode_frame, Decoded, Opcode, Role};
use cue_edge::ws::handshake::{accept_key, client_key, parse_response, write_client_request};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::worker::{open_socket, pin, source_addr};

/// What one game-day worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetSpec {
    /// First device number (device ids are `dev-N`).
    pub first: usize,
    /// Devices.
    pub devices: usize,
    /// Edge WebSocket address.
    pub edge: SocketAddr,
    /// Prefetch HTTP address; `None` skips the prefetch phase.
    pub prefetch: Option<SocketAddr>,
    /// The event.
    pub event: String,
    /// The stage keys of the event, in order (stage maps are tracked as bitmasks over these).
    pub keys: Vec<String>,
    /// Token secret (devices mint their own tokens, `sub` = their id).
    pub secret: String,
    /// Connect ramp: device i starts at a uniform random time in `[0, ramp_ms]`.
    pub ramp_ms: u64,
    /// Reconnect backoff range, ms (doubles per failed attempt up to `backoff_max_ms`).
    pub backoff_min_ms: u64,
    /// Longest reconnect backoff.
    pub backoff_max_ms: u64,
    /// Status line interval.
    pub status_ms: u64,
    /// Source address base index (see `worker::source_addr`).
    pub source_base: u32,
    /// Core to pin to.
    pub cpu: Option<usize>,
    /// RNG seed.
    pub seed: u64,
    /// Unix ms when the run's clock started (for status lines).
    pub t0_unix_ms: u64,
    /// QUIC devices only (`quic_fleet`): the SHA-256 of the edge certificate they pin; `edge`
    /// is then the edges' QUIC address.
    #[serde(default)]
    pub quic_fingerprint: Option<String>,
    /// The devices' tenant (`--tenants 2`); `None`: the default tenant.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Periodic status.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Ms since the run started.
    pub t_ms: u64,
    /// Devices with an open WebSocket session.
    pub open: usize,
    /// Devices holding a stage map.
    pub prefetched: usize,
    /// Prefetch HTTP requests made so far (schedule + map).
    pub prefetch_reqs: u64,
    /// Prefetch requests answered 503 (shed) so far.
    pub prefetch_shed: u64,
    /// Prefetch requests that failed otherwise (connect, 5xx, timeout).
    pub prefetch_errors: u64,
    /// Reconnects so far.
    pub reconnects: u64,
}

/// Final report.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct FleetReport {
    /// Last status.
    pub status: Status,
    /// Per device: newest seq held.
    pub newest: Vec<u64>,
    /// Devices that displayed a cue whose key was not in their stage map (must be 0).
    pub displayed_without_map: usize,
    /// Cues displayed (first receipt of a seq per device).
    pub displayed: u64,
    /// Duplicate cue frames dropped by seq (after reconnects).
    pub duplicates: u64,
    /// Per seq: Unix µs of first receipt, per device that got it.
    pub arrivals: HashMap<u64, Vec<u64>>,
    /// Upgrade refusals by status.
    pub refusals: HashMap<u16, usize>,
    /// 304 answers to conditional refetches.
    pub not_modified: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Connect(u32),
    Prefetch(u32),
    Schedule(u32),
}

enum Ws {
    Idle,
    Connecting(TcpStream),
    Upgrading(TcpStream, String),
    Open(TcpStream),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HttpKind {
    Schedule,
    Map,
}

struct Http {
    sock: TcpStream,
    kind: HttpKind,
    dev: u32,
    buf: Vec<u8>,
    sent: bool,
}

struct Dev {
    ws: Ws,
    buf: Vec<u8>,
    newest: u64,
    /// Bit i set: stage map holds keys[i].
    map: u64,
    etag: Option<String>,
    attempts: u32,
    bad_display: bool,
}

struct Fleet {
    spec: FleetSpec,
    poll: Poll,
    rng: SmallRng,
    devs: Vec<Dev>,
    http: HashMap<usize, Http>,
    next_http: usize,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    report: FleetReport,
    tokens: Vec<String>,
    out: Vec<u8>,
}

const HTTP_TOKEN_BASE: usize = 1 << 40;

fn unix_us() -> u64 {
    crate::stack::unix_us()
}

/// Runs a game-day worker.
pub fn run(spec: FleetSpec) -> anyhow::Result<()> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let rx = crate::stack::stdin_commands();
    let keys =
        cue_common::token::TokenKeys::new(spec.secret.as_bytes()).map_err(anyhow::Error::msg)?;
    let now_s = cue_common::time::unix_now_s();
    let tokens = (0..spec.devices)
        .map(|i| {
            keys.mint_tenant_device(
                spec.tenant.as_deref(),
                &format!("dev-{}", spec.first + i),
                std::slice::from_ref(&spec.event),
                now_s,
                7200,
            )
        })
        .collect();
    let mut f = Fleet {
        poll: Poll::new()?,
        rng: SmallRng::seed_from_u64(spec.seed),
        devs: (0..spec.devices)
            .map(|_| Dev {
                ws: Ws::Idle,
                buf: Vec::new(),
                newest: 0,
                map: 0,
                etag: None,
                attempts: 0,
                bad_display: false,
            })
            .collect(),
        http: HashMap::new(),
        next_http: 0,
        timers: BinaryHeap::new(),
        report: FleetReport::default(),
        tokens,
        out: Vec::with_capacity(1024),
        spec,
    };
    let start = Instant::now();
    for i in 0..f.spec.devices {
        let at = start + Duration::from_millis(f.rng.gen_range(0..=f.spec.ramp_ms));
        f.timers.push(Reverse((at, Timer::Connect(i as u32))));
    }
    let mut events = Events::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut next_status = Instant::now();
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, t))) = f.timers.peek().copied() {
            if at > now {
                break;
            }
            f.timers.pop();
            f.fire(t);
        }
        if now >= next_status {
            next_status = now + Duration::from_millis(f.spec.status_ms);
            println!("{}", serde_json::to_string(&f.status())?);
            std::io::stdout().flush()?;
        }
        if let Ok(cmd) = rx.try_recv() {
            let mut it = cmd.split_whitespace();
            match it.next() {
                Some("drop") => {
                    let frac: f64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
                    f.drop_fraction(frac);
                }
                Some("report") => {
                    f.report.status = f.status();
                    f.report.newest = f.devs.iter().map(|d| d.newest).collect();
                    f.report.displayed_without_map =
                        f.devs.iter().filter(|d| d.bad_display).count();
                    println!("{}", serde_json::to_string(&f.report)?);
                    std::io::stdout().flush()?;
                    return Ok(());
                }
                Some("quit") => return Ok(()),
                _ => {}
            }
        }
        let wait = f
            .timers
            .peek()
            .map_or(Duration::from_millis(5), |Reverse((at, _))| {
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5))
            });
        f.poll.poll(&mut events, Some(wait))?;
        for ev in events.iter() {
            let tok = ev.token().0;
            if tok >= HTTP_TOKEN_BASE {
                f.on_http(tok - HTTP_TOKEN_BASE, ev.is_writable(), &mut chunk);
            } else {
                f.on_ws(tok as u32, &mut chunk);
            }
        }
    }
}

impl Fleet {
    fn status(&self) -> Status {
        Status {
            t_ms: (unix_us() / 1000).saturating_sub(self.spec.t0_unix_ms),
            open: self
                .devs
                .iter()
                .filter(|d| matches!(d.ws, Ws::Open(_)))
                .count(),
            prefetched: self.devs.iter().filter(|d| d.map != 0).count(),
            ..self.report.status.clone()
        }
    }

    fn fire(&mut self, t: Timer) {
        match t {
            Timer::Connect(i) => self.connect(i),
            Timer::Schedule(i) => self.http_start(i, HttpKind::Schedule),
            Timer::Prefetch(i) => self.http_start(i, HttpKind::Map),
        }
    }

    fn src(&self, i: u32) -> Ipv4Addr {
        source_addr(self.spec.source_base, i as usize, 10_000)
    }

    fn connect(&mut self, i: u32) {
        let first_time = self.devs[i as usize].newest == 0
            && self.devs[i as usize].attempts == 0
            && self.devs[i as usize].map == 0;
        if first_time && self.spec.prefetch.is_some() {
            // A device asks when to prefetch as soon as it is on.
            self.timers
                .push(Reverse((Instant::now(), Timer::Schedule(i))));
        }
        match open_socket(self.src(i), self.spec.edge) {
            Ok(mut s) => {
                if self
                    .poll
                    .registry()
                    .register(
                        &mut s,
                        Token(i as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    self.devs[i as usize].ws = Ws::Connecting(s);
                } else {
                    self.retry(i);
                }
            }
            Err(_) => self.retry(i),
        }
    }

    /// Schedules a reconnect with jittered exponential backoff.
    fn retry(&mut self, i: u32) {
        let d = &mut self.devs[i as usize];
        if let Ws::Connecting(mut s) | Ws::Upgrading(mut s, _) | Ws::Open(mut s) =
            std::mem::replace(&mut d.ws, Ws::Idle)
        {
            let _ = self.poll.registry().deregister(&mut s);
        }
        d.buf = Vec::new();
        d.attempts += 1;
        self.report.status.reconnects += 1;
        let ceil = (self.spec.backoff_min_ms << d.attempts.min(6)).min(self.spec.backoff_max_ms);
        let ms = self
            .rng
            .gen_range(self.spec.backoff_min_ms..=ceil.max(self.spec.backoff_min_ms));
        self.timers.push(Reverse((
            Instant::now() + Duration::from_millis(ms),
            Timer::Connect(i),
        )));
    }

    fn drop_fraction(&mut self, frac: f64) {
        for i in 0..self.devs.len() {
            if matches!(self.devs[i].ws, Ws::Open(_)) && self.rng.gen_bool(frac.clamp(0.0, 1.0)) {
                if let Ws::Open(s) = &self.devs[i].ws {
                    // Abrupt: RST, no close frame (a phone losing its network).
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                }
                self.devs[i].attempts = 0;
                self.retry(i as u32);
            }
        }
    }

    fn path(&self, i: u32) -> String {
        let d = &self.devs[i as usize];
        let mut p = format!("/v1/subscribe?events={}", self.spec.event);
        if d.newest > 0 {
            p.push_str(&format!("&since={}:{}", self.spec.event, d.newest));
        }
        p
    }

    fn on_ws(&mut self, i: u32, chunk: &mut [u8]) {
        let idx = i as usize;
        match std::mem::replace(&mut self.devs[idx].ws, Ws::Idle) {
            Ws::Connecting(mut s) => {
                if !matches!(s.take_error(), Ok(None)) {
                    self.devs[idx].ws = Ws::Connecting(s);
                    return self.retry(i);
                }
                let key = client_key(self.rng.gen());
                self.out.clear();
                let host = self.spec.edge.to_string();
                write_client_request(
                    &host,
                    &self.path(i),
                    &key,
                    Some(&self.tokens[idx]),
                    None,
                    &mut self.out,
                );
                if s.write_all(&self.out).is_err() {
                    self.devs[idx].ws = Ws::Connecting(s);
                    return self.retry(i);
                }
                let _ = self
                    .poll
                    .registry()
                    .reregister(&mut s, Token(idx), Interest::READABLE);
                self.devs[idx].ws = Ws::Upgrading(s, accept_key(&key));
            }
            Ws::Upgrading(mut s, expect) => match read_some(&mut s, &mut self.devs[idx].buf, chunk)
            {
                Err(()) => {
                    self.devs[idx].ws = Ws::Upgrading(s, expect);
                    self.retry(i)
                }
                Ok(()) => match parse_response(&self.devs[idx].buf, &expect) {
                    Ok(None) => self.devs[idx].ws = Ws::Upgrading(s, expect),
                    Ok(Some((101, n))) => {
                        self.devs[idx].buf.drain(..n);
                        self.devs[idx].attempts = 0;
                        self.devs[idx].ws = Ws::Open(s);
                        self.frames(i);
                    }
                    Ok(Some((status, _))) => {
                        *self.report.refusals.entry(status).or_default() += 1;
                        self.devs[idx].ws = Ws::Upgrading(s, expect);
                        self.retry(i)
                    }
                    Err(_) => {
                        self.devs[idx].ws = Ws::Upgrading(s, expect);
                        self.retry(i)
                    }
                },
            },
            Ws::Open(mut s) => match read_some(&mut s, &mut self.devs[idx].buf, chunk) {
                Err(()) => {
                    self.devs[idx].ws = Ws::Open(s);
                    self.retry(i)
                }
                Ok(()) => {
                    self.devs[idx].ws = Ws::Open(s);
                    self.frames(i);
                }
            },
            Ws::Idle => {}
        }
    }

    fn frames(&mut self, i: u32) {
        let idx = i as usize;
        let now = unix_us();
        let mut used = 0;
        let mut buf = std::mem::take(&mut self.devs[idx].buf);
        let mut closed = false;
        loop {
            match decode_frame(&mut buf[used..], Role::Client, 1 << 20) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Frame {
                    opcode,
                    payload,
                    consumed,
                    ..
                }) => {
                    let pl = &buf[used + payload.start..used + payload.end];
                    match opcode {
                        Opcode::Text => {
                            if let Ok(c) = cue_common::cue::Cue::from_json(pl) {
                                self.display(idx, c.seq(), c.key(), now);
                            }
                        }
                        Opcode::Ping => {
                            self.out.clear();
                            encode_frame(Opcode::Pong, pl, Some(self.rng.gen()), &mut self.out);
                            if let Ws::Open(s) = &mut self.devs[idx].ws {
                                let _ = s.write_all(&self.out);
                            }
                        }
                        Opcode::Close => closed = true,
                        _ => {}
                    }
                    used += consumed;
                    if closed {
                        break;
                    }
                }
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        buf.drain(..used);
        self.devs[idx].buf = buf;
        if closed {
            // Drained or refused mid-session: come back later with since=.
            self.retry(i);
        }
    }

    fn display(&mut self, idx: usize, seq: u64, key: &str, now_us: u64) {
        let d = &mut self.devs[idx];
        if seq <= d.newest {
            self.report.duplicates += 1;
            return;
        }
        d.newest = seq;
        self.report.displayed += 1;
        self.report.arrivals.entry(seq).or_default().push(now_us);
        // The device shows the stage from its prefetched map: it must be there.
        if self.spec.prefetch.is_some() {
            let bit = self.spec.keys.iter().position(|k| k == key);
            if bit.is_none_or(|b| d.map & (1 << b) == 0) {
                d.bad_display = true;
            }
        }
    }

    fn http_start(&mut self, i: u32, kind: HttpKind) {
        let Some(addr) = self.spec.prefetch else {
            return;
        };
        let Ok(mut s) = open_socket(self.src(i), addr) else {
            self.report.status.prefetch_errors += 1;
            return self.http_retry(i, kind, 1000);
        };
        let id = self.next_http;
        self.next_http += 1;
        if self
            .poll
            .registry()
            .register(
                &mut s,
                Token(HTTP_TOKEN_BASE + id),
                Interest::WRITABLE | Interest::READABLE,
            )
            .is_err()
        {
            return self.http_retry(i, kind, 1000);
        }
        self.report.status.prefetch_reqs += 1;
        self.http.insert(
            id,
            Http {
                sock: s,
                kind,
                dev: i,
                buf: Vec::new(),
                sent: false,
            },
        );
    }

    fn http_retry(&mut self, i: u32, kind: HttpKind, ms: u64) {
        let jitter = self.rng.gen_range(ms / 2..=ms.max(1) * 3 / 2);
        let t = match kind {
            HttpKind::Schedule => Timer::Schedule(i),
            HttpKind::Map => Timer::Prefetch(i),
        };
        self.timers
            .push(Reverse((Instant::now() + Duration::from_millis(jitter), t)));
    }

    fn on_http(&mut self, id: usize, writable: bool, chunk: &mut [u8]) {
        let Some(mut h) = self.http.remove(&id) else {
            return;
        };
        let dev = format!("dev-{}", self.spec.first + h.dev as usize);
        if !h.sent {
            if !writable {
                self.http.insert(id, h);
                return;
            }
            if !matches!(h.sock.take_error(), Ok(None)) {
                self.report.status.prefetch_errors += 1;
                return self.http_retry(h.dev, h.kind, 1000);
            }
            let ev = &self.spec.event;
            let path = match h.kind {
                HttpKind::Schedule => format!("/v1/events/{ev}/schedule?device={dev}"),
                HttpKind::Map => format!("/v1/events/{ev}/prefetch?device={dev}"),
            };
            // Priority as docs/prefetch.md asks of devices: a revalidation of a map it holds is
            // background; a first fetch is normal; a device without its map once the event is
            // live (it has seen a cue) is critical.
            let d = &self.devs[h.dev as usize];
            let priority = match (d.map != 0, d.newest > 0) {
                (true, _) => "background",
                (false, false) => "normal",
                (false, true) => "critical",
            };
            let mut req = format!(
                "GET {path} HTTP/1.1\r\nHost: prefetch\r\nAuthorization: Bearer {}\r\nX-Cue-Priority: {priority}\r\nConnection: close\r\n",
                self.tokens[h.dev as usize]
            );
            if let (HttpKind::Map, Some(tag)) = (h.kind, &self.devs[h.dev as usize].etag) {
                req.push_str(&format!("If-None-Match: {tag}\r\n"));
            }
            req.push_str("\r\n");
            if h.sock.write_all(req.as_bytes()).is_err() {
                self.report.status.prefetch_errors += 1;
                return self.http_retry(h.dev, h.kind, 1000);
            }
            h.sent = true;
            let _ = self.poll.registry().reregister(
                &mut h.sock,
                Token(HTTP_TOKEN_BASE + id),
                Interest::READABLE,
            );
            self.http.insert(id, h);
            return;
        }
        let done = loop {
            match h.sock.read(chunk) {
                Ok(0) => break true,
                Ok(n) => h.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if !done {
            self.http.insert(id, h);
            return;
        }
        let _ = self.poll.registry().deregister(&mut h.sock);
        self.http_done(h);
    }

    fn http_done(&mut self, h: Http) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(&h.buf) else {
            self.report.status.prefetch_errors += 1;
            return self.http_retry(h.dev, h.kind, 1000);
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .and_then(|x| std::str::from_utf8(x.value).ok())
                .map(str::to_string)
        };
        let body = &h.buf[n..];
        match (h.kind, status) {
            (_, 503) => {
                self.report.status.prefetch_shed += 1;
                let ra: u64 = header("retry-after")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                self.http_retry(h.dev, h.kind, ra * 1000);
            }
            (HttpKind::Schedule, 200) => {
                let at = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["prefetch_at"].as_u64());
                let Some(at) = at else {
                    self.report.status.prefetch_errors += 1;
                    return self.http_retry(h.dev, h.kind, 1000);
                };
                let wait = at.saturating_sub(unix_us() / 1000);
                self.timers.push(Reverse((
                    Instant::now() + Duration::from_millis(wait),
                    Timer::Prefetch(h.dev),
                )));
            }
            (HttpKind::Map, 200) | (HttpKind::Map, 304) => {
                let d = &mut self.devs[h.dev as usize];
                if status == 200 {
                    let stages = serde_json::from_slice::<serde_json::Value>(body).ok();
                    let Some(obj) = stages.as_ref().and_then(|v| v["stages"].as_object()) else {
                        self.report.status.prefetch_errors += 1;
                        return self.http_retry(h.dev, h.kind, 1000);
                    };
                    let mut map = 0u64;
                    for k in obj.keys() {
                        if let Some(b) = self.spec.keys.iter().position(|x| x == k) {
                            map |= 1 << b;
                        }
                    }
                    d.map = map;
                    d.etag = header("etag");
                } else {
                    self.report.not_modified += 1;
                }
                // Honour the jittered max-age: refetch (conditionally) when it runs out.
                let max_age: Option<u64> = header("cache-control").and_then(|v| {
                    v.split(',').find_map(|p| {
                        p.trim()
                            .strip_prefix("max-age=")
                            .and_then(|x| x.parse().ok())
                    })
                });
                if let Some(s) = max_age {
                    self.timers.push(Reverse((
                        Instant::now() + Duration::from_secs(s.max(1)),
                        Timer::Prefetch(h.dev),
                    )));
                }
            }
            _ => {
                self.report.status.prefetch_errors += 1;
                self.http_retry(h.dev, h.kind, 2000);
            }
        }
    }
}

/// Reads what is there; `Err` when the connection is gone.
fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> Result<(), ()> {
    loop {
        match s.read(chunk) {
            Ok(0) => return Err(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}
