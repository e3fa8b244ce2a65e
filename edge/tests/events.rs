//! Months of events with the real binaries: the number of events ever published never limits
//! an edge. A shard keeps slots for the events its devices follow (and others' newest cues
//! while there is room); a device's new event reuses a slot nobody follows, and its current cue
//! comes from the relay link's hold when the shard had no slot for it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

/// Publishes `ev-{i}` with key `k{i}` for every i in `range`, from 4 threads.
fn publish_events(http: SocketAddr, range: std::ops::Range<u32>) {
    let all: Vec<u32> = range.collect();
    std::thread::scope(|s| {
        for part in all.chunks(all.len().div_ceil(4).max(1)) {
            s.spawn(move || {
                for i in part {
                    publish_ok(http, &format!("ev-{i}"), &format!("k{i}"));
                }
            });
        }
    });
}

/// Devices of 16 events each, one after another, for every event in `range`: each gets every
/// event's current cue (`k{i}`) as its catch-up.
fn every_device_gets_its_catch_up(ws: SocketAddr, range: std::ops::Range<u32>) {
    let token = device_token(&["*"]);
    let all: Vec<u32> = range.collect();
    for batch in all.chunks(16) {
        let evs: Vec<String> = batch.iter().map(|i| format!("ev-{i}")).collect();
        let mut d = subscribe(ws, &format!("events={}", evs.join(",")), Some(&token))
            .unwrap_or_else(|e| panic!("{evs:?}: {e:?}"));
        let mut got: Vec<(String, String)> = (0..batch.len())
            .map(|_| {
                let (e, k, _) = next_cue(&mut d);
                (e, k)
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = batch
            .iter()
            .map(|i| (format!("ev-{i}"), format!("k{i}")))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }
}

#[test]
fn ten_thousand_events_over_one_edges_life_with_max_events_4096() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _origin = start_origin(dir.path(), http, relay);
    // Exactly the case that used to fail: 4,200 events before the edge starts.
    publish_events(http, 0..4200);
    let conf = edge_config(dir.path(), "max_events = 4096\n");
    let (ws, admin) = (free_addr(), free_addr());
    let edge = start_edge(relay, ws, admin, &["--config", &conf, "--quic", "none"]);
    // Each of the 2 shards fills its table and takes no slot for the rest.
    wait_until(Duration::from_secs(20), || {
        let m = edge.metrics();
        metric(&m, "cue_edge_cues_in_total") >= 2.0 * 4200.0
    });
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_event_slots"), 2.0 * 4096.0);
    assert_eq!(metric(&m, "cue_edge_cues_unfollowed_total"), 2.0 * 104.0);

    // A device of a new event is admitted and gets its cues.
    let token = device_token(&["*"]);
    let mut fresh = subscribe(ws, "events=fresh", Some(&token)).expect("a new event is admitted");
    publish_ok(http, "fresh", "go");
    assert_eq!(next_cue(&mut fresh).1, "go");
    drop(fresh);
    // Every old event's device gets that event's current cue, whether its shard kept it or
    // the link's hold supplied it.
    every_device_gets_its_catch_up(ws, 0..4200);
    let m = edge.metrics();
    assert!(metric(&m, "cue_edge_relay_catchups_served_total") >= 1.0);
    assert!(metric(&m, "cue_edge_event_slots_reused_total") >= 1.0);

    // The rest of the edge's life: 5,800 more events, and their devices.
    publish_events(http, 4200..10_000);
    wait_until(Duration::from_secs(20), || {
        metric(&edge.metrics(), "cue_edge_relay_cues_forwarded_total") >= 10_001.0
    });
    every_device_gets_its_catch_up(ws, 9_000..10_000);
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_event_slots"), 2.0 * 4096.0, "bounded");
    // Only `fresh` was asked for before it had a cue.
    assert_eq!(metric(&m, "cue_edge_relay_catchups_missed_total"), 1.0);
    assert_eq!(metric(&m, "cue_edge_catchups_dropped_total"), 0.0);
    assert_eq!(metric(&m, "cue_edge_relay_events_held"), 10_001.0);
}

#[test]
fn a_retired_event_leaves_the_edge_and_can_start_anew() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _origin = start_origin(dir.path(), http, relay);
    let (ws, admin) = (free_addr(), free_addr());
    let edge = start_edge(relay, ws, admin, &["--quic", "none"]);
    let token = device_token(&["gone"]);
    let old = publish_ok(http, "gone", "last");
    let mut a = subscribe(ws, "events=gone", Some(&token)).unwrap();
    assert_eq!(next_cue(&mut a).1, "last");
    let auth = format!("Bearer {}", publisher_token());
    let r = cue_testkit::client::request(
        http,
        "DELETE",
        "/v1/events/gone",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    wait_until(Duration::from_secs(10), || {
        metric(&edge.metrics(), "cue_edge_relay_retirements_total") >= 1.0
    });
    // A device that comes now gets no stale catch-up.
    let mut b = subscribe(ws, "events=gone", Some(&token)).unwrap();
    assert!(quiet_for(&mut b, Duration::from_millis(800)));
    // Published again: both devices get the new start, above the old seq.
    let new = publish_ok(http, "gone", "again");
    assert!(new > old);
    assert_eq!(next_cue(&mut a), ("gone".into(), "again".into(), new));
    assert_eq!(next_cue(&mut b), ("gone".into(), "again".into(), new));
}

/// A publish may give its event a priority class: refused when unknown; carried to the edge
/// (relay protocol 3), which counts it and delivers the cue as any other.
#[test]
fn a_publish_gives_its_event_a_class_that_reaches_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &[]);
    let tok = device_token(&["ko", "bg"]);
    let mut dev = subscribe(edge.ws, "events=ko,bg", Some(&tok)).unwrap();
    let r = publish_body(origin.http, "ko", r#"{"key":"x","priority":"urgent"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("critical, normal or background"),
        "{}",
        r.body
    );
    publish_body_ok(
        origin.http,
        "ko",
        r#"{"key":"round-1","priority":"critical"}"#,
    );
    assert_eq!(next_cue(&mut dev).1, "round-1");
    publish_body_ok(origin.http, "bg", r#"{"key":"ad","priority":"background"}"#);
    assert_eq!(next_cue(&mut dev).1, "ad");
    publish_ok(origin.http, "ko", "round-2");
    assert_eq!(next_cue(&mut dev).1, "round-2");
    let m = edge.metrics();
    let class = |c: &str| {
        metric(
            &m,
            &format!("cue_edge_relay_cues_by_class_total{{class=\"{c}\"}}"),
        )
    };
    // A publish without a priority makes its event normal again (round-2).
    assert_eq!(
        (class("critical"), class("normal"), class("background")),
        (1.0, 1.0, 1.0)
    );
}

/// A background event floods while a critical one is published: with fanout slices of 8
/// devices the shards lag (past 4 slices) during the flood, so their lanes hold background cues
/// back and conflate them; the critical cue goes through, and every device still ends on the
/// newest cue of its event.
#[test]
fn while_fanout_lags_background_cues_wait_and_critical_ones_go() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let conf = edge_config(dir.path(), "fanout_slice = 8\n");
    let edge = start_edge(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--config", &conf, "--quic", "none"],
    );
    let tok = device_token(&["bg", "ko"]);
    let mut bg: Vec<_> = (0..300)
        .map(|_| subscribe(edge.ws, "events=bg", Some(&tok)).unwrap())
        .collect();
    let mut ko = subscribe(edge.ws, "events=ko", Some(&tok)).unwrap();
    let flood = {
        let http = origin.http;
        std::thread::spawn(move || {
            let mut last = 0;
            for i in 0..300 {
                last = publish_body_ok(
                    http,
                    "bg",
                    &format!(r#"{{"key":"ad-{i}","priority":"background"}}"#),
                );
            }
            last
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    publish_body_ok(
        origin.http,
        "ko",
        r#"{"key":"round-1","priority":"critical"}"#,
    );
    assert_eq!(next_cue(&mut ko).1, "round-1");
    let last = flood.join().unwrap();
    for d in &mut bg {
        let mut seq = 0;
        while seq != last {
            let (_, _, s) = next_cue(d);
            assert!(s > seq, "seqs only go up");
            seq = s;
        }
    }
    let m = edge.metrics();
    assert!(
        metric(&m, "cue_edge_lane_background_holds_total") >= 1.0,
        "the lanes held background cues back at least once"
    );
    assert_eq!(metric(&m, "cue_edge_lane_background_holding"), 0.0);
    assert!(metric(&m, "cue_edge_lane_conflated_total") >= 1.0);
}
