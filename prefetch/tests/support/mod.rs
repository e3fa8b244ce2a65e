//! Real parts for the integration tests: the `cue-prefetch` and `cue-origin` binaries on
//! loopback, a catalog directory, and a real upstream HTTP server (threads over std sockets)
//! that can be slow, failing or flapping and counts its calls per key.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cue_common::time::unix_now_s;
use cue_common::token::TokenKeys;
use cue_testkit::client::{request, Response};
pub use cue_testkit::{free_addr, wait_until, Proc};

pub const SECRET: &str = "prefetch-integration-secret-0123456789abcdef";

pub fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes()).unwrap()
}

pub fn device_token(sub: &str, events: &[&str]) -> String {
    let evs: Vec<String> = events.iter().map(|s| s.to_string()).collect();
    keys().mint_device(sub, &evs, unix_now_s(), 3600)
}

/// A device token for every event whose `priority` claim grants `critical`.
pub fn critical_token(sub: &str) -> String {
    keys().mint(&cue_common::token::Claims {
        sub: Some(sub.into()),
        events: Some(vec!["*".into()]),
        role: None,
        priority: Some("critical".into()),
        tenant: None,
        exp: unix_now_s() + 3600,
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes `EVENT.json` into `dir`.
pub fn write_event(dir: &Path, event: &str, body: &serde_json::Value) {
    std::fs::write(dir.join(format!("{event}.json")), body.to_string()).unwrap();
}

/// A window from an hour ago to an hour ahead.
pub fn window_now() -> serde_json::Value {
    let n = now_ms();
    serde_json::json!({"start_ms": n - 3_600_000, "end_ms": n + 3_600_000})
}

pub struct Prefetch {
    pub proc: Proc,
    pub http: SocketAddr,
}

/// Starts `cue-prefetch` on a free port with `args` and waits for `/healthz`.
pub fn start_prefetch(catalog: &Path, args: &[&str]) -> Prefetch {
    let http = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_cue-prefetch"))
        .args(["--http", &http.to_string(), "--catalog"])
        .arg(catalog)
        .args(["--seed", "7"])
        .args(args)
        .env("CUE_AUTH_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Prefetch {
        proc: Proc(child),
        http,
    };
    wait_until(Duration::from_secs(10), || {
        request(http, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
    });
    p
}

impl Prefetch {
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.http, "GET", path, headers, b"").unwrap()
    }
    /// A prefetch with a bearer token and an optional priority.
    pub fn prefetch(
        &self,
        event: &str,
        device: &str,
        token: &str,
        priority: Option<&str>,
    ) -> Response {
        let auth = format!("Bearer {token}");
        let mut h = vec![("Authorization", auth.as_str())];
        if let Some(p) = priority {
            h.push(("X-Cue-Priority", p));
        }
        self.get(&format!("/v1/events/{event}/prefetch?device={device}"), &h)
    }
    pub fn metric(&self, line_prefix: &str) -> f64 {
        let m = self.get("/metrics", &[]).body;
        m.lines()
            .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {line_prefix}"))
    }
}

pub struct Origin {
    pub proc: Proc,
    pub http: SocketAddr,
    pub _dir: tempfile::TempDir,
}

pub fn start_origin() -> Origin {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    Origin {
        proc: cue_testkit::start_origin(dir.path(), http, relay, SECRET, &[]),
        http,
        _dir: dir,
    }
}

impl Origin {
    pub fn publish(&self, event: &str, key: &str) {
        self.publish_as(None, event, key)
    }

    /// A publish of tenant `tenant`'s `event` (`None`: the default tenant's).
    pub fn publish_as(&self, tenant: Option<&str>, event: &str, key: &str) {
        let token = keys().mint_tenant_publisher(tenant, unix_now_s(), 3600);
        let auth = format!("Bearer {token}");
        let path = match tenant {
            Some(t) => format!("/v1/tenants/{t}/events/{event}/cues"),
            None => format!("/v1/events/{event}/cues"),
        };
        let r = request(
            self.http,
            "POST",
            &path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            format!("{{\"key\":\"{key}\"}}").as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

/// How the upstream answers.
pub const OK: u8 = 0;
/// 500 to everything.
pub const FAIL: u8 = 1;
/// Alternates: fail, ok, fail, ok...
pub const FLAP: u8 = 2;

/// State shared by the upstream's threads.
#[derive(Default)]
pub struct UpstreamState {
    pub mode: AtomicU8,
    pub delay_ms: AtomicU64,
    /// Calls per key (`event/device` from the query).
    pub calls: Mutex<HashMap<String, u64>>,
    /// Most calls in flight at once for one key, over the run.
    pub max_concurrent_per_key: AtomicU64,
    in_flight: Mutex<HashMap<String, u64>>,
    flap: AtomicU64,
    stop: AtomicBool,
}

/// A real upstream recommendation service on loopback: HTTP/1.1 with keep-alive, a thread per
/// connection.
pub struct Upstream {
    pub addr: SocketAddr,
    pub s: Arc<UpstreamState>,
}

impl Upstream {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = Upstream {
            addr: l.local_addr().unwrap(),
            s: Arc::default(),
        };
        let s = u.s.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                if s.stop.load(SeqCst) {
                    return;
                }
                let s = s.clone();
                std::thread::spawn(move || serve(&s, conn));
            }
        });
        u
    }

    pub fn set_mode(&self, m: u8) {
        self.s.mode.store(m, SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        self.s.delay_ms.store(d.as_millis() as u64, SeqCst);
    }

    pub fn template(&self) -> String {
        format!(
            "http://{}/recs?event={{event}}&device={{device}}",
            self.addr
        )
    }

    pub fn total_calls(&self) -> u64 {
        self.s.calls.lock().unwrap().values().sum()
    }

    pub fn calls_for(&self, key: &str) -> u64 {
        self.s.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn max_concurrent_per_key(&self) -> u64 {
        self.s.max_concurrent_per_key.load(SeqCst)
    }
}

fn serve(s: &UpstreamState, conn: TcpStream) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let q = target.split_once('?').map(|x| x.1).unwrap_or("");
        let param = |k: &str| {
            q.split('&')
                .find_map(|p| p.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_string()
        };
        let key = format!("{}/{}", param("event"), param("device"));
        let n = {
            let mut c = s.calls.lock().unwrap();
            let n = c.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        {
            let mut f = s.in_flight.lock().unwrap();
            let c = f.entry(key.clone()).or_default();
            *c += 1;
            s.max_concurrent_per_key.fetch_max(*c, SeqCst);
        }
        std::thread::sleep(Duration::from_millis(s.delay_ms.load(SeqCst)));
        let fail = match s.mode.load(SeqCst) {
            FAIL => true,
            FLAP => s.flap.fetch_add(1, SeqCst) % 2 == 0,
            _ => false,
        };
        *s.in_flight.lock().unwrap().get_mut(&key).unwrap() -= 1;
        let (status, body) = if param("event") == "missing" {
            ("404 Not Found", "{}".to_string())
        } else if fail {
            ("500 Internal Server Error", "{}".to_string())
        } else {
            (
                "200 OK",
                format!(r#"{{"round-1":{{"for":"{{device}}","call":{n}}}}}"#),
            )
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.s.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
