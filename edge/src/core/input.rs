//! Device input: upgrade requests (WebSocket) and hello lines (QUIC) go to admission; WebSocket
//! frames are decoded and answered (pings, the close handshake, protocol errors).

use super::admit;
use super::conn::State;
use super::conn::PING_OUT;
use super::{Closing, ConnKey, Io, Now, ShardCore};
use crate::encoded::Transport;
use crate::stats::CloseReason;
use crate::ws::frame::{decode_frame, encode_close, encode_frame, Decoded, Message, Opcode, Role};
use crate::ws::handshake::parse_request;

impl ShardCore {
    /// The socket of `key` is readable and `data` was read from it.
    pub fn on_input(&mut self, key: ConnKey, data: &[u8], now: Now, io: &mut impl Io) {
        let secs = self.secs(now.mono);
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        // A handshake's deadline runs from the accept: bytes that trickle in do not extend it.
        if c.state != State::Handshaking {
            c.last_seen = secs;
        }
        c.flags &= !PING_OUT;
        let idx = key.idx();
        // Work on partial input joined with the new bytes, or on the new bytes alone.
        let mut buf = match c.extra.as_mut() {
            Some(e) if !e.input.is_empty() => {
                let mut b = std::mem::take(&mut e.input);
                b.extend_from_slice(data);
                b
            }
            _ => data.to_vec(),
        };
        let used = self.process(idx, &mut buf, now, io);
        if let Some(c) = self.conns.at(idx) {
            if c.gen == key.gen() && used < buf.len() {
                let rest = &buf[used..];
                c.extra().input.extend_from_slice(rest);
            } else if c.gen == key.gen() {
                c.shrink();
            }
        }
        self.close_pending(io);
    }

    /// Consumes complete requests/frames from `buf`; returns bytes used.
    pub(super) fn process(
        &mut self,
        idx: u32,
        buf: &mut [u8],
        now: Now,
        io: &mut impl Io,
    ) -> usize {
        let mut used = 0;
        loop {
            let Some(c) = self.conns.at(idx) else {
                return buf.len();
            };
            if c.transport() == Transport::Quic {
                return self.process_quic(idx, &buf[used..], now, io) + used;
            }
            match c.state {
                State::Handshaking => match parse_request(&buf[used..], self.cfg.max_request) {
                    Ok(None) => return used,
                    Ok(Some((req, n))) => {
                        used += n;
                        self.upgrade(idx, req, now, io);
                    }
                    Err(e) => {
                        self.refuse(idx, admit::Refusal::new(e.status, e.reason), io);
                        return buf.len();
                    }
                },
                State::Open | State::Closing => {
                    let decoded = decode_frame(&mut buf[used..], Role::Server, self.cfg.max_frame);
                    match decoded {
                        Ok(Decoded::Incomplete) => return used,
                        Ok(Decoded::Frame {
                            fin,
                            opcode,
                            payload,
                            consumed,
                        }) => {
                            let start = used;
                            used += consumed;
                            let payload = start + payload.start..start + payload.end;
                            if !self.on_frame(idx, fin, opcode, &buf[payload], io) {
                                return buf.len();
                            }
                        }
                        Err(e) => {
                            self.protocol_close(idx, e.code, e.reason, io);
                            return buf.len();
                        }
                    }
                }
            }
        }
    }

    /// Handles one device frame; false when the connection is finished.
    pub(super) fn on_frame(
        &mut self,
        idx: u32,
        fin: bool,
        op: Opcode,
        payload: &[u8],
        io: &mut impl Io,
    ) -> bool {
        let Some(c) = self.conns.at(idx) else {
            return false;
        };
        let closing = c.state == State::Closing;
        match c.msg.on_frame(fin, op, payload, self.cfg.max_message) {
            Err(e) => {
                self.protocol_close(idx, e.code, e.reason, io);
                false
            }
            Ok(Some(Message::Ping(p))) if !closing => {
                self.out.clear();
                encode_frame(Opcode::Pong, p, None, &mut self.out);
                let out = std::mem::take(&mut self.out);
                self.write_control(idx, &out, io);
                self.out = out;
                true
            }
            Ok(Some(Message::Close(code))) => {
                if !closing {
                    // Echo the device's close, then close the TCP connection (the server closes
                    // first, RFC 6455 7.1.1).
                    self.out.clear();
                    encode_close(code.map_or(1000, |(c, _)| c), "", None, &mut self.out);
                    let out = std::mem::take(&mut self.out);
                    self.write_control(idx, &out, io);
                    self.out = out;
                }
                self.to_close.push(Closing::new(idx, CloseReason::Client));
                false
            }
            // Pongs refresh liveness (done on input); device data messages carry nothing the
            // edge needs and are dropped after validation.
            Ok(_) => true,
        }
    }

    pub(super) fn protocol_close(&mut self, idx: u32, code: u16, reason: &str, io: &mut impl Io) {
        self.out.clear();
        encode_close(code, reason, None, &mut self.out);
        let out = std::mem::take(&mut self.out);
        self.write_control(idx, &out, io);
        self.out = out;
        self.to_close
            .push(Closing::new(idx, CloseReason::ProtocolError));
    }
}
