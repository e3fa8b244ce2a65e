//! File descriptors: one per WebSocket device, so RLIMIT_NOFILE, fs.nr_open and fs.file-max
//! decide how many devices an edge can hold. Also the systemd unit's limits.

use super::{line, manual, sysctl_at_least, CheckLine, Fix};
use crate::facts::{keys, HostFacts, Reading, CAP_SYS_RESOURCE};
use crate::model::Requirements;
use crate::units;

pub(super) fn checks(f: &HostFacts, r: &Requirements, out: &mut Vec<CheckLine>) {
    out.extend(nofile(f, r));
    out.push(sysctl_at_least(
        keys::NR_OPEN,
        &f.nr_open,
        r.limit_nofile,
        "ceiling for any RLIMIT_NOFILE: LimitNOFILE above it fails",
    ));
    out.push(file_max(f, r));
    out.push(service(f, r));
}

fn fd_basis(r: &Requirements) -> String {
    format!(
        "{} devices + {} reconnect overlap + {} reserved fds",
        r.connections,
        r.nofile - r.connections - r.reserved_fds,
        r.reserved_fds
    )
}

/// What to tell an operator when a hard limit of this process is too low.
pub(super) fn raise_hard_limit_action(f: &HostFacts, what: &str, value: u64) -> String {
    let directive = if what == "nofile" {
        "LimitNOFILE"
    } else {
        "LimitMEMLOCK"
    };
    match f.has_cap(CAP_SYS_RESOURCE) {
        Some(false) => format!(
            "cannot be raised from here (no CAP_SYS_RESOURCE): raise the {what} hard limit where cue-edge's environment is defined, e.g. docker run --ulimit {what}={value}:{value}, or {directive}={value} under systemd (cue-tune apply writes a drop-in)"
        ),
        _ => format!(
            "raise the {what} hard limit for whatever starts cue-edge: {directive}={value} under systemd (cue-tune apply writes a drop-in), /etc/security/limits.conf for login sessions, or prlimit --{what}={value}:{value} --pid PID"
        ),
    }
}

fn nofile(f: &HostFacts, r: &Requirements) -> Vec<CheckLine> {
    let need = format!(">= {}", r.nofile);
    let Some(limit) = f.nofile.value() else {
        return vec![
            line("nofile.soft", "RLIMIT_NOFILE soft")
                .needed(need.clone())
                .not_read(&f.nofile, false),
            line("nofile.hard", "RLIMIT_NOFILE hard")
                .needed(need)
                .not_read(&f.nofile, true),
        ];
    };
    let soft = line("nofile.soft", "RLIMIT_NOFILE soft")
        .current(units::limit(limit.soft))
        .needed(need.clone());
    let soft = if limit.soft >= r.nofile {
        soft.ok(fd_basis(r))
    } else {
        soft.ok("below need: cue-edge raises soft to hard at start-up")
    };
    let hard = line("nofile.hard", "RLIMIT_NOFILE hard")
        .current(units::limit(limit.hard))
        .needed(need);
    let capacity = limit.hard.saturating_sub(r.reserved_fds);
    let hard = if limit.hard >= r.nofile {
        hard.ok(fd_basis(r))
    } else if f.systemd {
        hard.advise(
            format!(
                "caps cue-edge started from this shell at ~{} devices; the unit's own limit is on the service line",
                units::count(capacity)
            ),
            None,
        )
    } else {
        hard.change(
            format!(
                "nofile hard limit {} caps cue-edge at ~{} devices ({})",
                limit.hard,
                units::count(capacity),
                fd_basis(r)
            ),
            manual(raise_hard_limit_action(f, "nofile", r.limit_nofile)),
        )
    };
    vec![soft, hard]
}

fn file_max(f: &HostFacts, r: &Requirements) -> CheckLine {
    let open = f.files_open.value().copied().unwrap_or(0);
    let need = r.limit_nofile + open;
    let why = format!(
        "system-wide handles: cue-edge's {} plus the {open} already open",
        r.limit_nofile
    );
    sysctl_at_least(keys::FILE_MAX, &f.file_max, need, &why)
}

fn service(f: &HostFacts, r: &Requirements) -> CheckLine {
    let l = line("service", "cue-edge.service limits").needed(format!(
        "LimitNOFILE>={} LimitMEMLOCK>={}",
        r.limit_nofile, r.limit_memlock
    ));
    if !f.systemd {
        return l
            .current("no systemd")
            .needed("-")
            .ok("systemd is not running here: cue-edge gets the limits of whatever starts it (the RLIMIT lines)");
    }
    let limits = match &f.service_limits {
        Reading::Value(limits) => limits,
        other => return l.not_read(other, true),
    };
    let l = l.current(format!(
        "LimitNOFILE={} LimitMEMLOCK={}",
        units::limit(limits.nofile),
        units::limit(limits.memlock)
    ));
    let mut short = Vec::new();
    if limits.nofile < r.limit_nofile {
        short.push(format!(
            "LimitNOFILE from {} caps it at ~{} devices",
            limits.nofile_from,
            units::count(limits.nofile.saturating_sub(r.reserved_fds))
        ));
    }
    if limits.memlock < r.limit_memlock {
        short.push(format!(
            "LimitMEMLOCK from {} is below what {} shards register",
            limits.memlock_from,
            r.shards()
        ));
    }
    if short.is_empty() {
        l.ok(format!(
            "from {} and {}",
            limits.nofile_from, limits.memlock_from
        ))
    } else {
        l.change(short.join("; "), Fix::ServiceLimits)
    }
}
