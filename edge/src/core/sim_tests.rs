//! Deterministic whole-system test, in memory and in milliseconds: one origin, two edges (two
//! shards each), thousands of devices; cues published while devices drop and come back, sockets
//! block, relay links drop, and one edge dies and restarts empty. Relay traffic goes through the
//! real relay codec and catch-up; device traffic through real WebSocket bytes. At the end every
//! device holds the newest cue of every event it follows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cue_common::cue::{Cue, EventName};
use cue_common::relay::{self, Frame, Newest};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::testkit::{connect, pump_writable, Clock, Device, FakeIo};
use super::{CoreConfig, ShardCore};
use crate::encoded::EncodedCue;
use crate::stats::ShardStats;

const EVENTS: [&str; 3] = ["fight", "halftime", "pre-show"];

struct Edge {
    newest: Newest,
    shards: Vec<(ShardCore, FakeIo)>,
    /// Relay bytes sent by the origin, not yet read by the edge; `None` while unlinked.
    inbox: Option<Vec<u8>>,
}

impl Edge {
    fn new(clock: &Clock, seed: u64) -> Self {
        let shards = (0..2)
            .map(|i| {
                let core = ShardCore::new(
                    CoreConfig::default(),
                    Arc::new(ShardStats::default()),
                    SmallRng::seed_from_u64(seed + i),
                    clock.base,
                );
                (core, FakeIo::default())
            })
            .collect();
        Self {
            newest: Newest::new(),
            shards,
            inbox: None,
        }
    }

    /// Reads up to `max` bytes of relay input, decoding whole frames only (the rest waits).
    fn read_relay(&mut self, max: usize) {
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        let mut used = 0;
        while let Some((frame, n)) = relay::decode(&inbox[used..]).expect("valid relay frames") {
            if used + n > max {
                break;
            }
            used += n;
            if let Frame::Cue(cue) = frame {
                if self.newest.offer(&cue) {
                    let enc = Arc::new(EncodedCue::new(cue));
                    for (core, io) in &mut self.shards {
                        core.on_cue(enc.clone(), io);
                    }
                }
            }
        }
        inbox.drain(..used);
    }
}

struct Origin {
    latest: HashMap<EventName, Cue>,
}

impl Origin {
    fn publish(&mut self, event: &str, ts: u64, edges: &mut [Edge]) {
        let ev = EventName::new(event).unwrap();
        let seq = self.latest.get(&ev).map_or(0, |c| c.seq()) + 1;
        let cue = Cue::new(event, &format!("stage-{seq}"), seq, ts).unwrap();
        self.latest.insert(ev, cue.clone());
        for e in edges.iter_mut() {
            if let Some(inbox) = e.inbox.as_mut() {
                relay::encode(&Frame::Cue(cue.clone()), inbox);
            }
        }
    }

    /// An edge (re)links: HELLO with what it holds, catch-up into its inbox.
    fn link(&self, edge: &mut Edge) {
        let mut hello = Vec::new();
        relay::encode(
            &Frame::Hello {
                version: cue_common::relay::VERSION,
                edge_id: "e".into(),
                since: edge.newest.since(),
            },
            &mut hello,
        );
        let Some((Frame::Hello { since, .. }, _)) = relay::decode(&hello).unwrap() else {
            unreachable!()
        };
        let since: HashMap<_, _> = since.into_iter().collect();
        let mut inbox = Vec::new();
        for c in relay::catch_up(self.latest.values(), &since) {
            relay::encode(&Frame::Cue(c), &mut inbox);
        }
        edge.inbox = Some(inbox);
    }
}

struct Dev {
    events: Vec<&'static str>,
    at: Option<(usize, usize, Device)>,
    /// What the device keeps across reconnects (its prefetched state and newest seqs).
    held: HashMap<String, u64>,
    /// `held` when its current connection was made (what it sent as `since=`).
    since_at_attach: HashMap<String, u64>,
}

fn query(d: &Dev) -> String {
    let since: Vec<String> = d
        .events
        .iter()
        .filter_map(|e| d.held.get(*e).map(|s| format!("{e}:{s}")))
        .collect();
    let mut q = format!("/v1/subscribe?events={}", d.events.join(","));
    if !since.is_empty() {
        q.push_str("&since=");
        q.push_str(&since.join(","));
    }
    q
}

fn sync_held(d: &mut Dev, edges: &mut [Edge]) {
    if let Some((e, s, dev)) = d.at.as_mut() {
        dev.read(&mut edges[*e].shards[*s].1);
        for (ev, (seq, _)) in &dev.newest {
            let h = d.held.entry(ev.clone()).or_insert(0);
            *h = (*h).max(*seq);
        }
    }
}

fn attach(d: &mut Dev, fd: i32, edges: &mut [Edge], rng: &mut SmallRng, clock: &Clock) {
    let e = rng.gen_range(0..edges.len());
    let s = rng.gen_range(0..2);
    let (core, io) = &mut edges[e].shards[s];
    let dev = connect(core, io, clock, fd, &query(d), None);
    assert_eq!(dev.status, Some(101));
    d.since_at_attach = d.held.clone();
    d.at = Some((e, s, dev));
}

#[test]
fn one_origin_two_edges_thousands_of_devices_with_faults() {
    let mut rng = SmallRng::seed_from_u64(0xC0E);
    let mut clock = Clock::new();
    let mut origin = Origin {
        latest: HashMap::new(),
    };
    let mut edges = vec![Edge::new(&clock, 1), Edge::new(&clock, 3)];
    for e in &mut edges {
        origin.link(e);
    }
    let mut next_fd = 1000;
    let mut devs: Vec<Dev> = (0..3000)
        .map(|i| {
            let n = 1 + i % 3;
            Dev {
                events: EVENTS[..n].to_vec(),
                at: None,
                held: HashMap::new(),
                since_at_attach: HashMap::new(),
            }
        })
        .collect();
    for d in &mut devs {
        next_fd += 1;
        attach(d, next_fd, &mut edges, &mut rng, &clock);
    }
    let mut published = 0;
    for step in 0..400 {
        clock.advance(Duration::from_millis(10));
        // Publish on a random event most steps.
        if rng.gen_bool(0.6) {
            let ev = EVENTS[rng.gen_range(0..EVENTS.len())];
            origin.publish(ev, clock.now().unix_ms, &mut edges);
            published += 1;
        }
        // Edges read part of their relay input (links are not instantaneous).
        for e in &mut edges {
            let max = rng.gen_range(0..400);
            e.read_relay(max);
        }
        // Some devices drop abruptly and reconnect later; some sockets block or drain.
        for _ in 0..20 {
            let i = rng.gen_range(0..devs.len());
            let d = &mut devs[i];
            match (rng.gen_range(0..4), d.at.is_some()) {
                (0, true) => {
                    sync_held(d, &mut edges);
                    let (e, s, dev) = d.at.take().unwrap();
                    let (core, io) = &mut edges[e].shards[s];
                    core.on_eof(dev.key.unwrap(), io);
                }
                (0, false) | (1, false) => {
                    next_fd += 1;
                    attach(d, next_fd, &mut edges, &mut rng, &clock);
                }
                (1, true) => {
                    let (e, s, dev) = d.at.as_ref().unwrap();
                    let room = rng.gen_range(0..60);
                    edges[*e].shards[*s].1.peers.get_mut(&dev.fd).unwrap().room = Some(room);
                }
                _ => {
                    if let Some((e, s, dev)) = d.at.as_ref() {
                        edges[*e].shards[*s].1.peers.get_mut(&dev.fd).unwrap().room = None;
                    }
                }
            }
        }
        for e in &mut edges {
            for (core, io) in &mut e.shards {
                pump_writable(core, io);
                core.tick(clock.now(), Duration::from_millis(10), io);
            }
        }
        // Faults: a relay link drops and re-links (resuming from what the edge holds); edge 1
        // dies (every device on it loses its connection) and restarts empty, and a cue is
        // published while it is down.
        if step == 100 {
            edges[0].inbox = None;
        }
        if step == 120 {
            origin.link(&mut edges[0]);
        }
        if step == 200 {
            edges[1] = Edge::new(&clock, 5);
            for d in devs
                .iter_mut()
                .filter(|d| d.at.as_ref().is_some_and(|a| a.0 == 1))
            {
                d.at = None;
            }
            origin.publish("fight", clock.now().unix_ms, &mut edges);
            published += 1;
        }
        if step == 230 {
            origin.link(&mut edges[1]);
        }
        for d in &mut devs {
            sync_held(d, &mut edges);
        }
    }
    // Heal: every link up and drained, every device connected and unblocked.
    for e in &mut edges {
        if e.inbox.is_none() {
            origin.link(e);
        }
        e.read_relay(usize::MAX);
        for (_, io) in &mut e.shards {
            for p in io.peers.values_mut() {
                p.room = None;
            }
        }
    }
    for d in &mut devs {
        if d.at.is_none() {
            next_fd += 1;
            attach(d, next_fd, &mut edges, &mut rng, &clock);
        }
    }
    for e in &mut edges {
        for (core, io) in &mut e.shards {
            pump_writable(core, io);
        }
    }
    assert!(published > 200, "{published}");
    let mut checked = 0;
    for (i, d) in devs.iter_mut().enumerate() {
        sync_held(d, &mut edges);
        for ev in &d.events {
            let want = origin
                .latest
                .get(&EventName::new(ev).unwrap())
                .map_or(0, |c| c.seq());
            assert_eq!(
                d.held.get(*ev).copied().unwrap_or(0),
                want,
                "device {i} event {ev}"
            );
            // The connection itself delivered the newest, unless the device already had it
            // when it connected (then `since=` rightly kept the edge from sending it again).
            let (_, _, dev) = d.at.as_ref().unwrap();
            let had = d.since_at_attach.get(*ev).copied().unwrap_or(0);
            assert!(
                dev.seq(ev) == want || (had == want && dev.seq(ev) == 0),
                "device {i} event {ev}: connection at {}, came with {had}, newest {want}",
                dev.seq(ev)
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 1000 * (1 + 2 + 3));
}
