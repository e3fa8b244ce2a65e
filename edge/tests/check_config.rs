//! `--check-config` on the three services, run as an operator runs it: the real binaries, in a
//! fresh working directory, with files that are fine, files with a wrong type, and settings
//! naming files that are missing. A check must write nothing, and a start with the same bad
//! settings must fail the same way (exit 2) before it binds anything.

use std::path::Path;
use std::process::{Command, Output};

use cue_testkit::workspace_bin;

const SECRET: &str = "check-config-test-secret-0123456789abcdef";

fn run(bin: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin(bin))
        .args(args)
        .current_dir(cwd)
        .env_remove("CUE_AUTH_SECRET")
        .env_remove("CUE_LOG")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every entry under `dir`, sorted: what a check may not add to.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn edge_check_config_passes_a_good_file_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", SECRET);
    let cfg = write(
        dir.path(),
        "edge.toml",
        "ws = \"127.0.0.1:18080\"\norigins = [\"localhost:7001\"]\nauth_secret_file = \"secret\"\n",
    );
    let before = tree(dir.path());
    // QUIC is on by default: its reset secret (./cue-data/quic-reset.secret) does not exist
    // yet, which is fine because a start could make it; the check must not.
    let out = run(
        "cue-edge",
        dir.path(),
        &["--config", &cfg, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("cue-edge: config {cfg} ok"));
    assert!(
        !stderr(&out).contains("INFO"),
        "a check's output is its verdict, not info lines: {}",
        stderr(&out)
    );
    assert_eq!(tree(dir.path()), before, "a check wrote files");
}

#[test]
fn edge_wrong_types_name_the_key_and_line_at_check_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "edge.toml", "# an edge\nws = 12\n");
    for extra in [&["--check-config"][..], &[][..]] {
        let mut args = vec!["--config", cfg.as_str()];
        args.extend_from_slice(extra);
        let out = run("cue-edge", dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "config {cfg}:2:6: key `ws`: invalid type: integer `12`"
            )),
            "{err}"
        );
        assert!(
            err.trim_end()
                .ends_with("1 config problem; nothing started"),
            "{err}"
        );
    }
    let out = run(
        "cue-edge",
        dir.path(),
        &[
            "--config",
            &write(dir.path(), "b.toml", "ws = \"127.0.0.1:1\"\n[x\n"),
            "--check-config",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("b.toml:2:"), "{}", stderr(&out));
}

#[test]
fn edge_reports_every_problem_each_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", SECRET);
    // Two bad values: both reported, with a count.
    let out = run(
        "cue-edge",
        dir.path(),
        &[
            "--auth-secret-file",
            "secret",
            "--poll-ms",
            "0",
            "--ws",
            "127.0.0.1:19000",
            "--admin",
            "127.0.0.1:19000",
            "--check-config",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().all(|l| l.starts_with("cue-edge: ")), "{err}");
    assert!(
        err.contains("poll_ms") && err.contains("ws and admin"),
        "{err}"
    );
    assert_eq!(lines[2], "cue-edge: 2 config problems; nothing started");
    // Files the settings name: a missing secret file, missing TLS files, a host secret that
    // could never be made (its directory is a regular file). All listed, nothing written.
    let before = tree(dir.path());
    let out = run(
        "cue-edge",
        dir.path(),
        &[
            "--auth-secret-file",
            "no-such-secret",
            "--wss",
            "127.0.0.1:18443",
            "--tls-cert",
            "no-cert.pem",
            "--tls-key",
            "no-key.pem",
            "--quic-reset-secret-file",
            "secret/reset",
            "--check-config",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no-such-secret"), "{err}");
    assert!(err.contains("no-cert.pem"), "{err}");
    assert!(
        err.contains("quic reset secret") && err.contains("secret/reset"),
        "{err}"
    );
    assert!(err.contains("3 config problems"), "{err}");
    assert_eq!(tree(dir.path()), before, "a check wrote files");
    // A start with the same settings stops the same way: exit 2, nothing bound.
    let out = run(
        "cue-edge",
        dir.path(),
        &[
            "--auth-secret-file",
            "no-such-secret",
            "--ws",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-secret"));
}

#[test]
fn origin_check_config_touches_no_data_dir_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    // No keys anywhere: a start would make the data directory and a signing key in it.
    let cfg = write(dir.path(), "origin.toml", "data_dir = \"data\"\n");
    let out = run(
        "cue-origin",
        dir.path(),
        &["--config", &cfg, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("cue-origin: config {cfg} ok"));
    assert!(
        !stderr(&out).contains("INFO"),
        "a check's output is its verdict, not info lines: {}",
        stderr(&out)
    );
    assert!(
        !dir.path().join("data").exists(),
        "a check made the data directory"
    );
    // The data directory is a file; the relay certificate is missing: both named.
    write(dir.path(), "data", "not a directory");
    let out = run(
        "cue-origin",
        dir.path(),
        &[
            "--config",
            &cfg,
            "--relay-cert",
            "relay.pem",
            "--relay-key",
            "relay.key",
            "--relay-client-ca",
            "ca.pem",
            "--check-config",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("data_dir") && err.contains("not a directory"),
        "{err}"
    );
    assert!(err.contains("relay TLS"), "{err}");
    // A wrong type under a table names `table.key` and its line.
    let bad = write(
        dir.path(),
        "bad.toml",
        "http = \"127.0.0.1:17000\"\n\n[tenant_quotas.acme]\nmax_events = \"many\"\n",
    );
    let out = run(
        "cue-origin",
        dir.path(),
        &["--config", &bad, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "config {bad}:4:14: key `tenant_quotas.acme.max_events`"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn prefetch_check_config_reads_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "secret", SECRET);
    std::fs::create_dir(dir.path().join("catalog")).unwrap();
    let cfg = write(
        dir.path(),
        "prefetch.toml",
        "catalog = \"catalog\"\nauth_secret_file = \"secret\"\n",
    );
    let out = run(
        "cue-prefetch",
        dir.path(),
        &["--config", &cfg, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("cue-prefetch: config {cfg} ok")
    );
    assert!(
        !stderr(&out).contains("INFO"),
        "a check's output is its verdict, not info lines: {}",
        stderr(&out)
    );
    write(
        &dir.path().join("catalog"),
        "fight.json",
        r#"{"window":{"start_ms":9,"end_ms":1},"stages":{}}"#,
    );
    let out = run(
        "cue-prefetch",
        dir.path(),
        &["--config", &cfg, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("fight.json") && err.contains("end_ms"),
        "{err}"
    );
    let bad = write(dir.path(), "bad.toml", "threads = \"two\"\n");
    let out = run(
        "cue-prefetch",
        dir.path(),
        &["--config", &bad, "--check-config"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("config {bad}:1:11: key `threads`")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_names_the_commit_on_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    // The binaries the package ships (`cargo test` builds cue-bench's only with its own tests;
    // .ci/package checks the installed ones against HEAD).
    for bin in ["cue-origin", "cue-edge", "cue-prefetch", "cue-tune"] {
        let out = run(bin, dir.path(), &["--version"]);
        assert_eq!(out.status.code(), Some(0), "{bin}: {}", stderr(&out));
        assert_eq!(
            stdout(&out).trim(),
            format!(
                "{bin} {} (commit {})",
                cue_common::build::VERSION,
                cue_build_info::COMMIT
            )
        );
    }
    assert!(
        cue_build_info::COMMIT.len() == 12
            && cue_build_info::COMMIT
                .bytes()
                .all(|b| b.is_ascii_hexdigit()),
        "built from a git checkout, the commit is known: {}",
        cue_build_info::COMMIT
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (http, relay) = (cue_testkit::free_addr(), cue_testkit::free_addr());
    let log = dir.path().join("origin.log");
    let mut origin = cue_testkit::Proc(
        Command::new(workspace_bin("cue-origin"))
            .args(["--log-format", "json", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--http", &http.to_string(), "--relay", &relay.to_string()])
            .env("CUE_AUTH_SECRET", SECRET)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    cue_testkit::wait_healthy_logged(http, std::time::Duration::from_secs(15), &log);
    origin.sigterm();
    assert_eq!(
        origin.wait_exit(std::time::Duration::from_secs(15)),
        Some(0)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    let out = run("cue-edge", dir.path(), &["--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("'xml' is not text or json"),
        "{}",
        stderr(&out)
    );
}
