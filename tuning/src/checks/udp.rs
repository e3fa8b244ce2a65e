//! QUIC's UDP side: socket buffer ceilings and segmentation/receive offload.

use super::{line, manual, sysctl_at_least, CheckLine};
use crate::facts::{keys, HostFacts, Reading, CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN};
use crate::model::{Requirements, SHARD_STALL_MS};

pub(super) fn checks(f: &HostFacts, r: &Requirements, out: &mut Vec<CheckLine>) {
    if !r.quic() {
        for (key, reading) in [(keys::RMEM_MAX, &f.rmem_max), (keys::WMEM_MAX, &f.wmem_max)] {
            let current = reading
                .value()
                .map_or_else(|| "-".to_string(), u64::to_string);
            out.push(
                line(key, key)
                    .current(current)
                    .needed("-")
                    .ok("no QUIC devices planned (--quic-percent 0)"),
            );
        }
        out.push(
            line("udp.offload", "UDP GSO/GRO")
                .needed("-")
                .ok("no QUIC devices planned"),
        );
        out.push(
            line("quic.steer", "QUIC steering (eBPF)")
                .needed("-")
                .ok("no QUIC devices planned"),
        );
        return;
    }
    let packets = r.udp_rmem / crate::model::UDP_TRUESIZE;
    out.push(sysctl_at_least(
        keys::RMEM_MAX,
        &f.rmem_max,
        r.udp_rmem,
        &format!("caps a shard's QUIC socket SO_RCVBUF: {packets} datagrams arrive in a {SHARD_STALL_MS} ms busy spell"),
    ));
    out.push(sysctl_at_least(
        keys::WMEM_MAX,
        &f.wmem_max,
        r.udp_wmem,
        &format!("caps a shard's QUIC socket SO_SNDBUF: {packets} datagrams queued per busy spell"),
    ));
    out.push(offload(f));
    out.push(steer(f));
}

/// `cue-edge --quic-steer` loads a reuseport eBPF program and opens the port's shared socket
/// map by id: CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (root has them).
fn steer(f: &HostFacts) -> CheckLine {
    let l =
        line("quic.steer", "QUIC steering (eBPF)").needed("CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN");
    let caps = match &f.cap_eff {
        Reading::Value(c) => *c,
        Reading::Unreadable(reason) => return l.unknown(reason.clone(), false),
        _ => return l.unknown("CapEff not read", false),
    };
    let wanted = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        return l
            .current("all three")
            .ok("each QUIC datagram is steered to its connection's socket across cue-edge processes (this process's capabilities: run check as cue-edge's user)");
    }
    l.current(format!("missing {}", missing.join(" "))).advise(
        "without them cue-edge warns and does not steer: a device whose address changes may reach another cue-edge process on the port and reconnect (one process per host loses nothing)",
        Some(manual(
            "run cue-edge as root, or give its unit AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN",
        )),
    )
}

fn offload(f: &HostFacts) -> CheckLine {
    let l = line("udp.offload", "UDP GSO/GRO").needed("both");
    let show = |r: &Reading<bool>| match r {
        Reading::Value(true) => "yes",
        Reading::Value(false) => "no",
        _ => "unreadable",
    };
    let l = l.current(format!(
        "GSO {}, GRO {}",
        show(&f.udp.gso),
        show(&f.udp.gro)
    ));
    match (&f.udp.gso, &f.udp.gro) {
        (Reading::Value(true), Reading::Value(true)) => {
            l.ok("kernel support; whether the NIC offloads is not visible in /sys")
        }
        (Reading::Value(gso), Reading::Value(_)) => l.advise(
            "without them QUIC fanout costs one system call per datagram",
            Some(manual(format!(
                "use a kernel with UDP {} (GSO 4.18+, GRO 5.0+)",
                if *gso { "GRO" } else { "GSO" }
            ))),
        ),
        (Reading::Unreadable(reason), _) | (_, Reading::Unreadable(reason)) => {
            l.unknown(reason.clone(), false)
        }
        _ => l.unknown("probe gave no answer", false),
    }
}
