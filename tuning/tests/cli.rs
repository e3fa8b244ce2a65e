//! The real binary: flags, config errors, exit codes, JSON, and apply/revert on a copied tree.
//! Host probes (rlimits, io_uring) are this machine's, so assertions avoid depending on them.

mod common;

use std::process::{Command, Output};

use common::{copy_fixture, fixture, snapshot};

fn cue_tune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cue-tune"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_documents_every_flag() {
    let out = cue_tune(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for flag in [
        "--config",
        "--connections",
        "--cores",
        "--quic-percent",
        "--user-bytes-per-conn",
        "--kernel-bytes-per-conn",
        "--quic-bytes-per-conn",
        "--inflight-bytes-per-conn",
        "--deliveries-per-core",
        "--target-fanout-ms",
        "--reconnect-window-s",
        "--fd-headroom-percent",
        "--io-memory-per-shard",
        "--ring-depth",
        "--edge-ports",
        "--service",
        "--root",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for command in ["check", "apply", "revert", "plan"] {
        assert!(help.contains(command));
    }
    assert!(stdout(&cue_tune(&["apply", "--help"])).contains("--yes"));
    assert!(stdout(&cue_tune(&["check", "--help"])).contains("--json"));
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "stdout: {}", stdout(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("cue-tune: ") && err.contains(needle),
        "{err}"
    );
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    assert_one_line_error(
        &cue_tune(&["check", "--connections", "lots"]),
        "--connections",
    );
    assert_one_line_error(&cue_tune(&["check", "--conections", "5"]), "--conections");
    assert_one_line_error(
        &cue_tune(&["plan", "--quic-percent", "150"]),
        "quic_percent: 150 is above 100",
    );
    assert_one_line_error(
        &cue_tune(&["check", "--root", "/no/such/root"]),
        "root: /no/such/root is not a directory",
    );
}

#[test]
fn bad_config_exits_2_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.toml");
    let path_arg = path.to_str().unwrap();

    std::fs::write(&path, "connections = 0\ncores = 0\n").unwrap();
    assert_one_line_error(
        &cue_tune(&["plan", "--config", path_arg]),
        "connections: must be at least 1; cores: must be at least 1",
    );

    std::fs::write(&path, "conections = 10\n").unwrap();
    assert_one_line_error(
        &cue_tune(&["plan", "--config", path_arg]),
        "unknown field `conections`",
    );

    std::fs::write(&path, "connections = \"ten\"\n").unwrap();
    assert_one_line_error(
        &cue_tune(&["plan", "--config", path_arg]),
        "line 1: connections:",
    );

    // Flags override the file.
    std::fs::write(&path, "connections = 0\n").unwrap();
    let out = cue_tune(&[
        "plan",
        "--config",
        path_arg,
        "--connections",
        "5000",
        "--cores",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("cue-tune plan: 5000 devices on 2 cores"));
}

#[test]
fn plan_for_a_million_on_sixteen_cores() {
    let out = cue_tune(&["plan", "--connections", "1000000", "--cores", "16"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("14 shards"), "{text}");
    assert!(text.contains("~715 ms to all 1000000 devices"), "{text}");
    assert!(text.contains("with 25% headroom"), "{text}");

    let out = cue_tune(&[
        "plan",
        "--connections",
        "1000000",
        "--cores",
        "16",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["requirements"]["fanout"]["ms"], 715);
    assert_eq!(json["requirements"]["limit_nofile"], 1_100_800);
}

#[test]
fn check_json_on_a_not_ready_tree_exits_1() {
    let root = fixture("not-ready");
    let out = cue_tune(&[
        "check",
        "--root",
        root.to_str().unwrap(),
        "--connections",
        "100000",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ready"], false);
    assert_eq!(json["cores"], 4, "cores default to the tree's online CPUs");
    let blockers = json["blockers"].as_array().unwrap();
    assert!(blockers
        .iter()
        .any(|b| b.as_str().unwrap().starts_with("net.core.somaxconn 128")));
    let line = json["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "net.core.somaxconn")
        .unwrap();
    assert_eq!(line["status"], "CHANGE");
    assert_eq!(line["fix"]["kind"], "sysctl");
}

#[test]
fn check_exit_code_matches_the_verdict() {
    let root = fixture("ready");
    let out = cue_tune(&[
        "check",
        "--root",
        root.to_str().unwrap(),
        "--connections",
        "1000",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = if json["ready"] == true { 0 } else { 1 };
    assert_eq!(out.status.code(), Some(expected));
}

#[test]
fn apply_shows_then_writes_and_revert_restores() {
    let dir = copy_fixture("not-ready");
    let root = dir.path().to_str().unwrap();
    let before = snapshot(dir.path());

    let out = cue_tune(&["apply", "--root", root, "--connections", "100000"]);
    let text = stdout(&out);
    assert!(text.contains("net.core.somaxconn : 128 -> 1024"), "{text}");
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert_eq!(snapshot(dir.path()), before, "a dry run writes nothing");

    let out = cue_tune(&["apply", "--root", root, "--connections", "100000", "--yes"]);
    let text = stdout(&out);
    assert!(text.contains("set net.core.somaxconn live"), "{text}");
    assert!(text.contains("90-cue-edge.conf"), "{text}");
    assert!(dir
        .path()
        .join("etc/systemd/system/cue-edge.service.d/90-cue-tune.conf")
        .exists());
    assert!(dir.path().join("var/lib/cue-tune/state.json").exists());

    let out = cue_tune(&["revert", "--root", root]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("restored net.core.somaxconn = 128"));
    assert_eq!(snapshot(dir.path()), before);

    let out = cue_tune(&["revert", "--root", root]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("nothing to revert"));
}
