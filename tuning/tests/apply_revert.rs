//! apply and revert against temporary copies of fixture trees: what is written, what is saved,
//! and that revert leaves the tree exactly as it was.

mod common;

use common::{copy_fixture, facts_at, requirements, snapshot, FakeProbe};
use cue_tune::apply::{self, State};
use cue_tune::checks;

fn changes_for(root: &std::path::Path, connections: u64, cores: u32) -> apply::ChangeSet {
    let probe = FakeProbe::capped(4_096, 65_536);
    let (tree, facts) = facts_at(root, &probe);
    let req = requirements(connections, cores);
    let lines = checks::run(&facts, &req);
    apply::changes(&tree, &facts, &lines, &req, "cue-edge")
}

fn read(root: &std::path::Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn apply_writes_files_live_values_and_state_then_revert_restores_everything() {
    let dir = copy_fixture("not-ready");
    let root = dir.path();
    let before = snapshot(root);

    let set = changes_for(root, 100_000, 4);
    let keys: Vec<&str> = set.sysctls.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "kernel.io_uring_disabled",
            "fs.file-max",
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_migrate_req",
            "net.ipv4.ip_local_reserved_ports",
            "net.ipv4.tcp_wmem",
            "net.netfilter.nf_conntrack_max",
            "net.core.rmem_max",
            "net.core.wmem_max",
        ]
    );
    assert!(
        set.cannot
            .iter()
            .any(|c| c.starts_with("RLIMIT_NOFILE hard: cannot be raised from here")),
        "{:#?}",
        set.cannot
    );
    assert!(set.cannot.iter().any(|c| c.starts_with("MemAvailable: ")));
    assert!(set
        .notes
        .iter()
        .any(|n| n.starts_with("systemd is not running")));

    // Showing changes nothing.
    let shown = apply::render(&set, root);
    assert!(
        shown.contains("net.core.somaxconn : 128 -> 1024"),
        "{shown}"
    );
    assert!(shown.contains("create "), "{shown}");
    assert_eq!(snapshot(root), before);

    let applied = apply::write(root, &set).unwrap();
    assert!(applied.live.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(read(root, "proc/sys/net/core/somaxconn"), "1024\n");
    assert_eq!(
        read(root, "proc/sys/net/ipv4/ip_local_reserved_ports"),
        "8080,8443,9100\n"
    );
    let sysctl_file = read(root, apply::SYSCTL_FILE);
    assert!(
        sysctl_file.contains("\nnet.core.somaxconn = 1024\n"),
        "{sysctl_file}"
    );
    assert!(sysctl_file.contains("\nkernel.io_uring_disabled = 0\n"));
    let dropin = read(root, &apply::dropin_path("cue-edge"));
    assert!(
        dropin.contains("[Service]\nLimitNOFILE=110592\nLimitMEMLOCK=3145728\n"),
        "{dropin}"
    );

    let state = State::load(root).unwrap().unwrap();
    assert_eq!(state.sysctls["net.core.somaxconn"], "128");
    assert_eq!(state.sysctls["net.ipv4.tcp_wmem"], "4096\t8192\t4194304");
    assert_eq!(state.files[apply::SYSCTL_FILE], None);
    assert!(state.created_dirs.contains(&"etc".to_string()));

    // A second, bigger apply raises more, but keeps the values from before the first.
    let set = changes_for(root, 1_000_000, 4);
    assert!(set.sysctls.iter().any(|c| c.key == "fs.nr_open"));
    assert!(
        !set.sysctls
            .iter()
            .any(|c| c.key == "net.ipv4.ip_local_reserved_ports"),
        "already reserved"
    );
    // 1M devices on 3 shards need a deeper accept queue than the first apply set.
    let somaxconn = set
        .sysctls
        .iter()
        .find(|c| c.key == "net.core.somaxconn")
        .unwrap();
    assert_eq!(
        (somaxconn.from.as_str(), somaxconn.to.as_str()),
        ("1024", "1112")
    );
    apply::write(root, &set).unwrap();
    let state = State::load(root).unwrap().unwrap();
    assert_eq!(state.sysctls["net.core.somaxconn"], "128");
    assert_eq!(state.sysctls["fs.nr_open"], "1048576");
    let sysctl_file = read(root, apply::SYSCTL_FILE);
    assert!(
        sysctl_file.contains("net.core.somaxconn = 1112"),
        "{sysctl_file}"
    );
    assert!(
        sysctl_file.contains("net.ipv4.ip_local_reserved_ports = 8080,8443,9100"),
        "kept from the first apply: {sysctl_file}"
    );
    assert!(sysctl_file.contains("fs.nr_open = 1100800"));
    assert!(read(root, &apply::dropin_path("cue-edge")).contains("LimitNOFILE=1100800"));

    // A smaller apply never lowers what is there.
    let set = changes_for(root, 1_000, 4);
    assert!(set.sysctls.iter().all(|c| c.key != "fs.nr_open"));
    assert!(!set.dropin.changes(), "drop-in already covers 1000 devices");

    let reverted = apply::revert(root).unwrap().unwrap();
    assert!(reverted.sysctls.iter().all(|(_, _, r)| r.is_ok()));
    assert_eq!(reverted.removed.len(), 2);
    assert_eq!(
        snapshot(root),
        before,
        "revert leaves the tree exactly as it was"
    );
    assert!(
        apply::revert(root).unwrap().is_none(),
        "nothing left to revert"
    );
}

#[test]
fn revert_restores_files_that_existed_before() {
    let dir = copy_fixture("ready");
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc/sysctl.d")).unwrap();
    std::fs::write(
        root.join(apply::SYSCTL_FILE),
        "# operator's own\nnet.core.somaxconn = 4096\n",
    )
    .unwrap();
    // Lower the unit's limit so apply has something to raise.
    let dropin = apply::dropin_path("cue-edge");
    std::fs::write(root.join(&dropin), "[Service]\nLimitNOFILE=65536\n").unwrap();
    std::fs::write(root.join("proc/sys/fs/nr_open"), "1048576\n").unwrap();
    let before = snapshot(root);

    let set = changes_for(root, 1_000_000, 16);
    assert_eq!(set.sysctls.len(), 1, "{:#?}", set.sysctls);
    apply::write(root, &set).unwrap();
    let written = read(root, apply::SYSCTL_FILE);
    assert!(
        written.contains("net.core.somaxconn = 4096\n")
            && written.contains("fs.nr_open = 1100800\n"),
        "{written}"
    );
    assert!(read(root, &dropin).contains("LimitNOFILE=1100800"));
    assert!(set
        .notes
        .iter()
        .any(|n| n.contains("systemctl daemon-reload")));

    let reverted = apply::revert(root).unwrap().unwrap();
    assert_eq!(reverted.restored.len(), 2);
    assert_eq!(snapshot(root), before);
}

#[test]
fn a_ready_host_has_nothing_to_apply() {
    let dir = copy_fixture("ready");
    let set = changes_for(dir.path(), 1_000, 16);
    assert!(set.sysctls.is_empty());
    assert!(set.is_empty(), "{set:#?}");
}

#[test]
fn a_corrupt_state_file_stops_apply_and_revert() {
    let dir = copy_fixture("not-ready");
    let root = dir.path();
    std::fs::create_dir_all(root.join("var/lib/cue-tune")).unwrap();
    std::fs::write(root.join(apply::STATE_FILE), "{not json").unwrap();
    let before = snapshot(root);
    let set = changes_for(root, 100_000, 4);
    let err = apply::write(root, &set).unwrap_err().to_string();
    assert!(err.contains("state.json is unreadable"), "{err}");
    assert!(apply::revert(root).is_err());
    assert_eq!(snapshot(root), before, "nothing changed");
}
