//! Publishing: seq assignment and group commit on one writer thread that owns the durable log.
//!
//! HTTP handlers send `(event, key)` requests over a bounded queue; the writer takes every
//! request waiting (up to a batch limit), assigns each its seq (newest seq of the event + 1) and
//! the publish time, appends the batch to the log with one `fdatasync`, and only then updates
//! the shared newest-cue state, hands the cues to the relay and answers the callers. A failed
//! append answers every caller of the batch with an error and changes nothing (the log truncates
//! what it wrote), so a 201 always means durable and a 503 means not published.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::log::CueLog;
use cue_common::cue::{Cue, EventName};
use cue_common::metrics::{Counter, Gauge, Histogram};

/// Newest cue of every event, shared by the HTTP API and the relay (read-mostly).
pub type Latest = Arc<RwLock<HashMap<EventName, Cue>>>;

/// Why a publish was not made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The publish queue is full: the origin is overloaded; retry with backoff.
    #[error("publish queue full")]
    Overloaded,
    /// The log could not make the cue durable; nothing was published. Retry may help.
    #[error("cue log: {0}")]
    Log(String),
    /// The origin is shutting down.
    #[error("origin shutting down")]
    ShuttingDown,
}

struct Request {
    event: EventName,
    key: Box<str>,
    reply: oneshot::Sender<Result<Cue, PublishError>>,
}

/// Publisher metrics.
#[derive(Debug, Default)]
pub struct PublishMetrics {
    /// Cues made durable.
    pub published: Counter,
    /// Publishes that failed to become durable.
    pub failed: Counter,
    /// Publishes refused because the queue was full.
    pub overloaded: Counter,
    /// Group-commit batches written.
    pub batches: Counter,
    /// Time from request to durable, per cue.
    pub durable_latency: Histogram,
    /// Current log size in bytes.
    pub log_bytes: Gauge,
    /// Compactions run since start.
    pub compactions: Gauge,
    /// Events known.
    pub events: Gauge,
}

/// Handle to the writer thread. Cloneable; the thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// Most requests in one group commit.
const MAX_BATCH: usize = 512;

impl Publisher {
    /// Starts the writer thread over an opened log. `clock_ms` gives the publish time (ms since
    /// the Unix epoch); `relay` receives every durable cue. Returns the handle and the thread.
    pub fn start(
        log: CueLog,
        latest: Latest,
        relay: broadcast::Sender<Cue>,
        metrics: Arc<PublishMetrics>,
        queue: usize,
        clock_ms: impl Fn() -> u64 + Send + 'static,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let handle = std::thread::Builder::new()
            .name("cue-log-writer".into())
            .spawn(move || writer(log, latest, relay, metrics, rx, clock_ms))
            .expect("spawn log writer thread");
        (Self { tx }, handle)
    }

    /// Publishes `key` on `event`; resolves once the cue is durable.
    pub async fn publish(&self, event: EventName, key: &str) -> Result<Cue, PublishError> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            event,
            key: key.into(),
            reply,
        };
        self.tx.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => PublishError::ShuttingDown,
        })?;
        rx.await.map_err(|_| PublishError::ShuttingDown)?
    }
}

fn writer(
    mut log: CueLog,
    latest: Latest,
    relay: broadcast::Sender<Cue>,
    metrics: Arc<PublishMetrics>,
    mut rx: mpsc::Receiver<Request>,
    clock_ms: impl Fn() -> u64,
) {
    let mut batch: Vec<(Request, Instant)> = Vec::with_capacity(MAX_BATCH);
    let mut cues: Vec<Cue> = Vec::with_capacity(MAX_BATCH);
    record_log_gauges(&log, &metrics);
    while let Some(first) = rx.blocking_recv() {
        batch.push((first, Instant::now()));
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push((r, Instant::now())),
                Err(_) => break,
            }
        }
        let ts = clock_ms();
        let mut next: HashMap<&EventName, u64> = HashMap::new();
        cues.clear();
        for (r, _) in &batch {
            let seq = next
                .entry(&r.event)
                .or_insert_with(|| log.latest().get(&r.event).map_or(0, |c| c.seq()));
            *seq += 1;
            cues.push(Cue::new(r.event.as_str(), &r.key, *seq, ts).expect("validated by caller"));
        }
        let result = log.append(&cues);
        record_log_gauges(&log, &metrics);
        metrics.batches.inc();
        match result {
            Ok(()) => {
                {
                    let mut l = latest.write().expect("latest lock");
                    for c in &cues {
                        l.insert(c.event().clone(), c.clone());
                    }
                }
                for ((r, t0), c) in batch.drain(..).zip(cues.drain(..)) {
                    // No receivers (no edge connected) is fine: edges catch up on HELLO.
                    let _ = relay.send(c.clone());
                    metrics.published.inc();
                    metrics
                        .durable_latency
                        .observe_us(t0.elapsed().as_micros() as u64);
                    let _ = r.reply.send(Ok(c));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, cues = batch.len(), "cue log append failed; batch refused");
                let msg = e.to_string();
                for (r, _) in batch.drain(..) {
                    metrics.failed.inc();
                    let _ = r.reply.send(Err(PublishError::Log(msg.clone())));
                }
            }
        }
    }
}

fn record_log_gauges(log: &CueLog, m: &PublishMetrics) {
    m.log_bytes.set(log.len_bytes() as i64);
    m.compactions.set(log.compactions() as i64);
    m.events.set(log.events() as i64);
}
