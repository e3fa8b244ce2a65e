//! The live signal. An event is live when the origin has published a cue for it and its window
//! is on (`start_ms <= now < end_ms`). [`LiveSet`] is the pure state (which events have a cue);
//! [`poll_origin`] keeps it current by polling the origin's `GET /v1/events/{event}` for every
//! catalog event.
//!
//! Why polling the API rather than following the relay: the API is the origin's public contract
//! (`--origin-http` is the flag scripts pass), while the relay is the origin-edge internal
//! protocol and every link to it counts as an edge (`max_edges`, the edge gauges). One small GET
//! per event per `live_poll_ms` (500 ms by default) notices a live event within half a second,
//! which is what shedding needs: an event is live for hours.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::schedule::Window;
use crate::upstream::HttpClient;

/// The newest cue seq the origin reported per event.
#[derive(Debug, Default, Clone)]
pub struct LiveSet {
    seqs: HashMap<String, u64>,
}

impl LiveSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records what the origin says of `event`: its current cue's seq, or none. Returns whether
    /// the event's "has a cue" state changed.
    pub fn observe(&mut self, event: &str, current_seq: Option<u64>) -> bool {
        match current_seq {
            Some(s) => self.seqs.insert(event.to_string(), s).is_none(),
            None => self.seqs.remove(event).is_some(),
        }
    }

    /// True when the origin has published a cue for `event`.
    pub fn has_cue(&self, event: &str) -> bool {
        self.seqs.contains_key(event)
    }

    /// True when `event` is live at `now_ms`: it has a cue and `window` is on.
    pub fn is_live(&self, event: &str, window: Window, now_ms: u64) -> bool {
        window.contains(now_ms) && self.has_cue(event)
    }

    /// Forgets events for which `keep` is false (events gone from the catalog).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seqs.retain(|e, _| keep(e));
    }

    /// Events with a cue.
    pub fn events(&self) -> impl Iterator<Item = &str> {
        self.seqs.keys().map(String::as_str)
    }
}

/// Parses the origin's `{"event":"...","current":CUE|null}` into the current seq.
pub fn parse_current(body: &[u8]) -> Result<Option<u64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match v.get("current") {
        Some(serde_json::Value::Null) => Ok(None),
        Some(c) => c
            .get("seq")
            .and_then(|s| s.as_u64())
            .map(Some)
            .ok_or_else(|| "current has no seq".into()),
        None => Err("no current field".into()),
    }
}

/// The origin URL of catalog event `e`: `/v1/events/E`, or `/v1/tenants/T/events/E` for a
/// tenant's `T/E`.
pub fn event_url(base: &str, e: &str) -> String {
    use crate::query::encode;
    match e.split_once('/') {
        Some((t, ev)) => format!("{base}/v1/tenants/{}/events/{}", encode(t), encode(ev)),
        None => format!("{base}/v1/events/{}", encode(e)),
    }
}

/// What the poller needs from the service.
pub struct PollTarget {
    /// Origin base URL, `http://HOST:PORT`.
    pub base: String,
    /// Events to poll (the catalog's), re-read every round.
    pub events: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Where the answers go.
    pub live: Arc<RwLock<LiveSet>>,
    /// Round interval.
    pub every: Duration,
    /// A uniform number in `[0, 1)` (jitter of the interval).
    pub unit: Box<dyn Fn() -> f64 + Send + Sync>,
    /// Called per poll with whether it failed.
    pub on_poll: Box<dyn Fn(bool) + Send + Sync>,
}

/// Polls every event once per round until `stop` turns true. A failed poll leaves the event's
/// state as it was (an origin blip neither starts nor ends a live period).
pub async fn poll_origin(t: PollTarget, client: HttpClient, mut stop: watch::Receiver<bool>) {
    loop {
        let events = (t.events)();
        for e in &events {
            let url = event_url(&t.base, e);
            // 404: the event has no cue (never published, or retired).
            let r = match client.get(&url).await {
                Ok(b) => parse_current(&b),
                Err(crate::upstream::UpstreamError::NotFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            (t.on_poll)(r.is_err());
            match r {
                Ok(seq) => {
                    if t.live.write().expect("live lock").observe(e, seq) {
                        tracing::info!(event = %e, has_cue = seq.is_some(), "origin: event cue state changed");
                    }
                }
                Err(err) => tracing::debug!(event = %e, error = %err, "origin poll failed"),
            }
        }
        t.live
            .write()
            .expect("live lock")
            .retain(|e| events.iter().any(|x| x == e));
        let wait = t.every.mul_f64(0.8 + 0.4 * (t.unit)());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_needs_a_cue_and_the_window() {
        let w = Window {
            start_ms: 100,
            end_ms: 200,
        };
        let mut l = LiveSet::new();
        assert!(!l.is_live("e", w, 150));
        assert!(l.observe("e", Some(1)));
        assert!(!l.observe("e", Some(2)));
        assert!(l.is_live("e", w, 150));
        assert!(!l.is_live("e", w, 99));
        assert!(!l.is_live("e", w, 200));
        assert!(!l.is_live("other", w, 150));
        l.retain(|e| e != "e");
        assert!(!l.has_cue("e"));
    }

    #[test]
    fn parses_origin_answers() {
        assert_eq!(parse_current(br#"{"event":"e","current":null}"#), Ok(None));
        assert_eq!(
            parse_current(br#"{"event":"e","current":{"event":"e","key":"k","seq":4,"ts":1}}"#),
            Ok(Some(4))
        );
        assert!(parse_current(b"{}").is_err());
        assert!(parse_current(b"nope").is_err());
    }
}
