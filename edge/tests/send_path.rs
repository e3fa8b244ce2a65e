//! The fanout send path switched at run time (`POST /admin/send-path`), with the real binaries
//! on loopback: only an admin may switch it, a bad path changes nothing, the devices get every
//! cue on either path, and the edge's counters say which path each fanout took.

mod support;

use cue_testkit::client::request;
use support::*;

fn post(edge: &Edge, path: &str, token: Option<&str>) -> cue_testkit::client::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let h: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    request(edge.admin, "POST", path, &h, b"").unwrap()
}

/// An origin and an edge on it with `args` (QUIC off), the edge linked.
fn origin_and_edge(dir: &std::path::Path, args: &[&str]) -> (Origin, Edge) {
    let origin = start_origin(dir, free_addr(), free_addr());
    let mut all = vec!["--quic", "none"];
    all.extend_from_slice(args);
    let edge = start_edge(origin.relay, free_addr(), free_addr(), &all);
    (origin, edge)
}

/// Publishes a cue and waits until every device got it.
fn cue_reaches_all(origin: &Origin, devs: &mut [Ws], key: &str) {
    let seq = publish_ok(origin.http, "fight", key);
    for d in devs.iter_mut() {
        assert_eq!(next_cue(d), ("fight".into(), key.into(), seq));
    }
}

#[test]
fn an_admin_switches_the_send_path_and_each_fanout_takes_the_path_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, edge) = origin_and_edge(dir.path(), &["--send-path", "uring"]);
    let tok = device_token(&["fight"]);
    let mut devs: Vec<Ws> = (0..6)
        .map(|_| subscribe(edge.ws, "events=fight", Some(&tok)).unwrap())
        .collect();
    let n = devs.len() as f64;

    // On the ring from the start.
    cue_reaches_all(&origin, &mut devs, "round-1");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_uring_sends_total"), n);
    let shards = m
        .lines()
        .filter(|l| l.starts_with("cue_edge_uring_active{"))
        .count();
    assert!(shards >= 2, "the test edge runs {shards} shard(s)");
    assert_eq!(metric(&m, "cue_edge_uring_active"), shards as f64);

    // Nobody but an admin switches it; a bad path is refused; nothing changes.
    assert_eq!(
        post(&edge, "/admin/send-path?path=syscall", None).status,
        401
    );
    assert_eq!(
        post(&edge, "/admin/send-path?path=syscall", Some(&tok)).status,
        403
    );
    let admin = admin_token();
    for bad in ["/admin/send-path", "/admin/send-path?path=epoll"] {
        let r = post(&edge, bad, Some(&admin));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body.contains("uring or syscall"), "{}", r.body);
    }
    assert_eq!(
        request(edge.admin, "GET", "/admin/send-path", &[], b"")
            .unwrap()
            .status,
        405
    );
    cue_reaches_all(&origin, &mut devs, "round-2");
    assert_eq!(
        metric(&edge.metrics(), "cue_edge_uring_sends_total"),
        2.0 * n
    );

    // send() calls: the ring carries nothing more, and the gauge says so.
    let r = post(&edge, "/admin/send-path?path=syscall", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body.trim(),
        format!(r#"{{"send_path":"syscall","shards":{shards}}}"#)
    );
    cue_reaches_all(&origin, &mut devs, "round-3");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_uring_sends_total"), 2.0 * n);
    assert_eq!(metric(&m, "cue_edge_uring_active"), 0.0);
    assert_eq!(metric(&m, "cue_edge_fanout_deliveries_total"), 3.0 * n);

    // And back on the ring.
    let r = post(&edge, "/admin/send-path?path=uring", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    cue_reaches_all(&origin, &mut devs, "round-4");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_uring_sends_total"), 3.0 * n);
    assert_eq!(metric(&m, "cue_edge_uring_active"), shards as f64);
    assert_eq!(metric(&m, "cue_edge_admin_refused_total"), 2.0);
}

#[test]
fn an_edge_started_on_send_calls_cannot_be_switched_to_a_ring_it_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, edge) = origin_and_edge(dir.path(), &["--send-path", "syscall"]);
    let admin = admin_token();
    let r = post(&edge, "/admin/send-path?path=uring", Some(&admin));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("have no io_uring"), "{}", r.body);
    // send() calls are always there.
    let r = post(&edge, "/admin/send-path?path=syscall", Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    let tok = device_token(&["fight"]);
    let mut devs = vec![subscribe(edge.ws, "events=fight", Some(&tok)).unwrap()];
    cue_reaches_all(&origin, &mut devs, "round-1");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_uring_sends_total"), 0.0);
    assert_eq!(metric(&m, "cue_edge_uring_active"), 0.0);
}
