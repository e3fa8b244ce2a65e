//! The optional per-source-address connection limit of one shard (`max_connections_per_source`):
//! a count per source (an IPv4 address, or an IPv6 /64, what one subscriber line usually gets)
//! of the WebSocket connections the shard holds, in handshake or open. Sans-IO: the shard asks
//! before it keeps an accepted socket and tells when it closes one.
//!
//! Bounded by construction: an entry exists only while its source has a connection here, and
//! each connection is one `fd -> source` entry, so both tables hold at most the shard's sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// What the limit counts by: an IPv4 address, or the /64 prefix of an IPv6 one (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// The source an address counts as.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// One shard's per-source counts.
#[derive(Debug)]
pub struct SourceLimit {
    limit: u32,
    counts: HashMap<Source, u32>,
    by_fd: HashMap<RawFd, Source>,
}

impl SourceLimit {
    /// At most `limit` connections per source (`limit` >= 1).
    pub fn new(limit: u32) -> Self {
        assert!(limit >= 1, "a per-source limit of 0 means off: no table");
        Self {
            limit,
            counts: HashMap::new(),
            by_fd: HashMap::new(),
        }
    }

    /// Counts connection `fd` from `ip`; `false` (nothing counted) when its source is at the
    /// limit.
    pub fn admit(&mut self, fd: RawFd, ip: IpAddr) -> bool {
        let src = Source::of(ip);
        let n = self.counts.entry(src).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        if let Some(old) = self.by_fd.insert(fd, src) {
            // A descriptor reused before its close was reported: forget the old count.
            self.forget(old);
        }
        true
    }

    /// Connection `fd` closed (a descriptor never admitted is ignored).
    pub fn release(&mut self, fd: RawFd) {
        if let Some(src) = self.by_fd.remove(&fd) {
            self.forget(src);
        }
    }

    fn forget(&mut self, src: Source) {
        if let Some(n) = self.counts.get_mut(&src) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&src);
            }
        }
    }

    /// Sources with a connection here.
    pub fn sources(&self) -> usize {
        self.counts.len()
    }

    /// Connections counted.
    pub fn connections(&self) -> usize {
        self.by_fd.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_per_address_and_per_ipv6_64() {
        let mut s = SourceLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(s.admit(10, a));
        assert!(s.admit(11, a));
        assert!(!s.admit(12, a), "third from one address");
        assert!(s.admit(12, "192.0.2.2".parse().unwrap()));
        // One /64, two addresses: one source.
        assert!(s.admit(20, "2001:db8::1".parse().unwrap()));
        assert!(s.admit(21, "2001:db8::ffff:2".parse().unwrap()));
        assert!(!s.admit(22, "2001:db8::3".parse().unwrap()));
        assert!(s.admit(22, "2001:db8:0:1::3".parse().unwrap()));
        // IPv4-mapped counts as the IPv4 address.
        assert!(!s.admit(30, "::ffff:192.0.2.1".parse().unwrap()));
        s.release(10);
        assert!(s.admit(30, "::ffff:192.0.2.1".parse().unwrap()));
        s.release(999); // never admitted: ignored
        assert_eq!(s.connections(), 6);
        assert_eq!(s.sources(), 4);
    }

    proptest! {
        /// Whatever the order of opens and closes: no source is ever over the limit, and the
        /// tables hold exactly the open connections (nothing left behind).
        #[test]
        fn never_over_the_limit_and_nothing_leaks(
            ops in proptest::collection::vec((0u8..2, 0i32..64, 0u8..8), 1..400),
            limit in 1u32..4,
        ) {
            let mut s = SourceLimit::new(limit);
            let mut open: HashMap<RawFd, u8> = HashMap::new();
            for (op, fd, host) in ops {
                let ip = IpAddr::from([10, 0, 0, host]);
                if op == 0 && !open.contains_key(&fd) {
                    let here = open.values().filter(|&&h| h == host).count() as u32;
                    prop_assert_eq!(s.admit(fd, ip), here < limit);
                    if here < limit {
                        open.insert(fd, host);
                    }
                } else if op == 1 {
                    s.release(fd);
                    open.remove(&fd);
                }
            }
            prop_assert_eq!(s.connections(), open.len());
            let hosts: std::collections::HashSet<_> = open.values().collect();
            prop_assert_eq!(s.sources(), hosts.len());
            for fd in open.keys().copied().collect::<Vec<_>>() {
                s.release(fd);
            }
            prop_assert_eq!(s.sources(), 0);
        }
    }
}
