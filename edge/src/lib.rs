//! `cue-edge`: holds device connections and fans cues out to them.
//!
//! Where a cue goes, in the tree:
//! 1. [`relay_link`]: one thread dials the origins, keeps the newest cue per event, encodes each
//!    new cue once per format ([`encoded`]) and sends it to every shard over a channel.
//! 2. [`shard`]: one glommio executor per core, pinned, with its own `SO_REUSEPORT` listener and
//!    epoll set of device sockets. It drives a [`core::ShardCore`].
//! 3. [`core`]: the device logic, sans-IO: upgrade ([`ws`]), catch-up, fanout with conflation,
//!    pings, close handshake, drain. Every device record lives in the shard's slab.
//!
//! [`admin`] serves `/metrics`, `/healthz` and `POST /admin/drain`; [`stats`] holds the
//! per-shard counters it reads; [`config`] is the typed configuration.
//!
//! Devices come over WebSocket (TCP, or TLS with `--wss`) or QUIC ([`quic`]); [`tls`] holds the
//! certificate both use. The core is transport-neutral: one device-session logic for both.

pub mod admin;
pub mod config;
pub mod core;
pub mod encoded;
pub mod lane;
pub mod quic;
pub mod relay_link;
pub mod shard;
pub mod sources;
pub mod stats;
pub mod tls;
pub mod uring;
pub mod ws;
pub mod wss;
