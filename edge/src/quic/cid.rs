//! Connection IDs that name their shard, and the pure routing function that reads them.
//!
//! Every connection ID a shard issues is 8 bytes: the shard's mesh index (u16 big-endian), its
//! steering slot (one byte, `0xFF` when not steered, [`super::steer`]), then 5 random bytes.
//! The kernel's `SO_REUSEPORT` hash sends a flow to one shard's socket by 4-tuple; when the
//! 4-tuple changes (NAT rebinding, migration) a datagram may land on another socket. With
//! steering on, the kernel reads the slot and picks the owner's socket itself, across
//! processes; without it (no privileges), the shard that got the datagram reads the mesh index
//! and forwards it to its owner in the same process.
//!
//! The shard index is visible to an observer, as in QUIC-LB's plaintext mode: it tells which
//! core of this edge holds a connection, which is no secret; the random part keeps IDs of one
//! connection unlinkable to each other beyond that.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Length of every connection ID the edge issues.
pub const CID_LEN: usize = 8;

/// Issues connection IDs carrying `shard`.
#[derive(Debug)]
pub struct ShardCids {
    shard: u16,
    slot: u8,
    rng: StdRng,
}

/// The slot byte of a shard that is not steered.
pub const NO_SLOT: u8 = 0xFF;

impl ShardCids {
    /// A generator for `shard` with steering slot `slot` ([`NO_SLOT`] when not steered), with
    /// its randomness seeded from `seed`.
    pub fn new(shard: u16, slot: u8, seed: u64) -> Self {
        Self {
            shard,
            slot,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl ConnectionIdGenerator for ShardCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        b[..2].copy_from_slice(&self.shard.to_be_bytes());
        b[super::steer::SLOT_BYTE] = self.slot;
        self.rng.fill_bytes(&mut b[3..]);
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The shard that owns the connection a datagram is for, when the datagram says so: a short
/// header packet, or a Handshake packet, whose destination connection ID is one of ours.
/// Initial and 0-RTT packets carry the device's own random ID until the handshake gives it
/// ours, so they stay where the kernel put them (any shard can take a new connection).
pub fn owner(datagram: &[u8]) -> Option<u16> {
    let first = *datagram.first()?;
    let dcid = if first & 0x80 == 0 {
        datagram.get(1..1 + CID_LEN)?
    } else {
        // Long header: version (4 bytes), DCID length, DCID. Type bits 0x30: 0x00 Initial,
        // 0x10 0-RTT, 0x20 Handshake in QUIC v1; version 0 is version negotiation.
        let version = u32::from_be_bytes(datagram.get(1..5)?.try_into().ok()?);
        if version == 0 || first & 0x30 != 0x20 {
            return None;
        }
        if *datagram.get(5)? as usize != CID_LEN {
            return None;
        }
        datagram.get(6..6 + CID_LEN)?
    };
    Some(u16::from_be_bytes([dcid[0], dcid[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_carry_the_shard_and_route_back() {
        let mut g = ShardCids::new(3, 7, 1);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_ne!(a, b);
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(a[super::super::steer::SLOT_BYTE], 7);
        assert_eq!(ShardCids::new(3, NO_SLOT, 1).generate_cid()[2], NO_SLOT);
        let mut short = vec![0x40];
        short.extend_from_slice(&a);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(owner(&short), Some(3));
        // Handshake packet (type 2) with our 8-byte DCID.
        let mut hs = vec![0xE0, 0, 0, 0, 1, CID_LEN as u8];
        hs.extend_from_slice(&b);
        assert_eq!(owner(&hs), Some(3));
        // Initial (type 0) stays.
        let mut init = vec![0xC0, 0, 0, 0, 1, CID_LEN as u8];
        init.extend_from_slice(&b);
        assert_eq!(owner(&init), None);
        // 0-RTT (type 1) too: its DCID is the device's.
        let mut zero_rtt = vec![0xD0, 0, 0, 0, 1, CID_LEN as u8];
        zero_rtt.extend_from_slice(&b);
        assert_eq!(owner(&zero_rtt), None);
        assert_eq!(owner(&[0x40, 1]), None);
        assert_eq!(owner(&[]), None);
    }

    proptest! {
        #[test]
        fn owner_never_panics(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = owner(&d);
        }
    }
}
