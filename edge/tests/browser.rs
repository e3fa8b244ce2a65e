//! The browser SDK (`edge/sdk/cue.js`) in a real headless Chromium (Debian's `chromium`)
//! against a real origin, edge and prefetch on loopback. The device page (`tests/browser/`) is
//! served by its own web server (`serve.py`) on another port, so the browser's CORS checks of
//! cue-prefetch run for real, and reports every SDK callback back to that server.
//!
//! One device goes through an event: its map fetched at the time the schedule gave it, the
//! first cue shown from that map with no request, an edge killed and replaced (the SDK comes
//! back with `since` and gets no duplicate), and a drain whose `retry-after=S` hint it waits
//! out before it reconnects. A second test runs the SDK's own unit tests under Node.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cue_prefetch::schedule::{prefetch_at, Window};
use cue_testkit::client::request;
use cue_testkit::require;
use serde_json::Value;
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The reports the page sent so far, in the page's order.
struct Reports {
    path: PathBuf,
    chromium_log: PathBuf,
}

impl Reports {
    fn all(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut v: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        v.sort_by_key(|r| r["n"].as_u64());
        v
    }

    /// The first report after number `after` that `f` accepts; panics after `d` with every
    /// report and Chromium's log.
    fn wait(&self, after: u64, d: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(r) = self
                .all()
                .into_iter()
                .find(|r| r["n"].as_u64() > Some(after) && f(r))
            {
                return r;
            }
            if t.elapsed() > d {
                let all: Vec<String> = self.all().iter().map(|r| r.to_string()).collect();
                panic!(
                    "no report of {what} within {d:?}; the page reported:\n{}\nChromium's log:\n{}",
                    all.join("\n"),
                    std::fs::read_to_string(&self.chromium_log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn n(r: &Value) -> u64 {
    r["n"].as_u64().unwrap()
}

fn kind(r: &Value, k: &str) -> bool {
    r["kind"] == k
}

/// A cue-prefetch on `catalog`, polling `origin` for the live signal.
fn start_prefetch(
    dir: &Path,
    http: std::net::SocketAddr,
    origin: std::net::SocketAddr,
    extra: &[&str],
) -> Proc {
    let log = std::fs::File::create(dir.join("prefetch.log")).unwrap();
    let child = Command::new(workspace_bin("cue-prefetch"))
        .args(["--http", &http.to_string()])
        .args(extra)
        .args(["--origin-http", &format!("http://{origin}")])
        .arg("--catalog")
        .arg(dir.join("catalog"))
        .env("CUE_AUTH_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    cue_testkit::wait_healthy_logged(http, Duration::from_secs(10), &dir.join("prefetch.log"));
    Proc(child)
}

/// The page's web server (`serve.py`): another origin than cue-prefetch's.
fn start_page_server(port: u16, reports: &Path) -> Proc {
    let page = manifest_dir().join("tests/browser");
    let child = Command::new("python3")
        .arg(page.join("serve.py"))
        .args(["--port", &port.to_string()])
        .arg("--page-dir")
        .arg(&page)
        .arg("--sdk-dir")
        .arg(manifest_dir().join("sdk"))
        .arg("--reports")
        .arg(reports)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(10), || {
        request(addr, "GET", "/device.html", &[], b"").is_ok_and(|r| r.status == 200)
    });
    Proc(child)
}

/// Headless Chromium on `url`, with a profile of its own and nothing that reaches off the box.
fn start_chromium(url: &str, profile: &Path, log: &Path) -> Proc {
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawning chromium");
    Proc(child)
}

/// `catalog/fight.json` with a window placed so that device `dev`'s map is due `in_ms` from now
/// (the schedule is a hash of the device id over the window); the due time, ms.
fn write_catalog(dir: &Path, in_ms: u64) -> u64 {
    let span = 3_600_000;
    let offset = prefetch_at(
        Window {
            start_ms: 0,
            end_ms: span,
        },
        "dev",
    );
    let due = now_ms() + in_ms;
    let start = due - offset;
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    std::fs::write(
        dir.join("catalog/fight.json"),
        format!(
            r#"{{"window":{{"start_ms":{start},"end_ms":{}}},"ttl_s":600,
               "stages":{{"round-1":{{"hero":"r1-{{device}}"}},"round-2":{{"hero":"r2"}},"round-3":[3]}}}}"#,
            start + span
        ),
    )
    .unwrap();
    due
}

/// The page's server and a Chromium on the device page for `ws` and `prefetch`.
fn open_device_page(
    dir: &Path,
    ws: std::net::SocketAddr,
    prefetch: std::net::SocketAddr,
) -> (Reports, Proc, Proc) {
    let reports = Reports {
        path: dir.join("reports.jsonl"),
        chromium_log: dir.join("chromium.log"),
    };
    let page_port = free_addr().port();
    let page = start_page_server(page_port, &reports.path);
    let token = device_token(&["fight"]);
    let url = format!(
        "http://127.0.0.1:{page_port}/device.html?edge=ws://{ws}&prefetch=http://{prefetch}&events=fight&token={token}&base_ms=300"
    );
    let chromium = start_chromium(&url, &dir.join("profile"), &reports.chromium_log);
    (reports, page, chromium)
}

fn chromium_available() -> bool {
    require(
        "chromium",
        Path::new(CHROMIUM).is_file(),
        "`apt-get install chromium` (.ci/run does)",
    )
}

fn metric_of(addr: std::net::SocketAddr, name: &str) -> f64 {
    let m = request(addr, "GET", "/metrics", &[], b"").unwrap().body;
    metric(&m, name)
}

#[test]
fn a_browser_device_prefetches_on_schedule_shows_cues_and_reconnects_as_told() {
    if !chromium_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    // Short drain hints, so the test waits seconds, not the default 5-60.
    let edge_toml = edge_config(dir.path(), "retry_after_min_s = 2\nretry_after_max_s = 3\n");
    let edge_args = ["--config", edge_toml.as_str()];
    let ws = free_addr();
    let mut edge = start_edge(origin.relay, ws, free_addr(), &edge_args);

    // The map is scheduled 4 s from now for this device.
    let due = write_catalog(dir.path(), 4000);
    let prefetch = free_addr();
    let _prefetch = start_prefetch(dir.path(), prefetch, origin.http, &[]);

    let (reports, _page, _chromium) = open_device_page(dir.path(), ws, prefetch);

    // Connected at once; the map comes at its scheduled time, not before.
    reports.wait(0, Duration::from_secs(30), "open", |r| kind(r, "open"));
    let map = reports.wait(0, Duration::from_secs(20), "the map", |r| {
        kind(r, "map") && r["status"] == 200
    });
    let fetched_at = map["t"].as_u64().unwrap();
    assert!(
        fetched_at >= due,
        "map fetched {} ms before its scheduled time",
        due - fetched_at
    );
    eprintln!(
        "map fetched {} ms after its scheduled time",
        fetched_at - due
    );

    // The first cue: shown from the map, with no request to cue-prefetch.
    let requests = metric_of(prefetch, "cue_prefetch_http_requests_total");
    let s1 = publish_ok(origin.http, "fight", "round-1");
    let cue = reports.wait(n(&map), Duration::from_secs(10), "the first cue", |r| {
        kind(r, "cue") && r["seq"] == s1
    });
    assert_eq!(cue["key"], "round-1");
    assert_eq!(cue["stage"]["hero"], "r1-dev", "{cue}");
    assert_eq!(
        cue["prefetchRequests"], map["prefetchRequests"],
        "the page asked cue-prefetch for something at cue time: {cue}"
    );
    // The one request cue-prefetch saw since is this reading of its metrics.
    assert_eq!(
        metric_of(prefetch, "cue_prefetch_http_requests_total"),
        requests + 1.0,
        "cue-prefetch was asked for something at cue time"
    );
    assert!(
        metric_of(prefetch, "cue_prefetch_cors_preflights_total") >= 1.0,
        "the browser sent no CORS preflight: the test is not cross-origin"
    );

    // The edge dies and another takes its port: the SDK comes back with since=fight:S1 and
    // gets the next cue, and no duplicate of the one it holds.
    edge.proc.kill9();
    let closed = reports.wait(n(&cue), Duration::from_secs(10), "the close", |r| {
        kind(r, "closed")
    });
    edge = start_edge(origin.relay, ws, free_addr(), &edge_args);
    let since = format!("since=fight:{s1}");
    let back = reports.wait(n(&closed), Duration::from_secs(20), "the reconnect", |r| {
        kind(r, "open")
    });
    let connecting = reports
        .all()
        .into_iter()
        .rev()
        .find(|r| kind(r, "connecting") && n(r) < n(&back))
        .unwrap();
    assert!(
        connecting["url"].as_str().unwrap().contains(&since),
        "reconnected without {since}: {connecting}"
    );
    assert!(
        connecting["url"]
            .as_str()
            .unwrap()
            .ends_with("&token=(token)"),
        "the reported URL must leave the token out: {connecting}"
    );
    let s2 = publish_ok(origin.http, "fight", "round-2");
    let cue2 = reports.wait(n(&back), Duration::from_secs(10), "the second cue", |r| {
        kind(r, "cue") && r["seq"] == s2
    });
    assert_eq!(cue2["stage"]["hero"], "r2");
    let dups: Vec<Value> = reports
        .all()
        .into_iter()
        .filter(|r| kind(r, "duplicate") || (kind(r, "cue") && r["seq"] == s1 && n(r) > n(&cue)))
        .collect();
    assert!(
        dups.is_empty(),
        "the edge re-sent a cue the device held: {dups:?}"
    );

    // A drain: the edge closes the device with 1001 retry-after=S; the SDK waits S seconds
    // (and at most one more) before it dials again.
    let admin = admin_token();
    let r = request(
        edge.admin,
        "POST",
        "/admin/drain?window_s=1",
        &[("Authorization", &format!("Bearer {admin}"))],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let drained = reports.wait(n(&cue2), Duration::from_secs(10), "the drain close", |r| {
        kind(r, "closed") && r["code"] == 1001
    });
    let hint: u64 = drained["reason"]
        .as_str()
        .unwrap()
        .strip_prefix("retry-after=")
        .unwrap_or_else(|| panic!("no hint: {drained}"))
        .parse()
        .unwrap();
    assert!((2..=3).contains(&hint), "{drained}");
    let wait_ms = drained["waitMs"].as_u64().unwrap();
    assert!(
        (hint * 1000..hint * 1000 + 1000).contains(&wait_ms),
        "hint {hint} s but the SDK waits {wait_ms} ms"
    );
    assert_eq!(edge.proc.wait_exit(Duration::from_secs(5)), Some(0));
    let _edge = start_edge(origin.relay, ws, free_addr(), &edge_args);
    let redial = reports.wait(n(&drained), Duration::from_secs(15), "the redial", |r| {
        kind(r, "connecting")
    });
    let waited = redial["t"].as_u64().unwrap() - drained["t"].as_u64().unwrap();
    assert!(
        waited >= hint * 1000,
        "redialled {waited} ms after a {hint} s hint"
    );
    let open = reports.wait(
        n(&redial),
        Duration::from_secs(15),
        "open after the drain",
        |r| kind(r, "open"),
    );
    let s3 = publish_ok(origin.http, "fight", "round-3");
    let cue3 = reports.wait(n(&open), Duration::from_secs(10), "the third cue", |r| {
        kind(r, "cue") && r["seq"] == s3
    });
    assert_eq!(cue3["stage"], serde_json::json!([3]));
    eprintln!("drain hint {hint} s, redialled after {waited} ms");
}

/// cue-prefetch sheds the map request (every request counts toward `--shed-rps`; the test's
/// own requests keep the load level high until the map request is shed): the SDK reads the
/// `503`'s `Retry-After` through CORS, waits exactly that, and gets the map on the next try.
#[test]
fn a_browser_device_waits_out_a_503_retry_after_for_its_map() {
    if !chromium_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = start_origin(dir.path(), free_addr(), free_addr());
    let ws = free_addr();
    let _edge = start_edge(origin.relay, ws, free_addr(), &[]);
    let due = write_catalog(dir.path(), 4000);
    let prefetch = free_addr();
    let _prefetch = start_prefetch(
        dir.path(),
        prefetch,
        origin.http,
        // Any request (one is a 10 rps reading of 100 ms) puts the level at high; once they
        // stop it decays under 0.05 in ~1.2 s and steps down twice 200 ms apart, so a device
        // that waited out its Retry-After (3-6 s) is served, while one that asked sooner would
        // be shed. (With the default 2 s cooldowns the level stayed high past 3-4 s draws and
        // the map never came.)
        &[
            "--shed-rps",
            "0.05,0.05",
            "--shed-cooldown-ms",
            "200",
            "--retry-after-s",
            "3",
        ],
    );
    // Load until the map request is shed: the level rises only at the service's next 100 ms
    // reading after a request, so the page's own schedule request alone raised it in time
    // only when the map came 0.1-1.2 s later; a Chromium slow to start (in CI) asked for both
    // within one reading, and the map was served at once.
    let loading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let loading = loading.clone();
        std::thread::spawn(move || {
            while loading.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = request(prefetch, "GET", "/healthz", &[], b"");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (reports, _page, _chromium) = open_device_page(dir.path(), ws, prefetch);
    let shed = reports.wait(0, Duration::from_secs(30), "a shed map request", |r| {
        kind(r, "map-error") && r["status"] == 503
    });
    loading.store(false, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert!(shed["t"].as_u64().unwrap() >= due, "{shed}");
    // Retry-After is uniform in [3, 6] s; a header the page could not read would have meant
    // the SDK's own backoff (0.5-1 s) instead.
    let wait_ms = shed["waitMs"].as_u64().unwrap();
    assert!(
        (3000..=6000).contains(&wait_ms) && wait_ms % 1000 == 0,
        "waits {wait_ms} ms after a 503: {shed}"
    );
    let map = reports.wait(n(&shed), Duration::from_secs(30), "the map", |r| {
        kind(r, "map") && r["status"] == 200
    });
    // Shed again after the wait is fine (the load level falls step by step); asking before a
    // Retry-After ran out is not: each answer comes at least its predecessor's wait later.
    let answers: Vec<Value> = reports
        .all()
        .into_iter()
        .filter(|r| n(r) >= n(&shed) && n(r) <= n(&map) && (kind(r, "map-error") || kind(r, "map")))
        .collect();
    for w in answers.windows(2) {
        let gap = w[1]["t"].as_u64().unwrap() - w[0]["t"].as_u64().unwrap();
        let told = w[0]["waitMs"].as_u64().unwrap();
        assert_eq!(w[0]["status"], 503, "{}", w[0]);
        assert!(told % 1000 == 0 && told >= 3000, "{}", w[0]);
        assert!(
            gap >= told,
            "asked again {gap} ms after a {told} ms Retry-After"
        );
    }
    let waited = map["t"].as_u64().unwrap() - shed["t"].as_u64().unwrap();
    let s1 = publish_ok(origin.http, "fight", "round-1");
    let cue = reports.wait(n(&map), Duration::from_secs(10), "the cue", |r| {
        kind(r, "cue") && r["seq"] == s1
    });
    assert_eq!(cue["stage"]["hero"], "r1-dev", "{cue}");
    eprintln!(
        "shed {} time(s), the first Retry-After {wait_ms} ms; served {waited} ms after the first 503",
        answers.len() - 1
    );
}

#[test]
fn the_sdk_unit_tests_pass_under_node() {
    if !require(
        "node",
        Command::new("node").arg("--version").output().is_ok(),
        "`apt-get install nodejs` (.ci/run does)",
    ) {
        return;
    }
    let out = Command::new("node")
        .args(["--test", "test/"])
        .current_dir(manifest_dir().join("sdk"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .expect("node's summary");
    assert!(passed >= 10, "only {passed} SDK tests ran:\n{text}");
}
