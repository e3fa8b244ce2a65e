//! Starting the real `cue-origin` and `cue-edge` binaries on loopback for integration tests,
//! and a real WebSocket client (tungstenite) to talk to the edge.
#![allow(dead_code)]

pub use cue_testkit::{free_addr, free_udp_addr, wait_until, workspace_bin, Proc};

pub mod quic;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cue_common::time::unix_now_s;
use cue_common::token::TokenKeys;
use cue_testkit::client::{request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Writes `toml` as `dir/edge.toml` and returns its path, for `--config`.
pub fn edge_config(dir: &Path, toml: &str) -> String {
    let p = dir.join("edge.toml");
    std::fs::write(&p, toml).unwrap();
    p.display().to_string()
}

pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes()).unwrap()
}

pub fn device_token(events: &[&str]) -> String {
    let evs: Vec<String> = events.iter().map(|s| s.to_string()).collect();
    keys().mint_device("dev", &evs, unix_now_s(), 3600)
}

pub fn expired_device_token(events: &[&str]) -> String {
    let evs: Vec<String> = events.iter().map(|s| s.to_string()).collect();
    keys().mint_device("dev", &evs, unix_now_s() - 7200, 3600)
}

pub fn publisher_token() -> String {
    keys().mint_publisher(unix_now_s(), 3600)
}

pub struct Origin {
    pub proc: Proc,
    pub http: SocketAddr,
    pub relay: SocketAddr,
    pub dir: PathBuf,
}

pub fn start_origin(dir: &Path, http: SocketAddr, relay: SocketAddr) -> Origin {
    start_origin_with(dir, http, relay, &[])
}

/// As [`start_origin`], with `more` flags.
pub fn start_origin_with(dir: &Path, http: SocketAddr, relay: SocketAddr, more: &[&str]) -> Origin {
    let mut extra = vec![
        "--relay-heartbeat-ms",
        "200",
        "--relay-dead-after-ms",
        "1000",
    ];
    extra.extend_from_slice(more);
    Origin {
        proc: cue_testkit::start_origin(dir, http, relay, SECRET, &extra),
        http,
        relay,
        dir: dir.to_path_buf(),
    }
}

pub struct Edge {
    pub proc: Proc,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    /// QUIC address (a free port unless `--quic` was given).
    pub quic: SocketAddr,
    /// Where its stderr goes: the file given, or a temporary one that lives as long as the
    /// edge, so a failed wait can show what the edge said.
    log: PathBuf,
    _own_log: Option<tempfile::TempPath>,
}

pub fn start_edge(relay: SocketAddr, ws: SocketAddr, admin: SocketAddr, extra: &[&str]) -> Edge {
    start_edge_logged(relay, ws, admin, extra, None)
}

/// As [`start_edge`], with the edge's log written to `log` when given. Unless `extra` names
/// `--quic`, QUIC listens on a free port (not the shared default 8443).
pub fn start_edge_logged(
    relay: SocketAddr,
    ws: SocketAddr,
    admin: SocketAddr,
    extra: &[&str],
    log: Option<&Path>,
) -> Edge {
    start_edge_env(relay, ws, admin, extra, log, &[])
}

/// As [`start_edge_logged`], with `env` added to the edge's environment.
pub fn start_edge_env(
    relay: SocketAddr,
    ws: SocketAddr,
    admin: SocketAddr,
    extra: &[&str],
    log: Option<&Path>,
    env: &[(&str, &str)],
) -> Edge {
    let e = spawn_edge_env(relay, ws, admin, extra, log, env);
    e.wait_linked_n(1 + extra.iter().filter(|a| **a == "--origin").count());
    e
}

/// As [`start_edge_env`], without waiting for the edge to link (it may not live that long).
pub fn spawn_edge_env(
    relay: SocketAddr,
    ws: SocketAddr,
    admin: SocketAddr,
    extra: &[&str],
    log: Option<&Path>,
    env: &[(&str, &str)],
) -> Edge {
    let quic = free_udp_addr().to_string();
    let mut quic_args: Vec<&str> = Vec::new();
    if !extra.contains(&"--quic") {
        quic_args.extend(["--quic", quic.as_str()]);
    }
    // The host secrets live in the temp dir (shared by every test's edges, as on one host),
    // not in the source tree the tests run in.
    let reset = std::env::temp_dir().join("cue-edge-tests-quic-reset.secret");
    let reset = reset.display().to_string();
    if !extra.contains(&"--quic-reset-secret-file") {
        quic_args.extend(["--quic-reset-secret-file", reset.as_str()]);
    }
    let (log, own_log) = match log {
        Some(p) => (p.to_path_buf(), None),
        None => {
            let t = tempfile::NamedTempFile::new().unwrap().into_temp_path();
            (t.to_path_buf(), Some(t))
        }
    };
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let child = Command::new(workspace_bin("cue-edge"))
        .args([
            "--origin",
            &relay.to_string(),
            "--ws",
            &ws.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--shards", "2", "--cpus", "none", "--seed", "42"])
        .args(&quic_args)
        .args(extra)
        .env("CUE_AUTH_SECRET", SECRET)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let quic_addr = extra
        .iter()
        .position(|a| *a == "--quic")
        .and_then(|i| extra.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| quic.parse().unwrap());
    Edge {
        proc: Proc(child),
        ws,
        admin,
        quic: quic_addr,
        log,
        _own_log: own_log,
    }
}

impl Edge {
    pub fn wait_linked(&self) {
        self.wait_linked_n(1);
    }
    /// Waits until exactly `n` origins are linked.
    pub fn wait_linked_n(&self, n: usize) {
        let admin = self.admin;
        let want = format!("\"origins_linked\":{n},");
        let t = Instant::now();
        loop {
            let last = match request(admin, "GET", "/healthz", &[], b"") {
                Ok(r) if r.body.contains(&want) => return,
                Ok(r) => format!("{} {}", r.status, r.body),
                Err(e) => e.to_string(),
            };
            if t.elapsed() > Duration::from_secs(15) {
                panic!(
                    "edge (admin {admin}) not linked to {n} origin(s) within 15 s; last /healthz: {last}; \
                     its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn metrics(&self) -> String {
        request(self.admin, "GET", "/metrics", &[], b"")
            .unwrap()
            .body
    }

    /// Every shard's recent fanout records (`GET /fanouts`), one list.
    pub fn fanouts(&self) -> Vec<serde_json::Value> {
        let r = request(self.admin, "GET", "/fanouts", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["shards"]
            .as_array()
            .unwrap_or_else(|| panic!("/fanouts without shards: {v}"))
            .iter()
            .flat_map(|s| s["fanouts"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// The sum of every sample of `name` in Prometheus text; panics when there is none (a missing
/// metric must not pass for 0).
pub fn metric(metrics: &str, name: &str) -> f64 {
    let v: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!v.is_empty(), "{name} missing from the metrics");
    v.iter().sum()
}

pub fn publish(http: SocketAddr, event: &str, key: &str) -> Response {
    publish_body(http, event, &format!("{{\"key\":\"{key}\"}}"))
}

/// A publish with `body` as it is.
pub fn publish_body(http: SocketAddr, event: &str, body: &str) -> Response {
    let auth = format!("Bearer {}", publisher_token());
    request(
        http,
        "POST",
        &format!("/v1/events/{event}/cues"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .unwrap()
}

pub fn publish_ok(http: SocketAddr, event: &str, key: &str) -> u64 {
    publish_body_ok(http, event, &format!("{{\"key\":\"{key}\"}}"))
}

/// [`publish_body`], which must be `201`; the cue's seq.
pub fn publish_body_ok(http: SocketAddr, event: &str, body: &str) -> u64 {
    let r = publish_body(http, event, body);
    assert_eq!(r.status, 201, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["seq"].as_u64().unwrap()
}

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Connects; `Err(status)` when the upgrade is refused.
pub fn subscribe(ws: SocketAddr, query: &str, bearer: Option<&str>) -> Result<Ws, (u16, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{ws}/v1/subscribe?{query}")
        .into_client_request()
        .unwrap();
    if let Some(t) = bearer {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tungstenite::connect(req) {
        Ok((mut s, _)) => {
            if let MaybeTlsStream::Plain(t) = s.get_mut() {
                t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            }
            Ok(s)
        }
        Err(tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            Err((
                r.status().as_u16(),
                format!("{body}|retry-after={}", retry.unwrap_or_default()),
            ))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

/// As [`subscribe`], but a failure of any kind (refused connection, reset, HTTP refusal) is
/// an `Err` saying what happened, never a panic.
pub fn try_subscribe(ws: SocketAddr, query: &str, bearer: Option<&str>) -> Result<Ws, String> {
    match std::panic::catch_unwind(|| subscribe(ws, query, bearer)) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err((status, body))) => Err(format!("HTTP {status}: {body}")),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "panicked".into())),
    }
}

/// An admin token (drains and undrains edges), as `cue-origin token admin` mints.
pub fn admin_token() -> String {
    keys().mint_admin(unix_now_s(), 3600)
}

/// The next cue on `s` as (event, key, seq), skipping pings.
pub fn next_cue(s: &mut Ws) -> (String, String, u64) {
    loop {
        match s.read().expect("read cue") {
            Message::Text(t) => {
                let c = cue_common::cue::Cue::from_json(t.as_bytes()).unwrap();
                return (c.event().to_string(), c.key().to_string(), c.seq());
            }
            Message::Binary(b) => {
                let c = cue_common::cue::Cue::from_binary(&b).unwrap();
                return (c.event().to_string(), c.key().to_string(), c.seq());
            }
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until a close frame; returns its code and reason.
pub fn next_close(s: &mut Ws) -> (CloseCode, String) {
    loop {
        match s.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without code"),
            Ok(_) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// True when nothing arrives within `d`.
pub fn quiet_for(s: &mut Ws, d: Duration) -> bool {
    if let MaybeTlsStream::Plain(t) = s.get_mut() {
        t.set_read_timeout(Some(d)).unwrap();
    }
    let r = match s.read() {
        Err(tungstenite::Error::Io(e))
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            true
        }
        Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => true,
        _ => false,
    };
    if let MaybeTlsStream::Plain(t) = s.get_mut() {
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    r
}

/// A publish of `key` on tenant `tenant`'s `event` with that tenant's publisher token; its seq.
pub fn publish_as(http: SocketAddr, tenant: Option<&str>, event: &str, key: &str) -> u64 {
    let r = try_publish_as(http, tenant, event, key);
    assert_eq!(r.status, 201, "{}", r.body);
    serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

/// The same, answering whatever the origin answered.
pub fn try_publish_as(http: SocketAddr, tenant: Option<&str>, event: &str, key: &str) -> Response {
    let token = keys().mint_tenant_publisher(tenant, unix_now_s(), 600);
    let path = match tenant {
        Some(t) => format!("/v1/tenants/{t}/events/{event}/cues"),
        None => format!("/v1/events/{event}/cues"),
    };
    let auth = format!("Bearer {token}");
    request(
        http,
        "POST",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        format!("{{\"key\":\"{key}\"}}").as_bytes(),
    )
    .unwrap()
}

pub fn device_of(tenant: Option<&str>, events: &[&str]) -> String {
    let evs: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    keys().mint_tenant_device(tenant, "dev", &evs, unix_now_s(), 600)
}
