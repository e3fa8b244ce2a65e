//! `cue-bench relay`: what TLS costs the origin's relay. One origin, `--links` relay links held
//! by this process (each says HELLO and counts the cues it reads), publishers on their own
//! events for `--seconds`; first with a plaintext relay, then with mutual TLS (certificates
//! from two CAs made for the run), in one run. The figure is relay cues delivered per
//! CPU-second of the origin process (everything it does: HTTP, log, relay), and per second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cue_common::relay::{self, Frame};
use serde_json::json;

use crate::stack;

/// Options of `cue-bench relay`.
#[derive(Debug, Clone)]
pub struct RelayBenchOpts {
    /// Relay links (edges).
    pub links: usize,
    /// Publishers, each on its own event.
    pub publishers: usize,
    /// Length of each phase.
    pub seconds: u64,
    /// Output directory.
    pub out: PathBuf,
    /// Directory of the Cue binaries.
    pub bin_dir: Option<PathBuf>,
}

struct Pki {
    origin_ca: PathBuf,
    edge_ca: PathBuf,
    origin: (PathBuf, PathBuf),
    edge: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> anyhow::Result<Pki> {
    let ca = |name: &str| -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair, PathBuf)> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem())?;
        Ok((cert, key, path))
    };
    let leaf = |ca: &(rcgen::Certificate, rcgen::KeyPair, PathBuf),
                name: &str,
                san: &str|
     -> anyhow::Result<(PathBuf, PathBuf)> {
        let p = rcgen::CertificateParams::new(vec![san.to_string()])?;
        let key = rcgen::KeyPair::generate()?;
        let cert = p.signed_by(&key, &ca.0, &ca.1)?;
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    };
    let (o, e) = (ca("origin")?, ca("edge")?);
    Ok(Pki {
        origin: leaf(&o, "origin", "127.0.0.1")?,
        edge: leaf(&e, "edge", "bench-edge")?,
        origin_ca: o.2,
        edge_ca: e.2,
    })
}

/// One relay link: HELLO, then count the cues read until `stop`.
fn link(
    relay: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    cues: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let sock = TcpStream::connect(relay)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(sock),
        Some(cfg) => Box::new(rustls::StreamOwned::new(
            rustls::ClientConnection::new(cfg, "127.0.0.1".try_into()?)?,
            sock,
        )),
    };
    let mut hello = Vec::new();
    relay::encode(
        &Frame::Hello {
            version: cue_common::relay::VERSION,
            edge_id: "bench".into(),
            since: vec![],
        },
        &mut hello,
    );
    stream.write_all(&hello)?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    // The origin drops a link it hears nothing from: ping as an edge does.
    let mut last_ping = Instant::now();
    while !stop.load(Relaxed) {
        if last_ping.elapsed() >= Duration::from_secs(1) {
            relay::encode(&Frame::Ping(1), &mut out);
            last_ping = Instant::now();
        }
        match stream.read(&mut chunk) {
            Ok(0) => bail!("origin closed the link"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let mut used = 0;
        while let Some((f, n)) = relay::decode(&buf[used..])? {
            used += n;
            match f {
                Frame::Cue(_) | Frame::ClassedCue(..) => {
                    cues.fetch_add(1, Relaxed);
                }
                Frame::Ping(p) => relay::encode(&Frame::Pong(p), &mut out),
                _ => {}
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            stream.write_all(&out)?;
            stream.flush()?;
            out.clear();
        }
    }
    Ok(())
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// One phase: returns (cues delivered, origin CPU seconds, wall seconds, publishes).
fn phase(
    o: &RelayBenchOpts,
    dir: &Path,
    tls: Option<&Pki>,
) -> anyhow::Result<(u64, f64, f64, u64)> {
    std::fs::create_dir_all(dir)?;
    let secret = stack::random_secret();
    let mut args: Vec<String> = vec![
        "--no-fsync".into(),
        "--relay-buffer".into(),
        "65536".into(),
        "--max-edges".into(),
        (o.links + 8).to_string(),
    ];
    if let Some(p) = tls {
        args.extend([
            "--relay-cert".into(),
            p.origin.0.display().to_string(),
            "--relay-key".into(),
            p.origin.1.display().to_string(),
            "--relay-client-ca".into(),
            p.edge_ca.display().to_string(),
        ]);
    }
    let stack::Origin {
        proc: mut origin,
        http,
        relay,
    } = stack::start_origin(
        &stack::bin(o.bin_dir.as_deref(), "cue-origin")?,
        "cue-origin",
        &dir.join("origin-data"),
        &args,
        &[("CUE_AUTH_SECRET", secret.clone())],
        &dir.join("origin.log"),
    )?;
    let client = match tls {
        None => None,
        Some(p) => Some(cue_common::tls::relay_client_config(
            &cue_common::tls::RelayTlsFiles {
                cert: p.edge.0.clone(),
                key: p.edge.1.clone(),
                ca: p.origin_ca.clone(),
            },
        )?),
    };
    let cues = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let links: Vec<_> = (0..o.links)
        .map(|_| {
            let (c, s, t) = (cues.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || link(relay, t, c, s))
        })
        .collect();
    // Every link says HELLO and is linked before the clock starts.
    stack::wait_http(http, "/metrics", Duration::from_secs(10), |b| {
        b.contains(&format!("cue_origin_edges {}", o.links))
    })
    .context("relay links did not come up")?;
    let token = format!(
        "Bearer {}",
        cue_common::token::TokenKeys::new(secret.as_bytes())
            .map_err(anyhow::Error::msg)?
            .mint_publisher(cue_common::time::unix_now_s(), 3600)
    );
    let published = Arc::new(AtomicU64::new(0));
    let pub_stop = Arc::new(AtomicBool::new(false));
    let (cues0, cpu0, t0) = (
        cues.load(Relaxed),
        stack::cpu_s(origin.pid())?,
        Instant::now(),
    );
    let pubs: Vec<_> = (0..o.publishers)
        .map(|i| {
            let (n, s, token) = (published.clone(), pub_stop.clone(), token.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut k = 0u64;
                while !s.load(Relaxed) {
                    let (st, b) = stack::http(
                        http,
                        "POST",
                        &format!("/v1/events/relay-{i}/cues"),
                        &[("Authorization", &token)],
                        format!("{{\"key\":\"k{k}\"}}").as_bytes(),
                    )?;
                    if st != 201 {
                        bail!("publish: {st} {b}");
                    }
                    n.fetch_add(1, Relaxed);
                    k += 1;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(o.seconds));
    pub_stop.store(true, Relaxed);
    for p in pubs {
        p.join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    }
    // Let the links drain what was published, then read the counters.
    let want = published.load(Relaxed) * o.links as u64;
    let t = Instant::now();
    while cues.load(Relaxed) - cues0 < want && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (delivered, wall) = (cues.load(Relaxed) - cues0, t0.elapsed().as_secs_f64());
    let cpu1 = stack::cpu_s(origin.pid())?;
    if cpu1 <= cpu0 {
        bail!(
            "the origin's CPU time did not move over the phase (/proc/{}/stat)",
            origin.pid()
        );
    }
    stop.store(true, Relaxed);
    for l in links {
        l.join().map_err(|_| anyhow::anyhow!("link panicked"))??;
    }
    origin.stop(Duration::from_secs(5));
    Ok((delivered, cpu1 - cpu0, wall, published.load(Relaxed)))
}

/// Runs both phases; the JSON (and a table on stderr).
pub fn run(o: &RelayBenchOpts) -> anyhow::Result<serde_json::Value> {
    let _ = std::fs::remove_dir_all(&o.out);
    std::fs::create_dir_all(&o.out)?;
    let p = pki(&o.out)?;
    let plain = phase(o, &o.out.join("plain"), None)?;
    let tls = phase(o, &o.out.join("tls"), Some(&p))?;
    let row = |(d, cpu, wall, n): (u64, f64, f64, u64)| {
        json!({"cues_delivered": d, "publishes": n, "origin_cpu_s": cpu, "wall_s": wall,
               "cues_per_cpu_s": d as f64 / cpu, "cues_per_s": d as f64 / wall})
    };
    let (pr, tr) = (row(plain), row(tls));
    let ratio = tr["cues_per_cpu_s"].as_f64().unwrap_or(0.0)
        / pr["cues_per_cpu_s"].as_f64().context("plaintext rate")?;
    eprintln!(
        "| relay | cues delivered | publishes | origin CPU-s | cues per origin CPU-s | cues/s |"
    );
    eprintln!("| --- | --- | --- | --- | --- | --- |");
    for (name, r) in [("plaintext", &pr), ("TLS 1.3 (mutual)", &tr)] {
        eprintln!(
            "| {name} | {} | {} | {:.2} | {:.0} | {:.0} |",
            r["cues_delivered"],
            r["publishes"],
            r["origin_cpu_s"].as_f64().unwrap_or(0.0),
            r["cues_per_cpu_s"].as_f64().unwrap_or(0.0),
            r["cues_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    eprintln!("TLS / plaintext, cues per origin CPU-second: {ratio:.2}");
    Ok(json!({
        "scenario": "relay",
        "links": o.links,
        "publishers": o.publishers,
        "seconds": o.seconds,
        "plaintext": pr,
        "tls": tr,
        "tls_to_plaintext": ratio,
    }))
}
