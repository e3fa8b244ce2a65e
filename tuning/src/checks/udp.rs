//! QUIC's UDP side: socket buffer ceilings and segmentation/receive offload.

use super::{line, manual, sysctl_at_least, CheckLine};
use crate::facts::{keys, HostFacts, Reading};
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
