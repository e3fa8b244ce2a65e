//! The embedded store: seq assignment and group commit on one writer thread that owns the
//! durable log (`crate::log`).
//!
//! HTTP handlers send `(event, key, idempotency key)` requests over a bounded queue; the writer
//! takes every request waiting (up to a batch limit), gives each its seq
//! ([`cue_common::cue::next_seq`]) and the publish time, appends the batch to the log with one
//! `fdatasync`, and only then updates the shared newest-cue state, hands the cues to the relay
//! and answers the callers. A failed append answers every caller of the batch with an error and
//! changes nothing (the log truncates what it wrote), so a 201 always means durable and a 503
//! means not published. A log that cannot recover from a failure is poisoned: the store's health
//! turns bad, so `/healthz` says so and the relay stops serving its stale state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{forget, offer, Latest, Live, PublishError, PublishMetrics};
use crate::log::CueLog;
use cue_common::cue::{next_seq, Cue, EventName, Priority};

/// How long a publish's `Idempotency-Key` is remembered (the same as JetStream's default
/// duplicate window). In memory: a retry that reaches a restarted origin publishes again.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(120);
/// Most idempotency keys remembered; beyond it the oldest are forgotten early.
pub const IDEMPOTENCY_MAX_KEYS: usize = 65_536;

struct Request {
    event: EventName,
    key: Box<str>,
    class: Priority,
    idempotency: Option<Box<str>>,
    reply: oneshot::Sender<Result<Cue, PublishError>>,
}

/// What the writer thread is asked.
enum Job {
    Publish(Request),
    Retire {
        event: EventName,
        reply: oneshot::Sender<Result<bool, PublishError>>,
    },
}

/// Handle to the writer thread. Cloneable; the thread stops when every handle is dropped.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Job>,
    metrics: Arc<PublishMetrics>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// Most requests in one group commit.
const MAX_BATCH: usize = 512;

/// What the writer thread is given.
pub struct WriterParts {
    /// The opened log.
    pub log: CueLog,
    /// Newest cue per event, shared with the API and the relay.
    pub latest: Latest,
    /// Receives every durable cue and retirement.
    pub relay: broadcast::Sender<Live>,
    /// Counters.
    pub metrics: Arc<PublishMetrics>,
    /// Set to the reason when the log is poisoned.
    pub health: watch::Sender<Option<String>>,
}

impl Publisher {
    /// Starts the writer thread. `clock_ms` gives the publish time (ms since the Unix epoch).
    /// Returns the handle and the thread.
    pub fn start(
        parts: WriterParts,
        queue: usize,
        clock_ms: impl Fn() -> u64 + Send + 'static,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let metrics = parts.metrics.clone();
        let handle = std::thread::Builder::new()
            .name("cue-log-writer".into())
            .spawn(move || writer(parts, rx, clock_ms))
            .expect("spawn log writer thread");
        (Self { tx, metrics }, handle)
    }

    /// Publishes `key` on `event` (the event taking `class`, written with the cue); resolves
    /// once the cue is durable. A repeated `idempotency` key for the same event within
    /// [`IDEMPOTENCY_WINDOW`] answers with the first cue.
    pub async fn publish(
        &self,
        event: EventName,
        key: &str,
        class: Priority,
        idempotency: Option<&str>,
    ) -> Result<Cue, PublishError> {
        let (reply, rx) = oneshot::channel();
        let req = Request {
            event,
            key: key.into(),
            class,
            idempotency: idempotency.map(Into::into),
            reply,
        };
        self.send(Job::Publish(req))?;
        rx.await.map_err(|_| PublishError::ShuttingDown)?
    }

    /// Retires `event` (durably, like a publish); `Ok(false)` when it has no cue.
    pub async fn retire(&self, event: EventName) -> Result<bool, PublishError> {
        let (reply, rx) = oneshot::channel();
        self.send(Job::Retire { event, reply })?;
        rx.await.map_err(|_| PublishError::ShuttingDown)?
    }

    fn send(&self, job: Job) -> Result<(), PublishError> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.metrics.overloaded.inc();
                PublishError::Overloaded
            }
            mpsc::error::TrySendError::Closed(_) => PublishError::ShuttingDown,
        })
    }
}

/// Idempotency keys seen within the window, oldest first, bounded.
#[derive(Default)]
struct Remembered {
    cues: HashMap<(EventName, Box<str>), Cue>,
    order: VecDeque<(Instant, EventName, Box<str>)>,
}

impl Remembered {
    fn expire(&mut self, now: Instant) {
        while let Some((t, _, _)) = self.order.front() {
            if now.duration_since(*t) < IDEMPOTENCY_WINDOW
                && self.order.len() < IDEMPOTENCY_MAX_KEYS
            {
                break;
            }
            let (_, e, k) = self.order.pop_front().expect("front exists");
            self.cues.remove(&(e, k));
        }
    }

    fn get(&self, event: &EventName, key: &str) -> Option<&Cue> {
        self.cues.get(&(event.clone(), key.into()))
    }

    fn insert(&mut self, now: Instant, event: &EventName, key: &str, cue: &Cue) {
        if self
            .cues
            .insert((event.clone(), key.into()), cue.clone())
            .is_none()
        {
            self.order.push_back((now, event.clone(), key.into()));
        }
    }
}

/// Where a request of the batch gets its answer: a new cue of this batch, or an earlier one.
enum Answer {
    New(usize),
    /// The same idempotency key as an earlier request of this batch.
    Repeat(usize),
    Known(Cue),
}

fn writer(parts: WriterParts, mut rx: mpsc::Receiver<Job>, clock_ms: impl Fn() -> u64) {
    let WriterParts {
        mut log,
        latest,
        relay,
        metrics,
        health,
    } = parts;
    let mut batch: Vec<(Request, Instant)> = Vec::with_capacity(MAX_BATCH);
    let mut cues: Vec<Cue> = Vec::with_capacity(MAX_BATCH);
    let mut classes: Vec<Priority> = Vec::with_capacity(MAX_BATCH);
    let mut answers: Vec<Answer> = Vec::with_capacity(MAX_BATCH);
    let mut remembered = Remembered::default();
    record_log_gauges(&log, &metrics);
    // A retirement ends the batch it meets and is done after it, in order.
    let mut retire: Option<(EventName, oneshot::Sender<Result<bool, PublishError>>)> = None;
    while let Some(first) = rx.blocking_recv() {
        match first {
            Job::Publish(r) => batch.push((r, Instant::now())),
            Job::Retire { event, reply } => retire = Some((event, reply)),
        }
        while retire.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Publish(r)) => batch.push((r, Instant::now())),
                Ok(Job::Retire { event, reply }) => retire = Some((event, reply)),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        remembered.expire(now);
        let ts = clock_ms();
        let mut next: HashMap<&EventName, u64> = HashMap::new();
        // Idempotency keys of this batch -> index of their new cue.
        let mut in_batch: HashMap<(&EventName, &str), usize> = HashMap::new();
        cues.clear();
        classes.clear();
        answers.clear();
        for (r, _) in &batch {
            if let Some(k) = r.idempotency.as_deref() {
                if let Some(c) = remembered.get(&r.event, k) {
                    answers.push(Answer::Known(c.clone()));
                    continue;
                }
                if let Some(&i) = in_batch.get(&(&r.event, k)) {
                    answers.push(Answer::Repeat(i));
                    continue;
                }
                in_batch.insert((&r.event, k), cues.len());
            }
            let seq = next
                .entry(&r.event)
                .or_insert_with(|| log.latest().get(&r.event).map_or(0, |c| c.seq()));
            *seq = next_seq(*seq, ts);
            answers.push(Answer::New(cues.len()));
            cues.push(Cue::new(r.event.as_str(), &r.key, *seq, ts).expect("validated by caller"));
            classes.push(r.class);
        }
        let result = if cues.is_empty() {
            Ok(())
        } else {
            metrics.batches.inc();
            log.append_classed(&cues, |i| classes[i])
        };
        record_log_gauges(&log, &metrics);
        match result {
            Ok(()) => {
                for (c, &class) in cues.iter().zip(&classes) {
                    offer(&latest, &relay, c, class);
                }
                for ((r, t0), answer) in batch.drain(..).zip(answers.drain(..)) {
                    let c = match answer {
                        Answer::New(i) => {
                            metrics.published.inc();
                            if let Some(k) = r.idempotency.as_deref() {
                                remembered.insert(now, &r.event, k, &cues[i]);
                            }
                            cues[i].clone()
                        }
                        Answer::Repeat(i) => {
                            metrics.idempotent_repeats.inc();
                            cues[i].clone()
                        }
                        Answer::Known(c) => {
                            metrics.idempotent_repeats.inc();
                            c
                        }
                    };
                    metrics
                        .durable_latency
                        .observe_us(t0.elapsed().as_micros() as u64);
                    let _ = r.reply.send(Ok(c));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, cues = batch.len(), "cue log append failed; batch refused");
                if log.is_poisoned() {
                    health.send_replace(Some(e.to_string()));
                }
                let e = Arc::new(e);
                for (r, _) in batch.drain(..) {
                    metrics.failed.inc();
                    let _ = r.reply.send(Err(PublishError::Log(e.clone())));
                }
                answers.clear();
            }
        }
        if let Some((event, reply)) = retire.take() {
            let r = log.retire(&event, clock_ms());
            record_log_gauges(&log, &metrics);
            let answer = match r {
                Ok(Some(seq)) => {
                    metrics.retired.inc();
                    forget(&latest, &relay, &event, seq);
                    tracing::info!(event = %event, seq, "event retired");
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => {
                    tracing::error!(error = %e, event = %event, "cue log: retirement failed");
                    if log.is_poisoned() {
                        health.send_replace(Some(e.to_string()));
                    }
                    metrics.failed.inc();
                    Err(PublishError::Log(Arc::new(e)))
                }
            };
            let _ = reply.send(answer);
        }
    }
}

fn record_log_gauges(log: &CueLog, m: &PublishMetrics) {
    m.log_bytes.set(log.len_bytes() as i64);
    m.compactions.set(log.compactions() as i64);
    m.events.set(log.events() as i64);
}
