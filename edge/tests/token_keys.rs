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
    e.kill9();
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
