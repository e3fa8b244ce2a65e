//! A cue encoded once per format, as whole WebSocket frames: every device of a format gets the
//! very same bytes, so fanout is one `send()` of a shared buffer per device.

use cue_origin::cue::Cue;

use crate::ws::frame::{encode_frame, Opcode};
use crate::ws::query::Format;

/// A cue with its ready-to-send WebSocket frames.
#[derive(Debug)]
pub struct EncodedCue {
    /// The cue.
    pub cue: Cue,
    /// A text frame holding the JSON form.
    pub ws_json: Box<[u8]>,
    /// A binary frame holding the binary form.
    pub ws_binary: Box<[u8]>,
}

impl EncodedCue {
    /// Encodes `cue` in every format.
    pub fn new(cue: Cue) -> Self {
        let mut json = Vec::with_capacity(160);
        cue.write_json(&mut json);
        let mut ws_json = Vec::with_capacity(json.len() + 4);
        encode_frame(Opcode::Text, &json, None, &mut ws_json);
        let bin = cue.to_binary();
        let mut ws_binary = Vec::with_capacity(bin.len() + 4);
        encode_frame(Opcode::Binary, &bin, None, &mut ws_binary);
        Self {
            cue,
            ws_json: ws_json.into(),
            ws_binary: ws_binary.into(),
        }
    }

    /// The frame for a device of `format`.
    pub fn frame(&self, format: Format) -> &[u8] {
        match format {
            Format::Json => &self.ws_json,
            Format::Binary => &self.ws_binary,
        }
    }
}
