//! `cue-prefetch`: the first phase of Cue's two-phase design. Each device fetches its heavy
//! stage map (`stage key -> payload` for one event) ahead of time, at a moment spread over the
//! event's prefetch window, so that at the broadcast it needs nothing but the cue.
//!
//! What it does: serves per-device stage maps from an embedded catalog or an upstream
//! recommendation service (cached, coalesced, jittered), with `max-age` jitter, `ETag`/304, a
//! prefetch schedule, and priority shedding driven by the origin's live signal and its own load.
//! What it does not: push anything to devices, store cues, or talk to edges.
//!
//! Layout. Sans-IO logic, driven with `now` and seeded randomness by its callers and tests:
//! [`catalog`] (bounded parser), [`template`] (compiled maps, `{device}`, ETags), [`cache`]
//! (bounded LRU, jittered TTL, single-flight, stale-while-revalidate, negative caching),
//! [`shed`] (classes, live + load policy), [`schedule`] (prefetch time, jitter), [`live`]'s
//! `LiveSet`, [`query`]. I/O at the edges: [`upstream`] (hyper client), [`live`]'s origin poller,
//! [`app`] (the upstream path), [`http`] (handlers), [`deadline`] (the write deadline of device
//! connections), [`server`] (wiring), [`config`], [`metrics`].

pub mod app;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod cors;
pub mod deadline;
pub mod hash;
pub mod http;
pub mod live;
pub mod metrics;
pub mod query;
pub mod schedule;
pub mod server;
pub mod shed;
pub mod template;
pub mod upstream;
