//! WebSocket frames (RFC 6455 section 5): encoding, in-place decoding, close payloads, and the
//! per-connection state that checks fragmentation and UTF-8 across frames.
//!
//! Everything here is a pure function over caller-owned bytes. The edge holds millions of idle
//! devices, so nothing in this file keeps a buffer per connection: [`decode_frame`] unmasks the
//! payload where it already lies in the read buffer, the encoders append to the caller's
//! `Vec<u8>`, and [`MessageState`] is 8 bytes that validate a text message frame by frame without
//! ever holding its content.
//!
//! No extension is ever negotiated, so the three RSV bits must be zero. Limits are checked from
//! the frame header alone, so an oversized frame is refused (1009) before its payload is read.

use std::ops::Range;

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: the endpoint is going away (the edge drains with this one).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message or close reason is not valid UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// Close code: a frame or message is larger than this endpoint accepts.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Largest payload of a control frame (close, ping, pong), RFC 6455 section 5.5.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest frame header: 2 bytes, a 64-bit extended length and a masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame opcode that RFC 6455 defines. The reserved values 3-7 and 11-15 are not representable:
/// [`Opcode::from_u8`] refuses them, and the decoder turns that into a 1002 close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Continues a fragmented text or binary message.
    Continuation,
    /// First (or only) frame of a UTF-8 text message.
    Text,
    /// First (or only) frame of a binary message.
    Binary,
    /// Starts the closing handshake; payload is empty or a code and a UTF-8 reason.
    Close,
    /// Asks the peer for a pong carrying the same payload.
    Ping,
    /// Answers a ping, or is sent unsolicited as a heartbeat.
    Pong,
}

impl Opcode {
    /// The opcode for the 4-bit wire value, or `None` for a reserved value.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// True for close, ping and pong: frames that may interleave with a fragmented message, must
    /// not be fragmented themselves, and carry at most 125 bytes.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Which side of the connection we are; it decides which masking the peer must use
/// (RFC 6455 section 5.1: clients mask every frame, servers never do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We are the server (the edge): every incoming frame must be masked.
    Server,
    /// We are the client (the bench fleet): incoming frames must not be masked.
    Client,
}

/// Why the peer's bytes were refused, as the close frame the connection should end with.
///
/// `code` is 1002 (protocol error), 1007 (invalid UTF-8) or 1009 (too big); `reason` is short
/// enough to fit a close frame. Retrying the same bytes never helps: the fault is the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("websocket close {code}: {reason}")]
pub struct ProtocolError {
    /// The close code to send.
    pub code: u16,
    /// A short reason, fit to send as the close reason.
    pub reason: &'static str,
}

impl ProtocolError {
    const fn protocol(reason: &'static str) -> Self {
        ProtocolError {
            code: CLOSE_PROTOCOL_ERROR,
            reason,
        }
    }
    const fn invalid_data(reason: &'static str) -> Self {
        ProtocolError {
            code: CLOSE_INVALID_DATA,
            reason,
        }
    }
    const fn too_big(reason: &'static str) -> Self {
        ProtocolError {
            code: CLOSE_TOO_BIG,
            reason,
        }
    }
}

/// What [`decode_frame`] found at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The buffer holds the start of a frame that looks valid so far; read more bytes and call
    /// again with the same (longer) buffer.
    Incomplete,
    /// One whole frame.
    Frame {
        /// Final fragment of its message (always true for control frames).
        fin: bool,
        /// The frame's opcode.
        opcode: Opcode,
        /// Where the payload lies in the buffer, already unmasked.
        payload: Range<usize>,
        /// Bytes the frame took (header and payload); drop them before decoding the next frame.
        consumed: usize,
    },
}

/// Length of the header of a frame with `payload_len` bytes of payload.
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let ext = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Appends one frame with FIN set to `out`.
///
/// Servers pass `mask: None`; clients must pass a fresh random key per frame (RFC 6455 section
/// 5.3), which the caller supplies so that this stays free of randomness. The payload is copied
/// once, masked on the way when a key is given. Control frames longer than 125 bytes are a bug in
/// the caller (the peer would close with 1002), hence only a debug assertion.
pub fn encode_frame(opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    encode_parts(opcode, &[payload], mask, out);
}

/// Appends a close frame carrying `code` and `reason` to `out`.
///
/// The reason is cut at a UTF-8 character boundary so that the payload stays within the 125 bytes
/// a control frame may carry.
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let reason = truncate_utf8(reason, MAX_CONTROL_PAYLOAD - 2);
    encode_parts(
        Opcode::Close,
        &[&code.to_be_bytes(), reason.as_bytes()],
        mask,
        out,
    );
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes the header and then each part, so that a close frame needs no scratch buffer.
fn encode_parts(opcode: Opcode, parts: &[&[u8]], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(!opcode.is_control() || len <= MAX_CONTROL_PAYLOAD);
    out.reserve(header_len(len, mask.is_some()) + len);

    out.push(0x80 | opcode.as_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }

    match mask {
        None => {
            for part in parts {
                out.extend_from_slice(part);
            }
        }
        Some(key) => {
            out.extend_from_slice(&key);
            let mut offset = 0;
            for part in parts {
                let start = out.len();
                out.extend_from_slice(part);
                apply_mask(&mut out[start..], key, offset);
                offset += part.len();
            }
        }
    }
}

/// XORs `data` with `key`, as if `data` started `offset` bytes into the payload. Masking and
/// unmasking are the same operation.
fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    // Eight bytes at a time: the edge unmasks every frame a device sends and the bench client
    // masks every frame it sends, so this should not go byte by byte.
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let r = offset & 3;
    [key[r], key[(r + 1) & 3], key[(r + 2) & 3], key[(r + 3) & 3]]
}

/// Decodes the frame at the start of `buf`, unmasking its payload in place.
///
/// `role` is our side: a server refuses unmasked frames and a client refuses masked ones (1002).
/// A frame whose declared payload exceeds `max_payload` is refused with 1009 as soon as its
/// length is readable, before the payload has arrived. The other refusals are 1002: RSV bits set
/// (no extension is negotiated), a reserved opcode, a control frame that is fragmented or longer
/// than 125 bytes, and a 64-bit length with its top bit set. Lengths need not use the shortest
/// encoding (RFC 6455 asks for it but nothing breaks when a peer does not).
///
/// On [`Decoded::Incomplete`] nothing in `buf` was changed.
pub fn decode_frame(
    buf: &mut [u8],
    role: Role,
    max_payload: usize,
) -> Result<Decoded, ProtocolError> {
    let [b0, b1] = match buf {
        [b0, b1, ..] => [*b0, *b1],
        _ => return Ok(Decoded::Incomplete),
    };

    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::protocol("reserved bits set"));
    }
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(ProtocolError::protocol("reserved opcode"))?;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::protocol("client frame not masked")),
        (Role::Client, true) => return Err(ProtocolError::protocol("server frame masked")),
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::protocol("fragmented control frame"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::protocol("control frame too long"));
        }
    }

    let (len, mut pos): (u64, usize) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(Decoded::Incomplete),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ProtocolError::protocol("frame length has its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(Decoded::Incomplete),
        },
        n => (u64::from(n), 2),
    };
    // Compared as u64 so that a 64-bit length cannot wrap on a 32-bit target; once it passes,
    // it fits in usize.
    if len > max_payload as u64 {
        return Err(ProtocolError::too_big("frame too big"));
    }
    let len = len as usize;

    let key = if masked {
        let Some(k) = buf.get(pos..pos + 4) else {
            return Ok(Decoded::Incomplete);
        };
        pos += 4;
        Some([k[0], k[1], k[2], k[3]])
    } else {
        None
    };

    let Some(end) = pos.checked_add(len) else {
        return Err(ProtocolError::too_big("frame too big"));
    };
    let Some(payload) = buf.get_mut(pos..end) else {
        return Ok(Decoded::Incomplete);
    };
    if let Some(key) = key {
        apply_mask(payload, key, 0);
    }
    Ok(Decoded::Frame {
        fin,
        opcode,
        payload: pos..end,
        consumed: end,
    })
}

/// True for the close codes a peer may put on the wire (RFC 6455 section 7.4 and the IANA
/// registry): 1000-1003, 1007-1014 and the application ranges 3000-4999. 1005, 1006 and 1015 are
/// reserved for reporting, not for sending.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses the payload of a close frame: `None` when it is empty, else the code and the reason.
///
/// A one-byte payload or a code that may not be sent is 1002; a reason that is not UTF-8 is 1007.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::protocol("one-byte close payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(ProtocolError::protocol("close code not allowed"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| ProtocolError::invalid_data("close reason not UTF-8"))?;
            Ok(Some((code, reason)))
        }
    }
}

/// Incremental UTF-8 validator: one state byte, so a text message split across frames (and a
/// character split across frames) is checked without buffering any of it.
///
/// The state is a small DFA over bytes that follows the well-formed byte sequences of Unicode
/// 15.0 table 3-7: it rejects overlong forms, surrogates and code points above U+10FFFF exactly
/// where `std::str::from_utf8` does. While no character is pending, whole runs are handed to
/// `std::str::from_utf8`, which is faster than any byte loop; the DFA only bridges the
/// characters cut by a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Utf8Validator {
    state: u8,
}

// DFA states. ACCEPT: between characters. CONTn: n continuation bytes (80..BF) still expected.
// The other states constrain the first continuation byte after E0, ED, F0 and F4, which is what
// excludes overlong encodings, surrogates and values above U+10FFFF.
const UTF8_ACCEPT: u8 = 0;
const UTF8_CONT1: u8 = 1;
const UTF8_CONT2: u8 = 2;
const UTF8_CONT3: u8 = 3;
const UTF8_AFTER_E0: u8 = 4; // next in A0..BF, then 1 more
const UTF8_AFTER_ED: u8 = 5; // next in 80..9F, then 1 more
const UTF8_AFTER_F0: u8 = 6; // next in 90..BF, then 2 more
const UTF8_AFTER_F4: u8 = 7; // next in 80..8F, then 2 more
const UTF8_REJECT: u8 = 8;

fn utf8_step(state: u8, b: u8) -> u8 {
    let in_range = |lo: u8, hi: u8, next: u8| {
        if (lo..=hi).contains(&b) {
            next
        } else {
            UTF8_REJECT
        }
    };
    match state {
        UTF8_ACCEPT => match b {
            0x00..=0x7F => UTF8_ACCEPT,
            0xC2..=0xDF => UTF8_CONT1,
            0xE0 => UTF8_AFTER_E0,
            0xE1..=0xEC | 0xEE..=0xEF => UTF8_CONT2,
            0xED => UTF8_AFTER_ED,
            0xF0 => UTF8_AFTER_F0,
            0xF1..=0xF3 => UTF8_CONT3,
            0xF4 => UTF8_AFTER_F4,
            _ => UTF8_REJECT,
        },
        UTF8_CONT1 => in_range(0x80, 0xBF, UTF8_ACCEPT),
        UTF8_CONT2 => in_range(0x80, 0xBF, UTF8_CONT1),
        UTF8_CONT3 => in_range(0x80, 0xBF, UTF8_CONT2),
        UTF8_AFTER_E0 => in_range(0xA0, 0xBF, UTF8_CONT1),
        UTF8_AFTER_ED => in_range(0x80, 0x9F, UTF8_CONT1),
        UTF8_AFTER_F0 => in_range(0x90, 0xBF, UTF8_CONT2),
        UTF8_AFTER_F4 => in_range(0x80, 0x8F, UTF8_CONT2),
        _ => UTF8_REJECT,
    }
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub const fn new() -> Self {
        Utf8Validator { state: UTF8_ACCEPT }
    }

    /// Feeds the next chunk; false once the text so far can no longer be the prefix of valid
    /// UTF-8 (and from then on).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        // Finish a character that the previous chunk cut.
        while self.state != UTF8_ACCEPT && self.state != UTF8_REJECT {
            let Some((&b, rest)) = bytes.split_first() else {
                return true;
            };
            self.state = utf8_step(self.state, b);
            bytes = rest;
        }
        if self.state == UTF8_REJECT {
            return false;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            // `error_len() == None` means the chunk ends inside a character that may still be
            // completed by the next chunk: remember how far into it we are.
            Err(e) if e.error_len().is_none() => {
                for &b in &bytes[e.valid_up_to()..] {
                    self.state = utf8_step(self.state, b);
                }
                self.state != UTF8_REJECT
            }
            Err(_) => {
                self.state = UTF8_REJECT;
                false
            }
        }
    }

    /// True when the text so far is valid UTF-8 that does not end inside a character.
    pub fn is_complete(&self) -> bool {
        self.state == UTF8_ACCEPT
    }
}

/// What a frame completed, as [`MessageState::on_frame`] reports it. Borrows the frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message ended; its UTF-8 was checked.
    Text {
        /// Total length of the message over all its frames.
        len: usize,
        /// The whole message when it came in one frame (servers never fragment, so this is what
        /// the bench client reads); `None` for a fragmented one, whose content was not kept.
        single: Option<&'a str>,
    },
    /// A binary message ended.
    Binary {
        /// Total length of the message over all its frames.
        len: usize,
        /// The whole message when it came in one frame; `None` for a fragmented one.
        single: Option<&'a [u8]>,
    },
    /// A close frame, with its code and reason already checked by [`parse_close`].
    Close(Option<(u16, &'a str)>),
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
}

/// Fragmentation and UTF-8 state of the incoming data message on one connection: 8 bytes.
///
/// Feed it every frame [`decode_frame`] returns. It refuses a continuation with no message
/// started and a new message while one is in progress (1002), a message longer than the limit
/// (1009), and text that is not UTF-8 or ends inside a character (1007). Control frames pass
/// through at any time. After an error the connection must close, so the state is left as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageState {
    /// The data message in progress, if any.
    in_progress: Option<DataKind>,
    utf8: Utf8Validator,
    /// Bytes of the message in progress so far. u32 keeps the struct at 8 bytes; messages over
    /// 4 GiB are refused whatever the limit (no sane limit is that high).
    len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

impl MessageState {
    /// State between messages.
    pub const fn new() -> Self {
        MessageState {
            in_progress: None,
            utf8: Utf8Validator::new(),
            len: 0,
        }
    }

    /// True while a fragmented data message has started and not ended.
    pub fn in_progress(&self) -> bool {
        self.in_progress.is_some()
    }

    /// Accounts for one decoded frame. Returns what it completed: `Some` for every control frame
    /// and for the last frame of a data message, `None` for a data frame that is not the last.
    pub fn on_frame<'a>(
        &mut self,
        fin: bool,
        opcode: Opcode,
        payload: &'a [u8],
        max_message: usize,
    ) -> Result<Option<Message<'a>>, ProtocolError> {
        let kind = match opcode {
            Opcode::Close => return parse_close(payload).map(|c| Some(Message::Close(c))),
            Opcode::Ping => return Ok(Some(Message::Ping(payload))),
            Opcode::Pong => return Ok(Some(Message::Pong(payload))),
            Opcode::Continuation => self
                .in_progress
                .ok_or(ProtocolError::protocol("continuation without a message"))?,
            Opcode::Text | Opcode::Binary => {
                if self.in_progress.is_some() {
                    return Err(ProtocolError::protocol("new message before the last ended"));
                }
                if opcode == Opcode::Text {
                    DataKind::Text
                } else {
                    DataKind::Binary
                }
            }
        };

        let total = u64::from(self.len) + payload.len() as u64;
        if total > max_message as u64 || total > u64::from(u32::MAX) {
            return Err(ProtocolError::too_big("message too big"));
        }
        let len = total as usize;
        let single_frame = fin && opcode != Opcode::Continuation;

        if single_frame {
            // The common case (and every server frame): validate once, keep nothing.
            return Ok(Some(match kind {
                DataKind::Text => {
                    let text = std::str::from_utf8(payload)
                        .map_err(|_| ProtocolError::invalid_data("text not UTF-8"))?;
                    Message::Text {
                        len,
                        single: Some(text),
                    }
                }
                DataKind::Binary => Message::Binary {
                    len,
                    single: Some(payload),
                },
            }));
        }

        if kind == DataKind::Text {
            if !self.utf8.feed(payload) {
                return Err(ProtocolError::invalid_data("text not UTF-8"));
            }
            if fin && !self.utf8.is_complete() {
                return Err(ProtocolError::invalid_data("text ends inside a character"));
            }
        }
        if !fin {
            self.in_progress = Some(kind);
            self.len = total as u32;
            return Ok(None);
        }
        *self = MessageState::new();
        Ok(Some(match kind {
            DataKind::Text => Message::Text { len, single: None },
            DataKind::Binary => Message::Binary { len, single: None },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_OPCODES: [Opcode; 6] = [
        Opcode::Continuation,
        Opcode::Text,
        Opcode::Binary,
        Opcode::Close,
        Opcode::Ping,
        Opcode::Pong,
    ];
    const RFC_MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn frame(buf: &mut [u8], role: Role) -> (bool, Opcode, Vec<u8>, usize) {
        match decode_frame(buf, role, usize::MAX).unwrap() {
            Decoded::Frame {
                fin,
                opcode,
                payload,
                consumed,
            } => (fin, opcode, buf[payload].to_vec(), consumed),
            Decoded::Incomplete => panic!("incomplete"),
        }
    }

    fn refusal(bytes: &[u8], role: Role, max_payload: usize) -> u16 {
        decode_frame(&mut bytes.to_vec(), role, max_payload)
            .unwrap_err()
            .code
    }

    #[test]
    fn opcode_wire_values() {
        for v in 0..=255u8 {
            match Opcode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(!matches!(v, 0 | 1 | 2 | 8 | 9 | 10)),
            }
        }
        let control: Vec<_> = ALL_OPCODES.iter().filter(|o| o.is_control()).collect();
        assert_eq!(control, [&Opcode::Close, &Opcode::Ping, &Opcode::Pong]);
    }

    #[test]
    fn header_lengths() {
        assert_eq!(header_len(0, false), 2);
        assert_eq!(header_len(125, false), 2);
        assert_eq!(header_len(126, false), 4);
        assert_eq!(header_len(65535, false), 4);
        assert_eq!(header_len(65536, false), 10);
        assert_eq!(header_len(65536, true), MAX_HEADER_LEN);
        assert_eq!(header_len(0, true), 6);
    }

    // RFC 6455 section 5.7.
    #[test]
    fn rfc_single_frame_unmasked_text() {
        let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut out = Vec::new();
        encode_frame(Opcode::Text, b"Hello", None, &mut out);
        assert_eq!(out, wire);
        assert_eq!(
            frame(&mut out, Role::Client),
            (true, Opcode::Text, b"Hello".to_vec(), 7)
        );
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut out = Vec::new();
        encode_frame(Opcode::Text, b"Hello", Some(RFC_MASK), &mut out);
        assert_eq!(out, wire);
        assert_eq!(
            frame(&mut out, Role::Server),
            (true, Opcode::Text, b"Hello".to_vec(), 11)
        );
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let mut first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        let mut second = [0x80, 0x02, 0x6c, 0x6f];
        let (fin, op, payload, _) = frame(&mut first, Role::Client);
        assert_eq!((fin, op, &payload[..]), (false, Opcode::Text, &b"Hel"[..]));
        let (fin, op, payload, _) = frame(&mut second, Role::Client);
        assert_eq!(
            (fin, op, &payload[..]),
            (true, Opcode::Continuation, &b"lo"[..])
        );

        let mut state = MessageState::new();
        assert_eq!(state.on_frame(false, Opcode::Text, b"Hel", 100), Ok(None));
        assert!(state.in_progress());
        assert_eq!(
            state.on_frame(true, Opcode::Continuation, b"lo", 100),
            Ok(Some(Message::Text {
                len: 5,
                single: None
            }))
        );
        assert!(!state.in_progress());
    }

    #[test]
    fn rfc_ping_and_masked_pong() {
        let mut ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(frame(&mut ping, Role::Client).1, Opcode::Ping);
        let wire = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut pong = wire;
        assert_eq!(
            frame(&mut pong, Role::Server),
            (true, Opcode::Pong, b"Hello".to_vec(), 11)
        );
        let mut out = Vec::new();
        encode_frame(Opcode::Pong, b"Hello", Some(RFC_MASK), &mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn rfc_256_and_64k_binary_headers() {
        let mut out = Vec::new();
        encode_frame(Opcode::Binary, &[7; 256], None, &mut out);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        out.clear();
        encode_frame(Opcode::Binary, &vec![7; 65536], None, &mut out);
        assert_eq!(out[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), 10 + 65536);
        let (_, _, payload, consumed) = frame(&mut out, Role::Client);
        assert_eq!((payload.len(), consumed), (65536, 65546));
    }

    #[test]
    fn refuses_reserved_bits() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(
                refusal(&[0x81 | rsv, 0x00], Role::Client, 100),
                CLOSE_PROTOCOL_ERROR
            );
        }
    }

    #[test]
    fn refuses_reserved_opcodes() {
        for op in (3..=7).chain(0xB..=0xF) {
            assert_eq!(
                refusal(&[0x80 | op, 0x00], Role::Client, 100),
                CLOSE_PROTOCOL_ERROR
            );
        }
    }

    #[test]
    fn server_refuses_unmasked_frames() {
        assert_eq!(
            refusal(&[0x81, 0x00], Role::Server, 100),
            CLOSE_PROTOCOL_ERROR
        );
    }

    #[test]
    fn client_refuses_masked_frames() {
        assert_eq!(
            refusal(&[0x81, 0x80, 1, 2, 3, 4], Role::Client, 100),
            CLOSE_PROTOCOL_ERROR
        );
    }

    #[test]
    fn refuses_fragmented_control_frames() {
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(
                refusal(&[op, 0x00], Role::Client, 100),
                CLOSE_PROTOCOL_ERROR
            );
        }
    }

    #[test]
    fn refuses_long_control_frames_from_the_header() {
        // 126 in the 7-bit field: refused before the extended length arrives.
        assert_eq!(
            refusal(&[0x89, 0x7E], Role::Client, 1 << 20),
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            refusal(&[0x89, 0x7F], Role::Client, 1 << 20),
            CLOSE_PROTOCOL_ERROR
        );
        let mut ok = vec![0x89, 125];
        ok.extend_from_slice(&[0; 125]);
        assert_eq!(frame(&mut ok, Role::Client).2.len(), 125);
    }

    #[test]
    fn refuses_64_bit_length_with_top_bit() {
        let wire = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            refusal(&wire, Role::Client, usize::MAX),
            CLOSE_PROTOCOL_ERROR
        );
    }

    #[test]
    fn refuses_oversized_payload_from_the_header_alone() {
        assert_eq!(refusal(&[0x82, 101], Role::Client, 100), CLOSE_TOO_BIG);
        // Masked, without the masking key yet.
        assert_eq!(
            refusal(&[0x82, 0xFE, 0x01, 0x00], Role::Server, 255),
            CLOSE_TOO_BIG
        );
        assert_eq!(
            refusal(&[0x82, 0x7F, 0, 0, 0, 1, 0, 0, 0, 0], Role::Client, 1 << 20),
            1009
        );
        // Exactly at the limit is fine.
        let mut ok = vec![0x82, 100];
        ok.extend_from_slice(&[0; 100]);
        assert_eq!(frame(&mut ok, Role::Client).2.len(), 100);
    }

    #[test]
    fn accepts_non_minimal_lengths() {
        let mut wire = vec![0x81, 0x7E, 0x00, 0x02, b'h', b'i'];
        assert_eq!(frame(&mut wire, Role::Client).2, b"hi");
        let mut wire = vec![0x81, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x02, b'h', b'i'];
        assert_eq!(frame(&mut wire, Role::Client).2, b"hi");
    }

    #[test]
    fn incomplete_until_whole_and_leaves_the_rest() {
        let mut buf = Vec::new();
        encode_frame(Opcode::Text, b"one", Some([1, 2, 3, 4]), &mut buf);
        let first_len = buf.len();
        encode_frame(Opcode::Binary, b"two", Some([5, 6, 7, 8]), &mut buf);
        for k in 0..first_len {
            let before = buf[..k].to_vec();
            assert_eq!(
                decode_frame(&mut buf[..k], Role::Server, 100),
                Ok(Decoded::Incomplete)
            );
            assert_eq!(buf[..k], before, "Incomplete must not touch the buffer");
        }
        let (_, op, payload, consumed) = frame(&mut buf, Role::Server);
        assert_eq!(
            (op, &payload[..], consumed),
            (Opcode::Text, &b"one"[..], first_len)
        );
        let (_, op, payload, _) = frame(&mut buf[consumed..], Role::Server);
        assert_eq!((op, &payload[..]), (Opcode::Binary, &b"two"[..]));
    }

    #[test]
    fn every_boundary_of_a_64k_frame() {
        let payload: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
        let mut buf = Vec::new();
        encode_frame(Opcode::Binary, &payload, Some([9, 8, 7, 6]), &mut buf);
        for k in 0..buf.len() {
            assert_eq!(
                decode_frame(&mut buf[..k], Role::Server, 1 << 17),
                Ok(Decoded::Incomplete)
            );
        }
        assert_eq!(frame(&mut buf, Role::Server).2, payload);
    }

    #[test]
    fn close_frame_round_trip() {
        let mut out = Vec::new();
        encode_close(CLOSE_GOING_AWAY, "retry-after=7", Some(RFC_MASK), &mut out);
        let (_, op, payload, _) = frame(&mut out, Role::Server);
        assert_eq!(op, Opcode::Close);
        assert_eq!(parse_close(&payload), Ok(Some((1001, "retry-after=7"))));
    }

    #[test]
    fn close_reason_truncated_at_a_char_boundary() {
        let reason = "\u{e9}".repeat(100); // 200 bytes of 2-byte chars
        let mut out = Vec::new();
        encode_close(CLOSE_NORMAL, &reason, None, &mut out);
        let (_, _, payload, _) = frame(&mut out, Role::Client);
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        let (code, text) = parse_close(&payload).unwrap().unwrap();
        assert_eq!(code, 1000);
        assert_eq!(text, "\u{e9}".repeat(61)); // 122 bytes: 123 would split a char
    }

    #[test]
    fn parse_close_empty_is_none() {
        assert_eq!(parse_close(&[]), Ok(None));
    }

    #[test]
    fn parse_close_refuses_one_byte() {
        assert_eq!(parse_close(&[0x03]).unwrap_err().code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn parse_close_refuses_codes_not_for_the_wire() {
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let err = parse_close(&u16::to_be_bytes(code)).unwrap_err();
            assert_eq!(err.code, CLOSE_PROTOCOL_ERROR, "code {code}");
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1009, 1011, 1014, 3000, 4000, 4999,
        ] {
            assert_eq!(
                parse_close(&u16::to_be_bytes(code)),
                Ok(Some((code, ""))),
                "code {code}"
            );
        }
    }

    #[test]
    fn parse_close_refuses_non_utf8_reason() {
        assert_eq!(
            parse_close(&[0x03, 0xE8, 0xFF]).unwrap_err().code,
            CLOSE_INVALID_DATA
        );
    }

    #[test]
    fn message_state_is_tiny() {
        assert!(std::mem::size_of::<MessageState>() <= 8);
        assert_eq!(std::mem::size_of::<Utf8Validator>(), 1);
    }

    #[test]
    fn single_frames_give_their_payload() {
        let mut s = MessageState::new();
        assert_eq!(
            s.on_frame(true, Opcode::Text, b"{\"seq\":1}", 100),
            Ok(Some(Message::Text {
                len: 9,
                single: Some("{\"seq\":1}")
            }))
        );
        assert_eq!(
            s.on_frame(true, Opcode::Binary, &[1, 2], 100),
            Ok(Some(Message::Binary {
                len: 2,
                single: Some(&[1, 2][..])
            }))
        );
    }

    #[test]
    fn control_frames_pass_through_a_fragmented_message() {
        let mut s = MessageState::new();
        assert_eq!(s.on_frame(false, Opcode::Binary, b"ab", 100), Ok(None));
        assert_eq!(
            s.on_frame(true, Opcode::Ping, b"p", 100),
            Ok(Some(Message::Ping(b"p")))
        );
        assert_eq!(
            s.on_frame(true, Opcode::Pong, b"", 100),
            Ok(Some(Message::Pong(b"")))
        );
        assert_eq!(
            s.on_frame(false, Opcode::Continuation, b"cd", 100),
            Ok(None)
        );
        assert_eq!(
            s.on_frame(true, Opcode::Continuation, b"e", 100),
            Ok(Some(Message::Binary {
                len: 5,
                single: None
            }))
        );
        assert_eq!(s, MessageState::new());
    }

    #[test]
    fn close_frames_are_checked() {
        let mut s = MessageState::new();
        assert_eq!(
            s.on_frame(true, Opcode::Close, &[], 100),
            Ok(Some(Message::Close(None)))
        );
        assert_eq!(
            s.on_frame(true, Opcode::Close, &[0x03, 0xE8, b'o', b'k'], 100),
            Ok(Some(Message::Close(Some((1000, "ok")))))
        );
        let err = s
            .on_frame(true, Opcode::Close, &[0x03, 0xED], 100)
            .unwrap_err();
        assert_eq!(err.code, CLOSE_PROTOCOL_ERROR); // 1005 may not be sent
    }

    #[test]
    fn continuation_without_a_message_is_refused() {
        let err = MessageState::new().on_frame(true, Opcode::Continuation, b"x", 100);
        assert_eq!(err.unwrap_err().code, CLOSE_PROTOCOL_ERROR);
    }

    #[test]
    fn new_message_during_a_message_is_refused() {
        for op in [Opcode::Text, Opcode::Binary] {
            let mut s = MessageState::new();
            s.on_frame(false, Opcode::Text, b"a", 100).unwrap();
            assert_eq!(
                s.on_frame(true, op, b"b", 100).unwrap_err().code,
                CLOSE_PROTOCOL_ERROR
            );
        }
    }

    #[test]
    fn message_over_the_limit_is_refused() {
        let mut s = MessageState::new();
        assert_eq!(
            s.on_frame(true, Opcode::Binary, &[0; 11], 10)
                .unwrap_err()
                .code,
            1009
        );
        let mut s = MessageState::new();
        s.on_frame(false, Opcode::Text, b"12345", 10).unwrap();
        s.on_frame(false, Opcode::Continuation, b"12345", 10)
            .unwrap();
        let err = s
            .on_frame(true, Opcode::Continuation, b"1", 10)
            .unwrap_err();
        assert_eq!(err.code, CLOSE_TOO_BIG);
    }

    #[test]
    fn invalid_text_is_refused() {
        let err = MessageState::new().on_frame(true, Opcode::Text, &[0xC0, 0x80], 100);
        assert_eq!(err.unwrap_err().code, CLOSE_INVALID_DATA);
        // Fails fast, on the first bad fragment.
        let err = MessageState::new().on_frame(false, Opcode::Text, &[b'a', 0xFF], 100);
        assert_eq!(err.unwrap_err().code, CLOSE_INVALID_DATA);
    }

    #[test]
    fn text_ending_inside_a_character_is_refused() {
        let mut s = MessageState::new();
        s.on_frame(false, Opcode::Text, &[b'a', 0xE2, 0x82], 100)
            .unwrap();
        let err = s
            .on_frame(true, Opcode::Continuation, &[], 100)
            .unwrap_err();
        assert_eq!(err.code, CLOSE_INVALID_DATA);
        let err = MessageState::new().on_frame(true, Opcode::Text, &[0xE2, 0x82], 100);
        assert_eq!(err.unwrap_err().code, CLOSE_INVALID_DATA);
    }

    #[test]
    fn character_split_across_frames_is_fine() {
        // U+20AC EURO SIGN is E2 82 AC; U+1F600 is F0 9F 98 80.
        let mut s = MessageState::new();
        s.on_frame(false, Opcode::Text, &[0xE2], 100).unwrap();
        s.on_frame(false, Opcode::Continuation, &[0x82], 100)
            .unwrap();
        s.on_frame(false, Opcode::Continuation, &[0xAC, 0xF0, 0x9F], 100)
            .unwrap();
        let done = s.on_frame(true, Opcode::Continuation, &[0x98, 0x80], 100);
        assert_eq!(
            done,
            Ok(Some(Message::Text {
                len: 7,
                single: None
            }))
        );
    }

    #[test]
    fn utf8_edge_cases() {
        let cases: &[&[u8]] = &[
            &[0xC0, 0x80],             // overlong NUL
            &[0xC1, 0xBF],             // overlong
            &[0xE0, 0x80, 0x80],       // overlong 3-byte
            &[0xE0, 0x9F, 0xBF],       // overlong 3-byte
            &[0xED, 0xA0, 0x80],       // surrogate U+D800
            &[0xED, 0xBF, 0xBF],       // surrogate U+DFFF
            &[0xF0, 0x8F, 0xBF, 0xBF], // overlong 4-byte
            &[0xF4, 0x90, 0x80, 0x80], // U+110000
            &[0xF5, 0x80, 0x80, 0x80], // past U+10FFFF
            &[0xFF],
            &[0x80], // lone continuation
            &[0xE2, 0x28, 0xA1],
            &[0xEF, 0xBF, 0xBF],       // U+FFFF, valid
            &[0xF4, 0x8F, 0xBF, 0xBF], // U+10FFFF, valid
            &[0xED, 0x9F, 0xBF],       // U+D7FF, valid
        ];
        for bytes in cases {
            let expect = std::str::from_utf8(bytes).is_ok();
            for split in 0..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..split]) & v.feed(&bytes[split..]) && v.is_complete();
                assert_eq!(ok, expect, "{bytes:x?} split at {split}");
            }
        }
    }

    /// One byte from each class of bytes that UTF-8 validation tells apart, at both ends of each
    /// range where the range is wider than one byte.
    const UTF8_CLASS_EDGES: [u8; 24] = [
        0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC,
        0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
    ];

    #[test]
    fn utf8_dfa_agrees_with_std_on_every_short_sequence_of_byte_classes() {
        // Every sequence of up to 4 class representatives: every path through the DFA from a
        // character boundary, since a character is at most 4 bytes.
        let n = UTF8_CLASS_EDGES.len();
        let mut bytes = Vec::with_capacity(4);
        for len in 0..=4u32 {
            for mut code in 0..n.pow(len) {
                bytes.clear();
                for _ in 0..len {
                    bytes.push(UTF8_CLASS_EDGES[code % n]);
                    code /= n;
                }
                let expect = std::str::from_utf8(&bytes).is_ok();
                let state = bytes.iter().fold(UTF8_ACCEPT, |s, &b| utf8_step(s, b));
                assert_eq!(state == UTF8_ACCEPT, expect, "{bytes:x?}");
                for split in 0..=bytes.len() {
                    let mut v = Utf8Validator::new();
                    let ok = v.feed(&bytes[..split]) & v.feed(&bytes[split..]) && v.is_complete();
                    assert_eq!(ok, expect, "{bytes:x?} split at {split}");
                }
            }
        }
    }

    /// Byte strings near UTF-8: valid characters with near misses among them (a lead byte and
    /// 1-3 bytes around the continuation range), or valid text with bytes replaced. Uniformly
    /// random bytes would almost all fail at the first byte.
    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        const LEADS: [u8; 18] = [
            0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1,
            0xF3, 0xF4, 0xF5, 0xFF,
        ];
        const CONTS: [u8; 8] = [0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0];
        let atom = prop_oneof![
            2 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => (
                prop::sample::select(&LEADS[..]),
                prop::collection::vec(prop::sample::select(&CONTS[..]), 1..=3)
            )
                .prop_map(|(lead, mut rest)| {
                    rest.insert(0, lead);
                    rest
                }),
        ];
        prop_oneof![
            3 => prop::collection::vec(atom, 0..8).prop_map(|atoms| atoms.concat()),
            1 => any::<String>().prop_map(String::into_bytes),
            1 => (
                any::<String>(),
                prop::collection::vec((any::<usize>(), any::<u8>()), 1..3)
            )
                .prop_map(|(s, edits)| {
                    let mut b = s.into_bytes();
                    for (i, v) in edits {
                        if !b.is_empty() {
                            let n = b.len();
                            b[i % n] = v;
                        }
                    }
                    b
                }),
            1 => any::<Vec<u8>>(),
        ]
    }

    fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            out.push(bytes[start..c].to_vec());
            start = c;
        }
        out
    }

    /// What decoding a byte stream saw, frame by frame, ending with the error if any.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Frame(bool, Opcode, Vec<u8>, Result<bool, u16>),
        Error(u16),
    }

    /// Decodes `wire` arriving `chunk` bytes at a time, as a connection's read loop would.
    fn read_loop(wire: &[u8], role: Role, chunk: usize, max: usize) -> Vec<Seen> {
        let mut buf = wire.to_vec();
        let mut state = MessageState::new();
        let mut seen = Vec::new();
        let (mut pos, mut avail) = (0, 0);
        while avail < buf.len() {
            avail = (avail + chunk).min(buf.len());
            loop {
                match decode_frame(&mut buf[pos..avail], role, max) {
                    Ok(Decoded::Incomplete) => break,
                    Ok(Decoded::Frame {
                        fin,
                        opcode,
                        payload,
                        consumed,
                    }) => {
                        let bytes = &buf[pos..][payload];
                        let done = state.on_frame(fin, opcode, bytes, max);
                        let failed = done.is_err();
                        let done = done.map(|m| m.is_some()).map_err(|e| e.code);
                        seen.push(Seen::Frame(fin, opcode, bytes.to_vec(), done));
                        pos += consumed;
                        if failed {
                            return seen;
                        }
                    }
                    Err(e) => {
                        seen.push(Seen::Error(e.code));
                        return seen;
                    }
                }
            }
        }
        seen
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn utf8_validator_agrees_with_std(
            bytes in utf8ish(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let expect = std::str::from_utf8(&bytes).is_ok();

            let mut v = Utf8Validator::new();
            let mut ok = true;
            for chunk in chunks(&bytes, &cuts) {
                ok &= v.feed(&chunk);
            }
            prop_assert_eq!(ok && v.is_complete(), expect);

            // The bare DFA, one byte at a time.
            let state = bytes.iter().fold(UTF8_ACCEPT, |s, &b| utf8_step(s, b));
            prop_assert_eq!(state == UTF8_ACCEPT, expect);

            // And through MessageState, as fragments of one text message.
            let parts = chunks(&bytes, &cuts);
            let mut s = MessageState::new();
            let mut result = Ok(None);
            for (i, part) in parts.iter().enumerate() {
                let op = if i == 0 { Opcode::Text } else { Opcode::Continuation };
                result = s.on_frame(i + 1 == parts.len(), op, part, usize::MAX);
                if result.is_err() {
                    break;
                }
            }
            match result {
                Ok(Some(Message::Text { len, .. })) => {
                    prop_assert!(expect);
                    prop_assert_eq!(len, bytes.len());
                }
                Err(e) => {
                    prop_assert!(!expect);
                    prop_assert_eq!(e.code, CLOSE_INVALID_DATA);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

    }

    proptest! {
        #[test]
        fn client_to_server_round_trip(
            opcode in prop::sample::select(&ALL_OPCODES[..]),
            len in prop_oneof![
                0..=130usize,
                65530..=65540usize,
                Just(125usize),
                Just(126usize),
                Just(65535usize),
                Just(65536usize),
            ],
            seed in any::<u8>(),
            mask in any::<[u8; 4]>(),
        ) {
            let len = if opcode.is_control() { len.min(MAX_CONTROL_PAYLOAD) } else { len };
            let payload: Vec<u8> =
                (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let mut wire = Vec::new();
            wire.push(0xAA); // something already in the caller's Vec stays
            encode_frame(opcode, &payload, Some(mask), &mut wire);
            prop_assert_eq!(wire.len(), 1 + header_len(len, true) + len);
            wire.extend_from_slice(b"next");

            let decoded = decode_frame(&mut wire[1..], Role::Server, 1 << 20).unwrap();
            let Decoded::Frame { fin, opcode: op, payload: range, consumed } = decoded else {
                panic!("incomplete");
            };
            prop_assert!(fin);
            prop_assert_eq!(op, opcode);
            prop_assert_eq!(consumed, header_len(len, true) + len);
            prop_assert_eq!(&wire[1..][range], &payload[..]);
            prop_assert_eq!(&wire[1 + consumed..], b"next");
        }

        #[test]
        fn split_frame_is_incomplete_then_whole(
            opcode in prop::sample::select(&ALL_OPCODES[..]),
            payload in prop::collection::vec(any::<u8>(), 0..300),
            mask in any::<Option<[u8; 4]>>(),
        ) {
            let payload = if opcode.is_control() { &payload[..payload.len().min(125)] } else {
                &payload[..]
            };
            let role = if mask.is_some() { Role::Server } else { Role::Client };
            let mut wire = Vec::new();
            encode_frame(opcode, payload, mask, &mut wire);
            for k in 0..wire.len() {
                prop_assert_eq!(decode_frame(&mut wire[..k], role, 1000), Ok(Decoded::Incomplete));
            }
            let (fin, op, got, consumed) = frame(&mut wire, role);
            prop_assert_eq!((fin, op, &got[..], consumed), (true, opcode, payload, wire.len()));
        }

        #[test]
        fn a_stream_decodes_the_same_whatever_the_reads(
            frames in prop::collection::vec(
                (prop::sample::select(&ALL_OPCODES[..]), any::<bool>(), utf8ish(), any::<[u8; 4]>()),
                0..6,
            ),
            corrupt in any::<Option<(usize, u8)>>(),
            server in any::<bool>(),
            chunk in 1..20usize,
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let mut wire = Vec::new();
            for (opcode, fin, payload, mask) in frames {
                let start = wire.len();
                encode_frame(opcode, &payload[..payload.len().min(125)], server.then_some(mask), &mut wire);
                if !fin && !opcode.is_control() {
                    wire[start] &= 0x7F;
                }
            }
            if let Some((i, v)) = corrupt {
                if !wire.is_empty() {
                    let n = wire.len();
                    wire[i % n] = v;
                }
            }
            let whole = read_loop(&wire, role, wire.len().max(1), 100);
            prop_assert_eq!(read_loop(&wire, role, chunk, 100), whole);
        }

        #[test]
        fn decode_never_panics(
            mut bytes in prop::collection::vec(any::<u8>(), 0..64),
            server in any::<bool>(),
            max_payload in prop_oneof![0..200usize, Just(usize::MAX)],
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let len = bytes.len();
            if let Ok(Decoded::Frame { opcode, payload, consumed, fin }) =
                decode_frame(&mut bytes, role, max_payload)
            {
                prop_assert!(payload.end == consumed && consumed <= len);
                prop_assert!(payload.len() <= max_payload);
                prop_assert!(!opcode.is_control() || (fin && payload.len() <= 125));
                let _ = MessageState::new().on_frame(fin, opcode, &bytes[payload], max_payload);
            }
        }

        #[test]
        fn close_truncation_keeps_utf8(reason in any::<String>(), code in 1000u16..5000) {
            let mut out = Vec::new();
            encode_close(code, &reason, None, &mut out);
            let (_, _, payload, _) = frame(&mut out, Role::Client);
            prop_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
            prop_assert!(reason.as_bytes().starts_with(&payload[2..]));
            prop_assert!(std::str::from_utf8(&payload[2..]).is_ok());
        }
    }
}
