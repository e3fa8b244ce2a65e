//! A snapshot of what the host says, gathered once; checks are pure functions of it.
//!
//! Files are read under a root directory ([`HostTree`]); process-level facts (rlimits, the
//! io_uring probe, UDP offload) come through a [`HostProbe`]. Nothing is guessed: a value is
//! there, absent (the kernel does not have it), or unreadable with the reason.

pub mod parse;
mod probe;
mod tree;

use serde::Serialize;

pub use probe::{
    missing_glommio_ops, HostProbe, IoUringStatus, RealHost, UdpOffload, GLOMMIO_URING_OPS,
};
pub use tree::{sysctl_path, HostTree};

use crate::limits::{Resource, Rlimit};

/// One reading of a host value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "value", rename_all = "snake_case")]
pub enum Reading<T> {
    /// The value.
    Value(T),
    /// Not present on this host (e.g. conntrack not loaded, a sysctl newer than the kernel).
    Absent,
    /// Present but could not be read or parsed; the reason names the source.
    Unreadable(String),
}

impl<T> Reading<T> {
    /// The value, if read.
    pub fn value(&self) -> Option<&T> {
        match self {
            Reading::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Maps the value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Reading<U> {
        self.and_then(|v| Reading::Value(f(v)))
    }

    /// Chains a reading that may itself fail.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Reading<U>) -> Reading<U> {
        match self {
            Reading::Value(v) => f(v),
            Reading::Absent => Reading::Absent,
            Reading::Unreadable(r) => Reading::Unreadable(r),
        }
    }
}

/// Sysctl keys cue-tune reads (and, for some, writes).
pub mod keys {
    /// Ceiling for RLIMIT_NOFILE.
    pub const NR_OPEN: &str = "fs.nr_open";
    /// System-wide file handle limit.
    pub const FILE_MAX: &str = "fs.file-max";
    /// Allocated/free/max file handles.
    pub const FILE_NR: &str = "fs.file-nr";
    /// 0 enabled, 1 restricted to kernel.io_uring_group, 2 disabled (Linux 6.6+).
    pub const IO_URING_DISABLED: &str = "kernel.io_uring_disabled";
    /// Kernel release.
    pub const OSRELEASE: &str = "kernel.osrelease";
    /// Accept queue ceiling.
    pub const SOMAXCONN: &str = "net.core.somaxconn";
    /// 1: connections queued on a closing `SO_REUSEPORT` listener move to the others on the
    /// port (Linux 5.14+): a draining edge hands its queue to its successor.
    pub const TCP_MIGRATE_REQ: &str = "net.ipv4.tcp_migrate_req";
    /// SYN queue.
    pub const TCP_MAX_SYN_BACKLOG: &str = "net.ipv4.tcp_max_syn_backlog";
    /// Ephemeral ports for outgoing connections.
    pub const IP_LOCAL_PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
    /// Ports excluded from the ephemeral range.
    pub const IP_LOCAL_RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";
    /// TCP memory thresholds in pages: min, pressure, max.
    pub const TCP_MEM: &str = "net.ipv4.tcp_mem";
    /// TCP receive buffer: min, default, max.
    pub const TCP_RMEM: &str = "net.ipv4.tcp_rmem";
    /// TCP send buffer: min, default, max.
    pub const TCP_WMEM: &str = "net.ipv4.tcp_wmem";
    /// Per-CPU input packet queue.
    pub const NETDEV_MAX_BACKLOG: &str = "net.core.netdev_max_backlog";
    /// Ceiling for SO_RCVBUF.
    pub const RMEM_MAX: &str = "net.core.rmem_max";
    /// Ceiling for SO_SNDBUF.
    pub const WMEM_MAX: &str = "net.core.wmem_max";
    /// conntrack table size (present only when nf_conntrack is loaded).
    pub const CONNTRACK_MAX: &str = "net.netfilter.nf_conntrack_max";
    /// conntrack entries in use.
    pub const CONNTRACK_COUNT: &str = "net.netfilter.nf_conntrack_count";
}

/// A NIC backed by a device (virtual interfaces are skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Receive queues (`/sys/class/net/NAME/queues/rx-*`).
    pub rx_queues: u32,
    /// Its interrupts, where visible.
    pub irqs: Vec<Irq>,
}

/// One interrupt line and the CPUs it may run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Irq {
    /// IRQ number.
    pub number: u32,
    /// `/proc/irq/N/smp_affinity_list`.
    pub affinity: Reading<Vec<u32>>,
}

/// The limits systemd would give the edge's unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceLimits {
    /// Hard LimitNOFILE (`u64::MAX` = infinity).
    pub nofile: u64,
    /// Where `nofile` came from.
    pub nofile_from: String,
    /// Hard LimitMEMLOCK.
    pub memlock: u64,
    /// Where `memlock` came from.
    pub memlock_from: String,
}

/// systemd's built-in hard LimitNOFILE since v240.
pub const SYSTEMD_DEFAULT_NOFILE: u64 = 524_288;
/// systemd's built-in LimitMEMLOCK since v253 (64 KiB before).
pub const SYSTEMD_DEFAULT_MEMLOCK: u64 = 8 << 20;

/// Everything checks look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// `kernel.osrelease`.
    pub kernel_release: Reading<String>,
    /// This process's RLIMIT_NOFILE.
    pub nofile: Reading<Rlimit>,
    /// This process's RLIMIT_MEMLOCK.
    pub memlock: Reading<Rlimit>,
    /// Effective capabilities (`/proc/self/status` CapEff).
    pub cap_eff: Reading<u64>,
    /// `fs.nr_open`.
    pub nr_open: Reading<u64>,
    /// `fs.file-max`.
    pub file_max: Reading<u64>,
    /// File handles allocated system-wide (`fs.file-nr`, first field).
    pub files_open: Reading<u64>,
    /// `kernel.io_uring_disabled`.
    pub io_uring_disabled: Reading<u64>,
    /// The io_uring probe.
    pub io_uring: Reading<IoUringStatus>,
    /// `net.core.somaxconn`.
    pub somaxconn: Reading<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Reading<u64>,
    /// `net.ipv4.tcp_migrate_req`.
    pub tcp_migrate_req: Reading<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub ip_local_port_range: Reading<(u16, u16)>,
    /// `net.ipv4.ip_local_reserved_ports`.
    pub ip_local_reserved_ports: Reading<Vec<(u16, u16)>>,
    /// `net.ipv4.tcp_mem` (pages).
    pub tcp_mem: Reading<[u64; 3]>,
    /// `net.ipv4.tcp_rmem`.
    pub tcp_rmem: Reading<[u64; 3]>,
    /// `net.ipv4.tcp_wmem`.
    pub tcp_wmem: Reading<[u64; 3]>,
    /// `net.core.netdev_max_backlog`.
    pub netdev_max_backlog: Reading<u64>,
    /// `net.core.rmem_max`.
    pub rmem_max: Reading<u64>,
    /// `net.core.wmem_max`.
    pub wmem_max: Reading<u64>,
    /// UDP GSO/GRO kernel support.
    pub udp: UdpOffload,
    /// `net.netfilter.nf_conntrack_max` (Absent when conntrack is not loaded).
    pub conntrack_max: Reading<u64>,
    /// `net.netfilter.nf_conntrack_count`.
    pub conntrack_count: Reading<u64>,
    /// `MemAvailable`, bytes.
    pub mem_available: Reading<u64>,
    /// Online CPUs.
    pub cpus_online: Reading<Vec<u32>>,
    /// CPUs isolated from the scheduler (`isolcpus=`).
    pub cpus_isolated: Reading<Vec<u32>>,
    /// NICs backed by devices.
    pub nics: Reading<Vec<Nic>>,
    /// Whether systemd runs this host (`/run/systemd/system` exists).
    pub systemd: bool,
    /// Limits systemd gives the edge unit (Absent without systemd).
    pub service_limits: Reading<ServiceLimits>,
}

/// CAP_NET_ADMIN bit.
pub const CAP_NET_ADMIN: u32 = 12;
/// CAP_IPC_LOCK bit.
pub const CAP_IPC_LOCK: u32 = 14;
/// CAP_SYS_ADMIN bit.
pub const CAP_SYS_ADMIN: u32 = 21;
/// CAP_SYS_RESOURCE bit.
pub const CAP_SYS_RESOURCE: u32 = 24;
/// CAP_BPF bit (Linux 5.8+; before it, CAP_SYS_ADMIN covers BPF).
pub const CAP_BPF: u32 = 39;

impl HostFacts {
    /// Whether the process holds capability `bit`; `None` when CapEff is unreadable.
    pub fn has_cap(&self, bit: u32) -> Option<bool> {
        self.cap_eff.value().map(|caps| caps & (1u64 << bit) != 0)
    }
}

/// Reads everything from `tree` and `probe`. `service` is the systemd unit name whose
/// drop-ins are read.
pub fn gather(tree: &HostTree, probe: &dyn HostProbe, service: &str) -> HostFacts {
    let systemd = tree.exists("run/systemd/system");
    HostFacts {
        kernel_release: tree.sysctl(keys::OSRELEASE, |t| Ok(t.trim().to_string())),
        nofile: probe.rlimit(Resource::NoFile),
        memlock: probe.rlimit(Resource::MemLock),
        cap_eff: tree.parse("proc/self/status", parse::cap_eff),
        nr_open: tree.sysctl(keys::NR_OPEN, parse::u64_value),
        file_max: tree.sysctl(keys::FILE_MAX, parse::u64_value),
        files_open: tree.sysctl(keys::FILE_NR, parse::first_u64),
        io_uring_disabled: tree.sysctl(keys::IO_URING_DISABLED, parse::u64_value),
        io_uring: probe.io_uring(),
        somaxconn: tree.sysctl(keys::SOMAXCONN, parse::u64_value),
        tcp_max_syn_backlog: tree.sysctl(keys::TCP_MAX_SYN_BACKLOG, parse::u64_value),
        tcp_migrate_req: tree.sysctl(keys::TCP_MIGRATE_REQ, parse::u64_value),
        ip_local_port_range: tree.sysctl(keys::IP_LOCAL_PORT_RANGE, parse::port_range),
        ip_local_reserved_ports: tree.sysctl(keys::IP_LOCAL_RESERVED_PORTS, parse::port_list),
        tcp_mem: tree.sysctl(keys::TCP_MEM, parse::triple),
        tcp_rmem: tree.sysctl(keys::TCP_RMEM, parse::triple),
        tcp_wmem: tree.sysctl(keys::TCP_WMEM, parse::triple),
        netdev_max_backlog: tree.sysctl(keys::NETDEV_MAX_BACKLOG, parse::u64_value),
        rmem_max: tree.sysctl(keys::RMEM_MAX, parse::u64_value),
        wmem_max: tree.sysctl(keys::WMEM_MAX, parse::u64_value),
        udp: probe.udp_offload(),
        conntrack_max: tree.sysctl(keys::CONNTRACK_MAX, parse::u64_value),
        conntrack_count: tree.sysctl(keys::CONNTRACK_COUNT, parse::u64_value),
        mem_available: tree.parse("proc/meminfo", |t| parse::meminfo_bytes(t, "MemAvailable")),
        cpus_online: tree.parse("sys/devices/system/cpu/online", parse::cpu_list),
        cpus_isolated: tree.parse("sys/devices/system/cpu/isolated", parse::cpu_list),
        nics: nics(tree),
        systemd,
        service_limits: if systemd {
            service_limits(tree, service)
        } else {
            Reading::Absent
        },
    }
}

fn nics(tree: &HostTree) -> Reading<Vec<Nic>> {
    tree.list("sys/class/net").map(|names| {
        names
            .into_iter()
            .filter(|name| tree.exists(&format!("sys/class/net/{name}/device")))
            .map(|name| {
                let rx_queues = tree
                    .list(&format!("sys/class/net/{name}/queues"))
                    .value()
                    .map(|q| q.iter().filter(|e| e.starts_with("rx-")).count() as u32)
                    .unwrap_or(0);
                let irqs = nic_irqs(tree, &name)
                    .into_iter()
                    .map(|number| Irq {
                        number,
                        affinity: tree.parse(
                            &format!("proc/irq/{number}/smp_affinity_list"),
                            parse::cpu_list,
                        ),
                    })
                    .collect();
                Nic {
                    name,
                    rx_queues,
                    irqs,
                }
            })
            .collect()
    })
}

/// A NIC's IRQs: the MSI vectors of its PCI device (the device itself, or its parent for
/// virtio), else `/proc/interrupts` lines naming the interface (`eth0-TxRx-0`).
fn nic_irqs(tree: &HostTree, name: &str) -> Vec<u32> {
    let numbers = |dir: &std::path::Path| -> Vec<u32> {
        let mut irqs: Vec<u32> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        irqs.sort_unstable();
        irqs
    };
    if let Ok(device) = std::fs::canonicalize(tree.path(&format!("sys/class/net/{name}/device"))) {
        for dir in [Some(device.as_path()), device.parent()]
            .into_iter()
            .flatten()
        {
            let irqs = numbers(&dir.join("msi_irqs"));
            if !irqs.is_empty() {
                return irqs;
            }
        }
    }
    tree.read("proc/interrupts")
        .value()
        .map(|text| {
            text.lines()
                .filter(|line| {
                    line.split_whitespace()
                        .last()
                        .is_some_and(|action| action.contains(name))
                })
                .filter_map(|line| line.split(':').next()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// systemd's effective hard LimitNOFILE/LimitMEMLOCK for `service`: built-in defaults, then
/// `system.conf` (+ `.d`), then the unit's drop-ins in name order (later settings win).
fn service_limits(tree: &HostTree, service: &str) -> Reading<ServiceLimits> {
    let mut limits = ServiceLimits {
        nofile: SYSTEMD_DEFAULT_NOFILE,
        nofile_from: "systemd default".to_string(),
        memlock: SYSTEMD_DEFAULT_MEMLOCK,
        memlock_from: "systemd default".to_string(),
    };
    let conf_files = |dir: &str| -> Vec<String> {
        match tree.list(dir) {
            Reading::Value(names) => names
                .into_iter()
                .filter(|n| n.ends_with(".conf"))
                .map(|n| format!("{dir}/{n}"))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut files = vec!["etc/systemd/system.conf".to_string()];
    files.extend(conf_files("etc/systemd/system.conf.d"));
    // The unit file in /etc replaces one shipped in /usr/lib or /lib.
    let unit = [
        "etc/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ]
    .iter()
    .map(|dir| format!("{dir}/{service}.service"))
    .find(|path| tree.exists(path));
    files.extend(unit);
    files.extend(conf_files(&format!(
        "etc/systemd/system/{service}.service.d"
    )));
    for file in files {
        let text = match tree.read(&file) {
            Reading::Value(text) => text,
            Reading::Absent => continue,
            Reading::Unreadable(reason) => return Reading::Unreadable(reason),
        };
        for (key, value) in parse::systemd_settings(&text) {
            let (slot, from) = match key.as_str() {
                "LimitNOFILE" | "DefaultLimitNOFILE" => {
                    (&mut limits.nofile, &mut limits.nofile_from)
                }
                "LimitMEMLOCK" | "DefaultLimitMEMLOCK" => {
                    (&mut limits.memlock, &mut limits.memlock_from)
                }
                _ => continue,
            };
            match parse::systemd_limit(&value) {
                Ok(v) => {
                    *slot = v;
                    *from = format!("/{file}");
                }
                Err(reason) => return Reading::Unreadable(format!("/{file}: {key}: {reason}")),
            }
        }
    }
    Reading::Value(limits)
}
