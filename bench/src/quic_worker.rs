//! A QUIC fleet worker: one process holding synthetic `cue/1` devices with quinn (its own
//! single-threaded tokio runtime, pinned to the fleet core). Devices are spread over many client
//! endpoints (UDP sockets on distinct 127.0.0.x sources), so the kernel's `SO_REUSEPORT` hash
//! spreads them over the edge processes as it does TCP connections. Each device opens its
//! stream, writes its hello, checks `{"ok":true}` and records the arrival time of every cue.
//!
//! Same protocol with the parent as the WebSocket worker: `{"ready":N,...}` once connected,
//! then `report` -> one [`WorkerReport`] line.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::worker::{pin, source_addr, WorkerReport};

/// QUIC worker settings (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuicWorkerSpec {
    /// Edge QUIC address.
    pub target: SocketAddr,
    /// SHA-256 (hex) of the edge certificate to trust.
    pub fingerprint: String,
    /// The hello line (without newline).
    pub hello: String,
    /// Devices to hold.
    pub devices: usize,
    /// Devices per client endpoint (UDP socket).
    pub per_endpoint: usize,
    /// First source address index (as the WebSocket worker's).
    pub source_base: u32,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Core to pin to.
    pub cpu: Option<usize>,
    /// Give up connecting after this long.
    pub connect_timeout_s: u64,
}

pub(crate) fn client_config(fingerprint: &str) -> anyhow::Result<quinn::ClientConfig> {
    // The fleet must not be what times out: the edge's keep-alive and idle timeout rule.
    client_config_with(fingerprint, Duration::from_secs(120), None)
}

/// A client config pinning `fingerprint`, with the device's own idle timeout and keep-alive
/// (a device that must notice a dead edge by itself, as the game day's do).
pub(crate) fn client_config_with(
    fingerprint: &str,
    idle: Duration,
    keep_alive: Option<Duration>,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(cue_edge::tls::PinnedFingerprint::new(fingerprint))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"cue/1".to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut c = quinn::ClientConfig::new(Arc::new(q));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(idle.try_into()?));
    t.keep_alive_interval(keep_alive);
    c.transport_config(Arc::new(t));
    Ok(c)
}

pub(crate) fn client_endpoint(
    src: std::net::Ipv4Addr,
    cfg: &quinn::ClientConfig,
) -> anyhow::Result<quinn::Endpoint> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // A fanout brings one datagram per device on this socket at once.
    let _ = s.set_recv_buffer_size(8 << 20);
    unsafe {
        let v: libc::c_int = 8 << 20;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    let mut e = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        s.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    e.set_default_client_config(cfg.clone());
    Ok(e)
}

#[derive(Default)]
struct Shared {
    report: WorkerReport,
    /// Newest seq per device index.
    newest: Vec<Option<u64>>,
    in_flight: usize,
}

async fn device(
    i: usize,
    ep: quinn::Endpoint,
    spec: Arc<QuicWorkerSpec>,
    shared: Arc<Mutex<Shared>>,
) {
    let opened = async {
        let conn = ep
            .connect(spec.target, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut line = spec.hello.clone().into_bytes();
        line.push(b'\n');
        send.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 4096];
        loop {
            if let Some(n) = buf.iter().position(|&b| b == b'\n') {
                let answer: serde_json::Value =
                    serde_json::from_slice(&buf[..n]).map_err(|e| e.to_string())?;
                buf.drain(..=n);
                if answer["ok"] != true {
                    return Err(format!("refused: {answer}"));
                }
                return Ok((conn, send, recv, buf));
            }
            match recv.read(&mut chunk).await.map_err(|e| e.to_string())? {
                Some(n) => buf.extend_from_slice(&chunk[..n]),
                None => return Err("stream finished before the answer".into()),
            }
        }
    };
    let (_conn, _send, mut recv, mut buf) = match opened.await {
        Ok(x) => {
            let mut s = shared.lock().expect("fleet lock");
            s.in_flight -= 1;
            s.newest[i] = Some(0);
            s.report.connected += 1;
            x
        }
        Err(e) => {
            let mut s = shared.lock().expect("fleet lock");
            s.in_flight -= 1;
            s.report.failed += 1;
            if s.report.failed <= 3 {
                eprintln!("quic worker: device {i}: {e}");
            }
            return;
        }
    };
    let mut chunk = vec![0u8; 4096];
    loop {
        while let Some(n) = buf.iter().position(|&b| b == b'\n') {
            let now = crate::stack::unix_us();
            if let Ok(c) = cue_common::cue::Cue::from_json(&buf[..n]) {
                let mut s = shared.lock().expect("fleet lock");
                s.report.frames += 1;
                s.report.arrivals.entry(c.seq()).or_default().push(now);
                let e = s.newest[i].get_or_insert(0);
                *e = (*e).max(c.seq());
            }
            buf.drain(..=n);
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            _ => {
                let mut s = shared.lock().expect("fleet lock");
                s.report.closed += 1;
                s.newest[i] = None;
                return;
            }
        }
    }
}

/// Runs a QUIC worker until the parent says `report` or `quit`.
pub fn run(spec: QuicWorkerSpec) -> anyhow::Result<()> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if cmd_tx.send(l).is_err() {
                break;
            }
        }
        let _ = cmd_tx.send("quit".into());
    });
    let spec = Arc::new(spec);
    rt.block_on(async move {
        let cfg = client_config(&spec.fingerprint)?;
        let shared = Arc::new(Mutex::new(Shared {
            newest: vec![None; spec.devices],
            ..Default::default()
        }));
        let neps = spec.devices.div_ceil(spec.per_endpoint.max(1)).max(1);
        let mut eps = Vec::with_capacity(neps);
        for e in 0..neps {
            eps.push(client_endpoint(source_addr(spec.source_base, e, 200), &cfg)?);
        }
        let t0 = Instant::now();
        let mut next = 0;
        let deadline = t0 + Duration::from_secs(spec.connect_timeout_s);
        while next < spec.devices && Instant::now() < deadline {
            let room = {
                let s = shared.lock().expect("fleet lock");
                spec.concurrency.saturating_sub(s.in_flight)
            };
            for _ in 0..room.min(spec.devices - next) {
                shared.lock().expect("fleet lock").in_flight += 1;
                let ep = eps[next / spec.per_endpoint.max(1)].clone();
                tokio::spawn(device(next, ep, spec.clone(), shared.clone()));
                next += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        while shared.lock().expect("fleet lock").in_flight > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let connected = shared.lock().expect("fleet lock").report.connected;
        println!(
            "{}",
            serde_json::json!({"ready": connected, "failed": spec.devices - connected, "connect_s": t0.elapsed().as_secs_f64()})
        );
        std::io::stdout().flush()?;
        while let Some(cmd) = cmd_rx.recv().await {
            match cmd.trim() {
                "report" => {
                    let mut s = shared.lock().expect("fleet lock");
                    let finals: Vec<u64> = s.newest.iter().flatten().copied().collect();
                    s.report.final_seqs = finals;
                    s.report.connected = s.report.final_seqs.len();
                    println!("{}", serde_json::to_string(&s.report)?);
                    std::io::stdout().flush()?;
                    return Ok(());
                }
                "quit" => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    })
}

/// A started QUIC worker process (`cue-bench quic-worker SPEC_JSON`).
pub fn start(spec: &QuicWorkerSpec) -> anyhow::Result<crate::worker::WorkerProc> {
    crate::worker::WorkerProc::start_cmd("quic-worker", &serde_json::to_string(spec)?)
}
