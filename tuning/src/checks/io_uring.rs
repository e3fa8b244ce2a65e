//! Kernel, privileges, io_uring and memlock: what glommio needs before a shard can start.

use super::{line, manual, sysctl_fix, CheckLine};
use crate::facts::{keys, parse, HostFacts, IoUringStatus, Reading};
use crate::facts::{CAP_IPC_LOCK, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_RESOURCE};
use crate::model::{Requirements, GLOMMIO_MIN_MEMLOCK, MIN_KERNEL};
use crate::units;

pub(super) fn checks(f: &HostFacts, r: &Requirements, out: &mut Vec<CheckLine>) {
    out.push(kernel(f));
    out.push(capabilities(f));
    out.push(io_uring_disabled(f));
    out.push(io_uring_probe(f));
    out.extend(memlock(f, r));
}

fn kernel(f: &HostFacts) -> CheckLine {
    let l = line("kernel", "Linux kernel").needed(format!(">= {}.{}", MIN_KERNEL.0, MIN_KERNEL.1));
    let release = match &f.kernel_release {
        Reading::Value(release) => release,
        other => return l.not_read(other, false),
    };
    let l = l.current(release.clone());
    match parse::kernel_version(release) {
        Ok(version) if version >= MIN_KERNEL => l.ok("has the io_uring operations glommio uses"),
        Ok(_) => l.change(
            "glommio needs io_uring send/recv and registered buffers (5.8+)",
            manual("upgrade the kernel to 5.8 or newer"),
        ),
        Err(reason) => l.current("unparsable").unknown(reason, false),
    }
}

fn capabilities(f: &HostFacts) -> CheckLine {
    let l = line("capabilities", "capabilities (this process)");
    let Some(&caps) = f.cap_eff.value() else {
        return l.not_read(&f.cap_eff, false);
    };
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let named = [
        (CAP_IPC_LOCK, "IPC_LOCK"),
        (CAP_SYS_RESOURCE, "SYS_RESOURCE"),
        (CAP_NET_ADMIN, "NET_ADMIN"),
        (CAP_SYS_ADMIN, "SYS_ADMIN"),
    ];
    let held: Vec<&str> = named
        .iter()
        .filter(|(bit, _)| has(*bit))
        .map(|(_, name)| *name)
        .collect();
    let mut why = Vec::new();
    if !has(CAP_SYS_RESOURCE) {
        why.push("lacks SYS_RESOURCE: hard rlimits cannot be raised from here");
    }
    if has(CAP_IPC_LOCK) {
        why.push("IPC_LOCK: io_uring buffers are not charged to memlock");
    }
    if !has(CAP_SYS_ADMIN) {
        why.push("lacks SYS_ADMIN: apply cannot write sysctls live");
    }
    let current = if held.is_empty() {
        "none".to_string()
    } else {
        held.join(" ")
    };
    l.current(current).needed("-").ok(if why.is_empty() {
        "may change every setting".to_string()
    } else {
        why.join("; ")
    })
}

fn io_uring_disabled(f: &HostFacts) -> CheckLine {
    let key = keys::IO_URING_DISABLED;
    let l = line(key, key).needed("0");
    match &f.io_uring_disabled {
        Reading::Absent => l
            .current("absent")
            .ok("kernel before 6.6: io_uring cannot be switched off here"),
        Reading::Value(0) => l.current("0").ok("io_uring enabled for every process"),
        Reading::Value(1) => l.current("1").change(
            "io_uring only for members of kernel.io_uring_group",
            sysctl_fix(key, 0),
        ),
        Reading::Value(v) => l.current(v.to_string()).change(
            "io_uring disabled: glommio cannot start",
            sysctl_fix(key, 0),
        ),
        other => l.not_read(other, true),
    }
}

fn io_uring_probe(f: &HostFacts) -> CheckLine {
    let l = line("io_uring", "io_uring (probe)").needed("ring + glommio ops");
    match &f.io_uring {
        Reading::Value(IoUringStatus::Available { missing_ops }) if missing_ops.is_empty() => l
            .current("available")
            .ok("io_uring_setup works and supports every op glommio uses"),
        Reading::Value(IoUringStatus::Available { missing_ops }) => l
            .current(format!("missing {}", missing_ops.join(",")))
            .change(
                "the kernel's io_uring lacks operations glommio uses",
                manual("upgrade the kernel to 5.8 or newer"),
            ),
        Reading::Value(IoUringStatus::Refused { errno, error }) => {
            let l = l.current(format!("refused: {error}"));
            match *errno {
                libc::ENOSYS => l.change("kernel built without io_uring", manual("use a kernel with CONFIG_IO_URING=y")),
                libc::EPERM | libc::EACCES if f.io_uring_disabled.value().is_some_and(|v| *v > 0) => l.change(
                    "kernel.io_uring_disabled refuses it (see that line)",
                    manual("set kernel.io_uring_disabled=0 (apply does)"),
                ),
                libc::EPERM | libc::EACCES => l.change(
                    "blocked by a seccomp profile (container runtimes block io_uring by default)",
                    manual("run cue-edge with a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register"),
                ),
                libc::ENOMEM => l.change(
                    "not enough locked memory for a ring (kernels before 5.12 charge rings to memlock)",
                    manual("raise RLIMIT_MEMLOCK (see the memlock lines)"),
                ),
                _ => l.change("io_uring_setup failed", manual("investigate the error above")),
            }
        }
        other => l.not_read(other, true),
    }
}

fn memlock(f: &HostFacts, r: &Requirements) -> Vec<CheckLine> {
    let ipc_lock = f.has_cap(CAP_IPC_LOCK);
    let need = if ipc_lock == Some(true) {
        GLOMMIO_MIN_MEMLOCK
    } else {
        r.memlock
    };
    let basis = match ipc_lock {
        Some(true) => format!(
            "CAP_IPC_LOCK: buffers not charged, glommio still wants {} soft",
            units::bytes(GLOMMIO_MIN_MEMLOCK)
        ),
        Some(false) => format!(
            "{} shards x 3 rings x ({} io_memory + {} ring) = {}",
            r.shards(),
            units::bytes(r.io_memory),
            units::bytes(r.ring_bytes),
            units::bytes(r.memlock)
        ),
        None => format!(
            "CapEff unreadable, so assuming no CAP_IPC_LOCK: {}",
            units::bytes(r.memlock)
        ),
    };
    let Some(limit) = f.memlock.value() else {
        return vec![
            line("memlock.soft", "RLIMIT_MEMLOCK soft")
                .needed(format!(">= {need}"))
                .not_read(&f.memlock, false),
            line("memlock.hard", "RLIMIT_MEMLOCK hard")
                .needed(format!(">= {need}"))
                .not_read(&f.memlock, true),
        ];
    };
    let soft = line("memlock.soft", "RLIMIT_MEMLOCK soft")
        .current(units::limit(limit.soft))
        .needed(format!(">= {need}"));
    let soft = if limit.soft >= need {
        soft.ok(basis.clone())
    } else {
        soft.ok("below need: cue-edge raises soft to hard at start-up")
    };
    let hard = line("memlock.hard", "RLIMIT_MEMLOCK hard")
        .current(units::limit(limit.hard))
        .needed(format!(">= {need}"));
    let hard = if limit.hard >= need {
        hard.ok(basis)
    } else if f.systemd {
        hard.advise(
            format!("{basis}; applies to cue-edge started from this shell, the unit's own limit is on the service line"),
            None,
        )
    } else {
        hard.change(
            format!("{basis}; glommio cannot register its buffers"),
            manual(super::files::raise_hard_limit_action(
                f,
                "memlock",
                r.limit_memlock,
            )),
        )
    };
    vec![soft, hard]
}
