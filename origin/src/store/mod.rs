//! Where cues are made durable, and the newest-cue state the API and the relay read.
//!
//! Two stores behind one [`Store`]:
//! - [`embedded`]: the durable log in the data directory, one writer thread, group commit with
//!   `fdatasync` before `201`. The default; one process, one disk.
//! - [`nats`]: a JetStream stream (`--store nats://...`), replicated by NATS. Several origins on
//!   one stream are peers: each takes publishes, each relays every cue, and they give a cue the
//!   same seq.
//!
//! Either way a cue's seq is [`cue_common::cue::next_seq`] of the event's previous one, a cue is
//! answered `201` only once the store holds it, and the store's health (a poisoned log, a lost
//! NATS connection or quorum) is a `watch` the API's `/healthz` and the relay read: an origin
//! whose store is unhealthy answers `503` and stops relaying rather than serve stale state.

pub mod embedded;
pub mod nats;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{broadcast, watch};

use cue_common::cue::{Cue, EventName};
use cue_common::metrics::{Counter, Gauge, Histogram};

/// Newest cue of every event, shared by the HTTP API and the relay (read-mostly).
pub type Latest = Arc<RwLock<HashMap<EventName, Cue>>>;

/// The store's health: `None` while it can make cues durable, else the reason it cannot.
pub type Health = watch::Receiver<Option<String>>;

/// Takes `cue` into `latest` if it is newer than the held cue of its event, and then hands it to
/// the relay; returns whether it did. Cues of one event may arrive twice (an origin's own
/// publish and the stream's copy of it), or late; only the newest counts.
pub fn offer(latest: &Latest, relay: &broadcast::Sender<Cue>, cue: &Cue) -> bool {
    {
        let mut l = latest.write().expect("latest lock");
        if l.get(cue.event())
            .is_some_and(|held| held.seq() >= cue.seq())
        {
            return false;
        }
        l.insert(cue.event().clone(), cue.clone());
    }
    // No receivers (no edge linked) is fine: edges catch up on HELLO.
    let _ = relay.send(cue.clone());
    true
}

/// Why a publish was not made durable. Every variant is a `503` to the publisher, with
/// `Retry-After`; nothing was published, except that a [`PublishError::Nats`] timeout leaves it
/// unknown (retry with the same `Idempotency-Key` to publish exactly once).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The publish queue is full: the origin is overloaded; retry with backoff.
    #[error("publish queue full")]
    Overloaded,
    /// The embedded log could not make the cue durable; nothing was published.
    #[error(transparent)]
    Log(Arc<crate::log::LogError>),
    /// JetStream did not acknowledge the publish.
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    /// The origin is shutting down.
    #[error("origin shutting down")]
    ShuttingDown,
}

impl PublishError {
    /// Seconds a publisher should wait before retrying.
    pub fn retry_after_s(&self) -> u32 {
        match self {
            PublishError::Overloaded => 1,
            _ => 2,
        }
    }
}

/// Publish metrics, the same for both stores.
#[derive(Debug, Default)]
pub struct PublishMetrics {
    /// Cues made durable.
    pub published: Counter,
    /// Publishes that failed to become durable.
    pub failed: Counter,
    /// Publishes refused because the queue was full.
    pub overloaded: Counter,
    /// Group-commit batches written (embedded) or publishes sent to JetStream.
    pub batches: Counter,
    /// Publishes answered with an earlier cue because their `Idempotency-Key` was seen.
    pub idempotent_repeats: Counter,
    /// JetStream publishes retried because another origin published the same event first.
    pub seq_conflicts: Counter,
    /// Time from request to durable, per cue.
    pub durable_latency: Histogram,
    /// Current log size in bytes (embedded).
    pub log_bytes: Gauge,
    /// Compactions run since start (embedded).
    pub compactions: Gauge,
    /// Events known.
    pub events: Gauge,
}

/// The store an origin publishes to.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded durable log.
    Embedded(embedded::Publisher),
    /// A JetStream stream.
    Nats(Arc<nats::NatsStore>),
}

impl Store {
    /// Publishes `key` on `event`; resolves once the store holds the cue. A repeated
    /// `idempotency` key for the same event within the store's window answers with the first
    /// cue instead of publishing another.
    pub async fn publish(
        &self,
        event: EventName,
        key: &str,
        idempotency: Option<&str>,
    ) -> Result<Cue, PublishError> {
        match self {
            Store::Embedded(p) => p.publish(event, key, idempotency).await,
            Store::Nats(n) => n.publish(event, key, idempotency).await,
        }
    }
}
