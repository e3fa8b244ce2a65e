//! Asymmetric token keys with the real binaries and no shared secret: the origin signs, the
//! edge verifies with the public set only; a partner host holding the public set cannot make a
//! token any service accepts; a rotation keeps old tokens until their key is retired; a
//! configured key file that is missing is an error, never a new key.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cue_testkit::client::request;
use support::{next_cue, subscribe};

/// `cue-origin ARGS` in `dir`, with no shared secret in the environment.
fn origin_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(support::workspace_bin("cue-origin"))
        .args(args)
        .current_dir(dir)
        .env_remove("CUE_AUTH_SECRET")
        .output()
        .unwrap()
}

fn minted(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A service started in `dir` (its defaults in `./cue-data`), with no shared secret.
fn service(dir: &Path, bin: &str, args: &[&str]) -> support::Proc {
    support::Proc(
        Command::new(support::workspace_bin(bin))
            .args(args)
            .current_dir(dir)
            .env_remove("CUE_AUTH_SECRET")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn edge(dir: &Path, relay: SocketAddr, ws: SocketAddr, admin: SocketAddr) -> support::Proc {
    let p = service(
        dir,
        "cue-edge",
        &[
            "--origin",
            &relay.to_string(),
            "--ws",
            &ws.to_string(),
            "--admin",
            &admin.to_string(),
            "--quic",
            "none",
            "--shards",
            "1",
        ],
    );
    support::wait_until(Duration::from_secs(10), || {
        request(admin, "GET", "/healthz", &[], b"")
            .is_ok_and(|r| r.body.contains("\"origins_linked\":1,"))
    });
    p
}

fn status(ws: SocketAddr, token: &str) -> u16 {
    match subscribe(ws, "events=fight", Some(token)) {
        Ok(_) => 101,
        Err((s, _)) => s,
    }
}

#[test]
fn origin_signs_edges_verify_with_public_keys_and_rotation_keeps_old_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No keys yet: the origin's CLI says what to do and makes none.
    let out = origin_cli(d, &["token", "publisher"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("keys new"));
    assert!(!d.join("cue-data/token-keys.json").exists());
    let out = origin_cli(d, &["keys", "new"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.join("cue-data/token-keys.pub.json").exists());
    let old = minted(origin_cli(
        d,
        &["token", "device", "--sub", "tv-1", "--events", "fight"],
    ));
    let publisher = minted(origin_cli(d, &["token", "publisher", "--events", "fight"]));

    let (http, relay) = (support::free_addr(), support::free_addr());
    let origin = service(
        d,
        "cue-origin",
        &["--http", &http.to_string(), "--relay", &relay.to_string()],
    );
    cue_testkit::wait_healthy(http, Duration::from_secs(10));
    let (ws, admin) = (support::free_addr(), support::free_addr());
    let mut e = edge(d, relay, ws, admin);

    // The origin's token works; the cue flows.
    let mut dev = subscribe(ws, "events=fight", Some(&old)).unwrap();
    let auth = format!("Bearer {publisher}");
    let r = request(
        http,
        "POST",
        "/v1/events/fight/cues",
        &[("Authorization", &auth)],
        br#"{"key":"round-1"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(next_cue(&mut dev).1, "round-1");

    // A partner host with the public set only: the CLI cannot sign, and what it can make
    // from the public file is refused by the edge and the origin alike.
    let partner = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(partner.path().join("cue-data")).unwrap();
    let public = std::fs::read_to_string(d.join("cue-data/token-keys.pub.json")).unwrap();
    std::fs::write(partner.path().join("cue-data/token-keys.pub.json"), &public).unwrap();
    let out = origin_cli(partner.path(), &["token", "publisher"]);
    assert_eq!(out.status.code(), Some(2), "a public set signs nothing");
    let kid = serde_json::from_str::<serde_json::Value>(&public).unwrap()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(kid.clone());
    let claims = cue_common::token::Claims {
        sub: Some("tv-1".into()),
        events: Some(vec!["*".into()]),
        role: Some("publisher".into()),
        priority: None,
        tenant: None,
        exp: cue_common::time::unix_now_s() + 600,
    };
    let forged = jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_eq!(status(ws, &forged), 401);
    let r = request(
        http,
        "POST",
        "/v1/events/fight/cues",
        &[("Authorization", &format!("Bearer {forged}"))],
        br#"{"key":"forged"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);

    // Rotation: a new active key; SIGHUP gives the edge the new set, and old tokens still
    // verify.
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(origin_cli(d, &["keys", "rotate"]));
    let new = minted(origin_cli(
        d,
        &["token", "device", "--sub", "tv-2", "--events", "fight"],
    ));
    assert_eq!(
        status(ws, &new),
        401,
        "the edge has not loaded the new set yet"
    );
    let hup = |p: &support::Proc| {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGHUP) };
    };
    hup(&e);
    support::wait_until(Duration::from_secs(5), || status(ws, &new) == 101);
    assert_eq!(status(ws, &old), 101);
    // Retired and reloaded: the old key admits no new session; the session it admitted before
    // stays and still gets cues; the new key goes on.
    ok(origin_cli(d, &["keys", "retire", "--kid", &kid]));
    hup(&e);
    support::wait_until(Duration::from_secs(5), || status(ws, &old) == 401);
    assert_eq!(status(ws, &new), 101);
    // The origin, restarted on the rotated keys, takes a publisher token of the new key.
    let publisher = minted(origin_cli(d, &["token", "publisher"]));
    drop(origin);
    let _origin = service(
        d,
        "cue-origin",
        &["--http", &http.to_string(), "--relay", &relay.to_string()],
    );
    cue_testkit::wait_healthy(http, Duration::from_secs(10));
    let r = request(
        http,
        "POST",
        "/v1/events/fight/cues",
        &[("Authorization", &format!("Bearer {publisher}"))],
        br#"{"key":"round-2"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        next_cue(&mut dev).1,
        "round-2",
        "the old key's session is still up"
    );
    // An admin token from the CLI (the rotated key, which the edge has since SIGHUP) drains the
    // edge; it publishes nothing, and a publisher token drains nothing.
    let admin_tok = minted(origin_cli(d, &["token", "admin", "--ttl", "600"]));
    let drain = |t: &str| {
        request(
            admin,
            "POST",
            "/admin/drain?window_s=1",
            &[("Authorization", &format!("Bearer {t}"))],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(drain(&publisher), 403);
    let r = request(
        http,
        "POST",
        "/v1/events/fight/cues",
        &[("Authorization", &format!("Bearer {admin_tok}"))],
        br#"{"key":"round-3"}"#,
    )
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(drain(&admin_tok), 202);
    assert!(
        e.wait_exit(Duration::from_secs(5)).is_some(),
        "drained, it ends"
    );
}

#[test]
fn a_configured_key_file_that_is_missing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, flag) in [
        ("cue-edge", "--keys"),
        ("cue-prefetch", "--keys"),
        ("cue-origin", "--keys-file"),
        ("cue-origin", "--auth-secret-file"),
    ] {
        let missing = dir.path().join("typo.json");
        let out = Command::new(support::workspace_bin(bin))
            .args([flag, &missing.display().to_string()])
            .current_dir(dir.path())
            .env_remove("CUE_AUTH_SECRET")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bin} {flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("typo.json"), "{bin} {flag}: {err}");
        assert!(!missing.exists(), "{bin} {flag} made the file");
    }
    assert!(
        !dir.path().join("cue-data/token-keys.json").exists(),
        "no key was made for a typo"
    );
}

/// A WebSocket upgrade with `token` and, when given, the `cue_admit` cookie: the status and the
/// ticket the 101 hands out (its `Set-Cookie`), if any.
fn upgrade(ws: SocketAddr, token: &str, ticket: Option<&str>) -> (u16, Option<String>) {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{ws}/v1/subscribe?events=fight")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("Authorization", format!("Bearer {token}").parse().unwrap());
    if let Some(t) = ticket {
        h.insert(
            "Cookie",
            format!("theme=dark; cue_admit={t}").parse().unwrap(),
        );
    }
    match tungstenite::connect(req) {
        Ok((_, resp)) => {
            let cookie = resp
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            let ticket = cookie.map(|c| {
                assert!(
                    c.contains("HttpOnly") && c.contains("Path=/v1/subscribe"),
                    "{c}"
                );
                let v = c.split(';').next().unwrap();
                v.strip_prefix("cue_admit=").expect(v).to_string()
            });
            (101, ticket)
        }
        Err(tungstenite::Error::Http(r)) => (r.status().as_u16(), None),
        Err(e) => panic!("upgrade: {e}"),
    }
}

fn counter(admin: SocketAddr, name: &str) -> f64 {
    support::metric(
        &request(admin, "GET", "/metrics", &[], b"").unwrap().body,
        name,
    )
}

/// An edge in `dir` with WebSocket and QUIC (its log in `dir`): (process, ws, admin, quic, log).
fn edge_quic(
    dir: &Path,
    relay: SocketAddr,
    name: &str,
) -> (support::Proc, [SocketAddr; 3], String) {
    let (ws, admin) = (support::free_addr(), support::free_addr());
    let quic = support::free_udp_addr();
    let log = dir.join(format!("{name}.log"));
    let p = support::Proc(
        Command::new(support::workspace_bin("cue-edge"))
            .args(["--origin", &relay.to_string(), "--ws", &ws.to_string()])
            .args(["--admin", &admin.to_string(), "--quic", &quic.to_string()])
            .args(["--shards", "1", "--cpus", "none"])
            .current_dir(dir)
            .env_remove("CUE_AUTH_SECRET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    support::wait_until(Duration::from_secs(10), || {
        request(admin, "GET", "/healthz", &[], b"")
            .is_ok_and(|r| r.body.contains("\"origins_linked\":1,"))
    });
    let fp = support::quic::logged_fingerprint(&log);
    (p, [ws, admin, quic], fp)
}

#[test]
fn admission_tickets_spare_the_signature_check_at_any_process_of_the_host_until_the_key_goes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    ok(origin_cli(d, &["keys", "new"]));
    let kid = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(d.join("cue-data/token-keys.pub.json")).unwrap(),
    )
    .unwrap()["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let device = |sub: &str| {
        minted(origin_cli(
            d,
            &["token", "device", "--sub", sub, "--events", "fight"],
        ))
    };
    let (tok, tok2) = (device("tv-1"), device("tv-2"));
    let (http, relay) = (support::free_addr(), support::free_addr());
    let _origin = service(
        d,
        "cue-origin",
        &["--http", &http.to_string(), "--relay", &relay.to_string()],
    );
    cue_testkit::wait_healthy(http, Duration::from_secs(10));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hello = |quic: SocketAddr, fp: &str, ticket: Option<&str>| {
        let mut h = serde_json::json!({"events": ["fight"], "token": tok});
        if let Some(t) = ticket {
            h["ticket"] = t.into();
        }
        let line = format!("{h}\n");
        rt.block_on(async {
            let ep = support::quic::endpoint(fp);
            let (v, _dev) = support::quic::hello(&ep, quic, line.as_bytes())
                .await
                .unwrap();
            v
        })
    };

    // First admission at edge A: the signature is checked and a ticket handed out, in a cookie
    // (WebSocket) and in the ok line (QUIC).
    let (mut a, [ws_a, admin_a, quic_a], fp_a) = edge_quic(d, relay, "edge-a");
    let (s, ws_ticket) = upgrade(ws_a, &tok, None);
    assert_eq!(s, 101);
    let ws_ticket = ws_ticket.expect("a ticket in Set-Cookie");
    assert_eq!(ws_ticket.len(), cue_common::keys::TICKET_LEN);
    let v = hello(quic_a, &fp_a, None);
    assert_eq!(v["ok"], true, "{v}");
    let quic_ticket = v["ticket"]
        .as_str()
        .expect("a ticket in the ok line")
        .to_string();
    assert_eq!(counter(admin_a, "cue_edge_admit_ticket_hits_total"), 0.0);

    // A dies; B is a new process of the same host: the tickets admit there, with no new ticket
    // and no signature check.
    a.kill9();
    let (mut b, [ws_b, admin_b, quic_b], fp_b) = edge_quic(d, relay, "edge-b");
    assert_eq!(upgrade(ws_b, &tok, Some(&ws_ticket)), (101, None));
    let v = hello(quic_b, &fp_b, Some(&quic_ticket));
    assert_eq!(v, serde_json::json!({"ok": true}));
    assert_eq!(counter(admin_b, "cue_edge_admit_ticket_hits_total"), 2.0);
    assert_eq!(
        counter(admin_b, "cue_edge_admit_tickets_refused_total"),
        0.0
    );

    // A ticket with another device's token, or tampered: the token is checked for real (and is
    // good here, so admitted with a ticket of its own); each is counted.
    let (s, t2) = upgrade(ws_b, &tok2, Some(&ws_ticket));
    assert_eq!(s, 101);
    assert!(t2.is_some_and(|t| t != ws_ticket));
    let mut bad = ws_ticket.clone().into_bytes();
    bad[10] = if bad[10] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    assert_eq!(upgrade(ws_b, &tok, Some(&bad)).0, 101);
    assert_eq!(
        counter(admin_b, "cue_edge_admit_tickets_refused_total"),
        2.0
    );
    assert_eq!(counter(admin_b, "cue_edge_admit_ticket_hits_total"), 2.0);

    // Another host (its own ticket secret, the same public keys): the ticket does not hold.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("cue-data")).unwrap();
    std::fs::copy(
        d.join("cue-data/token-keys.pub.json"),
        other.path().join("cue-data/token-keys.pub.json"),
    )
    .unwrap();
    let (mut c, [ws_c, admin_c, _], _) = edge_quic(other.path(), relay, "edge-c");
    assert_eq!(upgrade(ws_c, &tok, Some(&ws_ticket)).0, 101);
    assert_eq!(
        counter(admin_c, "cue_edge_admit_tickets_refused_total"),
        1.0
    );
    c.kill9();

    // The key retired and the set reloaded: its tokens stop admitting, ticket or not.
    ok(origin_cli(d, &["keys", "rotate"]));
    ok(origin_cli(d, &["keys", "retire", "--kid", &kid]));
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(b.0.id() as i32, libc::SIGHUP) };
    support::wait_until(Duration::from_secs(5), || {
        upgrade(ws_b, &tok, Some(&ws_ticket)).0 == 401
    });
    assert_eq!(upgrade(ws_b, &tok, None).0, 401);
    b.kill9();
}
