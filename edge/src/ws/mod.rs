//! Sans-IO WebSocket (RFC 6455) for the edge's device connections, and the client half the bench
//! fleet uses to play devices.
//!
//! The edge keeps up to millions of idle device connections, so this module is pure functions
//! over caller-owned bytes plus a few bytes of state per connection: no sockets, no clock, no
//! randomness (client masking keys come from the caller), no buffer per connection, and no
//! allocation on the frame path except appending to the caller's `Vec<u8>`.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade, parsed from the read buffer, and the 101 or refusal
//!   response; the bench client's request and its response check.
//! - [`query`]: the `/v1/subscribe` query (`events`, `since`, `format`, `token`).
//! - [`frame`]: frame encoding, in-place decoding, close payloads, and [`frame::MessageState`],
//!   which checks fragmentation and UTF-8 across frames in 8 bytes.
//!
//! What is deliberately absent: extensions (permessage-deflate would need per-connection
//! compression state, which is exactly what the edge cannot afford), subprotocols, and keeping
//! device data messages (the edge reads nothing from devices but control frames).

pub mod frame;
pub mod handshake;
pub mod query;

pub use frame::{
    decode_frame, encode_close, encode_frame, Decoded, Message, MessageState, Opcode,
    ProtocolError, Role,
};
pub use handshake::{HandshakeError, Request};
pub use query::{parse_subscribe, Format, QueryError, QueryLimits, Subscribe};
