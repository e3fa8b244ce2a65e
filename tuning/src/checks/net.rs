//! TCP: accept and SYN queues, ephemeral ports, socket memory and buffers, the per-core input
//! queue, and conntrack.

use super::{line, sysctl_at_least, sysctl_fix, CheckLine};
use crate::facts::{keys, HostFacts, Reading};
use crate::model::{Requirements, PAGE};
use crate::units;

pub(super) fn checks(f: &HostFacts, r: &Requirements, out: &mut Vec<CheckLine>) {
    let backlog_why = format!(
        "per-listener queue for reconnects arriving while a shard is busy (floor {})",
        crate::model::MIN_ACCEPT_BACKLOG
    );
    out.push(sysctl_at_least(
        keys::SOMAXCONN,
        &f.somaxconn,
        r.accept_backlog,
        &backlog_why,
    ));
    out.push(sysctl_at_least(
        keys::TCP_MAX_SYN_BACKLOG,
        &f.tcp_max_syn_backlog,
        r.accept_backlog,
        "half-open handshakes during a reconnect storm",
    ));
    out.push(sysctl_at_least(
        keys::TCP_MIGRATE_REQ,
        &f.tcp_migrate_req,
        1,
        "a draining edge's queued connections move to its successor on the port (rolling restarts refuse no device)",
    ));
    out.push(port_range(f, r));
    out.push(tcp_mem(f, r));
    out.push(buffer_default(
        keys::TCP_RMEM,
        &f.tcp_rmem,
        r.tcp_rmem_default,
        "a device's upgrade request with its token fits; a limit, not an allocation",
    ));
    out.push(buffer_default(
        keys::TCP_WMEM,
        &f.tcp_wmem,
        r.tcp_wmem_default,
        "the 101 plus catch-up cues go out without waiting; a limit, not an allocation",
    ));
    out.push(sysctl_at_least(
        keys::NETDEV_MAX_BACKLOG,
        &f.netdev_max_backlog,
        r.netdev_backlog,
        &format!(
            "per-core input queue: ACKs for {} deliveries/s during a {} ms softirq lag",
            r.fanout.per_core_rate,
            crate::model::SOFTIRQ_STALL_MS
        ),
    ));
    out.push(conntrack(f, r));
}

fn in_ranges(port: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(a, b)| (a..=b).contains(&port))
}

fn port_list_text(ranges: &[(u16, u16)]) -> String {
    ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn port_range(f: &HostFacts, r: &Requirements) -> CheckLine {
    let key = keys::IP_LOCAL_PORT_RANGE;
    let ports = r
        .edge_ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let l = line(key, key).needed(format!("excludes {ports}"));
    let Some(&(low, high)) = f.ip_local_port_range.value() else {
        return l.not_read(&f.ip_local_port_range, true);
    };
    let l = l.current(format!("{low}-{high}"));
    let exposed: Vec<u16> = r
        .edge_ports
        .iter()
        .copied()
        .filter(|p| (low..=high).contains(p))
        .collect();
    if exposed.is_empty() {
        return l.ok("devices connect in; only origin links use ephemeral ports");
    }
    let reserved = match &f.ip_local_reserved_ports {
        Reading::Value(reserved) => reserved.clone(),
        Reading::Absent => Vec::new(),
        Reading::Unreadable(reason) => {
            return l.current("unreadable").unknown(reason.clone(), true)
        }
    };
    let unreserved: Vec<u16> = exposed
        .iter()
        .copied()
        .filter(|p| !in_ranges(*p, &reserved))
        .collect();
    if unreserved.is_empty() {
        return l.ok(format!(
            "edge ports inside the range are reserved ({})",
            port_list_text(&reserved)
        ));
    }
    let mut wanted = reserved;
    wanted.extend(unreserved.iter().map(|&p| (p, p)));
    wanted.sort_unstable();
    let unreserved_text = unreserved
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    l.change(
        format!("an outgoing connection can take port {unreserved_text} before cue-edge binds it"),
        sysctl_fix(keys::IP_LOCAL_RESERVED_PORTS, port_list_text(&wanted)),
    )
}

fn triple_text(v: &[u64; 3]) -> String {
    format!("{} {} {}", v[0], v[1], v[2])
}

fn tcp_mem(f: &HostFacts, r: &Requirements) -> CheckLine {
    let key = keys::TCP_MEM;
    let l = line(key, key).needed(format!("_ >={} >={}", r.tcp_mem_pressure, r.tcp_mem_max));
    let Some(v) = f.tcp_mem.value() else {
        return l.not_read(&f.tcp_mem, true);
    };
    let why = format!(
        "one cue in flight to {} WebSocket devices holds ~{} of socket memory (tcp_mem counts 4 KiB pages)",
        r.ws_devices,
        units::bytes(r.tcp_mem_pressure * PAGE)
    );
    let l = l.current(triple_text(v));
    if v[1] >= r.tcp_mem_pressure && v[2] >= r.tcp_mem_max {
        l.ok(why)
    } else {
        let wanted = [v[0], v[1].max(r.tcp_mem_pressure), v[2].max(r.tcp_mem_max)];
        l.change(
            format!("{why}; above max the kernel drops"),
            sysctl_fix(key, triple_text(&wanted)),
        )
    }
}

fn buffer_default(key: &str, reading: &Reading<[u64; 3]>, need: u64, why: &str) -> CheckLine {
    let l = line(key, key).needed(format!("_ >={need} _"));
    let Some(v) = reading.value() else {
        return l.not_read(reading, true);
    };
    let l = l.current(triple_text(v));
    if v[1] >= need {
        l.ok(why)
    } else {
        let wanted = [v[0], need, v[2].max(need)];
        l.change(why, sysctl_fix(key, triple_text(&wanted)))
    }
}

fn conntrack(f: &HostFacts, r: &Requirements) -> CheckLine {
    let key = keys::CONNTRACK_MAX;
    let l = line("conntrack", key).needed(format!(">= {}", r.conntrack_max));
    match &f.conntrack_max {
        Reading::Absent => l
            .current("not loaded")
            .needed("-")
            .ok("nf_conntrack is not loaded: no table to fill"),
        Reading::Value(max) => {
            let in_use = f
                .conntrack_count
                .value()
                .map(|c| format!(" ({c} in use)"))
                .unwrap_or_default();
            let l = l.current(format!("{max}{in_use}"));
            let why = "each device connection is a tracked flow; a full table drops new ones (or NOTRACK the edge ports)";
            if *max >= r.conntrack_max {
                l.ok(why)
            } else {
                l.change(why, sysctl_fix(key, r.conntrack_max))
            }
        }
        other => l.not_read(other, true),
    }
}
