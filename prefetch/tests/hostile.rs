//! Hostile clients against the real `cue-prefetch` binary on loopback: slow readers (answers
//! pipelined and never read) and slowloris heads. Each is cut at its deadline, a good device is
//! served meanwhile, and the process's memory stays bounded.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("statm");
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A catalog with one event whose map is ~64 KiB per device.
fn big_catalog(dir: &std::path::Path) {
    let stages: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| (format!("stage-{i}"), json!("x".repeat(1000))))
        .collect();
    write_event(
        dir,
        "fight",
        &json!({"window": window_now(), "ttl_s": 600, "stages": stages}),
    );
}

/// A connection with a 4 KiB receive buffer that sends `n` pipelined prefetches and reads
/// nothing.
fn slow_reader(p: &Prefetch, token: &str, n: usize) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&p.http.into()).unwrap();
    let mut s: TcpStream = s.into();
    let req = format!(
        "GET /v1/events/fight/prefetch?device=tv-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    for _ in 0..n {
        s.write_all(req.as_bytes()).unwrap();
    }
    s
}

/// True once the peer closed `s` (reads drain what is buffered, then see EOF or a reset).
fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 64 * 1024];
    while t.elapsed() < d {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_readers_are_cut_at_the_write_deadline_while_devices_are_served() {
    let dir = tempfile::tempdir().unwrap();
    big_catalog(dir.path());
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", "", "--write-timeout-ms", "1000"],
    );
    let tok = device_token("tv-1", &["fight"]);
    assert_eq!(p.prefetch("fight", "tv-1", &tok, None).status, 200);
    let before = rss_bytes(p.proc.0.id());
    // 20 connections, each with 200 answers (~13 MB) asked for and none read.
    let mut attackers: Vec<TcpStream> = (0..20).map(|_| slow_reader(&p, &tok, 200)).collect();
    // Meanwhile a device is served, quickly.
    let t = Instant::now();
    let r = p.prefetch("fight", "tv-1", &tok, None);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Every slow reader is cut once its stalled answer is not read within the deadline.
    wait_until(Duration::from_secs(5), || {
        p.metric("cue_prefetch_write_timeouts_total") >= 20.0
    });
    let peak = rss_bytes(p.proc.0.id());
    for a in &mut attackers {
        assert!(
            closed_within(a, Duration::from_secs(5)),
            "a slow reader still held"
        );
    }
    assert!(
        peak < before + (64 << 20),
        "memory bounded: {} MiB before, {} MiB under attack",
        before >> 20,
        peak >> 20
    );
    assert_eq!(p.prefetch("fight", "tv-1", &tok, None).status, 200);
}

#[test]
fn slowloris_heads_are_cut_at_the_header_deadline_however_they_trickle() {
    let dir = tempfile::tempdir().unwrap();
    big_catalog(dir.path());
    let p = start_prefetch(
        dir.path(),
        &["--origin-http", "", "--header-timeout-ms", "1000"],
    );
    let tok = device_token("tv-1", &["fight"]);
    let mut conns: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(p.http).unwrap();
            s.write_all(b"GET /v1/events/fight/prefetch?device=tv-1 HTTP/1.1\r\n")
                .unwrap();
            s
        })
        .collect();
    // One header byte from each every 200 ms: progress all along, never a whole head.
    let t = Instant::now();
    let mut cut = vec![false; conns.len()];
    while t.elapsed() < Duration::from_secs(4) && cut.iter().any(|c| !c) {
        for (c, s) in cut.iter_mut().zip(&mut conns) {
            if !*c && s.write_all(b"X").is_err() {
                *c = true;
            }
        }
        let r = p.prefetch("fight", "tv-1", &tok, None);
        assert_eq!(r.status, 200, "a device is served meanwhile");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (c, s) in cut.iter().zip(&mut conns) {
        assert!(
            *c || closed_within(s, Duration::from_secs(1)),
            "a trickling head held past its deadline"
        );
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "all cut within {:?}",
        t.elapsed()
    );
}
