//! The relay between origin and edges over mutual TLS, with the real binaries: trusted edges
//! link and get cues; a plaintext dialer, a dialer without a certificate and one with a foreign
//! CA's certificate get nothing, not even an answer to HELLO; an edge refuses an origin of
//! another CA or under another name, and links once SIGHUP gives the origin the right
//! certificate; a plaintext relay off loopback refuses to start without `--relay-insecure`;
//! and a forged seq from a link is refused and counted, never adopted.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cue_common::cue::Cue;
use cue_common::relay::{self, Frame};
use cue_testkit::client::request;
use cue_testkit::{spawn_origin, wait_healthy};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use support::*;

/// A CA on disk, and leaf certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A leaf for `sans`, written as `name.pem` / `name.key`; returns (cert, key) paths.
    fn leaf(&self, dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf_with_uris(dir, name, sans, &[])
    }

    /// [`Ca::leaf`] with SAN URIs `uris` too (an edge's `cue-tenant:T`).
    fn leaf_with_uris(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        uris: &[&str],
    ) -> (PathBuf, PathBuf) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A `cue-origin` whose relay speaks TLS with `cert`/`key` and trusts edges of `client_ca`.
fn tls_origin(dir: &Path, cert: &Path, key: &Path, client_ca: &Path) -> Origin {
    let (http, relay) = (free_addr(), free_addr());
    std::fs::create_dir_all(dir).unwrap();
    let extra = [
        "--relay-cert".to_string(),
        s(cert),
        "--relay-key".into(),
        s(key),
        "--relay-client-ca".into(),
        s(client_ca),
        "--relay-heartbeat-ms".into(),
        "200".into(),
        "--relay-dead-after-ms".into(),
        "1000".into(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proc = spawn_origin(
        dir,
        http,
        relay,
        SECRET,
        &extra,
        Some(&dir.join("origin.log")),
    );
    wait_healthy(http, Duration::from_secs(10));
    Origin {
        proc,
        http,
        relay,
        dir: dir.to_path_buf(),
    }
}

/// An edge on `relay` over mutual TLS: trusting `origin_ca`, presenting `(cert, key)`, with
/// `extra` flags.
fn tls_edge(
    relay: SocketAddr,
    origin_ca: &Path,
    (cert, key): (&Path, &Path),
    extra: &[&str],
) -> Edge {
    let tls = [
        "--origin-ca".to_string(),
        s(origin_ca),
        "--relay-cert".into(),
        s(cert),
        "--relay-key".into(),
        s(key),
    ];
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    start_edge(relay, free_addr(), free_addr(), &args)
}

fn hello() -> Vec<u8> {
    let mut b = Vec::new();
    relay::encode(
        &Frame::Hello {
            version: cue_common::relay::VERSION,
            edge_id: "intruder".into(),
            since: vec![],
        },
        &mut b,
    );
    b
}

/// Everything a stream yields within `d` (until EOF or an error).
fn drain(r: &mut impl Read, d: Duration) -> Vec<u8> {
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while t.elapsed() < d {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
    out
}

/// True when `bytes` hold no relay frame at all.
fn no_frames(bytes: &[u8]) -> bool {
    !matches!(relay::decode(bytes), Ok(Some(_)))
}

/// A rustls client of the relay: trusts `ca`, presents `client` (cert, key) if given; writes a
/// HELLO and returns the plaintext it reads back.
fn tls_dialer(relay: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> Vec<u8> {
    let b = rustls::ClientConfig::builder_with_provider(cue_common::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(cue_common::tls::read_roots(ca).unwrap());
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((c, k)) => b
            .with_client_auth_cert(
                cue_common::tls::read_chain(c).unwrap(),
                cue_common::tls::read_key(k).unwrap(),
            )
            .unwrap(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(relay).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let _ = tls.write_all(&hello());
    let _ = tls.flush();
    drain(&mut tls, Duration::from_secs(2))
}

#[test]
fn tls_relay_serves_trusted_edges_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let origin_ca = Ca::new(d, "origin");
    let edge_ca = Ca::new(d, "edge");
    let foreign = Ca::new(d, "foreign");
    let (oc, ok) = origin_ca.leaf(d, "origin", &["127.0.0.1", "localhost"]);
    let (ec, ek) = edge_ca.leaf(d, "edge", &["edge-1.partner.example"]);
    let (fc, fk) = foreign.leaf(d, "foreign", &["edge-1.partner.example"]);
    let o = tls_origin(&d.join("o"), &oc, &ok, &edge_ca.pem);

    // A trusted edge links (by name as well as by address) and its devices get cues.
    let origin_by_name = format!("localhost:{}", o.relay.port());
    let edge = tls_edge(
        o.relay,
        &origin_ca.pem,
        (&ec, &ek),
        &["--origin", &origin_by_name],
    );
    let tok = device_token(&["fight"]);
    let mut dev = subscribe(edge.ws, "events=fight", Some(&tok)).unwrap();
    let s1 = publish_ok(o.http, "fight", "round-1");
    assert_eq!(next_cue(&mut dev), ("fight".into(), "round-1".into(), s1));

    // A plaintext dialer: its HELLO is not TLS; it reads no frame.
    let mut plain = TcpStream::connect(o.relay).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    plain.write_all(&hello()).unwrap();
    let got = drain(&mut plain, Duration::from_secs(2));
    assert!(no_frames(&got), "plaintext dialer read a frame: {got:?}");
    // TLS without a client certificate, and with a foreign CA's: nothing.
    let got = tls_dialer(o.relay, &origin_ca.pem, None);
    assert!(got.is_empty(), "no-certificate dialer read {got:?}");
    let got = tls_dialer(o.relay, &origin_ca.pem, Some((&fc, &fk)));
    assert!(got.is_empty(), "foreign-CA dialer read {got:?}");
    // The trusted certificate does get the catch-up: the dialer above was refused for its
    // certificate, not for the way it dials.
    let got = tls_dialer(o.relay, &origin_ca.pem, Some((&ec, &ek)));
    match relay::decode(&got) {
        Ok(Some((Frame::Cue(c), _))) => assert_eq!(c.seq(), s1),
        other => panic!("trusted dialer got {other:?}"),
    }
    let m = request(o.http, "GET", "/metrics", &[], b"").unwrap().body;
    let refused: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("cue_origin_relay_tls_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(refused >= 3.0, "{m}");
}

#[test]
fn edge_refuses_an_origin_it_does_not_trust_until_sighup_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let origin_ca = Ca::new(d, "origin");
    let edge_ca = Ca::new(d, "edge");
    let rogue = Ca::new(d, "rogue");
    let (ec, ek) = edge_ca.leaf(d, "edge", &["edge-1"]);
    // The origin serves, in turn: a rogue CA's certificate, the right CA's under another name,
    // then (after SIGHUP) the right one.
    let (rc, rk) = rogue.leaf(d, "rogue", &["127.0.0.1"]);
    let (wc, wk) = origin_ca.leaf(d, "wrong-name", &["other.example"]);
    let (gc, gk) = origin_ca.leaf(d, "good", &["127.0.0.1"]);
    let (cert, key) = (d.join("served.pem"), d.join("served.key"));
    std::fs::copy(&rc, &cert).unwrap();
    std::fs::copy(&rk, &key).unwrap();
    let o = tls_origin(&d.join("o"), &cert, &key, &edge_ca.pem);
    let (ws, admin) = (free_addr(), free_addr());
    // Re-dial quickly, so each certificate is tried within the test's patience.
    let conf = d.join("edge.toml");
    std::fs::write(&conf, "backoff_base_ms = 100\nbackoff_max_ms = 300\n").unwrap();
    let args = [
        "--origin".to_string(),
        o.relay.to_string(),
        "--origin-ca".into(),
        s(&origin_ca.pem),
        "--relay-cert".into(),
        s(&ec),
        "--relay-key".into(),
        s(&ek),
        "--ws".into(),
        ws.to_string(),
        "--admin".into(),
        admin.to_string(),
        "--quic".into(),
        "none".into(),
        "--config".into(),
        s(&conf),
    ];
    let _edge = Proc(
        std::process::Command::new(workspace_bin("cue-edge"))
            .args(&args)
            .env("CUE_AUTH_SECRET", SECRET)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let failures = || {
        request(admin, "GET", "/metrics", &[], b"")
            .ok()
            .and_then(|r| {
                r.body
                    .lines()
                    .find_map(|l| l.strip_prefix("cue_edge_relay_tls_failures_total "))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let linked = || {
        request(admin, "GET", "/healthz", &[], b"")
            .is_ok_and(|r| r.body.contains("\"origins_linked\":1,"))
    };
    wait_until(Duration::from_secs(10), || failures() >= 2);
    assert!(!linked(), "linked to a rogue origin");
    // The right CA under another name: still refused.
    std::fs::copy(&wc, &cert).unwrap();
    std::fs::copy(&wk, &key).unwrap();
    let pid = o.proc.0.id() as i32;
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let before = failures();
    wait_until(Duration::from_secs(10), || failures() >= before + 2);
    assert!(!linked(), "linked to an origin of another name");
    // The right certificate: linked after SIGHUP, and cues flow.
    std::fs::copy(&gc, &cert).unwrap();
    std::fs::copy(&gk, &key).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(10), linked);
    let tok = device_token(&["fight"]);
    let mut dev = subscribe(ws, "events=fight", Some(&tok)).unwrap();
    let s1 = publish_ok(o.http, "fight", "round-1");
    assert_eq!(next_cue(&mut dev).2, s1);
}

#[test]
fn plaintext_relay_off_loopback_needs_relay_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().port();
    let run = |bin: &str, args: &[&str]| {
        std::process::Command::new(workspace_bin(bin))
            .args(args)
            .env("CUE_AUTH_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let relay = format!("0.0.0.0:{port}");
    let out = run(
        "cue-origin",
        &["--relay", &relay, "--data-dir", &s(&dir.path().join("o"))],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not loopback and relay TLS is off"),
        "{err}"
    );
    // The edge refuses such an origin before dialling anything.
    let out = run("cue-edge", &["--origin", "origin.partner.example:7001"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("origin.partner.example:7001 is not loopback"),
        "{err}"
    );
    // Half a TLS setting is an error too.
    let out = run("cue-edge", &["--origin-ca", "x.pem"]);
    assert_eq!(out.status.code(), Some(2));
    // With --relay-insecure the origin starts (and says what it allows).
    let (http, log) = (free_addr(), dir.path().join("insecure.log"));
    let _o = spawn_origin(
        &dir.path().join("o2"),
        http,
        relay.parse().unwrap(),
        SECRET,
        &["--relay-insecure"],
        Some(&log),
    );
    wait_healthy(http, Duration::from_secs(10));
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(l.contains("plaintext off loopback"), "{l}");
}

#[test]
fn a_forged_seq_from_a_link_is_refused_and_counted() {
    // A fake origin on loopback that sends a cue with seq u64::MAX, then a real one.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = fake.local_addr().unwrap();
    let (ws, admin) = (free_addr(), free_addr());
    let _edge = Proc(
        std::process::Command::new(workspace_bin("cue-edge"))
            .args(["--origin", &relay.to_string(), "--ws", &ws.to_string()])
            .args(["--admin", &admin.to_string(), "--quic", "none"])
            .env("CUE_AUTH_SECRET", SECRET)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (mut link, _) = fake.accept().unwrap();
    link.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = link.read(&mut buf).unwrap();
    assert!(matches!(
        relay::decode(&buf[..n]),
        Ok(Some((Frame::Hello { .. }, _)))
    ));
    let tok = device_token(&["fight"]);
    wait_until(Duration::from_secs(10), || {
        request(admin, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let mut dev = subscribe(ws, "events=fight", Some(&tok)).unwrap();
    let now = cue_common::time::unix_now_ms();
    let mut out = Vec::new();
    for c in [
        Cue::new("fight", "forged", u64::MAX, now).unwrap(),
        Cue::new("fight", "future", now + 7_200_000, now).unwrap(),
        Cue::new("fight", "round-1", now, now).unwrap(),
    ] {
        relay::encode(&Frame::Cue(c), &mut out);
    }
    link.write_all(&out).unwrap();
    assert_eq!(next_cue(&mut dev), ("fight".into(), "round-1".into(), now));
    let m = request(admin, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(m.contains("cue_edge_relay_cues_refused_total 2"), "{m}");
}

#[test]
fn an_edge_scoped_to_a_tenant_gets_only_its_cues_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let origin_ca = Ca::new(d, "origin");
    let edge_ca = Ca::new(d, "edge");
    let (oc, ok) = origin_ca.leaf(d, "origin", &["127.0.0.1", "localhost"]);
    // A CDN partner's edge: its certificate names the one tenant it carries.
    let (ec, ek) = edge_ca.leaf_with_uris(
        d,
        "partner",
        &["edge-1.partner.example"],
        &["cue-tenant:acme"],
    );
    let o = tls_origin(&d.join("o"), &oc, &ok, &edge_ca.pem);
    // Before the edge links: one cue of each tenant and of the default one.
    publish_as(o.http, Some("acme"), "fight", "acme-1");
    publish_as(o.http, Some("brand-b"), "fight", "brand-b-1");
    publish_as(o.http, None, "fight", "default-1");
    // On the wire: the catch-up a dialer with that certificate gets holds acme's cue only.
    let got = tls_dialer(o.relay, &origin_ca.pem, Some((&ec, &ek)));
    let (mut rest, mut events) = (&got[..], Vec::new());
    while let Ok(Some((f, n))) = relay::decode(rest) {
        if let Frame::Cue(c) | Frame::ClassedCue(c, _) = f {
            events.push(c.event().to_string());
        }
        rest = &rest[n..];
    }
    assert_eq!(events, ["acme/fight"], "catch-up to an acme-only edge");

    let edge = tls_edge(o.relay, &origin_ca.pem, (&ec, &ek), &[]);
    let mut acme = subscribe(
        edge.ws,
        "events=fight",
        Some(&device_of(Some("acme"), &["fight"])),
    )
    .unwrap();
    assert_eq!(next_cue(&mut acme).1, "acme-1");
    // Devices of tenants it does not carry are refused, saying why.
    for (t, name) in [(Some("brand-b"), "brand-b"), (None, "(default)")] {
        let err = subscribe(edge.ws, "events=fight", Some(&device_of(t, &["fight"]))).unwrap_err();
        assert_eq!(err.0, 403, "{}", err.1);
        assert!(
            err.1.contains(&format!("does not carry tenant {name}")),
            "{}",
            err.1
        );
    }
    // Live: the other tenants' cues never reach this edge's relay link.
    let received = || metric(&edge.metrics(), "cue_edge_relay_cues_received_total");
    let before = received();
    publish_as(o.http, Some("brand-b"), "fight", "brand-b-2");
    publish_as(o.http, None, "fight", "default-2");
    let s2 = publish_as(o.http, Some("acme"), "fight", "acme-2");
    assert_eq!(next_cue(&mut acme), ("fight".into(), "acme-2".into(), s2));
    assert_eq!(
        received() - before,
        1.0,
        "only acme's live cue came over the relay"
    );
    let origin_metrics = request(o.http, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(metric(&origin_metrics, "cue_origin_relay_cues_out_of_scope_total") >= 2.0);
    // A certificate that names a tenant badly links nowhere.
    let (bc, bk) =
        edge_ca.leaf_with_uris(d, "bad", &["edge-2.partner.example"], &["cue-tenant:Bad"]);
    let got = tls_dialer(o.relay, &origin_ca.pem, Some((&bc, &bk)));
    assert!(no_frames(&got), "a badly scoped edge read {got:?}");
}
