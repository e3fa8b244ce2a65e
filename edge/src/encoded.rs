//! A cue encoded once per wire encoding, as whole units of what each transport sends: every
//! device of an encoding gets the very same bytes, so fanout is one `send()` (WebSocket) or one
//! stream write (QUIC) of a shared buffer per device.
//!
//! The four encodings (byte layouts in docs/protocol.md):
//! - WebSocket JSON: a text frame holding the JSON cue.
//! - WebSocket binary: a binary frame holding the binary cue.
//! - QUIC JSON: the JSON cue and `\n` (one JSON object per line on the stream).
//! - QUIC binary: a record of `u16` big-endian length, then the binary cue (21..=147 bytes).

use cue_common::cue::Cue;

use crate::ws::frame::{encode_frame, Opcode};
use crate::ws::query::Format;

/// How cues are written to one device: its transport and its chosen format. One byte, so it
/// also tells the device record which transport it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// WebSocket text frames of JSON.
    WsJson,
    /// WebSocket binary frames of the binary cue.
    WsBinary,
    /// QUIC stream, one JSON cue per line.
    QuicJson,
    /// QUIC stream, length-prefixed binary cues.
    QuicBinary,
}

/// The transport a device is connected over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// WebSocket over TCP (plain or TLS: TLS lives in the driver, below the core).
    Ws,
    /// QUIC (`cue/1`), one bidirectional stream.
    Quic,
}

impl Encoding {
    /// The transport of this encoding.
    pub fn transport(self) -> Transport {
        match self {
            Encoding::WsJson | Encoding::WsBinary => Transport::Ws,
            Encoding::QuicJson | Encoding::QuicBinary => Transport::Quic,
        }
    }

    /// The encoding for `format` on `transport`.
    pub fn of(transport: Transport, format: Format) -> Self {
        match (transport, format) {
            (Transport::Ws, Format::Json) => Encoding::WsJson,
            (Transport::Ws, Format::Binary) => Encoding::WsBinary,
            (Transport::Quic, Format::Json) => Encoding::QuicJson,
            (Transport::Quic, Format::Binary) => Encoding::QuicBinary,
        }
    }
}

/// A cue with its ready-to-send bytes in every encoding.
#[derive(Debug)]
pub struct EncodedCue {
    /// The cue.
    pub cue: Cue,
    /// A text frame holding the JSON form.
    pub ws_json: Box<[u8]>,
    /// A binary frame holding the binary form.
    pub ws_binary: Box<[u8]>,
    /// The JSON form and a newline.
    pub quic_json: Box<[u8]>,
    /// `u16` BE length, then the binary form.
    pub quic_binary: Box<[u8]>,
    /// Its event's class (from the origin; normal unless the publish said otherwise).
    pub class: cue_common::cue::Priority,
}

impl EncodedCue {
    /// Encodes `cue` in every encoding, as its tenant's devices see it (the bare event name:
    /// a device of one tenant gets the same bytes as before tenants existed).
    pub fn new(cue: Cue) -> Self {
        let dev = cue.for_device();
        let mut json = Vec::with_capacity(160);
        dev.write_json(&mut json);
        let mut ws_json = Vec::with_capacity(json.len() + 4);
        encode_frame(Opcode::Text, &json, None, &mut ws_json);
        let bin = dev.to_binary();
        let mut ws_binary = Vec::with_capacity(bin.len() + 4);
        encode_frame(Opcode::Binary, &bin, None, &mut ws_binary);
        let mut quic_binary = Vec::with_capacity(bin.len() + 2);
        // A binary cue is at most MAX_BINARY_LEN (180) bytes, so the length always fits.
        quic_binary.extend_from_slice(&(bin.len() as u16).to_be_bytes());
        quic_binary.extend_from_slice(&bin);
        json.push(b'\n');
        Self {
            cue,
            ws_json: ws_json.into(),
            ws_binary: ws_binary.into(),
            quic_json: json.into(),
            quic_binary: quic_binary.into(),
            class: cue_common::cue::Priority::Normal,
        }
    }

    /// The same, of class `class`.
    pub fn with_class(mut self, class: cue_common::cue::Priority) -> Self {
        self.class = class;
        self
    }

    /// The bytes for a device of `encoding`.
    pub fn frame(&self, encoding: Encoding) -> &[u8] {
        match encoding {
            Encoding::WsJson => &self.ws_json,
            Encoding::WsBinary => &self.ws_binary,
            Encoding::QuicJson => &self.quic_json,
            Encoding::QuicBinary => &self.quic_binary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_encodings_round_trip() {
        let cue = Cue::new("fight-night", "round-3", 42, 1_764_460_800_123).unwrap();
        let e = EncodedCue::new(cue.clone());
        let line = &e.quic_json;
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(Cue::from_json(&line[..line.len() - 1]).unwrap(), cue);
        let rec = &e.quic_binary;
        let n = u16::from_be_bytes([rec[0], rec[1]]) as usize;
        assert_eq!(n, rec.len() - 2);
        assert_eq!(n, 19 + "fight-night".len() + "round-3".len());
        assert_eq!(Cue::from_binary(&rec[2..]).unwrap(), cue);
        assert_eq!(e.frame(Encoding::QuicBinary), &e.quic_binary[..]);
        assert_eq!(
            Encoding::of(Transport::Quic, Format::Json),
            Encoding::QuicJson
        );
        assert_eq!(Encoding::WsBinary.transport(), Transport::Ws);
    }
}
