//! The JetStream store (`--store nats://HOST:PORT[,HOST:PORT...]`).
//!
//! Cues live in one stream (`--nats-stream`, default `CUE`) with one subject per event,
//! `<STREAM>.<event>` with every `.` of the event name written `:` so an event is always one
//! subject token. The stream keeps [`CUES_PER_EVENT`] cues per event (only the newest matters;
//! the few before it are there for an operator's `nats stream get`), replicated on
//! `--nats-replicas` servers (default 3).
//!
//! Several origins on one stream are peers, and agree on seqs without talking to each other:
//! - **One seq space.** An origin gives a cue `next_seq(previous, now)` of the event's newest
//!   cue and publishes it with `Nats-Expected-Last-Subject-Sequence` set to that cue's stream
//!   sequence. JetStream stores it only if no other cue of the event came in between; when one
//!   did (another origin published the event), the origin reads the newest cue and tries again.
//!   So every cue of an event has a higher seq than the one before it in the stream, whichever
//!   origin published it.
//! - **201 means held by a quorum.** The origin answers `201` only after JetStream's ack, which
//!   the stream leader sends once a majority of the replicas stored the cue.
//! - **Idempotency.** A publish with `Idempotency-Key: K` is sent with `Nats-Msg-Id:
//!   <event>:K`; JetStream drops a repeat within [`DUPLICATE_WINDOW`] and answers with the
//!   first one's sequence, whose cue the origin reads back and answers with.
//! - **Classes.** A cue whose publish gave its event a priority class other than normal carries
//!   it in the [`CLASS_HEADER`] header (`Cue-Priority: critical|background`); the payload is
//!   the plain binary cue either way, so an origin of a build from before classes reads every
//!   cue and relays it as normal. Every origin relays an event with its newest cue's class.
//! - **Every origin relays every cue.** Each origin follows the stream with a pull consumer
//!   (newest per subject first, then live; a 1 s heartbeat, replaced after two missed ones) and
//!   hands each newer cue to its edges; its own publishes are relayed at once after their ack,
//!   and the stream's copy is then a duplicate.
//! - **Health.** The origin probes the stream every [`PROBE_INTERVAL`]; when the probe fails
//!   (no connection, no stream leader, a leader without a quorum: a minority partition) the
//!   store is unhealthy: `/healthz` says why, and after a grace the relay drops its edges, which
//!   fail over to a healthy origin. Publishes are not gated on it: JetStream refuses, or does
//!   not acknowledge, what it cannot make durable, and that is a `503` either way.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, Context};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

use super::{forget, offer, Latest, Live, PublishError, PublishMetrics};
use cue_common::cue::{next_seq, Cue, EventName, Priority, Record};
use cue_common::relay::Backoff;

/// Cues kept per event in the stream.
pub const CUES_PER_EVENT: i64 = 8;
/// JetStream's de-duplication window for `Idempotency-Key` (the stream's `duplicate_window`).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How often the store's health is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How many times a publish is retried after another origin published the same event first.
pub const MAX_SEQ_CONFLICTS: usize = 16;
/// Heartbeat of the consumer an origin follows the stream with: two missed ones (a dead node)
/// and the origin follows it anew.
const FOLLOW_HEARTBEAT: Duration = Duration::from_secs(1);
/// Locks that serialise this origin's publishes of one event (by hash; events on different
/// stripes publish concurrently).
const STRIPES: usize = 64;
/// Largest message the stream accepts: a cue's binary form is at most 147 bytes.
const MAX_MESSAGE_BYTES: i32 = 1024;

/// How to reach NATS and which stream to use.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Servers, `HOST:PORT` each.
    pub servers: Vec<String>,
    /// Stream name.
    pub stream: String,
    /// Replicas of the stream (when the origin creates it; an existing one must match).
    pub replicas: usize,
    /// User name for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) that NATS servers' certificates chain to; implies TLS.
    pub ca_file: Option<PathBuf>,
    /// Require TLS even without `ca_file` (system roots are not loaded: set `ca_file`).
    pub tls: bool,
    /// How long a publish waits for JetStream's ack before `503`.
    pub ack_timeout: Duration,
}

/// Why JetStream did not take a publish, or the store could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NatsError {
    /// No ack within the timeout: JetStream may or may not hold the cue. Retry with the same
    /// `Idempotency-Key` to publish exactly once.
    #[error("JetStream did not acknowledge within {0:?}; the cue may or may not be stored (retry with the same Idempotency-Key)")]
    Timeout(Duration),
    /// The store is unhealthy (no connection or no quorum): nothing was published.
    #[error("JetStream unavailable: {0}")]
    Unavailable(String),
    /// Other origins kept publishing the same event first.
    #[error("event {0}: other origins kept publishing it first; gave up after {MAX_SEQ_CONFLICTS} tries")]
    Contention(String),
    /// The stream cannot be used as configured (a settings problem; retrying does not help).
    #[error("{0}")]
    Config(String),
}

/// The JetStream store of one origin.
pub struct NatsStore {
    js: Context,
    stream: stream::Stream,
    prefix: String,
    /// Per event: stream sequence and seq of the newest cue this origin knows of.
    tips: Mutex<HashMap<EventName, (u64, u64)>>,
    /// The last stream sequence the consumer delivered (own publishes do not move it).
    followed: std::sync::atomic::AtomicU64,
    stripes: Vec<tokio::sync::Mutex<()>>,
    latest: Latest,
    relay: broadcast::Sender<Live>,
    metrics: Arc<PublishMetrics>,
    health: watch::Receiver<Option<String>>,
    /// Publishes in flight; beyond `publish_queue` they are refused (`Overloaded`).
    inflight: tokio::sync::Semaphore,
    ack_timeout: Duration,
    clock_ms: fn() -> u64,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Header that carries a cue's class when it is not normal.
pub const CLASS_HEADER: &str = "Cue-Priority";

/// The class a stream message gives its cue: its [`CLASS_HEADER`], else the record's own
/// (normal for a plain cue). An unknown class (a newer origin's) is relayed as normal.
fn class_of(headers: Option<&async_nats::HeaderMap>, record: Priority, sseq: u64) -> Priority {
    match headers.and_then(|h| h.get(CLASS_HEADER)) {
        None => record,
        Some(v) => Priority::parse(v.as_str()).unwrap_or_else(|| {
            tracing::warn!(
                sseq,
                class = v.as_str(),
                "JetStream: unknown priority class; relayed as normal"
            );
            Priority::Normal
        }),
    }
}

/// The subject of `event` in a stream whose subjects are `prefix.>`: `prefix.EVENT` for the
/// default tenant, `prefix.TENANT.EVENT` for another (so NATS permissions can scope a tenant
/// to `prefix.TENANT.>`); a `.` of an event name is written `:`, so an event is one token.
pub fn subject(prefix: &str, event: &EventName) -> String {
    let local = event.local().replace('.', ":");
    match event.tenant() {
        None => format!("{prefix}.{local}"),
        Some(t) => format!("{prefix}.{t}.{local}"),
    }
}

/// True when `name` is a usable stream name: 1-32 chars of `[A-Za-z0-9_-]` (it is also the
/// subject prefix, so no `.`, `*`, `>` or spaces).
pub fn valid_stream_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The stream this origin wants.
fn wanted_config(opts: &NatsOptions) -> stream::Config {
    stream::Config {
        name: opts.stream.clone(),
        subjects: vec![format!("{}.>", opts.stream)],
        max_messages_per_subject: CUES_PER_EVENT,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: opts.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: MAX_MESSAGE_BYTES,
        description: Some("Cue: the newest cues of every event (cue-origin)".into()),
        ..Default::default()
    }
}

/// Every way an existing stream differs from what this origin needs, one line each.
pub fn config_problems(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut p = Vec::new();
    if !have.subjects.iter().any(|s| s == &want.subjects[0]) {
        p.push(format!(
            "subjects are {:?}, need {:?}",
            have.subjects, want.subjects[0]
        ));
    }
    if have.num_replicas != want.num_replicas {
        p.push(format!(
            "replicas are {}, --nats-replicas says {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.max_messages_per_subject != want.max_messages_per_subject {
        p.push(format!(
            "max_msgs_per_subject is {}, need {}",
            have.max_messages_per_subject, want.max_messages_per_subject
        ));
    }
    if have.retention != want.retention {
        p.push(format!("retention is {:?}, need Limits", have.retention));
    }
    if have.discard != want.discard {
        p.push(format!("discard is {:?}, need Old", have.discard));
    }
    if have.storage != want.storage {
        p.push(format!("storage is {:?}, need File", have.storage));
    }
    if have.duplicate_window < Duration::from_secs(1) {
        p.push(format!(
            "duplicate_window is {:?}; Idempotency-Key needs one",
            have.duplicate_window
        ));
    }
    if have.max_age != Duration::ZERO {
        p.push(format!(
            "max_age is {:?}: the newest cue of a quiet event would expire",
            have.max_age
        ));
    }
    if have.sealed {
        p.push("the stream is sealed".into());
    }
    p
}

/// A stream set-up failure: `fatal` when retrying cannot help (settings, JetStream off).
struct SetupError {
    fatal: bool,
    msg: String,
}

/// Classifies a JetStream API error met while setting the stream up.
fn setup_error(what: &str, e: &dyn std::fmt::Display, replicas: usize) -> SetupError {
    let l = e.to_string().to_ascii_lowercase();
    // JetStream off (no responders to its API, or says so), or a single server asked for
    // replicas: settings. Anything else (no meta leader yet, too few servers up yet, time outs)
    // may pass while a cluster starts.
    let fatal = jetstream_off(&l) || l.contains("non-clustered");
    SetupError {
        fatal,
        msg: format!("{what}: {}", explain(e, replicas)),
    }
}

/// Set-up tries before the origin gives up with the last error (about a minute).
const SETUP_TRIES: u32 = 20;

/// Finds the stream and checks it fits, or creates it. Retries what may pass while a cluster
/// starts (no meta leader, too few servers up), with a log line each time.
async fn ensure_stream(js: &Context, opts: &NatsOptions) -> Result<stream::Stream, NatsError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let mut tries = 0;
    loop {
        tries += 1;
        match try_ensure_stream(js, opts).await {
            Ok(s) => return Ok(s),
            Err(e) if e.fatal || tries >= SETUP_TRIES => return Err(NatsError::Config(e.msg)),
            Err(e) => {
                let d = backoff.next_delay(rand::random());
                tracing::warn!(error = %e.msg, retry_in_ms = d.as_millis() as u64, "JetStream stream not ready; retrying");
                tokio::time::sleep(d).await;
            }
        }
    }
}

async fn try_ensure_stream(js: &Context, opts: &NatsOptions) -> Result<stream::Stream, SetupError> {
    let want = wanted_config(opts);
    let name = &opts.stream;
    match js.get_stream(name).await {
        Ok(mut s) => {
            let info = s
                .info()
                .await
                .map_err(|e| setup_error(&format!("stream {name}"), &e, opts.replicas))?;
            let problems = config_problems(&info.config, &want);
            if !problems.is_empty() {
                return Err(SetupError {
                    fatal: true,
                    msg: format!(
                        "stream {name} exists with other settings: {}; delete it (`nats stream rm {name}`) or use another --nats-stream",
                        problems.join("; ")
                    ),
                });
            }
            tracing::info!(stream = %name, replicas = info.config.num_replicas, messages = info.state.messages, "JetStream stream found");
            Ok(s)
        }
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let s = js
                .create_stream(want)
                .await
                .map_err(|e| setup_error(&format!("creating stream {name}"), &e, opts.replicas))?;
            tracing::info!(stream = %name, replicas = opts.replicas, "JetStream stream created");
            Ok(s)
        }
        Err(e) => Err(setup_error(&format!("stream {name}"), &e, opts.replicas)),
    }
}

/// True when a (lower-cased) JetStream API error says nothing answers the API: JetStream is off.
fn jetstream_off(l: &str) -> bool {
    l.contains("not enabled")
        || l.contains("no responders")
        || l.contains("resource does not exist")
}

/// What a JetStream API error means for an operator, with the server's own words.
fn explain(e: &dyn std::fmt::Display, replicas: usize) -> String {
    let s = e.to_string();
    let l = s.to_ascii_lowercase();
    let hint = if jetstream_off(&l) {
        "; JetStream is off on that server: start nats-server with -js (or `jetstream {}` in its config)"
            .to_string()
    } else if l.contains("insufficient resources")
        || l.contains("no suitable peers")
        || l.contains("non-clustered")
        || l.contains("replicas")
    {
        format!("; the cluster has fewer JetStream servers than --nats-replicas {replicas} (use --nats-replicas 1 for a single server)")
    } else {
        String::new()
    };
    format!("{s}{hint}")
}

impl NatsStore {
    /// Connects (retrying with jittered backoff, a log line per try, for as long as it takes),
    /// creates the stream or checks that the existing one fits, loads the newest cue of every
    /// event into `latest`, and starts following the stream and probing its health.
    pub async fn start(
        opts: &NatsOptions,
        latest: Latest,
        relay: broadcast::Sender<Live>,
        metrics: Arc<PublishMetrics>,
        queue: usize,
        clock_ms: fn() -> u64,
    ) -> Result<Arc<NatsStore>, NatsError> {
        let (health_tx, health) = watch::channel(None);
        let health_tx = Arc::new(health_tx);
        let client = connect(opts, health_tx.clone()).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.ack_timeout)
            .build(client);
        let stream = ensure_stream(&js, opts).await?;
        let store = Arc::new(NatsStore {
            js,
            stream,
            prefix: opts.stream.clone(),
            tips: Mutex::new(HashMap::new()),
            followed: std::sync::atomic::AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            latest,
            relay,
            metrics,
            health,
            inflight: tokio::sync::Semaphore::new(queue.max(1)),
            ack_timeout: opts.ack_timeout,
            clock_ms,
        });
        let messages = store.initial_load().await?;
        tokio::spawn(store.clone().follow(messages));
        tokio::spawn(store.clone().probe(health_tx));
        Ok(store)
    }

    /// The store's health: `None` while it can take publishes.
    pub fn health(&self) -> watch::Receiver<Option<String>> {
        self.health.clone()
    }

    /// An ephemeral, unacknowledged pull consumer over every event's subject, on the node the
    /// stream chooses; if that node dies, [`NatsStore::follow`] makes another.
    async fn open_consumer(
        &self,
        deliver: consumer::DeliverPolicy,
    ) -> Result<consumer::pull::Stream, String> {
        let c = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{}.>", self.prefix),
                deliver_policy: deliver,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                num_replicas: 1,
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        c.stream()
            .heartbeat(FOLLOW_HEARTBEAT)
            .expires(FOLLOW_HEARTBEAT * 5)
            .max_messages_per_batch(512)
            .messages()
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads the newest cue of every event, then returns the consumer to follow live cues.
    async fn initial_load(&self) -> Result<consumer::pull::Stream, NatsError> {
        let t0 = Instant::now();
        let unavailable = |e: &dyn std::fmt::Display| NatsError::Unavailable(e.to_string());
        let mut s = self.stream.clone();
        let messages_now = s.info().await.map_err(|e| unavailable(&e))?.state.messages;
        let mut messages = self
            .open_consumer(consumer::DeliverPolicy::LastPerSubject)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut events = 0usize;
        if messages_now > 0 {
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| unavailable(&e))?;
                let pending = m.info().map(|i| i.pending).unwrap_or(0);
                if self.take(&m) {
                    events += 1;
                }
                if pending == 0 {
                    break;
                }
            }
        }
        self.metrics
            .events
            .set(self.latest.read().expect("latest lock").len() as i64);
        tracing::info!(
            events,
            ms = t0.elapsed().as_millis() as u64,
            "JetStream: newest cues loaded"
        );
        Ok(messages)
    }

    /// Takes one stream message: records its tip and offers its cue. Returns whether it was new.
    fn take(&self, m: &jetstream::Message) -> bool {
        let Ok(info) = m.info() else { return false };
        let sseq = info.stream_sequence;
        self.followed
            .fetch_max(sseq, std::sync::atomic::Ordering::Relaxed);
        let (cue, class) = match Record::from_binary(&m.payload) {
            Ok(Record::Cue(c, class)) => (c, class_of(m.headers.as_ref(), class, sseq)),
            Ok(Record::Retired { event, seq, .. }) => {
                self.record_tip(&event, sseq, seq);
                if forget(&self.latest, &self.relay, &event, seq) {
                    self.metrics.retired.inc();
                } else {
                    // Loading the stream at start: it is retired all the same.
                    let mut l = self.latest.write().expect("latest lock");
                    if !l.contains_key(&event) {
                        l.mark_retired(&event);
                    }
                }
                return false;
            }
            Err(e) => {
                tracing::warn!(subject = %m.subject, sseq, error = %e, "JetStream: message is not a cue; skipped");
                return false;
            }
        };
        self.record_tip(cue.event(), sseq, cue.seq());
        offer(&self.latest, &self.relay, &cue, class)
    }

    fn record_tip(&self, event: &EventName, sseq: u64, seq: u64) {
        let mut t = self.tips.lock().expect("tips lock");
        let e = t.entry(event.clone()).or_insert((0, 0));
        if sseq > e.0 {
            *e = (sseq, seq.max(e.1));
        }
    }

    /// Follows the stream for cues other origins publish, until the process ends. A consumer
    /// that errs or misses two heartbeats (its node died, it was deleted) is replaced by one
    /// that starts after the last stream sequence this one delivered, so nothing is skipped.
    async fn follow(self: Arc<Self>, mut messages: consumer::pull::Stream) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            while let Some(m) = messages.next().await {
                match m {
                    Ok(m) => {
                        backoff.reset();
                        if self.take(&m) {
                            self.metrics
                                .events
                                .set(self.latest.read().expect("latest lock").len() as i64);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JetStream: following the stream; re-following");
                        break;
                    }
                }
            }
            loop {
                tokio::time::sleep(backoff.next_delay(rand::random())).await;
                let after = self.followed.load(std::sync::atomic::Ordering::Relaxed);
                let deliver = consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                };
                match self.open_consumer(deliver).await {
                    Ok(m) => {
                        tracing::info!(from = after + 1, "JetStream: following the stream again");
                        messages = m;
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "JetStream: re-following the stream"),
                }
            }
        }
    }

    /// Probes the stream every [`PROBE_INTERVAL`] and publishes the store's health.
    async fn probe(self: Arc<Self>, health: Arc<watch::Sender<Option<String>>>) {
        let mut s = self.stream.clone();
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            let verdict = match tokio::time::timeout(self.ack_timeout, s.info()).await {
                Ok(Ok(info)) => {
                    let followed = self.followed.load(std::sync::atomic::Ordering::Relaxed);
                    if info.state.last_sequence < followed {
                        // The stream was deleted and made again under this origin: follow the
                        // new one from its start (offers drop what is not newer).
                        tracing::warn!(
                            last = info.state.last_sequence,
                            followed,
                            "JetStream: the stream is behind what was followed (recreated?); following it from the start"
                        );
                        self.followed.store(0, std::sync::atomic::Ordering::Relaxed);
                    }
                    info.cluster
                        .as_ref()
                        .and_then(|c| quorum_problem(&self.prefix, c))
                }
                Ok(Err(e)) => Some(format!("stream {}: {e}", self.prefix)),
                Err(_) => Some(format!(
                    "stream {}: no answer within {:?}",
                    self.prefix, self.ack_timeout
                )),
            };
            let changed = *health.borrow() != verdict;
            if changed {
                match &verdict {
                    Some(why) => tracing::error!(reason = %why, "JetStream store unhealthy"),
                    None => tracing::info!("JetStream store healthy"),
                }
                health.send_replace(verdict);
            }
        }
    }

    /// Publishes `key` on `event`; resolves once JetStream acknowledged it (a quorum of
    /// replicas holds it). See the module docs for seqs and idempotency.
    pub async fn publish(
        &self,
        event: EventName,
        key: &str,
        class: Priority,
        idempotency: Option<&str>,
    ) -> Result<Cue, PublishError> {
        // Not gated on the probe's health: JetStream itself refuses (or does not ack) a publish
        // it cannot make durable, and the first publish after an election should not wait for
        // the next probe to notice the new leader.
        let Ok(_permit) = self.inflight.try_acquire() else {
            self.metrics.overloaded.inc();
            return Err(PublishError::Overloaded);
        };
        let t0 = Instant::now();
        let _one_at_a_time = self.stripe(&event).lock().await;
        let subject = subject(&self.prefix, &event);
        let result = self
            .publish_locked(&event, &subject, key, class, idempotency)
            .await;
        match &result {
            Ok((_, new)) => {
                if *new {
                    self.metrics.published.inc();
                }
                self.metrics
                    .durable_latency
                    .observe_us(t0.elapsed().as_micros() as u64);
            }
            Err(_) => self.metrics.failed.inc(),
        }
        result.map(|(c, _)| c).map_err(Into::into)
    }

    /// The lock that serialises one event's writes on this origin (events hash to stripes).
    fn stripe(&self, event: &EventName) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        event.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Retires `event`: a retirement message (its newest seq) goes on its subject with the same
    /// compare-and-set as a publish, so it lands after every cue it retires; every origin's
    /// follower then forgets the event. The subject keeps at most that message and the cues
    /// before it (`CUES_PER_EVENT`); `Ok(false)` when the event has no cue.
    pub async fn retire(&self, event: EventName) -> Result<bool, PublishError> {
        let _one_at_a_time = self.stripe(&event).lock().await;
        let subject = subject(&self.prefix, &event);
        for _ in 0..MAX_SEQ_CONFLICTS {
            let held = self
                .latest
                .read()
                .expect("latest lock")
                .get(&event)
                .map(|c| c.seq());
            let Some(seq) = held else {
                return Ok(false);
            };
            let expected = self
                .tips
                .lock()
                .expect("tips lock")
                .get(&event)
                .map_or(0, |t| t.0);
            let rec = Record::Retired {
                event: event.clone(),
                seq,
                ts: (self.clock_ms)(),
            };
            let msg = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(rec.to_binary()))
                .expected_last_subject_sequence(expected);
            if let Some(a) = self.send_cas(&event, &subject, msg).await? {
                self.record_tip(&event, a.sequence, seq);
                if forget(&self.latest, &self.relay, &event, seq) {
                    self.metrics.retired.inc();
                }
                tracing::info!(event = %event, seq, "event retired");
                return Ok(true);
            }
        }
        Err(NatsError::Contention(event.to_string()).into())
    }

    async fn publish_locked(
        &self,
        event: &EventName,
        subject: &str,
        key: &str,
        class: Priority,
        idempotency: Option<&str>,
    ) -> Result<(Cue, bool), NatsError> {
        for _ in 0..MAX_SEQ_CONFLICTS {
            let (expected, prev) = {
                let tip = self.tips.lock().expect("tips lock").get(event).copied();
                let held = self
                    .latest
                    .read()
                    .expect("latest lock")
                    .get(event)
                    .map_or(0, |c| c.seq());
                let (sseq, seq) = tip.unwrap_or((0, 0));
                (sseq, seq.max(held))
            };
            let ts = (self.clock_ms)();
            let cue =
                Cue::new(event.as_str(), key, next_seq(prev, ts), ts).expect("validated by caller");
            let mut msg = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(cue.to_binary()))
                .expected_last_subject_sequence(expected);
            if let Some(k) = idempotency {
                msg = msg.message_id(format!("{}:{k}", event.as_str()));
            }
            if class != Priority::Normal {
                msg = msg.header(CLASS_HEADER, class.as_str());
            }
            self.metrics.batches.inc();
            match self.send_cas(event, subject, msg).await? {
                Some(a) if a.duplicate => {
                    self.metrics.idempotent_repeats.inc();
                    return Ok((self.read_cue(a.sequence).await?, false));
                }
                Some(a) => {
                    self.record_tip(event, a.sequence, cue.seq());
                    offer(&self.latest, &self.relay, &cue, class);
                    return Ok((cue, true));
                }
                None => {}
            }
        }
        Err(NatsError::Contention(event.to_string()))
    }

    /// Sends `msg` on `subject` under its compare-and-set. `Ok(None)` when another write to the
    /// subject came first: the tip is refreshed and the caller tries again.
    async fn send_cas(
        &self,
        event: &EventName,
        subject: &str,
        msg: jetstream::message::PublishMessage,
    ) -> Result<Option<jetstream::publish::PublishAck>, NatsError> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let ack = match self.js.send_publish(subject.to_string(), msg).await {
            Ok(f) => f.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.kind() == K::WrongLastSequence => {
                self.metrics.seq_conflicts.inc();
                self.refresh_tip(event, subject).await?;
                Ok(None)
            }
            Err(e) if e.kind() == K::TimedOut => Err(NatsError::Timeout(self.ack_timeout)),
            Err(e) => Err(NatsError::Unavailable(e.to_string())),
        }
    }

    /// Reads the newest cue of `event` from the stream (after another origin published it).
    async fn refresh_tip(&self, event: &EventName, subject: &str) -> Result<(), NatsError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind as K;
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let rec = Record::from_binary(&m.payload).map_err(|e| {
                    NatsError::Unavailable(format!(
                        "stream message {} is not a cue: {e}",
                        m.sequence
                    ))
                })?;
                // The stream's word, even below what was held (the stream was recreated).
                self.tips
                    .lock()
                    .expect("tips lock")
                    .insert(event.clone(), (m.sequence, rec.seq()));
                match &rec {
                    Record::Cue(cue, class) => {
                        let class = class_of(Some(&m.headers), *class, m.sequence);
                        offer(&self.latest, &self.relay, cue, class);
                    }
                    Record::Retired { seq, .. } => {
                        forget(&self.latest, &self.relay, event, *seq);
                    }
                }
                Ok(())
            }
            Err(e) if e.kind() == K::NoMessageFound => {
                // The stream lost the event (it was purged or recreated): publish as its first.
                self.tips
                    .lock()
                    .expect("tips lock")
                    .insert(event.clone(), (0, 0));
                Ok(())
            }
            Err(e) => Err(NatsError::Unavailable(e.to_string())),
        }
    }

    /// The cue stored at stream sequence `sseq` (the first copy of an idempotent repeat).
    async fn read_cue(&self, sseq: u64) -> Result<Cue, NatsError> {
        let m = self
            .stream
            .get_raw_message(sseq)
            .await
            .map_err(|e| NatsError::Unavailable(format!("reading back cue {sseq}: {e}")))?;
        Cue::from_binary(&m.payload)
            .map_err(|e| NatsError::Unavailable(format!("stream message {sseq} is not a cue: {e}")))
    }
}

/// A replica heard from within this long counts towards the stream's quorum. Raft heartbeats
/// come every second, so a live replica is well inside it.
const REPLICA_ACTIVE: Duration = Duration::from_secs(3);

/// Why a stream cannot take publishes, from its cluster info: no leader, or a leader that hears
/// from too few replicas to make a quorum (it is on the minority side of a partition, and
/// will keep calling itself leader for a while before it steps down).
fn quorum_problem(stream: &str, c: &stream::ClusterInfo) -> Option<String> {
    let leader = c.leader.as_deref().filter(|l| !l.is_empty());
    let Some(leader) = leader else {
        return Some(format!("stream {stream} has no leader"));
    };
    let size = c.replicas.len() + 1;
    let reachable = 1 + c
        .replicas
        .iter()
        .filter(|p| !p.offline && p.active < REPLICA_ACTIVE)
        .count();
    let quorum = size / 2 + 1;
    (reachable < quorum).then(|| {
        format!("stream {stream}: leader {leader} hears from {reachable} of {size} replicas, a quorum needs {quorum}")
    })
}

/// Connects to NATS, retrying with jittered backoff and a log line per failed try. The
/// connection then re-connects by itself; its state feeds the store's health.
async fn connect(
    opts: &NatsOptions,
    health: Arc<watch::Sender<Option<String>>>,
) -> Result<async_nats::Client, NatsError> {
    let servers: Vec<async_nats::ServerAddr> = opts
        .servers
        .iter()
        .map(|s| {
            let url = if opts.tls || opts.ca_file.is_some() {
                format!("tls://{s}")
            } else {
                format!("nats://{s}")
            };
            url.parse()
                .map_err(|e| NatsError::Config(format!("store: NATS server {s}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let list = opts.servers.join(",");
    loop {
        let mut o = async_nats::ConnectOptions::new()
            .name("cue-origin")
            .connection_timeout(Duration::from_secs(2))
            .max_reconnects(None);
        if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(f) = &opts.creds_file {
            o = o
                .credentials_file(f)
                .await
                .map_err(|e| NatsError::Config(format!("nats_creds_file {}: {e}", f.display())))?;
        }
        if let Some(ca) = &opts.ca_file {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        } else if opts.tls {
            o = o.require_tls(true);
        }
        let h = health.clone();
        o = o.event_callback(move |ev| {
            let h = h.clone();
            async move {
                match ev {
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS: disconnected; reconnecting");
                        h.send_replace(Some("NATS connection lost".into()));
                    }
                    async_nats::Event::Connected => tracing::info!("NATS: connected"),
                    other => tracing::warn!(event = %other, "NATS"),
                }
            }
        });
        match o.connect(servers.clone()).await {
            Ok(c) => {
                tracing::info!(servers = %list, "NATS: connected");
                return Ok(c);
            }
            // Credentials or TLS the server refuses: settings, not an outage.
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::Tls
                ) =>
            {
                return Err(NatsError::Config(format!(
                    "NATS at {list} refused this origin: {e} (check nats_user/nats_password, nats_creds_file, nats_ca_file)"
                )));
            }
            Err(e) => {
                let d = backoff.next_delay(rand::random());
                tracing::warn!(
                    servers = %list,
                    error = %e,
                    retry_in_ms = d.as_millis() as u64,
                    "NATS not reachable; retrying"
                );
                tokio::time::sleep(d).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_token_per_event() {
        let e = EventName::new("ufc.300-main_card").unwrap();
        assert_eq!(subject("CUE", &e), "CUE.ufc:300-main_card");
        assert_eq!(subject("CUE", &EventName::new("..").unwrap()), "CUE.::");
        let t = EventName::qualify(Some("acme"), "ufc.300").unwrap();
        assert_eq!(subject("CUE", &t), "CUE.acme.ufc:300");
        // A default-tenant event named like a tenant is one token, never under the tenant's.
        assert_eq!(subject("CUE", &EventName::new("acme").unwrap()), "CUE.acme");
    }

    #[test]
    fn a_leader_without_a_quorum_is_a_problem() {
        let peer = |name: &str, active_s: u64| stream::PeerInfo {
            name: name.into(),
            current: true,
            active: Duration::from_secs(active_s),
            offline: false,
            lag: None,
        };
        let info = |leader: Option<&str>, replicas| stream::ClusterInfo {
            leader: leader.map(Into::into),
            replicas,
            ..Default::default()
        };
        assert_eq!(quorum_problem("CUE", &info(Some("n0"), vec![])), None);
        assert_eq!(
            quorum_problem("CUE", &info(Some("n0"), vec![peer("n1", 0), peer("n2", 9)])),
            None
        );
        assert_eq!(
            quorum_problem("CUE", &info(Some("n0"), vec![peer("n1", 9), peer("n2", 9)])).unwrap(),
            "stream CUE: leader n0 hears from 1 of 3 replicas, a quorum needs 2"
        );
        assert!(quorum_problem("CUE", &info(None, vec![]))
            .unwrap()
            .contains("no leader"));
    }

    #[test]
    fn stream_names() {
        assert!(valid_stream_name("CUE"));
        assert!(valid_stream_name("cue_prod-2"));
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(33)] {
            assert!(!valid_stream_name(bad), "{bad}");
        }
    }

    #[test]
    fn existing_stream_problems_are_all_named() {
        let opts = NatsOptions {
            servers: vec!["127.0.0.1:4222".into()],
            stream: "CUE".into(),
            replicas: 3,
            user: None,
            password: None,
            creds_file: None,
            ca_file: None,
            tls: false,
            ack_timeout: Duration::from_secs(2),
        };
        let want = wanted_config(&opts);
        assert!(config_problems(&want, &want).is_empty());
        let have = stream::Config {
            subjects: vec!["other.>".into()],
            num_replicas: 1,
            max_messages_per_subject: -1,
            max_age: Duration::from_secs(60),
            ..want.clone()
        };
        let p = config_problems(&have, &want);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[1].contains("replicas are 1, --nats-replicas says 3"),
            "{p:?}"
        );
    }
}
