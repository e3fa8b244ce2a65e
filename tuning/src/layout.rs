//! Which cores run `cue-edge` shards and which are left to NIC interrupts. A pure function of
//! the core count: the host's topology is not read here, so `plan` works for another machine.

use serde::Serialize;

/// Below this many cores every core runs a shard: giving one to IRQs would cost more fanout
/// capacity than the interrupt isolation gains.
pub const MIN_CORES_FOR_IRQ_CORE: u32 = 4;
/// One IRQ core per this many cores (rounded up) once there is room: receive-side work (ACKs,
/// pongs, handshakes) is a small share of a fanout edge's CPU, most work is the shards' writes.
pub const CORES_PER_IRQ_CORE: u32 = 8;

/// The core layout for `cue-edge` on a host with `cores` cores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// All cores given to the edge host.
    pub cores: u32,
    /// Cores left for NIC interrupts, softirq and housekeeping (may be empty).
    pub irq_cores: Vec<u32>,
    /// Cores that each run one shard (`cue-edge --shards N` pinned to these).
    pub shard_cores: Vec<u32>,
}

impl Layout {
    /// Lays out `cores` cores (at least one): the first `ceil(cores / 8)` cores take IRQs once
    /// there are four or more, the rest run shards.
    pub fn for_cores(cores: u32) -> Layout {
        let cores = cores.max(1);
        let irq = if cores < MIN_CORES_FOR_IRQ_CORE {
            0
        } else {
            cores.div_ceil(CORES_PER_IRQ_CORE)
        };
        Layout {
            cores,
            irq_cores: (0..irq).collect(),
            shard_cores: (irq..cores).collect(),
        }
    }

    /// Number of shards (one per shard core).
    pub fn shards(&self) -> u32 {
        self.shard_cores.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_hosts_have_no_irq_core() {
        let layout = Layout::for_cores(2);
        assert!(layout.irq_cores.is_empty());
        assert_eq!(layout.shard_cores, vec![0, 1]);
        assert_eq!(Layout::for_cores(0).shards(), 1);
    }

    #[test]
    fn sixteen_cores_leave_two_for_irqs() {
        let layout = Layout::for_cores(16);
        assert_eq!(layout.irq_cores, vec![0, 1]);
        assert_eq!(layout.shards(), 14);
        assert_eq!(layout.shard_cores.first(), Some(&2));
    }

    #[test]
    fn four_cores_leave_one() {
        assert_eq!(Layout::for_cores(4).irq_cores, vec![0]);
        assert_eq!(Layout::for_cores(64).irq_cores.len(), 8);
    }
}
