//! `cue-tune plan`: the layout, memory budget, fanout estimate and settings for N devices on C
//! cores, from the model alone (no host reads), so it can size a machine you do not have yet.

use serde::Serialize;

use crate::facts::keys;
use crate::model::{self, Requirements};
use crate::units;

/// One setting `check` would want for this plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The setting.
    pub name: String,
    /// The value wanted.
    pub value: String,
}

fn setting(name: impl Into<String>, value: impl Into<String>) -> Setting {
    Setting {
        name: name.into(),
        value: value.into(),
    }
}

/// The settings `check` wants for `r`, host-independent.
pub fn wanted(r: &Requirements) -> Vec<Setting> {
    let ports = r
        .edge_ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut s = vec![
        setting(
            "RLIMIT_NOFILE hard (LimitNOFILE)",
            format!(">= {}", r.limit_nofile),
        ),
        setting(
            "RLIMIT_MEMLOCK hard (LimitMEMLOCK)",
            format!(
                ">= {} ({}), or CAP_IPC_LOCK and >= {}",
                r.limit_memlock,
                units::bytes(r.limit_memlock),
                units::bytes(model::GLOMMIO_MIN_MEMLOCK)
            ),
        ),
        setting(keys::NR_OPEN, format!(">= {}", r.limit_nofile)),
        setting(
            keys::FILE_MAX,
            format!(">= {} + files already open", r.limit_nofile),
        ),
        setting(keys::IO_URING_DISABLED, "0 (or absent)"),
        setting(keys::SOMAXCONN, format!(">= {}", r.accept_backlog)),
        setting(
            keys::TCP_MAX_SYN_BACKLOG,
            format!(">= {}", r.accept_backlog),
        ),
        setting(
            keys::IP_LOCAL_PORT_RANGE,
            format!("excludes {ports} (or ip_local_reserved_ports has them)"),
        ),
        setting(
            keys::TCP_MEM,
            format!(
                "pressure >= {}, max >= {} pages",
                r.tcp_mem_pressure, r.tcp_mem_max
            ),
        ),
        setting(keys::TCP_RMEM, format!("default >= {}", r.tcp_rmem_default)),
        setting(keys::TCP_WMEM, format!("default >= {}", r.tcp_wmem_default)),
        setting(keys::NETDEV_MAX_BACKLOG, format!(">= {}", r.netdev_backlog)),
    ];
    if r.quic() {
        s.push(setting(keys::RMEM_MAX, format!(">= {}", r.udp_rmem)));
        s.push(setting(keys::WMEM_MAX, format!(">= {}", r.udp_wmem)));
    }
    s.push(setting(
        keys::CONNTRACK_MAX,
        format!(">= {} if conntrack is loaded", r.conntrack_max),
    ));
    s.push(setting(
        "MemAvailable",
        format!(">= {}", units::bytes(r.memory.with_headroom)),
    ));
    if !r.layout.irq_cores.is_empty() {
        let shards = units::cpu_list(&r.layout.shard_cores);
        s.push(setting(
            "NIC IRQ affinity",
            units::cpu_list(&r.layout.irq_cores),
        ));
        s.push(setting("isolcpus / nohz_full (optional)", shards));
    }
    s
}

/// The whole plan as one value, for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan<'a> {
    /// The derived requirements (layout, memory, fanout, sysctl targets).
    pub requirements: &'a Requirements,
    /// The settings `check` wants.
    pub settings: Vec<Setting>,
}

/// Builds the plan for `r`.
pub fn plan(r: &Requirements) -> Plan<'_> {
    Plan {
        requirements: r,
        settings: wanted(r),
    }
}

/// The plan as operator text.
pub fn render(r: &Requirements) -> String {
    let mut out = String::new();
    let mut push = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    let m = &r.memory;
    let pc = &r.per_conn;
    push(format!(
        "cue-tune plan: {} devices on {} cores ({}% WebSocket, {}% QUIC)",
        r.connections,
        r.layout.cores,
        100 - r.quic_percent.min(100),
        r.quic_percent
    ));
    push(String::new());
    push("layout".into());
    if r.layout.irq_cores.is_empty() {
        push(format!(
            "  shard cores   {:<10} {} shards, one per core; NIC IRQs share them (too few cores to set any aside)",
            units::cpu_list(&r.layout.shard_cores),
            r.shards()
        ));
    } else {
        push(format!(
            "  IRQ cores     {:<10} NIC interrupts, softirq and housekeeping (pin NIC IRQs here)",
            units::cpu_list(&r.layout.irq_cores)
        ));
        push(format!(
            "  shard cores   {:<10} {} shards, one pinned per core",
            units::cpu_list(&r.layout.shard_cores),
            r.shards()
        ));
    }
    push(format!(
        "  per shard     ~{} devices ({} QUIC), {} fds reserved in all",
        r.devices_per_shard, r.quic_per_shard, r.reserved_fds
    ));
    push(format!("  run           cue-edge --shards {}", r.shards()));
    push(String::new());
    push("memory budget".into());
    let rows = [
        (
            "WebSocket user space",
            format!("{} x {}", r.ws_devices, units::bytes(pc.user_bytes)),
            m.ws_user,
        ),
        (
            "WebSocket kernel",
            format!("{} x {}", r.ws_devices, units::bytes(pc.kernel_bytes)),
            m.ws_kernel,
        ),
        (
            "QUIC",
            format!("{} x {}", r.quic_devices, units::bytes(pc.quic_bytes)),
            m.quic,
        ),
        (
            "one cue in flight",
            format!(
                "{} x {} (kernel, transient)",
                r.ws_devices,
                units::bytes(pc.inflight_bytes)
            ),
            m.inflight,
        ),
        (
            "shards (allowance)",
            format!(
                "{} x ({} + {} io_memory)",
                r.shards(),
                units::bytes(model::SHARD_BASE_BYTES),
                units::bytes(r.io_memory)
            ),
            m.shards,
        ),
    ];
    for (what, how, bytes) in rows {
        push(format!(
            "  {what:<22} {how:<42} {:>10}",
            units::bytes(bytes)
        ));
    }
    push(format!(
        "  {:<22} {:<42} {:>10}",
        "total",
        "",
        units::bytes(m.total)
    ));
    push(format!(
        "  {:<22} {:<42} {:>10}",
        format!("with {}% headroom", model::MEMORY_HEADROOM_PERCENT),
        "(MemAvailable should cover this)",
        units::bytes(m.with_headroom)
    ));
    push(format!(
        "  {:<22} {} shards x {} (io_memory in 3 io_uring rings, + rings) = {}",
        "memlock",
        r.shards(),
        units::bytes(r.memlock_per_shard),
        units::bytes(r.memlock)
    ));
    push(String::new());
    push("fanout".into());
    push(format!(
        "  rate          {} deliveries/s per shard core (planning figure; --deliveries-per-core)",
        r.fanout.per_core_rate
    ));
    push(format!(
        "  one cue       ~{} ms to all {} devices ({} per shard / {}/s)",
        r.fanout.ms, r.connections, r.devices_per_shard, r.fanout.per_core_rate
    ));
    let verdict = if r.shards() >= r.fanout.shards_for_target {
        "met"
    } else {
        "MISSED"
    };
    push(format!(
        "  target        {} ms: {verdict} (needs >= {} shard cores at this rate)",
        r.fanout.target_ms, r.fanout.shards_for_target
    ));
    push(String::new());
    push("settings check would want".into());
    for s in wanted(r) {
        push(format!("  {:<36} {}", s.name, s.value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn million_on_sixteen_renders_layout_memory_and_fanout() {
        let config = Config {
            connections: 1_000_000,
            ..Config::default()
        };
        let r = Requirements::new(&config, 16);
        let text = render(&r);
        assert!(text.contains("IRQ cores     0-1"), "{text}");
        assert!(
            text.contains("shard cores   2-15       14 shards"),
            "{text}"
        );
        assert!(text.contains("~715 ms to all 1000000 devices"), "{text}");
        assert!(text.contains("fs.nr_open"), "{text}");
        assert!(text.contains(">= 1100800"), "{text}");
        let json = serde_json::to_value(plan(&r)).unwrap();
        assert_eq!(
            json["requirements"]["layout"]["irq_cores"],
            serde_json::json!([0, 1])
        );
    }
}
