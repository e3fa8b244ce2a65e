//! `cue-common`: what every Cue binary shares, with no async runtime in it (no tokio, no hyper,
//! no glommio), so the glommio edge and the tokio origin and prefetch link the same code and
//! speak exactly the same wire formats.
//!
//! - [`cue`]: the cue model and its JSON and binary encodings.
//! - [`relay`]: the origin-edge relay protocol, sans-IO (frame codec, catch-up, newest-per-event,
//!   liveness, backoff).
//! - [`token`]: device and publisher tokens (minting and verification, `now` from the caller).
//! - [`keys`]: asymmetric token keys (EdDSA, ES256): private signing sets, public JWKS sets.
//! - [`metrics`]: counters, gauges and histograms rendered in the Prometheus text format.
//! - [`config`]: TOML loading and token-secret resolution.
//! - [`limits`]: raising the soft rlimits at start-up and saying what caps the process.
//! - [`tls`]: the relay's mutual TLS (rustls configs from PEM files, reloadable).
//! - [`logging`], [`time`], [`units`], [`build`]: the top of every binary.
//!
//! It does no I/O of its own beyond reading config and secret files and the rlimit calls.

pub mod build;
pub mod config;
pub mod cue;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod relay;
pub mod tenant;
pub mod time;
pub mod tls;
pub mod token;
pub mod units;
