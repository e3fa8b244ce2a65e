//! Checks against fixture host trees: ready, not ready, unreadable.

mod common;

use common::{facts_at, fixture, requirements, FakeProbe};
use cue_tune::checks::{self, CheckLine, Fix, Status};
use cue_tune::facts::{IoUringStatus, Reading};

fn by_id<'a>(lines: &'a [CheckLine], id: &str) -> &'a CheckLine {
    lines.iter().find(|l| l.id == id).unwrap_or_else(|| {
        panic!(
            "no line {id}: {:#?}",
            lines.iter().map(|l| &l.id).collect::<Vec<_>>()
        )
    })
}

fn ids_with(lines: &[CheckLine], status: Status) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.status == status)
        .map(|l| l.id.as_str())
        .collect()
}

#[test]
fn ready_host_holds_a_million_on_sixteen_cores() {
    let (_, facts) = facts_at(&fixture("ready"), &FakeProbe::healthy());
    let lines = checks::run(&facts, &requirements(1_000_000, 16));
    assert!(checks::ready(&lines), "{lines:#?}");
    assert!(ids_with(&lines, Status::Change).is_empty());
    assert!(ids_with(&lines, Status::Unknown).is_empty());
    assert!(
        ids_with(&lines, Status::Advise).is_empty(),
        "{:?}",
        ids_with(&lines, Status::Advise)
    );
    let service = by_id(&lines, "service");
    assert_eq!(
        service.current,
        "LimitNOFILE=2000000 LimitMEMLOCK=unlimited"
    );
    assert!(service
        .why
        .contains("/etc/systemd/system/cue-edge.service.d/90-cue-tune.conf"));
    assert_eq!(by_id(&lines, "conntrack").current, "not loaded");
    assert_eq!(by_id(&lines, "irq.eth0").current, "40:0 41:1");
    assert_eq!(by_id(&lines, "nic.eth0").current, "2");
}

#[test]
fn under_systemd_the_shell_limit_only_advises() {
    // The shell's hard limit is low, but systemd gives the unit its own: not a blocker.
    let (_, facts) = facts_at(&fixture("ready"), &FakeProbe::capped(20_000, 65_536));
    let lines = checks::run(&facts, &requirements(1_000_000, 16));
    assert_eq!(by_id(&lines, "nofile.hard").status, Status::Advise);
    assert!(checks::ready(&lines));
}

#[test]
fn ready_host_with_a_lower_unit_limit_wants_the_drop_in() {
    let dir = common::copy_fixture("ready");
    std::fs::write(
        dir.path()
            .join("etc/systemd/system/cue-edge.service.d/90-cue-tune.conf"),
        "[Service]\nLimitNOFILE=65536\n",
    )
    .unwrap();
    let (_, facts) = facts_at(dir.path(), &FakeProbe::healthy());
    let lines = checks::run(&facts, &requirements(1_000_000, 16));
    let service = by_id(&lines, "service");
    assert_eq!(service.status, Status::Change);
    assert_eq!(service.fix, Some(Fix::ServiceLimits));
    assert!(
        service.why.contains("caps it at ~65.2k devices"),
        "{}",
        service.why
    );
}

#[test]
fn development_machine_shape_names_the_nofile_hard_limit() {
    // The development host: everything fine except nofile hard 20000 without systemd.
    let dir = common::copy_fixture("ready");
    std::fs::remove_dir_all(dir.path().join("run/systemd")).unwrap();
    let (_, facts) = facts_at(dir.path(), &FakeProbe::capped(20_000, 8 << 20));
    let lines = checks::run(&facts, &requirements(100_000, 2));
    let blockers = checks::blockers(&lines);
    assert_eq!(blockers.len(), 1, "{blockers:#?}");
    assert_eq!(blockers[0].id, "nofile.hard");
    assert!(blockers[0]
        .why
        .starts_with("nofile hard limit 20000 caps cue-edge at ~19.9k devices"));

    let lines = checks::run(&facts, &requirements(1_000, 2));
    assert!(checks::ready(&lines), "{:#?}", checks::blockers(&lines));
}

#[test]
fn not_ready_host_lists_each_change_with_its_fix() {
    let mut probe = FakeProbe::capped(4_096, 65_536);
    probe.io_uring = Reading::Value(IoUringStatus::Refused {
        errno: libc::EPERM,
        error: "Operation not permitted (os error 1)".into(),
    });
    probe.gso = Reading::Value(false);
    let (_, facts) = facts_at(&fixture("not-ready"), &probe);
    let lines = checks::run(&facts, &requirements(100_000, 4));
    assert!(!checks::ready(&lines));
    assert_eq!(
        ids_with(&lines, Status::Change),
        vec![
            "kernel.io_uring_disabled",
            "io_uring",
            "memlock.hard",
            "nofile.hard",
            "fs.file-max",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_migrate_req",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_wmem",
            "conntrack",
            "net.core.rmem_max",
            "net.core.wmem_max",
            "memory",
        ]
    );
    assert_eq!(
        ids_with(&lines, Status::Advise),
        vec!["udp.offload", "quic.steer", "cpus.isolated"]
    );

    let sysctl = |id: &str| match &by_id(&lines, id).fix {
        Some(Fix::Sysctl { key, value }) => (key.clone(), value.clone()),
        other => panic!("{id}: {other:?}"),
    };
    assert_eq!(
        sysctl("kernel.io_uring_disabled"),
        ("kernel.io_uring_disabled".into(), "0".into())
    );
    assert_eq!(
        sysctl("net.core.somaxconn"),
        ("net.core.somaxconn".into(), "1024".into())
    );
    // 9100 is already reserved; 8080 and 8443 are added to it rather than moving the range.
    assert_eq!(
        sysctl("net.ipv4.ip_local_port_range"),
        (
            "net.ipv4.ip_local_reserved_ports".into(),
            "8080,8443,9100".into()
        )
    );
    assert_eq!(
        sysctl("net.ipv4.tcp_wmem"),
        ("net.ipv4.tcp_wmem".into(), "4096 16384 4194304".into())
    );
    assert_eq!(
        sysctl("conntrack"),
        ("net.netfilter.nf_conntrack_max".into(), "125000".into())
    );
    // file-max covers LimitNOFILE plus the 1200 handles already open.
    assert_eq!(
        sysctl("fs.file-max"),
        ("fs.file-max".into(), (110_592 + 1_200).to_string())
    );

    let nofile = by_id(&lines, "nofile.hard");
    match &nofile.fix {
        Some(Fix::Manual { action }) => assert!(
            action.starts_with("cannot be raised from here (no CAP_SYS_RESOURCE)"),
            "{action}"
        ),
        other => panic!("{other:?}"),
    }
    let io_uring = by_id(&lines, "io_uring");
    assert!(
        io_uring.why.contains("kernel.io_uring_disabled"),
        "{}",
        io_uring.why
    );
    // No CAP_IPC_LOCK: memlock must cover 3 shards x 816 KiB.
    assert_eq!(
        by_id(&lines, "memlock.hard").needed,
        format!(">= {}", 3 * 816 * 1024)
    );
    assert_eq!(by_id(&lines, "net.ipv4.tcp_mem").status, Status::Ok);
    assert_eq!(by_id(&lines, "service").status, Status::Ok);
    assert_eq!(by_id(&lines, "nic").current, "none visible");
}

#[test]
fn seccomp_refusal_is_told_apart_from_the_sysctl() {
    let dir = common::copy_fixture("not-ready");
    std::fs::write(dir.path().join("proc/sys/kernel/io_uring_disabled"), "0\n").unwrap();
    let mut probe = FakeProbe::healthy();
    probe.io_uring = Reading::Value(IoUringStatus::Refused {
        errno: libc::EPERM,
        error: "Operation not permitted".into(),
    });
    let (_, facts) = facts_at(dir.path(), &probe);
    let lines = checks::run(&facts, &requirements(1_000, 4));
    assert!(by_id(&lines, "io_uring").why.contains("seccomp"));
}

#[test]
fn unreadable_values_are_reported_never_guessed() {
    let mut probe = FakeProbe::healthy();
    probe.nofile = Reading::Unreadable("getrlimit nofile: test".into());
    probe.gro = Reading::Unreadable("UDP_GRO probe: test".into());
    let (_, facts) = facts_at(&fixture("unreadable"), &probe);
    let lines = checks::run(&facts, &requirements(1_000, 2));
    assert!(!checks::ready(&lines));
    let unknown = |id: &str, blocking: bool| {
        let l = by_id(&lines, id);
        assert_eq!(
            (l.status, l.blocking),
            (Status::Unknown, blocking),
            "{id}: {l:?}"
        );
        l.why.clone()
    };
    assert!(unknown("fs.nr_open", true).starts_with("/proc/sys/fs/nr_open: "));
    assert!(unknown("net.ipv4.tcp_mem", true).contains("not three numbers"));
    assert_eq!(
        unknown("net.core.somaxconn", true),
        "not present on this host"
    );
    assert!(unknown("net.ipv4.ip_local_port_range", true).contains("not a port range"));
    assert!(unknown("memory", true).contains("no MemAvailable line"));
    assert!(unknown("cpus", true).contains("not a CPU list"));
    assert!(unknown("nofile.hard", true).contains("getrlimit"));
    assert!(!unknown("nofile.soft", false).is_empty());
    assert!(unknown("capabilities", false).contains("no CapEff line"));
    assert!(unknown("udp.offload", false).contains("UDP_GRO"));
    // Without CapEff, memlock is sized as if CAP_IPC_LOCK were absent, and says so.
    assert!(by_id(&lines, "memlock.hard")
        .why
        .starts_with("CapEff unreadable"));
    // io_uring_disabled absent means an older kernel, which is an answer, not a gap.
    assert_eq!(by_id(&lines, "kernel.io_uring_disabled").status, Status::Ok);
}

#[test]
fn quic_off_skips_udp_requirements() {
    let config = cue_tune::Config {
        connections: 100_000,
        quic_percent: 0,
        ..cue_tune::Config::default()
    };
    let (_, facts) = facts_at(&fixture("not-ready"), &FakeProbe::healthy());
    let lines = checks::run(&facts, &cue_tune::Requirements::new(&config, 4));
    assert_eq!(by_id(&lines, "net.core.rmem_max").status, Status::Ok);
    assert_eq!(by_id(&lines, "udp.offload").status, Status::Ok);
    assert_eq!(by_id(&lines, "quic.steer").status, Status::Ok);
}

#[test]
fn too_few_cores_for_the_fanout_target() {
    let (_, facts) = facts_at(&fixture("ready"), &FakeProbe::healthy());
    // 1M devices on 2 cores: ~5 s per cue, the 1 s target needs 10 shard cores.
    let lines = checks::run(&facts, &requirements(1_000_000, 2));
    let cpus = by_id(&lines, "cpus");
    assert_eq!(cpus.status, Status::Change);
    assert!(
        cpus.why.contains("~5000 ms") && cpus.why.contains("misses the 1000 ms target"),
        "{}",
        cpus.why
    );
    // Asking for more cores than the host has is caught before the fanout estimate.
    let lines = checks::run(&facts, &requirements(1_000, 32));
    assert!(by_id(&lines, "cpus")
        .why
        .contains("32 cores but 16 are online"));
}

#[test]
fn stray_irqs_and_missing_isolation_are_advice() {
    let dir = common::copy_fixture("ready");
    std::fs::write(dir.path().join("proc/irq/41/smp_affinity_list"), "0-15\n").unwrap();
    std::fs::write(dir.path().join("sys/devices/system/cpu/isolated"), "\n").unwrap();
    let (_, facts) = facts_at(dir.path(), &FakeProbe::healthy());
    let lines = checks::run(&facts, &requirements(1_000_000, 16));
    assert_eq!(
        ids_with(&lines, Status::Advise),
        vec!["cpus.isolated", "irq.eth0"]
    );
    assert!(checks::ready(&lines), "advice does not block");
}
