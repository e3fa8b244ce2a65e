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
        let mut cmd = Command::new(exe);
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

/// The loopback device's receive steering (`/sys/class/net/lo/queues/rx-0/rps_cpus`) set to
/// one core while this lives, with that core's input queue (`net.core.netdev_max_backlog`)
/// raised to hold a whole fanout, and both put back as they were when it is dropped (or when
/// the bench is interrupted with SIGINT or SIGTERM).
///
/// On loopback the receiver's TCP work runs on the sender's core unless it is steered away;
/// steered to the fleet's core, the edge core pays only the send side of each delivery, as it
/// would with a real NIC. The sender then queues packets on the fleet core faster than that
/// core takes them in, and beyond the input queue's length (1000 by default) the kernel drops
/// them: the devices would get their cue after a retransmission timeout, a loss a real NIC's
/// transmit queue would not have caused. So the queue is made as long as the fleet.
#[derive(Debug)]
pub struct RxSteer {
    before: [(String, String); 2],
}

const RPS_CPUS: &str = "/sys/class/net/lo/queues/rx-0/rps_cpus";
const NETDEV_BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

fn read_setting(path: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("--rx-steer: reading {path}"))?
        .trim()
        .to_string())
}

fn write_setting(path: &str, v: &str) -> anyhow::Result<()> {
    std::fs::write(path, v)
        .with_context(|| format!("--rx-steer: writing {v} to {path} (needs root)"))
}

impl RxSteer {
    /// Steers loopback receive work to `cpu` with an input queue of at least `packets`.
    pub fn to_cpu(cpu: usize, packets: u64) -> anyhow::Result<Self> {
        if cpu >= 64 {
            bail!("--rx-steer: core {cpu} is beyond the 64 this bench can name in a mask");
        }
        let before = [
            (RPS_CPUS.to_string(), read_setting(RPS_CPUS)?),
            (NETDEV_BACKLOG.to_string(), read_setting(NETDEV_BACKLOG)?),
        ];
        let backlog: u64 = before[1]
            .1
            .parse()
            .context("netdev_max_backlog is not a number")?;
        let mask = format!("{:x}", 1u64 << cpu);
        let queue = backlog.max(packets);
        // Restored as soon as this exists, whatever fails below.
        let steer = Self { before };
        write_setting(NETDEV_BACKLOG, &queue.to_string())?;
        write_setting(RPS_CPUS, &mask)?;
        // An interrupted run puts the settings back too.
        let restore = steer.before.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                for (path, v) in &restore {
                    let _ = std::fs::write(path, v);
                }
                eprintln!("cue-bench: interrupted; loopback receive settings restored");
                std::process::exit(128 + sig);
            }
        });
        eprintln!(
            "cue-bench: loopback receive work steered to core {cpu} ({RPS_CPUS} = {mask}, was {}; netdev_max_backlog = {queue}, was {backlog})",
            steer.before[0].1
        );
        Ok(steer)
    }
}

impl Drop for RxSteer {
    fn drop(&mut self) {
        for (path, v) in &self.before {
            if let Err(e) = std::fs::write(path, v) {
                eprintln!("cue-bench: could not restore {path} to {v}: {e}");
            }
        }
    }
}
