//! Starting the real Cue binaries on loopback for a run, plus the process readings the bench
//! reports (RSS, CPU time, kernel slab memory) and a minimal blocking HTTP client.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free loopback port (bound then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where the Cue binaries are: next to this executable unless `dir` says otherwise.
pub fn bin(dir: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let d = match dir {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    let p = d.join(name);
    if !p.exists() {
        bail!(
            "{} not found (build it: cargo build --release --workspace, or pass --bin-dir)",
            p.display()
        );
    }
    Ok(p)
}

/// A child process killed (SIGKILL) when dropped unless stopped first.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    /// The child.
    pub child: Child,
}

impl Proc {
    /// Starts `exe args` with `env`, stderr to `log`.
    pub fn start(
        name: &str,
        exe: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let logf =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = child_command(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within {grace:?} of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `cue-origin` of the bench: the process, its publish API and relay addresses.
pub struct Origin {
    /// The process (SIGKILLed when dropped).
    pub proc: Proc,
    /// Publish/admin HTTP.
    pub http: SocketAddr,
    /// Relay listener.
    pub relay: SocketAddr,
}

/// Starts `bin` (cue-origin) on free loopback ports with its data in `data` and `extra` flags,
/// stderr to `log`, and waits up to 30 s for its `/healthz`.
pub fn start_origin(
    bin: &Path,
    name: &str,
    data: &Path,
    extra: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Origin> {
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let relay: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args: Vec<String> = vec![
        "--http".into(),
        http.to_string(),
        "--relay".into(),
        relay.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let proc = Proc::start(name, bin, &args, env, log)?;
    wait_http(http, "/healthz", Duration::from_secs(30), |_| true)
        .with_context(|| format!("{name} did not start (log: {})", log.display()))?;
    Ok(Origin { proc, http, relay })
}

/// Starts `n` origins (`cue-origin-I`, data in `out/origin-data-I`, fresh) with the same flags.
pub fn start_origins(
    bin: &Path,
    out: &Path,
    n: usize,
    extra: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Vec<Origin>> {
    (0..n)
        .map(|i| {
            let data = out.join(format!("origin-data-{i}"));
            let _ = std::fs::remove_dir_all(&data);
            start_origin(
                bin,
                &format!("cue-origin-{i}"),
                &data,
                extra,
                env,
                &out.join(format!("origin-{i}.log")),
            )
        })
        .collect()
}

/// One HTTP/1.1 request; returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let r = cue_testkit::client::request(addr, method, path, headers, body)?;
    Ok((r.status, r.body))
}

/// Polls `GET path` until it answers 200 and `ok(body)` holds, or `timeout` passes.
pub fn wait_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if let Ok((200, body)) = http(addr, "GET", path, &[], b"") {
            if ok(&body) {
                return Ok(());
            }
        }
        if t.elapsed() > timeout {
            bail!("{addr}{path} not ready after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident set size of `pid` in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/statm");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("{path}: no resident page count in {s:?}"))?;
    Ok(pages * 4096)
}

/// User + system CPU time of `pid` (all threads), seconds.
pub fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the ")" of the command name; utime and stime are fields 14 and 15.
    let rest = s
        .rsplit_once(')')
        .map(|x| x.1)
        .with_context(|| format!("{path}: no command name"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let field = |i: usize| -> anyhow::Result<f64> {
        f.get(i)
            .and_then(|x| x.parse().ok())
            .with_context(|| format!("{path}: field {} unreadable", i + 3))
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Kernel slab memory (SReclaimable + SUnreclaim) in bytes, from /proc/meminfo: where socket,
/// file, dentry, inode and epoll structures live.
pub fn slab_bytes() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("/proc/meminfo: no Slab line")?;
    Ok(kib * 1024)
}

/// A command whose process is killed when the bench dies (`PR_SET_PDEATHSIG`), so an
/// interrupted or crashed run leaves no edge, origin or fleet behind. Spawn from the main
/// thread: the signal follows the spawning thread's end.
pub fn child_command(exe: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(exe);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Memory the host has in use (MemTotal - MemAvailable of /proc/meminfo), bytes.
pub fn host_memory_used() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .with_context(|| format!("/proc/meminfo: no {name} line"))
    };
    Ok((field("MemTotal:")? - field("MemAvailable:")?) * 1024)
}

/// Unix time in microseconds.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A 64-hex-digit random secret.
pub fn random_secret() -> String {
    let b: [u8; 32] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A free loopback UDP port (bound then released).
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A self-signed certificate for `localhost`, written to `DIR/edge-tls.crt` and `.key`, shared
/// by every edge process of a run so devices can pin it whichever process they reach.
/// Returns (cert path, key path, SHA-256 fingerprint in hex).
pub fn edge_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (crt, key) = (dir.join("edge-tls.crt"), dir.join("edge-tls.key"));
    std::fs::write(&crt, cert.cert.pem())?;
    std::fs::write(&key, cert.key_pair.serialize_pem())?;
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, cert.cert.der())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((crt, key, fingerprint))
}

/// Commands from the parent: one line of stdin each; `quit` when stdin closes.
pub fn stdin_commands() -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                return;
            }
        }
        let _ = tx.send("quit".to_string());
    });
    rx
}

/// The core for the fleet (and origin, prefetch): the one after the edges' core, or none on a
/// one-core machine.
pub fn fleet_cpu(edge_cpu: usize) -> Option<usize> {
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (ncpu > 1).then(|| (edge_cpu + 1) % ncpu)
}

/// Host settings changed for one run and put back as they were when this is dropped, or when
/// the bench is interrupted with SIGINT or SIGTERM (a signal thread restores them and exits).
/// Needs root; every change is printed.
#[derive(Debug)]
pub struct HostSettings {
    before: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

/// The loopback device's receive steering.
pub const RPS_CPUS: &str = "/sys/class/net/lo/queues/rx-0/rps_cpus";
/// Each core's input packet queue.
pub const NETDEV_BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";
/// TCP's socket memory bounds (pages: min, pressure, max).
pub const TCP_MEM: &str = "/proc/sys/net/ipv4/tcp_mem";
/// The host's open-file bound.
pub const FILE_MAX: &str = "/proc/sys/fs/file-max";
/// The ceiling of any listen backlog.
pub const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
/// Half-open connections a listener holds.
pub const SYN_BACKLOG: &str = "/proc/sys/net/ipv4/tcp_max_syn_backlog";
/// The listen backlog a tuned run gives its edges (`--backlog`).
pub const TUNED_BACKLOG: u64 = 65_535;

fn read_setting(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

impl HostSettings {
    /// No changes yet; the signal thread is armed.
    pub fn new() -> anyhow::Result<Self> {
        let before = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
        let restore = before.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                if let Ok(list) = restore.lock() {
                    for (path, v) in list.iter().rev() {
                        let _ = std::fs::write(path, v);
                    }
                }
                eprintln!("cue-bench: interrupted; host settings restored");
                std::process::exit(128 + sig);
            }
        });
        Ok(Self { before })
    }

    /// Sets `path` to `value` (kept as it was first found, for the restore).
    pub fn set(&mut self, path: &str, value: &str) -> anyhow::Result<()> {
        let old = read_setting(path)?;
        if old == value {
            return Ok(());
        }
        {
            let mut list = self.before.lock().expect("settings lock");
            if !list.iter().any(|(p, _)| p == path) {
                list.push((path.to_string(), old.clone()));
            }
        }
        std::fs::write(path, value)
            .with_context(|| format!("writing {value} to {path} (needs root)"))?;
        eprintln!("cue-bench: {path} = {value} for this run (was {old})");
        Ok(())
    }

    /// Raises each number of `path` to at least the wanted one (never lowers any).
    pub fn raise(&mut self, path: &str, want: &[u64]) -> anyhow::Result<()> {
        let old = read_setting(path)?;
        let have: Vec<u64> = old
            .split_whitespace()
            .map(|x| {
                x.parse()
                    .with_context(|| format!("{path}: {old:?} is not numbers"))
            })
            .collect::<anyhow::Result<_>>()?;
        if have.len() != want.len() {
            bail!("{path}: {} values, expected {}", have.len(), want.len());
        }
        let new: Vec<String> = have
            .iter()
            .zip(want)
            .map(|(h, w)| (*h).max(*w).to_string())
            .collect();
        self.set(path, &new.join(" "))
    }
}

impl Drop for HostSettings {
    fn drop(&mut self) {
        let Ok(list) = self.before.lock() else { return };
        for (path, v) in list.iter().rev() {
            match std::fs::write(path, v) {
                Ok(()) => eprintln!("cue-bench: {path} restored to {v}"),
                Err(e) => eprintln!("cue-bench: could not restore {path} to {v}: {e}"),
            }
        }
    }
}

/// What a fleet of `sockets` connections on this host (both ends of every device connection
/// count) needs of it: TCP memory for a cue in flight to each (4 KiB pages, one per socket,
/// with a quarter more before the kernel drops), open files, and listen queues long enough
/// that a connect burst meeting 56 edge processes on one core is queued, not dropped (a
/// dropped SYN costs the device a retransmission timeout of 1 s, then 2, 4 ...).
pub fn raise_for_fleet(h: &mut HostSettings, sockets: u64) -> anyhow::Result<()> {
    let pages = sockets;
    h.raise(TCP_MEM, &[0, pages, pages + pages / 4])?;
    h.raise(FILE_MAX, &[sockets + 200_000])?;
    h.raise(SOMAXCONN, &[TUNED_BACKLOG])?;
    h.raise(SYN_BACKLOG, &[TUNED_BACKLOG])
}

/// Steers loopback receive work to `cpu` with an input queue of at least `packets`.
///
/// On loopback the receiver's TCP work runs on the sender's core unless it is steered away;
/// steered to the fleet's core, the edge core pays only the send side of each delivery, as it
/// would with a real NIC. The sender then queues packets on the fleet core faster than that
/// core takes them in, and beyond the input queue's length (1000 by default) the kernel drops
/// them: the devices would get their cue after a retransmission timeout, a loss a real NIC's
/// transmit queue would not have caused. So the queue is made as long as the fleet.
pub fn steer_rx(h: &mut HostSettings, cpu: usize, packets: u64) -> anyhow::Result<()> {
    if cpu >= 64 {
        bail!("--rx-steer: core {cpu} is beyond the 64 this bench can name in a mask");
    }
    h.raise(NETDEV_BACKLOG, &[packets])?;
    h.set(RPS_CPUS, &format!("{:x}", 1u64 << cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_settings_only_raise_and_are_put_back_when_dropped() {
        let dir = std::env::temp_dir().join(format!("cue-bench-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mem, mask) = (dir.join("tcp_mem"), dir.join("rps_cpus"));
        std::fs::write(&mem, "100\t500\t900\n").unwrap();
        std::fs::write(&mask, "0\n").unwrap();
        let (mem_s, mask_s) = (mem.to_str().unwrap(), mask.to_str().unwrap());
        {
            let mut h = HostSettings::new().unwrap();
            h.raise(mem_s, &[0, 800, 1000]).unwrap();
            assert_eq!(std::fs::read_to_string(&mem).unwrap(), "100 800 1000");
            // Raised twice: the value first found is what comes back.
            h.raise(mem_s, &[0, 2000, 3000]).unwrap();
            h.set(mask_s, "2").unwrap();
            assert_eq!(std::fs::read_to_string(&mask).unwrap(), "2");
            assert!(h.raise(mem_s, &[1]).is_err(), "a count mismatch is refused");
        }
        assert_eq!(std::fs::read_to_string(&mem).unwrap(), "100 500 900");
        assert_eq!(std::fs::read_to_string(&mask).unwrap(), "0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_reading_that_fails_is_an_error_not_zero() {
        // No such process: every reading says so.
        let pid = u32::MAX - 1;
        assert!(rss(pid).is_err());
        assert!(cpu_s(pid).is_err());
        assert!(rss(std::process::id()).unwrap() > 0);
        assert!(slab_bytes().unwrap() > 0);
        assert!(host_memory_used().unwrap() > 0);
    }
}
