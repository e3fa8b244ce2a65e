//! The monitoring that ships in `docs/monitoring/`, against the real services: every `/metrics`
//! passes `promtool check metrics`; a real Prometheus (Debian's `prometheus`) scrapes an origin,
//! two edges (QUIC on and off) and a prefetch service with the shipped alert rules, answers
//! every query of the shipped Grafana dashboard with data, and fires `CueEdgeWithoutOrigin` (and
//! `CueOriginDown`) once the origin is killed.
//!
//! The one change to the shipped rules: every `for:` is cut to 1 s, so that the alerts fire
//! within seconds of their condition; the expressions are the shipped ones.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cue_testkit::client::request;
use serde_json::Value;
use support::*;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn require_prometheus() -> bool {
    cue_testkit::require(
        "prometheus",
        have("prometheus") && have("promtool"),
        "apt-get install prometheus (Debian's package; .ci/run installs it)",
    )
}

/// `promtool check metrics` on one scrape: no complaint at all.
fn promtool_clean(what: &str, metrics: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {said}"
    );
}

fn scrape(addr: SocketAddr) -> String {
    let r = request(addr, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{addr}/metrics: {}", r.body);
    r.body
}

/// Percent-encodes a PromQL query for a URL's query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector; panics on any error Prometheus reports.
fn query(prom: SocketAddr, q: &str) -> Vec<Value> {
    let r = request(
        prom,
        "GET",
        &format!("/api/v1/query?query={}", encode(q)),
        &[],
        b"",
    )
    .unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    assert_eq!(v["status"], "success", "{q}: {}", r.body);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The firing alerts, as (alertname, instance).
fn firing(prom: SocketAddr) -> Vec<(String, String)> {
    let r = request(prom, "GET", "/api/v1/alerts", &[], b"").unwrap();
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                a["labels"]["instance"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Every PromQL expression of the shipped dashboard's panels.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring_dir().join("cue-dashboard.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let qs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(qs.len() >= 10, "{qs:?}");
    qs
}

#[test]
fn every_metrics_endpoint_passes_promtool_and_prometheus_fires_on_a_lost_origin() {
    if !require_prometheus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (free_addr(), free_addr());
    let mut origin = start_origin(dir.path(), http, relay);
    let e1 = start_edge(relay, free_addr(), free_addr(), &[]);
    let e2 = start_edge(relay, free_addr(), free_addr(), &["--quic", "none"]);
    let catalog = dir.path().join("catalog");
    std::fs::create_dir(&catalog).unwrap();
    let pf_addr = free_addr();
    let _prefetch = Proc(
        Command::new(workspace_bin("cue-prefetch"))
            .args(["--http", &pf_addr.to_string(), "--catalog"])
            .arg(&catalog)
            .env("CUE_AUTH_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(15), || {
        request(pf_addr, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
    });

    // One device and one cue, so the delivery series have moved.
    let mut dev = subscribe(e1.ws, "events=fight", Some(&device_token(&["fight"]))).unwrap();
    publish_ok(http, "fight", "round-1");
    assert_eq!(next_cue(&mut dev).1, "round-1");

    for (what, addr) in [
        ("cue-origin", http),
        ("cue-edge (QUIC on)", e1.admin),
        ("cue-edge (QUIC off)", e2.admin),
        ("cue-prefetch", pf_addr),
    ] {
        let m = scrape(addr);
        promtool_clean(what, &m);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(m.contains(&format!("\n{name} ")), "{what}: no {name}");
        }
        let service = what.split(' ').next().unwrap().replace("cue-", "");
        let info = format!(
            "cue_{service}_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            cue_common::build::VERSION,
            cue_build_info::COMMIT
        );
        assert!(m.contains(&info), "{what}: no {info}");
    }
    let quic_on = scrape(e1.admin);
    assert!(
        quic_on.contains("\ncue_edge_quic_steer_slot{"),
        "QUIC on: no steering slot"
    );
    let quic_off = scrape(e2.admin);
    let stray: Vec<&str> = quic_off
        .lines()
        .filter(|l| l.contains("cue_edge_quic_"))
        .collect();
    assert!(stray.is_empty(), "QUIC off, yet: {stray:?}");

    // Prometheus with the shipped rules (every `for:` cut to 1 s).
    let rules = std::fs::read_to_string(monitoring_dir().join("cue-alerts.yml")).unwrap();
    let mut cut = 0;
    let rules: String = rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => {
                cut += 1;
                format!("{}for: 1s", &l[..l.len() - l.trim_start().len()])
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(cut >= 10, "{cut} `for:` lines in the rules");
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    std::fs::write(prom_dir.join("rules.yml"), rules).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yml]\n\
         scrape_configs:\n\
         \x20 - job_name: cue-origin\n    static_configs: [{{targets: ['{http}']}}]\n\
         \x20 - job_name: cue-edge\n    static_configs: [{{targets: ['{}', '{}']}}]\n\
         \x20 - job_name: cue-prefetch\n    static_configs: [{{targets: ['{pf_addr}']}}]\n",
        e1.admin, e2.admin
    );
    std::fs::write(prom_dir.join("prometheus.yml"), config).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(prom_dir.join("prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let prom = free_addr();
    let log = prom_dir.join("prometheus.log");
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                prom_dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let prom_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let until = |what: &str, f: &mut dyn FnMut() -> bool| loop {
        if f() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus: {what} within 60 s; its log:\n{}",
            prom_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    until("ready", &mut || {
        request(prom, "GET", "/-/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    until("4 targets up", &mut || query(prom, "up == 1").len() == 4);
    // Rates need two samples of each series in their window.
    until("two scrapes of every target", &mut || {
        query(prom, "count_over_time(up[1m]) >= 3").len() == 4
    });
    // Every panel of the dashboard has data: each name it uses exists, spelled as exported.
    for q in dashboard_queries() {
        let r = query(prom, &q);
        assert!(!r.is_empty(), "dashboard query has no data: {q}");
    }
    let alerts = firing(prom);
    assert!(
        !alerts.iter().any(|(a, _)| a == "CueEdgeWithoutOrigin"),
        "{alerts:?}"
    );

    // The origin dies: both edges lose it, and the alerts say so.
    origin.proc.kill9();
    let want = [
        ("CueEdgeWithoutOrigin".to_string(), e1.admin.to_string()),
        ("CueEdgeWithoutOrigin".to_string(), e2.admin.to_string()),
        ("CueOriginDown".to_string(), http.to_string()),
    ];
    until("CueEdgeWithoutOrigin and CueOriginDown firing", &mut || {
        let f = firing(prom);
        want.iter().all(|w| f.contains(w))
    });
}
