//! `cue-bench gameday`: a live event end to end on loopback, with faults, checked device by
//! device, and a report a person can read (`DIR/index.html`, `DIR/summary.json`).
//!
//! The script ([`script::Script`]) is computed from the device count: a connect ramp with
//! jitter, the prefetch window, the cues (`pre-show`, `round-1` .. `round-5`, `post-show`) at
//! set times, and the faults: a share of devices dropped abruptly (they reconnect with jittered
//! backoff and `since=`), one edge process killed and restarted, one cue published while it is
//! down. At the end every device must hold the newest cue (missed = 0) and must have had the
//! stage map for every cue it displayed.

pub mod fleet;
pub mod quic_fleet;
pub mod report;
pub mod scale;
pub mod script;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::stack::{self, free_port, Proc};
use fleet::{FleetReport, FleetSpec, Status};
use script::{Action, Script};

/// Game-day options.
#[derive(Debug, Clone)]
pub struct GamedayOpts {
    /// Devices.
    pub devices: usize,
    /// Output directory (report, logs).
    pub out: PathBuf,
    /// Directory of the Cue binaries.
    pub bin_dir: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
    /// Core for the edges; fleet, origin and prefetch get the other.
    pub edge_cpu: usize,
    /// RNG seed of the fleet.
    pub seed: u64,
    /// The command line, for the report.
    pub command: String,
    /// Share of the devices that use QUIC (`cue/1`) instead of WebSocket, 0..=1.
    pub quic_share: f64,
    /// The origins' store: the embedded log (one origin), or a 3-node JetStream cluster with
    /// two origins and the two store faults of [`Script::with_store_faults`].
    pub store: GamedayStore,
    /// 1: every device of the default tenant. 2: the fleet split between [`TENANTS`], both
    /// following the same event name, the second one flooding its publishes meanwhile.
    pub tenants: usize,
}

/// The tenants of `--tenants 2`: the first one is measured, the second one floods.
pub const TENANTS: [&str; 2] = ["tenant-a", "tenant-b"];

/// The event the flooding tenant publishes to (nobody follows it) with `--tenants 2`.
pub const FLOOD_EVENT: &str = "flood";

/// The tenant of fleet worker `w` (`None`: the default tenant, with one tenant).
fn worker_tenant(o: &GamedayOpts, w: usize) -> Option<String> {
    (o.tenants > 1).then(|| TENANTS[w % TENANTS.len()].to_string())
}

/// `cue-bench gameday --store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum GamedayStore {
    /// One origin on its embedded log.
    #[default]
    Embedded,
    /// Two origins on a 3-node JetStream cluster (nats-server from PATH), R3.
    Nats,
}

/// A sample of the whole system at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Devices with an open session.
    pub open: usize,
    /// Devices holding a stage map.
    pub prefetched: usize,
    /// Prefetch requests per second over the last interval.
    pub prefetch_rps: f64,
    /// Edge processes' CPU, percent of one core (sum).
    pub edge_cpu_pct: f64,
    /// Edge processes' RSS, bytes (sum).
    pub edge_rss: u64,
    /// Kernel slab memory of the host, bytes.
    pub slab: u64,
    /// Reconnects so far.
    pub reconnects: u64,
}

struct Worker {
    proc: std::process::Child,
    stdin: std::process::ChildStdin,
}

/// A line from a worker: a status or its final report.
enum Line {
    Status(usize, Status),
    Report(usize, Box<FleetReport>),
    Gone(usize),
}

fn edge_args(
    relays: &[SocketAddr],
    ws: SocketAddr,
    admin: SocketAddr,
    cpu: usize,
    i: usize,
    quic: &[String],
) -> Vec<String> {
    let mut a: Vec<String> = relays
        .iter()
        .flat_map(|r| ["--origin".to_string(), r.to_string()])
        .collect();
    a.extend(
        [
            "--ws",
            &ws.to_string(),
            "--admin",
            &admin.to_string(),
            "--shards",
            "1",
            "--cpus",
            &cpu.to_string(),
            "--edge-id",
            &format!("gameday-edge-{i}"),
            "--drain-window-s",
            "1",
            "--ping-interval-s",
            "10",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend_from_slice(quic);
    a
}

/// Runs the game day; returns the summary JSON.
pub fn run(o: &GamedayOpts) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(&o.out)?;
    let fleet_cpu = stack::fleet_cpu(o.edge_cpu);
    let script = Script::for_devices(o.devices);
    let secret = stack::random_secret();
    let env = vec![("CUE_AUTH_SECRET", secret.clone())];
    let mut notes: Vec<String> = Vec::new();
    let say = |quiet: bool, s: &str| {
        if !quiet {
            eprintln!("{s}");
        }
    };

    // The stack: the store, then the origins.
    let nats = o.store == GamedayStore::Nats;
    let script = if nats {
        script.with_store_faults()
    } else {
        script
    };
    let mut cluster = if nats {
        crate::store::require_nats_server()?;
        // A fresh store: an old run's stream would hand the edges its last cue at start.
        let _ = std::fs::remove_dir_all(o.out.join("nats"));
        let c = cue_testkit::nats::NatsCluster::start(&o.out.join("nats"), 3);
        notes.push(format!(
            "store: 3-node JetStream cluster ({}), stream R3, two origins",
            c.store_url()
        ));
        Some(c)
    } else {
        None
    };
    let store_args: Vec<String> = match &cluster {
        Some(c) => vec![
            "--store".into(),
            c.store_url(),
            "--nats-replicas".into(),
            "3".into(),
        ],
        None => vec![],
    };
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let origin_bin = stack::bin(o.bin_dir.as_deref(), "cue-origin")?;
    let edge_bin = stack::bin(o.bin_dir.as_deref(), "cue-edge")?;
    // (process, publish API, relay); `None` once killed.
    let mut origins: Vec<(Option<Proc>, SocketAddr, SocketAddr)> = stack::start_origins(
        &origin_bin,
        &o.out,
        if nats { 2 } else { 1 },
        &store_args,
        &env,
    )?
    .into_iter()
    .map(|org| (Some(org.proc), org.http, org.relay))
    .collect();
    let relays: Vec<SocketAddr> = origins.iter().map(|o| o.2).collect();
    // Prefetch's live signal comes from the last origin: the one no fault kills.
    let http = origins.last().expect("an origin").1;
    let t0 = Instant::now();
    let t0_unix_ms = stack::unix_us() / 1000;

    let prefetch_addr = match start_prefetch(o, &env, http, &script, t0_unix_ms)? {
        Some((p, addr)) => {
            notes.push(format!("cue-prefetch on {addr}"));
            Some((p, addr))
        }
        None => {
            let line = "cue-prefetch is not built yet: the prefetch phase is SKIPPED (devices display cues without stage maps; nothing is faked)".to_string();
            say(o.quiet, &line);
            notes.push(line);
            None
        }
    };
    // QUIC devices need the edges' QUIC listener (one UDP port shared by every edge process)
    // and the certificate they pin.
    let quic_devices = (o.devices as f64 * o.quic_share.clamp(0.0, 1.0)).round() as usize;
    let (quic_args, quic_target) = if quic_devices > 0 {
        let (crt, key, fp) = stack::edge_cert(&o.out)?;
        let port = stack::free_udp_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let args = vec![
            "--quic".to_string(),
            addr.to_string(),
            "--tls-cert".into(),
            crt.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ];
        notes.push(format!(
            "{quic_devices} of the devices use QUIC (cue/1) on {addr}"
        ));
        (args, Some((addr, fp)))
    } else {
        (vec!["--quic".to_string(), "none".to_string()], None)
    };
    let edges_n = script.edges;
    let mut edges: Vec<(Proc, SocketAddr, Vec<String>)> = Vec::new();
    for i in 0..edges_n {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let args = edge_args(&relays, ws, admin, o.edge_cpu, i, &quic_args);
        let p = Proc::start(
            &format!("cue-edge-{i}"),
            &edge_bin,
            &args,
            &env,
            &o.out.join(format!("edge-{i}.log")),
        )?;
        edges.push((p, admin, args));
    }
    let linked = format!("\"origins_linked\":{},", origins.len());
    for (_, admin, _) in &edges {
        stack::wait_http(*admin, "/healthz", Duration::from_secs(15), |b| {
            b.contains(&linked)
        })
        .context("cue-edge did not link")?;
    }
    for (_, http, relay) in &origins {
        notes.push(format!("cue-origin on {http} (relay {relay})"));
    }
    notes.push(format!(
        "{edges_n} cue-edge processes on {ws}, each linked to every origin, pinned to core {}",
        o.edge_cpu
    ));

    // The fleet.
    let ws_devices = o.devices - quic_devices;
    // With two tenants, at least one worker each (worker w's tenant is TENANTS[w % 2]).
    let per_worker = if o.tenants > 1 {
        12_000usize.min(ws_devices.div_ceil(2).max(1))
    } else {
        12_000
    };
    let (tx, rx) = mpsc::channel::<Line>();
    let mut workers = Vec::new();
    // What every worker shares; each sets its devices, edge, source addresses and seed.
    let base = FleetSpec {
        first: 0,
        devices: 0,
        edge: ws,
        prefetch: prefetch_addr.as_ref().map(|x| x.1),
        event: script.event.clone(),
        keys: script.keys(),
        secret: secret.clone(),
        ramp_ms: script.ramp.as_millis() as u64,
        backoff_min_ms: 1000,
        backoff_max_ms: 8000,
        status_ms: 500,
        source_base: 0,
        cpu: fleet_cpu,
        seed: o.seed,
        t0_unix_ms,
        quic_fingerprint: None,
        tenant: None,
    };
    let mut left = ws_devices;
    let mut w = 0;
    while left > 0 {
        let n = left.min(per_worker);
        left -= n;
        let spec = FleetSpec {
            first: w * per_worker,
            devices: n,
            source_base: (w * 2) as u32,
            seed: o.seed.wrapping_add(w as u64),
            tenant: worker_tenant(o, w),
            ..base.clone()
        };
        workers.push(spawn_worker(
            "gameday-worker",
            &serde_json::to_string(&spec)?,
            w,
            &tx,
        )?);
        w += 1;
    }
    let mut left = quic_devices;
    let per_quic_worker = 5_000usize;
    let mut q = 0;
    while let (true, Some((addr, fp))) = (left > 0, quic_target.as_ref()) {
        let n = left.min(per_quic_worker);
        left -= n;
        let spec = FleetSpec {
            first: q * per_quic_worker,
            devices: n,
            edge: *addr,
            source_base: 100 + (q * 20) as u32,
            seed: o.seed.wrapping_add(1000 + q as u64),
            quic_fingerprint: Some(fp.clone()),
            tenant: worker_tenant(o, w),
            ..base.clone()
        };
        workers.push(spawn_worker(
            "gameday-quic-worker",
            &serde_json::to_string(&spec)?,
            w,
            &tx,
        )?);
        w += 1;
        q += 1;
    }
    let nworkers = workers.len();

    // The script.
    let bar = if o.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(script.end.as_secs())
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut statuses: Vec<Status> = vec![Status::default(); nworkers];
    let mut samples: Vec<Sample> = Vec::new();
    let mut marks: Vec<(f64, String, &'static str)> = Vec::new();
    // Per tenant (one entry with one tenant): seq -> (publish time, key).
    let mut published: Vec<HashMap<u64, (u64, String)>> = vec![HashMap::new(); o.tenants];
    let mut actions = script.actions.clone().into_iter().peekable();
    let mut last_sample = Instant::now();
    let mut prev_reqs = 0u64;
    let mut cpu_prev: Vec<f64> = vec![0.0; edges_n];
    let mut killed: Option<usize> = None;
    // Each edge's fanout counters when the script starts (a restarted edge starts from 0): the
    // rate is over the run's fanouts alone, deliveries and CPU counted on the same path.
    let mut fanout_base: Vec<(f64, f64)> = Vec::with_capacity(edges_n);
    for (_, admin, _) in &edges {
        fanout_base.push(crate::fanout::fanout_totals(*admin)?);
    }
    // Tenant t's name is worker t's: the tenants take the workers in turn.
    let tenant_of = |t: usize| worker_tenant(o, t);
    let pub_tokens: Vec<String> = {
        let k = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
        (0..o.tenants)
            .map(|t| {
                format!(
                    "Bearer {}",
                    k.mint_tenant_publisher(
                        tenant_of(t).as_deref(),
                        cue_common::time::unix_now_s(),
                        7200
                    )
                )
            })
            .collect()
    };
    // `--tenants 2`: tenant-b floods publishes from the first cue on.
    let flood_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flooder: Option<std::thread::JoinHandle<(u64, u64)>> = None;
    let mut phase = "ramp".to_string();
    let (pub_tx, pub_rx) = mpsc::channel::<PublishResult>();
    let mut publishers = Vec::new();
    while t0.elapsed() < script.end {
        let now = t0.elapsed();
        while let Some(a) = actions.peek() {
            if a.at > now {
                break;
            }
            let a = actions.next().expect("peeked");
            let t = t0.elapsed().as_secs_f64();
            match &a.action {
                Action::Cue(key) => {
                    // On its own thread: a publish waiting out a NATS election must not hold
                    // the rest of the script back. One per tenant.
                    let t_us = stack::unix_us();
                    let alive: Vec<SocketAddr> = origins
                        .iter()
                        .filter(|o| o.0.is_some())
                        .map(|o| o.1)
                        .collect();
                    for (ti, token) in pub_tokens.iter().enumerate() {
                        let (tx, event, key2, token, alive, tenant) = (
                            pub_tx.clone(),
                            script.event.clone(),
                            key.clone(),
                            token.clone(),
                            alive.clone(),
                            tenant_of(ti),
                        );
                        publishers.push(std::thread::spawn(move || {
                            let r = publish_cue(&alive, tenant.as_deref(), &event, &key2, &token);
                            let _ = tx.send((ti, t_us, key2, r));
                        }));
                    }
                    if o.tenants > 1 && flooder.is_none() {
                        let (stop, token, http) =
                            (flood_stop.clone(), pub_tokens[1].clone(), alive[0]);
                        flooder = Some(std::thread::spawn(move || flood(http, &token, &stop)));
                        notes.push(format!(
                            "{} floods publishes on its event {FLOOD_EVENT} from the first cue to the end, one after another",
                            TENANTS[1]
                        ));
                    }
                    let down = if killed.is_some() {
                        " (an edge is down)"
                    } else {
                        ""
                    };
                    marks.push((t, format!("cue {key}{down}"), "cue"));
                    phase = format!("cue {key}");
                }
                Action::DropDevices(frac) => {
                    for w in &mut workers {
                        let _ = writeln!(w.stdin, "drop {frac}");
                    }
                    marks.push((
                        t,
                        format!("{:.0}% of devices dropped", frac * 100.0),
                        "fault",
                    ));
                }
                Action::KillEdge(i) => {
                    edges[*i].0.kill();
                    killed = Some(*i);
                    marks.push((t, format!("edge {i} killed (SIGKILL)"), "fault"));
                }
                Action::KillNatsNode => {
                    let c = cluster.as_mut().context("no NATS cluster")?;
                    let leader = c
                        .stream_leader("CUE")
                        .context("no node reports the stream's leader (/jsz)")?;
                    c.kill9(c.index_of(&leader));
                    marks.push((
                        t,
                        format!("NATS node {leader} (stream leader) killed (SIGKILL)"),
                        "fault",
                    ));
                }
                Action::KillOrigin(i) => {
                    if let Some(mut p) = origins[*i].0.take() {
                        p.kill();
                    }
                    marks.push((t, format!("origin {i} killed (SIGKILL)"), "fault"));
                }
                Action::RestartEdge(i) => {
                    let args = edges[*i].2.clone();
                    let log = o.out.join(format!("edge-{i}-restart.log"));
                    edges[*i].0 =
                        Proc::start(&format!("cue-edge-{i}"), &edge_bin, &args, &env, &log)?;
                    fanout_base[*i] = (0.0, 0.0);
                    killed = None;
                    marks.push((t, format!("edge {i} restarted"), "fault"));
                }
            }
        }
        drain_published(&pub_rx, &mut published)?;
        while let Ok(l) = rx.try_recv() {
            if let Line::Status(w, s) = l {
                statuses[w] = s;
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(500) {
            let dt = last_sample.elapsed().as_secs_f64();
            last_sample = Instant::now();
            let reqs: u64 = statuses.iter().map(|s| s.prefetch_reqs).sum();
            let mut s = Sample {
                t: t0.elapsed().as_secs_f64(),
                open: statuses.iter().map(|s| s.open).sum(),
                prefetched: statuses.iter().map(|s| s.prefetched).sum(),
                prefetch_rps: (reqs.saturating_sub(prev_reqs)) as f64 / dt,
                reconnects: statuses.iter().map(|s| s.reconnects).sum(),
                ..Default::default()
            };
            prev_reqs = reqs;
            for (i, (p, _, _)) in edges.iter().enumerate() {
                if killed == Some(i) {
                    continue;
                }
                let cpu = stack::cpu_s(p.pid())?;
                if cpu >= cpu_prev[i] {
                    s.edge_cpu_pct += (cpu - cpu_prev[i]) / dt * 100.0;
                }
                cpu_prev[i] = cpu;
                s.edge_rss += stack::rss(p.pid())?;
            }
            s.slab = stack::slab_bytes()?;
            bar.set_position(t0.elapsed().as_secs());
            bar.set_message(format!(
                "{phase} | {} devices on | {} maps",
                s.open, s.prefetched
            ));
            samples.push(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bar.finish_and_clear();
    flood_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded = match flooder {
        Some(h) => Some(
            h.join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))?,
        ),
        None => None,
    };
    for p in publishers {
        let _ = p.join();
    }
    drain_published(&pub_rx, &mut published)?;

    // The end: every device reports.
    for w in &mut workers {
        let _ = writeln!(w.stdin, "report");
    }
    let mut reports: Vec<Option<FleetReport>> = (0..nworkers).map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reports.iter().any(|r| r.is_none()) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Line::Report(w, r)) => reports[w] = Some(*r),
            Ok(Line::Gone(w)) if reports[w].is_none() => {
                bail!("fleet worker {w} exited without a report")
            }
            Ok(_) => {}
            Err(_) => bail!("fleet workers did not report within 60 s"),
        }
    }
    for w in &mut workers {
        let _ = w.proc.wait();
    }
    let reports: Vec<FleetReport> = reports
        .into_iter()
        .map(|r| r.expect("all reported"))
        .collect();

    // Edge figures for the at-scale estimate, from the edges' own counters over the script:
    // WebSocket deliveries made by fanout slices per CPU-second of those slices (catch-up and
    // flushes are not in either; QUIC has its own figures in `cue-bench fanout --transport
    // mixed`). An edge whose counters cannot be read fails the run.
    let (mut deliveries, mut fanout_cpu) = (0.0, 0.0);
    for (i, (_, admin, _)) in edges.iter().enumerate() {
        let (d, c) =
            crate::fanout::fanout_totals(*admin).with_context(|| format!("edge {i} at the end"))?;
        deliveries += d - fanout_base[i].0;
        fanout_cpu += c - fanout_base[i].1;
    }
    for (p, _, _) in &mut edges {
        p.stop(Duration::from_secs(5));
    }
    if let Some((mut p, _)) = prefetch_addr {
        p.stop(Duration::from_secs(5));
    }
    for (p, _, _) in &mut origins {
        if let Some(p) = p {
            p.stop(Duration::from_secs(5));
        }
    }
    drop(cluster);

    // One summary per tenant, over its workers' devices and its own cues.
    let mut summaries = Vec::new();
    let mut tenant_devices = Vec::new();
    for (ti, published) in published.iter().enumerate() {
        let mine: Vec<FleetReport> = reports
            .iter()
            .enumerate()
            .filter(|(w, _)| o.tenants == 1 || worker_tenant(o, *w).as_deref() == Some(TENANTS[ti]))
            .map(|(_, r)| r.clone())
            .collect();
        tenant_devices.push(mine.iter().map(|r| r.newest.len()).sum::<usize>());
        summaries.push(report::summarize(
            &script, o, &mine, published, &samples, &marks, &notes, deliveries, fanout_cpu,
        )?);
    }
    let mut summary = summaries[0].clone();
    if o.tenants > 1 {
        let side: Vec<serde_json::Value> = summaries
            .iter()
            .zip(TENANTS)
            .zip(&tenant_devices)
            .map(|((s, t), n)| {
                json!({
                    "tenant": t,
                    "devices": n,
                    "missed": s["missed"],
                    "displayed_without_stage_map": s["displayed_without_stage_map"],
                    "latency_ms": s["latency_ms"],
                    "cues": s["cues"],
                })
            })
            .collect();
        summary["tenants"] = json!(side);
        let (ok, refused) = flooded.unwrap_or((0, 0));
        summary["flood"] = json!({
            "tenant": TENANTS[1],
            "event": FLOOD_EVENT,
            "published": ok,
            "refused_429": refused,
        });
        summary["figures_are_of"] = json!(TENANTS[0]);
    }
    std::fs::write(
        o.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let html = report::html(&summary, &samples, &marks);
    let index = o.out.join("index.html");
    std::fs::write(&index, html)?;
    let mut s = summary;
    s["report"] = json!(index.display().to_string());
    // Every tenant's devices must end on its newest cue: a miss fails the run (the report is
    // written first, to show where).
    for (t, m) in summaries.iter().map(|x| &x["missed"]).enumerate() {
        if m.as_u64() != Some(0) {
            bail!(
                "{} device(s) of {} did not end on the newest cue; report {}",
                m,
                if o.tenants > 1 {
                    TENANTS[t]
                } else {
                    "the fleet"
                },
                index.display()
            );
        }
    }
    if !o.quiet {
        eprintln!(
            "missed {} | displayed without stage map {} | latency p50 {} ms p99 {} ms | report {}",
            s["missed"],
            s["displayed_without_stage_map"],
            s["latency_ms"]["p50"],
            s["latency_ms"]["p99"],
            index.display()
        );
        eprintln!("{}", scale::line(&s["at_scale"]));
    }
    Ok(s)
}

/// Publishes `key` to the first origin still running, retrying (with an `Idempotency-Key`, so a
/// retry never makes a second cue) on another origin or after a pause for up to 15 s; the seq.
/// A publish thread's answer: when it started (Unix µs), the key, the seq or why not.
type PublishResult = (usize, u64, String, anyhow::Result<u64>);

/// Takes the publishes that have been answered into `published` (per tenant, seq -> (time,
/// key)); a publish that failed fails the run.
fn drain_published(
    rx: &mpsc::Receiver<PublishResult>,
    published: &mut [HashMap<u64, (u64, String)>],
) -> anyhow::Result<()> {
    while let Ok((ti, t_us, key, r)) = rx.try_recv() {
        published[ti].insert(r?, (t_us, key));
    }
    Ok(())
}

/// Publishes on tenant `TENANTS[1]`'s [`FLOOD_EVENT`] at `http` with `token`, one after
/// another, until `stop`: (published, refused). A `429` (the tenant's quota) is honoured as a
/// well-behaved publisher does, by waiting its `Retry-After` (1 s) before the next burst, so the
/// tenant's own scripted cues get through between bursts; any other failure counts as refused.
fn flood(http: SocketAddr, token: &str, stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    let (mut ok, mut refused, mut n) = (0u64, 0u64, 0u64);
    let path = format!("/v1/tenants/{}/events/{FLOOD_EVENT}/cues", TENANTS[1]);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        match cue_testkit::client::request(
            http,
            "POST",
            &path,
            &[
                ("Authorization", token),
                ("Content-Type", "application/json"),
            ],
            format!("{{\"key\":\"f-{n}\"}}").as_bytes(),
        ) {
            Ok(r) if r.status == 201 => ok += 1,
            Ok(r) if r.status == 429 => {
                refused += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => refused += 1,
        }
    }
    (ok, refused)
}

fn publish_cue(
    origins: &[SocketAddr],
    tenant: Option<&str>,
    event: &str,
    key: &str,
    token: &str,
) -> anyhow::Result<u64> {
    let t = Instant::now();
    let idem = format!("gameday-{}-{event}-{key}", tenant.unwrap_or("_default"));
    let path = match tenant {
        Some(t) => format!("/v1/tenants/{t}/events/{event}/cues"),
        None => format!("/v1/events/{event}/cues"),
    };
    let mut last = String::new();
    while t.elapsed() < Duration::from_secs(15) {
        for http in origins {
            match cue_testkit::client::request(
                *http,
                "POST",
                &path,
                &[
                    ("Authorization", token),
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", &idem),
                ],
                format!("{{\"key\":\"{key}\"}}").as_bytes(),
            ) {
                Ok(r) if r.status == 201 => {
                    let v: serde_json::Value = serde_json::from_str(&r.body)?;
                    return v["seq"].as_u64().context("201 without seq");
                }
                // 503: the store; 429: the tenant's quota (its own flood): both say retry.
                Ok(r) if r.status == 503 || r.status == 429 => {
                    last = format!("{http}: {} {}", r.status, r.body)
                }
                Ok(r) => bail!("publishing {key}: {} {}", r.status, r.body),
                Err(e) => last = format!("{http}: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("publishing {key}: no origin took it within 15 s (last: {last})")
}

/// Starts a fleet worker process (`cue-bench KIND SPEC`) and a thread that turns its stdout
/// lines into [`Line`]s on `tx`.
fn spawn_worker(
    kind: &str,
    spec: &str,
    w: usize,
    tx: &mpsc::Sender<Line>,
) -> anyhow::Result<Worker> {
    let mut child = crate::stack::child_command(std::env::current_exe()?)
        .arg(kind)
        .arg(spec)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take().expect("piped");
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            let msg = if l.contains("\"newest\"") {
                match serde_json::from_str(&l) {
                    Ok(r) => Line::Report(w, Box::new(r)),
                    Err(_) => continue,
                }
            } else {
                match serde_json::from_str(&l) {
                    Ok(s) => Line::Status(w, s),
                    Err(_) => continue,
                }
            };
            if tx.send(msg).is_err() {
                break;
            }
        }
        let _ = tx.send(Line::Gone(w));
    });
    Ok(Worker { proc: child, stdin })
}

/// Starts `cue-prefetch` with a catalog for the script's event, if the binary exists and is the
/// real service (the placeholder crate has no binary).
fn start_prefetch(
    o: &GamedayOpts,
    env: &[(&str, String)],
    origin_http: SocketAddr,
    script: &Script,
    t0_unix_ms: u64,
) -> anyhow::Result<Option<(Proc, SocketAddr)>> {
    let Ok(bin) = stack::bin(o.bin_dir.as_deref(), "cue-prefetch") else {
        return Ok(None);
    };
    let catalog = o.out.join("catalog");
    // A fresh catalog: an old run's tenants must not linger.
    let _ = std::fs::remove_dir_all(&catalog);
    std::fs::create_dir_all(&catalog)?;
    // One tenant: the default tenant's event; two: each tenant's event of the same name.
    let dirs: Vec<PathBuf> = if o.tenants > 1 {
        TENANTS.iter().map(|t| catalog.join(t)).collect()
    } else {
        vec![catalog.clone()]
    };
    for d in dirs {
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join(format!("{}.json", script.event)),
            script.catalog_json(t0_unix_ms).to_string(),
        )?;
    }
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let args: Vec<String> = vec![
        "--http".into(),
        addr.to_string(),
        "--origin-http".into(),
        format!("http://{origin_http}"),
        "--catalog".into(),
        catalog.display().to_string(),
    ];
    let p = Proc::start(
        "cue-prefetch",
        &bin,
        &args,
        env,
        &o.out.join("prefetch.log"),
    )?;
    stack::wait_http(addr, "/healthz", Duration::from_secs(10), |_| true)
        .context("cue-prefetch did not start")?;
    Ok(Some((p, addr)))
}
