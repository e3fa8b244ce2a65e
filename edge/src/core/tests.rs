use std::sync::Arc;
use std::time::Duration;

use cue_common::cue::Cue;
use cue_common::token::TokenKeys;
use proptest::prelude::*;
use rand::SeedableRng;

use super::testkit::{client_frame, connect, pump_writable, Clock, FakeIo};
use super::{CoreConfig, ShardCore};
use crate::encoded::EncodedCue;
use crate::stats::{CloseReason, ShardStats};
use crate::ws::frame::Opcode;

fn core_with(cfg: CoreConfig, clock: &Clock) -> ShardCore {
    ShardCore::new(
        cfg,
        Arc::new(ShardStats::default()),
        rand::rngs::SmallRng::seed_from_u64(7),
        clock.base,
    )
}

/// `n` devices on fds `fd0..`, each subscribed with `path_and_query`.
fn devices(
    c: &mut ShardCore,
    io: &mut FakeIo,
    clock: &Clock,
    n: i32,
    fd0: i32,
    path_and_query: &str,
) -> Vec<super::testkit::Device> {
    (0..n)
        .map(|i| connect(c, io, clock, fd0 + i, path_and_query, None))
        .collect()
}

fn core(clock: &Clock) -> ShardCore {
    core_with(CoreConfig::default(), clock)
}

fn cue(event: &str, key: &str, seq: u64) -> Arc<EncodedCue> {
    Arc::new(EncodedCue::new(
        Cue::new(event, key, seq, 1_700_000_000_000 + seq).unwrap(),
    ))
}

#[test]
fn upgrade_then_live_cues_in_both_formats() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut j = connect(
        &mut c,
        &mut io,
        &clock,
        10,
        "/v1/subscribe?events=fight",
        None,
    );
    let mut b = connect(
        &mut c,
        &mut io,
        &clock,
        11,
        "/v1/subscribe?events=fight&format=binary",
        None,
    );
    assert_eq!((j.status, b.status), (Some(101), Some(101)));
    assert!(j.cues.is_empty(), "no current cue yet, so no catch-up");
    c.on_cue(cue("fight", "round-1", 1), &mut io);
    c.on_cue(cue("fight", "round-2", 2), &mut io);
    j.read(&mut io);
    b.read(&mut io);
    assert_eq!(j.cues, vec![("fight".into(), 1), ("fight".into(), 2)]);
    assert_eq!(b.cues, j.cues);
    assert_eq!(j.newest["fight"].1, "round-2");
    assert_eq!(c.stats.deliveries.get(), 4);
    assert_eq!(c.open_sessions(), 2);
}

#[test]
fn catch_up_honours_since() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    c.on_cue(cue("a", "k5", 5), &mut io);
    c.on_cue(cue("b", "k2", 2), &mut io);
    let d = connect(
        &mut c,
        &mut io,
        &clock,
        10,
        "/v1/subscribe?events=a,b&since=a:5,b:1",
        None,
    );
    assert_eq!(
        d.cues,
        vec![("b".into(), 2)],
        "a is current at 5, b is behind"
    );
    let d2 = connect(&mut c, &mut io, &clock, 11, "/v1/subscribe?events=a", None);
    assert_eq!(
        d2.cues,
        vec![("a".into(), 5)],
        "no since: gets the current cue"
    );
    // A duplicate or older cue from the relay is ignored.
    c.on_cue(cue("a", "old", 4), &mut io);
    c.on_cue(cue("a", "dup", 5), &mut io);
    let mut d2 = d2;
    d2.read(&mut io);
    assert_eq!(d2.cues.len(), 1);
}

#[test]
fn auth_refusals() {
    let clock = Clock::new();
    let keys = TokenKeys::new(&[9u8; 32]).unwrap();
    let now_s = clock.now().unix_ms / 1000;
    let cfg = CoreConfig {
        auth: Some(cue_common::keys::Verifier::Secret(Box::new(keys.clone()))),
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let good = keys.mint_device("d1", &["fight".into()], now_s, 60);
    let expired = keys.mint_device("d1", &["fight".into()], now_s - 120, 60);
    let other = TokenKeys::new(&[8u8; 32])
        .unwrap()
        .mint_device("d1", &["fight".into()], now_s, 60);
    let cases: [(&str, Option<&str>, u16); 7] = [
        ("/v1/subscribe?events=fight", None, 401),
        ("/v1/subscribe?events=fight", Some(expired.as_str()), 401),
        ("/v1/subscribe?events=fight", Some(other.as_str()), 401),
        ("/v1/subscribe?events=fight,other", Some(good.as_str()), 403),
        ("/v1/subscribe?events=Bad!", Some(good.as_str()), 400),
        ("/v2/nope?events=fight", Some(good.as_str()), 404),
        ("/v1/subscribe?events=fight", Some(good.as_str()), 101),
    ];
    for (i, (path, bearer, want)) in cases.iter().enumerate() {
        let d = connect(&mut c, &mut io, &clock, 100 + i as i32, path, *bearer);
        assert_eq!(d.status, Some(*want), "{path} {bearer:?}: {}", d.refusal);
        assert_eq!(io.peers[&d.fd].closed, *want != 101);
    }
    // Browser style: the token in the query.
    let d = connect(
        &mut c,
        &mut io,
        &clock,
        200,
        &format!("/v1/subscribe?events=fight&token={good}"),
        None,
    );
    assert_eq!(d.status, Some(101));
    assert_eq!(c.stats.refused.iter().map(|x| x.get()).sum::<u64>(), 6);
}

#[test]
fn blocked_device_is_conflated_to_newest() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut slow = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    let mut fast = connect(&mut c, &mut io, &clock, 11, "/v1/subscribe?events=e", None);
    c.on_cue(cue("e", "k1", 1), &mut io);
    io.peers.get_mut(&10).unwrap().room = Some(0);
    for s in 2..=50 {
        c.on_cue(cue("e", &format!("k{s}"), s), &mut io);
    }
    // Still blocked: writability reported but no room yet.
    c.on_writable(slow.key.unwrap(), &mut io);
    io.peers.get_mut(&10).unwrap().room = None;
    pump_writable(&mut c, &mut io);
    slow.read(&mut io);
    fast.read(&mut io);
    assert_eq!(fast.cues.len(), 50);
    assert_eq!(
        slow.cues,
        vec![("e".into(), 1), ("e".into(), 50)],
        "no backlog, just the newest"
    );
    assert!(
        !io.peers[&10].want_write,
        "writability interest dropped once drained"
    );
    assert_eq!(c.stats.conflated.get(), 48, "cues 2..=49 skipped for 50");
    // Seqs follow the publish time, not a counter: what counts is cues, not seq distance.
    io.peers.get_mut(&10).unwrap().room = Some(0);
    c.on_cue(cue("e", "later", 10_000), &mut io);
    c.on_cue(cue("e", "latest", 20_000), &mut io);
    io.peers.get_mut(&10).unwrap().room = None;
    pump_writable(&mut c, &mut io);
    assert_eq!(
        c.stats.conflated.get(),
        49,
        "one more skipped, whatever the seq gap"
    );
}

#[test]
fn partial_writes_keep_frames_whole() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut d = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    io.peers.get_mut(&10).unwrap().room = Some(7);
    c.on_cue(cue("e", "k1", 1), &mut io);
    c.on_cue(cue("e", "k2", 2), &mut io);
    for _ in 0..20 {
        io.peers.get_mut(&10).unwrap().room = Some(5);
        pump_writable(&mut c, &mut io);
    }
    io.peers.get_mut(&10).unwrap().room = None;
    pump_writable(&mut c, &mut io);
    d.read(&mut io);
    assert_eq!(d.cues, vec![("e".into(), 1), ("e".into(), 2)]);
}

#[test]
fn pings_idle_devices_and_closes_silent_ones() {
    let mut clock = Clock::new();
    let cfg = CoreConfig {
        ping_interval: Duration::from_secs(2),
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let mut talker = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    let mut silent = connect(&mut c, &mut io, &clock, 11, "/v1/subscribe?events=e", None);
    let tick = Duration::from_millis(100);
    for _ in 0..60 {
        clock.advance(tick);
        c.tick(clock.now(), tick, &mut io);
        talker.read(&mut io);
        if talker.pings > 0 {
            // Answer with a pong (any frame counts as liveness).
            c.on_input(
                talker.key.unwrap(),
                &client_frame(Opcode::Pong, b""),
                clock.now(),
                &mut io,
            );
            talker.pings = 0;
        }
    }
    silent.read(&mut io);
    assert!(silent.pings >= 1);
    assert!(io.peers[&11].closed, "silent device closed");
    assert!(!io.peers[&10].closed, "device answering pings kept");
    assert_eq!(c.stats.closes[CloseReason::PingTimeout as usize].get(), 1);
}

#[test]
fn close_handshake_and_ping_reply() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut d = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    let mut input = client_frame(Opcode::Ping, b"hi");
    input.extend(client_frame(Opcode::Close, &[0x03, 0xe8]));
    // Delivered in two pieces, split inside the first frame.
    c.on_input(d.key.unwrap(), &input[..3], clock.now(), &mut io);
    c.on_input(d.key.unwrap(), &input[3..], clock.now(), &mut io);
    d.read(&mut io);
    assert_eq!(d.closes, vec![(1000, String::new())]);
    assert!(io.peers[&10].closed);
    assert_eq!(c.open_sessions(), 0);
    assert_eq!(c.stats.closes[CloseReason::Client as usize].get(), 1);
}

#[test]
fn protocol_errors_close_with_rfc_codes() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    // Unmasked client frame: 1002.
    let mut d = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    let mut unmasked = Vec::new();
    crate::ws::frame::encode_frame(Opcode::Text, b"x", None, &mut unmasked);
    c.on_input(d.key.unwrap(), &unmasked, clock.now(), &mut io);
    d.read(&mut io);
    assert_eq!(d.closes[0].0, 1002);
    // Oversized frame: 1009.
    let mut d = connect(&mut c, &mut io, &clock, 11, "/v1/subscribe?events=e", None);
    c.on_input(
        d.key.unwrap(),
        &client_frame(Opcode::Binary, &[0u8; 5000]),
        clock.now(),
        &mut io,
    );
    d.read(&mut io);
    assert_eq!(d.closes[0].0, 1009);
    // Invalid UTF-8 text: 1007.
    let mut d = connect(&mut c, &mut io, &clock, 12, "/v1/subscribe?events=e", None);
    c.on_input(
        d.key.unwrap(),
        &client_frame(Opcode::Text, &[0xff, 0xfe]),
        clock.now(),
        &mut io,
    );
    d.read(&mut io);
    assert_eq!(d.closes[0].0, 1007);
    assert_eq!(c.stats.closes[CloseReason::ProtocolError as usize].get(), 3);
    assert_eq!(c.open_sessions(), 0);
}

#[test]
fn handshake_timeout_and_oversized_request() {
    let mut clock = Clock::new();
    let cfg = CoreConfig {
        handshake_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    io.peers.insert(10, Default::default());
    let k = c.accept(super::Link::ws(10), clock.now());
    c.on_input(
        k,
        b"GET /v1/subscribe?events=e HTTP/1.1\r\nHost: x\r\n",
        clock.now(),
        &mut io,
    );
    for _ in 0..30 {
        clock.advance(Duration::from_millis(100));
        c.tick(clock.now(), Duration::from_millis(100), &mut io);
    }
    assert!(io.peers[&10].closed);
    assert_eq!(
        c.stats.closes[CloseReason::HandshakeTimeout as usize].get(),
        1
    );
    io.peers.insert(11, Default::default());
    let k = c.accept(super::Link::ws(11), clock.now());
    c.on_input(k, &[b'a'; 9000], clock.now(), &mut io);
    assert!(io.peers[&11].closed);
    assert!(String::from_utf8_lossy(&io.peers[&11].inbox).starts_with("HTTP/1.1 431"));
}

#[test]
fn handshake_deadline_runs_from_accept_and_the_count_is_capped() {
    let mut clock = Clock::new();
    let cfg = CoreConfig {
        handshake_timeout: Duration::from_secs(10),
        // A sweep visits each device about once per ping interval: the deadline must not
        // wait for it.
        ping_interval: Duration::from_secs(30),
        max_handshakes: 3,
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let stats = c.stats.clone();
    io.peers.insert(10, Default::default());
    let k = c.accept(super::Link::ws(10), clock.now());
    // One header byte every second: never a whole request.
    let req = b"GET /v1/subscribe?events=e HTTP/1.1\r\nHost: x\r\n";
    let mut t = 0;
    while !io.peers[&10].closed && t < 40 {
        c.on_input(
            k,
            &req[t % req.len()..t % req.len() + 1],
            clock.now(),
            &mut io,
        );
        clock.advance(Duration::from_secs(1));
        c.tick(clock.now(), Duration::from_millis(100), &mut io);
        t += 1;
    }
    assert!(io.peers[&10].closed, "still held after {t} s");
    assert!((9..=11).contains(&t), "closed after {t} s, deadline 10 s");
    assert_eq!(
        stats.closes[CloseReason::HandshakeTimeout as usize].get(),
        1
    );
    assert_eq!(stats.handshaking.get(), 0);
    // Three in handshake fill the cap; an admitted one frees its place.
    let keys: Vec<_> = (20..23)
        .map(|fd| {
            io.peers.insert(fd, Default::default());
            c.accept(super::Link::ws(fd), clock.now())
        })
        .collect();
    assert!(c.handshakes_full());
    assert_eq!(stats.handshaking.get(), 3);
    c.on_input(
        keys[0],
        b"GET /v1/subscribe?events=e HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        clock.now(),
        &mut io,
    );
    assert!(String::from_utf8_lossy(&io.peers[&20].inbox).starts_with("HTTP/1.1 101"));
    assert!(!c.handshakes_full());
    // A refused one frees its place too.
    c.on_input(keys[1], b"POST / HTTP/1.1\r\n\r\n", clock.now(), &mut io);
    assert_eq!(stats.handshaking.get(), 1);
}

#[test]
fn drain_spreads_closes_with_jittered_hints() {
    let mut clock = Clock::new();
    let cfg = CoreConfig {
        retry_after_s: (5, 60),
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 100, 10, "/v1/subscribe?events=e");
    c.start_drain(Duration::from_secs(10), clock.now());
    let mut closed_at_half = 0;
    for step in 1..=100 {
        clock.advance(Duration::from_millis(100));
        c.tick(clock.now(), Duration::from_millis(100), &mut io);
        if step == 50 {
            for d in devs.iter_mut() {
                d.read(&mut io);
            }
            closed_at_half = devs.iter().filter(|d| !d.closes.is_empty()).count();
        }
    }
    assert!(
        (45..=55).contains(&closed_at_half),
        "half the window, about half closed: {closed_at_half}"
    );
    // A device accepted before the listeners closed is admitted, then closed with the others
    // (the window is over: at the next tick).
    let late = connect(&mut c, &mut io, &clock, 999, "/v1/subscribe?events=e", None);
    assert_eq!(late.status, Some(101));
    devs.push(late);
    clock.advance(Duration::from_millis(100));
    c.tick(clock.now(), Duration::from_millis(100), &mut io);
    let mut hints = std::collections::HashSet::new();
    for d in &mut devs {
        d.read(&mut io);
        let (code, reason) = &d.closes[0];
        assert_eq!(*code, 1001);
        let s: u32 = reason
            .strip_prefix("retry-after=")
            .unwrap()
            .parse()
            .unwrap();
        assert!((5..=60).contains(&s));
        hints.insert(s);
        // The device answers our close; the edge then closes TCP.
        c.on_input(
            d.key.unwrap(),
            &client_frame(Opcode::Close, &[0x03, 0xe9]),
            clock.now(),
            &mut io,
        );
    }
    assert!(
        hints.len() > 20,
        "hints are jittered: {} distinct",
        hints.len()
    );
    assert!(c.drained());
}

#[test]
fn undrain_stops_the_closes_and_admits_again() {
    let mut clock = Clock::new();
    let (mut c, mut io) = (core_with(CoreConfig::default(), &clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 10, 10, "/v1/subscribe?events=e");
    c.start_drain(Duration::from_secs(10), clock.now());
    clock.advance(Duration::from_secs(3));
    c.tick(clock.now(), Duration::from_secs(3), &mut io);
    let closed = |devs: &mut Vec<super::testkit::Device>, io: &mut FakeIo| {
        devs.iter_mut()
            .map(|d| {
                d.read(io);
                !d.closes.is_empty() as usize
            })
            .sum::<usize>()
    };
    let at_undrain = closed(&mut devs, &mut io);
    assert!((3..=5).contains(&at_undrain), "{at_undrain}");
    c.stop_drain();
    assert!(!c.draining());
    for _ in 0..100 {
        clock.advance(Duration::from_millis(100));
        c.tick(clock.now(), Duration::from_millis(100), &mut io);
    }
    assert_eq!(
        closed(&mut devs, &mut io),
        at_undrain,
        "no close after the undrain"
    );
    assert!(!c.drained());
    let late = connect(&mut c, &mut io, &clock, 99, "/v1/subscribe?events=e", None);
    assert_eq!(late.status, Some(101));
}

#[test]
fn full_shard_sheds_with_503() {
    let clock = Clock::new();
    let cfg = CoreConfig {
        max_connections: 2,
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    for fd in 10..12 {
        assert_eq!(
            connect(&mut c, &mut io, &clock, fd, "/v1/subscribe?events=e", None).status,
            Some(101)
        );
    }
    let d = connect(&mut c, &mut io, &clock, 12, "/v1/subscribe?events=e", None);
    assert_eq!(d.status, Some(503));
    assert!(d.refusal.contains("full"), "{}", d.refusal);
}

fn catchups(c: &mut ShardCore) -> Vec<String> {
    let mut v = Vec::new();
    c.drain_catchups(|e| v.push(e.as_str().to_string()));
    v
}

#[test]
fn events_ever_published_never_fill_the_table_only_events_followed_do() {
    let clock = Clock::new();
    let cfg = CoreConfig {
        max_events: 2,
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let stats = c.stats.clone();
    // Cues of three events no device follows: two take the room, the third takes no slot.
    for ev in ["a", "b", "z"] {
        c.on_cue(cue(ev, "k", 1), &mut io);
    }
    assert_eq!(stats.event_slots.get(), 2);
    assert_eq!(stats.cues_unfollowed.get(), 1);
    // A device of the slot-less event: the slot unfollowed longest (a) is reused for it, and
    // the link is asked for its cue, which then reaches the device as its catch-up.
    let mut z = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=z", None);
    assert_eq!(z.status, Some(101));
    assert_eq!(catchups(&mut c), ["z"]);
    assert_eq!(stats.event_slots_reused.get(), 1);
    c.on_cue(cue("z", "k", 1), &mut io);
    z.read(&mut io);
    assert_eq!(z.cues, vec![("z".into(), 1)]);
    // b still has its cue here: no request for it.
    let mut b = connect(&mut c, &mut io, &clock, 11, "/v1/subscribe?events=b", None);
    b.read(&mut io);
    assert_eq!(b.cues, vec![("b".into(), 1)]);
    assert!(catchups(&mut c).is_empty());
    // Both slots followed: a third event is refused, until a device leaves.
    let d = connect(&mut c, &mut io, &clock, 12, "/v1/subscribe?events=a", None);
    assert_eq!(d.status, Some(503));
    assert!(d.refusal.contains("too many events"), "{}", d.refusal);
    c.on_eof(z.key.unwrap(), &mut io);
    let a = connect(&mut c, &mut io, &clock, 13, "/v1/subscribe?events=a", None);
    assert_eq!(a.status, Some(101));
    assert_eq!(catchups(&mut c), ["a"]);
    // Still followed: b's device gets b's cues, a's device a's.
    c.on_eof(a.key.unwrap(), &mut io);
    // One device, two events, both needing a reused slot: each gets its own.
    c.on_eof(b.key.unwrap(), &mut io);
    let mut xy = connect(
        &mut c,
        &mut io,
        &clock,
        14,
        "/v1/subscribe?events=x,y",
        None,
    );
    assert_eq!(xy.status, Some(101));
    assert_eq!(catchups(&mut c), ["x", "y"]);
    c.on_cue(cue("x", "k", 5), &mut io);
    c.on_cue(cue("y", "k", 6), &mut io);
    xy.read(&mut io);
    assert_eq!(xy.cues, vec![("x".into(), 5), ("y".into(), 6)]);
    assert_eq!(
        stats.event_slots.get(),
        2,
        "never more slots than max_events"
    );
    // 10,000 events over the shard's life, one device at a time: never refused.
    c.on_eof(xy.key.unwrap(), &mut io);
    for i in 0..10_000u32 {
        let ev = format!("ev-{i}");
        c.on_cue(cue(&ev, "k", 1), &mut io);
        let d = connect(
            &mut c,
            &mut io,
            &clock,
            20 + (i as i32 % 2),
            &format!("/v1/subscribe?events={ev}"),
            None,
        );
        assert_eq!(d.status, Some(101), "event {i}");
        c.on_eof(d.key.unwrap(), &mut io);
        catchups(&mut c);
    }
    assert_eq!(stats.event_slots.get(), 2);
}

#[test]
fn unsubscribe_keeps_lists_consistent() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 20, 10, "/v1/subscribe?events=a,b");
    // Close every third device (client close), then publish: the rest all get it.
    for d in devs.iter().step_by(3) {
        c.on_eof(d.key.unwrap(), &mut io);
    }
    c.on_cue(cue("a", "k", 1), &mut io);
    c.on_cue(cue("b", "k", 1), &mut io);
    for (i, d) in devs.iter_mut().enumerate() {
        d.read(&mut io);
        let want = if i % 3 == 0 { 0 } else { 2 };
        assert_eq!(d.cues.len(), want, "device {i}");
    }
    assert_eq!(c.snapshot().iter().map(|s| s.2).sum::<usize>(), 2 * 13);
}

proptest! {
    /// Whatever the interleaving of cues, blocked sockets, partial writes and writability, a
    /// device always ends on the newest cue of each event it follows, and never sees a seq go
    /// backwards.
    #[test]
    fn device_always_ends_on_newest(ops in proptest::collection::vec((0u8..4, 0usize..4, 0usize..40), 1..200)) {
        let clock = Clock::new();
        let (mut c, mut io) = (core(&clock), FakeIo::default());
        let mut devs: Vec<_> = (0..4)
            .map(|i| connect(&mut c, &mut io, &clock, 10 + i, "/v1/subscribe?events=a,b", None))
            .collect();
        let mut seqs = [0u64; 2];
        for (op, dev, n) in ops {
            match op {
                0 | 1 => {
                    let ev = op as usize;
                    seqs[ev] += 1;
                    c.on_cue(cue(["a", "b"][ev], "k", seqs[ev]), &mut io);
                }
                2 => io.peers.get_mut(&(10 + dev as i32)).unwrap().room = Some(n),
                _ => {
                    io.peers.get_mut(&(10 + dev as i32)).unwrap().room = None;
                    pump_writable(&mut c, &mut io);
                }
            }
            devs[dev].read(&mut io);
        }
        for p in io.peers.values_mut() {
            p.room = None;
        }
        pump_writable(&mut c, &mut io);
        for d in &mut devs {
            d.read(&mut io);
            prop_assert_eq!(d.seq("a"), seqs[0]);
            prop_assert_eq!(d.seq("b"), seqs[1]);
            for ev in ["a", "b"] {
                let s: Vec<u64> = d.cues.iter().filter(|c| c.0 == ev).map(|c| c.1).collect();
                prop_assert!(s.windows(2).all(|w| w[0] < w[1]), "{:?}", s);
            }
        }
    }
}

// QUIC devices: the same session core, a different wire.

use super::testkit::connect_quic;
use super::Fanout;

#[test]
fn quic_hello_catch_up_and_live_cues_next_to_websocket() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    c.on_cue(cue("e", "k5", 5), &mut io);
    let mut json = connect_quic(
        &mut c,
        &mut io,
        &clock,
        50,
        r#"{"events":["e"],"since":{"e":3}}"#,
    );
    let mut bin = connect_quic(
        &mut c,
        &mut io,
        &clock,
        51,
        r#"{"events":["e"],"format":"binary"}"#,
    );
    let up_to_date = connect_quic(
        &mut c,
        &mut io,
        &clock,
        52,
        r#"{"events":["e"],"since":{"e":5}}"#,
    );
    let mut ws = connect(&mut c, &mut io, &clock, 10, "/v1/subscribe?events=e", None);
    assert_eq!(json.answer, Some(serde_json::json!({"ok": true})));
    assert_eq!(json.cues, vec![("e".into(), 5)]);
    assert_eq!(bin.cues, vec![("e".into(), 5)]);
    assert!(up_to_date.cues.is_empty(), "since = current: no catch-up");
    let fan = c.on_cue(cue("e", "k6", 6), &mut io);
    assert_eq!(fan, Fanout { ws: 1, quic: 3 });
    json.read(&mut io);
    bin.read(&mut io);
    ws.read(&mut io);
    assert_eq!(json.cues.last(), Some(&("e".into(), 6)));
    assert_eq!(bin.cues.last(), Some(&("e".into(), 6)));
    assert_eq!(ws.cues, vec![("e".into(), 5), ("e".into(), 6)]);
    assert_eq!(c.stats.quic_sessions.get(), 3);
    assert_eq!(c.stats.quic_deliveries.get(), 2 + 3);
}

#[test]
fn quic_hello_refusals_share_the_websocket_auth_path() {
    let clock = Clock::new();
    let keys = TokenKeys::new(&[9u8; 32]).unwrap();
    let now_s = clock.now().unix_ms / 1000;
    let cfg = CoreConfig {
        auth: Some(cue_common::keys::Verifier::Secret(Box::new(keys.clone()))),
        ..Default::default()
    };
    let (mut c, mut io) = (core_with(cfg, &clock), FakeIo::default());
    let good = keys.mint_device("d1", &["fight".into()], now_s, 60);
    let expired = keys.mint_device("d1", &["fight".into()], now_s - 120, 60);
    let cases = [
        (r#"{"events":["fight"]}"#.to_string(), 401),
        (
            format!(r#"{{"events":["fight"],"token":"{expired}"}}"#),
            401,
        ),
        (
            format!(r#"{{"events":["fight","other"],"token":"{good}"}}"#),
            403,
        ),
        (format!(r#"{{"events":["Bad!"],"token":"{good}"}}"#), 400),
        (
            format!(r#"{{"events":["fight"],"token":"{good}","x":1}}"#),
            400,
        ),
        ("not json".to_string(), 400),
    ];
    for (i, (hello, status)) in cases.iter().enumerate() {
        let id = 100 + i as i32;
        let d = connect_quic(&mut c, &mut io, &clock, id, hello);
        let a = d.answer.as_ref().expect("answer line");
        assert_eq!(a["ok"], false, "{hello}");
        assert_eq!(a["status"], *status, "{hello}: {a}");
        assert!(a["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(io.close_info[&id].0, *status as u16);
    }
    // A hello split across reads is assembled; one past the limit without a newline is refused.
    io.peers.insert(200, Default::default());
    let k = c.accept(super::Link::quic(200), clock.now());
    let line = format!("{{\"events\":[\"fight\"],\"token\":\"{good}\"}}\n");
    let (a, b) = line.as_bytes().split_at(10);
    c.on_input(k, a, clock.now(), &mut io);
    assert!(io.peers[&200].inbox.is_empty());
    c.on_input(k, b, clock.now(), &mut io);
    assert!(io.peers[&200].inbox.starts_with(b"{\"ok\":true}\n"));
    io.peers.insert(201, Default::default());
    let k = c.accept(super::Link::quic(201), clock.now());
    for _ in 0..5 {
        c.on_input(k, &[b' '; 1000], clock.now(), &mut io);
    }
    let answer = String::from_utf8_lossy(&io.peers[&201].inbox).into_owned();
    assert!(
        answer.contains("\"status\":400") && answer.contains("no newline"),
        "{answer}"
    );
    assert!(io.peers[&201].closed);
}

#[test]
fn quic_blocked_stream_is_conflated_to_newest() {
    let clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let mut slow = connect_quic(&mut c, &mut io, &clock, 60, r#"{"events":["e"]}"#);
    c.on_cue(cue("e", "k1", 1), &mut io);
    io.peers.get_mut(&60).unwrap().room = Some(30);
    for s in 2..=50 {
        c.on_cue(cue("e", &format!("k{s}"), s), &mut io);
    }
    io.peers.get_mut(&60).unwrap().room = None;
    pump_writable(&mut c, &mut io);
    slow.read(&mut io);
    assert_eq!(
        slow.cues,
        vec![("e".into(), 1), ("e".into(), 2), ("e".into(), 50)],
        "the partly written line finishes whole, then only the newest"
    );
}

#[test]
fn quic_liveness_is_the_transports_and_drain_closes_with_a_hint() {
    let mut clock = Clock::new();
    let (mut c, mut io) = (core(&clock), FakeIo::default());
    let _d = connect_quic(&mut c, &mut io, &clock, 70, r#"{"events":["e"]}"#);
    // No hello within the handshake timeout: closed.
    io.peers.insert(71, Default::default());
    let silent = c.accept(super::Link::quic(71), clock.now());
    for _ in 0..200 {
        clock.advance(Duration::from_millis(500));
        c.tick(clock.now(), Duration::from_millis(500), &mut io);
    }
    assert!(io.peers[&71].closed, "no hello: handshake timeout");
    assert_eq!(io.close_info[&71].0, 1008);
    assert!(
        !io.peers[&70].closed,
        "an idle QUIC session is not pinged by the core"
    );
    assert!(io.peers[&70].inbox.is_empty());
    let _ = silent;
    // The transport says the device went away.
    let d2 = connect_quic(&mut c, &mut io, &clock, 72, r#"{"events":["e"]}"#);
    c.on_gone(d2.key.unwrap(), CloseReason::PingTimeout, &mut io);
    assert_eq!(c.stats.closes[CloseReason::PingTimeout as usize].get(), 1);
    assert_eq!(c.open_sessions(), 1);
    c.start_drain(Duration::ZERO, clock.now());
    c.tick(clock.now(), Duration::from_millis(1), &mut io);
    let (code, reason) = &io.close_info[&70];
    assert_eq!(*code, 1001);
    let s: u32 = reason
        .strip_prefix("retry-after=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((5..=60).contains(&s));
    assert_eq!(c.open_sessions(), 0);
    assert_eq!(c.stats.quic_sessions.get(), 0);
    // Late devices get a 503 line with a retry hint.
    let late = connect_quic(&mut c, &mut io, &clock, 73, r#"{"events":["e"]}"#);
    let a = late.answer.unwrap();
    assert_eq!(a["status"], 503);
    assert!(a["retry_after"]
        .as_u64()
        .is_some_and(|s| (5..=60).contains(&s)));
}

fn sliced(slice: usize, clock: &Clock) -> ShardCore {
    core_with(
        CoreConfig {
            fanout_slice: slice,
            ..Default::default()
        },
        clock,
    )
}

#[test]
fn a_fanout_runs_in_slices_and_reaches_each_device_once() {
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(3, &clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 10, 10, "/v1/subscribe?events=e");
    assert_eq!(c.on_cue(cue("e", "go", 1), &mut io).ws, 3);
    assert!(c.fanout_pending());
    let mut slices = 1;
    while c.fanout_pending() {
        assert!(c.fanout(&mut io).ws <= 3);
        slices += 1;
    }
    assert_eq!(slices, 4);
    let mut finished = Vec::new();
    c.take_finished(|f| finished.push((f.event.to_string(), f.seq, f.published_ms, f.reached)));
    assert_eq!(finished, vec![("e".into(), 1, 1_700_000_000_001, 10)]);
    for d in &mut devs {
        d.read(&mut io);
        assert_eq!(d.cues, vec![("e".into(), 1)]);
    }
}

#[test]
fn a_slice_is_one_batch_whose_full_short_and_gone_sends_are_handled_after_it() {
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(4, &clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 6, 10, "/v1/subscribe?events=e");
    // fd 11 takes 5 bytes of the frame, fd 12 nothing, fd 13 is gone.
    io.peers.get_mut(&11).unwrap().room = Some(5);
    io.peers.get_mut(&12).unwrap().room = Some(0);
    io.peers.get_mut(&13).unwrap().closed = true;
    io.batches.clear();
    let first = c.on_cue(cue("e", "go", 1), &mut io);
    assert_eq!(
        io.batches,
        vec![vec![10, 11, 12, 13]],
        "one batch of the slice"
    );
    // 10 whole, 11 in part (its rest queued): both count as written; 12 blocked; 13 closed.
    assert_eq!(first.ws, 2);
    assert!(io.peers[&11].want_write && io.peers[&12].want_write);
    assert!(io.closed.contains(&13));
    c.fanout(&mut io);
    assert_eq!(io.batches[1], vec![14, 15]);
    // The sockets drain: 11 gets the rest of its frame, 12 the event's current cue.
    for fd in [11, 12] {
        io.peers.get_mut(&fd).unwrap().room = None;
    }
    pump_writable(&mut c, &mut io);
    for d in devs.iter_mut().filter(|d| d.fd != 13) {
        d.read(&mut io);
        assert_eq!(d.cues, vec![("e".into(), 1)], "fd {}", d.fd);
    }
}

#[test]
fn a_newer_cue_ends_the_older_ones_fanout() {
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(3, &clock), FakeIo::default());
    let mut devs = devices(&mut c, &mut io, &clock, 10, 10, "/v1/subscribe?events=e");
    assert!(c.take_cue_at(cue("e", "one", 1), 5));
    c.fanout(&mut io);
    assert!(c.take_cue_at(cue("e", "two", 2), 7));
    assert!(
        !c.take_cue_at(cue("e", "old", 1), 9),
        "not newer: no fanout"
    );
    while c.fanout_pending() {
        c.fanout(&mut io);
    }
    assert_eq!(c.stats.fanout_superseded.get(), 1);
    // Only the newest cue's fanout finished, with its own hand-in time and every device.
    let mut finished = Vec::new();
    c.take_finished(|f| finished.push((f.seq, f.taken_us, f.followers, f.reached)));
    assert_eq!(finished, vec![(2, 7, 10, 10)]);
    let mut got_both = 0;
    for d in &mut devs {
        d.read(&mut io);
        assert_eq!(
            d.cues.last(),
            Some(&("e".into(), 2)),
            "everyone ends on the newest"
        );
        got_both += (d.cues.len() == 2) as usize;
    }
    assert_eq!(got_both, 3, "only the first slice got the superseded cue");
    // Another event's fanout is not touched by it.
    c.on_cue(cue("f", "x", 1), &mut io);
    assert_eq!(c.stats.fanout_superseded.get(), 1);
}

#[test]
fn a_fanout_skips_devices_gone_meanwhile_and_their_reused_slots() {
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(2, &clock), FakeIo::default());
    let devs = devices(&mut c, &mut io, &clock, 6, 10, "/v1/subscribe?events=e");
    c.on_cue(cue("e", "go", 1), &mut io);
    // The last four go away before their slices; a device of another event may take a
    // freed index.
    for d in &devs[2..] {
        c.on_error(d.key.unwrap(), &mut io);
    }
    let mut other = connect(&mut c, &mut io, &clock, 30, "/v1/subscribe?events=f", None);
    while c.fanout_pending() {
        c.fanout(&mut io);
    }
    other.read(&mut io);
    assert!(other.cues.is_empty(), "never given another event's cue");
    // A retirement ends its event's fanout.
    let mut devs2 = devices(&mut c, &mut io, &clock, 6, 40, "/v1/subscribe?events=g");
    c.on_cue(cue("g", "go", 1), &mut io);
    c.retire(&cue_common::cue::EventName::new("g").unwrap());
    assert!(!c.fanout_pending());
    let reached: usize = devs2
        .iter_mut()
        .map(|d| {
            d.read(&mut io);
            d.cues.len()
        })
        .sum();
    assert_eq!(reached, 2, "only the first slice");
}

#[test]
fn a_critical_fanout_overtakes_a_background_one_in_progress() {
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(2, &clock), FakeIo::default());
    let mut bg = devices(&mut c, &mut io, &clock, 6, 10, "/v1/subscribe?events=bg");
    let mut crit = devices(&mut c, &mut io, &clock, 2, 30, "/v1/subscribe?events=crit");
    let classed = |ev: &str, class| {
        Arc::new(
            EncodedCue::new(Cue::new(ev, "k", 1, 1_700_000_000_001).unwrap()).with_class(class),
        )
    };
    use cue_common::cue::Priority;
    // The background fanout's first slice goes out; then the critical cue lands: taken in at
    // once, and the next slice is its.
    assert_eq!(c.on_cue(classed("bg", Priority::Background), &mut io).ws, 2);
    assert_eq!(c.on_cue(classed("crit", Priority::Critical), &mut io).ws, 0);
    assert_eq!(c.fanout(&mut io).ws, 2);
    for d in &mut crit {
        d.read(&mut io);
        assert_eq!(
            d.cues.len(),
            1,
            "the critical cue went out before the background rest"
        );
    }
    let got = |bg: &mut Vec<super::testkit::Device>, io: &mut FakeIo| {
        bg.iter_mut()
            .map(|d| {
                d.read(io);
                d.cues.len()
            })
            .sum::<usize>()
    };
    assert_eq!(got(&mut bg, &mut io), 2);
    while c.fanout_pending() {
        c.fanout(&mut io);
    }
    assert_eq!(got(&mut bg, &mut io), 6);
}

#[test]
fn cues_taken_in_together_are_fanned_out_most_urgent_first_and_all_count_as_backlog() {
    use cue_common::cue::Priority;
    let clock = Clock::new();
    let (mut c, mut io) = (sliced(2, &clock), FakeIo::default());
    let mut bg = devices(&mut c, &mut io, &clock, 4, 10, "/v1/subscribe?events=bg");
    let mut norm = devices(&mut c, &mut io, &clock, 2, 20, "/v1/subscribe?events=norm");
    let mut crit = devices(&mut c, &mut io, &clock, 2, 30, "/v1/subscribe?events=crit");
    let classed = |ev: &str, seq, class| {
        Arc::new(
            EncodedCue::new(Cue::new(ev, "k", seq, 1_700_000_000_001).unwrap()).with_class(class),
        )
    };
    // A channel's worth taken in before any write: nothing written yet, every device counted.
    assert!(c.take_cue(classed("bg", 1, Priority::Background)));
    assert!(c.take_cue(classed("norm", 1, Priority::Normal)));
    assert!(c.take_cue(classed("crit", 1, Priority::Critical)));
    // A stale repeat queues nothing; a newer background cue replaces its fanout.
    assert!(!c.take_cue(classed("crit", 1, Priority::Critical)));
    assert!(c.take_cue(classed("bg", 2, Priority::Background)));
    assert_eq!(c.fanout_backlog(), 8);
    let read = |ds: &mut Vec<super::testkit::Device>, io: &mut FakeIo| {
        ds.iter_mut()
            .map(|d| {
                d.read(io);
                d.cues.len()
            })
            .sum::<usize>()
    };
    assert_eq!(
        read(&mut crit, &mut io),
        0,
        "taking a cue in writes nothing"
    );
    // Slices of 2: critical, then normal, then background (only its newest cue).
    assert_eq!(c.fanout(&mut io).ws, 2);
    assert_eq!(
        (
            read(&mut crit, &mut io),
            read(&mut norm, &mut io),
            read(&mut bg, &mut io)
        ),
        (2, 0, 0)
    );
    assert_eq!(c.fanout(&mut io).ws, 2);
    assert_eq!(read(&mut norm, &mut io), 2);
    assert_eq!(read(&mut bg, &mut io), 0);
    while c.fanout_pending() {
        c.fanout(&mut io);
    }
    assert_eq!(
        read(&mut bg, &mut io),
        4,
        "one cue each: the replaced one never went out"
    );
    for d in &bg {
        assert_eq!(d.cues[0].1, 2);
    }
    assert_eq!(c.fanout_backlog(), 0);
}
