//! Hostile devices against the real binaries: handshake deadlines that trickled bytes cannot
//! stretch, and a cap on connections in handshake that refuses a flood early, while good
//! devices are served meanwhile.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn edge_with(conf: &str) -> (tempfile::TempDir, Origin, Edge) {
    edge_with_args(conf, &[])
}

fn edge_with_args(conf: &str, more: &[&str]) -> (tempfile::TempDir, Origin, Edge) {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let origin = start_origin(dir.path(), http, relay);
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, conf).unwrap();
    let (ws, admin) = (free_addr(), free_addr());
    let path = path.display().to_string();
    let mut args = vec!["--config", path.as_str(), "--quic", "none"];
    args.extend_from_slice(more);
    let edge = start_edge(relay, ws, admin, &args);
    (dir, origin, edge)
}

#[test]
fn slowloris_is_closed_at_the_handshake_deadline_while_good_devices_are_served() {
    let (_dir, origin, edge) = edge_with("handshake_timeout_s = 4\n");
    let start = Instant::now();
    // 300 connections, each sending one header byte a second: none ever completes a request.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let s = TcpStream::connect(edge.ws).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let req = b"GET /v1/subscribe?events=e HTTP/1.1\r\nHost: edge\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa";
    let mut closed_at: Vec<Option<Duration>> = vec![None; slow.len()];
    let mut good_served = false;
    let mut byte = 0;
    while closed_at.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(15) {
        for (i, s) in slow.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            let mut b = [0u8; 64];
            let gone = match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            if gone || s.write_all(&req[byte % req.len()..][..1]).is_err() {
                closed_at[i] = Some(start.elapsed());
            }
        }
        byte += 1;
        if !good_served && start.elapsed() > Duration::from_secs(1) {
            // A good device meanwhile: admitted, and its cue arrives.
            let token = device_token(&["e"]);
            let mut d = subscribe(edge.ws, "events=e", Some(&token)).expect("good device");
            publish_ok(origin.http, "e", "go");
            assert_eq!(next_cue(&mut d).1, "go");
            good_served = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(good_served);
    let latest = closed_at
        .iter()
        .map(|c| c.expect("every slow connection closed"))
        .max();
    // The deadline (4 s from accept) plus a tick and this loop's second.
    assert!(
        latest.unwrap() < Duration::from_secs(7),
        "last closed after {latest:?}"
    );
    let m = edge.metrics();
    let timeouts: f64 = m
        .lines()
        .filter(|l| l.starts_with("cue_edge_closes_total") && l.contains("handshake_timeout"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(timeouts, 300.0);
    assert_eq!(metric(&m, "cue_edge_handshaking"), 0.0);
}

#[test]
fn a_handshake_flood_past_max_handshakes_is_answered_503_at_once() {
    // 2 shards, 8 each.
    let (_dir, _origin, edge) = edge_with("max_handshakes = 8\nhandshake_timeout_s = 5\n");
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(edge.ws).unwrap())
        .collect();
    let mut refused = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        let text = String::from_utf8_lossy(&b);
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("Retry-After"), "{text}");
            assert!(text.contains("too many handshakes"), "{text}");
            refused += 1;
        }
    }
    assert!(refused >= 40 - 16, "{refused} answered 503");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_handshakes_shed_total"), refused as f64);
    assert!(metric(&m, "cue_edge_handshaking") <= 16.0);
}

#[test]
fn admin_serves_beside_an_idle_client_and_health_tells_the_truth() {
    let (_dir, mut origin, edge) = edge_with("origin_unlinked_unhealthy_s = 2\n");
    let get = |method: &str, path: &str| {
        cue_testkit::client::request(edge.admin, method, path, &[], b"").unwrap()
    };
    // An idle connection to the admin port delays nobody.
    let _idle = TcpStream::connect(edge.admin).unwrap();
    let t = Instant::now();
    let h = get("GET", "/healthz");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(get("GET", "/readyz").status, 200);
    // HEAD: the head only.
    let h = get("HEAD", "/readyz");
    assert_eq!((h.status, h.body.as_str()), (200, ""));
    // The origin gone: not ready at once; not live once the limit passes, with the reason.
    origin.proc.kill9();
    wait_until(Duration::from_secs(10), || {
        get("GET", "/readyz").status == 503
    });
    assert!(get("GET", "/readyz").body.contains("no origin linked"));
    let cut = Instant::now();
    wait_until(Duration::from_secs(10), || {
        get("GET", "/healthz").status == 503
    });
    assert!(
        cut.elapsed() >= Duration::from_millis(900),
        "{:?}",
        cut.elapsed()
    );
    let h = get("GET", "/healthz");
    assert!(h.body.contains("no origin linked for"), "{}", h.body);
}

/// TCP connections to the wss port that never start TLS are closed at the handshake deadline
/// too (it covers the TLS handshake: it runs from the TCP accept).
#[test]
fn silent_wss_connections_are_closed_at_the_handshake_deadline() {
    let wss = free_addr();
    let wss_s = wss.to_string();
    let (_dir, _origin, edge) = edge_with_args("handshake_timeout_s = 3\n", &["--wss", &wss_s]);
    let t = Instant::now();
    let mut silent: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(wss).unwrap()).collect();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        // EOF or reset: closed either way.
        let _ = s.read(&mut b);
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "all closed after {took:?} (deadline 3 s)"
    );
    assert!(took >= Duration::from_secs(2), "closed early: {took:?}");
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_handshaking"), 0.0);
}

/// At `max_connections` the next device gets 503 with Retry-After; the devices in keep getting
/// cues.
#[test]
fn at_max_connections_the_next_device_is_refused_and_the_rest_are_served() {
    // 2 shards: 3 each.
    let (_dir, origin, edge) = edge_with("max_connections = 6\n");
    let token = device_token(&["e"]);
    let mut devs = Vec::new();
    let mut refused = None;
    for _ in 0..10 {
        match subscribe(edge.ws, "events=e", Some(&token)) {
            Ok(d) => devs.push(d),
            Err((status, body)) => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a device beyond max_connections is refused");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("full"), "{body}");
    assert!(devs.len() <= 6, "{} admitted", devs.len());
    publish_ok(origin.http, "e", "go");
    for d in &mut devs {
        assert_eq!(next_cue(d).1, "go");
    }
}

/// A WebSocket subscribe from source address `from` (a loopback address of its own).
fn subscribe_from(
    from: std::net::IpAddr,
    ws: std::net::SocketAddr,
    token: &str,
) -> Result<Ws, (u16, String)> {
    use socket2::{Domain, Socket, Type};
    use tungstenite::client::IntoClientRequest;
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::new(from, 0).into()).unwrap();
    s.connect(&ws.into()).unwrap();
    let stream: TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut req = format!("ws://{ws}/v1/subscribe?events=e")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    match tungstenite::client(req, tungstenite::stream::MaybeTlsStream::Plain(stream)) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err((
            r.status().as_u16(),
            r.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        Err(e) => panic!("connect: {e}"),
    }
}

/// One address holding `max_connections_per_source` on each shard gets 503 for more, while a
/// device from another address is served; closed, its connections are counted off again.
#[test]
fn one_source_past_its_limit_is_refused_while_others_are_served() {
    // 2 shards, 3 per source on each: 3 to 6 from one address, as the kernel spreads them.
    let (_dir, origin, edge) = edge_with("max_connections_per_source = 3\n");
    let token = device_token(&["e"]);
    let flood: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match subscribe_from(flood, edge.ws, &token) {
            Ok(d) => held.push(d),
            Err((status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert!(
                    body.contains("too many connections from this address"),
                    "{body}"
                );
                refused += 1;
            }
        }
    }
    assert!((3..=6).contains(&held.len()), "{} held", held.len());
    assert_eq!(refused, 30 - held.len());
    assert_eq!(
        metric(&edge.metrics(), "cue_edge_source_shed_total"),
        refused as f64
    );
    // Another address is served, and cues reach everyone admitted.
    let mut good = subscribe_from("127.0.0.1".parse().unwrap(), edge.ws, &token).unwrap();
    publish_ok(origin.http, "e", "go");
    assert_eq!(next_cue(&mut good).1, "go");
    for d in &mut held {
        assert_eq!(next_cue(d).1, "go");
    }
    // Gone, they are counted off: the address gets in again.
    let n = held.len();
    drop(held);
    wait_until(Duration::from_secs(5), || {
        metric(&edge.metrics(), "cue_edge_connections") == 1.0
    });
    let again: Vec<_> = (0..3)
        .map(|_| subscribe_from(flood, edge.ws, &token))
        .collect();
    assert!(
        again.iter().all(|r| r.is_ok()),
        "{n} held before; now refused"
    );
}
