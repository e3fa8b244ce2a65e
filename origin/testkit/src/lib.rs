//! `cue-testkit`: helpers for Cue's integration tests (every crate's `tests/`) and tools: the
//! workspace's real binaries, free loopback ports, a child process killed when dropped, polling
//! with a deadline, and a minimal blocking HTTP client ([`client`]). Test support, not
//! production code: it panics on failure, as tests should.

pub mod client;
pub mod nats;
pub mod shipped_config;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a test needs from the host (`what`: `root`, `python3-websockets`, ...), and whether
/// it is there. Missing, the test fails with `how` to provide it, unless `what` (or `all`) is
/// listed in `CUE_SKIP_UNAVAILABLE` (comma-separated): then it says SKIPPED and the caller
/// returns. So nothing passes silently: CI sets no such variable and runs everything.
pub fn require(what: &str, available: bool, how: &str) -> bool {
    if available {
        return true;
    }
    let skip = std::env::var("CUE_SKIP_UNAVAILABLE").unwrap_or_default();
    if skip
        .split(',')
        .any(|s| s.trim() == what || s.trim() == "all")
    {
        eprintln!("SKIPPED: needs {what} ({how}); CUE_SKIP_UNAVAILABLE={skip}");
        return false;
    }
    panic!(
        "this test needs {what}: {how} (or set CUE_SKIP_UNAVAILABLE={what} to skip it knowingly)"
    );
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A workspace binary: integration tests run from `target/<profile>/deps`, and the binaries are
/// one level up. `cargo test --workspace` builds them first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` (the test command does)",
        p.display()
    );
    p
}

/// A free loopback TCP address (bound then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free TCP port")
}

/// A free loopback UDP address (bound then released).
pub fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
}

/// A child process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Proc {
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM (a graceful stop).
    pub fn sigterm(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
    }

    /// Waits up to `d` for the process to exit; its exit code if it did.
    pub fn wait_exit(&mut self, d: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < d {
            if let Ok(Some(s)) = self.0.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Polls `f` until it holds; panics after `d`.
pub fn wait_until(d: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < d, "condition not met within {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns the workspace's `cue-origin` with its data in `dir`, publish API on `http`, relay on
/// `relay`, token secret `secret` and `extra` flags; stderr goes to `log` (or nowhere). Does not
/// wait for it.
pub fn spawn_origin(
    dir: &Path,
    http: SocketAddr,
    relay: SocketAddr,
    secret: &str,
    extra: &[&str],
    log: Option<&Path>,
) -> Proc {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("origin log file")),
        None => Stdio::null(),
    };
    let child = Command::new(workspace_bin("cue-origin"))
        .args([
            "--http",
            &http.to_string(),
            "--relay",
            &relay.to_string(),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("CUE_AUTH_SECRET", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawning cue-origin");
    Proc(child)
}

/// Waits up to `d` until `GET /healthz` on `http` answers 200.
pub fn wait_healthy(http: SocketAddr, d: Duration) {
    wait_until(d, || healthy(http));
}

/// As [`wait_healthy`]; on a timeout the panic carries the process's log at `log`.
pub fn wait_healthy_logged(http: SocketAddr, d: Duration, log: &Path) {
    let t = Instant::now();
    while !healthy(http) {
        assert!(
            t.elapsed() < d,
            "{http} not healthy within {d:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn healthy(http: SocketAddr) -> bool {
    crate::client::request(http, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200)
}

/// Starts the workspace's `cue-origin` (see [`spawn_origin`]; output discarded) and waits
/// until its `/healthz` answers 200; panics if it does not within 10 s.
pub fn start_origin(
    dir: &Path,
    http: SocketAddr,
    relay: SocketAddr,
    secret: &str,
    extra: &[&str],
) -> Proc {
    let p = spawn_origin(dir, http, relay, secret, extra, None);
    wait_healthy(http, Duration::from_secs(10));
    p
}
