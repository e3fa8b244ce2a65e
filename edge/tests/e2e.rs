//! End to end on loopback: the real `cue-origin` and `cue-edge` binaries, real WebSocket clients
//! (tungstenite, and Python's `websockets` when installed), real HTTP publishes.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn subscribe_publish_reconnect_with_since_and_auth_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &[]);
    let tok = device_token(&["fight"]);

    // Header token (native client) and query token (browser style), json and binary.
    let mut a = subscribe(edge.ws, "events=fight", Some(&tok)).unwrap();
    let mut b = subscribe(
        edge.ws,
        &format!("events=fight&format=binary&token={tok}"),
        None,
    )
    .unwrap();
    let s1 = publish_ok(origin.http, "fight", "round-1");
    assert_eq!(next_cue(&mut a), ("fight".into(), "round-1".into(), s1));
    assert_eq!(next_cue(&mut b), ("fight".into(), "round-1".into(), s1));
    // The shards' records of that fanout: both devices between them, each handed in after
    // the publish, its last send accepted after that.
    let all = edge.fanouts();
    let recs: Vec<&serde_json::Value> = all
        .iter()
        .filter(|f| f["event"] == "fight" && f["seq"] == s1)
        .collect();
    let devices: u64 = recs.iter().map(|f| f["devices"].as_u64().unwrap()).sum();
    assert_eq!(devices, 2, "{all:?}");
    for rec in recs {
        assert_eq!(rec["class"], "normal", "{rec}");
        let (published, taken, done) = (
            rec["published_ms"].as_u64().unwrap(),
            rec["taken_us"].as_u64().unwrap(),
            rec["done_us"].as_u64().unwrap(),
        );
        assert!(published <= taken / 1000 && taken <= done, "{rec}");
    }
    assert!(edge
        .metrics()
        .contains("cue_edge_cue_fanout_seconds_count{shard=\"0\"}"));

    // `a` goes away; three cues are published; it comes back with since=its last seq and gets
    // only the newest, then live cues.
    drop(a);
    let mut s4 = s1;
    for k in ["round-2", "round-3", "round-4"] {
        let s = publish_ok(origin.http, "fight", k);
        assert!(s > s4, "seqs go up");
        s4 = s;
    }
    let mut a = subscribe(
        edge.ws,
        &format!("events=fight&since=fight:{s1}"),
        Some(&tok),
    )
    .unwrap();
    assert_eq!(next_cue(&mut a), ("fight".into(), "round-4".into(), s4));
    assert!(
        quiet_for(&mut a, Duration::from_millis(300)),
        "no backlog after the newest"
    );
    let s5 = publish_ok(origin.http, "fight", "round-5");
    assert_eq!(next_cue(&mut a).2, s5);
    // Up to date: since = current seq gives no catch-up.
    let mut c = subscribe(
        edge.ws,
        &format!("events=fight&since=fight:{s5}"),
        Some(&tok),
    )
    .unwrap();
    assert!(quiet_for(&mut c, Duration::from_millis(300)));

    // Refusals before the upgrade.
    let other = cue_common::token::TokenKeys::new(&[1u8; 32])
        .unwrap()
        .mint_device("d", &["fight".into()], cue_common::time::unix_now_s(), 60);
    let cases = [
        ("events=fight".to_string(), None, 401),
        (
            "events=fight".to_string(),
            Some(expired_device_token(&["fight"])),
            401,
        ),
        ("events=fight".to_string(), Some(other), 401),
        ("events=fight,halftime".to_string(), Some(tok.clone()), 403),
        ("events=Bad*Event".to_string(), Some(tok.clone()), 400),
        ("since=fight:1".to_string(), Some(tok.clone()), 400),
    ];
    for (q, t, want) in cases {
        let err = subscribe(edge.ws, &q, t.as_deref())
            .err()
            .unwrap_or_else(|| panic!("{q} upgraded"));
        assert_eq!(err.0, want, "{q}: {}", err.1);
    }
    let m = edge.metrics();
    assert!(
        m.contains("cue_edge_refused_total{shard=\"0\",status=\"401\"}")
            && m.contains("cue_edge_deliveries_total")
    );
}

#[test]
fn origin_kill9_after_201_loses_nothing_and_edges_relink() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let mut origin = start_origin(dir.path(), http, relay);
    let edge = start_edge(relay, free_addr(), free_addr(), &[]);
    let mut dev = subscribe(edge.ws, "events=fight", Some(&device_token(&["fight"]))).unwrap();
    let s1 = publish_ok(http, "fight", "round-1");
    assert_eq!(next_cue(&mut dev).2, s1);
    origin.proc.kill9();
    let origin = start_origin(dir.path(), http, relay);
    let cur = cue_testkit::client::request(http, "GET", "/v1/events/fight", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_str(&cur.body).unwrap();
    assert_eq!(v["current"]["seq"].as_u64(), Some(s1), "{}", cur.body);
    assert_eq!(v["current"]["key"], "round-1");
    edge.wait_linked();
    let s2 = publish_ok(origin.http, "fight", "round-2");
    assert!(s2 > s1, "seq continues after recovery");
    assert_eq!(next_cue(&mut dev), ("fight".into(), "round-2".into(), s2));
}

#[test]
fn edge_restart_devices_converge_on_newest() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let (ws, admin) = (free_addr(), free_addr());
    let mut edge = start_edge(origin.relay, ws, admin, &[]);
    let tok = device_token(&["*"]);
    let mut devs: Vec<_> = (0..20)
        .map(|_| subscribe(ws, "events=fight,halftime", Some(&tok)).unwrap())
        .collect();
    let s1 = publish_ok(origin.http, "fight", "round-1");
    for d in &mut devs {
        assert_eq!(next_cue(d).2, s1);
    }
    edge.proc.kill9();
    drop(devs);
    // Published while the edge is down.
    publish_ok(origin.http, "fight", "round-2");
    let h1 = publish_ok(origin.http, "halftime", "show");
    let s3 = publish_ok(origin.http, "fight", "round-3");
    let _edge = start_edge(origin.relay, ws, admin, &[]);
    for _ in 0..20 {
        let mut d = subscribe(
            ws,
            &format!("events=fight,halftime&since=fight:{s1}"),
            Some(&tok),
        )
        .unwrap();
        let mut got = vec![next_cue(&mut d), next_cue(&mut d)];
        got.sort();
        assert_eq!(
            got,
            vec![
                ("fight".into(), "round-3".into(), s3),
                ("halftime".into(), "show".into(), h1)
            ]
        );
    }
}

#[test]
fn bad_flags_and_config_exit_nonzero_with_one_clear_line() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("cue-edge");
    let out = std::process::Command::new(&bin)
        .args(["--poll-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("poll_ms"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edge.toml");
    std::fs::write(&cfg, "shardz = 3\n").unwrap();
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shardz"));
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--origin",
        "--ws",
        "--admin",
        "--shards",
        "--config",
        "--no-auth",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// An origin and a linked edge whose quiet shards wait the longest allowed (1 s) for input,
/// with `more` config lines.
fn quiet_edge(dir: &std::path::Path, more: &str) -> (Origin, Edge) {
    let origin = start_origin(dir, free_addr(), free_addr());
    let toml = edge_config(dir, &format!("poll_idle_max_ms = 1000\n{more}"));
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &["--config", &toml]);
    edge.wait_linked();
    (origin, edge)
}

/// A quiet shard is woken by device input at once (the ticker thread watches its sockets), not
/// at its next timer: with the idle interval at its 1 s maximum, each of five devices arriving
/// after a quiet spell wakes the shard (counted), and each gets a cue.
#[test]
fn quiet_shard_is_woken_by_device_input() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, edge) = quiet_edge(dir.path(), "");
    let tok = device_token(&["wake"]);
    let seq = publish_ok(origin.http, "wake", "k1");
    let before = metric(&edge.metrics(), "cue_edge_input_wakes_total");
    for _ in 0..5 {
        // Quiet long enough for a turn that finds nothing (1 ms turns while busy).
        std::thread::sleep(Duration::from_millis(200));
        let mut d = subscribe(edge.ws, "events=wake", Some(&tok)).unwrap();
        assert_eq!(next_cue(&mut d), ("wake".into(), "k1".into(), seq));
    }
    let woken = metric(&edge.metrics(), "cue_edge_input_wakes_total") - before;
    assert!(
        woken >= 5.0,
        "5 devices after quiet spells, {woken} input wakes"
    );
}

/// A quiet shard's fanout of many slices does not wait for its poller: 20 devices in slices
/// of 2 (on each shard); the cue handler sends the first slice, the poller the others. A quiet
/// poller waits up to `poll_idle_max_ms` (1 s here) for input that never comes; the handler
/// rings it, so each fanout takes milliseconds, not up to a second.
#[test]
fn a_quiet_shards_fanout_of_many_slices_does_not_wait_for_its_poller() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, edge) = quiet_edge(dir.path(), "fanout_slice = 2\n");
    let tok = device_token(&["slices"]);
    let mut devs: Vec<_> = (0..20)
        .map(|_| subscribe(edge.ws, "events=slices", Some(&tok)).unwrap())
        .collect();
    let mut seqs = Vec::new();
    for k in 0..5 {
        // Quiet long enough for the poller to be in its long wait.
        std::thread::sleep(Duration::from_millis(300));
        let seq = publish_ok(origin.http, "slices", &format!("k{k}"));
        for d in &mut devs {
            assert_eq!(next_cue(d).2, seq);
        }
        seqs.push(seq);
    }
    let recs = edge.fanouts();
    for seq in seqs {
        let of: Vec<_> = recs.iter().filter(|f| f["seq"] == seq).collect();
        let devices: u64 = of.iter().map(|f| f["devices"].as_u64().unwrap()).sum();
        assert_eq!(devices, 20, "cue {seq}: {recs:?}");
        for f in of {
            let span_ms = (f["done_us"].as_u64().unwrap() - f["taken_us"].as_u64().unwrap()) / 1000;
            // Without the bell this is 0-1000 ms by where the poller's wait stood (below
            // 250 ms for every shard and all five cues far less than once in a thousand runs).
            assert!(
                span_ms < 250,
                "cue {seq}: its slices took {span_ms} ms: {f}"
            );
        }
    }
}

/// Python's `websockets` library as an independent client (`.ci/run` installs it).
#[test]
fn python_websockets_client() {
    let have = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cue_testkit::require(
        "python3-websockets",
        have,
        "pip install websockets (.ci/run does)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &[]);
    let tok = device_token(&["fight"]);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/py_client.py");
    let child = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!(
            "ws://{}/v1/subscribe?events=fight&token={tok}",
            edge.ws
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the client has connected and read one cue.
    std::thread::sleep(Duration::from_millis(800));
    let seq = publish_ok(origin.http, "fight", "round-py");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["seq"].as_u64(), Some(seq));
    assert_eq!(v["key"], "round-py");
}
