//! `cue-origin`: the publish API, the durable cue log and the relay that fans cues out to edges.
//!
//! This crate is also the home of what every Cue binary shares: the cue model and its encodings
//! ([`cue`]), device and publisher tokens ([`token`]) and the origin-edge relay protocol
//! ([`relay`]), so that `cue-edge` and `cue-bench` speak exactly what the origin speaks.
//!
//! Layout: [`cue`] (model), [`log`] (durable store), [`publish`] (seq assignment and group
//! commit), [`relay`] (sans-IO protocol + TCP server), [`http`] (publish/admin API),
//! [`config`], [`metrics`], [`server`] (wires it all on a tokio runtime).

pub mod cli;
pub mod client;
pub mod config;
pub mod cue;
pub mod http;
pub mod log;
pub mod metrics;
pub mod publish;
pub mod relay;
pub mod server;
pub mod testing;
pub mod token;
