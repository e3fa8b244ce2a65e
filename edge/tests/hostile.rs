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

/// A raw WebSocket session on the edge: the upgrade written by hand (optionally one byte per
/// write), the 101 read; returns the stream.
fn raw_session(ws: std::net::SocketAddr, token: &str, byte_by_byte: bool) -> TcpStream {
    let mut s = TcpStream::connect(ws).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /v1/subscribe?events=e HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    if byte_by_byte {
        s.set_nodelay(true).unwrap();
        for b in req.as_bytes() {
            s.write_all(std::slice::from_ref(b)).unwrap();
        }
    } else {
        s.write_all(req.as_bytes()).unwrap();
    }
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "the edge closed during the upgrade"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A client frame: FIN, `opcode`, masked with a zero key unless `unmasked`, with a length
/// field saying `len` (the payload sent is `payload`, which may be shorter).
fn client_frame(opcode: u8, len: u64, payload: &[u8], unmasked: bool) -> Vec<u8> {
    let mask = if unmasked { 0 } else { 0x80 };
    let mut f = vec![0x80 | opcode];
    if len < 126 {
        f.push(mask | len as u8);
    } else if len <= 0xFFFF {
        f.push(mask | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(mask | 127);
        f.extend_from_slice(&len.to_be_bytes());
    }
    if !unmasked {
        f.extend_from_slice(&[0, 0, 0, 0]);
    }
    f.extend_from_slice(payload);
    f
}

/// Reads server frames until a close; its code. Cue frames before it are skipped.
fn close_code(s: &mut TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A server frame: unmasked, lengths < 126 or 126 + u16 for cues and closes.
        while buf.len() >= 2 {
            let (op, len7) = (buf[0] & 0x0F, (buf[1] & 0x7F) as usize);
            let (hdr, len) = match len7 {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => break,
                n => (2, n),
            };
            if buf.len() < hdr + len {
                break;
            }
            if op == 0x8 {
                return u16::from_be_bytes([buf[hdr], buf[hdr + 1]]);
            }
            buf.drain(..hdr + len);
        }
        let n = s
            .read(&mut chunk)
            .expect("a close frame before the edge hangs up");
        assert!(n > 0, "closed without a close frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Oversized, unmasked, unknown and invalid frames each get their close code, from the real
/// binary; an upgrade written one byte per write is admitted; the edge's memory stays bounded
/// under 200 sessions that claim 1 TiB frames; a good device is served throughout.
#[test]
fn malformed_frames_get_their_close_codes_and_memory_stays_bounded() {
    let (_dir, origin, edge) = edge_with("");
    let token = device_token(&["e"]);
    let mut good = subscribe(edge.ws, "events=e", Some(&token)).unwrap();
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "frame over max_frame",
            client_frame(0x2, 5000, &[0; 5000], false),
            1009,
        ),
        (
            "a 1 TiB length",
            client_frame(0x2, 1 << 40, b"x", false),
            1009,
        ),
        ("unmasked", client_frame(0x1, 2, b"hi", true), 1002),
        ("unknown opcode", client_frame(0x3, 0, b"", false), 1002),
        (
            "text not UTF-8",
            client_frame(0x1, 2, &[0xC3, 0x28], false),
            1007,
        ),
        (
            "control frame over 125 bytes",
            client_frame(0x9, 200, &[0; 200], false),
            1002,
        ),
    ];
    for (what, frame, want) in cases {
        let mut s = raw_session(edge.ws, &token, false);
        s.write_all(&frame).unwrap();
        assert_eq!(close_code(&mut s), want, "{what}");
    }
    // One byte per write, headers included: admitted, and gets cues.
    let mut slow = raw_session(edge.ws, &token, true);
    let rss = || {
        let pid = edge.proc.0.id();
        let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
        s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    };
    let before = rss();
    // 200 sessions each announce a 1 TiB frame and send its first bytes: the edge must not
    // buffer toward it (it closes them, 1009, at the header).
    let mut liars: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = raw_session(edge.ws, &token, false);
            s.write_all(&client_frame(0x2, 1 << 40, &[7; 1024], false))
                .unwrap();
            s
        })
        .collect();
    for s in &mut liars {
        assert_eq!(close_code(s), 1009);
    }
    let after = rss();
    assert!(
        after < before + (16 << 20),
        "RSS {} MiB -> {} MiB",
        before >> 20,
        after >> 20
    );
    publish_ok(origin.http, "e", "go");
    assert_eq!(next_cue(&mut good).1, "go");
    let mut b = [0u8; 64];
    let n = slow.read(&mut b).unwrap();
    assert!(
        String::from_utf8_lossy(&b[..n]).contains("\"go\""),
        "{:?}",
        &b[..n]
    );
}

/// A device that reads one byte at a time through a tiny receive window while cues pour in:
/// the edge holds no backlog for it (it skips it while blocked, then gives it the current cue),
/// so it ends on the newest cue with far fewer frames than were published, while a good device
/// gets the newest too and nobody is closed.
#[test]
fn a_one_byte_reader_gets_the_newest_cue_without_a_backlog_on_io_uring() {
    one_byte_reader("uring");
}

#[test]
fn a_one_byte_reader_gets_the_newest_cue_without_a_backlog_on_send_calls() {
    one_byte_reader("syscall");
}

/// The one-byte reader on one send path: the short writes and `EAGAIN`s of the batched
/// io_uring sends fall back to the per-device output path exactly as `send()`'s do.
fn one_byte_reader(send_path: &str) {
    use socket2::{Domain, Socket, Type};
    let (_dir, origin, edge) = edge_with_args("", &["--send-path", send_path]);
    let token = device_token(&["e"]);
    let mut good = subscribe(edge.ws, "events=e", Some(&token)).unwrap();
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    // A small segment size, as on a real network (loopback's 64 KiB segments would let the
    // edge's socket send buffer grow past a megabyte and take every cue).
    sock.set_mss(536).unwrap();
    sock.connect(&edge.ws.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /v1/subscribe?events=e HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    // 2000 cues (~270 KB of frames, several times what the socket buffers hold, ~60 KB at
    // this segment size) while the device reads
    // a byte every half millisecond.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            for i in 0..2000 {
                last = publish_ok(origin.http, "e", &format!("k{i:04}-{}", "x".repeat(58)));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            last
        })
    };
    let mut got = Vec::new();
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        if s.read(&mut b).unwrap() == 1 {
            got.push(b[0]);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let last = publisher.join().unwrap();
    // Then it reads normally until the newest cue's seq shows up.
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut chunk = [0u8; 8192];
    let needle = format!("\"seq\":{last}");
    while !String::from_utf8_lossy(&got).contains(&needle) {
        let n = s.read(&mut chunk).expect("the newest cue arrives");
        got.extend_from_slice(&chunk[..n]);
    }
    let frames = String::from_utf8_lossy(&got).matches("\"seq\":").count();
    assert!(
        frames < 1000,
        "{frames} frames: the slow device was given a backlog"
    );
    let mut good_last = 0;
    while good_last != last {
        good_last = next_cue(&mut good).2;
    }
    let m = edge.metrics();
    assert_eq!(metric(&m, "cue_edge_connections"), 2.0, "nobody was closed");
    assert!(
        metric(&m, "cue_edge_write_blocked_total") > 0.0,
        "the slow device's socket filled: the fallback path ran"
    );
    let uring = send_path == "uring";
    // Every shard on the path asked for (`metric` sums over shards).
    let shards = m
        .lines()
        .filter(|l| l.starts_with("cue_edge_uring_active{"))
        .count() as f64;
    assert!(shards >= 1.0);
    let on_ring = if uring { shards } else { 0.0 };
    assert_eq!(metric(&m, "cue_edge_uring_active"), on_ring);
    let sends = metric(&m, "cue_edge_uring_sends_total");
    if uring {
        assert!(
            sends >= 2000.0,
            "every fanout went through the ring ({sends})"
        );
        assert!(metric(&m, "cue_edge_uring_submits_total") > 0.0);
    } else {
        assert_eq!(sends, 0.0, "send() calls only");
    }
    assert!(metric(&m, "cue_edge_fanout_deliveries_total") > 0.0);
    eprintln!("one-byte reader ({send_path}): {frames} frames for 2000 cues, ended on the newest");
}
