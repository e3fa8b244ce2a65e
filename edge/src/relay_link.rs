//! The edge's links to its origins: one glommio executor thread (not pinned, it does little)
//! that dials every `--origin`, says what the edge holds, takes catch-up and live cues, keeps
//! only the newest per event (several origins may send the same cue), encodes each new cue once
//! per format and hands it to every shard's [`Lane`] (newest per event, never waiting), from
//! which one task per shard feeds that shard's channel: a slow shard delays no other. Links are re-dialled with jittered
//! exponential backoff and resume from the seqs the edge holds. With relay TLS every link is
//! TLS 1.3 with the edge's certificate, to an origin whose certificate chains to the origin CA
//! and names the host dialled. A cue whose seq is beyond any clock ([`MAX_SEQ_AHEAD_MS`]) is
//! refused and counted.
//!
//! The same executor forwards control messages (drain, stop) from the admin thread and the
//! signal handler to the shards, since each shard channel has exactly one sender: this thread.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cue_common::cue::{EventName, Priority};
use cue_common::metrics::{Counter, Gauge};
use cue_common::relay::{self, Backoff, Frame, Liveness, LivenessAction, Newest};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::shared_channel::{SharedReceiver, SharedSender};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use rand::{Rng, SeedableRng};

use crate::encoded::EncodedCue;
use crate::lane::{Lane, LaneItem};
use crate::shard::ShardMsg;

/// A shard's lane, and the doorbell of the task that moves it into the shard's channel.
struct ShardLane {
    lane: RefCell<Lane>,
    bell: glommio::channels::local_channel::LocalSender<()>,
}

/// Every shard's lane, by shard index.
type Lanes = Rc<Vec<ShardLane>>;

/// Queues `item` for shard `i` and rings its task.
fn hand_one(lanes: &Lanes, i: usize, item: LaneItem, stats: &LinkStats) {
    let l = &lanes[i];
    let (c, d) = {
        let mut lane = l.lane.borrow_mut();
        let before = (lane.conflated, lane.dropped);
        lane.push(item);
        (lane.conflated - before.0, lane.dropped - before.1)
    };
    stats.lane_conflated.add(c);
    stats.lane_dropped.add(d);
    stats.lane_waiting.add(1 - c as i64 - d as i64);
    // Full means already rung.
    let _ = l.bell.try_send(());
}

/// Queues `item` for every shard.
fn hand(lanes: &Lanes, item: LaneItem, stats: &LinkStats) {
    for i in 0..lanes.len() {
        hand_one(lanes, i, item.clone(), stats);
    }
}

/// Control requests for the shards.
#[derive(Debug, Clone)]
pub enum Control {
    /// New token keys (SIGHUP): new sessions are checked with them; sessions up stay.
    Keys(cue_common::keys::Verifier),
    /// Drain over this window; the number names the drain (the shards report it drained).
    Drain(Duration, u64),
    /// End the drain in force.
    Undrain,
    /// Stop the shards and the links.
    Stop,
}

/// Relay-link counters.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Origins linked now.
    pub linked: Gauge,
    /// Unix ms of the last link going up or down (process start before any).
    pub changed_ms: Gauge,
    /// Dial attempts.
    pub dials: Counter,
    /// Dials that failed.
    pub dial_failures: Counter,
    /// Links that ended after being up.
    pub drops: Counter,
    /// Cues received (before de-duplication).
    pub cues_received: Counter,
    /// Cues that were new and went to the shards.
    pub cues_forwarded: Counter,
    /// Unix ms of the newest cue forwarded.
    pub last_cue_ts: Gauge,
    /// Cues refused because their seq or time was beyond [`MAX_SEQ_AHEAD_MS`] of the clock.
    pub cues_refused: Counter,
    /// Links whose TLS handshake failed (the origin's certificate did not check out).
    pub tls_failures: Counter,
    /// Events whose newest cue the link holds (at most `cache_events`).
    pub events_held: Gauge,
    /// Events pushed out of the link's hold at `cache_events` (the longest quiet first).
    pub events_evicted: Counter,
    /// RETIRED frames received from origins.
    pub retirements: Counter,
    /// Catch-up requests from shards answered with the held cue.
    pub catchups_served: Counter,
    /// Catch-up requests for an event the link holds no cue of (none published yet, or pushed
    /// out).
    pub catchups_missed: Counter,
    /// Items (cues, retirements) waiting in the shards' lanes.
    pub lane_waiting: Gauge,
    /// Cues replaced in a shard's lane by a newer one of their event before the shard took
    /// them (never fanned out).
    pub lane_conflated: Counter,
    /// Items dropped from a lane at its cap (`relay_cache_events` events).
    pub lane_dropped: Counter,
    /// New cues by their event's class (`Priority::ALL` order).
    pub cues_by_class: [Counter; 3],
    /// Times a lane began holding background cues back because its shard lagged.
    pub background_holds: Counter,
    /// Lanes holding background cues back now.
    pub background_holding: Gauge,
    /// Set when the link's thread ended (a stop, or a panic): the supervisor ends the process
    /// if it was not asked to stop.
    pub stopped: std::sync::atomic::AtomicBool,
}

/// Settings of the links.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Origins' relay addresses, `HOST:PORT` (resolved at every dial).
    pub origins: Vec<String>,
    /// Edge identity sent in HELLO.
    pub edge_id: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Drop a link silent this long.
    pub dead_after: Duration,
    /// First re-dial delay.
    pub backoff_base: Duration,
    /// Longest re-dial delay.
    pub backoff_max: Duration,
    /// RNG seed for backoff jitter.
    pub seed: u64,
    /// Relay TLS (the origins' CA and this edge's certificate); `None` for plaintext.
    pub tls: Option<Arc<cue_common::tls::Reloadable<rustls::ClientConfig>>>,
    /// Most events whose newest cue the link holds for the shards' catch-up.
    pub cache_events: usize,
    /// A shard with more devices than this left to visit in its fanouts lags: its lane holds
    /// background cues back (conflating them) until it is below again.
    pub hold_background_above: usize,
    /// Every shard's counters (the feeders read their fanout backlog).
    pub shard_stats: Vec<Arc<crate::stats::ShardStats>>,
}

/// Fanout slices of backlog past which a shard lags (`hold_background_above` =
/// `fanout_slice` x this): ~4 slices, some 20-40 ms of writes.
pub const HOLD_SLICES: usize = 4;

/// How often a feeder holding background cues back looks at its shard's backlog again.
const HOLD_RECHECK: Duration = Duration::from_millis(5);

/// How far ahead of this edge's clock a cue's seq may be. Seqs follow the publish time in ms
/// (`cue_common::cue::next_seq`) and run ahead of it only while an event gets more than one cue
/// per millisecond, so an hour is far beyond any real burst; a seq past it (a forged
/// `u64::MAX` would silence its event for good) is refused and counted, never adopted.
pub const MAX_SEQ_AHEAD_MS: u64 = 3_600_000;

/// True when `cue` could have come from an origin: its seq and publish time are not beyond
/// [`MAX_SEQ_AHEAD_MS`] past `now_ms`.
pub fn plausible(cue: &cue_common::cue::Cue, now_ms: u64) -> bool {
    let limit = now_ms.saturating_add(MAX_SEQ_AHEAD_MS);
    cue.seq() <= limit && cue.ts() <= limit
}

/// Starts the link thread. It forwards cues to `shards` until it gets [`Control::Stop`], and
/// answers each shard's catch-up requests (`catchups[i]` from shard `i`: an event a device
/// subscribed to whose slot is new) with the newest cue it holds of that event.
pub fn spawn(
    cfg: LinkConfig,
    shards: Vec<SharedSender<ShardMsg>>,
    catchups: Vec<SharedReceiver<EventName>>,
    control: crossbeam_channel::Receiver<Control>,
    stats: Arc<LinkStats>,
) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("cue-relay-link")
        .io_memory(64 * 1024)
        .spawn(move || async move {
            let st = stats.clone();
            crate::stats::on_thread_exit(move || {
                st.stopped.store(true, std::sync::atomic::Ordering::SeqCst)
            });
            #[cfg(debug_assertions)]
            if let Ok(v) = std::env::var("CUE_EDGE_FAULT_PANIC_LINK_MS") {
                // Debug builds only (the tests' binaries): the link panics after `v` ms, so a
                // test can show that a dead link ends the process.
                let ms: u64 = v
                    .parse()
                    .unwrap_or_else(|_| panic!("CUE_EDGE_FAULT_PANIC_LINK_MS={v}: want ms"));
                glommio::spawn_local(async move {
                    glommio::timer::sleep(Duration::from_millis(ms)).await;
                    panic!("injected fault: CUE_EDGE_FAULT_PANIC_LINK_MS={ms}");
                })
                .detach();
            }
            let mut senders = Vec::with_capacity(shards.len());
            for s in shards {
                senders.push(s.connect().await);
            }
            let senders = Rc::new(senders);
            let newest = Rc::new(RefCell::new(Newest::with_cap(cfg.cache_events)));
            let stop = Rc::new(std::cell::Cell::new(false));
            let mut bells = Vec::new();
            let lanes: Lanes = Rc::new(
                (0..senders.len())
                    .map(|_| {
                        let (bell, rx) = glommio::channels::local_channel::new_bounded(1);
                        bells.push(rx);
                        ShardLane {
                            lane: RefCell::new(Lane::new(cfg.cache_events)),
                            bell,
                        }
                    })
                    .collect(),
            );
            // One task per shard moves its lane into its channel, waiting only for that shard.
            let mut feeders = Vec::new();
            for (i, bell) in bells.into_iter().enumerate() {
                let (lanes, senders, stats, stop) =
                    (lanes.clone(), senders.clone(), stats.clone(), stop.clone());
                let shard = cfg.shard_stats.get(i).cloned();
                let hold_above = cfg.hold_background_above;
                feeders.push(glommio::spawn_local(async move {
                    let mut holding = false;
                    loop {
                        // Holding background cues back: look again at the shard every
                        // HOLD_RECHECK even when nothing new arrives.
                        let rung = if holding {
                            futures_lite::future::or(bell.recv(), async {
                                glommio::timer::sleep(HOLD_RECHECK).await;
                                Some(())
                            })
                            .await
                        } else {
                            bell.recv().await
                        };
                        if rung.is_none() || stop.get() {
                            break;
                        }
                        loop {
                            let lags = shard.as_ref().is_some_and(|s| {
                                s.fanout_backlog.get().max(0) as usize > hold_above
                            });
                            let lowest = if lags {
                                Priority::Normal
                            } else {
                                Priority::Background
                            };
                            let item = lanes[i].lane.borrow_mut().pop_up_to(lowest);
                            let held = lags && lanes[i].lane.borrow().has(Priority::Background);
                            if held != holding {
                                holding = held;
                                stats.background_holding.add(if held { 1 } else { -1 });
                                if held {
                                    stats.background_holds.inc();
                                }
                            }
                            let Some(item) = item else { break };
                            stats.lane_waiting.add(-1);
                            let msg = match item {
                                LaneItem::Cue(c) => ShardMsg::Cue(c),
                                LaneItem::Retired(e) => ShardMsg::Retired(e),
                            };
                            if senders[i].send(msg).await.is_err() || stop.get() {
                                return;
                            }
                        }
                    }
                }));
            }
            let mut tasks = Vec::new();
            let mut requests = Vec::new();
            for (i, rx) in catchups.into_iter().enumerate() {
                let (rx, lanes, newest, stats) = (
                    rx.connect().await,
                    lanes.clone(),
                    newest.clone(),
                    stats.clone(),
                );
                // Ends when the shard drops its sender (it stopped).
                requests.push(glommio::spawn_local(async move {
                    while let Some(ev) = rx.recv().await {
                        let held = newest.borrow().get(&ev).cloned();
                        match held {
                            Some(cue) => {
                                stats.catchups_served.inc();
                                let enc = Arc::new(EncodedCue::new(cue));
                                hand_one(&lanes, i, LaneItem::Cue(enc), &stats);
                            }
                            None => stats.catchups_missed.inc(),
                        }
                    }
                }));
            }
            for (i, addr) in cfg.origins.iter().enumerate() {
                let (cfg, lanes, newest, stats, stop) = (
                    cfg.clone(),
                    lanes.clone(),
                    newest.clone(),
                    stats.clone(),
                    stop.clone(),
                );
                let addr = addr.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut rng =
                        rand::rngs::SmallRng::seed_from_u64(cfg.seed.wrapping_add(i as u64));
                    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
                    while !stop.get() {
                        stats.dials.inc();
                        let up = Instant::now();
                        match link_once(&addr, &cfg, &lanes, &newest, &stats, &stop).await {
                            Ok(()) => {}
                            Err(e) => {
                                tracing::warn!(origin = %addr, error = %e, "relay link down");
                            }
                        }
                        if stop.get() {
                            break;
                        }
                        if up.elapsed() > cfg.dead_after {
                            backoff.reset();
                        }
                        let delay = backoff.next_delay(rng.gen::<f64>());
                        tracing::info!(origin = %addr, ?delay, "re-dialling origin");
                        sleep_unless_stopped(delay, &stop).await;
                    }
                }));
            }
            // Control: drain/stop requests from other threads, checked every 20 ms.
            loop {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                match control.try_recv() {
                    Ok(Control::Drain(w, gen)) => {
                        for s in senders.iter() {
                            let _ = s.send(ShardMsg::Drain(w, gen)).await;
                        }
                    }
                    Ok(Control::Undrain) => {
                        for s in senders.iter() {
                            let _ = s.send(ShardMsg::Undrain).await;
                        }
                    }
                    Ok(Control::Keys(k)) => {
                        for s in senders.iter() {
                            let _ = s.send(ShardMsg::Keys(k.clone())).await;
                        }
                    }
                    Ok(Control::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                }
            }
            stop.set(true);
            for l in lanes.iter() {
                let _ = l.bell.try_send(());
            }
            for f in feeders {
                f.cancel().await;
            }
            for s in senders.iter() {
                let _ = s.send(ShardMsg::Stop).await;
            }
            for t in tasks {
                t.await;
            }
            for r in requests {
                r.cancel().await;
            }
        })
        .map_err(|e| std::io::Error::other(format!("starting relay link executor: {e}")))
}

async fn sleep_unless_stopped(d: Duration, stop: &std::cell::Cell<bool>) {
    let end = Instant::now() + d;
    while !stop.get() && Instant::now() < end {
        glommio::timer::sleep(Duration::from_millis(50).min(end - Instant::now())).await;
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(String),
    #[error("protocol: {0}")]
    Proto(#[from] relay::RelayError),
    #[error("origin closed the link")]
    Closed,
    #[error("origin silent for {0:?}")]
    Dead(Duration),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Resolves `HOST:PORT` off the executor (a name lookup may block) and dials each address it
/// names in turn.
async fn dial(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let name = addr.to_string();
    let addrs: Vec<SocketAddr> = glommio::executor()
        .spawn_blocking(move || {
            std::net::ToSocketAddrs::to_socket_addrs(&name).map(|a| a.collect::<Vec<_>>())
        })
        .await
        .map_err(|e| format!("resolving {addr}: {e}"))?;
    let mut last = format!("{addr} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(last)
}

async fn link_once(
    addr: &str,
    cfg: &LinkConfig,
    lanes: &Lanes,
    newest: &Rc<RefCell<Newest>>,
    stats: &LinkStats,
    stop: &std::cell::Cell<bool>,
) -> Result<(), LinkError> {
    let sock = dial(addr, cfg.dead_after).await.map_err(|e| {
        stats.dial_failures.inc();
        LinkError::Connect(e)
    })?;
    let _ = sock.set_nodelay(true);
    // Reads wake at least every heartbeat so liveness is checked even when nothing arrives.
    sock.set_read_timeout(Some(cfg.heartbeat / 2))
        .map_err(|e| LinkError::Connect(e.to_string()))?;
    match &cfg.tls {
        None => speak(sock, addr, cfg, lanes, newest, stats, stop).await,
        Some(tls) => {
            let name = cue_common::tls::server_name(addr).map_err(LinkError::Connect)?;
            let handshake = futures_rustls::TlsConnector::from(tls.get()).connect(name, sock);
            let s = glommio::timer::timeout(cfg.dead_after, async {
                handshake.await.map_err(glommio::GlommioError::from)
            })
            .await
            .map_err(|e| {
                stats.tls_failures.inc();
                LinkError::Tls(e.to_string())
            })?;
            speak(s, addr, cfg, lanes, newest, stats, stop).await
        }
    }
}

/// The relay protocol over an established link (plaintext or TLS).
async fn speak<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    addr: &str,
    cfg: &LinkConfig,
    lanes: &Lanes,
    newest: &Rc<RefCell<Newest>>,
    stats: &LinkStats,
    stop: &std::cell::Cell<bool>,
) -> Result<(), LinkError> {
    let mut out = Vec::with_capacity(1024);
    let since = newest.borrow().since();
    relay::encode(
        &Frame::Hello {
            version: cue_common::relay::VERSION,
            edge_id: cfg.edge_id.clone(),
            since,
        },
        &mut out,
    );
    sock.write_all(&out).await?;
    out.clear();
    stats.linked.add(1);
    stats.changed_ms.set(cue_common::time::unix_now_ms() as i64);
    tracing::info!(origin = %addr, "relay link up");
    let result = read_loop(&mut sock, cfg, lanes, newest, stats, stop, &mut out).await;
    stats.linked.add(-1);
    stats.changed_ms.set(cue_common::time::unix_now_ms() as i64);
    stats.drops.inc();
    result
}

/// A cue from an origin: refused if implausible, else kept if newer than what the link holds
/// and handed to every shard's lane.
fn take_cue(
    cue: cue_common::cue::Cue,
    class: Priority,
    lanes: &Lanes,
    newest: &RefCell<Newest>,
    stats: &LinkStats,
) {
    stats.cues_received.inc();
    if !plausible(&cue, cue_common::time::unix_now_ms()) {
        stats.cues_refused.inc();
        tracing::warn!(
            ?cue,
            "relay: cue with a seq or time beyond the clock refused"
        );
        return;
    }
    let taken = {
        let mut n = newest.borrow_mut();
        let before = n.evicted;
        let taken = n.offer(&cue);
        stats.events_evicted.add(n.evicted - before);
        stats.events_held.set(n.len() as i64);
        taken
    };
    if taken {
        stats.cues_forwarded.inc();
        stats.cues_by_class[class.index()].inc();
        stats.last_cue_ts.set(cue.ts() as i64);
        let enc = Arc::new(EncodedCue::new(cue).with_class(class));
        hand(lanes, LaneItem::Cue(enc), stats);
    }
}

async fn read_loop<S: AsyncRead + AsyncWrite + Unpin>(
    sock: &mut S,
    cfg: &LinkConfig,
    lanes: &Lanes,
    newest: &Rc<RefCell<Newest>>,
    stats: &LinkStats,
    stop: &std::cell::Cell<bool>,
    out: &mut Vec<u8>,
) -> Result<(), LinkError> {
    let mut live = Liveness::new(Instant::now(), cfg.heartbeat, cfg.dead_after);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut nonce = 0u64;
    while !stop.get() {
        match sock.read(&mut chunk).await {
            Ok(0) => return Err(LinkError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                live.heard(Instant::now());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let mut used = 0;
        while let Some((frame, n)) = relay::decode(&buf[used..])? {
            used += n;
            match frame {
                Frame::Cue(cue) => take_cue(cue, Priority::Normal, lanes, newest, stats),
                Frame::ClassedCue(cue, class) => take_cue(cue, class, lanes, newest, stats),
                Frame::Retired(ev) => {
                    // Forget it here and on every shard: a device of it gets no stale catch-up.
                    stats.retirements.inc();
                    {
                        let mut n = newest.borrow_mut();
                        n.remove(&ev);
                        stats.events_held.set(n.len() as i64);
                    }
                    // Every shard, even when the link's bounded hold had pushed the event out:
                    // a shard's slot may still hold its cue.
                    tracing::info!(event = %ev, "relay: event retired");
                    hand(lanes, LaneItem::Retired(ev), stats);
                }
                Frame::Ping(n) => relay::encode(&Frame::Pong(n), out),
                Frame::CaughtUp(n) => tracing::info!(cues = n, "relay catch-up done"),
                Frame::Pong(_) => {}
                Frame::Hello { .. } => tracing::warn!("unexpected HELLO from origin, ignored"),
            }
        }
        buf.drain(..used);
        match live.poll(Instant::now()) {
            LivenessAction::Dead => return Err(LinkError::Dead(cfg.dead_after)),
            LivenessAction::SendPing => {
                nonce += 1;
                relay::encode(&Frame::Ping(nonce), out);
            }
            LivenessAction::Idle => {}
        }
        if !out.is_empty() {
            sock.write_all(out).await?;
            out.clear();
            live.sent(Instant::now());
        }
    }
    Ok(())
}
