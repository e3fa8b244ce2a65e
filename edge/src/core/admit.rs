//! Admission, shared by both transports: a WebSocket upgrade request and a QUIC hello line both
//! become a [`Subscribe`], which goes through one path (drain and capacity checks, token,
//! event slots, subscription, catch-up). Only the answer differs: `101` or an HTTP refusal for
//! WebSocket, `{"ok":true}` or `{"ok":false,...}` for QUIC.

use cue_common::cue::EventName;
use cue_common::keys::Ticket as AdmitTicket;
use cue_common::token::TokenError;
use rand::Rng;

use super::conn::{State, Sub};
use super::{Closing, Io, Now, ShardCore};
use crate::encoded::{Encoding, Transport};
use crate::quic::hello::{parse_hello, scan_line, Scan};
use crate::stats::CloseReason;
use crate::ws::handshake::{write_accept, write_refusal, Request, Ticket};
use crate::ws::query::{parse_subscribe, Subscribe};

/// Why a device was not admitted.
#[derive(Debug)]
pub(super) struct Refusal {
    /// HTTP status (WebSocket response; `status` in the QUIC refusal line).
    pub status: u16,
    /// What is wrong, for the device's developer.
    pub reason: String,
    /// Jittered Retry-After, seconds (503 only).
    pub retry: Option<u32>,
}

impl Refusal {
    pub(super) fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            retry: None,
        }
    }
}

impl ShardCore {
    /// A WebSocket upgrade request.
    pub(super) fn upgrade(&mut self, idx: u32, req: Request, now: Now, io: &mut impl Io) {
        if req.path != "/v1/subscribe" {
            return self.refuse(
                idx,
                Refusal::new(404, "no such path; use /v1/subscribe"),
                io,
            );
        }
        if let Err(r) = self.gate(false) {
            return self.refuse(idx, r, io);
        }
        let sub = match parse_subscribe(&req.query, &self.cfg.query) {
            Ok(s) => s,
            Err(e) => return self.refuse(idx, Refusal::new(400, e.to_string()), io),
        };
        match self.admit(idx, &sub, req.bearer.as_deref(), req.ticket.as_deref(), now) {
            Ok(ticket) => {
                self.out.clear();
                let cookie = ticket.as_ref().map(|t| Ticket {
                    value: &t.value,
                    max_age_s: t.exp.saturating_sub(now.unix_ms / 1000),
                });
                write_accept(&req.key, cookie.as_ref(), &mut self.out);
                self.accepted(idx, io);
            }
            Err(r) => self.refuse(idx, r, io),
        }
    }

    /// Input on a QUIC device's stream: the hello line while handshaking, then nothing (bytes
    /// after the hello are read and dropped: devices have nothing to say). Returns bytes used.
    pub(super) fn process_quic(
        &mut self,
        idx: u32,
        buf: &[u8],
        now: Now,
        io: &mut impl Io,
    ) -> usize {
        let Some(c) = self.conns.at(idx) else {
            return buf.len();
        };
        if c.state != State::Handshaking {
            return buf.len();
        }
        let line = match scan_line(buf, self.cfg.hello.max_len) {
            Ok(Scan::Incomplete) => return 0,
            Ok(Scan::Line(n)) => &buf[..n],
            Err(e) => {
                self.refuse(idx, Refusal::new(400, e.to_string()), io);
                return buf.len();
            }
        };
        let sub = match parse_hello(line, &self.cfg.hello) {
            Ok(s) => s,
            Err(e) => {
                self.refuse(idx, Refusal::new(400, e.to_string()), io);
                return buf.len();
            }
        };
        match self.admit(idx, &sub, None, sub.ticket.as_deref(), now) {
            Ok(ticket) => {
                self.out.clear();
                match ticket {
                    // Tickets are URL-safe base64: nothing to escape.
                    Some(t) => {
                        self.out.extend_from_slice(b"{\"ok\":true,\"ticket\":\"");
                        self.out.extend_from_slice(t.value.as_bytes());
                        self.out.extend_from_slice(b"\"}\n");
                    }
                    None => self.out.extend_from_slice(b"{\"ok\":true}\n"),
                }
                self.accepted(idx, io);
            }
            Err(r) => self.refuse(idx, r, io),
        }
        buf.len()
    }

    /// Draining (QUIC) or full: 503 with a jittered Retry-After, before anything else is
    /// looked at. A WebSocket device accepted before a drain closed the listeners is admitted
    /// and closed with the others over the window: refused, it would be one more device to
    /// come back, while its reconnect (to the successor on the port) is what the drain wants.
    /// QUIC keeps its shared UDP socket while draining, so new QUIC devices can still land
    /// here: they are refused.
    fn gate(&mut self, quic: bool) -> Result<(), Refusal> {
        if quic && self.drain.is_some() {
            return Err(self.unavailable("edge draining"));
        }
        if self.open >= self.cfg.max_connections {
            return Err(self.unavailable("edge full"));
        }
        Ok(())
    }

    /// The shared admission: drain and capacity, token, event slots, then the device is open
    /// and subscribed (the caller sends the transport's acceptance, with the admission ticket
    /// returned if any, then the catch-up).
    fn admit(
        &mut self,
        idx: u32,
        sub: &Subscribe,
        bearer: Option<&str>,
        ticket: Option<&str>,
        now: Now,
    ) -> Result<Option<AdmitTicket>, Refusal> {
        let quic = self.conns.at(idx).expect("caller checked").transport() == Transport::Quic;
        self.gate(quic)?;
        let mut issued = None;
        // The token's tenant: the device's events are that tenant's (bare names in the URL
        // or hello and in the token, qualified here). Without auth, the default tenant.
        let mut tenant: Option<String> = None;
        if let Some(keys) = &self.cfg.auth {
            let token = bearer.or(sub.token.as_deref()).unwrap_or("");
            let evs = sub.events.iter().map(|(e, _)| e.as_str());
            let c = &mut self.admit_cache;
            let before = (c.hits, c.ticket_hits, c.tickets_refused);
            let r = c.admit_device(keys, token, ticket, now.unix_ms / 1000, evs);
            self.stats.token_cache_hits.add(c.hits - before.0);
            self.stats.ticket_hits.add(c.ticket_hits - before.1);
            self.stats.tickets_refused.add(c.tickets_refused - before.2);
            match r {
                Ok((t, tn)) => (issued, tenant) = (t, tn),
                Err(Ok(ev)) => {
                    return Err(Refusal::new(
                        403,
                        format!("token does not allow event {ev}"),
                    ))
                }
                Err(Err(TokenError::Missing)) => return Err(Refusal::new(401, "missing token")),
                Err(Err(e)) => return Err(Refusal::new(401, e.to_string())),
            }
        }
        if let Some(scope) = &self.cfg.tenants {
            if !scope.carries(tenant.as_deref()) {
                return Err(Refusal::new(
                    403,
                    format!(
                        "this edge does not carry tenant {}",
                        tenant.as_deref().unwrap_or("(default)")
                    ),
                ));
            }
        }
        let names: Vec<EventName> = sub
            .events
            .iter()
            .map(|(ev, _)| {
                EventName::qualify(tenant.as_deref(), ev)
                    .expect("parser validated the event, the token its tenant")
            })
            .collect();
        // The tenant's quotas here: its devices, and the events it follows with this one.
        let new_events = names
            .iter()
            .filter(|n| {
                self.by_name
                    .get(*n)
                    .is_none_or(|&i| self.slots[i as usize].subscribers.is_empty())
            })
            .count();
        let ti = {
            let mut t = self.stats.tenants.lock().expect("tenants lock");
            let ti = t.index(tenant.as_deref());
            if let Err((kind, limit)) = t.admit(ti, new_events) {
                let name = t.entries[ti as usize].name.clone();
                drop(t);
                return Err(Refusal {
                    retry: Some(self.retry_after()),
                    ..Refusal::new(
                        429,
                        format!(
                            "tenant {name} is at its quota {} ({limit} in this shard)",
                            kind.as_str()
                        ),
                    )
                });
            }
            ti
        };
        // Resolve (or create) the event slots before touching the connection.
        let mut subs = Vec::with_capacity(sub.events.len());
        let mut taken: Vec<u16> = Vec::with_capacity(sub.events.len());
        for (name, (_, since)) in names.iter().zip(&sub.events) {
            let Some(slot) = self.slot_for_device(name, &taken) else {
                return Err(self.unavailable("edge has too many events"));
            };
            taken.push(slot);
            subs.push(Sub {
                missed: 0,
                slot,
                pos: 0,
                seq: since.unwrap_or(0),
            });
        }
        let mut followed = 0;
        for s in &mut subs {
            let slot = &mut self.slots[s.slot as usize];
            if slot.subscribers.is_empty() {
                followed += 1;
            }
            slot.tenant = ti;
            let list = &mut slot.subscribers;
            s.pos = list.len() as u32;
            list.push(idx);
        }
        {
            let mut t = self.stats.tenants.lock().expect("tenants lock");
            let e = &mut t.entries[ti as usize];
            e.devices += 1;
            e.events += followed;
        }
        let secs = self.secs(now.mono);
        let c = self.conns.at(idx).expect("caller checked");
        c.subs = subs.into_boxed_slice();
        c.format = Encoding::of(c.transport(), sub.format);
        c.state = State::Open;
        // Liveness (pings) counts from the admission.
        c.last_seen = secs;
        let quic = c.transport() == Transport::Quic;
        self.open += 1;
        if let Some(d) = self.drain.as_mut() {
            // Closed over the window with the others.
            d.total += 1;
        }
        self.handshake_done();
        self.stats.connections.add(1);
        self.stats.upgrades.inc();
        if quic {
            self.stats.quic_sessions.add(1);
        }
        Ok(issued)
    }

    /// Sends the acceptance in `self.out`, then the catch-up: the current cue of every event the
    /// device is behind on.
    fn accepted(&mut self, idx: u32, io: &mut impl Io) {
        let out = std::mem::take(&mut self.out);
        self.write_control(idx, &out, io);
        self.out = out;
        self.flush(idx, io);
    }

    fn unavailable(&mut self, reason: &str) -> Refusal {
        Refusal {
            retry: Some(self.retry_after()),
            ..Refusal::new(503, reason)
        }
    }

    /// A jittered Retry-After for the driver's own 503s (handshake shedding).
    pub fn retry_hint(&mut self) -> u32 {
        self.retry_after()
    }

    pub(super) fn retry_after(&mut self) -> u32 {
        let (lo, hi) = self.cfg.retry_after_s;
        self.rng.gen_range(lo..=hi.max(lo))
    }

    /// Answers a refusal in the device's transport and closes the connection.
    pub(super) fn refuse(&mut self, idx: u32, r: Refusal, io: &mut impl Io) {
        self.stats.refuse(r.status);
        self.out.clear();
        let Some(c) = self.conns.at(idx) else { return };
        match c.transport() {
            Transport::Ws => write_refusal(r.status, &r.reason, r.retry, &mut self.out),
            Transport::Quic => write_quic_refusal(&r, &mut self.out),
        }
        // Best effort: the answer fits any fresh socket buffer or stream window; the connection
        // closes next (QUIC: after the line is delivered).
        let _ = io.send(c.handle(), &self.out);
        self.to_close.push(Closing {
            code: r.status,
            ..Closing::new(idx, CloseReason::Refused)
        });
    }
}

/// `{"ok":false,"status":S,"error":"..."[,"retry_after":N]}` and a newline.
fn write_quic_refusal(r: &Refusal, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail; serde_json escapes the reason.
    let _ = write!(out, "{{\"ok\":false,\"status\":{},\"error\":", r.status);
    let _ = serde_json::to_writer(&mut *out, &r.reason);
    if let Some(s) = r.retry {
        let _ = write!(out, ",\"retry_after\":{s}");
    }
    out.extend_from_slice(b"}\n");
}
