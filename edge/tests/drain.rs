//! Drain and rolling restarts with the real binaries on loopback: a drain closes the
//! listeners first (a successor on the same port takes every new device), closes devices with
//! jittered retry hints over the window, ends the process as soon as no device is left, needs
//! an admin token over HTTP, and can be undone.

mod support;

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cue_testkit::client::request;
use support::*;
use tungstenite::Message;

fn bearer(t: &str) -> (String, String) {
    ("Authorization".into(), format!("Bearer {t}"))
}

fn post(edge: &Edge, path: &str, token: Option<&str>) -> cue_testkit::client::Response {
    let h: Vec<(String, String)> = token.map(bearer).into_iter().collect();
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(edge.admin, "POST", path, &h, b"").unwrap()
}

/// An origin and an edge on it with `extra` flags, the edge linked.
fn origin_and_edge(dir: &std::path::Path, extra: &[&str]) -> (Origin, Edge) {
    let origin = start_origin(dir, free_addr(), free_addr());
    let edge = start_edge(origin.relay, free_addr(), free_addr(), extra);
    (origin, edge)
}

fn retry_hint(reason: &str) -> u32 {
    reason
        .strip_prefix("retry-after=")
        .unwrap_or_else(|| panic!("no hint: {reason}"))
        .parse()
        .unwrap()
}

#[test]
fn drain_needs_an_admin_token_closes_the_listener_and_exits_once_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (_origin, mut edge) = origin_and_edge(dir.path(), &["--drain-window-s", "30"]);
    let tok = device_token(&["fight"]);
    let mut devs: Vec<_> = (0..10)
        .map(|_| subscribe(edge.ws, "events=fight", Some(&tok)).unwrap())
        .collect();
    // No token, a device token, a publisher token: refused, and nothing drains.
    assert_eq!(post(&edge, "/admin/drain", None).status, 401);
    assert_eq!(post(&edge, "/admin/drain", Some(&tok)).status, 403);
    assert_eq!(
        post(&edge, "/admin/undrain", Some(&publisher_token())).status,
        403
    );
    assert_eq!(metric(&edge.metrics(), "cue_edge_admin_refused_total"), 3.0);
    assert_eq!(metric(&edge.metrics(), "cue_edge_draining"), 0.0);
    let admin = admin_token();
    let r = post(&edge, "/admin/drain?window_s=2", Some(&admin));
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("\"started\":true"), "{}", r.body);
    let r = post(&edge, "/admin/drain?window_s=2", Some(&admin));
    assert!(r.body.contains("\"started\":false"), "{}", r.body);
    // The listener is closed: with no other process on the port, new devices are refused by
    // the kernel.
    wait_until(Duration::from_secs(2), || {
        TcpStream::connect(edge.ws).is_err()
    });
    // Not ready while draining (load balancers stop sending devices); still live.
    let h = request(edge.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(h.status, 503, "{}", h.body);
    assert!(h.body.contains("\"reason\":\"draining\""), "{}", h.body);
    let h = request(edge.admin, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(h.status, 200, "{}", h.body);
    assert!(h.body.contains("\"status\":\"draining\""), "{}", h.body);
    let t = Instant::now();
    for d in &mut devs {
        let (code, reason) = next_close(d);
        assert_eq!(u16::from(code), 1001);
        assert!((5..=60).contains(&retry_hint(&reason)), "{reason}");
    }
    drop(devs);
    // The last device is gone: the process ends (before the window's end plus its grace).
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(3)), Some(0));
    eprintln!("exited {:?} after the drain began closing", t.elapsed());
}

#[test]
fn sigterm_with_no_device_exits_at_once_not_at_the_window_end() {
    let dir = tempfile::tempdir().unwrap();
    let (_origin, mut edge) = origin_and_edge(dir.path(), &["--drain-window-s", "30"]);
    let t = Instant::now();
    edge.proc.sigterm();
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(5)), Some(0));
    eprintln!("exited {:?} after SIGTERM (window 30 s)", t.elapsed());
}

#[test]
fn undrain_listens_again_and_stops_the_closes() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, mut edge) = origin_and_edge(dir.path(), &[]);
    let tok = device_token(&["fight"]);
    let mut devs: Vec<_> = (0..10)
        .map(|_| subscribe(edge.ws, "events=fight", Some(&tok)).unwrap())
        .collect();
    let admin = admin_token();
    assert_eq!(
        post(&edge, "/admin/drain?window_s=4", Some(&admin)).status,
        202
    );
    wait_until(Duration::from_secs(2), || {
        TcpStream::connect(edge.ws).is_err()
    });
    let r = post(&edge, "/admin/undrain", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"draining\":false"), "{}", r.body);
    // Listening again: a new device gets in.
    let mut late = subscribe(edge.ws, "events=fight", Some(&tok)).unwrap();
    let h = request(edge.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(h.status, 200, "{}", h.body);
    // Past the window (and its grace), the process still runs and the devices still in get
    // cues: a few were closed before the undrain, no more after.
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(5)), None);
    let s = publish_ok(origin.http, "fight", "round-1");
    assert_eq!(next_cue(&mut late).2, s);
    let mut closed = 0;
    for d in &mut devs {
        match d.read().unwrap() {
            Message::Close(_) => closed += 1,
            Message::Text(t) => assert!(t.contains("round-1"), "{t}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        closed <= 3,
        "{closed} of 10 closed; the undrain came at ~0.1 of the window"
    );
}

/// Sets `net.ipv4.tcp_migrate_req` to 1 for the test and back after. With it, connections
/// queued on a listener that closes move to the other listeners on the port (Linux 5.14);
/// `cue-tune apply` sets it on edge hosts.
struct MigrateReq(Option<String>);

const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

impl MigrateReq {
    /// `None` when it cannot be set and root is knowingly skipped (else the test fails).
    fn on() -> Option<MigrateReq> {
        let old = std::fs::read_to_string(MIGRATE_REQ)
            .unwrap_or_else(|e| panic!("{MIGRATE_REQ} (Linux 5.14 or later): {e}"));
        if old.trim() == "1" {
            return Some(MigrateReq(None));
        }
        match std::fs::write(MIGRATE_REQ, "1") {
            Ok(()) => Some(MigrateReq(Some(old))),
            Err(e) => {
                cue_testkit::require(
                    "root",
                    false,
                    &format!("net.ipv4.tcp_migrate_req=1 (`cue-tune apply` sets it): {e}"),
                );
                None
            }
        }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(MIGRATE_REQ, old.trim());
        }
    }
}

/// The upgrade procedure of docs/edge.md: a new process starts on the same port, the old one
/// gets SIGTERM. Devices keep arriving the whole time and every one gets in; every device the
/// old process closes reconnects at once and lands on the new one; the old one exits as soon
/// as its last device is gone; the next cue reaches everyone.
#[test]
fn rolling_restart_on_one_port_refuses_no_device() {
    let Some(_migrate) = MigrateReq::on() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let ws = free_addr();
    let flags = ["--quic", "none", "--drain-window-s", "3"];
    let mut old = start_edge(origin.relay, ws, free_addr(), &flags);
    let tok = device_token(&["fight"]);
    let s1 = publish_ok(origin.http, "fight", "round-1");
    let mut devs: Vec<_> = (0..40)
        .map(|_| subscribe(ws, "events=fight", Some(&tok)).unwrap())
        .collect();
    for d in &mut devs {
        assert_eq!(next_cue(d).2, s1);
    }
    // Arrivals: a new device every 10 ms for the whole restart, each checked to get its cue.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let arrivals = {
        let (stop, failures, tok) = (stop.clone(), failures.clone(), tok.clone());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                match try_subscribe(ws, "events=fight", Some(&tok)) {
                    Ok(mut d) => match d.read() {
                        Ok(Message::Text(_)) => n += 1,
                        // Admitted by the old process just before its listener closed, then
                        // closed by its drain with a retry hint: in, not refused.
                        Ok(Message::Close(Some(f))) if u16::from(f.code) == 1001 => n += 1,
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    },
                    Err(e) => failures.lock().unwrap().push(e),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let new = start_edge(origin.relay, ws, free_addr(), &flags);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    old.proc.sigterm();
    let mut moved = Vec::new();
    for d in &mut devs {
        let (code, reason) = next_close(d);
        assert_eq!(u16::from(code), 1001);
        retry_hint(&reason);
        // This device ignores the hint and comes back at once: the new process takes it.
        let mut again = subscribe(ws, "events=fight", Some(&tok)).unwrap();
        assert_eq!(next_cue(&mut again).2, s1);
        moved.push(again);
    }
    drop(devs);
    assert_eq!(old.proc.wait_exit(Duration::from_secs(4)), Some(0));
    let exited = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let arrived = arrivals.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} refused: {failures:?}",
        failures.len()
    );
    assert!(arrived >= 50, "{arrived} arrivals");
    let s2 = publish_ok(origin.http, "fight", "round-2");
    for d in &mut moved {
        assert_eq!(next_cue(d).2, s2);
    }
    assert_eq!(metric(&new.metrics(), "cue_edge_connections"), 40.0);
    eprintln!("old process exited {exited:?} after SIGTERM; {arrived} arrivals, none refused");
}

/// Starts an origin and an edge with the fault `env` injected; the edge must exit 70 within
/// 30 s, its log holding the injected panic and `says`. It is not waited for to link: on a
/// loaded machine the fault may come first, and either way the process must end.
fn fault_ends_the_process_with_70(env: (&str, &str), says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("edge.log");
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let mut edge = spawn_edge_env(
        origin.relay,
        free_addr(),
        free_addr(),
        &[],
        Some(&log),
        &[env],
    );
    let t = Instant::now();
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(30)), Some(70));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("injected fault"), "{text}");
    assert!(text.contains(says), "{text}");
    eprintln!("exited 70 {:?} after its start", t.elapsed());
}

#[test]
fn a_shard_that_panics_ends_the_process_with_70() {
    // A dead shard's devices would get nothing while /healthz of the rest said ok: the edge
    // ends instead, so systemd (Restart=) starts a fresh one. The panic is injected (debug
    // builds only) into shard 1, well after the edge linked.
    fault_ends_the_process_with_70(
        ("CUE_EDGE_FAULT_PANIC_SHARD", "1:2000"),
        "a shard stopped unexpectedly; exiting (70)",
    );
}

#[test]
fn a_relay_link_that_panics_ends_the_process_with_70() {
    // Without the link no device of this edge gets a cue.
    fault_ends_the_process_with_70(
        ("CUE_EDGE_FAULT_PANIC_LINK_MS", "2000"),
        "the relay link stopped unexpectedly; exiting (70)",
    );
}
