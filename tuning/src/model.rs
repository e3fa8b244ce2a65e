//! Cue's per-connection figures, in one place, and what they imply for a host holding N
//! devices on C cores. Pure arithmetic: no host reads, so `plan` can size another machine.
//!
//! Where the figures come from (each is overridable by a flag/config key of the same name):
//! - [`EDGE_USER_BYTES_PER_CONN`] 256 B: the edge's target for an idle WebSocket device. A
//!   spike with one task per connection measured ~870 B; `cue-bench fanout` reports the real
//!   `edge_user_bytes_per_conn` (`--user-bytes-per-conn`).
//! - [`KERNEL_BYTES_PER_CONN`] ~5 KiB: measured on the development host for an idle TCP socket
//!   (socket, inode, file, dentry); `cue-bench fanout` reports `kernel_bytes_per_conn`
//!   (`--kernel-bytes-per-conn`).
//! - [`QUIC_BYTES_PER_CONN`] 16 KiB: target for an idle QUIC device (`--quic-bytes-per-conn`).
//! - [`DELIVERIES_PER_SEC_PER_CORE`] 100 000/s: the plain write() floor measured on the
//!   development host was ~100-130k deliveries/s per core; planning uses the low end
//!   (`--deliveries-per-core`).

use serde::Serialize;

use crate::config::Config;
use crate::layout::Layout;
use crate::units::{div_ceil, round_up};

/// Cue's design target per edge host, and the default `--connections`.
pub use cue_common::limits::DESIGN_TARGET_CONNECTIONS;
/// Edge user-space bytes per idle WebSocket device (target; spike measured ~870 B).
pub const EDGE_USER_BYTES_PER_CONN: u64 = 256;
/// Kernel bytes per idle TCP socket, measured on the development host (~5 KiB).
pub const KERNEL_BYTES_PER_CONN: u64 = 5 * 1024;
/// Bytes per idle QUIC device (target).
pub const QUIC_BYTES_PER_CONN: u64 = 16 * 1024;
/// Kernel socket memory per device while a cue is in flight: socket memory is charged in
/// pages, so one small queued frame costs about one page until the device ACKs it.
pub const INFLIGHT_BYTES_PER_CONN: u64 = 4096;
/// Planning rate: cue deliveries per second per shard core (write() floor measured 100-130k).
pub const DELIVERIES_PER_SEC_PER_CORE: u64 = 100_000;
/// Default share of devices on QUIC, in percent.
pub const DEFAULT_QUIC_PERCENT: u32 = 10;
/// Default goal for one cue to reach every device.
pub const DEFAULT_TARGET_FANOUT_MS: u64 = 1_000;
/// Default spread of a mass reconnect, given jittered retry hints.
pub const DEFAULT_RECONNECT_WINDOW_S: u64 = 30;
/// Default fd headroom for devices that reconnect before their old socket is reaped.
pub const DEFAULT_FD_HEADROOM_PERCENT: u32 = 10;
/// io_uring registered buffer per shard that cue-edge configures (glommio `io_memory`).
pub const IO_MEMORY_PER_SHARD: u64 = 256 * 1024;
/// glommio opens a main, a latency and a poll ring per shard and registers io_memory in each.
pub const RINGS_PER_SHARD: u64 = 3;
/// glommio's default ring depth.
pub const RING_DEPTH: u32 = 128;
/// glommio refuses to start a shard below this soft memlock limit, even with CAP_IPC_LOCK.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;
/// glommio rounds io_memory up to at least this.
pub const GLOMMIO_MIN_IO_MEMORY: u64 = 64 * 1024;
/// Allowance per shard for its executor, thread stack, buffers and encoded cues. Not
/// measured yet: an allowance, so the memory budget does not pretend shards are free.
pub const SHARD_BASE_BYTES: u64 = 16 << 20;
/// fds the edge holds besides devices: admin listener, origin links, logs, stdio.
pub const RESERVED_FDS_BASE: u64 = 64;
/// fds per shard besides devices: 3 io_uring rings, eventfds, timers, WebSocket and QUIC
/// listeners (SO_REUSEPORT, one per shard), its origin relay link.
pub const RESERVED_FDS_PER_SHARD: u64 = 16;
/// The kernel's ceiling for `fs.nr_open` (and so RLIMIT_NOFILE).
pub const MAX_NR_OPEN: u64 = 1_073_741_816;
/// Cue's floor for accept and SYN queues: a burst of this many simultaneous reconnects (one
/// venue's network flipping) must not overflow a listener.
pub const MIN_ACCEPT_BACKLOG: u64 = 1_024;
/// The longest a shard goes without servicing its sockets: the edge's fanout loop yields to
/// other task queues within this budget. Sizes the accept queue and UDP buffers.
pub const SHARD_STALL_MS: u64 = 100;
/// How long softirq may lag behind incoming packets on a core. Sizes netdev_max_backlog.
pub const SOFTIRQ_STALL_MS: u64 = 10;
/// Below this many devices one core's softirq absorbs a whole fanout's ACKs, so NIC queue
/// and IRQ advice is not worth an operator's time.
pub const SOFTIRQ_SCALE_CONNECTIONS: u64 = 100_000;
/// Packets a device sends to connect (SYN, ACK, upgrade request, ACK of the 101).
pub const PACKETS_PER_CONNECT: u64 = 4;
/// Kernel memory charged per small UDP datagram (sk_buff plus data head, rounded up).
pub const UDP_TRUESIZE: u64 = 2_048;
/// Send buffer a new device needs without stalling: the 101 response plus the current cue of
/// each subscribed event (~100 events of ~150 B).
pub const CATCHUP_BYTES: u64 = 16 * 1024;
/// Receive buffer a new device needs: its upgrade request with a JWT fits in one page.
pub const UPGRADE_REQUEST_BYTES: u64 = 4_096;
/// Extra conntrack entries, as a percent of devices, for connections closing while their
/// devices reconnect.
pub const CONNTRACK_HEADROOM_PERCENT: u64 = 25;
/// Headroom on top of the memory budget for page cache, the kernel and spikes.
pub const MEMORY_HEADROOM_PERCENT: u64 = 25;
/// Default listen ports of cue-edge: WebSocket, QUIC, admin.
pub const EDGE_PORTS: [u16; 3] = [8080, 8443, 9100];
/// Minimum kernel for glommio (the io_uring operations it uses).
pub const MIN_KERNEL: (u32, u32) = (5, 8);
/// Page size assumed for `tcp_mem` (which the kernel counts in pages).
pub const PAGE: u64 = 4_096;
/// Upper bound on struct io_rings' header (heads, tails, flags, cacheline padding).
const IO_RINGS_HEADER_BYTES: u64 = 512;

/// fds `cue-edge` holds besides device sockets, for `shards` shards.
pub fn reserved_fds(shards: u32) -> u64 {
    RESERVED_FDS_BASE + RESERVED_FDS_PER_SHARD * u64::from(shards)
}

/// Memory the kernel maps for one io_uring of `depth` entries: the SQ/CQ rings (CQ has twice
/// the entries) and the SQE array, each rounded to pages. Counted against memlock before
/// Linux 5.12 (memcg after), so it is included to be safe on older kernels.
pub fn ring_bytes(depth: u32) -> u64 {
    let depth = u64::from(depth.next_power_of_two());
    round_up(IO_RINGS_HEADER_BYTES + 2 * depth * 16 + depth * 4, PAGE) + round_up(depth * 64, PAGE)
}

/// io_memory as glommio uses it: page-aligned and at least 64 KiB.
pub fn effective_io_memory(io_memory: u64) -> u64 {
    round_up(io_memory, PAGE).max(GLOMMIO_MIN_IO_MEMORY)
}

/// Memlock one glommio shard pins: io_memory registered in each ring, plus the rings.
pub fn memlock_per_shard(io_memory: u64, depth: u32) -> u64 {
    RINGS_PER_SHARD * (effective_io_memory(io_memory) + ring_bytes(depth))
}

/// Where the memory for N devices goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryBudget {
    /// Edge user space for WebSocket devices.
    pub ws_user: u64,
    /// Kernel sockets for WebSocket devices.
    pub ws_kernel: u64,
    /// QUIC devices (user space; one shared UDP socket per shard).
    pub quic: u64,
    /// Kernel memory while one cue is in flight to every WebSocket device (transient).
    pub inflight: u64,
    /// Fixed cost of the shards (base allowance plus io_memory).
    pub shards: u64,
    /// Sum of the above.
    pub total: u64,
    /// `total` plus [`MEMORY_HEADROOM_PERCENT`]: what `MemAvailable` should cover.
    pub with_headroom: u64,
}

/// How long one cue takes to reach every device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fanout {
    /// Deliveries per second per shard core used for the estimate.
    pub per_core_rate: u64,
    /// Estimated time for one cue to reach every device, in ms (shards work in parallel).
    pub ms: u64,
    /// The goal.
    pub target_ms: u64,
    /// Shard cores needed to meet the goal.
    pub shards_for_target: u64,
}

/// Everything N devices on C cores need from the host, derived from [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirements {
    /// Devices to hold.
    pub connections: u64,
    /// Core layout.
    pub layout: Layout,
    /// Share of devices on QUIC, percent.
    pub quic_percent: u32,
    /// Devices on WebSocket.
    pub ws_devices: u64,
    /// Devices on QUIC.
    pub quic_devices: u64,
    /// Devices per shard (rounded up).
    pub devices_per_shard: u64,
    /// QUIC devices per shard (rounded up).
    pub quic_per_shard: u64,
    /// fds besides devices.
    pub reserved_fds: u64,
    /// fds needed: every device on TCP, plus headroom, plus reserved.
    pub nofile: u64,
    /// `nofile` rounded up to 1024: what `apply` writes for LimitNOFILE and fs.nr_open.
    pub limit_nofile: u64,
    /// io_memory per shard after glommio's rounding.
    pub io_memory: u64,
    /// Kernel memory of one io_uring (rings and SQEs).
    pub ring_bytes: u64,
    /// Memlock one shard pins.
    pub memlock_per_shard: u64,
    /// Memlock all shards pin (when the process lacks CAP_IPC_LOCK).
    pub memlock: u64,
    /// `memlock` rounded up to MiB: what `apply` writes for LimitMEMLOCK.
    pub limit_memlock: u64,
    /// Accept and SYN queue depth per listener.
    pub accept_backlog: u64,
    /// Per-core input packet queue (netdev_max_backlog).
    pub netdev_backlog: u64,
    /// tcp_mem pressure threshold, pages.
    pub tcp_mem_pressure: u64,
    /// tcp_mem maximum, pages.
    pub tcp_mem_max: u64,
    /// Minimum default TCP receive buffer (tcp_rmem middle value).
    pub tcp_rmem_default: u64,
    /// Minimum default TCP send buffer (tcp_wmem middle value).
    pub tcp_wmem_default: u64,
    /// UDP receive buffer a shard's QUIC socket needs (rmem_max caps SO_RCVBUF).
    pub udp_rmem: u64,
    /// UDP send buffer a shard's QUIC socket needs (wmem_max caps SO_SNDBUF).
    pub udp_wmem: u64,
    /// nf_conntrack_max when conntrack is loaded.
    pub conntrack_max: u64,
    /// Memory budget.
    pub memory: MemoryBudget,
    /// Fanout estimate.
    pub fanout: Fanout,
    /// Ports the edge listens on.
    pub edge_ports: Vec<u16>,
    /// The config's per-connection figures, echoed for explanations.
    pub per_conn: PerConn,
}

/// The per-connection figures used, echoed into outputs so readers see the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerConn {
    /// Edge user-space bytes per WebSocket device.
    pub user_bytes: u64,
    /// Kernel bytes per TCP socket.
    pub kernel_bytes: u64,
    /// Bytes per QUIC device.
    pub quic_bytes: u64,
    /// Kernel bytes per device while a cue is in flight.
    pub inflight_bytes: u64,
}

impl Requirements {
    /// Derives the requirements for `config.connections` devices on `cores` cores.
    pub fn new(config: &Config, cores: u32) -> Requirements {
        let n = config.connections;
        let layout = Layout::for_cores(cores);
        let shards = u64::from(layout.shards().max(1));
        let quic_devices = n * u64::from(config.quic_percent.min(100)) / 100;
        let ws_devices = n - quic_devices;
        let devices_per_shard = div_ceil(n, shards);
        let quic_per_shard = div_ceil(quic_devices, shards);
        let rate = config.deliveries_per_core.max(1);

        let reserved = reserved_fds(shards as u32);
        let nofile = n + div_ceil(n * u64::from(config.fd_headroom_percent), 100) + reserved;
        let limit_nofile = round_up(nofile, 1024).min(MAX_NR_OPEN);

        let memlock_per_shard = memlock_per_shard(config.io_memory_per_shard, config.ring_depth);
        let memlock = memlock_per_shard * shards;

        // A shard that is busy for up to SHARD_STALL_MS does not accept; reconnects keep
        // arriving at N / window spread over one SO_REUSEPORT listener per shard.
        let stall_ms = SHARD_STALL_MS
            .min(div_ceil(devices_per_shard * 1000, rate))
            .max(1);
        let window_ms = config.reconnect_window_s.max(1) * 1000;
        let arrivals = div_ceil(n * stall_ms, window_ms * shards);
        let accept_backlog = arrivals.max(MIN_ACCEPT_BACKLOG);

        // Per core, softirq must absorb one ACK per delivery (at most the shard's devices) or
        // a reconnect storm's packets, whichever is larger, for SOFTIRQ_STALL_MS.
        let acks = devices_per_shard.min(div_ceil(rate * SOFTIRQ_STALL_MS, 1000));
        let connect_packets = div_ceil(
            n * PACKETS_PER_CONNECT * SOFTIRQ_STALL_MS,
            window_ms * shards,
        );
        let netdev_backlog = acks.max(connect_packets);

        let inflight_pages = div_ceil(ws_devices * config.inflight_bytes_per_conn, PAGE);
        let tcp_mem_pressure = inflight_pages;
        let tcp_mem_max = inflight_pages + inflight_pages / 4;

        // QUIC ACKs a shard receives while busy: its QUIC share of deliveries over one stall,
        // at most one per QUIC device of the shard.
        let quic_packets = quic_per_shard.min(div_ceil(
            rate * u64::from(config.quic_percent) * SHARD_STALL_MS,
            100 * 1000,
        ));
        let udp_buffer = quic_packets * UDP_TRUESIZE;

        let conntrack_max = n + div_ceil(n * CONNTRACK_HEADROOM_PERCENT, 100);

        let ws_user = ws_devices * config.user_bytes_per_conn;
        let ws_kernel = ws_devices * config.kernel_bytes_per_conn;
        let quic = quic_devices * config.quic_bytes_per_conn;
        let inflight = ws_devices * config.inflight_bytes_per_conn;
        let shard_bytes = shards * (SHARD_BASE_BYTES + config.io_memory_per_shard);
        let total = ws_user + ws_kernel + quic + inflight + shard_bytes;
        let memory = MemoryBudget {
            ws_user,
            ws_kernel,
            quic,
            inflight,
            shards: shard_bytes,
            total,
            with_headroom: total + div_ceil(total * MEMORY_HEADROOM_PERCENT, 100),
        };

        let fanout = Fanout {
            per_core_rate: rate,
            ms: div_ceil(devices_per_shard * 1000, rate),
            target_ms: config.target_fanout_ms,
            shards_for_target: div_ceil(n * 1000, rate * config.target_fanout_ms.max(1)),
        };

        Requirements {
            connections: n,
            layout,
            quic_percent: config.quic_percent,
            ws_devices,
            quic_devices,
            devices_per_shard,
            quic_per_shard,
            reserved_fds: reserved,
            io_memory: effective_io_memory(config.io_memory_per_shard),
            ring_bytes: ring_bytes(config.ring_depth),
            nofile,
            limit_nofile,
            memlock_per_shard,
            memlock,
            limit_memlock: round_up(memlock, 1 << 20),
            accept_backlog,
            netdev_backlog,
            tcp_mem_pressure,
            tcp_mem_max,
            tcp_rmem_default: UPGRADE_REQUEST_BYTES,
            tcp_wmem_default: CATCHUP_BYTES,
            udp_rmem: udp_buffer,
            udp_wmem: udp_buffer,
            conntrack_max,
            memory,
            fanout,
            edge_ports: config.edge_ports.clone(),
            per_conn: PerConn {
                user_bytes: config.user_bytes_per_conn,
                kernel_bytes: config.kernel_bytes_per_conn,
                quic_bytes: config.quic_bytes_per_conn,
                inflight_bytes: config.inflight_bytes_per_conn,
            },
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> u64 {
        u64::from(self.layout.shards().max(1))
    }

    /// Whether any QUIC devices are planned.
    pub fn quic(&self) -> bool {
        self.quic_devices > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(connections: u64, cores: u32) -> Requirements {
        Requirements::new(
            &Config {
                connections,
                ..Config::default()
            },
            cores,
        )
    }

    #[test]
    fn glommio_memlock_per_shard() {
        assert_eq!(ring_bytes(128), 16 * 1024);
        assert_eq!(memlock_per_shard(256 * 1024, 128), 3 * (256 + 16) * 1024);
        // glommio rounds tiny io_memory up to 64 KiB.
        assert_eq!(memlock_per_shard(1, 128), 3 * (64 + 16) * 1024);
    }

    #[test]
    fn hundred_thousand_on_two_cores() {
        let r = req(100_000, 2);
        assert_eq!(r.shards(), 2);
        assert_eq!(r.reserved_fds, 96);
        assert_eq!(r.nofile, 100_000 + 10_000 + 96);
        assert_eq!(r.limit_nofile, 110_592);
        assert_eq!(r.quic_devices, 10_000);
        assert_eq!(r.devices_per_shard, 50_000);
        assert_eq!(r.accept_backlog, MIN_ACCEPT_BACKLOG);
        assert_eq!(r.netdev_backlog, 1_000);
        assert_eq!(r.udp_rmem, 1_000 * UDP_TRUESIZE);
        assert_eq!(r.fanout.ms, 500);
        assert_eq!(r.fanout.shards_for_target, 1);
        assert_eq!(r.memlock, 2 * 816 * 1024);
    }

    #[test]
    fn a_thousand_fits_a_default_linux_host() {
        let r = req(1_000, 2);
        assert!(r.nofile <= 4_096, "{}", r.nofile);
        assert!(r.accept_backlog <= 4_096);
        assert!(r.netdev_backlog <= 1_000);
        assert!(r.udp_rmem <= 212_992, "{}", r.udp_rmem);
        assert!(r.tcp_mem_pressure < 10_000);
        assert!(r.memlock <= 8 << 20);
    }

    #[test]
    fn extreme_valid_configs_do_not_overflow() {
        let config = Config {
            connections: MAX_NR_OPEN,
            quic_percent: 100,
            user_bytes_per_conn: 1 << 20,
            kernel_bytes_per_conn: 1 << 20,
            quic_bytes_per_conn: 1 << 20,
            inflight_bytes_per_conn: 1 << 20,
            deliveries_per_core: 100_000_000,
            target_fanout_ms: 3_600_000,
            reconnect_window_s: 1,
            fd_headroom_percent: 1000,
            io_memory_per_shard: 1 << 30,
            ring_depth: 32_768,
            ..Config::default()
        };
        config.validate().unwrap();
        for cores in [1, 4096] {
            let r = Requirements::new(&config, cores);
            assert!(r.memory.with_headroom > r.memory.total);
            assert!(r.limit_nofile <= MAX_NR_OPEN);
        }
    }

    #[test]
    fn a_million_on_sixteen_cores() {
        let r = req(1_000_000, 16);
        assert_eq!(r.shards(), 14);
        assert_eq!(r.devices_per_shard, 71_429);
        assert_eq!(r.fanout.ms, 715);
        assert_eq!(r.fanout.shards_for_target, 10);
        assert_eq!(r.limit_nofile, 1_100_800);
        assert!(
            r.limit_nofile > 1_048_576,
            "the kernel's default nr_open is too small"
        );
        assert_eq!(r.limit_memlock, 12 << 20);
        assert_eq!(r.memory.ws_kernel, 900_000 * 5 * 1024);
    }
}
