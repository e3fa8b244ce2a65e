//! The origin-edge relay: [`proto`] is the sans-IO protocol (codec, catch-up, liveness,
//! backoff) shared with `cue-edge`; [`server`] is the origin's listener on tokio.

pub mod proto;
pub mod server;
