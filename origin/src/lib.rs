//! `cue-origin`: the publish API, the durable cue log and the relay that fans cues out to edges.
//!
//! What every binary shares (the cue model, tokens, the relay protocol, metric primitives,
//! config loading) is in `cue-common`; this crate is the origin service alone.
//!
//! Layout: [`store`] (where cues are made durable: the embedded [`log`] with its group-commit
//! writer, or a JetStream stream; seq assignment; the newest-cue state), [`relay`]
//! (the relay listener on tokio, speaking `cue_common::relay`), [`http`] (publish/admin API),
//! [`config`], [`server`] (wires it all on a tokio runtime).

pub mod config;
pub mod http;
pub mod log;
pub mod relay;
pub mod server;
pub mod store;
pub mod tenants;
