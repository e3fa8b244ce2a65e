//! The game day's QUIC devices (`cue/1`, quinn client, the edge's certificate pinned by its
//! SHA-256): the same life as the WebSocket devices of [`super::fleet`] on the other transport.
//! Each connects at its moment on the ramp, asks `/schedule` and fetches its stage map at
//! `prefetch_at`, sends the hello line (with `since` once it holds a cue), reads cue lines,
//! checks each against its map, and reconnects with jittered backoff when the connection is
//! lost or the parent drops it. Same parent protocol and report as [`super::fleet`].

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fleet::{FleetReport, FleetSpec, Status};
use crate::worker::{pin, source_addr};

#[derive(Default)]
struct Dev {
    newest: u64,
    map: u64,
    open: bool,
    bad_display: bool,
}

#[derive(Default)]
struct Shared {
    devs: Vec<Dev>,
    report: FleetReport,
}

type State = Arc<Mutex<Shared>>;

/// Runs a QUIC game-day worker.
pub fn run(spec: FleetSpec) -> anyhow::Result<()> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
        let _ = tx.send("quit".into());
    });
    let spec = Arc::new(spec);
    rt.block_on(async move {
        // Devices notice a dead edge by themselves: keep-alive every second, idle after 5 s.
        let fingerprint = spec
            .quic_fingerprint
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("a QUIC fleet needs the edge certificate fingerprint"))?;
        let cfg = crate::quic_worker::client_config_with(
            fingerprint,
            Duration::from_secs(5),
            Some(Duration::from_secs(1)),
        )?;
        let keys = cue_common::token::TokenKeys::new(spec.secret.as_bytes()).map_err(anyhow::Error::msg)?;
        let now_s = cue_common::time::unix_now_s();
        let state: State = Arc::new(Mutex::new(Shared {
            devs: (0..spec.devices).map(|_| Dev::default()).collect(),
            ..Default::default()
        }));
        let (drop_tx, _) = tokio::sync::broadcast::channel::<f64>(16);
        // One UDP socket per 500 devices, each on its own source address.
        let mut eps = Vec::new();
        for e in 0..spec.devices.div_ceil(500).max(1) {
            eps.push(crate::quic_worker::client_endpoint(source_addr(spec.source_base, e, 1), &cfg)?);
        }
        for i in 0..spec.devices {
            let token = keys.mint_tenant_device(spec.tenant.as_deref(), &format!("qdev-{}", spec.first + i), std::slice::from_ref(&spec.event), now_s, 7200);
            let ep = eps[i / 500].clone();
            let (spec, state, drops) = (spec.clone(), state.clone(), drop_tx.subscribe());
            tokio::spawn(device(i, ep, token, spec, state, drops));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(spec.status_ms));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    println!("{}", serde_json::to_string(&status(&spec, &state))?);
                    std::io::stdout().flush()?;
                }
                cmd = rx.recv() => {
                    let cmd = cmd.unwrap_or_else(|| "quit".into());
                    let mut it = cmd.split_whitespace();
                    match it.next() {
                        Some("drop") => {
                            let f: f64 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
                            let _ = drop_tx.send(f);
                        }
                        Some("report") => {
                            let st = status(&spec, &state);
                            let mut s = state.lock().expect("fleet lock");
                            let mut r = std::mem::take(&mut s.report);
                            r.status = st;
                            r.newest = s.devs.iter().map(|d| d.newest).collect();
                            r.displayed_without_map = s.devs.iter().filter(|d| d.bad_display).count();
                            println!("{}", serde_json::to_string(&r)?);
                            std::io::stdout().flush()?;
                            return Ok(());
                        }
                        Some("quit") => return Ok(()),
                        _ => {}
                    }
                }
            }
        }
    })
}

fn status(spec: &FleetSpec, state: &State) -> Status {
    let s = state.lock().expect("fleet lock");
    Status {
        t_ms: (crate::stack::unix_us() / 1000).saturating_sub(spec.t0_unix_ms),
        open: s.devs.iter().filter(|d| d.open).count(),
        prefetched: s.devs.iter().filter(|d| d.map != 0).count(),
        ..s.report.status.clone()
    }
}

async fn device(
    i: usize,
    ep: quinn::Endpoint,
    token: String,
    spec: Arc<FleetSpec>,
    state: State,
    mut drops: tokio::sync::broadcast::Receiver<f64>,
) {
    let mut rng =
        rand::rngs::SmallRng::seed_from_u64(spec.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=spec.ramp_ms))).await;
    if let Some(addr) = spec.prefetch {
        let (spec, state, token) = (spec.clone(), state.clone(), token.clone());
        tokio::spawn(async move { prefetch(i, addr, &spec, &state, &token).await });
    }
    let mut attempts = 0u32;
    loop {
        let since = state.lock().expect("fleet lock").devs[i].newest;
        let lost = session(i, &ep, &token, since, &spec, &state, &mut drops, &mut rng).await;
        state.lock().expect("fleet lock").devs[i].open = false;
        if lost == Lost::Refused {
            attempts += 1;
        } else {
            attempts = 1;
        }
        state.lock().expect("fleet lock").report.status.reconnects += 1;
        let ceil = (spec.backoff_min_ms << attempts.min(6)).min(spec.backoff_max_ms);
        let ms = rng.gen_range(spec.backoff_min_ms..=ceil.max(spec.backoff_min_ms));
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[derive(PartialEq, Eq)]
enum Lost {
    Refused,
    Dropped,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    i: usize,
    ep: &quinn::Endpoint,
    token: &str,
    since: u64,
    spec: &FleetSpec,
    state: &State,
    drops: &mut tokio::sync::broadcast::Receiver<f64>,
    rng: &mut rand::rngs::SmallRng,
) -> Lost {
    let Ok(connecting) = ep.connect(spec.edge, "localhost") else {
        return Lost::Refused;
    };
    let Ok(conn) = connecting.await else {
        return Lost::Refused;
    };
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Lost::Refused;
    };
    let mut hello = serde_json::json!({"events": [spec.event], "token": token, "format": "json"});
    if since > 0 {
        hello["since"] = serde_json::json!({ spec.event.clone(): since });
    }
    let mut line = hello.to_string().into_bytes();
    line.push(b'\n');
    if send.write_all(&line).await.is_err() {
        return Lost::Refused;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut answered = false;
    loop {
        while let Some(n) = buf.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = buf.drain(..=n).collect();
            if !answered {
                let ok = serde_json::from_slice::<serde_json::Value>(&l[..n])
                    .is_ok_and(|v| v["ok"] == true);
                if !ok {
                    return Lost::Refused;
                }
                answered = true;
                state.lock().expect("fleet lock").devs[i].open = true;
                continue;
            }
            if let Ok(c) = cue_common::cue::Cue::from_json(&l[..n]) {
                display(i, c.seq(), c.key(), spec, state);
            }
        }
        tokio::select! {
            r = recv.read(&mut chunk) => match r {
                Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
                _ => return Lost::Dropped,
            },
            f = drops.recv() => {
                if let Ok(f) = f {
                    if answered && rng.gen_bool(f.clamp(0.0, 1.0)) {
                        // The device vanishes (its network went away).
                        conn.close(0u32.into(), b"gone");
                        return Lost::Dropped;
                    }
                }
            }
        }
    }
}

fn display(i: usize, seq: u64, key: &str, spec: &FleetSpec, state: &State) {
    let now = crate::stack::unix_us();
    let mut s = state.lock().expect("fleet lock");
    let d = &mut s.devs[i];
    if seq <= d.newest {
        s.report.duplicates += 1;
        return;
    }
    d.newest = seq;
    if spec.prefetch.is_some() {
        let bit = spec.keys.iter().position(|k| k == key);
        if bit.is_none_or(|b| d.map & (1 << b) == 0) {
            d.bad_display = true;
        }
    }
    s.report.displayed += 1;
    s.report.arrivals.entry(seq).or_default().push(now);
}

/// Schedule, wait, fetch (retrying on errors and 503 with its Retry-After).
async fn prefetch(i: usize, addr: SocketAddr, spec: &FleetSpec, state: &State, token: &str) {
    let dev = format!("qdev-{}", spec.first + i);
    let ev = &spec.event;
    let at = loop {
        match get(
            addr,
            &format!("/v1/events/{ev}/schedule?device={dev}"),
            token,
            "normal",
            state,
        )
        .await
        {
            Ok((200, _, body)) => {
                if let Some(at) = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["prefetch_at"].as_u64())
                {
                    break at;
                }
            }
            Ok((503, ra, _)) => tokio::time::sleep(Duration::from_secs(ra.max(1))).await,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    tokio::time::sleep(Duration::from_millis(
        at.saturating_sub(crate::stack::unix_us() / 1000),
    ))
    .await;
    loop {
        let prio = if state.lock().expect("fleet lock").devs[i].newest > 0 {
            "critical"
        } else {
            "normal"
        };
        match get(
            addr,
            &format!("/v1/events/{ev}/prefetch?device={dev}"),
            token,
            prio,
            state,
        )
        .await
        {
            Ok((200, _, body)) => {
                let v: Option<serde_json::Value> = serde_json::from_str(&body).ok();
                if let Some(obj) = v.as_ref().and_then(|v| v["stages"].as_object()) {
                    let mut map = 0u64;
                    for k in obj.keys() {
                        if let Some(b) = spec.keys.iter().position(|x| x == k) {
                            map |= 1 << b;
                        }
                    }
                    state.lock().expect("fleet lock").devs[i].map = map;
                    return;
                }
            }
            Ok((503, ra, _)) => tokio::time::sleep(Duration::from_secs(ra.max(1))).await,
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// One GET with `Connection: close`; (status, Retry-After seconds, body).
async fn get(
    addr: SocketAddr,
    path: &str,
    token: &str,
    prio: &str,
    state: &State,
) -> std::io::Result<(u16, u64, String)> {
    {
        let mut s = state.lock().expect("fleet lock");
        s.report.status.prefetch_reqs += 1;
    }
    let r = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: prefetch\r\nAuthorization: Bearer {token}\r\nX-Cue-Priority: {prio}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.take(1 << 20).read_to_end(&mut resp).await?;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        let ra = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after:").map(|v| v.trim().parse().unwrap_or(1)))
            .unwrap_or(1);
        Ok::<_, std::io::Error>((status, ra, body.to_string()))
    }
    .await;
    let mut s = state.lock().expect("fleet lock");
    match &r {
        Ok((503, _, _)) => s.report.status.prefetch_shed += 1,
        Ok((200, _, _)) => {}
        _ => s.report.status.prefetch_errors += 1,
    }
    r
}
