//! The per-device record and the shard's slab of them.
//!
//! An idle device costs one [`Conn`] (48 bytes) in the slab, its subscriptions (16 bytes each,
//! one allocation) and a 4-byte slot in each subscribed event's list: no task, no future, no
//! read or write buffer. Buffers ([`Extra`]) exist only while a device has unread partial input
//! or unsent output, and are freed as soon as they drain.

use crate::encoded::{Encoding, Transport};
use crate::ws::frame::MessageState;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, waiting for the upgrade request.
    Handshaking,
    /// Upgraded; receives cues.
    Open,
    /// We sent a close frame and wait for the device's.
    Closing,
}

/// A ping is outstanding (no frame heard since it was sent).
pub const PING_OUT: u8 = 1;
/// The socket would not take a whole write; we asked for writability.
pub const BLOCKED: u8 = 2;

/// One subscription: the event slot, this device's index in the slot's subscriber list, and
/// the newest seq written to (or queued for) the device.
#[derive(Debug, Clone, Copy)]
pub struct Sub {
    /// Index of the event slot in the shard.
    pub slot: u16,
    /// Position of this device in that slot's subscriber list.
    pub pos: u32,
    /// Newest seq of the event the device has been given.
    pub seq: u64,
    /// Cues of the event a fanout skipped because the device was blocked, since it was last
    /// given one (saturating; it fits in the struct's padding).
    pub missed: u16,
}

// A device holds one per event it follows: it must stay 16 bytes (docs/edge.md, memory).
const _: () = assert!(std::mem::size_of::<Sub>() == 16);

/// Buffers a device needs only while it has partial input or unsent output.
#[derive(Debug, Default)]
pub struct Extra {
    /// Bytes of an incomplete request or frame.
    pub input: Vec<u8>,
    /// Bytes the socket did not take yet (the rest of a frame, control replies).
    pub output: Vec<u8>,
}

/// One device connection.
#[derive(Debug)]
pub struct Conn {
    /// The driver's handle: the socket fd (WebSocket) or the QUIC connection index.
    pub link: u32,
    /// Distinguishes this connection from earlier ones in the same slot.
    pub gen: u32,
    /// Shard clock (seconds) of the last frame heard, or of the accept / last ping.
    pub last_seen: u32,
    /// Life-cycle state.
    pub state: State,
    /// Cue encoding; also says the transport (set at accept, refined by the device's format).
    pub format: Encoding,
    /// [`PING_OUT`] | [`BLOCKED`].
    pub flags: u8,
    /// Fragmentation/UTF-8 state of incoming data messages.
    pub msg: MessageState,
    /// Subscriptions (empty until upgraded).
    pub subs: Box<[Sub]>,
    /// Partial input / unsent output, when any.
    pub extra: Option<Box<Extra>>,
}

impl Conn {
    /// A connection just accepted on `transport`.
    pub fn new(link: u32, transport: Transport, gen: u32, now_s: u32) -> Self {
        Self {
            link,
            gen,
            last_seen: now_s,
            state: State::Handshaking,
            format: match transport {
                Transport::Ws => Encoding::WsJson,
                Transport::Quic => Encoding::QuicJson,
            },
            flags: 0,
            msg: MessageState::new(),
            subs: Box::new([]),
            extra: None,
        }
    }

    /// The transport of this connection.
    pub fn transport(&self) -> Transport {
        self.format.transport()
    }

    /// Unsent output is waiting.
    pub fn has_output(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.output.is_empty())
    }

    /// The buffers, created on first need.
    pub fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Frees the buffers once both are empty (and gives back their memory).
    pub fn shrink(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.input.is_empty() && e.output.is_empty())
        {
            self.extra = None;
        }
    }
}

/// Connection key given to the I/O driver: slot index and generation, so an event for a slot
/// that was reused since is recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey(pub u64);

impl ConnKey {
    pub(crate) fn new(idx: u32, gen: u32) -> Self {
        Self((gen as u64) << 32 | idx as u64)
    }
    pub(crate) fn idx(self) -> u32 {
        self.0 as u32
    }
    pub(crate) fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A slab of connections with a free list.
#[derive(Debug, Default)]
pub struct Slab {
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    len: usize,
    next_gen: u32,
}

impl Slab {
    /// Inserts a connection for the driver's `link` on `transport`; returns its key.
    pub fn insert(&mut self, link: u32, transport: Transport, now_s: u32) -> ConnKey {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let conn = Conn::new(link, transport, gen, now_s);
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(conn);
                i
            }
            None => {
                self.slots.push(Some(conn));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        ConnKey::new(idx, gen)
    }

    /// The connection for `key`, if it is still the same connection.
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.slots
            .get_mut(key.idx() as usize)?
            .as_mut()
            .filter(|c| c.gen == key.gen())
    }

    /// The connection in slot `idx`.
    pub fn at(&mut self, idx: u32) -> Option<&mut Conn> {
        self.slots.get_mut(idx as usize)?.as_mut()
    }

    /// Removes slot `idx`.
    pub fn remove(&mut self, idx: u32) -> Option<Conn> {
        let c = self.slots.get_mut(idx as usize)?.take()?;
        self.free.push(idx);
        self.len -= 1;
        Some(c)
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots (held or free), for sweeping.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Key of the connection in slot `idx`.
    pub fn key_at(&self, idx: u32) -> Option<ConnKey> {
        self.slots
            .get(idx as usize)?
            .as_ref()
            .map(|c| ConnKey::new(idx, c.gen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stay_small() {
        // The per-device budget is 256 B of user space; the record is the bulk of it.
        assert!(
            std::mem::size_of::<Option<Conn>>() <= 48,
            "{}",
            std::mem::size_of::<Option<Conn>>()
        );
        assert_eq!(std::mem::size_of::<Sub>(), 16);
    }

    #[test]
    fn stale_keys_are_refused() {
        let mut s = Slab::default();
        let a = s.insert(10, Transport::Ws, 0);
        s.remove(a.idx());
        let b = s.insert(11, Transport::Quic, 0);
        assert_eq!(a.idx(), b.idx());
        assert!(s.get_mut(a).is_none());
        assert_eq!(s.get_mut(b).unwrap().link, 11);
        assert_eq!(s.get_mut(b).unwrap().transport(), Transport::Quic);
    }
}
