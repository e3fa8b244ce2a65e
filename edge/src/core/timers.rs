//! Timers of the shard core: the sweep that finds handshake, close and ping timeouts and pings
//! idle devices, and the drain that closes sessions at an even rate over a window.

use std::time::Duration;

use rand::Rng;

use super::conn::{State, PING_OUT};
use super::{Closing, Drain, Io, Now, ShardCore};
use crate::encoded::Transport;
use crate::stats::CloseReason;
use crate::ws::frame::{encode_close, encode_frame, Opcode};

impl ShardCore {
    /// Timers: handshake and close timeouts, pings for idle devices, drain progress. Visits a
    /// share of the slab per call so a full sweep takes about `ping_interval` at `tick` spacing.
    pub fn tick(&mut self, now: Now, tick: Duration, io: &mut impl Io) {
        let secs = self.secs(now.mono);
        // Handshake deadlines, every tick: a slow sender is closed at its deadline, not when
        // the sweep next passes it.
        while let Some(&(key, due)) = self.handshake_deadlines.front() {
            if due > secs {
                break;
            }
            self.handshake_deadlines.pop_front();
            if self
                .conns
                .get_mut(key)
                .is_some_and(|c| c.state == State::Handshaking)
            {
                self.to_close
                    .push(Closing::new(key.idx(), CloseReason::HandshakeTimeout));
            }
        }
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

    /// Ends a drain: new upgrades are admitted again and no more sessions are closed (those
    /// already closed stay closed).
    pub fn stop_drain(&mut self) {
        self.drain = None;
    }

    /// True when draining and no session is left.
    pub fn drained(&self) -> bool {
        self.drain.is_some() && self.conns.is_empty()
    }

    pub(super) fn check_timers(&mut self, idx: u32, secs: u32, io: &mut impl Io) {
        let Some(c) = self.conns.at(idx) else { return };
        let age = secs.saturating_sub(c.last_seen) as u64;
        match c.state {
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

    pub(super) fn drain_step(&mut self, now: Now, io: &mut impl Io) {
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
            let tenant = c.subs.first().map(|s| self.slots[s.slot as usize].tenant);
            self.stats.tenant_device_left(tenant);
            self.stats.close(CloseReason::Drain);
            self.unsubscribe(idx);
            let out = std::mem::take(&mut self.out);
            self.write_control(idx, &out, io);
            self.out = out;
        }
    }
}
