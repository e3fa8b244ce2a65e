//! `cue-bench compare`: Cue and a well-known peer (nginx with the nchan module) measured by the
//! same fleet, with the same device count, on the same machine, in one run.
//!
//! The peer is installed from Debian's packages by `bench/peers/nchan/install.sh` and started
//! here on loopback with `bench/peers/nchan/nginx.conf`: one worker process pinned to the same
//! core as Cue's edges. Each side is measured by the same figures: deliveries per CPU-second of
//! the serving processes over the publish phase, devices reached per second (first to last
//! arrival), publish -> last-device latency, and user-space and kernel bytes per connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use crate::fanout::{self, RunOpts};
use crate::stack::{free_port, Proc};

const NCHAN_CONF: &str = include_str!("../peers/nchan/nginx.conf");
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// The pid of a child of `parent` (nginx's worker under its master).
fn child_of(parent: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map_or("", |x| x.1);
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(parent)
        {
            return Some(pid);
        }
    }
    None
}

fn start_nchan(o: &RunOpts) -> anyhow::Result<(Proc, SocketAddr, u32)> {
    if !std::path::Path::new(NCHAN_MODULE).exists() {
        bail!("nginx with nchan is not installed: run bench/peers/nchan/install.sh (Debian packages nginx-light, libnginx-mod-nchan)");
    }
    let prefix = std::fs::canonicalize(&o.out)?.join("nchan");
    let _ = std::fs::remove_dir_all(&prefix);
    std::fs::create_dir_all(&prefix)?;
    let port = free_port()?;
    let conf = NCHAN_CONF
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@CPU_MASK@", &format!("{:b}", 1u64 << o.edge_cpu))
        .replace("@CONNS@", "19500");
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let args = vec![
        "-p".to_string(),
        prefix.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
    ];
    let p = Proc::start(
        "nginx",
        std::path::Path::new("/usr/sbin/nginx"),
        &args,
        &[],
        &prefix.join("stderr.log"),
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let t = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!(
                "nginx did not start; see {}",
                prefix.join("error.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let worker = child_of(p.pid()).context("nginx worker process not found")?;
    Ok((p, addr, worker))
}

fn row(v: &serde_json::Value) -> serde_json::Value {
    json!({
        "devices": v["connected"],
        "missed": v["missed"],
        "deliveries_per_cpu_s": v["process_cpu"]["deliveries_per_cpu_s"],
        "devices_reached_per_s": v["wall"]["deliveries_per_s"],
        "last_device_ms_median": v["last_device_ms_median"],
        "latency_ms": v["latency_ms"],
        "user_bytes_per_conn": v["edge_user_bytes_per_conn"],
        "kernel_bytes_per_conn": v["kernel_bytes_per_conn"],
    })
}

/// Runs both and returns the JSON; prints the table on stderr.
pub fn run(o: &RunOpts) -> anyhow::Result<serde_json::Value> {
    if o.devices > 18_000 {
        bail!(
            "--devices: at most 18000 (the peer runs as one nginx worker under a 20000 fd limit)"
        );
    }
    std::fs::create_dir_all(&o.out)?;
    let cue = fanout::run(
        &RunOpts {
            edges: Some(1),
            ..o.clone()
        },
        "compare-cue",
    )?;
    let (mut nginx, addr, worker) = start_nchan(o)?;
    let peer_opts = RunOpts {
        target_url: Some(format!("ws://{addr}/sub")),
        publish_url: Some(format!("http://{addr}/pub")),
        peer_pid: Some(worker),
        no_floor: true,
        ..o.clone()
    };
    let peer = fanout::run(&peer_opts, "compare-nchan");
    nginx.stop(Duration::from_secs(5));
    let peer = peer?;
    let (c, p) = (row(&cue), row(&peer));
    let f = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    eprintln!("| figure | Cue | nginx + nchan |");
    eprintln!("| --- | --- | --- |");
    for (name, k) in [
        (
            "deliveries per CPU-second (serving processes)",
            "/deliveries_per_cpu_s",
        ),
        (
            "devices reached per second (first to last)",
            "/devices_reached_per_s",
        ),
        (
            "publish -> last device, median over cues (ms)",
            "/last_device_ms_median",
        ),
        ("publish -> delivery p50 (ms)", "/latency_ms/p50"),
        ("publish -> delivery p99 (ms)", "/latency_ms/p99"),
        ("user-space bytes per connection", "/user_bytes_per_conn"),
        ("kernel bytes per connection", "/kernel_bytes_per_conn"),
        ("missed", "/missed"),
    ] {
        let g = |v: &serde_json::Value| f(v.pointer(k).unwrap_or(&serde_json::Value::Null));
        eprintln!("| {name} | {} | {} |", g(&c), g(&p));
    }
    Ok(json!({
        "scenario": "compare",
        "devices": o.devices,
        "cues": o.cues,
        "cue": c,
        "nchan": p,
        "floor_deliveries_per_s_per_core": cue["floor_deliveries_per_s_per_core"],
        "cue_run": cue,
        "nchan_run": peer,
    }))
}
