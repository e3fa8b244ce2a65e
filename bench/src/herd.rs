//! `prefetch-herd`: a fleet prefetching its stage maps through `cue-prefetch`, twice over the same
//! simulated window: (a) fixed TTLs and no schedule (every device fetches at the window's start
//! and again every TTL, exactly), (b) jittered TTLs and the schedule (each device fetches at its
//! `prefetch_at`, then again when its jittered `max-age` runs out, revalidating with
//! `If-None-Match`). The maps come from a real upstream HTTP server started here (a thread per
//! connection, a fixed delay per call, calls counted per key), so the run also shows what each
//! mode costs the upstream. Then a throughput phase: keep-alive clients hammer cached maps of a
//! single-threaded `cue-prefetch`, and the rate is divided by that process's CPU time.
//!
//! Figures: requests/s per second of the run for both modes, peak/mean (whole run and after the
//! window), latency, upstream calls per key per TTL and the most calls in flight for one key,
//! cached responses/s per core. The last line is one JSON object.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::stack::{self, free_port, Proc};

/// Options of `cue-bench prefetch-herd`.
#[derive(clap::Args, Debug, Clone)]
pub struct HerdArgs {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 20_000)]
    pub devices: usize,
    /// The event's TTL (`ttl_s`), seconds.
    #[arg(long, default_value_t = 20)]
    pub ttl_s: u64,
    /// Length of each mode's run, seconds [default: 3 TTLs].
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Prefetch window, seconds [default: the shortest jittered max-age, so that no device's
    /// first refresh lands among the window's first fetches].
    #[arg(long)]
    pub window_s: Option<u64>,
    /// max-age jitter of mode (b) (cue-prefetch --max-age-jitter).
    #[arg(long, default_value_t = 0.2)]
    pub jitter: f64,
    /// Client threads of the fleet (one keep-alive connection each): how many devices can be
    /// mid-request at once, so what a herd can look like to the server.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Delay of each upstream call, ms.
    #[arg(long, default_value_t = 2)]
    pub upstream_delay_ms: u64,
    /// Length of each throughput measurement, seconds.
    #[arg(long, default_value_t = 5)]
    pub throughput_s: u64,
    /// Keep-alive connections of the throughput phase.
    #[arg(long, default_value_t = 4)]
    pub throughput_connections: usize,
    /// Directory holding cue-prefetch [default: next to cue-bench].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Output/scratch directory (logs, catalogs).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Progress on stderr.
    #[arg(long)]
    pub verbose: bool,
}

/// Checks the options; every problem in one line.
pub fn validate(a: &HerdArgs) -> Result<(), String> {
    let mut e = Vec::new();
    if a.devices == 0 {
        e.push("--devices: must be > 0".to_string());
    }
    if a.ttl_s < 2 {
        e.push("--ttl-s: must be >= 2".into());
    }
    if !(0.0..1.0).contains(&a.jitter) {
        e.push("--jitter: must be in [0, 1)".into());
    }
    if a.connections == 0 || a.throughput_connections == 0 {
        e.push("--connections, --throughput-connections: must be > 0".into());
    }
    if a.window_s == Some(0) || a.duration_s == Some(0) {
        e.push("--window-s, --duration-s: must be > 0".into());
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream recommendation service.

struct UpstreamState {
    delay: Duration,
    /// Calls per second since the last [`Upstream::take`].
    per_second: Mutex<(Instant, Vec<u64>)>,
    calls: Mutex<HashMap<String, u64>>,
    in_flight: Mutex<HashMap<String, u64>>,
    max_concurrent_per_key: AtomicU64,
    stop: AtomicBool,
}

struct Upstream {
    addr: SocketAddr,
    s: Arc<UpstreamState>,
}

impl Upstream {
    fn start(delay: Duration) -> anyhow::Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let s = Arc::new(UpstreamState {
            delay,
            per_second: Mutex::new((Instant::now(), Vec::new())),
            calls: Default::default(),
            in_flight: Default::default(),
            max_concurrent_per_key: Default::default(),
            stop: Default::default(),
        });
        let u = Upstream {
            addr: l.local_addr()?,
            s: s.clone(),
        };
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.stop.load(Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || upstream_conn(&s, conn));
            }
        });
        Ok(u)
    }

    /// (calls, keys, most calls in flight for one key, calls per second) since the last reset,
    /// then resets.
    fn take(&self) -> (u64, usize, u64, Vec<u64>) {
        let mut c = self.s.calls.lock().expect("calls");
        let mut ps = self.s.per_second.lock().expect("per second");
        let series = std::mem::take(&mut ps.1);
        ps.0 = Instant::now();
        let r = (
            c.values().sum(),
            c.len(),
            self.s.max_concurrent_per_key.swap(0, Relaxed),
            series,
        );
        c.clear();
        r
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.s.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn upstream_conn(s: &UpstreamState, conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let Ok(rc) = conn.try_clone() else { return };
    let mut r = BufReader::new(rc);
    let mut w = conn;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let key = target.split_once('?').map_or("", |x| x.1).to_string();
        *s.calls
            .lock()
            .expect("calls")
            .entry(key.clone())
            .or_default() += 1;
        {
            let mut ps = s.per_second.lock().expect("per second");
            let i = ps.0.elapsed().as_secs() as usize;
            if ps.1.len() <= i {
                ps.1.resize(i + 1, 0);
            }
            ps.1[i] += 1;
        }
        {
            let mut f = s.in_flight.lock().expect("in flight");
            let n = f.entry(key.clone()).or_default();
            *n += 1;
            s.max_concurrent_per_key.fetch_max(*n, Relaxed);
        }
        std::thread::sleep(s.delay);
        {
            let mut f = s.in_flight.lock().expect("in flight");
            if let Some(n) = f.get_mut(&key) {
                *n -= 1;
            }
        }
        // A map of 8 stages, ~700 bytes, personalised by {device}.
        let mut body = String::from("{");
        for i in 1..=8 {
            if i > 1 {
                body.push(',');
            }
            body.push_str(&format!(
                r#""round-{i}":{{"hero":"https://cdn.example/{{device}}/r{i}.jpg","offers":[{i},{}]}}"#,
                i * 7
            ));
        }
        body.push('}');
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A keep-alive HTTP/1.1 client (one request at a time on one connection).

struct Client {
    addr: SocketAddr,
    s: Option<TcpStream>,
    buf: Vec<u8>,
    /// Copy bodies into [`Answer::body`] (the schedule step needs them; the fleet does not).
    keep_body: bool,
}

/// What the fleet reads from a response.
struct Answer {
    status: u16,
    etag: Option<String>,
    max_age: Option<u64>,
    body: Vec<u8>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            s: None,
            buf: Vec::with_capacity(8192),
            keep_body: false,
        }
    }

    /// GET `path`; one reconnect on a dropped keep-alive connection.
    fn get(&mut self, path: &str, headers: &str) -> std::io::Result<Answer> {
        match self.try_get(path, headers) {
            Ok(a) => Ok(a),
            Err(_) => {
                self.s = None;
                self.try_get(path, headers)
            }
        }
    }

    fn try_get(&mut self, path: &str, headers: &str) -> std::io::Result<Answer> {
        if self.s.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.s = Some(s);
            self.buf.clear();
        }
        let s = self.s.as_mut().expect("connected");
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n");
        s.write_all(req.as_bytes())?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response");
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            read_more(s, &mut self.buf)?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad())?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)?;
        let (mut len, mut etag, mut max_age) = (0usize, None, None);
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().map_err(|_| bad())?;
            } else if k.eq_ignore_ascii_case("etag") {
                etag = Some(v.to_string());
            } else if k.eq_ignore_ascii_case("cache-control") {
                max_age = v.strip_prefix("max-age=").and_then(|x| x.parse().ok());
            }
        }
        while self.buf.len() < head_end + len {
            read_more(s, &mut self.buf)?;
        }
        let body = if self.keep_body {
            self.buf[head_end..head_end + len].to_vec()
        } else {
            Vec::new()
        };
        self.buf.drain(..head_end + len);
        Ok(Answer {
            status,
            etag,
            max_age,
            body,
        })
    }
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The stack.

fn write_catalog(
    dir: &Path,
    event: &str,
    window_s: u64,
    ttl_s: u64,
    stages: Option<Value>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let start = stack::unix_us() / 1000;
    let mut ev =
        json!({"window": {"start_ms": start, "end_ms": start + window_s * 1000}, "ttl_s": ttl_s});
    if let Some(s) = stages {
        ev["stages"] = s;
    }
    std::fs::write(dir.join(format!("{event}.json")), ev.to_string())?;
    Ok(())
}

fn start_prefetch(
    a: &HerdArgs,
    name: &str,
    catalog: &Path,
    secret: &str,
    extra: &[&str],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args: Vec<String> = vec![
        "--http".into(),
        http.to_string(),
        "--catalog".into(),
        catalog.display().to_string(),
        "--origin-http".into(),
        String::new(),
        "--seed".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let exe = stack::bin(a.bin_dir.as_deref(), "cue-prefetch")?;
    let env = vec![("CUE_AUTH_SECRET", secret.to_string())];
    let p = Proc::start(name, &exe, &args, &env, &a.out.join(format!("{name}.log")))?;
    stack::wait_http(http, "/healthz", Duration::from_secs(10), |_| true)
        .with_context(|| format!("{name} did not start"))?;
    Ok((p, http))
}

// ---------------------------------------------------------------------------------------------
// One mode of the herd.

struct Mode {
    name: &'static str,
    jittered: bool,
}

struct FleetResult {
    per_second: Vec<u64>,
    hist: Histogram<u64>,
    ok: u64,
    not_modified: u64,
    refused: u64,
    errors: u64,
}

/// Drives `devices` (each with its first due time, ms from the start) until `duration`.
fn drive(
    addr: SocketAddr,
    token: &str,
    event: &str,
    first_due_ms: Vec<u64>,
    threads: usize,
    duration: Duration,
) -> FleetResult {
    let n = first_due_ms.len();
    let t0 = Instant::now() + Duration::from_millis(200);
    let secs = duration.as_secs() as usize;
    let mut handles = Vec::new();
    let due = Arc::new(first_due_ms);
    for th in 0..threads {
        let (token, event, due) = (token.to_string(), event.to_string(), due.clone());
        handles.push(std::thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut per_second = vec![0u64; secs];
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let (mut ok, mut nm, mut refused, mut errors) = (0, 0, 0, 0);
            // (due ms, device): a min-heap of this thread's devices.
            let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> = (th..n)
                .step_by(threads)
                .map(|d| std::cmp::Reverse((due[d], d)))
                .collect();
            let mut etags: HashMap<usize, String> = HashMap::new();
            let auth = format!("Authorization: Bearer {token}\r\n");
            while let Some(&std::cmp::Reverse((at, d))) = heap.peek() {
                if at >= duration.as_millis() as u64 {
                    break;
                }
                let wake = t0 + Duration::from_millis(at);
                let now = Instant::now();
                if wake > now {
                    std::thread::sleep(wake - now);
                }
                heap.pop();
                let sent = Instant::now();
                let slot = sent.saturating_duration_since(t0).as_secs() as usize;
                if let Some(b) = per_second.get_mut(slot) {
                    *b += 1;
                }
                let mut headers = auth.clone();
                if let Some(e) = etags.get(&d) {
                    headers.push_str(&format!("If-None-Match: {e}\r\n"));
                }
                let path = format!("/v1/events/{event}/prefetch?device=dev-{d}");
                let next = match c.get(&path, &headers) {
                    Ok(a) => {
                        let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                        match a.status {
                            200 => ok += 1,
                            304 => nm += 1,
                            _ => refused += 1,
                        }
                        if let Some(e) = a.etag {
                            etags.insert(d, e);
                        }
                        // A device refetches when its max-age runs out (5 s after a refusal).
                        a.max_age.unwrap_or(5) * 1000
                    }
                    Err(_) => {
                        errors += 1;
                        5000
                    }
                };
                let done_ms = Instant::now().saturating_duration_since(t0).as_millis() as u64;
                heap.push(std::cmp::Reverse((done_ms + next, d)));
            }
            (per_second, hist, ok, nm, refused, errors)
        }));
    }
    let mut r = FleetResult {
        per_second: vec![0; secs],
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        ok: 0,
        not_modified: 0,
        refused: 0,
        errors: 0,
    };
    for h in handles {
        let (ps, hist, ok, nm, refused, errors) = h.join().expect("fleet thread");
        for (a, b) in r.per_second.iter_mut().zip(ps) {
            *a += b;
        }
        let _ = r.hist.add(hist);
        r.ok += ok;
        r.not_modified += nm;
        r.refused += refused;
        r.errors += errors;
    }
    r
}

fn peak_to_mean(v: &[u64]) -> (u64, f64, f64) {
    let peak = v.iter().copied().max().unwrap_or(0);
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    };
    (
        peak,
        mean,
        if mean > 0.0 { peak as f64 / mean } else { 0.0 },
    )
}

fn run_mode(
    a: &HerdArgs,
    m: &Mode,
    up: &Upstream,
    secret: &str,
    window_s: u64,
    duration_s: u64,
) -> anyhow::Result<Value> {
    let dir = a.out.join(format!("herd-catalog-{}", m.name));
    write_catalog(&dir, "herd", window_s, a.ttl_s, None)?;
    let template = format!("http://{}/recs?event={{event}}&device={{device}}", up.addr);
    let jitter = if m.jittered {
        a.jitter.to_string()
    } else {
        "0".into()
    };
    let cache_jitter = if m.jittered { "0.1" } else { "0" };
    let (mut proc, addr) = start_prefetch(
        a,
        &format!("prefetch-{}", m.name),
        &dir,
        secret,
        &[
            "--upstream",
            &template,
            "--max-age-jitter",
            &jitter,
            "--cache-ttl-jitter",
            cache_jitter,
        ],
    )?;
    let keys = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
    let token = keys.mint_device(
        "bench-fleet",
        &["herd".into()],
        cue_common::time::unix_now_s(),
        3600,
    );
    // Mode (b): every device asks for its schedule first (before the window: not counted in the
    // series). `prefetch_at - start` depends only on the window's length.
    let mut first_due = vec![0u64; a.devices];
    if m.jittered {
        let mut c = Client::new(addr);
        c.keep_body = true;
        for (d, due) in first_due.iter_mut().enumerate() {
            let r = c.get(&format!("/v1/events/herd/schedule?device=dev-{d}"), "")?;
            if r.status != 200 {
                bail!("schedule for dev-{d}: status {}", r.status);
            }
            let v: Value = serde_json::from_slice(&r.body)?;
            let at = v["prefetch_at"].as_u64().context("prefetch_at")?;
            *due = at - v["window"]["start_ms"].as_u64().context("window")?;
        }
    }
    let _ = up.take();
    if a.verbose {
        eprintln!(
            "herd {}: {} devices, window {window_s} s, ttl {} s, run {duration_s} s",
            m.name, a.devices, a.ttl_s
        );
    }
    let r = drive(
        addr,
        &token,
        "herd",
        first_due,
        a.connections,
        Duration::from_secs(duration_s),
    );
    let (calls, keys_seen, max_conc, upstream_series) = up.take();
    let upstream_peak = upstream_series.iter().copied().max().unwrap_or(0);
    proc.stop(Duration::from_secs(5));
    let (peak, mean, ratio) = peak_to_mean(&r.per_second);
    let after: Vec<u64> = r
        .per_second
        .iter()
        .skip(window_s as usize)
        .copied()
        .collect();
    let (_, _, ratio_after) = peak_to_mean(&after);
    let ttls = duration_s as f64 / a.ttl_s as f64;
    let h = &r.hist;
    Ok(json!({
        "max_age_jitter": if m.jittered { a.jitter } else { 0.0 },
        "schedule": m.jittered,
        "requests": r.ok + r.not_modified + r.refused + r.errors,
        "ok_200": r.ok,
        "not_modified_304": r.not_modified,
        "refused": r.refused,
        "errors": r.errors,
        "rps": r.per_second,
        "peak_rps": peak,
        "mean_rps": mean,
        "peak_to_mean": ratio,
        "peak_to_mean_after_window": ratio_after,
        "latency_ms": {"p50": h.value_at_quantile(0.5) as f64 / 1e3, "p99": h.value_at_quantile(0.99) as f64 / 1e3, "max": h.max() as f64 / 1e3},
        "upstream_calls": calls,
        "upstream_calls_per_s": upstream_series,
        "upstream_peak_calls_per_s": upstream_peak,
        "upstream_keys": keys_seen,
        "upstream_calls_per_key_per_ttl": if keys_seen > 0 { calls as f64 / keys_seen as f64 / ttls } else { 0.0 },
        "upstream_max_concurrent_per_key": max_conc,
    }))
}

// ---------------------------------------------------------------------------------------------
// Throughput of cached maps.

fn throughput(a: &HerdArgs, kind: &str, up: &Upstream, secret: &str) -> anyhow::Result<Value> {
    let dir = a.out.join(format!("herd-catalog-tput-{kind}"));
    let stages: Value = {
        let mut m = serde_json::Map::new();
        for i in 1..=8 {
            m.insert(format!("round-{i}"), json!({"hero": format!("https://cdn.example/{{device}}/r{i}.jpg"), "offers": [i, i * 7]}));
        }
        Value::Object(m)
    };
    let upstream_tpl = format!("http://{}/recs?event={{event}}&device={{device}}", up.addr);
    let (extra, stages): (Vec<&str>, _) = match kind {
        "catalog" => (vec![], Some(stages)),
        _ => (vec!["--upstream", &upstream_tpl], None),
    };
    write_catalog(&dir, "tput", 3600, 600, stages)?;
    let mut args = vec!["--threads", "1"];
    args.extend(extra);
    let (mut proc, addr) =
        start_prefetch(a, &format!("prefetch-tput-{kind}"), &dir, secret, &args)?;
    let keys = cue_common::token::TokenKeys::new(secret.as_bytes()).map_err(anyhow::Error::msg)?;
    let token = keys.mint_device(
        "bench-fleet",
        &["tput".into()],
        cue_common::time::unix_now_s(),
        3600,
    );
    let auth = format!("Authorization: Bearer {token}\r\n");
    const DEVICES: usize = 1000;
    // Warm: every device's map is cached (one upstream call each).
    let mut c = Client::new(addr);
    for d in 0..DEVICES {
        let r = c.get(&format!("/v1/events/tput/prefetch?device=dev-{d}"), &auth)?;
        if r.status != 200 {
            bail!("warm-up: status {}", r.status);
        }
    }
    let _ = up.take();
    let cpu0 = stack::cpu_s(proc.pid())?;
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..a.throughput_connections)
        .map(|th| {
            let (auth, stop) = (auth.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::new(addr);
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let (mut n, mut bad) = (0u64, 0u64);
                let mut d = th;
                while !stop.load(Relaxed) {
                    let t = Instant::now();
                    match c.get(&format!("/v1/events/tput/prefetch?device=dev-{d}"), &auth) {
                        Ok(r) if r.status == 200 => n += 1,
                        _ => bad += 1,
                    }
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    d = (d + 7) % DEVICES;
                }
                (n, bad, hist)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(a.throughput_s));
    stop.store(true, Relaxed);
    let (mut n, mut bad) = (0, 0);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for h in handles {
        let (a, b, hh) = h.join().expect("client thread");
        n += a;
        bad += b;
        let _ = hist.add(hh);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = stack::cpu_s(proc.pid())? - cpu0;
    let (calls, _, _, _) = up.take();
    proc.stop(Duration::from_secs(5));
    Ok(json!({
        "source": kind,
        "responses": n,
        "failed": bad,
        "seconds": secs,
        "responses_per_s": n as f64 / secs,
        "cpu_s": cpu,
        "responses_per_s_per_core": if cpu > 0.0 { n as f64 / cpu } else { 0.0 },
        "upstream_calls_during": calls,
        "latency_ms": {"p50": hist.value_at_quantile(0.5) as f64 / 1e3, "p99": hist.value_at_quantile(0.99) as f64 / 1e3, "max": hist.max() as f64 / 1e3},
    }))
}

/// Runs the scenario; returns the JSON figures.
pub fn run(a: &HerdArgs) -> anyhow::Result<Value> {
    std::fs::create_dir_all(&a.out)?;
    let secret = stack::random_secret();
    let up = Upstream::start(Duration::from_millis(a.upstream_delay_ms))?;
    // The shortest max-age the jitter can give (what cue-prefetch computes: floor of the cut).
    let shortest = a.ttl_s - (a.ttl_s as f64 * a.jitter * 0.999_999).floor() as u64;
    let window_s = a.window_s.unwrap_or(shortest.max(1));
    let duration_s = a.duration_s.unwrap_or(3 * a.ttl_s);
    let fixed = run_mode(
        a,
        &Mode {
            name: "fixed",
            jittered: false,
        },
        &up,
        &secret,
        window_s,
        duration_s,
    )?;
    let jittered = run_mode(
        a,
        &Mode {
            name: "jittered",
            jittered: true,
        },
        &up,
        &secret,
        window_s,
        duration_s,
    )?;
    let tput_catalog = throughput(a, "catalog", &up, &secret)?;
    let tput_cache = throughput(a, "upstream_cache", &up, &secret)?;
    let per_core = tput_catalog["responses_per_s_per_core"]
        .as_f64()
        .unwrap_or(0.0)
        .min(
            tput_cache["responses_per_s_per_core"]
                .as_f64()
                .unwrap_or(0.0),
        );
    let ratio = jittered["peak_to_mean"].as_f64().unwrap_or(f64::MAX);
    let calls_per_ttl = jittered["upstream_calls_per_key_per_ttl"]
        .as_f64()
        .unwrap_or(f64::MAX)
        .max(
            fixed["upstream_calls_per_key_per_ttl"]
                .as_f64()
                .unwrap_or(f64::MAX),
        );
    Ok(json!({
        "scenario": "prefetch-herd",
        "devices": a.devices,
        "ttl_s": a.ttl_s,
        "window_s": window_s,
        "duration_s": duration_s,
        "upstream_delay_ms": a.upstream_delay_ms,
        "fixed": fixed,
        "jittered": jittered,
        "throughput": {"catalog": tput_catalog, "upstream_cache": tput_cache},
        "targets": {
            "peak_to_mean_jittered": ratio,
            "peak_to_mean_jittered_le_1_25": ratio <= 1.25,
            "upstream_calls_per_key_per_ttl": calls_per_ttl,
            "upstream_calls_per_key_per_ttl_le_1": calls_per_ttl <= 1.0 + 1e-9,
            "cached_responses_per_s_per_core": per_core,
            "cached_responses_per_s_per_core_ge_50k": per_core >= 50_000.0,
        },
    }))
}
