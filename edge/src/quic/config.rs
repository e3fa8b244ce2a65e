//! quinn-proto settings for many mostly idle device connections, and the shard's QUIC limits.
//!
//! Memory per connection is what matters (see docs/edge.md for the measurements): one
//! bidirectional stream and no unidirectional ones (quinn-proto pre-creates state for every
//! stream the peer may open), a fixed 1200-byte MTU with discovery off, no unreliable datagrams,
//! small receive windows (a device sends one hello line), no session tickets or 0-RTT.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{EndpointConfig, IdleTimeout, ServerConfig, TransportConfig, VarInt};

use super::cid::ShardCids;

/// The shard's QUIC settings.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Server keep-alive: a PING after this long without sending, so a silent device's loss
    /// is noticed (and NAT bindings stay open).
    pub keep_alive: Duration,
    /// Idle timeout: a connection that hears nothing this long is closed (`ping_timeout`).
    pub idle_timeout: Duration,
    /// Handshakes in flight per shard before new ones are refused outright.
    pub max_handshakes: usize,
    /// Handshakes in flight per shard above which unvalidated clients get a stateless retry
    /// (one extra round trip proves the address before any state is kept). 0 = always.
    pub retry_above: usize,
    /// Most QUIC connections per shard (including handshaking and closing ones).
    pub max_connections: usize,
    /// Socket send and receive buffer, bytes.
    pub socket_buffer: usize,
    /// Bytes a device may send on its stream before the edge reads them (its hello must fit).
    pub stream_window: u32,
    /// Unacknowledged bytes in flight per connection; beyond it the stream write blocks and
    /// the device is conflated like a full WebSocket socket.
    pub send_window: u64,
    /// Time a closing connection has to deliver its last bytes (a refusal line) before the
    /// CONNECTION_CLOSE is sent anyway.
    pub close_grace: Duration,
    /// Queue of datagrams forwarded to this shard by other shards.
    pub forward_queue: usize,
    /// Time an established connection has to open its stream (its hello line then has what
    /// is left of the core's handshake deadline); beyond, it is closed with code 1008.
    pub hello_timeout: Duration,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_handshakes: 1024,
            retry_above: 256,
            max_connections: 1_000_000,
            socket_buffer: 8 << 20,
            stream_window: 8192,
            send_window: 64 * 1024,
            close_grace: Duration::from_secs(2),
            forward_queue: 1024,
        }
    }
}

/// The transport parameters every device connection gets.
pub fn transport(s: &QuicSettings) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .initial_mtu(1200)
        .min_mtu(1200)
        .mtu_discovery_config(None)
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .stream_receive_window(VarInt::from_u32(s.stream_window))
        .receive_window(VarInt::from_u32(s.stream_window))
        .send_window(s.send_window)
        .keep_alive_interval(Some(s.keep_alive))
        .max_idle_timeout(Some(IdleTimeout::from(
            VarInt::from_u64(s.idle_timeout.as_millis() as u64).unwrap_or(VarInt::MAX),
        )))
        .enable_segmentation_offload(true);
    t
}

/// The endpoint settings of shard `mesh_index` with steering slot `slot`: connection IDs that
/// carry both. `reset_key`, when given, is the stateless-reset key every shard of every edge
/// sharing the token secret uses: a device whose edge process died gets, on its next packet, a
/// reset it recognises from whichever process receives it, and reconnects at once instead of
/// waiting out its idle timeout. Without it (auth off) each shard has a random key.
pub fn endpoint(
    mesh_index: u16,
    slot: u8,
    seed: u64,
    reset_key: Option<[u8; 32]>,
) -> EndpointConfig {
    let mut e = match reset_key {
        Some(k) => EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k))),
        None => EndpointConfig::default(),
    };
    // quinn-proto's default (20 ms between resets per endpoint) would take a shard ~13 s to
    // reset the 667 devices of a dead process in the game day; a reset is smaller than the
    // packet that caused it (no amplification), so allow 10,000 per second per shard.
    e.min_reset_interval(Duration::from_micros(100));
    let counter = std::sync::atomic::AtomicU64::new(seed);
    e.cid_generator(move || {
        let s = counter.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
        Box::new(ShardCids::new(mesh_index, slot, s))
    });
    let mut rng_seed = [0u8; 32];
    rng_seed[..8].copy_from_slice(&seed.to_le_bytes());
    rng_seed[8..10].copy_from_slice(&mesh_index.to_le_bytes());
    e.rng_seed(Some(rng_seed));
    e
}

/// The server settings: TLS from `crypto`, the transport above, handshake buffering bounded.
pub fn server(crypto: Arc<super::session::LeanServerConfig>, s: &QuicSettings) -> ServerConfig {
    let mut c = ServerConfig::with_crypto(crypto);
    c.transport_config(Arc::new(transport(s)))
        .max_incoming(s.max_handshakes.max(1))
        .incoming_buffer_size(16 * 1024)
        .incoming_buffer_size_total((s.max_handshakes as u64).max(1) * 16 * 1024)
        .migration(true);
    c
}
