//! The relay listener: edges dial in, say what they hold, get caught up, then get live cues.
//!
//! One tokio task per edge. Live cues come from a bounded broadcast channel; an edge that falls
//! more than its capacity behind is not waited for (the publisher never blocks on an edge): it
//! gets `Lagged`, and is re-synchronised from the newest state, which is the same catch-up a
//! reconnecting edge gets. Writes have a deadline; an edge that does not take bytes for that long
//! is dropped, and its re-dial catches it up. So a slow edge cannot stall the others.
//!
//! While the store has been unhealthy (a poisoned log, no NATS quorum) for longer than
//! `relay_unhealthy_grace_ms` the relay serves nobody: it drops every link and closes new ones at
//! once, so edges linked to several origins take their cues from a healthy one instead of
//! waiting on stale state here (`crate::store::after_grace`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::time::{timeout, Instant};

use crate::store::{Health, Latest, Live};
use cue_common::cue::{Cue, EventName, Priority};
use cue_common::metrics::{Counter, Gauge};
use cue_common::relay::{self, Frame, Liveness, LivenessAction};
use cue_common::tenant::Scope;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Send a PING after this long without sending.
    pub heartbeat: Duration,
    /// Drop an edge heard nothing from for this long.
    pub dead_after: Duration,
    /// Drop an edge that does not accept a write for this long.
    pub write_timeout: Duration,
    /// Most edges connected at once; more are refused (closed at once).
    pub max_edges: usize,
    /// The listener's TLS (`relay_cert`, `relay_key`, `relay_client_ca`); `None` for plaintext.
    pub tls: Option<RelayTls>,
}

/// Relay metrics.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    /// Edges connected now.
    pub edges: Gauge,
    /// Edge links accepted since start.
    pub accepted: Counter,
    /// Links refused for `max_edges`.
    pub refused: Counter,
    /// Cues sent to edges (catch-up and live).
    pub cues_sent: Counter,
    /// Catch-up cues sent after HELLOs.
    pub catch_up_cues: Counter,
    /// RETIRED frames sent to edges.
    pub retirements_sent: Counter,
    /// Re-synchronisations of an edge that lagged behind the broadcast channel.
    pub resyncs: Counter,
    /// Links ended by a protocol error, a dead peer or a write timeout.
    pub dropped: Counter,
    /// Links refused or ended because the store was unhealthy.
    pub store_unhealthy: Counter,
    /// Dialers refused in the TLS handshake (no certificate, a foreign CA, plaintext, too slow,
    /// or a certificate naming a tenant badly).
    pub tls_refused: Counter,
    /// Live cues not relayed to an edge because it does not carry their tenant (once per edge).
    pub cues_out_of_scope: Counter,
}

/// The relay listener's TLS, when it has one (`relay_cert`, `relay_key`, `relay_client_ca`).
pub type RelayTls = Arc<cue_common::tls::Reloadable<rustls::ServerConfig>>;

/// Runs the relay listener until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    latest: Latest,
    live: broadcast::Sender<Live>,
    opts: RelayOptions,
    metrics: Arc<RelayMetrics>,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "relay accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if let Some(why) = health.borrow().as_deref() {
            metrics.store_unhealthy.inc();
            tracing::warn!(%peer, reason = why, "relay: store unhealthy, refusing link");
            continue;
        }
        if metrics.edges.get() as usize >= opts.max_edges {
            metrics.refused.inc();
            tracing::warn!(%peer, max = opts.max_edges, "relay: too many edges, refusing link");
            continue;
        }
        let _ = sock.set_nodelay(true);
        metrics.accepted.inc();
        metrics.edges.add(1);
        let (latest, rx, opts, m, h, sd) = (
            latest.clone(),
            live.subscribe(),
            opts.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        );
        let tls = opts.tls.as_ref().map(|t| t.get());
        tokio::spawn(async move {
            let r = match tls {
                None => edge_link(sock, None, latest, rx, &opts, &m, h, sd).await,
                // The handshake has the HELLO's deadline; a dialer that cannot prove itself
                // never gets a frame.
                Some(cfg) => match timeout(
                    opts.dead_after,
                    tokio_rustls::TlsAcceptor::from(cfg).accept(sock),
                )
                .await
                {
                    // The tenants the edge's certificate names: only theirs are relayed.
                    Ok(Ok(s)) => match peer_scope(&s) {
                        Ok(scope) => edge_link(s, scope, latest, rx, &opts, &m, h, sd).await,
                        Err(e) => Err(LinkError::Tls(format!("edge certificate: {e}"))),
                    },
                    Ok(Err(e)) => Err(LinkError::Tls(e.to_string())),
                    Err(_) => Err(LinkError::Tls(format!(
                        "no handshake within {:?}",
                        opts.dead_after
                    ))),
                },
            };
            match r {
                Ok(id) => tracing::info!(%peer, edge = %id, "relay: edge link closed"),
                Err(LinkError::Tls(e)) => {
                    m.tls_refused.inc();
                    tracing::warn!(%peer, error = %e, "relay: TLS handshake refused");
                }
                Err(e) => {
                    m.dropped.inc();
                    tracing::warn!(%peer, error = %e, "relay: edge link dropped");
                }
            }
            m.edges.add(-1);
        });
    }
}

/// The tenants the verified certificate of a TLS edge names (`None`: every tenant).
fn peer_scope<S>(
    s: &tokio_rustls::server::TlsStream<S>,
) -> Result<Option<Scope>, cue_common::tenant::ScopeError> {
    match s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => cue_common::tenant::scope_of_cert(leaf.as_ref()),
        None => Ok(None),
    }
}

/// What the origin knows of one linked edge: the frames its HELLO version knows, and the
/// tenants it carries.
struct Peer {
    /// It knows RETIRED (version 2 and up).
    retirements: bool,
    /// It knows CUE_CLASS (version 3 and up).
    classes: bool,
    /// Its tenants (`None`: every tenant).
    scope: Option<Scope>,
}

impl Peer {
    /// True when this edge carries `event`'s tenant.
    fn carries(&self, event: &EventName) -> bool {
        self.scope.as_ref().is_none_or(|s| s.carries_event(event))
    }
}

/// Why an edge link ended abnormally.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Proto(#[from] relay::RelayError),
    #[error("no HELLO within {0:?}")]
    NoHello(Duration),
    #[error("first frame was not HELLO")]
    NotHello,
    #[error("edge silent for {0:?}")]
    Dead(Duration),
    #[error("edge did not accept a write within {0:?}")]
    WriteTimeout(Duration),
    #[error("store unhealthy: {0}")]
    StoreUnhealthy(String),
    #[error("TLS: {0}")]
    Tls(String),
}

struct Conn<S> {
    sock: S,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads until one frame is complete.
    async fn read_frame(&mut self) -> Result<Option<Frame>, LinkError> {
        loop {
            if let Some((f, n)) = relay::decode(&self.rbuf)? {
                self.rbuf.drain(..n);
                return Ok(Some(f));
            }
            let mut chunk = [0u8; 4096];
            let n = self.sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn flush(&mut self, deadline: Duration) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        timeout(deadline, self.sock.write_all(&self.wbuf))
            .await
            .map_err(|_| LinkError::WriteTimeout(deadline))??;
        self.wbuf.clear();
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn edge_link<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    scope: Option<Scope>,
    latest: Latest,
    mut live: broadcast::Receiver<Live>,
    opts: &RelayOptions,
    m: &RelayMetrics,
    mut health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<String, LinkError> {
    let mut c = Conn {
        sock,
        rbuf: Vec::new(),
        wbuf: Vec::new(),
    };
    let hello = timeout(opts.dead_after, c.read_frame())
        .await
        .map_err(|_| LinkError::NoHello(opts.dead_after))??;
    let (version, edge_id, since) = match hello {
        Some(Frame::Hello {
            version,
            edge_id,
            since,
        }) => (version, edge_id, since),
        None => return Ok("(closed before HELLO)".into()),
        Some(_) => return Err(LinkError::NotHello),
    };
    // Edges of version 1 know no RETIRED frame, those of version 2 no CUE_CLASS.
    let peer = Peer {
        retirements: version >= 2,
        classes: version >= 3,
        scope,
    };
    // What this edge holds, updated as cues go out: live cues at or below it are skipped.
    // Events of tenants it does not carry are none of its business.
    let mut held: HashMap<EventName, u64> =
        since.into_iter().filter(|(e, _)| peer.carries(e)).collect();
    if let Some(s) = &peer.scope {
        tracing::info!(edge = %edge_id, tenants = %s.describe(), "relay: edge carries these tenants only");
    }
    let n = send_catch_up(&mut c, &latest, &mut held, &peer, m);
    c.wbuf.reserve(16);
    relay::encode(&Frame::CaughtUp(n as u32), &mut c.wbuf);
    c.flush(opts.write_timeout).await?;
    tracing::info!(edge = %edge_id, catch_up = n, "relay: edge linked");

    let mut liveness = Liveness::new(Instant::now().into_std(), opts.heartbeat, opts.dead_after);
    let mut nonce = 0u64;
    loop {
        let wake = Instant::from_std(liveness.next_deadline());
        tokio::select! {
            r = live.recv() => {
                match r {
                    Ok(item) => {
                        relay_live(item, &mut held, &peer, &mut c.wbuf, m);
                        // Take whatever else is already waiting, then write once.
                        while let Ok(item) = live.try_recv() {
                            relay_live(item, &mut held, &peer, &mut c.wbuf, m);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        m.resyncs.inc();
                        tracing::warn!(edge = %edge_id, skipped, "relay: edge lagged, resyncing from newest state");
                        send_catch_up(&mut c, &latest, &mut held, &peer, m);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(edge_id),
                }
                c.flush(opts.write_timeout).await?;
                liveness.sent(Instant::now().into_std());
            }
            r = c.read_frame() => {
                match r? {
                    None => return Ok(edge_id),
                    Some(Frame::Ping(n)) => {
                        relay::encode(&Frame::Pong(n), &mut c.wbuf);
                        c.flush(opts.write_timeout).await?;
                        liveness.sent(Instant::now().into_std());
                    }
                    Some(Frame::Pong(_)) => {}
                    Some(other) => {
                        tracing::warn!(edge = %edge_id, frame = ?other, "relay: unexpected frame from edge, ignored");
                    }
                }
                liveness.heard(Instant::now().into_std());
            }
            _ = tokio::time::sleep_until(wake) => {
                match liveness.poll(Instant::now().into_std()) {
                    LivenessAction::Dead => return Err(LinkError::Dead(opts.dead_after)),
                    LivenessAction::SendPing => {
                        nonce += 1;
                        relay::encode(&Frame::Ping(nonce), &mut c.wbuf);
                        c.flush(opts.write_timeout).await?;
                        liveness.sent(Instant::now().into_std());
                    }
                    LivenessAction::Idle => {}
                }
            }
            _ = shutdown.changed() => return Ok(edge_id),
            Ok(()) = health.changed() => {
                if let Some(why) = health.borrow_and_update().clone() {
                    m.store_unhealthy.inc();
                    return Err(LinkError::StoreUnhealthy(why));
                }
            }
        }
    }
}

/// A cue's frame: CUE_CLASS for a class other than normal to an edge that knows the frame,
/// else CUE.
fn cue_frame(cue: Cue, class: Priority, classes: bool) -> Frame {
    if classes && class != Priority::Normal {
        Frame::ClassedCue(cue, class)
    } else {
        Frame::Cue(cue)
    }
}

/// One live item for an edge holding `held`: a cue it lacks, or (to an edge that knows the
/// frame) the retirement of an event it holds.
fn relay_live(
    item: Live,
    held: &mut HashMap<EventName, u64>,
    peer: &Peer,
    out: &mut Vec<u8>,
    m: &RelayMetrics,
) {
    match item {
        Live::Cue(cue, _) if !peer.carries(cue.event()) => m.cues_out_of_scope.inc(),
        Live::Cue(cue, class) => {
            if held.get(cue.event()).is_none_or(|&s| cue.seq() > s) {
                held.insert(cue.event().clone(), cue.seq());
                relay::encode(&cue_frame(cue, class, peer.classes), out);
                m.cues_sent.inc();
            }
        }
        Live::Retired(ev) => {
            if held.remove(&ev).is_some() && peer.retirements {
                relay::encode(&Frame::Retired(ev), out);
                m.retirements_sent.inc();
            }
        }
    }
}

/// The cues the edge lacks, and (to an edge that knows the frame) the retirement of every event
/// it holds that this origin no longer has: an edge that was away when an event was retired
/// learns it here.
fn send_catch_up<S>(
    c: &mut Conn<S>,
    latest: &Latest,
    held: &mut HashMap<EventName, u64>,
    peer: &Peer,
    m: &RelayMetrics,
) -> usize {
    let (cues, gone) = {
        let l = latest.read().expect("latest lock");
        let gone: Vec<EventName> = held
            .keys()
            .filter(|e| !l.contains_key(*e))
            .cloned()
            .collect();
        let cues: Vec<(Cue, Priority)> = relay::catch_up(l.values(), held)
            .into_iter()
            .filter(|c| peer.carries(c.event()))
            .map(|c| {
                let class = l.class(c.event());
                (c, class)
            })
            .collect();
        (cues, gone)
    };
    for ev in gone {
        held.remove(&ev);
        if peer.retirements {
            relay::encode(&Frame::Retired(ev), &mut c.wbuf);
            m.retirements_sent.inc();
        }
    }
    for (cue, class) in &cues {
        held.insert(cue.event().clone(), cue.seq());
        relay::encode(&cue_frame(cue.clone(), *class, peer.classes), &mut c.wbuf);
    }
    m.cues_sent.add(cues.len() as u64);
    m.catch_up_cues.add(cues.len() as u64);
    cues.len()
}
