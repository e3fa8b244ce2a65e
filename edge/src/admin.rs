//! The edge's admin HTTP listener (`/metrics`, `/fanouts`, `/healthz`, `/readyz`,
//! `POST /admin/drain`, `POST /admin/undrain`, `POST /admin/send-path`, the last three with an
//! admin token), and the drain supervisor: a small blocking server off the shards' cores' hot
//! path, one thread per connection up to [`MAX_ADMIN_CONNECTIONS`] (beyond: 503 at once), each
//! request read within [`ADMIN_DEADLINE`] from its accept. It reads counters, sends control
//! messages and sets the shards' send-path flag (an atomic each shard reads once a fanout
//! slice); it never touches shard state.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cue_common::metrics::{header, sample, single};

use crate::relay_link::{Control, LinkStats};
use crate::stats::{render, ShardStats};

/// What the admin server reads and controls.
#[derive(Debug)]
pub struct AdminState {
    /// Every shard's counters.
    pub shards: Vec<Arc<ShardStats>>,
    /// Relay link counters.
    pub link: Arc<LinkStats>,
    /// Control channel to the shards (through the link thread).
    pub control: crossbeam_channel::Sender<Control>,
    /// Set once a drain started.
    pub draining: AtomicBool,
    /// Default drain window.
    pub drain_window: Duration,
    /// Connections this process can hold (from its fd limit and config).
    pub capacity: u64,
    /// The QUIC TLS settings, when QUIC is on (for the count of sessions holding TLS state).
    pub quic_tls: Option<Arc<crate::quic::session::LeanServerConfig>>,
    /// Liveness fails once no origin has been linked this long (`None`: never).
    pub unlinked_unhealthy: Option<Duration>,
    /// Admin connections being served.
    pub serving: AtomicUsize,
    /// Set once the process is stopping (the shards were told to stop).
    pub stopping: Arc<AtomicBool>,
    /// The drain in force (0: none); each drain gets a new number.
    pub drain_gen: AtomicU64,
    /// What admin tokens are checked with (reloaded on SIGHUP); `None`: auth off, the admin
    /// endpoints are open.
    pub keys: RwLock<Option<cue_common::keys::Verifier>>,
    /// Admin requests refused for a missing, bad or wrong token.
    pub refused: cue_common::metrics::Counter,
}

/// Time a drain leaves after its window for the last close frames to be answered.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Starts a drain over `window` unless one is in force (then `false`): the shards close their
/// listeners and then their devices at an even rate; the process stops once every shard holds
/// no device, or at the end of the window (plus [`DRAIN_GRACE`]), unless undrained first.
pub fn begin_drain(st: &Arc<AdminState>, window: Duration) -> bool {
    if st.stopping.load(Ordering::SeqCst) || st.draining.swap(true, Ordering::SeqCst) {
        return false;
    }
    let gen = st.drain_gen.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = st.control.send(Control::Drain(window, gen));
    let watcher = st.clone();
    let spawned = std::thread::Builder::new()
        .name("cue-drain".into())
        .spawn(move || {
            let st = watcher;
            let end = Instant::now() + window + DRAIN_GRACE;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                if st.drain_gen.load(Ordering::SeqCst) != gen {
                    return; // undrained (and maybe drained again: that drain has its own thread)
                }
                let empty = st.shards.iter().all(|s| {
                    s.drained_gen.load(Ordering::SeqCst) == gen || s.stopped.load(Ordering::SeqCst)
                });
                if empty || Instant::now() >= end {
                    tracing::info!(devices_left = !empty, "drain done: stopping");
                    break;
                }
            }
            st.stopping.store(true, Ordering::SeqCst);
            let _ = st.control.send(Control::Stop);
        });
    if spawned.is_err() {
        // Without its supervisor the drain would never end the process: stop now instead.
        st.stopping.store(true, Ordering::SeqCst);
        let _ = st.control.send(Control::Stop);
    }
    true
}

/// Ends the drain in force and waits (up to [`ADMIN_DEADLINE`]) until every shard listens
/// again. `Err` when the process is already stopping, or a shard is not listening in time.
pub fn undrain(st: &AdminState) -> Result<(), &'static str> {
    if st.stopping.load(Ordering::SeqCst) {
        return Err("the edge is stopping\n");
    }
    if st.draining.swap(false, Ordering::SeqCst) {
        st.drain_gen.fetch_add(1, Ordering::SeqCst);
        let _ = st.control.send(Control::Undrain);
    }
    let t = Instant::now();
    while !st.shards.iter().all(|s| s.listening.load(Ordering::SeqCst)) {
        if t.elapsed() >= ADMIN_DEADLINE {
            return Err("undrained, but a shard is not listening again (see the log)\n");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::info!("undrained: listening again");
    Ok(())
}

/// Checks an admin request's `Authorization: Bearer` token: a token of role `admin` signed
/// with the keys devices are checked with. `Err` is the status and its text.
fn admin_auth(st: &AdminState, authorization: Option<&str>) -> Result<(), (u16, &'static str)> {
    let keys = st.keys.read().expect("admin keys lock");
    let Some(k) = keys.as_ref() else {
        return Ok(());
    };
    let token = authorization
        .and_then(|a| a.strip_prefix("Bearer "))
        .ok_or((401, "admin token required (Authorization: Bearer)\n"))?;
    match k.verify(token.trim(), cue_common::time::unix_now_s()) {
        Ok(c) if c.is_admin() => Ok(()),
        Ok(_) => Err((403, "not an admin token\n")),
        Err(_) => Err((401, "invalid or expired admin token\n")),
    }
}

/// `POST /admin/send-path?path=uring|syscall`: how every shard sends its next fanout slices.
/// `syscall` pauses the shards' rings (one `send()` per device); `uring` resumes them, and is
/// refused (409, nothing changed) unless every shard has a ring (`send_path = "uring"` at
/// start and the kernel allowed it). Answers the path asked for and the shards it holds for.
pub fn set_send_path(shards: &[Arc<ShardStats>], query: &str) -> Result<String, (u16, String)> {
    let path = query.split('&').find_map(|kv| kv.strip_prefix("path="));
    let pause = match path {
        Some("syscall") => true,
        Some("uring") => false,
        _ => return Err((400, "path: must be uring or syscall\n".into())),
    };
    let ready = shards
        .iter()
        .filter(|s| s.uring_ready.load(Ordering::SeqCst))
        .count();
    if !pause && ready < shards.len() {
        return Err((
            409,
            format!(
                "{} of {} shards have no io_uring (send_path = \"syscall\" at start, or the kernel refused a ring: see the log)\n",
                shards.len() - ready,
                shards.len()
            ),
        ));
    }
    for s in shards {
        s.uring_paused.store(pause, Ordering::SeqCst);
        let ring = s.uring_ready.load(Ordering::SeqCst);
        s.uring_active.set(i64::from(ring && !pause));
    }
    Ok(format!(
        "{{\"send_path\":\"{}\",\"shards\":{}}}\n",
        if pause { "syscall" } else { "uring" },
        shards.len()
    ))
}

/// Admin connections served at once; beyond, a connection is answered 503 and closed.
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Time a client has to send its request, from the accept.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(2);

/// Serves admin requests on `listener` forever (the thread ends with the process), each
/// connection on a thread of its own, so one slow or idle client delays no other.
pub fn serve(listener: TcpListener, state: Arc<AdminState>) {
    for conn in listener.incoming() {
        let Ok(mut sock) = conn else { continue };
        let _ = sock.set_write_timeout(Some(ADMIN_DEADLINE));
        if state.serving.fetch_add(1, Ordering::SeqCst) >= MAX_ADMIN_CONNECTIONS {
            state.serving.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&mut sock, 503, "text/plain", "admin busy\n", true);
            continue;
        }
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("cue-admin-conn".into())
            .spawn(move || {
                if let Err(e) = handle(&mut sock, &st) {
                    tracing::debug!(error = %e, "admin request failed");
                }
                st.serving.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            state.serving.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Why the process is not live (`/healthz` 503), if it is not.
fn liveness_problem(st: &AdminState) -> Option<String> {
    if let Some(i) = st
        .shards
        .iter()
        .position(|s| s.stopped.load(Ordering::SeqCst))
    {
        if !st.draining.load(Ordering::Relaxed) {
            return Some(format!("shard {i} stopped"));
        }
    }
    let limit = st.unlinked_unhealthy?;
    if st.link.linked.get() > 0 {
        return None;
    }
    let since = st.link.changed_ms.get().max(0) as u64;
    let unlinked = cue_common::time::unix_now_ms().saturating_sub(since);
    (unlinked >= limit.as_millis() as u64).then(|| {
        format!(
            "no origin linked for {} s (limit {} s)",
            unlinked / 1000,
            limit.as_secs()
        )
    })
}

fn handle(sock: &mut TcpStream, st: &Arc<AdminState>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let start = std::time::Instant::now();
    let (method, path, authorization) = loop {
        // The deadline runs from the accept: bytes that trickle in do not extend it.
        let left = ADMIN_DEADLINE.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(());
        }
        sock.set_read_timeout(Some(left))?;
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let auth = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    auth,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 8192 => continue,
            _ => return respond(sock, 400, "text/plain", "bad request\n", true),
        }
    };
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    // HEAD is GET without the body.
    let (method, body) = match method.as_str() {
        "HEAD" => ("GET", false),
        m => (m, true),
    };
    if method == "POST"
        && matches!(
            route,
            "/admin/drain" | "/admin/undrain" | "/admin/send-path"
        )
    {
        if let Err((code, text)) = admin_auth(st, authorization.as_deref()) {
            st.refused.inc();
            tracing::warn!(route, code, "admin request refused");
            return respond(sock, code, "text/plain", text, true);
        }
    }
    match (method, route) {
        ("GET", "/metrics") => respond(sock, 200, "text/plain; version=0.0.4", &metrics(st), body),
        ("GET", "/fanouts") => respond(
            sock,
            200,
            "application/json",
            &crate::stats::render_fanouts(&st.shards),
            body,
        ),
        ("GET", "/healthz" | "/readyz") => {
            let draining = st.draining.load(Ordering::Relaxed);
            let linked = st.link.linked.get();
            // Liveness: broken (a shard died, cut off from every origin too long). Readiness
            // also needs an origin linked now and no drain, so load balancers send devices
            // only where they get cues.
            let problem = liveness_problem(st).or_else(|| {
                (route == "/readyz")
                    .then(|| {
                        if draining {
                            Some("draining".to_string())
                        } else if linked == 0 {
                            Some("no origin linked".to_string())
                        } else {
                            None
                        }
                    })
                    .flatten()
            });
            let status = match (&problem, draining) {
                (Some(_), _) => "unhealthy",
                (None, true) => "draining",
                (None, false) => "ok",
            };
            let reason = problem
                .as_deref()
                .map(|r| format!(",\"reason\":{}", serde_json::Value::from(r)))
                .unwrap_or_default();
            let text = format!(
                "{{\"status\":\"{status}\",\"origins_linked\":{linked},\"draining\":{draining}{reason}}}\n"
            );
            respond(
                sock,
                if problem.is_some() { 503 } else { 200 },
                "application/json",
                &text,
                body,
            )
        }
        ("POST", "/admin/undrain") => match undrain(st) {
            Ok(()) => respond(
                sock,
                200,
                "application/json",
                "{\"draining\":false}\n",
                true,
            ),
            Err(why) => respond(sock, 409, "text/plain", why, true),
        },
        ("POST", "/admin/drain") => {
            let window = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("window_s="))
                .map(|v| v.parse::<u64>().map(Duration::from_secs));
            let window = match window {
                None => st.drain_window,
                Some(Ok(w)) if w <= Duration::from_secs(3600) => w,
                Some(_) => {
                    return respond(
                        sock,
                        400,
                        "text/plain",
                        "window_s: must be 0..=3600 seconds\n",
                        true,
                    )
                }
            };
            let started = begin_drain(st, window);
            respond(
                sock,
                202,
                "application/json",
                &format!(
                    "{{\"draining\":true,\"started\":{started},\"window_s\":{}}}\n",
                    window.as_secs()
                ),
                true,
            )
        }
        ("POST", "/admin/send-path") => match set_send_path(&st.shards, query) {
            Ok(text) => respond(sock, 200, "application/json", &text, true),
            Err((code, why)) => respond(sock, code, "text/plain", &why, true),
        },
        (
            _,
            "/metrics" | "/fanouts" | "/healthz" | "/readyz" | "/admin/drain" | "/admin/undrain"
            | "/admin/send-path",
        ) => respond(sock, 405, "text/plain", "method not allowed\n", body),
        _ => respond(sock, 404, "text/plain", "not found\n", body),
    }
}

fn metrics(st: &AdminState) -> String {
    let mut s = String::with_capacity(16 * 1024);
    cue_common::metrics::build_info(&mut s, "edge");
    cue_common::metrics::process(&mut s);
    render(&st.shards, st.quic_tls.is_some(), &mut s);
    let l = &st.link;
    single(
        &mut s,
        "cue_edge_origins_linked",
        "gauge",
        "Origin relay links up.",
        l.linked.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_dials_total",
        "counter",
        "Relay dial attempts.",
        l.dials.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_dial_failures_total",
        "counter",
        "Relay dials that failed.",
        l.dial_failures.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_drops_total",
        "counter",
        "Relay links that went down.",
        l.drops.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_cues_received_total",
        "counter",
        "Cues received from origins.",
        l.cues_received.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_cues_forwarded_total",
        "counter",
        "New cues sent to shards.",
        l.cues_forwarded.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_cues_refused_total",
        "counter",
        "Cues refused from origins: seq or time beyond the clock (never adopted).",
        l.cues_refused.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_tls_failures_total",
        "counter",
        "Links to origins whose TLS handshake failed (certificate not trusted or wrong name).",
        l.tls_failures.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_retirements_total",
        "counter",
        "RETIRED frames from origins (the event's cue forgotten by the link and every shard).",
        l.retirements.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_events_held",
        "gauge",
        "Events whose newest cue the relay link holds for catch-up (at most relay_cache_events).",
        l.events_held.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_events_evicted_total",
        "counter",
        "Events pushed out of the relay link's hold at relay_cache_events (the longest quiet first).",
        l.events_evicted.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_catchups_served_total",
        "counter",
        "Shard catch-up requests answered with the event's newest cue.",
        l.catchups_served.get(),
    );
    single(
        &mut s,
        "cue_edge_relay_catchups_missed_total",
        "counter",
        "Shard catch-up requests for an event the link holds no cue of.",
        l.catchups_missed.get(),
    );
    header(
        &mut s,
        "cue_edge_relay_cues_by_class_total",
        "counter",
        "New cues from origins by their event's priority class.",
    );
    for p in cue_common::cue::Priority::ALL {
        sample(
            &mut s,
            "cue_edge_relay_cues_by_class_total",
            &format!("class=\"{}\"", p.as_str()),
            l.cues_by_class[p.index()].get(),
        );
    }
    single(
        &mut s,
        "cue_edge_lane_background_holds_total",
        "counter",
        "Times a shard's lane began holding background cues back (conflating them) because the shard's fanout lagged.",
        l.background_holds.get(),
    );
    single(
        &mut s,
        "cue_edge_lane_background_holding",
        "gauge",
        "Lanes holding background cues back now.",
        l.background_holding.get(),
    );
    single(
        &mut s,
        "cue_edge_lane_waiting",
        "gauge",
        "Cues and retirements waiting in the shards' lanes (newest per event) for a shard behind.",
        l.lane_waiting.get(),
    );
    single(
        &mut s,
        "cue_edge_lane_conflated_total",
        "counter",
        "Cues replaced in a shard's lane by a newer one of their event before the shard took them (never fanned out).",
        l.lane_conflated.get(),
    );
    single(
        &mut s,
        "cue_edge_lane_dropped_total",
        "counter",
        "Lane items dropped at the cap of relay_cache_events events (their devices get the newest at catch-up).",
        l.lane_dropped.get(),
    );
    single(
        &mut s,
        "cue_edge_last_cue_timestamp_seconds",
        "gauge",
        "Origin ts of the newest cue, seconds since the epoch.",
        l.last_cue_ts.get() as f64 / 1e3,
    );
    single(
        &mut s,
        "cue_edge_capacity_connections",
        "gauge",
        "Connections this process can hold (fd limit).",
        st.capacity,
    );
    if let Some(q) = &st.quic_tls {
        single(
            &mut s,
            "cue_edge_quic_tls_sessions",
            "gauge",
            "QUIC connections still holding TLS handshake state (released once established).",
            q.sessions_holding_tls() as u64,
        );
    }
    single(
        &mut s,
        "cue_edge_admin_refused_total",
        "counter",
        "Admin requests (drain, undrain) refused for a missing, invalid or non-admin token.",
        st.refused.get(),
    );
    header(&mut s, "cue_edge_draining", "gauge", "1 while draining.");
    sample(
        &mut s,
        "cue_edge_draining",
        "",
        st.draining.load(Ordering::Relaxed) as u8,
    );
    if let Some(rss) = rss_bytes() {
        single(
            &mut s,
            "cue_edge_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            rss,
        );
    }
    s
}

/// Resident set size of this process, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Writes the response; `with_body` false (HEAD) sends the head only, with the length the body
/// would have.
fn respond(
    sock: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let reason = crate::ws::handshake::reason_phrase(status);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes())?;
    if with_body {
        sock.write_all(body.as_bytes())?;
    }
    Ok(())
}
