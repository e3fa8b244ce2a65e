//! `cue-bench store`: the origin's stores side by side in one run: the embedded log, JetStream
//! with one replica, JetStream with three.
//!
//! For each store, on loopback:
//! 1. **publish -> 201**: one origin, `--publishes` publishes one after another (a new TCP
//!    connection each, as the bench client does for every store), timed from the request to the
//!    `201`; p50/p99.
//! 2. **publishes/s**: `--concurrency` publishers, each on its own event, for
//!    `--throughput-s` seconds; `201`s per second.
//! 3. **publish -> last device**: `cue-bench fanout` with `--devices` WebSocket devices and
//!    `--cues` cues through that store. With three replicas there are two origins, every edge
//!    linked to both, and the origin that takes the publishes is SIGKILLed right before the
//!    middle cue, which the other origin takes: that cue's last device is the failover figure.
//!
//! Each store gets its own `nats-server` processes (a 3-node cluster for R3) under `--out`,
//! stopped at the end. A reading that fails fails the run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::fanout::{self, RunOpts, StoreSpec, Transport};
use crate::stack::{self, Proc};

/// Options of `cue-bench store`.
#[derive(Debug, Clone)]
pub struct StoreBenchOpts {
    /// Devices of the fanout phase.
    pub devices: usize,
    /// Cues of the fanout phase.
    pub cues: usize,
    /// Sequential publishes of the latency phase.
    pub publishes: usize,
    /// Publishers of the throughput phase.
    pub concurrency: usize,
    /// Length of the throughput phase.
    pub throughput: Duration,
    /// Output directory.
    pub out: PathBuf,
    /// Directory of the Cue binaries.
    pub bin_dir: Option<PathBuf>,
    /// Core of the edges.
    pub edge_cpu: usize,
    /// Progress on stderr.
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Embedded,
    Nats(u32),
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Embedded => "embedded".into(),
            Mode::Nats(r) => format!("jetstream-r{r}"),
        }
    }
}

/// The `nats-server` binary, or a message saying how to get it.
pub fn require_nats_server() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join("nats-server").is_file()) {
        Ok(())
    } else {
        bail!("nats-server is not on PATH: install it (Debian: apt-get install nats-server)")
    }
}

/// Runs the three stores; returns the JSON (and prints a table on stderr).
pub fn run(o: &StoreBenchOpts) -> anyhow::Result<serde_json::Value> {
    require_nats_server()?;
    std::fs::create_dir_all(&o.out)?;
    let secret = stack::random_secret();
    let mut results = Vec::new();
    for mode in [Mode::Embedded, Mode::Nats(1), Mode::Nats(3)] {
        let dir = o.out.join(mode.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if o.verbose {
            eprintln!("store {}: starting", mode.name());
        }
        let cluster = match mode {
            Mode::Embedded => None,
            Mode::Nats(r) => Some(cue_testkit::nats::NatsCluster::start(
                &dir.join("nats"),
                r as usize,
            )),
        };
        let store_args: Vec<String> = match (&cluster, mode) {
            (Some(c), Mode::Nats(r)) => vec![
                "--store".into(),
                c.store_url(),
                "--nats-replicas".into(),
                r.to_string(),
            ],
            _ => vec![],
        };
        let (lat, thr) = {
            let (mut origin, http) = start_origin(o, &dir, &secret, &store_args)?;
            let token = publisher_token(&secret)?;
            let lat = latency(http, &token, o.publishes)?;
            let thr = throughput(http, &token, o.concurrency, o.throughput)?;
            origin.stop(Duration::from_secs(5));
            (lat, thr)
        };
        if o.verbose {
            eprintln!(
                "store {}: publish -> 201 p50 {:.2} ms p99 {:.2} ms; {:.0} publishes/s",
                mode.name(),
                lat.0,
                lat.1,
                thr
            );
        }
        let store = cluster.as_ref().map(|c| StoreSpec {
            url: c.store_url(),
            replicas: match mode {
                Mode::Nats(r) => r,
                Mode::Embedded => 0,
            },
            origins: if mode == Mode::Nats(3) { 2 } else { 1 },
            kill_origin_before_cue: (mode == Mode::Nats(3)).then_some(o.cues / 2 + 1),
        });
        let fo = fanout::run(
            &RunOpts {
                devices: o.devices,
                cues: o.cues,
                edges: None,
                shards: 1,
                interval_ms: None,
                edge_cpu: o.edge_cpu,
                per_worker: 15_000,
                bin_dir: o.bin_dir.clone(),
                out: dir.join("fanout"),
                target_url: None,
                publish_url: None,
                no_floor: true,
                verbose: o.verbose,
                peer_pid: None,
                transport: Transport::Ws,
                store,
                flood: 0,
                flood_events: 1,
                priorities: false,
                send_path: None,
                alternate: None,
                rx_steer: false,
                tune_host: false,
                perf: None,
            },
            &format!("store-{}", mode.name()),
        )?;
        drop(cluster);
        results.push((mode, lat, thr, fo));
    }
    summarise(o, &results)
}

fn summarise(
    o: &StoreBenchOpts,
    results: &[(Mode, (f64, f64), f64, serde_json::Value)],
) -> anyhow::Result<serde_json::Value> {
    let last_ms = |fo: &serde_json::Value| -> anyhow::Result<f64> {
        fo["last_device_ms_median"]
            .as_f64()
            .filter(|v| *v > 0.0)
            .context("fanout gave no publish -> last device figure")
    };
    let embedded_last = last_ms(&results[0].3)?;
    let mut stores = Vec::new();
    eprintln!("| store | publish -> 201 p50 / p99 | publishes/s | publish -> last device (median) | vs embedded | missed |");
    eprintln!("| --- | --- | --- | --- | --- | --- |");
    for (mode, (p50, p99), thr, fo) in results {
        let last = last_ms(fo)?;
        let missed = fo["missed"].as_u64().context("missed")?;
        eprintln!(
            "| {} | {p50:.2} / {p99:.2} ms | {thr:.0} | {last:.0} ms | {:.2}x | {missed} |",
            mode.name(),
            last / embedded_last
        );
        let mut s = json!({
            "store": mode.name(),
            "publish_201_ms": {"p50": p50, "p99": p99},
            "publishes_per_s": thr,
            "last_device_ms_median": last,
            "last_device_vs_embedded": last / embedded_last,
            "missed": missed,
            "fanout": fo,
        });
        if let Some(k) = fo["origin_killed_before_cue"].as_u64() {
            let per: Vec<f64> = fo["per_cue"]
                .as_array()
                .context("per_cue")?
                .iter()
                .filter_map(|c| c["last_ms"].as_f64())
                .collect();
            let idx = (k - 1) as usize;
            let fail = *per.get(idx).context("no figure for the failover cue")?;
            let failover_ms = fo["per_cue"][idx]["failover_ms"]
                .as_f64()
                .context("no failover time for the cue after the kill")?;
            let mut others: Vec<f64> = per
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != idx)
                .map(|(_, v)| *v)
                .collect();
            others.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            let med = others[others.len() / 2];
            eprintln!(
                "failover ({}): origin SIGKILLed right before cue {k}: {failover_ms:.0} ms from the kill to its last device; that cue's publish -> last device {fail:.0} ms, the other cues' median {med:.0} ms ({:.2}x)",
                mode.name(),
                fail / med
            );
            s["failover"] = json!({
                "cue": k,
                "killed_to_last_device_ms": failover_ms,
                "last_device_ms": fail,
                "other_cues_last_device_ms_median": med,
                "ratio": fail / med,
            });
        }
        stores.push(s);
    }
    Ok(json!({
        "scenario": "store",
        "devices": o.devices,
        "cues": o.cues,
        "publishes": o.publishes,
        "concurrency": o.concurrency,
        "throughput_s": o.throughput.as_secs_f64(),
        "stores": stores,
    }))
}

fn start_origin(
    o: &StoreBenchOpts,
    dir: &std::path::Path,
    secret: &str,
    store_args: &[String],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let org = stack::start_origin(
        &stack::bin(o.bin_dir.as_deref(), "cue-origin")?,
        "cue-origin",
        &dir.join("origin-data"),
        store_args,
        &[("CUE_AUTH_SECRET", secret.to_string())],
        &dir.join("origin.log"),
    )?;
    Ok((org.proc, org.http))
}

fn publisher_token(secret: &str) -> anyhow::Result<String> {
    let k = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
    Ok(format!(
        "Bearer {}",
        k.mint_publisher(cue_common::time::unix_now_s(), 3600)
    ))
}

fn publish(http: SocketAddr, token: &str, event: &str, key: &str) -> anyhow::Result<()> {
    let (st, b) = stack::http(
        http,
        "POST",
        &format!("/v1/events/{event}/cues"),
        &[
            ("Authorization", token),
            ("Content-Type", "application/json"),
        ],
        format!("{{\"key\":\"{key}\"}}").as_bytes(),
    )?;
    if st != 201 {
        bail!("publish {event}: {st} {b}");
    }
    Ok(())
}

/// p50 and p99 of publish -> 201, ms, over `n` sequential publishes to one event.
fn latency(http: SocketAddr, token: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..n {
        let t = Instant::now();
        publish(http, token, "latency", &format!("k{i}"))?;
        h.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    Ok((
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    ))
}

/// `201`s per second from `c` publishers on their own events for `d`.
fn throughput(http: SocketAddr, token: &str, c: usize, d: Duration) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..c)
        .map(|i| {
            let (done, stop, token) = (done.clone(), stop.clone(), token.to_string());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut k = 0u64;
                while !stop.load(Relaxed) {
                    publish(http, &token, &format!("thr-{i}"), &format!("k{k}"))?;
                    done.fetch_add(1, Relaxed);
                    k += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(d);
    stop.store(true, Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    }
    Ok(done.load(Relaxed) as f64 / t0.elapsed().as_secs_f64())
}
