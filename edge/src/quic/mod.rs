//! QUIC (`cue/1`) for devices: the sans-IO hello parser the core uses, and the per-shard driver
//! that runs `quinn-proto` on the shard's own UDP socket.
//!
//! - [`hello`]: the device's first line, parsed strictly into the same subscription the
//!   WebSocket query gives.
//! - [`cid`]: connection IDs that carry the shard id, so any shard can tell which shard owns a
//!   datagram.
//! - [`udp`]: the socket: `SO_REUSEPORT`, batched `recvmmsg` (with GRO) and `sendmmsg` (with
//!   GSO when a connection has several datagrams).
//! - [`driver`]: the shard's `quinn_proto::Endpoint` and connections, timers on the shard's
//!   clock, datagrams forwarded between shards, and the [`crate::core::Io`] that turns the
//!   core's sends into stream writes.
//! - [`config`]: transport and server settings tuned for many idle connections.
//! - [`session`]: the TLS session of a connection, which lets go of rustls after the handshake.
//! - [`steer`]: the reuseport eBPF program that sends a datagram to its connection's socket,
//!   across the processes sharing the port.

pub mod cid;
pub mod config;
pub mod driver;
pub mod hello;
pub mod session;
pub mod steer;
pub mod udp;
