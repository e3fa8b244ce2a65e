//! `cue-bench storm`: a reconnect storm with a token per device, HS256 against EdDSA, in one
//! run. For each: edge processes sharing one port on one core (HS256 with a shared secret;
//! EdDSA with the public key set only), `--devices` devices each with its own token connect
//! (cold: every token is checked for real), all drop at once, and all connect again at once
//! (warm: what a reconnect storm after an edge or network blip costs), each presenting the
//! admission ticket its first upgrade handed out, as a device keeps a cookie. The figure is the
//! time until every device is connected again. A third phase runs EdDSA with tickets off
//! (`--no-admit-tickets`), to show what they spare.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::stack::{self, free_port, Proc};
use crate::worker::{WorkerProc, WorkerSpec};

/// Options of `cue-bench storm`.
#[derive(Debug, Clone)]
pub struct StormOpts {
    /// Devices.
    pub devices: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Directory of the Cue binaries.
    pub bin_dir: Option<PathBuf>,
    /// Core of the edges; the fleet gets the other.
    pub edge_cpu: usize,
    /// Reconnect storms per phase (the median is reported).
    pub rounds: usize,
}

const PER_WORKER: usize = 10_000;
/// Source addresses per worker: one for its first connects and one per reconnect round.
const ROUNDS_MAX_BLOCKS: usize = 21;

/// Connects `tokens.len()` devices (worker w takes its own file); (connected, seconds).
/// Each worker gets a block of source addresses for its first connects and the next for its
/// reconnects; each phase (`phase_no`) has blocks of its own, so no phase connects from
/// addresses another left in TIME_WAIT.
fn connect_all(
    ws: SocketAddr,
    files: &[PathBuf],
    counts: &[usize],
    cpu: Option<usize>,
    phase_no: usize,
) -> anyhow::Result<(usize, f64, Vec<WorkerProc>)> {
    let t = Instant::now();
    let mut workers = Vec::new();
    for (w, (f, n)) in files.iter().zip(counts).enumerate() {
        workers.push(WorkerProc::start(&WorkerSpec {
            target: ws,
            host: ws.to_string(),
            path: "/v1/subscribe?events=storm".into(),
            paths: Vec::new(),
            token: None,
            tokens_file: Some(f.clone()),
            devices: *n,
            // A worker holds at most PER_WORKER devices: one address each time it connects.
            source_base: (ROUNDS_MAX_BLOCKS * (phase_no * files.len() + w)) as u32,
            per_source: PER_WORKER,
            concurrency: 512,
            cpu,
            connect_timeout_s: 120,
        })?);
    }
    let mut connected = 0;
    for w in &mut workers {
        let l: serde_json::Value = serde_json::from_str(&w.line()?)?;
        connected += l["ready"].as_u64().context("worker ready line")? as usize;
    }
    Ok((connected, t.elapsed().as_secs_f64(), workers))
}

/// Every worker drops its devices and connects them again at once; (connected, seconds).
fn reconnect_all(workers: &mut [WorkerProc]) -> anyhow::Result<(usize, f64)> {
    let t = Instant::now();
    for w in workers.iter_mut() {
        w.send("reconnect")?;
    }
    let mut connected = 0;
    for w in workers.iter_mut() {
        let l: serde_json::Value = serde_json::from_str(&w.line()?)?;
        connected += l["ready"].as_u64().context("worker ready line")? as usize;
    }
    Ok((connected, t.elapsed().as_secs_f64()))
}

fn phase(o: &StormOpts, name: &str) -> anyhow::Result<serde_json::Value> {
    let (alg, tickets, phase_no) = match name {
        "HS256" => ("HS256", false, 0),
        "EdDSA" => ("EdDSA", true, 1),
        _ => ("EdDSA", false, 2),
    };
    let dir = o.out.join(name);
    std::fs::create_dir_all(&dir)?;
    let now = cue_common::time::unix_now_s();
    let claims = |i: usize| cue_common::token::Claims {
        sub: Some(format!("storm-{i}")),
        events: Some(vec!["storm".into()]),
        role: None,
        priority: None,
        tenant: None,
        exp: now + 3600,
    };
    // The tokens, and how the edges check them.
    let (tokens, mut env, mut extra): (Vec<String>, Vec<(&str, String)>, Vec<String>) = if alg
        == "HS256"
    {
        let secret = stack::random_secret();
        let k = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
        (
            (0..o.devices).map(|i| k.mint(&claims(i))).collect(),
            vec![("CUE_AUTH_SECRET", secret)],
            vec![],
        )
    } else {
        let k = cue_common::keys::SigningKeys::generate(cue_common::keys::KeyAlg::EdDSA, now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let public = dir.join("token-keys.pub.json");
        std::fs::write(&public, k.export())?;
        (
            (0..o.devices).map(|i| k.mint(&claims(i))).collect(),
            vec![],
            vec!["--keys".into(), public.display().to_string()],
        )
    };
    if alg != "HS256" && std::env::var_os("CUE_AUTH_SECRET").is_some() {
        bail!("unset CUE_AUTH_SECRET: it would make the edges use HS256 in the EdDSA phase");
    }
    env.push(("CUE_LOG", "warn".into()));
    let (mut files, mut counts) = (Vec::new(), Vec::new());
    for (w, chunk) in tokens.chunks(PER_WORKER).enumerate() {
        let f = dir.join(format!("tokens-{w}.json"));
        std::fs::write(&f, serde_json::to_string(chunk)?)?;
        files.push(f);
        counts.push(chunk.len());
    }
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let nobody = format!("127.0.0.1:{}", free_port()?);
    let edge_bin = stack::bin(o.bin_dir.as_deref(), "cue-edge")?;
    let mut edges = Vec::new();
    let mut admins = Vec::new();
    for i in 0..o.devices.div_ceil(crate::fanout::PER_PROCESS).max(1) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut args: Vec<String> = [
            "--origin",
            &nobody,
            "--ws",
            &ws.to_string(),
            "--admin",
            &admin.to_string(),
            "--shards",
            "1",
            "--cpus",
            &o.edge_cpu.to_string(),
            "--quic",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.append(&mut extra.clone());
        // Every process of the host shares one ticket secret, as on a real host.
        args.extend([
            "--ticket-secret-file".into(),
            dir.join("admit-ticket.secret").display().to_string(),
            "--quic-reset-secret-file".into(),
            dir.join("quic-reset.secret").display().to_string(),
        ]);
        if !tickets {
            args.push("--no-admit-tickets".into());
        }
        edges.push(Proc::start(
            &format!("cue-edge-{i}"),
            &edge_bin,
            &args,
            &env,
            &dir.join(format!("edge-{i}.log")),
        )?);
        stack::wait_http(admin, "/healthz", Duration::from_secs(15), |_| true)
            .context("cue-edge did not start")?;
        admins.push(admin);
    }
    extra.clear();
    let fleet_cpu = stack::fleet_cpu(o.edge_cpu);
    let (cold_n, cold_s, mut workers) = connect_all(ws, &files, &counts, fleet_cpu, phase_no)?;
    if cold_n != o.devices {
        bail!(
            "{name}: {cold_n} of {} devices connected (cold); logs in {}",
            o.devices,
            dir.display()
        );
    }
    // Everyone drops at once and comes back at once, `rounds` times.
    let mut rounds = Vec::new();
    for _ in 0..o.rounds {
        let (warm_n, warm_s) = reconnect_all(&mut workers)?;
        if warm_n != o.devices {
            bail!(
                "{name}: {warm_n} of {} devices reconnected; logs in {}",
                o.devices,
                dir.display()
            );
        }
        rounds.push(warm_s);
    }
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let warm_s = sorted[sorted.len() / 2];
    let (mut hits, mut ticket_hits, mut refused) = (0.0, 0.0, 0.0);
    for a in &admins {
        let r = cue_testkit::client::request(*a, "GET", "/metrics", &[], b"")
            .with_context(|| format!("reading {a}/metrics"))?;
        let m = |name: &str| {
            crate::fanout::metric_value(&r.body, name)
                .with_context(|| format!("{name} missing from {a}/metrics"))
        };
        hits += m("cue_edge_token_cache_hits_total")?;
        ticket_hits += m("cue_edge_admit_ticket_hits_total")?;
        refused += m("cue_edge_admit_tickets_refused_total")?;
    }
    if tickets && ticket_hits < (o.devices * o.rounds) as f64 {
        bail!(
            "{name}: only {ticket_hits} of {} reconnects used their ticket ({refused} refused); logs in {}",
            o.devices * o.rounds,
            dir.display()
        );
    }
    for mut w in workers {
        let _ = w.send("quit");
        w.wait();
    }
    for mut e in edges {
        e.stop(Duration::from_secs(5));
    }
    Ok(json!({
        "cold_connect_s": cold_s,
        "reconnect_s": warm_s,
        "reconnect_rounds_s": rounds,
        "token_cache_hits": hits,
        "ticket_hits": ticket_hits,
        "tickets_refused": refused,
    }))
}

/// Both phases; the JSON, and a table on stderr.
pub fn run(o: &StormOpts) -> anyhow::Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(&o.out);
    std::fs::create_dir_all(&o.out)?;
    let hs = phase(o, "HS256")?;
    let ed = phase(o, "EdDSA")?;
    let bare = phase(o, "EdDSA-no-tickets")?;
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let (cold, warm) = (
        f(&ed, "cold_connect_s") / f(&hs, "cold_connect_s"),
        f(&ed, "reconnect_s") / f(&hs, "reconnect_s"),
    );
    eprintln!(
        "| {} devices, a token each | HS256 | EdDSA | EdDSA / HS256 |",
        o.devices
    );
    eprintln!("| --- | --- | --- | --- |");
    eprintln!(
        "| first connect (every token checked) | {:.2} s | {:.2} s | {cold:.2} |",
        f(&hs, "cold_connect_s"),
        f(&ed, "cold_connect_s")
    );
    eprintln!(
        "| all reconnect at once (median of {}) | {:.2} s | {:.2} s | {warm:.2} |",
        o.rounds,
        f(&hs, "reconnect_s"),
        f(&ed, "reconnect_s")
    );
    eprintln!(
        "| all reconnect at once, tickets off | {:.2} s | {:.2} s | {:.2} |",
        f(&hs, "reconnect_s"),
        f(&bare, "reconnect_s"),
        f(&bare, "reconnect_s") / f(&hs, "reconnect_s")
    );
    eprintln!(
        "EdDSA reconnects: {} ticket admissions, {} per-shard cache hits; tickets off: {} cache hits",
        ed["ticket_hits"], ed["token_cache_hits"], bare["token_cache_hits"]
    );
    Ok(json!({
        "scenario": "storm",
        "devices": o.devices,
        "hs256": hs,
        "eddsa": ed,
        "eddsa_no_tickets": bare,
        "eddsa_no_tickets_to_hs256_reconnect": f(&bare, "reconnect_s") / f(&hs, "reconnect_s"),
        "eddsa_to_hs256_first_connect": cold,
        "eddsa_to_hs256_reconnect": warm,
    }))
}
