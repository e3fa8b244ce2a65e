//! The origin tier on NATS JetStream, with real `nats-server` processes (a 3-node cluster on
//! free loopback ports), real origins, a real edge and WebSocket devices: a NATS node killed
//! during publishes, an origin killed, a minority partition, an origin started before NATS, an
//! origin restarted on an empty data directory, a wiped store (JetStream and embedded), and the
//! stream set-up errors an operator can make.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cue_testkit::client::request;
use cue_testkit::nats::NatsCluster;
use cue_testkit::{spawn_origin, wait_healthy, wait_healthy_logged};
use support::*;

/// A `cue-origin` on JetStream; waits until it is healthy.
fn nats_origin(dir: &Path, store: &str, replicas: u32) -> Origin {
    nats_origin_with(dir, store, replicas, &[])
}

fn nats_origin_with(dir: &Path, store: &str, replicas: u32, more: &[&str]) -> Origin {
    let (http, relay) = (free_addr(), free_addr());
    let r = replicas.to_string();
    let extra = [
        "--store",
        store,
        "--nats-replicas",
        &r,
        "--relay-heartbeat-ms",
        "200",
        "--relay-dead-after-ms",
        "1000",
        "--nats-ack-timeout-ms",
        "2000",
    ];
    let extra: Vec<&str> = extra.iter().chain(more).copied().collect();
    let log = dir.join("origin.log");
    std::fs::create_dir_all(dir).unwrap();
    let proc = spawn_origin(dir, http, relay, SECRET, &extra, Some(&log));
    let t = Instant::now();
    while !request(http, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "origin not healthy; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Origin {
        proc,
        http,
        relay,
        dir: dir.to_path_buf(),
    }
}

/// Publishes with an `Idempotency-Key`, retrying `503`s and I/O errors for up to `d`; the seq of
/// the `201`.
fn publish_retrying(origins: &[SocketAddr], event: &str, key: &str, d: Duration) -> u64 {
    let auth = format!("Bearer {}", publisher_token());
    let t = Instant::now();
    let mut i = 0;
    loop {
        let r = request(
            origins[i % origins.len()],
            "POST",
            &format!("/v1/events/{event}/cues"),
            &[
                ("Authorization", &auth),
                ("Idempotency-Key", &format!("{event}-{key}")),
            ],
            format!("{{\"key\":\"{key}\"}}").as_bytes(),
        );
        match r {
            Ok(r) if r.status == 201 => {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                return v["seq"].as_u64().unwrap();
            }
            Ok(r) => assert_eq!(r.status, 503, "{}", r.body),
            Err(_) => {}
        }
        assert!(t.elapsed() < d, "{event}/{key}: no 201 within {d:?}");
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn current_seq(http: SocketAddr, event: &str) -> Option<u64> {
    let r = request(http, "GET", &format!("/v1/events/{event}"), &[], b"").ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v["current"]["seq"].as_u64()
}

/// Reads cues from `dev` until it holds `want` (event -> seq) for every event, or `d` passes.
fn until_holds(dev: &mut Ws, want: &HashMap<String, u64>, d: Duration) {
    let mut held: HashMap<String, u64> = HashMap::new();
    let t = Instant::now();
    while want.iter().any(|(e, s)| held.get(e) != Some(s)) {
        assert!(t.elapsed() < d, "device holds {held:?}, wants {want:?}");
        let (e, _, s) = next_cue(dev);
        let h = held.entry(e).or_insert(0);
        assert!(s > *h, "seqs go up per event");
        *h = s;
    }
}

#[test]
fn nats_node_killed_during_publishes_loses_no_acknowledged_cue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::start(&dir.path().join("nats"), 3);
    let store = cluster.store_url();
    let o1 = nats_origin(&dir.path().join("o1"), &store, 3);
    let o2 = nats_origin(&dir.path().join("o2"), &store, 3);
    let edge = start_edge(
        o1.relay,
        free_addr(),
        free_addr(),
        &["--origin", &o2.relay.to_string()],
    );
    let events: Vec<String> = (0..16).map(|i| format!("e{i}")).collect();
    let evs: Vec<&str> = events.iter().map(String::as_str).collect();
    let token = device_token(&evs);
    let mut devices: Vec<Ws> = (0..4)
        .map(|_| subscribe(edge.ws, &format!("events={}", evs.join(",")), Some(&token)).unwrap())
        .collect();

    let origins = [o1.http, o2.http];
    let mut acked = HashMap::new();
    let mut last_201 = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let leader = cluster
        .stream_leader("CUE")
        .expect("the stream has a leader in /jsz");
    for (i, e) in events.iter().enumerate() {
        if i == 5 {
            let at = cluster.index_of(&leader);
            cluster.kill9(at);
        }
        let seq = publish_retrying(
            &origins[i % 2..],
            e,
            &format!("k{i}"),
            Duration::from_secs(20),
        );
        longest_gap = longest_gap.max(last_201.elapsed());
        last_201 = Instant::now();
        acked.insert(e.clone(), seq);
        std::thread::sleep(Duration::from_millis(30));
    }
    // Publishing waits out the election of a new stream leader: nats-server 2.9's Raft
    // election timeout is 4-9 s, plus the time to notice the leader is gone.
    assert!(
        longest_gap < Duration::from_secs(15),
        "publishes stalled {longest_gap:?} after the stream leader {leader} died"
    );
    eprintln!("longest gap between 201s: {longest_gap:?} (stream leader {leader} killed)");
    // Both origins converge on every acknowledged cue (the one that did not take a publish
    // learns it from the stream; after a node death, within a few seconds).
    // Generous: 8 tests each run a 3-node cluster at once on this box's 2 cores, and the
    // follower whose consumer lived on the dead node replaces it after two missed heartbeats.
    let t = Instant::now();
    wait_until(Duration::from_secs(30), || {
        acked
            .iter()
            .all(|(e, s)| origins.iter().all(|&o| current_seq(o, e) == Some(*s)))
    });
    eprintln!("origins converged {:?} after the last publish", t.elapsed());
    for d in &mut devices {
        until_holds(d, &acked, Duration::from_secs(15));
    }
}

#[test]
fn origin_killed_its_edge_takes_the_next_cue_from_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 3);
    let store = cluster.store_url();
    let mut o1 = nats_origin(&dir.path().join("o1"), &store, 3);
    let o2 = nats_origin(&dir.path().join("o2"), &store, 3);
    let edge = start_edge(
        o1.relay,
        free_addr(),
        free_addr(),
        &["--origin", &o2.relay.to_string()],
    );
    let token = device_token(&["fight"]);
    let mut devices: Vec<Ws> = (0..8)
        .map(|_| subscribe(edge.ws, "events=fight", Some(&token)).unwrap())
        .collect();
    let s1 = publish_ok(o1.http, "fight", "round-1");
    for d in &mut devices {
        assert_eq!(next_cue(d).2, s1);
    }
    // Both origins hold the same current cue (the other one learns it from the stream).
    wait_until(Duration::from_secs(5), || {
        current_seq(o2.http, "fight") == Some(s1)
    });
    o1.proc.kill9();
    let t0 = Instant::now();
    let s2 = publish_ok(o2.http, "fight", "round-2");
    assert!(s2 > s1);
    for d in &mut devices {
        let (_, k, s) = next_cue(d);
        assert_eq!((k.as_str(), s), ("round-2", s2));
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "next cue took {took:?}");
    edge.wait_linked_n(1);
}

#[test]
fn minority_partition_refuses_publishes_instead_of_diverging() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 3);
    // This origin reaches node 0 only; nodes 1 and 2 will be cut off from it.
    let n0 = format!("nats://{}", cluster.nodes[0].client);
    let o = nats_origin_with(
        &dir.path().join("o"),
        &n0,
        3,
        &["--relay-unhealthy-grace-ms", "1500"],
    );
    let edge = start_edge(o.relay, free_addr(), free_addr(), &[]);
    let s1 = publish_ok(o.http, "fight", "round-1");
    cluster.freeze(1);
    cluster.freeze(2);
    let t = Instant::now();
    wait_until(Duration::from_secs(10), || {
        request(o.http, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 503)
    });
    let r = publish(o.http, "fight", "round-2");
    assert_eq!(
        r.status, 503,
        "a minority must not take a publish: {}",
        r.body
    );
    assert!(r.header("retry-after").is_some());
    let h = request(o.http, "GET", "/healthz", &[], b"").unwrap();
    assert!(h.body.contains("unhealthy"), "{}", h.body);
    eprintln!("minority noticed in {:?}", t.elapsed());
    // Cut off past the grace, the origin stops relaying: its edge is unlinked.
    edge.wait_linked_n(0);
    cluster.thaw(1);
    cluster.thaw(2);
    wait_healthy(o.http, Duration::from_secs(20));
    let s3 = publish_retrying(&[o.http], "fight", "round-3", Duration::from_secs(20));
    assert!(s3 > s1);
    assert_eq!(current_seq(o.http, "fight"), Some(s3));
    edge.wait_linked_n(1);
}

#[test]
fn origin_started_before_nats_waits_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = NatsCluster::configure(&dir.path().join("nats"), 1, true);
    let (http, relay) = (free_addr(), free_addr());
    let log = dir.path().join("origin.log");
    let store = cluster.store_url();
    let _o = spawn_origin(
        &dir.path().join("o"),
        http,
        relay,
        SECRET,
        &["--store", &store, "--nats-replicas", "1"],
        Some(&log),
    );
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.matches("NATS not reachable; retrying").count() >= 2)
    });
    // Its ports are up meanwhile: health says it is starting.
    let h = request(http, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(h.status, 503, "{}", h.body);
    assert!(h.body.contains("starting"), "{}", h.body);
    assert_eq!(h.header("retry-after"), Some("1"));
    cluster.start_node(0);
    cluster.wait_ready(0, Duration::from_secs(20));
    wait_healthy_logged(http, Duration::from_secs(20), &log);
    assert!(publish_ok(http, "fight", "round-1") > 0);
}

#[test]
fn origin_restarted_on_an_empty_data_dir_resumes_the_same_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 1);
    let store = cluster.store_url();
    let mut o = nats_origin(&dir.path().join("o-a"), &store, 1);
    let s1 = publish_ok(o.http, "fight", "round-1");
    o.proc.kill9();
    let o = nats_origin(&dir.path().join("o-b"), &store, 1);
    assert_eq!(current_seq(o.http, "fight"), Some(s1));
    let s2 = publish_ok(o.http, "fight", "round-2");
    assert!(s2 > s1);
}

/// An edge holding a cue of a store that is then wiped takes the new store's cues as new.
fn wiped_store_case(restart: impl FnOnce(SocketAddr) -> Origin, first: Origin) {
    let mut first = first;
    let relay = first.relay;
    let edge = start_edge(relay, free_addr(), free_addr(), &[]);
    let token = device_token(&["fight"]);
    let mut dev = subscribe(edge.ws, "events=fight", Some(&token)).unwrap();
    let s1 = publish_ok(first.http, "fight", "round-1");
    assert_eq!(next_cue(&mut dev).2, s1);
    first.proc.kill9();
    // Let the clock pass the old seq: a wiped store starts from the time.
    std::thread::sleep(Duration::from_millis(5));
    let second = restart(relay);
    edge.wait_linked();
    assert_eq!(
        current_seq(second.http, "fight"),
        None,
        "the store was wiped"
    );
    let s2 = publish_ok(second.http, "fight", "round-2");
    assert!(s2 > s1, "new seq {s2} must be above the old {s1}");
    assert_eq!(next_cue(&mut dev), ("fight".into(), "round-2".into(), s2));
    // A device that reconnects with the old since gets the new cue.
    let mut back = subscribe(
        edge.ws,
        &format!("events=fight&since=fight:{s1}"),
        Some(&token),
    )
    .unwrap();
    assert_eq!(next_cue(&mut back).2, s2);
}

#[test]
fn wiped_embedded_store_new_cues_are_not_taken_for_old() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_origin(&dir.path().join("a"), free_addr(), free_addr());
    let http = free_addr();
    let fresh = dir.path().join("b");
    wiped_store_case(move |relay| start_origin(&fresh, http, relay), first);
}

#[test]
fn wiped_jetstream_store_new_cues_are_not_taken_for_old() {
    let dir = tempfile::tempdir().unwrap();
    let nats_dir = dir.path().join("nats");
    let mut cluster = NatsCluster::start(&nats_dir, 1);
    let store = cluster.store_url();
    let first = nats_origin(&dir.path().join("o-a"), &store, 1);
    let odir = dir.path().join("o-b");
    wiped_store_case(
        |relay| {
            // Wipe the server's store and start it again: the stream is gone.
            cluster.kill9(0);
            std::fs::remove_dir_all(nats_dir.join("n0")).unwrap();
            std::fs::create_dir_all(nats_dir.join("n0")).unwrap();
            cluster.start_node(0);
            cluster.wait_ready(0, Duration::from_secs(20));
            let http = free_addr();
            let extra = ["--store", &store, "--nats-replicas", "1"];
            let proc = spawn_origin(&odir, http, relay, SECRET, &extra, None);
            wait_healthy(http, Duration::from_secs(20));
            Origin {
                proc,
                http,
                relay,
                dir: odir.clone(),
            }
        },
        first,
    );
}

/// Runs `cue-origin` to its exit; its exit code and stderr.
fn origin_exit(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let log = dir.join("exit.log");
    let mut p: Proc = spawn_origin(dir, free_addr(), free_addr(), SECRET, extra, Some(&log));
    let code = p.wait_exit(Duration::from_secs(20));
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn stream_setup_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // JetStream off.
    let plain = NatsCluster::start_with(&dir.path().join("plain"), 1, false);
    let (code, err) = origin_exit(
        dir.path(),
        &["--store", &plain.store_url(), "--nats-replicas", "1"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("JetStream is off"), "{err}");
    // More replicas than a single server can hold.
    let js = NatsCluster::start(&dir.path().join("js"), 1);
    let (code, err) = origin_exit(
        dir.path(),
        &["--store", &js.store_url(), "--nats-replicas", "3"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--nats-replicas 3"), "{err}");
    // A stream with other settings.
    let _o = nats_origin(&dir.path().join("o"), &js.store_url(), 1);
    let (code, err) = origin_exit(
        dir.path(),
        &["--store", &js.store_url(), "--nats-replicas", "2"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("exists with other settings: replicas are 1, --nats-replicas says 2"),
        "{err}"
    );
    // A server that wants a user and password: refused without them (exit 1, saying so), served
    // with them (the password from the environment).
    let mut auth = NatsCluster::configure_with(
        &dir.path().join("auth"),
        1,
        true,
        "authorization { user: cue, password: s3cret-pw }\n",
    );
    auth.start_node(0);
    auth.wait_ready(0, Duration::from_secs(20));
    let url = auth.store_url();
    let (code, err) = origin_exit(dir.path(), &["--store", &url, "--nats-replicas", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused this origin"), "{err}");
    let (http, relay) = (free_addr(), free_addr());
    let mut with_pw = std::process::Command::new(workspace_bin("cue-origin"))
        .args(["--http", &http.to_string(), "--relay", &relay.to_string()])
        .args([
            "--store",
            &url,
            "--nats-replicas",
            "1",
            "--nats-user",
            "cue",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("auth-o"))
        .env("CUE_AUTH_SECRET", SECRET)
        .env("CUE_NATS_PASSWORD", "s3cret-pw")
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Proc)
        .unwrap();
    wait_healthy(http, Duration::from_secs(20));
    assert!(publish_ok(http, "fight", "round-1") > 0);
    with_pw.kill9();
    // A bad store value is a settings error (exit 2).
    let out = std::process::Command::new(workspace_bin("cue-origin"))
        .args(["--store", "redis://x:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store: 'redis://x:1'"));
}

/// `DELETE` on one origin retires the event on every origin of the stream (the retirement is a
/// message on the event's subject), across a restart too, and its edge forgets it; published
/// again, the event starts anew above its old seq.
#[test]
fn a_retirement_on_one_origin_holds_on_all_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 1);
    let store = cluster.store_url();
    let o1 = nats_origin(&dir.path().join("o1"), &store, 1);
    let mut o2 = nats_origin(&dir.path().join("o2"), &store, 1);
    let edge = start_edge(o2.relay, free_addr(), free_addr(), &[]);
    let old = publish_ok(o1.http, "fight", "round-1");
    publish_ok(o1.http, "keep", "k1");
    wait_until(Duration::from_secs(10), || {
        current_seq(o2.http, "fight") == Some(old)
    });
    let auth = format!("Bearer {}", publisher_token());
    let r = request(
        o1.http,
        "DELETE",
        "/v1/events/fight",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    wait_until(Duration::from_secs(10), || {
        request(o2.http, "GET", "/v1/events/fight", &[], b"").is_ok_and(|r| r.status == 404)
    });
    wait_until(Duration::from_secs(10), || {
        metric(&edge.metrics(), "cue_edge_relay_retirements_total") >= 1.0
    });
    // Retiring it again on the other origin: nothing left to retire.
    let r = request(
        o2.http,
        "DELETE",
        "/v1/events/fight",
        &[("Authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    o2.proc.kill9();
    let o3 = nats_origin(&dir.path().join("o3"), &store, 1);
    assert_eq!(
        current_seq(o3.http, "fight"),
        None,
        "retired after a restart"
    );
    assert!(current_seq(o3.http, "keep").is_some());
    let new = publish_ok(o3.http, "fight", "again");
    assert!(new > old);
    wait_until(Duration::from_secs(10), || {
        current_seq(o1.http, "fight") == Some(new)
    });
}

/// A class given on one origin travels with the cue through the stream (its `Cue-Priority`
/// header): an edge linked to another origin counts it as critical, and so does an edge of an
/// origin started later on an empty data directory (its catch-up comes from the stream); a
/// publish without a class makes the event normal on every origin.
#[test]
fn a_class_given_on_one_origin_is_relayed_by_every_origin() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 1);
    let store = cluster.store_url();
    let o1 = nats_origin(&dir.path().join("o1"), &store, 1);
    let o2 = nats_origin(&dir.path().join("o2"), &store, 1);
    let edge2 = start_edge(o2.relay, free_addr(), free_addr(), &[]);
    edge2.wait_linked();
    let by_class = |edge: &Edge, c: &str| {
        metric(
            &edge.metrics(),
            &format!("cue_edge_relay_cues_by_class_total{{class=\"{c}\"}}"),
        )
    };
    publish_body_ok(o1.http, "ko", r#"{"key":"round-1","priority":"critical"}"#);
    publish_body_ok(o1.http, "bg", r#"{"key":"ad","priority":"background"}"#);
    wait_until(Duration::from_secs(10), || {
        by_class(&edge2, "critical") == 1.0 && by_class(&edge2, "background") == 1.0
    });
    assert_eq!(by_class(&edge2, "normal"), 0.0);
    let o3 = nats_origin(&dir.path().join("o3"), &store, 1);
    let edge3 = start_edge(o3.relay, free_addr(), free_addr(), &[]);
    wait_until(Duration::from_secs(10), || {
        by_class(&edge3, "critical") == 1.0 && by_class(&edge3, "background") == 1.0
    });
    publish_ok(o3.http, "ko", "round-2");
    wait_until(Duration::from_secs(10), || {
        by_class(&edge2, "normal") == 1.0 && by_class(&edge3, "normal") == 1.0
    });
    assert_eq!(by_class(&edge2, "critical"), 1.0);
}

#[test]
fn a_tenants_event_is_its_own_on_every_origin_of_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = NatsCluster::start(&dir.path().join("nats"), 1);
    let store = cluster.store_url();
    let o1 = nats_origin(&dir.path().join("o1"), &store, 1);
    let o2 = nats_origin(&dir.path().join("o2"), &store, 1);
    let edge = start_edge(o2.relay, free_addr(), free_addr(), &[]);
    edge.wait_linked();
    let mut acme = subscribe(
        edge.ws,
        "events=fight",
        Some(&device_of(Some("acme"), &["fight"])),
    )
    .unwrap();
    let mut plain = subscribe(edge.ws, "events=fight", Some(&device_of(None, &["fight"]))).unwrap();
    // Published on one origin (subjects CUE.acme.fight and CUE.fight), relayed by the other.
    let sa = publish_as(o1.http, Some("acme"), "fight", "acme-1");
    let sd = publish_as(o1.http, None, "fight", "default-1");
    assert_eq!(next_cue(&mut acme), ("fight".into(), "acme-1".into(), sa));
    assert_eq!(
        next_cue(&mut plain),
        ("fight".into(), "default-1".into(), sd)
    );
    assert!(quiet_for(&mut acme, Duration::from_millis(300)));
    assert!(quiet_for(&mut plain, Duration::from_millis(300)));
    // One seq space per tenant's event across origins: o2 continues acme's, not the default's.
    let sa2 = publish_as(o2.http, Some("acme"), "fight", "acme-2");
    assert!(sa2 > sa);
    assert_eq!(next_cue(&mut acme).1, "acme-2");
    // An origin started later loads each tenant's newest from the stream.
    let o3 = nats_origin(&dir.path().join("o3"), &store, 1);
    let get = |path: &str| {
        let r = cue_testkit::client::request(o3.http, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["current"]["key"].clone()
    };
    assert_eq!(get("/v1/tenants/acme/events/fight"), "acme-2");
    assert_eq!(get("/v1/events/fight"), "default-1");
}
