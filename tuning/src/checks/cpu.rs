//! Memory for N devices, CPUs for the fanout target, and where interrupts land.

use super::{line, manual, CheckLine};
use crate::facts::{HostFacts, Nic, Reading};
use crate::model::{Requirements, SOFTIRQ_SCALE_CONNECTIONS};
use crate::units;

pub(super) fn checks(f: &HostFacts, r: &Requirements, out: &mut Vec<CheckLine>) {
    out.push(memory(f, r));
    out.push(cpus(f, r));
    out.push(isolation(f, r));
    match &f.nics {
        Reading::Value(nics) if !nics.is_empty() => {
            for nic in nics {
                out.push(queues(nic, r));
                out.push(irqs(nic, r));
            }
        }
        Reading::Value(_) | Reading::Absent => out.push(
            line("nic", "NIC queues / IRQs")
                .current("none visible")
                .needed("-")
                .ok("no device-backed NIC in /sys/class/net"),
        ),
        other => out.push(line("nic", "NIC queues / IRQs").not_read(other, false)),
    }
}

fn memory(f: &HostFacts, r: &Requirements) -> CheckLine {
    let m = &r.memory;
    let l = line("memory", "MemAvailable").needed(format!(">= {}", units::bytes(m.with_headroom)));
    let Some(&available) = f.mem_available.value() else {
        return l.not_read(&f.mem_available, true);
    };
    let why = format!(
        "{} WebSocket x {} + {} QUIC x {} + one cue in flight + shards, +{}%",
        r.ws_devices,
        units::bytes(r.per_conn.user_bytes + r.per_conn.kernel_bytes),
        r.quic_devices,
        units::bytes(r.per_conn.quic_bytes),
        crate::model::MEMORY_HEADROOM_PERCENT
    );
    let l = l.current(units::bytes(available));
    if available >= m.with_headroom {
        l.ok(why)
    } else {
        l.change(
            why,
            manual("add memory, lower --connections, or spread devices over more edges"),
        )
    }
}

fn cpus(f: &HostFacts, r: &Requirements) -> CheckLine {
    let cores = u64::from(r.layout.cores);
    let l = line("cpus", "CPUs").needed(format!(
        ">= {} cores, >= {} shards for {} ms",
        cores, r.fanout.shards_for_target, r.fanout.target_ms
    ));
    let Some(online) = f.cpus_online.value() else {
        return l.not_read(&f.cpus_online, true);
    };
    let online = online.len() as u64;
    let l = l.current(format!("{online} online, {} shards", r.shards()));
    let fanout = format!(
        "one cue reaches {} devices in ~{} ms on {} shards at {}/s each",
        r.connections,
        r.fanout.ms,
        r.shards(),
        r.fanout.per_core_rate
    );
    if online < cores {
        l.change(
            format!("planned for {cores} cores but {online} are online"),
            manual(format!(
                "run on a host with {cores} cores, or pass --cores {online}"
            )),
        )
    } else if r.shards() < r.fanout.shards_for_target {
        l.change(
            format!("{fanout}: misses the {} ms target", r.fanout.target_ms),
            manual(format!(
                "give the edge {} shard cores, spread devices over more edges, or raise --target-fanout-ms",
                r.fanout.shards_for_target
            )),
        )
    } else {
        l.ok(fanout)
    }
}

fn is_subset(cpus: &[u32], of: &[u32]) -> bool {
    cpus.iter().all(|c| of.contains(c))
}

fn isolation(f: &HostFacts, r: &Requirements) -> CheckLine {
    let shards = &r.layout.shard_cores;
    let l = line("cpus.isolated", "isolated CPUs").needed(units::cpu_list(shards));
    if r.layout.irq_cores.is_empty() {
        return l
            .current(
                f.cpus_isolated
                    .value()
                    .map(|c| units::cpu_list(c))
                    .unwrap_or_else(|| "-".into()),
            )
            .needed("-")
            .ok(format!(
                "not worth it on {} cores: every core runs a shard",
                r.layout.cores
            ));
    }
    let Some(isolated) = f.cpus_isolated.value() else {
        return l.not_read(&f.cpus_isolated, false);
    };
    let l = l.current(units::cpu_list(isolated));
    if is_subset(shards, isolated) {
        l.ok("shard cores are kept free of other tasks")
    } else {
        let list = units::cpu_list(shards);
        l.advise(
            "other tasks on shard cores add latency to fanouts",
            Some(manual(format!(
                "boot with isolcpus={list} nohz_full={list} (shards pin themselves)"
            ))),
        )
    }
}

fn queues(nic: &Nic, r: &Requirements) -> CheckLine {
    let want = if r.layout.irq_cores.is_empty() {
        r.shards()
    } else {
        r.layout.irq_cores.len() as u64
    };
    let l = line(
        format!("nic.{}", nic.name),
        format!("{} rx queues", nic.name),
    )
    .current(nic.rx_queues.to_string())
    .needed(format!(">= {want}"));
    if u64::from(nic.rx_queues) >= want {
        l.ok("receive work spreads over the cores that should take it")
    } else if r.connections < SOFTIRQ_SCALE_CONNECTIONS {
        l.ok(format!(
            "fewer queues than cores is fine below {SOFTIRQ_SCALE_CONNECTIONS} devices"
        ))
    } else {
        l.advise(
            "one queue puts every ACK and handshake on one core's softirq",
            Some(manual(format!(
                "ethtool -L {name} combined {want}, or spread with RPS: /sys/class/net/{name}/queues/rx-*/rps_cpus",
                name = nic.name
            ))),
        )
    }
}

fn irqs(nic: &Nic, r: &Requirements) -> CheckLine {
    let irq_cores = &r.layout.irq_cores;
    let l = line(
        format!("irq.{}", nic.name),
        format!("{} IRQ affinity", nic.name),
    );
    if nic.irqs.is_empty() {
        return l
            .current("not visible")
            .needed("-")
            .ok("no IRQs found for this NIC");
    }
    let current = nic
        .irqs
        .iter()
        .map(|irq| match &irq.affinity {
            Reading::Value(cpus) => format!("{}:{}", irq.number, units::cpu_list(cpus)),
            _ => format!("{}:?", irq.number),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let l = l.current(current);
    if irq_cores.is_empty() {
        return l.needed("-").ok(format!(
            "no core to spare for IRQs at {} cores",
            r.layout.cores
        ));
    }
    let l = l.needed(units::cpu_list(irq_cores));
    let stray: Vec<String> = nic
        .irqs
        .iter()
        .filter(|irq| {
            !irq.affinity
                .value()
                .is_some_and(|cpus| is_subset(cpus, irq_cores))
        })
        .map(|irq| irq.number.to_string())
        .collect();
    if stray.is_empty() {
        l.ok("interrupts stay off shard cores")
    } else {
        l.advise(
            "interrupts on shard cores steal time from fanouts",
            Some(manual(format!(
                "for IRQ {}: echo {} > /proc/irq/N/smp_affinity_list (and keep irqbalance off them)",
                stray.join(","),
                units::cpu_list(irq_cores)
            ))),
        )
    }
}
