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
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use cue_common::cue::{Cue, EventName, Priority};
use cue_common::metrics::{Counter, Gauge, Histogram};

/// Newest cue of every event, shared by the HTTP API and the relay (read-mostly).
pub type Latest = Arc<RwLock<State>>;

/// Events retired lately, remembered so `GET` answers 404 for them (an event never published
/// answers 200 with `current: null`). Bounded: beyond it the longest retired are forgotten and
/// read as never published.
pub const RETIRED_REMEMBERED: usize = 65_536;

/// The newest cue of every event (the map itself, through `Deref`), and the events retired
/// lately.
#[derive(Debug, Default)]
pub struct State {
    cues: HashMap<EventName, Cue>,
    retired: std::collections::HashSet<EventName>,
    retired_order: std::collections::VecDeque<EventName>,
    /// Events whose class is not normal (their newest cue's, as the store holds it).
    classes: HashMap<EventName, Priority>,
}

/// Most events with a class other than normal that an origin remembers; beyond, a new one is
/// relayed as normal (and logged).
pub const MAX_CLASSES: usize = 65_536;

impl std::ops::Deref for State {
    type Target = HashMap<EventName, Cue>;
    fn deref(&self) -> &Self::Target {
        &self.cues
    }
}

impl std::ops::DerefMut for State {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.cues
    }
}

impl State {
    /// The class the relay gives `event`'s cues.
    pub fn class(&self, event: &EventName) -> Priority {
        self.classes.get(event).copied().unwrap_or_default()
    }

    /// Sets `event`'s class (a publish said it).
    pub fn set_class(&mut self, event: &EventName, class: Priority) {
        if class == Priority::Normal {
            self.classes.remove(event);
        } else if self.classes.len() < MAX_CLASSES || self.classes.contains_key(event) {
            self.classes.insert(event.clone(), class);
        } else {
            tracing::warn!(event = %event, max = MAX_CLASSES, "too many events with a class; relayed as normal");
        }
    }

    /// True when `event` was retired and not published since (as far as remembered).
    pub fn is_retired(&self, event: &EventName) -> bool {
        self.retired.contains(event)
    }

    /// Remembers `event` as retired (read back from the store at start).
    pub fn mark_retired(&mut self, event: &EventName) {
        if self.retired.insert(event.clone()) {
            self.retired_order.push_back(event.clone());
            while self.retired_order.len() > RETIRED_REMEMBERED {
                if let Some(old) = self.retired_order.pop_front() {
                    self.retired.remove(&old);
                }
            }
        }
    }
}

/// The store's health: `None` while it can make cues durable, else the reason it cannot.
pub type Health = watch::Receiver<Option<String>>;

/// What the relay hands every linked edge.
#[derive(Debug, Clone)]
pub enum Live {
    /// A durable cue, and its event's class.
    Cue(Cue, Priority),
    /// A retired event: edges forget its cue.
    Retired(EventName),
}

/// Takes `cue` into `latest` if it is newer than the held cue of its event (its event taking
/// `class`, the class the store holds with it), and then hands it to the relay; returns
/// whether it did. Cues of one event may arrive twice (an origin's own publish and the
/// stream's copy of it), or late; only the newest counts.
pub fn offer(latest: &Latest, relay: &broadcast::Sender<Live>, cue: &Cue, class: Priority) -> bool {
    let class = {
        let mut l = latest.write().expect("latest lock");
        if l.get(cue.event())
            .is_some_and(|held| held.seq() >= cue.seq())
        {
            return false;
        }
        l.insert(cue.event().clone(), cue.clone());
        // Published again: no longer retired (its place in the order is left to age out).
        if !l.retired.is_empty() {
            l.retired.remove(cue.event());
        }
        l.set_class(cue.event(), class);
        l.class(cue.event())
    };
    // No receivers (no edge linked) is fine: edges catch up on HELLO.
    let _ = relay.send(Live::Cue(cue.clone(), class));
    true
}

/// Forgets `event` if the held cue's seq is at most `seq` (a retirement of up to `seq`; a newer
/// cue, published after it, stays), and tells the relay; returns whether it forgot one.
pub fn forget(
    latest: &Latest,
    relay: &broadcast::Sender<Live>,
    event: &EventName,
    seq: u64,
) -> bool {
    {
        let mut l = latest.write().expect("latest lock");
        match l.get(event) {
            Some(held) if held.seq() <= seq => {
                l.remove(event);
                l.classes.remove(event);
                l.mark_retired(event);
            }
            _ => return false,
        }
    }
    let _ = relay.send(Live::Retired(event.clone()));
    true
}

/// The store's health as the relay should act on it: unhealthy only once `health` has been
/// unhealthy for `grace` without a break, healthy again at once. A JetStream leader election
/// after a node dies leaves every origin without a leader for a few seconds; nobody can publish
/// then, so nothing an origin holds is stale, and dropping every edge link would only make the
/// edges re-dial (with backoff) and deliver the next cue late. An origin cut off for longer
/// stops relaying, and its edges take their cues from the origins that are not.
pub fn after_grace(mut health: Health, grace: Duration) -> Health {
    let (tx, rx) = watch::channel(health.borrow().clone());
    tokio::spawn(async move {
        loop {
            let now = health.borrow_and_update().clone();
            match now {
                None => {
                    tx.send_replace(None);
                }
                Some(why) if tx.borrow().is_none() => {
                    match tokio::time::timeout(grace, health.changed()).await {
                        // Still unhealthy after the grace: the relay acts on it.
                        Err(_) => {
                            tx.send_replace(Some(why));
                        }
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => return,
                    }
                }
                Some(why) => {
                    tx.send_replace(Some(why));
                }
            }
            if health.changed().await.is_err() {
                return;
            }
        }
    });
    rx
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
    /// Events retired (by `DELETE` or for being idle).
    pub retired: Counter,
    /// Corrupt bytes skipped at the log's recovery (embedded).
    pub log_skipped_bytes: Gauge,
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
    /// Publishes `key` on `event`, the event taking `class`; resolves once the store holds the
    /// cue and its class (so every origin of a JetStream store, and this one after a restart,
    /// relays it with that class). A repeated `idempotency` key for the same event within the
    /// store's window answers with the first cue instead of publishing another (and changes
    /// no class).
    pub async fn publish(
        &self,
        event: EventName,
        key: &str,
        class: Priority,
        idempotency: Option<&str>,
    ) -> Result<Cue, PublishError> {
        match self {
            Store::Embedded(p) => p.publish(event, key, class, idempotency).await,
            Store::Nats(n) => n.publish(event, key, class, idempotency).await,
        }
    }

    /// Retires `event`: the store records it durably (a retirement record in the log, a
    /// retirement message in the stream), it leaves the newest-cue state, catch-up and
    /// `GET`, and every linked edge is told to forget it. `Ok(false)` when the event has no
    /// cue (never published, or retired already).
    pub async fn retire(&self, event: EventName) -> Result<bool, PublishError> {
        match self {
            Store::Embedded(p) => p.retire(event).await,
            Store::Nats(n) => n.retire(event).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn relay_health_turns_bad_only_after_the_grace() {
        let (tx, rx) = watch::channel(None);
        let grace = Duration::from_millis(200);
        let mut gated = after_grace(rx, grace);
        // A blip shorter than the grace never reaches the relay.
        tx.send_replace(Some("election".into()));
        tokio::time::sleep(grace / 4).await;
        tx.send_replace(None);
        tokio::time::sleep(grace * 2).await;
        assert_eq!(*gated.borrow_and_update(), None);
        // A longer outage does, and recovery is passed on at once.
        tx.send_replace(Some("cut off".into()));
        tokio::time::sleep(grace / 2).await;
        assert_eq!(*gated.borrow(), None);
        tokio::time::timeout(grace * 4, gated.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gated.borrow_and_update().as_deref(), Some("cut off"));
        tx.send_replace(None);
        tokio::time::timeout(grace, gated.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*gated.borrow(), None);
    }
}
