//! `fanout` and `density`: start the stack (or target a peer), connect a synthetic fleet, publish
//! cues, and measure delivery, latency, rate per core against the write() floor, and memory per
//! connection.
//!
//! `--transport ws|quic|mixed` picks the fleet: WebSocket devices following `bench`, QUIC
//! devices (quinn, [`crate::quic_worker`]) following `bench-q`, or both in one run (each of
//! `--devices`). The two fleets connect one after the other, so each transport's memory per
//! connection is its own RSS growth; each cue round publishes to both events, so every fanout
//! is of one transport and the edges' per-transport CPU counters give each its own rate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::floor::{FloorProc, FloorResult, FloorSpec};
use crate::quic_worker::QuicWorkerSpec;
use crate::stack::{self, free_port, Proc};
use crate::worker::{WorkerProc, WorkerReport, WorkerSpec};

/// Which devices the fleet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Transport {
    /// WebSocket over TCP.
    #[default]
    Ws,
    /// QUIC (`cue/1`).
    Quic,
    /// Both: `--devices` of each, in the same run.
    Mixed,
}

/// Options shared by `fanout` and `density`.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Devices.
    pub devices: usize,
    /// Cues to publish (0 for density).
    pub cues: usize,
    /// Edge processes (default: enough for the fd limit).
    pub edges: Option<usize>,
    /// Shards per edge process.
    pub shards: usize,
    /// Gap between cues, ms (default: scaled to the fleet).
    pub interval_ms: Option<u64>,
    /// Core for the edges and the floor; the fleet and origin get the other core(s).
    pub edge_cpu: usize,
    /// Devices per worker process.
    pub per_worker: usize,
    /// Directory of cue-origin / cue-edge.
    pub bin_dir: Option<PathBuf>,
    /// Scratch/output directory.
    pub out: PathBuf,
    /// Peer mode: WebSocket URL of a peer server.
    pub target_url: Option<String>,
    /// Peer mode: URL the payload is POSTed to.
    pub publish_url: Option<String>,
    /// Skip the floor measurement.
    pub no_floor: bool,
    /// Print progress to stderr.
    pub verbose: bool,
    /// Peer mode: pid of the peer's serving process, for its memory and CPU.
    pub peer_pid: Option<u32>,
    /// Fleet transport(s).
    pub transport: Transport,
    /// The origins' store: `None` for the embedded log, else a JetStream cluster.
    pub store: Option<StoreSpec>,
    /// Devices of the flooded events (0: no flood).
    pub flood: usize,
    /// Flooded events, the flood's devices spread over them (each follows one).
    pub flood_events: usize,
    /// The fleet's cues critical, the flood background (else both normal).
    pub priorities: bool,
    /// The edges' `--send-path` (`None`: the edge's default).
    pub send_path: Option<SendPath>,
    /// Both paths in one phase, taking turns cue by cue ([`crate::alternate`]).
    pub alternate: Option<[SendPath; 2]>,
    /// Steer the loopback device's receive work to the fleet's core while the run lasts
    /// ([`stack::steer_rx`]), so the edge core pays only the send side, as with a real NIC.
    pub rx_steer: bool,
    /// Record where the edge core's time goes during each cue series into this directory
    /// ([`crate::profile`]; needs `perf`).
    pub perf: Option<PathBuf>,
    /// Raise the host's TCP memory and open-file bounds to what the fleet needs for the run
    /// ([`stack::raise_for_fleet`]), restored after.
    pub tune_host: bool,
}

/// How the edges write fanouts (the edge's own `--send-path` values).
pub use cue_edge::config::SendPath;

/// The flooded events: `flood` alone, or `flood-0` .. `flood-{n-1}`.
fn flood_events(n: usize) -> Vec<String> {
    match n {
        0 | 1 => vec!["flood".to_string()],
        n => (0..n).map(|i| format!("flood-{i}")).collect(),
    }
}

/// Origins on a JetStream cluster (started by the caller).
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// `nats://HOST:PORT,...`.
    pub url: String,
    /// `--nats-replicas`.
    pub replicas: u32,
    /// Origins on the stream; every edge links to all of them.
    pub origins: usize,
    /// SIGKILL the origin publishes go to right before this cue (1-based) is published; the
    /// next origin takes it.
    pub kill_origin_before_cue: Option<usize>,
}

/// The QUIC event (WebSocket devices follow `bench`).
const QUIC_EVENT: &str = "bench-q";

/// Most sockets one process holds here (hard RLIMIT_NOFILE is 20000; keep headroom).
pub const PER_PROCESS: usize = 18_000;

/// The seqs one publish got: the WebSocket fleet's event and the QUIC fleet's event (a seq is
/// the origin's, per event).
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    ws: Option<u64>,
    quic: Option<u64>,
    /// Unix µs right before the publish request (after any fault made for this cue).
    sent_us: u64,
    /// Unix µs when the origin was killed for this cue, if it was.
    killed_us: Option<u64>,
}

/// Per fleet: seq -> publish time (Unix µs), the seq of the last cue, and when an origin was
/// killed (Unix µs) with the seq of the cue published right after.
#[derive(Debug, Default)]
struct Series {
    times: HashMap<u64, u64>,
    last: u64,
    killed: Option<(u64, u64)>,
}

struct Target {
    /// `Authorization` value for the edges' admin endpoints (Cue only).
    admin_auth: Option<String>,
    addr: SocketAddr,
    host: String,
    path: String,
    token: Option<String>,
    /// Publishes cue number `n` (1-based); returns the seq each fleet will see it with.
    publish: Box<dyn FnMut(u64) -> anyhow::Result<Published>>,
    edge_pids: Vec<u32>,
    edge_admins: Vec<SocketAddr>,
    procs: Vec<Proc>,
    /// QUIC address and the certificate's SHA-256.
    quic: Option<(SocketAddr, String)>,
    /// The first origin's HTTP address and a publisher's `Authorization` value (the flood).
    origin: Option<(SocketAddr, String)>,
}

/// Sums a counter over every sample line of `name` in Prometheus text; `None` when there is
/// no sample of it (a reading that is missing must not pass for 0).
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
    {
        let v: f64 = l.rsplit(' ').next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// Sums a counter over every sample line of `name` in Prometheus text.
pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn parse_url(url: &str, scheme: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix(scheme)
        .with_context(|| format!("{url}: must start with {scheme}"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("{url}: host must be IP:PORT on loopback"))?;
    if !addr.ip().is_loopback() {
        bail!("{url}: only loopback targets are allowed");
    }
    Ok((
        addr,
        hostport.to_string(),
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

fn start_cue(o: &RunOpts, edges: usize, log: &mut Vec<String>) -> anyhow::Result<Target> {
    let secret = stack::random_secret();
    let env = vec![("CUE_AUTH_SECRET", secret.clone())];
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let origin_bin = stack::bin(o.bin_dir.as_deref(), "cue-origin")?;
    let edge_bin = stack::bin(o.bin_dir.as_deref(), "cue-edge")?;
    // One certificate for every edge process, so the QUIC fleet can pin it whichever process
    // the kernel hands a device to.
    let quic: SocketAddr = format!("127.0.0.1:{}", stack::free_udp_port()?).parse()?;
    let (crt, key, fingerprint) = stack::edge_cert(&o.out)?;
    let mut procs = Vec::new();
    let (n_origins, store_args) = match &o.store {
        None => (1, vec![]),
        Some(st) => (
            st.origins.max(1),
            vec![
                "--store".to_string(),
                st.url.clone(),
                "--nats-replicas".into(),
                st.replicas.to_string(),
            ],
        ),
    };
    let mut origins: Vec<(SocketAddr, SocketAddr, Proc)> =
        stack::start_origins(&origin_bin, &o.out, n_origins, &store_args, &env)?
            .into_iter()
            .map(|org| (org.http, org.relay, org.proc))
            .collect();
    let relays: Vec<String> = origins.iter().map(|o| o.1.to_string()).collect();
    let (http, relay) = (origins[0].0, origins[0].1);
    let mut admins = Vec::new();
    let mut edge_pids = Vec::new();
    for i in 0..edges {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut args: Vec<String> = relays
            .iter()
            .flat_map(|r| ["--origin".to_string(), r.clone()])
            .collect();
        args.extend([
            "--ws".into(),
            ws.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--shards".into(),
            o.shards.to_string(),
            "--cpus".into(),
            o.edge_cpu.to_string(),
            "--edge-id".into(),
            format!("bench-edge-{i}"),
            "--drain-window-s".into(),
            "1".into(),
            "--quic".into(),
            quic.to_string(),
            "--tls-cert".into(),
            crt.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]);
        if let Some(sp) = o.send_path {
            args.extend(["--send-path".into(), sp.as_str().into()]);
        }
        if o.tune_host {
            args.extend(["--backlog".into(), stack::TUNED_BACKLOG.to_string()]);
        }
        let p = Proc::start(
            &format!("cue-edge-{i}"),
            &edge_bin,
            &args,
            &env,
            &o.out.join(format!("edge-{i}.log")),
        )?;
        edge_pids.push(p.pid());
        procs.push(p);
        admins.push(admin);
    }
    let linked = format!("\"origins_linked\":{n_origins},");
    for a in &admins {
        stack::wait_http(*a, "/healthz", Duration::from_secs(15), |b| {
            b.contains(&linked)
        })
        .context("cue-edge did not link to the origin")?;
    }
    log.push(format!("stack: {n_origins} origin(s) (first: {http}, relay {relay}), store {}; {edges} edge process(es) on {ws}, {} shard(s) each, pinned to core {}", o.store.as_ref().map_or("embedded".to_string(), |s| format!("{} R{}", s.url, s.replicas)), o.shards, o.edge_cpu));
    let kill_before = o.store.as_ref().and_then(|s| s.kill_origin_before_cue);
    let keys = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
    let now = cue_common::time::unix_now_s();
    let mut allowed: Vec<String> = vec!["bench".into(), QUIC_EVENT.into()];
    allowed.extend(flood_events(o.flood_events));
    let device_token = keys.mint_device("bench-fleet", &allowed, now, 3600);
    let pub_token = format!("Bearer {}", keys.mint_publisher(now, 3600));
    let admin_auth = format!("Bearer {}", keys.mint_admin(now, 3600));
    let mut events = Vec::new();
    if o.transport != Transport::Quic {
        events.push("bench");
    }
    if o.transport != Transport::Ws {
        events.push(QUIC_EVENT);
    }
    let critical = o.priorities;
    let origin = Some((origins[0].0, pub_token.clone()));
    // The origins are the closure's: dropping the target kills them.
    let mut alive = 0usize;
    let publish = Box::new(move |n: u64| -> anyhow::Result<Published> {
        let mut killed_us = None;
        if kill_before == Some(n as usize) && alive + 1 < origins.len() {
            killed_us = Some(stack::unix_us());
            origins[alive].2.kill();
            alive += 1;
        }
        let http = origins[alive].0;
        let body = if critical {
            format!("{{\"key\":\"stage-{n}\",\"priority\":\"critical\"}}")
        } else {
            format!("{{\"key\":\"stage-{n}\"}}")
        };
        let mut got = Published {
            sent_us: stack::unix_us(),
            killed_us,
            ..Default::default()
        };
        for ev in &events {
            let (st, b) = stack::http(
                http,
                "POST",
                &format!("/v1/events/{ev}/cues"),
                &[
                    ("Authorization", &pub_token),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )?;
            if st != 201 {
                bail!("publish {ev}: {st} {b}");
            }
            let v: serde_json::Value = serde_json::from_str(&b)?;
            let seq = v["seq"].as_u64().context("201 without seq")?;
            if *ev == QUIC_EVENT {
                got.quic = Some(seq);
            } else {
                got.ws = Some(seq);
            }
        }
        Ok(got)
    });
    Ok(Target {
        admin_auth: Some(admin_auth),
        addr: ws,
        host: ws.to_string(),
        path: "/v1/subscribe?events=bench".into(),
        token: Some(device_token),
        publish,
        edge_pids,
        edge_admins: admins,
        procs,
        quic: Some((quic, fingerprint)),
        origin,
    })
}

/// Publishes cues on the flooded events in turn, one after another, until `stop`; returns
/// how many.
fn flood(
    origin: SocketAddr,
    auth: String,
    events: Vec<String>,
    background: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = if background {
                format!("{{\"key\":\"ad-{n}\",\"priority\":\"background\"}}")
            } else {
                format!("{{\"key\":\"ad-{n}\"}}")
            };
            let (st, b) = stack::http(
                origin,
                "POST",
                &format!("/v1/events/{}/cues", events[n as usize % events.len()]),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )?;
            if st != 201 {
                bail!("flood publish: {st} {b}");
            }
            n += 1;
        }
        Ok(n)
    })
}

/// Starts the QUIC fleet: `--devices` quinn devices over workers of `per_worker` each.
fn start_quic_fleet(
    o: &RunOpts,
    target: SocketAddr,
    fingerprint: &str,
    token: &str,
    cpu: Option<usize>,
) -> anyhow::Result<Fleet> {
    let nworkers = o.devices.div_ceil(o.per_worker).max(1);
    let mut workers = Vec::new();
    let t = Instant::now();
    let mut left = o.devices;
    let hello = json!({"events": [QUIC_EVENT], "token": token}).to_string();
    for w in 0..nworkers {
        let n = left.min(o.per_worker);
        left -= n;
        let spec = QuicWorkerSpec {
            target,
            fingerprint: fingerprint.to_string(),
            hello: hello.clone(),
            devices: n,
            per_endpoint: 100,
            // Past the WebSocket workers' source addresses.
            source_base: (1000 + w * 200) as u32,
            concurrency: 256,
            cpu,
            connect_timeout_s: connect_timeout_s(o.devices),
        };
        workers.push(crate::quic_worker::start(&spec)?);
    }
    ready(workers, t, o, "QUIC devices")
}

fn start_peer(o: &RunOpts) -> anyhow::Result<Target> {
    let (addr, host, path) = parse_url(o.target_url.as_deref().expect("peer mode"), "ws://")?;
    let (paddr, _, ppath) = parse_url(
        o.publish_url
            .as_deref()
            .context("--publish-url is needed with --target-url")?,
        "http://",
    )?;
    let publish = Box::new(move |seq: u64| -> anyhow::Result<Published> {
        let t = stack::unix_us();
        let body = format!(
            "{{\"event\":\"bench\",\"key\":\"stage-{seq}\",\"seq\":{seq},\"ts\":{}}}",
            stack::unix_us() / 1000
        );
        let (st, b) = stack::http(
            paddr,
            "POST",
            &ppath,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )?;
        if !(200..300).contains(&st) {
            bail!("publish: {st} {b}");
        }
        Ok(Published {
            ws: Some(seq),
            sent_us: t,
            ..Default::default()
        })
    });
    Ok(Target {
        admin_auth: None,
        addr,
        host,
        path,
        token: None,
        publish,
        edge_pids: vec![],
        edge_admins: vec![],
        procs: vec![],
        quic: None,
        origin: None,
    })
}

/// A connected fleet.
struct Fleet {
    workers: Vec<WorkerProc>,
    connected: usize,
    connect_s: f64,
}

/// Starts the fleet: worker `w` connects its devices to `targets[w % targets.len()]`.
fn start_fleet(
    o: &RunOpts,
    targets: &[SocketAddr],
    host: &str,
    paths: &[String],
    token: Option<&str>,
    cpu: Option<usize>,
) -> anyhow::Result<Fleet> {
    let (path, paths) = match paths {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let nworkers = o.devices.div_ceil(o.per_worker).max(1);
    let mut workers = Vec::new();
    let t = Instant::now();
    let mut left = o.devices;
    for w in 0..nworkers {
        let n = left.min(o.per_worker);
        left -= n;
        let spec = WorkerSpec {
            target: targets[w % targets.len()],
            host: host.to_string(),
            path: path.clone(),
            paths: paths.clone(),
            token: token.map(str::to_string),
            tokens_file: None,
            devices: n,
            source_base: (w * o.per_worker.div_ceil(10_000)) as u32,
            per_source: 10_000,
            concurrency: 256,
            cpu,
            connect_timeout_s: connect_timeout_s(o.devices),
        };
        workers.push(WorkerProc::start(&spec)?);
    }
    ready(workers, t, o, "devices")
}

/// Waits for every worker's "ready" line (started at `t`): the fleet, with how many connected.
fn ready(
    mut workers: Vec<WorkerProc>,
    t: Instant,
    o: &RunOpts,
    what: &str,
) -> anyhow::Result<Fleet> {
    let mut connected = 0;
    for w in &mut workers {
        let l: serde_json::Value = serde_json::from_str(&w.line()?)?;
        connected += l["ready"].as_u64().unwrap_or(0) as usize;
    }
    let connect_s = t.elapsed().as_secs_f64();
    if o.verbose {
        eprintln!(
            "{connected}/{} {what} connected in {connect_s:.2}s",
            o.devices
        );
    }
    Ok(Fleet {
        workers,
        connected,
        connect_s,
    })
}

/// What the fleet saw of a series of cues.
#[derive(Clone)]
struct Seen {
    hist: Histogram<u64>,
    delivered: u64,
    /// Devices not on the newest cue at the end.
    missed: usize,
    /// (cue, device) pairs that never arrived.
    not_delivered: u64,
    /// Median over cues of devices reached per second between the first and last arrival;
    /// `None` when no cue reached two devices at distinct times (no cues, one device).
    wall_rate: Option<f64>,
    per_cue: Vec<serde_json::Value>,
    closed: usize,
    refusals: HashMap<u16, usize>,
}

fn finish_fleet(fleet: Fleet, o: &RunOpts, series: &Series) -> anyhow::Result<Seen> {
    let published = &series.times;
    let mut reports: Vec<WorkerReport> = Vec::new();
    let mut workers = fleet.workers;
    for w in &mut workers {
        w.send("report")?;
        reports.push(serde_json::from_str(&w.line()?).context("worker report")?);
    }
    for w in workers {
        w.wait();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut delivered = 0u64;
    let mut first_last: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    for r in &reports {
        delivered += r.frames;
        for (seq, arr) in &r.arrivals {
            let Some(&p) = published.get(seq) else {
                continue;
            };
            let e = first_last.entry(*seq).or_insert((u64::MAX, 0, 0));
            for &a in arr {
                hist.record(a.saturating_sub(p).max(1))?;
                e.0 = e.0.min(a);
                e.1 = e.1.max(a);
                e.2 += 1;
            }
        }
    }
    let mut seqs: Vec<_> = first_last.keys().copied().collect();
    seqs.sort();
    let mut per_cue = Vec::new();
    let mut rates = Vec::new();
    for s in seqs {
        let (f, l, n) = first_last[&s];
        let p = published[&s];
        let mut c = json!({"seq": s, "devices": n, "first_ms": (f.saturating_sub(p)) as f64 / 1e3, "last_ms": (l.saturating_sub(p)) as f64 / 1e3});
        if let Some((killed, _)) = series.killed.filter(|k| k.1 == s) {
            // Origin killed -> the last device has this, the next cue.
            c["failover_ms"] = json!((l.saturating_sub(killed)) as f64 / 1e3);
        }
        per_cue.push(c);
        if n > 1 && l > f {
            rates.push(n as f64 / ((l - f) as f64 / 1e6));
        }
    }
    let last_seq = series.last;
    let held: usize = reports.iter().map(|r| r.final_seqs.len()).sum();
    let missed = reports
        .iter()
        .map(|r| r.final_seqs.iter().filter(|&&s| s != last_seq).count())
        .sum::<usize>()
        + o.devices.saturating_sub(held);
    // Every device should get every cue: (cue, device) pairs that never arrived, a cue its
    // fanout did not finish before the next one superseded it included.
    let not_delivered: u64 = published
        .keys()
        .map(|seq| {
            let got = first_last.get(seq).map_or(0, |e| e.2);
            (o.devices as u64).saturating_sub(got)
        })
        .sum();
    let mut refusals = HashMap::new();
    for r in &reports {
        for (k, v) in &r.refusals {
            *refusals.entry(*k).or_default() += v;
        }
    }
    Ok(Seen {
        hist,
        delivered,
        missed,
        not_delivered,
        wall_rate: median(rates),
        per_cue,
        closed: reports.iter().map(|r| r.closed).sum(),
        refusals,
    })
}

/// Publishes `cues` cues `interval` apart with `publish`; returns the WebSocket and the QUIC
/// fleet's series.
fn publish_series(
    cues: usize,
    interval: Duration,
    publish: &mut dyn FnMut(u64) -> anyhow::Result<Published>,
) -> anyhow::Result<(Series, Series)> {
    let (mut ws, mut quic) = (Series::default(), Series::default());
    for n in 1..=cues as u64 {
        let p = publish(n).with_context(|| format!("publishing cue {n}"))?;
        for (series, seq) in [(&mut ws, p.ws), (&mut quic, p.quic)] {
            if let Some(seq) = seq {
                series.times.insert(seq, p.sent_us);
                series.last = seq;
                if let Some(k) = p.killed_us {
                    series.killed = Some((k, seq));
                }
            }
        }
        std::thread::sleep(interval);
    }
    if cues > 0 {
        std::thread::sleep(interval.max(Duration::from_secs(1)));
    }
    Ok((ws, quic))
}

/// What the floor phase measured.
struct FloorFigures {
    /// Writes per CPU-second of the write loops.
    cpu_rate: f64,
    /// Devices reached per second as the fleet saw it (median over rounds).
    wall_rate: Option<f64>,
    /// Writes per second of the write loops' own wall span (all processes of a round: first
    /// loop start to last write returned), median over rounds: the floor's side of
    /// [`EdgeWall`].
    send_wall_rate: f64,
    missed: usize,
    /// Where the edge core's time went, with `--perf`.
    profile: Option<serde_json::Value>,
}

/// The floor phase: floor processes pinned to the edge core, the same fleet shape, the same
/// number of rounds.
fn floor_phase(
    o: &RunOpts,
    fleet_cpu: Option<usize>,
    interval: Duration,
) -> anyhow::Result<FloorFigures> {
    let nworkers = o.devices.div_ceil(o.per_worker).max(1);
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    let mut left = o.devices;
    for _ in 0..nworkers {
        let n = left.min(o.per_worker);
        left -= n;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        procs.push(FloorProc::start(&FloorSpec {
            listen,
            devices: n,
            cpu: Some(o.edge_cpu),
        })?);
        addrs.push(listen);
    }
    let fleet = start_fleet(
        o,
        &addrs,
        "floor",
        &["/v1/subscribe?events=bench".to_string()],
        None,
        fleet_cpu,
    )?;
    for p in &mut procs {
        p.line()?; // accepted
    }
    let mut total = FloorResult::default();
    let mut send_rates = Vec::new();
    let mut round = |seq: u64| -> anyhow::Result<Published> {
        let t = stack::unix_us();
        for p in procs.iter_mut() {
            p.round(seq)?;
        }
        let (mut writes, mut first, mut last) = (0u64, u64::MAX, 0u64);
        for p in procs.iter_mut() {
            let r: FloorResult = serde_json::from_str(&p.line()?)?;
            total.writes += r.writes;
            total.seconds += r.seconds;
            total.cpu_s += r.cpu_s;
            writes += r.writes;
            first = first.min(r.started_us);
            last = last.max(r.done_us);
        }
        if writes > 0 {
            send_rates.push(span_rate(writes, first, last).context("write() floor round")?);
        }
        // The floor writes cue number `seq` with that seq.
        Ok(Published {
            ws: Some(seq),
            sent_us: t,
            ..Default::default()
        })
    };
    let rec = match &o.perf {
        Some(dir) => Some(crate::profile::Recording::start(dir, "floor", o.edge_cpu)?),
        None => None,
    };
    let (published, _) = publish_series(o.cues, interval, &mut round)?;
    let rec = rec.map(|r| r.stop()).transpose()?;
    let seen = finish_fleet(fleet, o, &published)?;
    let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
    let profile = match rec {
        Some(r) => Some(r.breakdown(&pids, total.writes as f64)?),
        None => None,
    };
    let cpu_rate = rate_of(total.writes as f64, total.cpu_s, "write() floor", false)?
        .context("the write() floor made no writes")?;
    Ok(FloorFigures {
        cpu_rate,
        wall_rate: seen.wall_rate,
        send_wall_rate: median(send_rates).context("the write() floor made no writes")?,
        missed: seen.missed,
        profile,
    })
}

/// `n` devices over the span `first_us..last_us` (Unix us), per second; an error when the span
/// is empty or backwards (a clock that cannot time it is not a rate).
fn span_rate(n: u64, first_us: u64, last_us: u64) -> anyhow::Result<f64> {
    if last_us <= first_us {
        bail!("{n} sends timed from {first_us} to {last_us} us: no span to divide by");
    }
    Ok(n as f64 / ((last_us - first_us) as f64 / 1e6))
}

/// The edges' own side of the wall rate, from their `GET /fanouts` records: per cue, the
/// devices every shard wrote it to over the span from the first shard taking it in to the last
/// shard's last send accepted by the kernel. This is what the edge core achieved whatever the
/// receivers' side of loopback did; the fleet's first-to-last arrival span also holds the
/// receive work (on the fleet's core with `--rx-steer`) and the fleet's own reads.
struct EdgeWall {
    /// Median over cues of devices per second of that span.
    median: f64,
    /// Per cue: seq, devices, first taken in and last send done (Unix us).
    per_cue: Vec<(u64, u64, u64, u64)>,
    /// Cues of the series no shard has a record of (a cue the devices got by catch-up only, or
    /// one a newer cue superseded mid-fanout): reported, not timed.
    untimed: Vec<u64>,
}

/// Finished fanouts a shard keeps (`cue_edge::stats::RECENT_FANOUTS`): the edge wall is read
/// for the newest this many cues of a phase.
pub const FANOUT_RECORDS: usize = cue_edge::stats::RECENT_FANOUTS;

/// Reads [`EdgeWall`] for the bench event's cues `seqs` (the newest [`FANOUT_RECORDS`] of them)
/// from every edge; an edge that cannot be read, a record that does not parse, or no cue timed
/// at all fails the reading.
fn edge_wall(admins: &[SocketAddr], seqs: &[u64]) -> anyhow::Result<EdgeWall> {
    let texts = read_all(admins, "/fanouts")?;
    let mut spans = HashMap::new();
    for (a, text) in admins.iter().zip(texts) {
        add_fanout_spans(&text, &mut spans).with_context(|| format!("edge /fanouts at {a}"))?;
    }
    wall_of_spans(&spans, seqs)
}

/// Adds one edge's `/fanouts` records of the bench event to `spans`: seq -> (devices, first
/// taken in, last done), over shards and edges.
fn add_fanout_spans(text: &str, spans: &mut HashMap<u64, (u64, u64, u64)>) -> anyhow::Result<()> {
    let v: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let shards = v["shards"].as_array().context("no shards list")?;
    for f in shards
        .iter()
        .flat_map(|s| s["fanouts"].as_array().into_iter().flatten())
    {
        if f["event"].as_str() != Some("bench") {
            continue;
        }
        let field = |k: &str| {
            f[k].as_u64()
                .with_context(|| format!("a record without {k}: {f}"))
        };
        let e = spans.entry(field("seq")?).or_insert((0, u64::MAX, 0));
        e.0 += field("devices")?;
        e.1 = e.1.min(field("taken_us")?);
        e.2 = e.2.max(field("done_us")?);
    }
    Ok(())
}

/// [`EdgeWall`] of the cues `seqs` (the newest [`FANOUT_RECORDS`]) from the edges' spans.
fn wall_of_spans(spans: &HashMap<u64, (u64, u64, u64)>, seqs: &[u64]) -> anyhow::Result<EdgeWall> {
    let mut seqs = seqs.to_vec();
    seqs.sort_unstable();
    let from = seqs.len().saturating_sub(FANOUT_RECORDS);
    let (mut per_cue, mut rates, mut untimed) = (Vec::new(), Vec::new(), Vec::new());
    for &seq in &seqs[from..] {
        let Some(&(n, first, last)) = spans.get(&seq) else {
            untimed.push(seq);
            continue;
        };
        if n == 0 {
            bail!("edge /fanouts: cue {seq} was written to no device");
        }
        rates.push(span_rate(n, first, last).with_context(|| format!("edge fanout of cue {seq}"))?);
        per_cue.push((seq, n, first, last));
    }
    Ok(EdgeWall {
        median: median(rates).with_context(|| {
            format!(
                "edge /fanouts: no shard has a record of any of the {} cues (an edge older than this bench?)",
                seqs.len() - from
            )
        })?,
        per_cue,
        untimed,
    })
}

/// Runs the scenario once per send path (`paths` empty: once, on the edge's default path),
/// steering loopback receive work first when asked. With several paths each is a phase of its
/// own (the stack and fleet started anew, the same shape), the write() floor is measured once
/// after them, and the figures are side by side with the ratio of the last path to the first.
pub fn run_paths(
    o: &RunOpts,
    paths: &[SendPath],
    scenario: &str,
) -> anyhow::Result<serde_json::Value> {
    // Held for the whole run: dropping it puts the host's settings back.
    let _host = if o.rx_steer || o.tune_host {
        let mut h = stack::HostSettings::new()?;
        if o.tune_host {
            // Both ends of every device connection are on this host.
            let per_transport = if o.transport == Transport::Mixed {
                2
            } else {
                1
            };
            stack::raise_for_fleet(&mut h, 2 * per_transport * (o.devices + o.flood) as u64)?;
        }
        if o.rx_steer {
            let cpu = stack::fleet_cpu(o.edge_cpu)
                .context("--rx-steer: needs a core for the fleet besides the edge core")?;
            // Every device of one fanout may be queued on the fleet core at once, with the
            // ACKs of its connects and of the deliveries before.
            stack::steer_rx(&mut h, cpu, 4 * (o.devices + o.flood) as u64 + 1000)?;
        }
        Some(h)
    } else {
        None
    };
    if let Some(pair) = o.alternate {
        // Every edge starts with its ring (only a shard with one can be switched to it).
        let one = RunOpts {
            send_path: Some(SendPath::Uring),
            ..o.clone()
        };
        let mut v = run(&one, scenario)?;
        v["send_path"] = json!(format!(
            "{} and {}, alternating",
            pair[0].as_str(),
            pair[1].as_str()
        ));
        return Ok(v);
    }
    if paths.len() <= 1 {
        let one = RunOpts {
            send_path: paths.first().copied(),
            ..o.clone()
        };
        return run(&one, scenario);
    }
    let mut runs = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let op = RunOpts {
            send_path: Some(*p),
            no_floor: o.no_floor || !last,
            out: o.out.join(p.as_str()),
            ..o.clone()
        };
        if o.verbose {
            eprintln!(
                "cue-bench: phase {} of {}: --send-path {}",
                i + 1,
                paths.len(),
                p.as_str()
            );
        }
        runs.push(run(&op, scenario)?);
    }
    // The floor of the last phase is every phase's floor.
    let floor_cpu = runs
        .last()
        .and_then(|r| r["floor_deliveries_per_s_per_core"].as_f64());
    let floor_wall = runs
        .last()
        .and_then(|r| r["wall"]["floor_deliveries_per_s"].as_f64());
    let floor_missed = runs.last().map(|r| r["wall"]["floor_missed"].clone());
    let floor_send = runs
        .last()
        .and_then(|r| r["send_wall"]["floor_deliveries_per_s"].as_f64());
    for r in &mut runs {
        let send = r["send_wall"]["deliveries_per_s"].as_f64();
        r["send_wall"]["floor_deliveries_per_s"] = json!(floor_send);
        r["send_wall"]["ratio_to_floor"] = json!(send.zip(floor_send).map(|(a, b)| a / b));
        let rate = r["deliveries_per_s_per_core"].as_f64();
        let wall = r["wall"]["deliveries_per_s"].as_f64();
        r["floor_deliveries_per_s_per_core"] = json!(floor_cpu);
        r["ratio_to_floor"] = json!(rate.zip(floor_cpu).map(|(a, b)| a / b));
        r["wall"]["floor_deliveries_per_s"] = json!(floor_wall);
        r["wall"]["ratio_to_floor"] = json!(wall.zip(floor_wall).map(|(a, b)| a / b));
        r["wall"]["floor_missed"] = json!(floor_missed);
    }
    let ratio = |path: &[&str]| -> Option<f64> {
        let get = |r: &serde_json::Value| path.iter().try_fold(r, |v, k| v.get(*k))?.as_f64();
        Some(get(runs.last()?)? / get(runs.first()?)?)
    };
    let (first, last) = (paths[0].as_str(), paths[paths.len() - 1].as_str());
    let cmp = json!({
        "cpu_rate": ratio(&["deliveries_per_s_per_core"]),
        "wall_rate": ratio(&["wall", "deliveries_per_s"]),
        "send_wall_rate": ratio(&["send_wall", "deliveries_per_s"]),
        "slice_wall_rate": ratio(&["send_wall", "slice_wall_deliveries_per_s"]),
        "last_device_ms": ratio(&["last_device_ms_median"]),
        "basis": format!("{last} / {first}, same fleet shape, edge core and run"),
    });
    let runs_floor_profile = runs.last().map(|r| r["floor_profile"].clone());
    let mut by_path = serde_json::Map::new();
    for (p, r) in paths.iter().zip(runs) {
        by_path.insert(p.as_str().to_string(), r);
    }
    Ok(json!({
        "scenario": scenario,
        "send_paths": by_path,
        "ratio": cmp,
        "floor_profile": runs_floor_profile,
        "loopback_rx": if o.rx_steer { "fleet core (send side only)" } else { "sender's core (send and loopback receive)" },
    }))
}

/// Devices that did not end on the newest cue, over every send path of a run's figures
/// (`missed` of one run, or of each run under `send_paths`); `None` when a run has no such
/// figure (a reading that is not there is not 0).
pub fn missed_total(v: &serde_json::Value) -> Option<u64> {
    match v.get("send_paths").and_then(|p| p.as_object()) {
        Some(paths) => paths.values().map(missed_total).sum(),
        None => v.get("missed")?.as_u64(),
    }
}

/// Runs the scenario; returns the JSON figures.
pub fn run(o: &RunOpts, scenario: &str) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(&o.out)?;
    let fleet_cpu = stack::fleet_cpu(o.edge_cpu);
    let per_transport = if o.transport == Transport::Mixed {
        2
    } else {
        1
    };
    let edges = o
        .edges
        .unwrap_or_else(|| (o.devices * per_transport).div_ceil(PER_PROCESS).max(1));
    let mut log = Vec::new();
    let peer = o.target_url.is_some();
    if peer && o.transport != Transport::Ws {
        bail!("--transport: peer mode drives WebSocket servers only");
    }
    let mut target = if peer {
        start_peer(o)?
    } else {
        start_cue(o, edges, &mut log)?
    };
    std::thread::sleep(Duration::from_millis(300));
    // The serving processes: Cue's edges, or the peer's worker (`peer_pid`).
    let server_pids: Vec<u32> = if peer {
        o.peer_pid.into_iter().collect()
    } else {
        target.edge_pids.clone()
    };
    let rss0 = rss_sum(&server_pids)?;
    let slab1 = stack::slab_bytes()?;
    let host0 = stack::host_memory_used()?;
    let ws_fleet = if o.transport == Transport::Quic {
        None
    } else {
        Some(start_fleet(
            o,
            &[target.addr],
            &target.host,
            std::slice::from_ref(&target.path),
            target.token.as_deref(),
            fleet_cpu,
        )?)
    };
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_sum(&server_pids)?;
    let slab2 = stack::slab_bytes()?;
    let host1 = stack::host_memory_used()?;
    // The QUIC fleet connects after the WebSocket one: its memory is the growth from here.
    let quic_fleet = match (&target.quic, o.transport) {
        (Some((addr, fp)), Transport::Quic | Transport::Mixed) => {
            let tok = target.token.clone().unwrap_or_default();
            let f = start_quic_fleet(o, *addr, fp, &tok, fleet_cpu)?;
            std::thread::sleep(Duration::from_millis(500));
            Some(f)
        }
        _ => None,
    };
    let rss2 = rss_sum(&server_pids)?;
    let quic_connected = quic_fleet.as_ref().map_or(0, |f| f.connected);
    let quic_connect_s = quic_fleet.as_ref().map_or(0.0, |f| f.connect_s);
    let (connected, connect_s) = match &ws_fleet {
        Some(f) => (f.connected, f.connect_s),
        None => (quic_connected, quic_connect_s),
    };
    // The flood's devices (a fleet of their own on the flooded event), then its publisher.
    let flood_fleet = if o.flood > 0 {
        if peer {
            bail!("--flood: Cue only");
        }
        let fo = RunOpts {
            devices: o.flood,
            ..o.clone()
        };
        let paths: Vec<String> = flood_events(o.flood_events)
            .iter()
            .map(|e| format!("/v1/subscribe?events={e}"))
            .collect();
        Some(start_fleet(
            &fo,
            &[target.addr],
            &target.host,
            &paths,
            target.token.as_deref(),
            fleet_cpu,
        )?)
    } else {
        None
    };
    let flood_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = match (&flood_fleet, &target.origin) {
        (Some(_), Some((http, auth))) => Some(flood(
            *http,
            auth.clone(),
            flood_events(o.flood_events),
            o.priorities,
            flood_stop.clone(),
        )),
        _ => None,
    };
    let metrics_before = edge_metrics(&target.edge_admins)?;

    let interval = Duration::from_millis(
        o.interval_ms
            .unwrap_or_else(|| (o.devices as u64 / 40).clamp(200, 5000)),
    );
    // Whole-process CPU of the serving side over the publish phase: the same measure for Cue's
    // edges and for a peer, so `process_cpu` compares like with like.
    let cpu_before = cpu_sum(&server_pids)?;
    let rec = match &o.perf {
        Some(dir) if !peer => Some(crate::profile::Recording::start(
            dir,
            o.send_path.map_or("edge", |p| p.as_str()),
            o.edge_cpu,
        )?),
        _ => None,
    };
    let sampler = crate::corebusy::Sampler::start(fleet_cpu)?;
    // With --alternate: each cue's path, and the edges' counters right before it.
    let mut turns: Vec<(SendPath, EdgeCounters)> = Vec::new();
    let (ws_series, quic_series) = {
        let admins = target.edge_admins.clone();
        let auth = target.admin_auth.clone();
        let inner = &mut target.publish;
        let mut publish = |n: u64| -> anyhow::Result<Published> {
            if let Some(pair) = o.alternate {
                let p = crate::alternate::path_of(n, pair);
                let before = switch_send_path(&admins, auth.as_deref(), p)?;
                turns.push((p, before));
            }
            inner(n)
        };
        publish_series(o.cues, interval, &mut publish)?
    };
    // The counters after the last cue close its turn.
    let turns_end = if o.alternate.is_some() {
        Some(settled_metrics(&target.edge_admins)?)
    } else {
        None
    };
    let busy = sampler.stop()?;
    let rec = rec.map(|r| r.stop()).transpose()?;
    flood_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flood_published = match flooder {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??,
        ),
        None => None,
    };
    // Its devices' counts are not this run's figures.
    drop(flood_fleet);
    let server_cpu = cpu_sum(&server_pids)? - cpu_before;
    let quic_seen = match quic_fleet {
        Some(f) => Some(finish_fleet(f, o, &quic_series)?),
        None => None,
    };
    let seen = match ws_fleet {
        Some(f) => finish_fleet(f, o, &ws_series)?,
        None => quic_seen.as_ref().cloned().context("no fleet")?,
    };

    // The edges' own accounting over the publish phase: deliveries per CPU-second spent on
    // them. WebSocket: the shards' fanout CPU (sends). QUIC: stream writes, packets out and the
    // devices' acknowledgements in (handshakes excluded; they were before this phase).
    let m = edge_metrics(&target.edge_admins)?.delta(&metrics_before);
    if !peer && o.alternate.is_none() {
        if let Some(sp) = o.send_path {
            // The path asked for is the path measured: a shard whose ring could not be made
            // would have fallen back to send() calls.
            let want = if sp == SendPath::Uring { m.shards } else { 0.0 };
            if m.uring_active != want {
                bail!(
                    "--send-path {}: {} of {} shards send on io_uring (see the edge logs)",
                    sp.as_str(),
                    m.uring_active,
                    m.shards
                );
            }
        }
    }
    let profile = match rec {
        Some(r) => Some(r.breakdown(&target.edge_pids, m.deliveries)?),
        None => None,
    };
    // Deliveries and CPU counted on the same path: the fanout slices' WebSocket writes.
    // Catch-up and the flush of drained sockets are reported on their own.
    let ws_fanout = m.fanout_deliveries;
    let ws_other = m.deliveries - m.quic_deliveries - m.fanout_deliveries;
    let ws_rate = rate_of(
        ws_fanout,
        m.ws_cpu,
        "WebSocket fanout",
        peer || o.cues == 0 || o.transport == Transport::Quic,
    )?;
    let quic_rate = rate_of(
        m.quic_deliveries,
        m.quic_cpu,
        "QUIC",
        peer || o.cues == 0 || o.transport == Transport::Ws,
    )?;
    let cpu_rate = if o.transport == Transport::Quic {
        quic_rate
    } else {
        ws_rate
    };
    // The edges' own wall span per cue; a flood's many events push the fleet's cues out of
    // the shards' records, so it is not read then.
    let edge_send_wall = if !peer && o.cues > 0 && o.transport != Transport::Quic {
        if o.flood > 0 {
            log.push("flood: no edge-side wall rate (the flood's fanouts fill the shards' /fanouts records)".into());
            None
        } else {
            let seqs: Vec<u64> = ws_series.times.keys().copied().collect();
            Some(edge_wall(&target.edge_admins, &seqs)?)
        }
    } else {
        None
    };
    // Per cue: how busy the edge core and the fleet core were from its publish to its last
    // arrival (which side the fleet-observed wall rate measured), and within the edges' own
    // span how busy the edge core was; over the phase, which share of the spans the shards
    // spent inside fanout slices (the rest is the turns between slices).
    let mut per_cue = seen.per_cue.clone();
    let (mut edge_busy, mut fleet_busy, mut span_busy) = (Vec::new(), Vec::new(), Vec::new());
    let mut span_total_s = 0.0;
    for c in &mut per_cue {
        let Some(seq) = c["seq"].as_u64() else {
            continue;
        };
        let published = ws_series
            .times
            .get(&seq)
            .or_else(|| quic_series.times.get(&seq));
        if let (Some(&p), Some(last_ms)) = (published, c["last_ms"].as_f64()) {
            let end = p + (last_ms * 1e3) as u64;
            let e = busy.fraction(o.edge_cpu, p, end)?;
            c["edge_core_busy"] = json!(e);
            edge_busy.push(e);
            if let Some(f) = fleet_cpu {
                let f = busy.fraction(f, p, end)?;
                c["fleet_core_busy"] = json!(f);
                fleet_busy.push(f);
            }
        }
        let span = edge_send_wall
            .as_ref()
            .and_then(|w| w.per_cue.iter().find(|p| p.0 == seq));
        if let Some(&(_, n, first, last)) = span {
            let b = busy.fraction(o.edge_cpu, first, last)?;
            c["edge_devices"] = json!(n);
            c["edge_span_ms"] = json!((last - first) as f64 / 1e3);
            c["edge_core_busy_in_span"] = json!(b);
            span_busy.push(b);
            span_total_s += (last - first) as f64 / 1e6;
        }
    }
    let alternate = match (o.alternate, turns_end) {
        (Some(pair), Some(end)) => {
            Some(alternate_figures(pair, &turns, end, &per_cue, &ws_series)?)
        }
        _ => None,
    };
    if alternate.is_some() {
        log.push("alternate: the top-level rates mix both send paths; `alternate` has each path's figures and their ratio".into());
    }
    let core_busy = median(edge_busy).map(|edge_core| {
        json!({
            "edge_core": edge_core,
            "fleet_core": median(fleet_busy),
            "basis": "busy fraction of each core (/proc/stat, all but idle and iowait) from a cue's publish to its last arrival, median over cues: a fleet core near 1.0 with an edge core below it means the fleet-observed wall rate is the fleet's bound",
        })
    });
    for p in &mut target.procs {
        p.stop(Duration::from_secs(5));
    }
    drop(target.procs);

    let floor = if o.cues > 0 && !o.no_floor && o.transport != Transport::Quic {
        Some(floor_phase(o, fleet_cpu, interval)?)
    } else {
        None
    };
    let floor_cpu = floor.as_ref().map(|f| f.cpu_rate);
    let floor_wall = floor.as_ref().and_then(|f| f.wall_rate);
    let floor_send_wall = floor.as_ref().map(|f| f.send_wall_rate);
    let floor_missed = floor.as_ref().map(|f| f.missed);
    let floor_profile = floor.and_then(|f| f.profile);
    let rate = if peer { seen.wall_rate } else { cpu_rate };
    let floor_rate = if peer { floor_wall } else { floor_cpu };
    let n = connected.max(1) as f64;
    let user_bytes = if server_pids.is_empty() {
        None
    } else {
        Some(if o.transport == Transport::Quic {
            (rss2.saturating_sub(rss0)) as f64 / n
        } else {
            (rss1.saturating_sub(rss0)) as f64 / n
        })
    };
    // Both ends of every connection are on this host; the edge's share is half the growth.
    let kernel_bytes = (slab2 as f64 - slab1 as f64) / n / 2.0;
    let hist = &seen.hist;
    let pct = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    let quic = quic_seen.as_ref().map(|q| {
        let h = &q.hist;
        let pct = |x: f64| h.value_at_quantile(x) as f64 / 1e3;
        json!({
            "devices": o.devices,
            "connected": quic_connected,
            "connect_s": quic_connect_s,
            "connects_per_s": quic_connected as f64 / quic_connect_s.max(1e-9),
            "delivered": q.delivered,
            "missed": q.missed,
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": h.max() as f64 / 1e3},
            "deliveries_per_s_per_core": quic_rate,
            "ratio_to_ws": match (o.transport, quic_rate, ws_rate) {
                (Transport::Mixed, Some(q), Some(w)) => Some(q / w),
                _ => None,
            },
            "edge_user_bytes_per_conn": (rss2.saturating_sub(rss1)) as f64 / quic_connected.max(1) as f64,
            "edge_cpu_s": m.quic_cpu,
            "handshake_cpu_s_total": m.quic_handshake_cpu_total,
            "datagrams_out": m.quic_datagrams_out,
            "send_calls": m.quic_send_calls,
            "wall_deliveries_per_s": q.wall_rate,
            "per_cue": q.per_cue,
            "closed_by_server": q.closed,
            "rate_basis": "cpu: QUIC deliveries per CPU-second of the shards' QUIC work (stream writes, packetising and sendmmsg, acknowledgements in; handshakes excluded)",
        })
    });
    if o.transport == Transport::Quic {
        log.push("transport quic: top-level figures are the QUIC fleet's; no write() floor".into());
    }
    if flood_published.is_some() {
        log.push("flood: the edges' delivery and CPU figures include the flood's; the fleet's latency is its own cues'".into());
    }
    let flood = flood_published.map(|n| json!({
            "devices": o.flood,
            "events": o.flood_events.max(1),
            "cues_published": n,
            "fleet_class": if o.priorities { "critical" } else { "normal" },
            "flood_class": if o.priorities { "background" } else { "normal" },
            "edge_delivery_lag": {
                "basis": "the edges' cue_edge_delivery_lag_seconds over the publish phase: publish time to a shard's last write of a cue, by class (p50/p99 are the bucket bounds holding them)",
                "critical": m.lag[0].json(),
                "normal": m.lag[1].json(),
                "background": m.lag[2].json(),
            },
            "lane_background_holds": m.lane_holds,
            "lane_conflated": m.lane_conflated,
        }));
    let wall = json!({
        "deliveries_per_s": seen.wall_rate,
        "floor_deliveries_per_s": floor_wall,
        "ratio_to_floor": seen.wall_rate.zip(floor_wall).map(|(w, f)| w / f),
        "floor_missed": floor_missed,
        "basis": "devices reached per second as the fleet saw it: first to last arrival of a cue, median over cues (holds the receive side: the fleet core's with --rx-steer)",
    });
    let send_wall = json!({
        "deliveries_per_s": edge_send_wall.as_ref().map(|w| w.median),
        "floor_deliveries_per_s": floor_send_wall,
        "ratio_to_floor": edge_send_wall.as_ref().zip(floor_send_wall).map(|(w, f)| w.median / f),
        "basis": "devices written per second of the sender's own span: edge, the first shard taking a cue in to the last shard's last send accepted by the kernel (GET /fanouts); floor, its write loops' span; median over cues",
        "edge_core_busy_in_span": median(span_busy),
        "cues_timed": edge_send_wall.as_ref().map(|w| w.per_cue.len()),
        "cues_untimed": edge_send_wall.as_ref().map(|w| w.untimed.clone()),
        "in_slices": (span_total_s > 0.0 && edges == 1).then(|| m.slice_wall / span_total_s),
        // The shard's CPU time is ~99% of a send() slice's wall but ~84% of an io_uring
        // slice's on this machine: during io_uring fanouts other threads on the edge core keep
        // the shard waiting (docs/edge.md). The slices' wall time counts that; CPU does not.
        "slice_wall_deliveries_per_s": (edges == 1 && m.slice_wall > 0.0).then(|| ws_fanout / m.slice_wall),
        "in_slices_basis": "one edge process: wall seconds inside fanout slices over the phase (cue_edge_fanout_seconds_sum) / the sum of the cues' spans; the rest is the turns between slices",
    });
    let mut out = json!({
        "scenario": scenario,
        "flood": flood,
        "transport": format!("{:?}", o.transport).to_lowercase(),
        "quic": quic,
        "target": if peer { o.target_url.clone().unwrap_or_default() } else { "cue".into() },
        "devices": o.devices,
        "connected": connected,
        "edges": if peer { 0 } else { edges },
        "shards_per_edge": o.shards,
        "cues": o.cues,
        "delivered": seen.delivered,
        "missed": seen.missed,
        "cue_deliveries_missing": seen.not_delivered,
        "connect_s": connect_s,
        "connects_per_s": connected as f64 / connect_s,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": hist.max() as f64 / 1e3},
        "deliveries_per_s_per_core": rate,
        "floor_deliveries_per_s_per_core": floor_rate,
        "ratio_to_floor": rate.zip(floor_rate).map(|(r, f)| r / f),
        "rate_basis": if peer { "wall: devices reached per second, first to last arrival, median over cues" } else { "cpu: WebSocket deliveries of the shards' fanout slices per CPU-second of those slices (edge), writes per CPU-second of the write loop (floor)" },
        "loopback_rx": if o.rx_steer { "fleet core: the edge core pays the send side only, as with a real NIC" } else { "sender's core: the edge core also pays the loopback receive work of its devices" },
        "send_path": o.send_path.map(|p| p.as_str()),
        "profile": profile,
        "floor_profile": floor_profile,
        "edge_deliveries": {
            "fanout": ws_fanout,
            "catch_up_and_flush": ws_other,
            "quic": m.quic_deliveries,
            "uring_submits": m.uring_submits,
            "uring_sends": m.uring_sends,
            "sends_per_submit": (m.uring_submits > 0.0).then(|| m.uring_sends / m.uring_submits),
        },
        "process_cpu": {
            "seconds": server_cpu,
            "deliveries_per_cpu_s": if server_cpu > 0.0 { seen.delivered as f64 / server_cpu } else { 0.0 },
            "basis": "deliveries / whole-process CPU seconds (user+sys, all threads) of the serving processes over the publish phase",
        },
        "last_device_ms_median": median(seen.per_cue.iter().filter_map(|c| c["last_ms"].as_f64()).collect()),
        "edge_user_bytes_per_conn": user_bytes,
        "kernel_bytes_per_conn": kernel_bytes,
        "at_scale": match (peer, rate, user_bytes) {
            (false, Some(r), Some(u)) if o.transport == Transport::Ws => Some(crate::gameday::scale::at_scale(
                r,
                u,
                kernel_bytes,
                if o.rx_steer {
                    "fanout: WebSocket deliveries of fanout slices per CPU-second of those slices, send side only (loopback receive steered to the fleet core)"
                } else {
                    "fanout: WebSocket deliveries of fanout slices per CPU-second of those slices, loopback receive work on the edge core too"
                },
            )),
            _ => None,
        },
        "edge_rss_bytes": rss1,
        "host_memory": {
            "before_fleet_bytes": host0,
            "fleet_connected_bytes": host1,
            "basis": "MemTotal - MemAvailable: the edges, the fleet and every socket's kernel memory at both ends",
        },
        "interval_ms": interval.as_millis() as u64,
        "store": o.store.as_ref().map_or(json!("embedded"), |s| json!({"url": s.url, "replicas": s.replicas, "origins": s.origins})),
        "origin_killed_before_cue": o.store.as_ref().and_then(|s| s.kill_origin_before_cue),
        "per_cue": per_cue,
        "closed_by_server": seen.closed,
        "refusals": seen.refusals,
        "notes": log,
    });
    out["wall"] = wall;
    out["core_busy"] = json!(core_busy);
    out["send_wall"] = send_wall;
    out["alternate"] = json!(alternate);
    Ok(out)
}

/// The longest the bench waits for the edges' fanouts in progress to end before it switches
/// their send path.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// The edges' counters once no shard has a fanout in progress (so a cue's work is not split
/// between two turns); an edge still fanning out after [`SETTLE_DEADLINE`] fails the reading.
fn settled_metrics(admins: &[SocketAddr]) -> anyhow::Result<EdgeCounters> {
    let t = Instant::now();
    loop {
        let m = edge_metrics(admins)?;
        if m.fanout_backlog == 0.0 {
            return Ok(m);
        }
        if t.elapsed() >= SETTLE_DEADLINE {
            bail!(
                "--alternate: the edges still had {} devices to visit after {SETTLE_DEADLINE:?}",
                m.fanout_backlog
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Switches every edge to `path` (`POST /admin/send-path`) once their fanouts in progress have
/// ended; returns their counters at that moment.
fn switch_send_path(
    admins: &[SocketAddr],
    auth: Option<&str>,
    path: SendPath,
) -> anyhow::Result<EdgeCounters> {
    let m = settled_metrics(admins)?;
    let target = format!("/admin/send-path?path={}", path.as_str());
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    for a in admins {
        let (st, body) = stack::http(*a, "POST", &target, &headers, b"")
            .with_context(|| format!("edge {a}: POST {target}"))?;
        if st != 200 {
            bail!("edge {a}: POST {target}: {st} {}", body.trim());
        }
    }
    Ok(m)
}

/// The `alternate` figures: each cue's counters (its turn's, up to the next turn or `end`),
/// the path its fanout really used, its edge span and fleet rates from `per_cue`.
fn alternate_figures(
    pair: [SendPath; 2],
    turns: &[(SendPath, EdgeCounters)],
    end: EdgeCounters,
    per_cue: &[serde_json::Value],
    series: &Series,
) -> anyhow::Result<serde_json::Value> {
    let mut seqs: Vec<(u64, u64)> = series.times.iter().map(|(s, t)| (*t, *s)).collect();
    seqs.sort_unstable();
    if seqs.len() != turns.len() {
        bail!(
            "--alternate: {} cues published, {} turns",
            seqs.len(),
            turns.len()
        );
    }
    let mut samples = Vec::new();
    for (i, ((path, before), (_, seq))) in turns.iter().zip(&seqs).enumerate() {
        let after = turns.get(i + 1).map_or(&end, |t| &t.1);
        let d = after.clone().delta(before);
        // The path asked for is the path measured: every shard took the switch (the gauge),
        // and the ring carried all of the cue's deliveries (uring) or none (syscall).
        let on_ring = d.uring_active == d.shards;
        let want_ring = *path == SendPath::Uring;
        if on_ring != want_ring
            || (want_ring && d.uring_sends < d.fanout_deliveries)
            || (!want_ring && d.uring_sends > 0.0)
        {
            bail!(
                "--alternate: cue {seq} on {}: {} of {} shards on io_uring, {} ring sends for {} deliveries",
                path.as_str(),
                d.uring_active,
                d.shards,
                d.uring_sends,
                d.fanout_deliveries
            );
        }
        let c = per_cue.iter().find(|c| c["seq"].as_u64() == Some(*seq));
        let rate = |n: &str, ms: Option<f64>| -> Option<f64> {
            let n = c?[n].as_f64()?;
            ms.filter(|&ms| ms > 0.0).map(|ms| n / (ms / 1e3))
        };
        let span = rate("edge_devices", c.and_then(|c| c["edge_span_ms"].as_f64()));
        let fleet = rate(
            "devices",
            c.and_then(|c| Some(c["last_ms"].as_f64()? - c["first_ms"].as_f64()?)),
        );
        samples.push(crate::alternate::CueSample {
            seq: *seq,
            path: *path,
            deliveries: d.fanout_deliveries,
            cpu_s: d.ws_cpu,
            span_rate: span,
            fleet_rate: fleet,
        });
    }
    crate::alternate::summarize(pair, &samples)
}

/// The edges' counters the run reads, summed over edge processes.
#[derive(Debug, Default, Clone)]
struct EdgeCounters {
    /// `cue_edge_delivery_lag_seconds` by class (most urgent first), every shard's summed.
    lag: [LagHistogram; 3],
    /// Background cues held back in a lane while its shard lagged, and cues conflated there.
    lane_holds: f64,
    lane_conflated: f64,
    deliveries: f64,
    quic_deliveries: f64,
    /// WebSocket deliveries of fanout slices (the work `ws_cpu` times).
    fanout_deliveries: f64,
    uring_submits: f64,
    uring_sends: f64,
    /// Shards sending on io_uring (a gauge: not a delta), and shards.
    uring_active: f64,
    shards: f64,
    /// Devices the shards' fanouts in progress have yet to visit (a gauge).
    fanout_backlog: f64,
    ws_cpu: f64,
    /// Wall seconds inside fanout slices (`cue_edge_fanout_seconds_sum`).
    slice_wall: f64,
    quic_cpu: f64,
    quic_handshake_cpu_total: f64,
    quic_datagrams_out: f64,
    quic_send_calls: f64,
}

impl EdgeCounters {
    /// Growth since `before` (the handshake total stays absolute).
    fn delta(self, before: &EdgeCounters) -> EdgeCounters {
        let [a, b, c] = self.lag;
        EdgeCounters {
            lag: [
                a.delta(&before.lag[0]),
                b.delta(&before.lag[1]),
                c.delta(&before.lag[2]),
            ],
            lane_holds: self.lane_holds - before.lane_holds,
            lane_conflated: self.lane_conflated - before.lane_conflated,
            deliveries: self.deliveries - before.deliveries,
            quic_deliveries: self.quic_deliveries - before.quic_deliveries,
            fanout_deliveries: self.fanout_deliveries - before.fanout_deliveries,
            uring_submits: self.uring_submits - before.uring_submits,
            uring_sends: self.uring_sends - before.uring_sends,
            uring_active: self.uring_active,
            shards: self.shards,
            fanout_backlog: self.fanout_backlog,
            slice_wall: self.slice_wall - before.slice_wall,
            ws_cpu: self.ws_cpu - before.ws_cpu,
            quic_cpu: self.quic_cpu - before.quic_cpu,
            quic_handshake_cpu_total: self.quic_handshake_cpu_total,
            quic_datagrams_out: self.quic_datagrams_out - before.quic_datagrams_out,
            quic_send_calls: self.quic_send_calls - before.quic_send_calls,
        }
    }
}

/// A latency histogram read from Prometheus text: cumulative counts by upper bound (seconds).
#[derive(Debug, Default, Clone)]
struct LagHistogram {
    /// `(le, cumulative count)`, ascending; `+Inf` last.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl LagHistogram {
    /// Adds one sample line's bucket (or `_sum` / `_count`) to the totals.
    fn add_bucket(&mut self, le: f64, n: f64) {
        match self.buckets.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += n,
            None => {
                self.buckets.push((le, n));
                self.buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
            }
        }
    }

    fn delta(self, before: &LagHistogram) -> LagHistogram {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, n)| {
                let b = before
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |x| x.1);
                (le, n - b)
            })
            .collect();
        LagHistogram {
            buckets,
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q`; `None` without samples.
    fn quantile_le_ms(&self, q: f64) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        let rank = q * self.count;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(le, _)| le * 1000.0)
    }

    /// Cues, mean and bucket bounds of p50 and p99, in ms, as JSON.
    fn json(&self) -> serde_json::Value {
        json!({
            "fanouts": self.count,
            "mean_ms": (self.count > 0.0).then(|| self.sum * 1000.0 / self.count),
            "p50_le_ms": self.quantile_le_ms(0.5),
            "p99_le_ms": self.quantile_le_ms(0.99),
        })
    }
}

/// Adds every `cue_edge_delivery_lag_seconds` sample of `text` to `lag`, by its `class` label.
fn parse_lag(text: &str, lag: &mut [LagHistogram; 3]) -> anyhow::Result<()> {
    const NAME: &str = "cue_edge_delivery_lag_seconds";
    let label = |l: &str, k: &str| -> Option<String> {
        let at = l.find(&format!("{k}=\""))? + k.len() + 2;
        Some(l[at..].split('"').next()?.to_string())
    };
    for l in text.lines().filter(|l| l.starts_with(NAME)) {
        let Some(class) = label(l, "class") else {
            bail!("edge metrics: {NAME} without a class label: {l}");
        };
        let i = cue_common::cue::Priority::ALL
            .iter()
            .position(|c| c.as_str() == class)
            .with_context(|| format!("edge metrics: unknown class in {l}"))?;
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("edge metrics: unreadable sample {l}"))?;
        let rest = &l[NAME.len()..];
        if rest.starts_with("_bucket") {
            let le = match label(l, "le").as_deref() {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x
                    .parse()
                    .with_context(|| format!("edge metrics: bad le in {l}"))?,
                None => bail!("edge metrics: bucket without le: {l}"),
            };
            lag[i].add_bucket(le, v);
        } else if rest.starts_with("_sum") {
            lag[i].sum += v;
        } else if rest.starts_with("_count") {
            lag[i].count += v;
        }
    }
    Ok(())
}

/// Every edge's counters, summed; an edge whose metrics cannot be read fails the run (it must
/// not be left out of the figures silently).
/// An edge's `(fanout deliveries, fanout CPU seconds)`, summed over its shards: the game day's
/// rate, from the same reading (and the same checks) as this bench's.
pub(crate) fn fanout_totals(admin: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let c = edge_metrics(&[admin])?;
    Ok((c.fanout_deliveries, c.ws_cpu))
}

/// How long an edge may take to answer `/metrics`. A loaded host (a million devices on one core
/// pinging and ponging) can leave an admin thread unanswered past one request's 10 s read
/// timeout; the reading is retried until this, then the run fails: it never becomes 0.
const METRICS_DEADLINE: Duration = Duration::from_secs(90);

/// One edge's admin `path` (`/metrics`, `/fanouts`), retried (each try has the client's own
/// timeouts) until [`METRICS_DEADLINE`]; a slow answer is reported on stderr with how long it
/// took.
fn read_admin(a: SocketAddr, path: &str) -> anyhow::Result<String> {
    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let err = match stack::http(a, "GET", path, &[], b"") {
            Ok((200, m)) => {
                if tries > 1 || t.elapsed() > Duration::from_secs(2) {
                    eprintln!(
                        "cue-bench: edge {path} at {a} answered after {:.1} s ({tries} tries)",
                        t.elapsed().as_secs_f64()
                    );
                }
                return Ok(m);
            }
            Ok((st, _)) => anyhow!("HTTP {st}"),
            Err(e) => e,
        };
        if t.elapsed() >= METRICS_DEADLINE {
            return Err(err.context(format!(
                "edge {path} at {a}: no answer in {:.0} s ({tries} tries)",
                t.elapsed().as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every edge's admin `path` at once (56 loaded edges read one after another took minutes);
/// one that cannot be read fails the reading.
fn read_all(admins: &[SocketAddr], path: &str) -> anyhow::Result<Vec<String>> {
    std::thread::scope(|s| {
        let reads: Vec<_> = admins
            .iter()
            .map(|a| s.spawn(move || read_admin(*a, path)))
            .collect();
        reads
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("edge {path} reader panicked")))
            })
            .collect()
    })
}

fn edge_metrics(admins: &[SocketAddr]) -> anyhow::Result<EdgeCounters> {
    let mut c = EdgeCounters::default();
    let texts = read_all(admins, "/metrics")?;
    for (a, m) in admins.iter().zip(texts) {
        parse_lag(&m, &mut c.lag)?;
        c.lane_holds += metric_sum(&m, "cue_edge_lane_background_holds_total");
        c.lane_conflated += metric_sum(&m, "cue_edge_lane_conflated_total");
        c.deliveries += metric_sum(&m, "cue_edge_deliveries_total");
        c.quic_deliveries += metric_sum(&m, "cue_edge_quic_deliveries_total");
        for name in ["cue_edge_fanout_deliveries_total", "cue_edge_uring_active"] {
            if metric_value(&m, name).is_none() {
                bail!("edge metrics at {a}: no {name} (an edge older than this bench?)");
            }
        }
        c.fanout_deliveries += metric_sum(&m, "cue_edge_fanout_deliveries_total");
        c.uring_submits += metric_sum(&m, "cue_edge_uring_submits_total");
        c.uring_sends += metric_sum(&m, "cue_edge_uring_sends_total");
        c.uring_active += metric_sum(&m, "cue_edge_uring_active");
        c.shards += m
            .lines()
            .filter(|l| l.starts_with("cue_edge_uring_active{"))
            .count() as f64;
        c.fanout_backlog += metric_sum(&m, "cue_edge_fanout_backlog_devices");
        c.ws_cpu += metric_sum(&m, "cue_edge_fanout_cpu_seconds_total");
        c.slice_wall += metric_sum(&m, "cue_edge_fanout_seconds_sum");
        c.quic_cpu += metric_sum(&m, "cue_edge_quic_cpu_seconds_total");
        c.quic_handshake_cpu_total += metric_sum(&m, "cue_edge_quic_handshake_cpu_seconds_total");
        c.quic_datagrams_out += metric_sum(&m, "cue_edge_quic_datagrams_out_total");
        c.quic_send_calls += metric_sum(&m, "cue_edge_quic_send_calls_total");
    }
    Ok(c)
}

/// How long a fleet worker keeps connecting before it reports what it has: 120 s, or
/// 4,000 devices a second for the whole fleet when that is longer.
fn connect_timeout_s(devices: usize) -> u64 {
    (devices as u64 / 4_000).max(120)
}

/// `n / cpu_s`; `None` when the run has none of this work (`absent_ok` and nothing counted);
/// an error when work was counted without CPU time, or CPU time without work.
fn rate_of(n: f64, cpu_s: f64, what: &str, absent_ok: bool) -> anyhow::Result<Option<f64>> {
    if n <= 0.0 && cpu_s <= 0.0 && absent_ok {
        return Ok(None);
    }
    if n <= 0.0 || cpu_s <= 0.0 {
        bail!("{what}: {n} deliveries in {cpu_s} CPU-seconds: no rate can be taken from that");
    }
    Ok(Some(n / cpu_s))
}

fn rss_sum(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| stack::rss(p)).sum()
}

fn cpu_sum(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&p| stack::cpu_s(p)).sum()
}

/// The (upper) median; `None` for no values (never 0).
pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_is_summed_over_send_paths_and_never_taken_as_zero_when_absent() {
        assert_eq!(missed_total(&json!({"missed": 0})), Some(0));
        assert_eq!(missed_total(&json!({"missed": 7})), Some(7));
        let two = json!({"send_paths": {"syscall": {"missed": 2}, "uring": {"missed": 3}}});
        assert_eq!(missed_total(&two), Some(5));
        assert_eq!(missed_total(&json!({"devices": 10})), None);
        let half = json!({"send_paths": {"syscall": {"missed": 0}, "uring": {}}});
        assert_eq!(missed_total(&half), None);
    }

    #[test]
    fn edge_spans_combine_shards_and_edges_and_say_what_they_could_not_time() {
        let one = r#"{"shards":[
            {"shard":0,"fanouts":[
                {"event":"bench","seq":1,"taken_us":1000,"done_us":51000,"devices":400},
                {"event":"flood-1","seq":1,"taken_us":0,"done_us":1,"devices":9}]},
            {"shard":1,"fanouts":[
                {"event":"bench","seq":1,"taken_us":900,"done_us":60000,"devices":600},
                {"event":"bench","seq":2,"taken_us":2000,"done_us":12000,"devices":1000}]}]}"#;
        let two = r#"{"shards":[{"shard":0,"fanouts":[
                {"event":"bench","seq":2,"taken_us":1000,"done_us":11000,"devices":1000}]}]}"#;
        let mut spans = HashMap::new();
        add_fanout_spans(one, &mut spans).unwrap();
        add_fanout_spans(two, &mut spans).unwrap();
        assert_eq!(
            spans[&1],
            (1000, 900, 60000),
            "devices summed, earliest in, latest done"
        );
        assert_eq!(spans[&2], (2000, 1000, 12000));
        let w = wall_of_spans(&spans, &[3, 1, 2]).unwrap();
        assert_eq!(w.untimed, vec![3]);
        // 1000 devices over 59.1 ms, 2000 over 11 ms: the median of two is the upper one.
        assert!((w.median - 2000.0 / 0.011).abs() < 1.0, "{}", w.median);
        assert!(
            wall_of_spans(&spans, &[3]).is_err(),
            "no cue timed is a failed reading"
        );
        assert!(
            add_fanout_spans("{}", &mut spans).is_err(),
            "no shards list"
        );
        assert!(add_fanout_spans("not json", &mut spans).is_err());
        let no_devices =
            r#"{"shards":[{"fanouts":[{"event":"bench","seq":4,"taken_us":1,"done_us":2}]}]}"#;
        assert!(
            add_fanout_spans(no_devices, &mut spans).is_err(),
            "a record without devices"
        );
        let zero = r#"{"shards":[{"fanouts":[{"event":"bench","seq":5,"taken_us":1,"done_us":2,"devices":0}]}]}"#;
        add_fanout_spans(zero, &mut spans).unwrap();
        assert!(wall_of_spans(&spans, &[5]).is_err(), "written to no device");
        let backwards = r#"{"shards":[{"fanouts":[{"event":"bench","seq":6,"taken_us":9,"done_us":9,"devices":3}]}]}"#;
        add_fanout_spans(backwards, &mut spans).unwrap();
        assert!(wall_of_spans(&spans, &[6]).is_err(), "no span to divide by");
    }

    #[test]
    fn a_rate_needs_both_work_and_cpu_time() {
        assert_eq!(rate_of(100.0, 0.5, "x", false).unwrap(), Some(200.0));
        assert!(rate_of(100.0, 0.0, "x", true).is_err(), "work without CPU");
        assert!(rate_of(0.0, 0.5, "x", true).is_err(), "CPU without work");
        assert_eq!(
            rate_of(0.0, 0.0, "x", true).unwrap(),
            None,
            "no such work in this run"
        );
        assert!(
            rate_of(0.0, 0.0, "x", false).is_err(),
            "work that should have been there"
        );
    }

    #[test]
    fn a_big_fleet_gets_time_to_connect() {
        assert_eq!(connect_timeout_s(100_000), 120);
        assert_eq!(connect_timeout_s(1_000_000), 250);
    }

    const TEXT: &str = "\
cue_edge_delivery_lag_seconds_bucket{shard=\"0\",class=\"critical\",le=\"0.025\"} 3
cue_edge_delivery_lag_seconds_bucket{shard=\"0\",class=\"critical\",le=\"0.05\"} 9
cue_edge_delivery_lag_seconds_bucket{shard=\"0\",class=\"critical\",le=\"+Inf\"} 10
cue_edge_delivery_lag_seconds_sum{shard=\"0\",class=\"critical\"} 0.4
cue_edge_delivery_lag_seconds_count{shard=\"0\",class=\"critical\"} 10
cue_edge_delivery_lag_seconds_bucket{shard=\"1\",class=\"critical\",le=\"0.025\"} 1
cue_edge_delivery_lag_seconds_bucket{shard=\"1\",class=\"critical\",le=\"0.05\"} 1
cue_edge_delivery_lag_seconds_bucket{shard=\"1\",class=\"critical\",le=\"+Inf\"} 10
cue_edge_delivery_lag_seconds_sum{shard=\"1\",class=\"critical\"} 6.0
cue_edge_delivery_lag_seconds_count{shard=\"1\",class=\"critical\"} 10
";

    #[test]
    fn lag_histograms_sum_over_shards_and_give_bucket_bounds() {
        let mut lag: [LagHistogram; 3] = Default::default();
        parse_lag(TEXT, &mut lag).unwrap();
        let c = &lag[0];
        assert_eq!(c.count, 20.0);
        assert!((c.sum - 6.4).abs() < 1e-9);
        // 4 of 20 under 25 ms, 10 under 50 ms, the rest above: p50 is the 50 ms bucket.
        assert_eq!(c.quantile_le_ms(0.5), Some(50.0));
        assert_eq!(c.quantile_le_ms(0.99), Some(f64::INFINITY));
        assert_eq!(lag[1].quantile_le_ms(0.5), None);
        let before = c.clone();
        let mut later: [LagHistogram; 3] = Default::default();
        parse_lag(TEXT, &mut later).unwrap();
        parse_lag(TEXT, &mut later).unwrap();
        let d = later[0].clone().delta(&before);
        assert_eq!(d.count, 20.0);
        assert_eq!(d.quantile_le_ms(0.2), Some(25.0));
    }

    #[test]
    fn a_lag_sample_without_class_or_le_fails_the_reading() {
        let mut lag: [LagHistogram; 3] = Default::default();
        let no_class = "cue_edge_delivery_lag_seconds_count{shard=\"0\"} 1";
        assert!(parse_lag(no_class, &mut lag).is_err());
        let no_le = "cue_edge_delivery_lag_seconds_bucket{shard=\"0\",class=\"normal\"} 1";
        assert!(parse_lag(no_le, &mut lag).is_err());
        let bad = "cue_edge_delivery_lag_seconds_count{shard=\"0\",class=\"normal\"} x";
        assert!(parse_lag(bad, &mut lag).is_err());
    }
}
