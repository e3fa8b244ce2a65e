//! Delivery: a new cue written to every unblocked subscriber in slices of `fanout_slice`
//! devices (a newer cue of the event ends an older one's fanout), control frames and
//! handshake bytes queued behind a partial write, and the flush that gives a drained device the
//! current cue of every event it is behind on (conflation).

use std::sync::Arc;

use super::conn::{Conn, State, BLOCKED};
use super::{BatchSend, Closing, ConnKey, Fanout, Finished, Io, Sent, ShardCore, Sweep};
use crate::encoded::EncodedCue;
use crate::encoded::Transport;
use crate::stats::{CloseReason, ShardStats};

impl ShardCore {
    /// A new cue from the relay link: keep it as current and start writing it to every device
    /// that follows its event and is not blocked; the first slice goes out now when no other
    /// fanout is in progress ([`ShardCore::fanout`] does the rest, most urgent first). A fanout
    /// of an older cue of the same event still in progress ends here: the devices it had not
    /// reached get only this one.
    /// The driver times the calls and records fanout time (the core reads no clock).
    pub fn on_cue(&mut self, cue: Arc<EncodedCue>, io: &mut impl Io) -> Fanout {
        // The first slice now only when nothing else is being fanned out; else the next turn
        // takes the most urgent fanout first. So a flood of cues is taken in (each one
        // replacing its event's fanout) as fast as it comes, and a critical cue behind it in
        // the channel is not kept waiting one slice per cue ahead of it.
        if self.take_cue(cue) && self.sweeps.len() == 1 {
            self.fanout(io)
        } else {
            Fanout::default()
        }
    }

    /// A new cue from the relay link, kept as current and queued for fanout in its class's
    /// place, without writing to any device yet; true when a fanout was queued (the cue is
    /// newer than the event's current one and the event has a slot). The driver takes in every
    /// cue waiting in its channel this way before it runs a slice, so the most urgent of them
    /// goes first and [`ShardCore::fanout_backlog`] counts all of them.
    pub fn take_cue(&mut self, cue: Arc<EncodedCue>) -> bool {
        self.take_cue_at(cue, 0)
    }

    /// [`ShardCore::take_cue`], with the time the driver handed the cue in (Unix microseconds)
    /// kept for the fanout's [`Finished`] record.
    pub fn take_cue_at(&mut self, cue: Arc<EncodedCue>, taken_us: u64) -> bool {
        self.stats.cues_in.inc();
        let Some(slot_idx) = self.slot_for_cue(cue.cue.event()) else {
            // No device here follows it and the table is full: the link keeps it for catch-up.
            self.stats.cues_unfollowed.inc();
            return false;
        };
        let slot = &mut self.slots[slot_idx as usize];
        if slot
            .current
            .as_ref()
            .is_some_and(|c| c.cue.seq() >= cue.cue.seq())
        {
            return false;
        }
        slot.current = Some(cue.clone());
        let mut devices = match self.sweeps.iter().position(|s| s.slot == slot_idx) {
            Some(i) => {
                self.stats.fanout_superseded.inc();
                self.sweeps.remove(i).expect("position is in range").devices
            }
            None => std::mem::take(&mut self.spare),
        };
        devices.clear();
        devices.extend_from_slice(&slot.subscribers);
        // Critical fanouts run before normal ones, background ones last; oldest first within a
        // class.
        let at = self
            .sweeps
            .iter()
            .position(|s| s.cue.class > cue.class)
            .unwrap_or(self.sweeps.len());
        self.sweeps.insert(
            at,
            Sweep {
                slot: slot_idx,
                cue,
                devices,
                next: 0,
                taken_us,
                reached: 0,
            },
        );
        true
    }

    /// Devices the fanouts in progress have yet to visit.
    pub fn fanout_backlog(&self) -> usize {
        self.sweeps.iter().map(|s| s.devices.len() - s.next).sum()
    }

    /// True while a fanout has devices left to visit.
    pub fn fanout_pending(&self) -> bool {
        !self.sweeps.is_empty()
    }

    /// Visits up to `fanout_slice` devices of the fanouts in progress, most urgent class first,
    /// oldest first within a class.
    pub fn fanout(&mut self, io: &mut impl Io) -> Fanout {
        let mut budget = self.cfg.fanout_slice.max(1);
        let mut fanout = Fanout::default();
        while budget > 0 {
            let Some(mut sw) = self.sweeps.pop_front() else {
                break;
            };
            let end = (sw.next + budget).min(sw.devices.len());
            let seq = sw.cue.cue.seq();
            let before = fanout.ws + fanout.quic;
            // First who gets it now, then one batch of sends, then what each send did.
            let mut batch = std::mem::take(&mut self.batch);
            let mut batch_of = std::mem::take(&mut self.batch_of);
            batch.clear();
            batch_of.clear();
            for &idx in &sw.devices[sw.next..end] {
                let Some(c) = self.conns.at(idx) else {
                    continue;
                };
                if c.state != State::Open {
                    continue;
                }
                // A device gone since may have left its index to another one: only a device
                // following this slot's event now is written to.
                let Some(si) = c.subs.iter().position(|s| s.slot == sw.slot) else {
                    continue;
                };
                if c.subs[si].seq >= seq {
                    continue;
                }
                if c.flags & BLOCKED != 0 {
                    // It gets the event's current cue when its socket drains.
                    c.subs[si].missed = c.subs[si].missed.saturating_add(1);
                    continue;
                }
                batch.push(BatchSend {
                    link: c.handle(),
                    encoding: c.format,
                    result: Sent::Closed,
                });
                batch_of.push((idx, si as u32));
            }
            if !batch.is_empty() {
                io.send_cue_batch(&sw.cue, &mut batch);
            }
            for (b, &(idx, si)) in batch.iter().zip(&batch_of) {
                let si = si as usize;
                let Some(c) = self.conns.at(idx) else {
                    continue;
                };
                let frame = sw.cue.frame(c.format);
                match written(c, idx, frame, b.result, io, &self.stats) {
                    Written::Whole | Written::Part => {
                        c.subs[si].seq = seq;
                        match c.transport() {
                            Transport::Ws => fanout.ws += 1,
                            Transport::Quic => fanout.quic += 1,
                        }
                    }
                    Written::Blocked => {
                        c.subs[si].missed = c.subs[si].missed.saturating_add(1);
                    }
                    Written::Gone => self.to_close.push(Closing::new(idx, CloseReason::IoError)),
                }
            }
            self.batch = batch;
            self.batch_of = batch_of;
            let n = fanout.ws + fanout.quic - before;
            sw.reached += n;
            if n > 0 {
                let tenant = self.slots[sw.slot as usize].tenant;
                let mut t = self.stats.tenants.lock().expect("tenants lock");
                t.entries[tenant as usize].deliveries += n;
            }
            budget -= end - sw.next;
            sw.next = end;
            if sw.next < sw.devices.len() {
                self.sweeps.push_front(sw);
            } else {
                self.finished.push(Finished {
                    event: sw.cue.cue.event().clone(),
                    seq,
                    published_ms: sw.cue.cue.ts(),
                    class: sw.cue.class,
                    taken_us: sw.taken_us,
                    followers: sw.devices.len() as u64,
                    reached: sw.reached,
                });
                self.spare = std::mem::take(&mut sw.devices);
            }
        }
        self.stats.deliveries.add(fanout.ws + fanout.quic);
        self.stats.fanout_deliveries.add(fanout.ws);
        self.stats.quic_deliveries.add(fanout.quic);
        self.close_pending(io);
        fanout
    }

    /// Hands the cues whose fanout finished since the last call to `f`.
    pub fn take_finished(&mut self, mut f: impl FnMut(Finished)) {
        for done in self.finished.drain(..) {
            f(done);
        }
    }

    /// Writes a control frame or handshake bytes; queues what the socket does not take.
    pub(super) fn write_control(&mut self, idx: u32, bytes: &[u8], io: &mut impl Io) {
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
    pub(super) fn flush(&mut self, idx: u32, io: &mut impl Io) {
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
            // Of the cues the fanouts skipped while it was blocked, this one (the current)
            // reaches it; the others it never gets. (Seqs are not consecutive: they follow the
            // publish time, so they cannot be counted from the seqs.)
            let skipped = u64::from(sub.missed.saturating_sub(1));
            match write_cue(c, idx, cur.frame(c.format), io, &self.stats) {
                Written::Whole => {
                    c.subs[i].seq = cur.cue.seq();
                    c.subs[i].missed = 0;
                    delivered += 1;
                    self.stats.conflated.add(skipped);
                }
                Written::Part => {
                    // The rest of this frame must go out before anything else.
                    c.subs[i].seq = cur.cue.seq();
                    c.subs[i].missed = 0;
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
    let sent = io.send(c.handle(), frame);
    written(c, idx, frame, sent, io, stats)
}

/// What a send of `frame` to an unblocked device did, and its consequences: the unsent rest of
/// a partial write kept (so the frame stays whole on the wire) and the device blocked until its
/// socket drains.
fn written(
    c: &mut Conn,
    idx: u32,
    frame: &[u8],
    sent: Sent,
    io: &mut impl Io,
    stats: &ShardStats,
) -> Written {
    match sent {
        Sent::Took(n) if n >= frame.len() => Written::Whole,
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
