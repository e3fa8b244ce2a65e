//! QUIC and TLS end to end on loopback: the real binaries, an independent QUIC client (Python
//! `aioquic`, not quinn), wss clients trusting the self-signed certificate by fingerprint
//! (Python `websockets` and tungstenite over rustls), quinn devices for refusals, handshake
//! floods, migration across shards, and a certificate reload on SIGHUP.

mod support;

use std::time::Duration;

use support::quic::{endpoint, endpoint_keep_alive, hello, logged_fingerprint, wss_subscribe};
use support::*;

fn python_has(module: &str) -> bool {
    let have = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    cue_testkit::require(
        &format!("python3-{module}"),
        have,
        &format!("pip install {module} (.ci/run does)"),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A device's hello for event `fight` with a valid token.
fn fight_hello() -> String {
    let tok = device_token(&["fight"]);
    format!("{{\"events\":[\"fight\"],\"token\":\"{tok}\"}}\n")
}

/// Writes a self-signed certificate for `name` to `dir/edge.crt` and `dir/edge.key`; returns
/// the two paths and the certificate's SHA-256.
fn write_cert(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let (cert, key) = (dir.join("edge.crt"), dir.join("edge.key"));
    let g = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(&cert, g.cert.pem()).unwrap();
    std::fs::write(&key, g.key_pair.serialize_pem()).unwrap();
    let fp = cue_edge::tls::sha256_hex(g.cert.der());
    (cert.display().to_string(), key.display().to_string(), fp)
}

/// Two edge processes (2 shards each) on one QUIC port with one certificate, plus `extra`
/// flags; returns them and the certificate's fingerprint.
fn two_edges_on_one_quic_port(
    dir: &std::path::Path,
    relay: std::net::SocketAddr,
    extra: &[&str],
) -> ([Edge; 2], String) {
    let (c, k, fp) = write_cert(dir, "edge.test");
    let quic = free_udp_addr().to_string();
    let mut args = vec!["--quic", quic.as_str(), "--tls-cert", &c, "--tls-key", &k];
    args.extend_from_slice(extra);
    let edges = [
        start_edge(relay, free_addr(), free_addr(), &args),
        start_edge(relay, free_addr(), free_addr(), &args),
    ];
    (edges, fp)
}

/// Done-when: an independent QUIC client (aioquic) completes the hello and receives cues, in
/// both formats; a bad token gets a refusal line and a close with the status as error code.
#[test]
fn aioquic_client_hello_and_cues() {
    if !python_has("aioquic") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let log = dir.path().join("edge.log");
    let edge = start_edge_logged(origin.relay, free_addr(), free_addr(), &[], Some(&log));
    let fp = logged_fingerprint(&log);
    let tok = device_token(&["fight"]);
    let s1 = publish_ok(origin.http, "fight", "round-1");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/quic_client.py");
    let run = |hello: String, cues: usize| {
        std::process::Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &edge.quic.port().to_string(), &fp, &hello])
            .arg(cues.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let json = run(format!(r#"{{"events":["fight"],"token":"{tok}"}}"#), 2);
    let bin = run(
        format!(
            r#"{{"events":["fight"],"since":{{"fight":0}},"token":"{tok}","format":"binary"}}"#
        ),
        2,
    );
    // Both catch up on round-1 at once; round-2 is live once they are in.
    wait_until(Duration::from_secs(15), || {
        counter(&edge.metrics(), "cue_edge_quic_sessions") >= 2.0
    });
    let s2 = publish_ok(origin.http, "fight", "round-2");
    for child in [json, bin] {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], serde_json::json!({"ok": true}));
        assert_eq!(lines[1]["seq"].as_u64(), Some(s1));
        assert_eq!(lines[1]["key"], "round-1");
        assert_eq!(lines[2]["seq"].as_u64(), Some(s2));
    }
    let bad = run(r#"{"events":["fight"],"token":"nope"}"#.to_string(), 1)
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["ok"], false, "{stdout}");
    assert_eq!(lines[0]["status"], 401);
    assert_eq!(lines[1]["closed"], 401, "{stdout}");
}

/// Done-when: a wss client gets cues with the self-signed certificate trusted by fingerprint
/// (Python `websockets`, and tungstenite over rustls); a wrong pin is refused by the client.
#[test]
fn wss_clients_pinned_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let log = dir.path().join("edge.log");
    let wss = free_addr();
    let wss_s = wss.to_string();
    let edge = start_edge_logged(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--wss", &wss_s],
        Some(&log),
    );
    let fp = logged_fingerprint(&log);
    let tok = device_token(&["fight"]);
    let mut ws = wss_subscribe(wss, &format!("events=fight&token={tok}"), &fp).unwrap();
    assert!(wss_subscribe(wss, "events=fight", &"0".repeat(64))
        .unwrap_err()
        .contains("fingerprint"));
    let py = python_has("websockets").then(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/wss_client.py");
        std::process::Command::new("python3")
            .arg(script)
            .arg(format!("wss://{wss}/v1/subscribe?events=fight&token={tok}"))
            .args([fp.as_str(), "1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    });
    wait_until(Duration::from_secs(10), || {
        counter(&edge.metrics(), "cue_edge_connections") >= if py.is_some() { 2.0 } else { 1.0 }
    });
    let s = publish_ok(origin.http, "fight", "round-tls");
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => {
            let c = cue_common::cue::Cue::from_json(t.as_bytes()).unwrap();
            assert_eq!((c.key(), c.seq()), ("round-tls", s));
        }
        m => panic!("{m:?}"),
    }
    if let Some(child) = py {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(s));
    }
    // A plain-text client on the TLS port gets nowhere and is counted.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(wss).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /v1/subscribe?events=fight HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(!buf[..n].starts_with(b"HTTP/1.1 101"));
    }
    wait_until(Duration::from_secs(5), || {
        counter(&edge.metrics(), "cue_edge_tls_failures_total") >= 1.0
    });
}

/// Malformed hellos and bad tokens get refusal lines; a handshake flood meets refusals and
/// stateless retries, the edge's memory stays bounded, and devices still get in after it.
#[test]
fn quic_refusals_and_handshake_flood_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let log = dir.path().join("edge.log");
    let edge = start_edge_logged(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--quic-max-handshakes", "16", "--quic-retry-above", "4"],
        Some(&log),
    );
    let fp = logged_fingerprint(&log);
    rt().block_on(async {
        let ep = endpoint(&fp);
        let long = format!(
            "{{\"events\":[\"fight\"],\"token\":\"{}\"",
            "x".repeat(5000)
        );
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (b"hello\n".to_vec(), 400, "not a JSON object"),
            (
                b"{\"events\":[\"fight\"],\"topics\":1}\n".to_vec(),
                400,
                "unknown key",
            ),
            (long.into_bytes(), 400, "no newline"),
            (
                b"{\"events\":[\"fight\"],\"token\":\"bad\"}\n".to_vec(),
                401,
                "invalid",
            ),
            (b"{\"events\":[\"fight\"]}\n".to_vec(), 401, "missing token"),
        ];
        for (h, status, msg) in cases {
            let (v, _d) = hello(&ep, edge.quic, &h).await.unwrap();
            assert_eq!(v["ok"], false);
            assert_eq!(v["status"].as_u64(), Some(status), "{v}");
            assert!(v["error"].as_str().unwrap().contains(msg), "{v}");
        }
        let rss_before = rss_of(edge.proc.0.id());
        // The flood: 400 handshakes at once from 8 client sockets.
        let eps: Vec<_> = (0..8).map(|_| endpoint(&fp)).collect();
        let mut attempts = Vec::new();
        for i in 0..400 {
            let c = eps[i % eps.len()].connect(edge.quic, "localhost").unwrap();
            attempts.push(tokio::spawn(c));
        }
        let mut ok = 0;
        let mut refused = 0;
        let mut conns = Vec::new();
        for a in attempts {
            match a.await.unwrap() {
                Ok(c) => {
                    ok += 1;
                    conns.push(c);
                }
                Err(_) => refused += 1,
            }
        }
        let m = edge.metrics();
        assert!(ok > 0, "some handshakes complete");
        assert!(
            counter(&m, "cue_edge_quic_refused_total") + counter(&m, "cue_edge_quic_retries_total")
                > 0.0,
            "the flood met the limits ({ok} ok, {refused} refused)"
        );
        let rss_after = rss_of(edge.proc.0.id());
        assert!(
            rss_after < rss_before + 64 * 1024 * 1024,
            "memory bounded: {rss_before} -> {rss_after}"
        );
        drop(conns);
        // After the flood a device gets in.
        let (v, mut d) = hello(&ep, edge.quic, fight_hello().as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        let s = publish_ok(origin.http, "fight", "after-flood");
        assert_eq!(d.cue().await.2, s);
    });
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * 4096)
}

/// A device whose address changes (NAT rebinding) lands on either shard's socket; the shard
/// that does not own its connection forwards the datagrams, and cues keep coming.
#[test]
fn quic_rebinding_device_is_forwarded_between_shards() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let log = dir.path().join("edge.log");
    // Steering off: the kernel would otherwise pick the owner's socket itself (next test).
    let edge = start_edge_logged(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--no-quic-steer"],
        Some(&log),
    );
    let fp = logged_fingerprint(&log);
    rt().block_on(async {
        let ep = endpoint(&fp);
        let (v, mut d) = hello(&ep, edge.quic, fight_hello().as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        for i in 0..24 {
            ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let s = publish_ok(origin.http, "fight", &format!("k{i}"));
            assert_eq!(d.cue().await.2, s, "rebind {i}");
            if counter(&edge.metrics(), "cue_edge_quic_forwarded_total") > 0.0 && i >= 3 {
                return;
            }
        }
        panic!("24 rebinds never reached the other shard");
    });
}

/// Two edge processes (2 shards each) share one QUIC port. A device that changes its address
/// 16 times would, by the kernel's 4-tuple hash alone, reach a socket of the other process about
/// half the time and lose its connection (no mesh between processes). The steering program
/// picks its connection's socket every time: every cue arrives, nothing is forwarded.
#[test]
fn quic_steering_keeps_a_rebinding_device_across_processes() {
    if !cue_testkit::require(
        "root",
        cue_testkit::is_root(),
        "the steering program needs CAP_BPF and CAP_NET_ADMIN: run the tests as root",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let (edges, fp) = two_edges_on_one_quic_port(dir.path(), origin.relay, &[]);
    let mut slots: Vec<i64> = edges
        .iter()
        .flat_map(|e| {
            e.metrics()
                .lines()
                .filter(|l| l.starts_with("cue_edge_quic_steer_slot{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    slots.sort();
    assert_eq!(slots.len(), 4);
    slots.dedup();
    assert!(
        slots.len() == 4 && slots[0] >= 0,
        "four sockets, four slots: {slots:?}"
    );
    rt().block_on(async {
        let ep = endpoint(&fp);
        let (v, mut d) = hello(&ep, edges[0].quic, fight_hello().as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        for i in 0..16 {
            ep.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .unwrap();
            let s = publish_ok(origin.http, "fight", &format!("k{i}"));
            let got = tokio::time::timeout(Duration::from_secs(5), d.cue()).await;
            assert_eq!(got.expect("cue within 5 s").2, s, "rebind {i}");
        }
    });
    for e in &edges {
        assert_eq!(counter(&e.metrics(), "cue_edge_quic_forwarded_total"), 0.0);
    }
}

/// The edge process holding a device is killed. The device's next keep-alive reaches the other
/// process on the port, which does not know the connection but answers with a stateless reset
/// under the key both derive from the token secret: the device knows at once (well within a
/// second of keep-alives) instead of after its 30 s idle timeout.
#[test]
fn quic_device_of_a_killed_edge_is_reset_by_the_other_process() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let (mut edges, fp) = two_edges_on_one_quic_port(
        dir.path(),
        origin.relay,
        &["--quic-idle-timeout-s", "30", "--quic-keep-alive-s", "10"],
    );
    rt().block_on(async {
        let ep = endpoint_keep_alive(&fp, Some(Duration::from_millis(200)));
        let (v, mut d) = hello(&ep, edges[0].quic, fight_hello().as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        let s = publish_ok(origin.http, "fight", "before");
        assert_eq!(d.cue().await.2, s);
        let holder = edges
            .iter()
            .position(|e| counter(&e.metrics(), "cue_edge_quic_sessions") == 1.0)
            .expect("one edge holds the device");
        edges[holder].proc.kill9();
        let t0 = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), d.conn.closed())
            .await
            .expect("the device learns within 10 s, long before its 30 s idle timeout");
        assert!(
            matches!(err, quinn::ConnectionError::Reset),
            "closed by a stateless reset, not {err:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    });
}

/// SIGHUP swaps the certificate for new handshakes; an established device keeps its
/// connection and its cues.
#[test]
fn sighup_reloads_the_certificate_without_dropping_devices() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let (c, k, fp_a) = write_cert(dir.path(), "a.test");
    let edge = start_edge(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--tls-cert", &c, "--tls-key", &k],
    );
    let h = fight_hello();
    rt().block_on(async {
        let (v, mut old) = hello(&endpoint(&fp_a), edge.quic, h.as_bytes())
            .await
            .unwrap();
        assert_eq!(v["ok"], true);
        let fp_b = write_cert(dir.path(), "b.test").2;
        unsafe { libc::kill(edge.proc.0.id() as i32, libc::SIGHUP) };
        let mut reloaded = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if hello(&endpoint(&fp_b), edge.quic, h.as_bytes())
                .await
                .is_ok()
            {
                reloaded = true;
                break;
            }
        }
        assert!(reloaded, "new handshakes see the new certificate");
        assert!(hello(&endpoint(&fp_a), edge.quic, h.as_bytes())
            .await
            .is_err());
        let s = publish_ok(origin.http, "fight", "after-reload");
        assert_eq!(old.cue().await.2, s, "the old connection still gets cues");
    });
}

/// The new flags are documented, and their mistakes exit 2 with one line naming the setting.
#[test]
fn tls_and_quic_flags_help_and_errors() {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("cue-edge");
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--wss",
        "--quic",
        "--tls-cert",
        "--tls-key",
        "--quic-max-handshakes",
        "--quic-retry-above",
        "--quic-idle-timeout-s",
        "--quic-keep-alive-s",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for (args, names) in [
        (vec!["--quic", "nope"], "--quic"),
        (vec!["--tls-cert", "/nonexistent.crt"], "tls_cert/tls_key"),
        (
            vec!["--quic-keep-alive-s", "60", "--quic-idle-timeout-s", "30"],
            "quic_keep_alive_s",
        ),
    ] {
        let out = std::process::Command::new(&bin)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{args:?}: {err}");
        let lines: Vec<&str> = err.trim().lines().collect();
        assert_eq!(lines.len(), 2, "the problem, then the count: {err}");
        assert_eq!(lines[1], "cue-edge: 1 config problem; nothing started");
    }
}

/// A QUIC device that completes TLS but never opens its stream is closed at the hello timeout
/// (1008), while a device that says hello is served.
#[test]
fn quic_connection_without_a_stream_is_closed_at_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let log = dir.path().join("edge.log");
    let conf = edge_config(dir.path(), "handshake_timeout_s = 2\n");
    let edge = start_edge_logged(
        origin.relay,
        free_addr(),
        free_addr(),
        &["--config", &conf],
        Some(&log),
    );
    let fp = logged_fingerprint(&log);
    rt().block_on(async {
        let ep = endpoint(&fp);
        let silent = ep.connect(edge.quic, "localhost").unwrap().await.unwrap();
        let t0 = std::time::Instant::now();
        let h = format!(
            "{{\"events\":[\"fight\"],\"token\":\"{}\"}}\n",
            device_token(&["fight"])
        );
        let (v, mut good) = hello(&ep, edge.quic, h.as_bytes()).await.unwrap();
        assert_eq!(v["ok"], true, "{v}");
        let why = tokio::time::timeout(Duration::from_secs(10), silent.closed())
            .await
            .expect("closed within the timeout");
        match why {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(1008));
                assert_eq!(&c.reason[..], b"hello timeout");
            }
            other => panic!("closed by {other:?}"),
        }
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");
        // The good device is still up and gets its cue.
        publish_ok(origin.http, "fight", "go");
        assert_eq!(good.cue().await.1, "go");
    });
    assert_eq!(
        counter(&edge.metrics(), "cue_edge_quic_hello_timeouts_total"),
        1.0
    );
}
