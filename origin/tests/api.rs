//! The real `cue-origin` binary on loopback: publish API validation and auth, durability across
//! `kill -9` (including a torn tail), the relay handshake, graceful SIGTERM, token minting.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cue_common::relay::{self, Frame};
use cue_common::time::unix_now_s;
use cue_common::token::TokenKeys;
use cue_testkit::client::request;
use cue_testkit::{free_addr, Proc};

const SECRET: &str = "origin-integration-secret-0123456789abcdef";

fn start(dir: &Path, http: SocketAddr, relay: SocketAddr) -> Proc {
    cue_testkit::start_origin(dir, http, relay, SECRET, &[])
}

fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes()).unwrap()
}

/// The seq of a `201` body.
fn seq_of(body: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(body).unwrap()["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {body}"))
}

fn post(http: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    let r = request(http, "POST", path, &h, body.as_bytes()).unwrap();
    (r.status, r.body)
}

/// Runs the `cue-origin` CLI with `args` on the data directory `dir`, with the tests' secret.
fn origin_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cue_testkit::workspace_bin("cue-origin"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("CUE_AUTH_SECRET", SECRET)
        .output()
        .unwrap()
}

#[test]
fn publish_validation_auth_and_current() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _o = start(dir.path(), http, relay);
    let pubt = keys().mint_publisher(unix_now_s(), 60);
    let dev = keys().mint_device("d", &["*".into()], unix_now_s(), 60);
    let expired = keys().mint_publisher(unix_now_s() - 120, 60);
    let cases: Vec<(&str, Option<&str>, &str, u16)> = vec![
        ("/v1/events/fight/cues", None, r#"{"key":"a"}"#, 401),
        (
            "/v1/events/fight/cues",
            Some(&expired),
            r#"{"key":"a"}"#,
            401,
        ),
        (
            "/v1/events/fight/cues",
            Some("garbage"),
            r#"{"key":"a"}"#,
            401,
        ),
        ("/v1/events/fight/cues", Some(&dev), r#"{"key":"a"}"#, 403),
        ("/v1/events/Fight/cues", Some(&pubt), r#"{"key":"a"}"#, 400),
        (
            "/v1/events/fight/cues",
            Some(&pubt),
            r#"{"key":"a b"}"#,
            400,
        ),
        (
            "/v1/events/fight/cues",
            Some(&pubt),
            r#"{"key":"a","x":1}"#,
            400,
        ),
        ("/v1/events/fight/cues", Some(&pubt), r#"not json"#, 400),
        (
            "/v1/events/fight/cues",
            Some(&pubt),
            r#"{"key":"round-1"}"#,
            201,
        ),
        (
            "/v1/events/fight/cues",
            Some(&pubt),
            r#"{"key":"round-2"}"#,
            201,
        ),
    ];
    let mut seqs = Vec::new();
    for (path, tok, body, want) in cases {
        let (st, b) = post(http, path, tok, body);
        assert_eq!(st, want, "{path} {body}: {b}");
        if st == 201 {
            seqs.push(seq_of(&b));
        }
    }
    assert_eq!(seqs.len(), 2);
    assert!(seqs[1] > seqs[0], "{seqs:?}");
    // A seq is the publish time in ms unless the event already had that one.
    let now_ms = unix_now_s() * 1000;
    assert!(
        seqs[0] + 120_000 > now_ms && seqs[0] <= now_ms + 2_000,
        "{seqs:?}"
    );
    let big = format!("{{\"key\":\"{}\"}}", "a".repeat(5000));
    assert_eq!(
        post(http, "/v1/events/fight/cues", Some(&pubt), &big).0,
        413
    );
    let r = request(http, "GET", "/v1/events/fight", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["event"], "fight");
    assert_eq!(v["current"]["seq"], seqs[1]);
    assert_eq!(v["current"]["key"], "round-2");
    let r = request(http, "GET", "/v1/events/nothing-yet", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), r#"{"current":null,"event":"nothing-yet"}"#);
    let m = request(http, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(m.contains("cue_origin_published_total 2"), "{m}");
    assert!(
        m.contains("cue_origin_http_refused_total{status=\"401\"} 3"),
        "{m}"
    );
    assert_eq!(
        request(http, "PUT", "/v1/events/fight", &[], b"")
            .unwrap()
            .status,
        405
    );
    // DELETE retires, with a publisher token only.
    assert_eq!(
        request(http, "DELETE", "/v1/events/fight", &[], b"")
            .unwrap()
            .status,
        401
    );
    assert_eq!(request(http, "GET", "/nope", &[], b"").unwrap().status, 404);
}

#[test]
fn kill9_then_torn_tail_recovers_last_durable_cue() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let mut o = start(dir.path(), http, relay);
    let pubt = keys().mint_publisher(unix_now_s(), 60);
    let mut last = 0;
    for i in 1..=5 {
        let (st, b) = post(
            http,
            "/v1/events/fight/cues",
            Some(&pubt),
            &format!("{{\"key\":\"r{i}\"}}"),
        );
        assert_eq!(st, 201);
        last = seq_of(&b);
    }
    let _ = o.0.kill();
    let _ = o.0.wait();
    // A crash mid-append leaves half a record at the tail.
    let log = dir.path().join("cues.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&[0, 0, 0, 40, 1, 2, 3]).unwrap();
    drop(f);
    let _o = start(dir.path(), http, relay);
    let r = request(http, "GET", "/v1/events/fight", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["current"]["seq"], last, "{}", r.body);
    assert_eq!(v["current"]["key"], "r5");
    let (st, b) = post(
        http,
        "/v1/events/fight/cues",
        Some(&pubt),
        r#"{"key":"r6"}"#,
    );
    assert_eq!(st, 201);
    assert!(seq_of(&b) > last, "{b}");
}

/// Bytes flipped in the middle of the log (not the tail): the bad record is skipped, every
/// acknowledged cue after it is served, the loss is counted.
#[test]
fn a_bad_record_in_the_middle_of_the_log_hides_no_later_cue() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let mut o = start(dir.path(), http, relay);
    let pubt = keys().mint_publisher(unix_now_s(), 60);
    let mut acked = Vec::new();
    for i in 1..=30 {
        let (st, b) = post(
            http,
            &format!("/v1/events/e{}/cues", i % 5),
            Some(&pubt),
            &format!("{{\"key\":\"k{i}\"}}"),
        );
        assert_eq!(st, 201, "{b}");
        acked.push((format!("e{}", i % 5), format!("k{i}")));
    }
    o.kill9();
    drop(o);
    let log = dir.path().join("cues.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 6] {
        *b ^= 0xa5;
    }
    std::fs::write(&log, &bytes).unwrap();
    let _o = start(dir.path(), http, relay);
    // The last five publishes (one per event) are after the damage: all served.
    for (e, k) in &acked[25..] {
        let r = request(http, "GET", &format!("/v1/events/{e}"), &[], b"").unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["current"]["key"], k.as_str(), "{e}: {}", r.body);
    }
    let m = request(http, "GET", "/metrics", &[], b"").unwrap().body;
    let skipped: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cue_origin_log_skipped_bytes "))
        .expect("the skipped-bytes gauge")
        .trim()
        .parse()
        .unwrap();
    assert!(skipped > 0, "{m}");
}

#[test]
fn relay_catch_up_then_live_then_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _o = start(dir.path(), http, relay);
    let pubt = keys().mint_publisher(unix_now_s(), 60);
    let mut seq = HashMap::new();
    for (e, k) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
        let (st, b) = post(
            http,
            &format!("/v1/events/{e}/cues"),
            Some(&pubt),
            &format!("{{\"key\":\"{k}\"}}"),
        );
        assert_eq!(st, 201);
        seq.insert(k, seq_of(&b));
    }
    let mut s = TcpStream::connect(relay).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = Vec::new();
    let a = cue_common::cue::EventName::new("a").unwrap();
    relay::encode(
        &Frame::Hello {
            version: cue_common::relay::VERSION,
            edge_id: "t".into(),
            since: vec![(a, seq["a1"])],
        },
        &mut hello,
    );
    s.write_all(&hello).unwrap();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut read_frames = |s: &mut TcpStream, n: usize, frames: &mut Vec<Frame>| {
        while frames.len() < n {
            if let Some((f, used)) = relay::decode(&buf).unwrap() {
                buf.drain(..used);
                frames.push(f);
                continue;
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).unwrap();
            assert!(k > 0, "relay closed");
            buf.extend_from_slice(&chunk[..k]);
        }
    };
    read_frames(&mut s, 3, &mut frames);
    let seqs: Vec<String> = frames
        .iter()
        .map(|f| match f {
            Frame::Cue(c) => format!("{}:{}", c.event(), c.seq()),
            Frame::CaughtUp(n) => format!("caught-up:{n}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seqs,
        vec![
            format!("a:{}", seq["a2"]),
            format!("b:{}", seq["b1"]),
            "caught-up:2".into()
        ]
    );
    let b2 = seq_of(&post(http, "/v1/events/b/cues", Some(&pubt), r#"{"key":"b2"}"#).1);
    assert!(b2 > seq["b1"]);
    read_frames(&mut s, 4, &mut frames);
    assert!(matches!(&frames[3], Frame::Cue(c) if c.key() == "b2" && c.seq() == b2));
    // Silent for a heartbeat: the origin pings.
    read_frames(&mut s, 5, &mut frames);
    assert!(matches!(frames[4], Frame::Ping(_)), "{:?}", frames[4]);
}

#[test]
fn sigterm_stops_gracefully_and_token_cli_mints() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let o = start(dir.path(), http, relay);
    unsafe { libc::kill(o.0.id() as i32, libc::SIGTERM) };
    let mut o = o;
    let t = Instant::now();
    let code = loop {
        if let Some(s) = o.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    let out = Command::new(env!("CARGO_BIN_EXE_cue-origin"))
        .args([
            "token",
            "device",
            "--sub",
            "tv-1",
            "--events",
            "fight,halftime",
            "--ttl",
            "60",
        ])
        .env("CUE_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap();
    let c = keys().verify(tok.trim(), unix_now_s()).unwrap();
    assert_eq!(c.sub.as_deref(), Some("tv-1"));
    assert!(c.allows_event("halftime") && !c.allows_event("other"));
    let bad = Command::new(env!("CARGO_BIN_EXE_cue-origin"))
        .args(["token", "device", "--sub", "x", "--events", "Bad!"])
        .env("CUE_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--events"));
    // No keys anywhere: one clear line saying what to do.
    let none = Command::new(env!("CARGO_BIN_EXE_cue-origin"))
        .args(["token", "publisher", "--data-dir"])
        .arg(dir.path().join("empty"))
        .env_remove("CUE_AUTH_SECRET")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no token keys"));
}

#[test]
fn publisher_tokens_scoped_to_events_publish_those_only() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _o = start(dir.path(), http, relay);
    // Minted by the CLI, as an operator would.
    let out = origin_cli(
        dir.path(),
        &[
            "token",
            "publisher",
            "--events",
            "fight,gala",
            "--ttl",
            "60",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let body = r#"{"key":"round-1"}"#;
    assert_eq!(
        post(http, "/v1/events/fight/cues", Some(&scoped), body).0,
        201
    );
    assert_eq!(
        post(http, "/v1/events/gala/cues", Some(&scoped), body).0,
        201
    );
    let (st, b) = post(http, "/v1/events/other/cues", Some(&scoped), body);
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("not allowed this event"), "{b}");
    // A device token, even for '*', never publishes.
    let dev = keys().mint_device("d", &["*".into()], unix_now_s(), 60);
    assert_eq!(post(http, "/v1/events/fight/cues", Some(&dev), body).0, 403);
    // A bad event list is a settings error.
    let out = Command::new(cue_testkit::workspace_bin("cue-origin"))
        .args(["token", "publisher", "--events", "Bad Name"])
        .env("CUE_AUTH_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A relay link of protocol `version` that has sent its HELLO (holding nothing); reads frames.
struct Link {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Link {
    fn open(relay: SocketAddr, version: u8, since: Vec<(cue_common::cue::EventName, u64)>) -> Self {
        let mut s = TcpStream::connect(relay).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut hello = Vec::new();
        relay::encode(
            &Frame::Hello {
                version,
                edge_id: format!("v{version}"),
                since,
            },
            &mut hello,
        );
        s.write_all(&hello).unwrap();
        Self { s, buf: Vec::new() }
    }

    /// The next frame other than a PING.
    fn next(&mut self) -> Frame {
        loop {
            if let Some((f, used)) = relay::decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                if matches!(f, Frame::Ping(_)) {
                    continue;
                }
                return f;
            }
            let mut chunk = [0u8; 4096];
            let k = self.s.read(&mut chunk).unwrap();
            assert!(k > 0, "relay closed");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }
}

#[test]
fn delete_retires_an_event_everywhere_durably_and_idle_events_retire_by_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let extra = ["--event-retire-after-s", "3"];
    let mut o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &extra);
    let now = unix_now_s();
    let pubt = keys().mint_publisher(now, 600);
    let other = keys().mint_publisher_for(Some(&["other".to_string()]), now, 600);
    let publish = |e: &str, k: &str| {
        let (st, b) = post(
            http,
            &format!("/v1/events/{e}/cues"),
            Some(&pubt),
            &format!("{{\"key\":\"{k}\"}}"),
        );
        assert_eq!(st, 201, "{b}");
        seq_of(&b)
    };
    let delete = |e: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(http, "DELETE", &format!("/v1/events/{e}"), &h, b"")
            .unwrap()
            .status
    };
    let get = |e: &str| {
        request(http, "GET", &format!("/v1/events/{e}"), &[], b"")
            .unwrap()
            .status
    };
    let old = publish("fight", "round-1");
    publish("keep", "k1");
    // Two edges linked: one of protocol 2, one of protocol 1 (an edge not upgraded yet).
    let mut v2 = Link::open(relay, 2, vec![]);
    let mut v1 = Link::open(relay, 1, vec![]);
    for l in [&mut v2, &mut v1] {
        for _ in 0..3 {
            l.next(); // two cues, CAUGHT_UP
        }
    }
    // Only a publisher allowed the event may retire it.
    assert_eq!(delete("fight", None), 401);
    assert_eq!(delete("fight", Some(&other)), 403);
    assert_eq!(delete("Bad*", Some(&pubt)), 400);
    assert_eq!(delete("fight", Some(&pubt)), 204);
    assert_eq!(get("fight"), 404);
    assert_eq!(delete("fight", Some(&pubt)), 404, "retired already");
    // The protocol-2 edge is told; the protocol-1 edge gets nothing it cannot read.
    assert!(matches!(v2.next(), Frame::Retired(e) if e.as_str() == "fight"));
    let k2 = publish("keep", "k2");
    assert!(matches!(v1.next(), Frame::Cue(c) if c.seq() == k2));
    assert!(matches!(v2.next(), Frame::Cue(c) if c.seq() == k2));
    // An edge that comes back holding the retired event learns at once.
    let mut back = Link::open(
        relay,
        2,
        vec![(cue_common::cue::EventName::new("fight").unwrap(), old)],
    );
    let mut got = vec![back.next(), back.next(), back.next()];
    got.sort_by_key(|f| format!("{f:?}"));
    assert!(
        got.iter()
            .any(|f| matches!(f, Frame::Retired(e) if e.as_str() == "fight")),
        "{got:?}"
    );
    // Durable: after a kill -9 the event is still retired; published again, it starts anew
    // above its old seq.
    o.kill9();
    drop(o);
    let mut o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &extra);
    assert_eq!(get("fight"), 404);
    assert_eq!(get("keep"), 200);
    assert!(publish("fight", "again") > old);
    // Never published is not retired: 200 with no cue.
    assert_eq!(get("never"), 200);
    // Idle for 3 s: retired by itself (`keep`'s last cue is the oldest).
    cue_testkit::wait_until(Duration::from_secs(15), || get("keep") == 404);
    let m = request(http, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(m.contains("cue_origin_events_retired_total "), "{m}");
    o.kill9();
}

/// A client trickling its request head one byte a second is cut off at the header deadline,
/// however long it keeps sending; publishes go on meanwhile.
#[test]
fn a_slow_http_client_is_cut_off_at_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _o = start(dir.path(), http, relay);
    let pubt = keys().mint_publisher(unix_now_s(), 60);
    let mut slow = TcpStream::connect(http).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let head = b"POST /v1/events/fight/cues HTTP/1.1\r\nHost: o\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let t = Instant::now();
    let mut closed = None;
    for (i, b) in head.iter().cycle().enumerate().take(30) {
        if slow.write_all(&[*b]).is_err() {
            closed = Some(t.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = Some(t.elapsed());
                break;
            }
            Ok(_) => {
                closed = Some(t.elapsed());
                break;
            }
            Err(_) => {}
        }
        if i == 3 {
            let (st, b) = post(http, "/v1/events/fight/cues", Some(&pubt), r#"{"key":"k"}"#);
            assert_eq!(st, 201, "{b}");
        }
        std::thread::sleep(Duration::from_millis(950));
    }
    let closed = closed.expect("the slow client was never cut off");
    assert!(
        closed >= Duration::from_secs(9) && closed < Duration::from_secs(14),
        "cut off after {closed:?} (deadline 10 s)"
    );
}

/// A publish's priority reaches edges of protocol 3 as CUE_CLASS (live and at catch-up), edges
/// of protocol 2 as a plain CUE; a publish without one makes the event normal again.
#[test]
fn a_publish_class_is_relayed_to_edges_that_know_it() {
    use cue_common::cue::Priority;
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let _o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &[]);
    let pubt = keys().mint_publisher(unix_now_s(), 600);
    let mut v3 = Link::open(relay, 3, vec![]);
    let mut v2 = Link::open(relay, 2, vec![]);
    assert!(matches!(v3.next(), Frame::CaughtUp(0)));
    assert!(matches!(v2.next(), Frame::CaughtUp(0)));
    let (st, b) = post(
        http,
        "/v1/events/ko/cues",
        Some(&pubt),
        r#"{"key":"round-1","priority":"critical"}"#,
    );
    assert_eq!(st, 201, "{b}");
    match v3.next() {
        Frame::ClassedCue(c, Priority::Critical) => assert_eq!(c.key(), "round-1"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(v2.next(), Frame::Cue(c) if c.key() == "round-1"));
    // At catch-up too.
    let mut late = Link::open(relay, 3, vec![]);
    assert!(matches!(
        late.next(),
        Frame::ClassedCue(_, Priority::Critical)
    ));
    // Published without a priority: normal again.
    let (st, b) = post(
        http,
        "/v1/events/ko/cues",
        Some(&pubt),
        r#"{"key":"round-2"}"#,
    );
    assert_eq!(st, 201, "{b}");
    assert!(matches!(v3.next(), Frame::Cue(c) if c.key() == "round-2"));
}

/// An event's class is written with its cue: after a kill -9 and a restart on the same data
/// directory the origin still relays it with its class (at catch-up), until a publish without
/// one makes it normal; the newest cue's class wins at compaction too.
#[test]
fn a_class_outlives_a_restart_of_the_embedded_origin() {
    use cue_common::cue::Priority;
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    // The smallest log: 200 publishes compact it, so the classes go through compaction too.
    let extra = ["--log-max-bytes", "4096"];
    let mut o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &extra);
    let pubt = keys().mint_publisher(unix_now_s(), 600);
    for (event, i) in [("ko", 0), ("bg", 1), ("plain", 2)]
        .iter()
        .cycle()
        .take(200)
    {
        let body = match i {
            0 => r#"{"key":"k","priority":"critical"}"#,
            1 => r#"{"key":"k","priority":"background"}"#,
            _ => r#"{"key":"k"}"#,
        };
        let (st, b) = post(http, &format!("/v1/events/{event}/cues"), Some(&pubt), body);
        assert_eq!(st, 201, "{b}");
    }
    let catch_up = |relay| {
        let mut link = Link::open(relay, 3, vec![]);
        let mut got = std::collections::BTreeMap::new();
        loop {
            match link.next() {
                Frame::ClassedCue(c, p) => got.insert(c.event().to_string(), p),
                Frame::Cue(c) => got.insert(c.event().to_string(), Priority::Normal),
                Frame::CaughtUp(n) => {
                    assert_eq!(n as usize, got.len());
                    return got;
                }
                other => panic!("{other:?}"),
            };
        }
    };
    let want: std::collections::BTreeMap<String, Priority> = [
        ("bg".to_string(), Priority::Background),
        ("ko".to_string(), Priority::Critical),
        ("plain".to_string(), Priority::Normal),
    ]
    .into();
    assert_eq!(catch_up(relay), want);
    let m = cue_testkit::client::request(http, "GET", "/metrics", &[], b"").unwrap();
    let compactions = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("cue_origin_log_compactions_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(compactions >= Some(1.0), "{compactions:?}");
    o.kill9();
    let mut o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &extra);
    assert_eq!(catch_up(relay), want, "after a restart");
    let (st, b) = post(http, "/v1/events/ko/cues", Some(&pubt), r#"{"key":"n"}"#);
    assert_eq!(st, 201, "{b}");
    o.kill9();
    let _o = cue_testkit::start_origin(dir.path(), http, relay, SECRET, &extra);
    let mut want = want;
    want.insert("ko".into(), Priority::Normal);
    assert_eq!(catch_up(relay), want, "published as normal since");
}

#[test]
fn two_tenants_publish_the_same_event_name_without_meeting() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let mut o = start(dir.path(), http, relay);
    let now = unix_now_s();
    // Tenant tokens as an operator mints them, with the CLI.
    let mint = |tenant: &str| {
        let out = origin_cli(
            dir.path(),
            &["token", "publisher", "--tenant", tenant, "--ttl", "60"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a, b) = (mint("acme"), mint("brand-b"));
    let default = keys().mint_publisher(now, 60);
    let body = |k: &str| format!(r#"{{"key":"{k}"}}"#);
    let (st, ra) = post(
        http,
        "/v1/tenants/acme/events/fight/cues",
        Some(&a),
        &body("a-1"),
    );
    assert_eq!(st, 201, "{ra}");
    let ra: serde_json::Value = serde_json::from_str(&ra).unwrap();
    assert_eq!(
        ra["event"], "fight",
        "the bare name, as the tenant named it"
    );
    assert_eq!(ra["tenant"], "acme");
    let (st, rb) = post(
        http,
        "/v1/tenants/brand-b/events/fight/cues",
        Some(&b),
        &body("b-1"),
    );
    assert_eq!(st, 201, "{rb}");
    let (st, rd) = post(http, "/v1/events/fight/cues", Some(&default), &body("d-1"));
    assert_eq!(st, 201, "{rd}");
    assert!(
        !rd.contains("tenant"),
        "the default tenant's answer is as before: {rd}"
    );
    // Each tenant's current cue is its own.
    let current = |path: &str| {
        let r = request(http, "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
    };
    let keys_now = || {
        [
            "/v1/tenants/acme/events/fight",
            "/v1/tenants/brand-b/events/fight",
            "/v1/events/fight",
        ]
        .map(|p| current(p)["current"]["key"].as_str().unwrap().to_string())
    };
    assert_eq!(keys_now(), ["a-1", "b-1", "d-1"]);
    assert_eq!(
        current("/v1/tenants/acme/events/fight")["current"]["event"],
        "fight"
    );
    // The durable log keeps them apart across a kill -9.
    o.kill9();
    let _o = start(dir.path(), http, relay);
    assert_eq!(keys_now(), ["a-1", "b-1", "d-1"]);
    // A tenant's token publishes its own events only, and never the default tenant's.
    for (path, tok, why) in [
        (
            "/v1/tenants/brand-b/events/fight/cues",
            &a,
            "not for tenant brand-b",
        ),
        ("/v1/events/fight/cues", &a, "is for a tenant"),
        (
            "/v1/tenants/acme/events/fight/cues",
            &default,
            "not for tenant acme",
        ),
    ] {
        let (st, r) = post(http, path, Some(tok), &body("x"));
        assert_eq!((st, r.contains(why)), (403, true), "{path}: {r}");
    }
    // Bad tenant names in a URL or on the command line.
    let (st, r) = post(
        http,
        "/v1/tenants/Acme/events/fight/cues",
        Some(&a),
        &body("x"),
    );
    assert_eq!(st, 400, "{r}");
    assert!(r.contains("tenant must be"), "{r}");
    let out = origin_cli(
        dir.path(),
        &[
            "token", "device", "--sub", "d", "--events", "fight", "--tenant", "a/b",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    // Retiring acme's event leaves the others.
    let r = request(
        http,
        "DELETE",
        "/v1/tenants/acme/events/fight",
        &[("Authorization", &format!("Bearer {a}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = request(http, "GET", "/v1/tenants/acme/events/fight", &[], b"").unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        current("/v1/tenants/brand-b/events/fight")["current"]["key"],
        "b-1"
    );
    assert_eq!(current("/v1/events/fight")["current"]["key"], "d-1");
}
