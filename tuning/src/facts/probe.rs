//! Facts that come from this process rather than files: resource limits, an io_uring probe and
//! UDP offload support. Behind a trait so tests substitute values; [`RealHost`] asks the kernel.

use serde::Serialize;

use super::Reading;
use crate::limits::{Resource, Rlimit, RlimitOps, SystemRlimits};
use crate::sys;

/// io_uring operations glommio 0.9 requires (its `GLOMMIO_URING_OPS`), as (opcode, name).
pub const GLOMMIO_URING_OPS: [(u8, &str); 23] = [
    (0, "NOP"),
    (1, "READV"),
    (2, "WRITEV"),
    (3, "FSYNC"),
    (4, "READ_FIXED"),
    (5, "WRITE_FIXED"),
    (6, "POLL_ADD"),
    (7, "POLL_REMOVE"),
    (9, "SENDMSG"),
    (10, "RECVMSG"),
    (11, "TIMEOUT"),
    (12, "TIMEOUT_REMOVE"),
    (13, "ACCEPT"),
    (15, "LINK_TIMEOUT"),
    (16, "CONNECT"),
    (17, "FALLOCATE"),
    (18, "OPENAT"),
    (19, "CLOSE"),
    (21, "STATX"),
    (22, "READ"),
    (23, "WRITE"),
    (26, "SEND"),
    (27, "RECV"),
];

/// What `io_uring_setup` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum IoUringStatus {
    /// A ring was created; `missing_ops` are glommio operations the kernel lacks (empty when
    /// ready; all of them when the kernel predates the probe interface).
    Available {
        /// Names of missing operations.
        missing_ops: Vec<String>,
    },
    /// `io_uring_setup` failed.
    Refused {
        /// errno.
        errno: i32,
        /// The error text.
        error: String,
    },
}

/// Kernel support for UDP segmentation offload (GSO) and receive offload (GRO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UdpOffload {
    /// `UDP_SEGMENT` accepted (Linux 4.18+).
    pub gso: Reading<bool>,
    /// `UDP_GRO` accepted (Linux 5.0+).
    pub gro: Reading<bool>,
}

/// Facts about this process and kernel that are not files.
pub trait HostProbe {
    /// `getrlimit` for `resource`.
    fn rlimit(&self, resource: Resource) -> Reading<Rlimit>;
    /// Creates and closes a small io_uring.
    fn io_uring(&self) -> Reading<IoUringStatus>;
    /// Tries the UDP offload socket options on a throwaway socket.
    fn udp_offload(&self) -> UdpOffload;
}

/// The real host: system calls from this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl HostProbe for RealHost {
    fn rlimit(&self, resource: Resource) -> Reading<Rlimit> {
        match SystemRlimits.get(resource) {
            Ok(limit) => Reading::Value(limit),
            Err(e) => Reading::Unreadable(format!("getrlimit {}: {e}", resource.name())),
        }
    }

    fn io_uring(&self) -> Reading<IoUringStatus> {
        Reading::Value(match sys::io_uring_supported_ops() {
            Ok(Some(ops)) => IoUringStatus::Available {
                missing_ops: missing_glommio_ops(&ops),
            },
            Ok(None) => IoUringStatus::Available {
                missing_ops: missing_glommio_ops(&[]),
            },
            Err(e) => IoUringStatus::Refused {
                errno: e.raw_os_error().unwrap_or(0),
                error: e.to_string(),
            },
        })
    }

    fn udp_offload(&self) -> UdpOffload {
        let ask = |option, value, name: &str| match sys::udp_option_supported(option, value) {
            Ok(ok) => Reading::Value(ok),
            Err(e) => Reading::Unreadable(format!("{name} probe: {e}")),
        };
        UdpOffload {
            gso: ask(sys::UDP_SEGMENT, 1200, "UDP_SEGMENT"),
            gro: ask(sys::UDP_GRO, 1, "UDP_GRO"),
        }
    }
}

/// glommio operations absent from `supported` opcodes.
pub fn missing_glommio_ops(supported: &[u8]) -> Vec<String> {
    GLOMMIO_URING_OPS
        .iter()
        .filter(|(op, _)| !supported.contains(op))
        .map(|(_, name)| (*name).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ops_are_named() {
        let all: Vec<u8> = (0..=27).collect();
        assert!(missing_glommio_ops(&all).is_empty());
        let old: Vec<u8> = (0..=25).collect();
        assert_eq!(missing_glommio_ops(&old), vec!["SEND", "RECV"]);
    }

    #[test]
    fn real_probes_answer() {
        // Whatever this machine says, the probes must answer rather than panic.
        let host = RealHost;
        assert!(host.rlimit(Resource::NoFile).value().is_some());
        let _ = host.io_uring();
        let _ = host.udp_offload();
    }
}
