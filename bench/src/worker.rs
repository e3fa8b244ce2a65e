//! A fleet worker: one process holding up to ~19k synthetic devices (WebSocket clients) on one
//! mio event loop, so per-device cost stays small and predictable. Devices connect from many
//! 127.0.0.x source addresses (`IP_BIND_ADDRESS_NO_PORT`, at most `per_source` each), upgrade,
//! answer pings, and record the arrival time of every cue frame.
//!
//! Protocol with the parent (lines on stdin/stdout):
//! * worker prints `{"ready":N,"failed":F,"connect_s":S,...}` once every device is connected (or
//!   has failed);
//! * parent sends `report` and the worker prints one JSON report line and exits; `quit` exits;
//!   `reconnect` drops every device at once and connects them all again, each presenting the
//!   admission ticket its last 101 handed out (`Set-Cookie: cue_admit`), then prints a new
//!   ready line. Reconnects come from the next block of source addresses (as a device on
//!   another network would), so the TIME_WAIT its own closes left does not slow their
//!   connects.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use cue_edge::ws::frame::{decode_frame, encode_frame, Decoded, Opcode, Role};
use cue_edge::ws::handshake::{accept_key, client_key, parse_response, write_client_request};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};

/// Worker settings (passed as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Edge (or peer) address.
    pub target: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Path and query of the subscribe URL.
    pub path: String,
    /// Paths spread over the devices (device i uses entry i % len): overrides `path`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Bearer token, if any.
    pub token: Option<String>,
    /// A JSON array of tokens, one per device (device i uses entry i): overrides `token`.
    #[serde(default)]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Devices to hold.
    pub devices: usize,
    /// First source address index: devices use 127.0.(x/250).(2 + x%250) from here on.
    pub source_base: u32,
    /// Devices per source address.
    pub per_source: usize,
    /// Upgrades in flight at once.
    pub concurrency: usize,
    /// Core to pin this worker to.
    pub cpu: Option<usize>,
    /// Give up connecting after this long.
    pub connect_timeout_s: u64,
}

/// What a worker reports at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Devices upgraded.
    pub connected: usize,
    /// Devices that failed to connect or upgrade.
    pub failed: usize,
    /// Devices closed by the server during the run.
    pub closed: usize,
    /// Cue frames received.
    pub frames: u64,
    /// Per seq: arrival times (Unix µs) of every device that got it.
    pub arrivals: HashMap<u64, Vec<u64>>,
    /// Newest seq per device, for the missed count.
    pub final_seqs: Vec<u64>,
    /// Non-101 statuses seen.
    pub refusals: HashMap<u16, usize>,
}

enum Phase {
    Connecting,
    Upgrading { expect: String },
    Open,
    Dead,
}

struct Dev {
    sock: TcpStream,
    phase: Phase,
    buf: Vec<u8>,
    newest: u64,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The source address for device number `i` counted from `base`.
pub fn source_addr(base: u32, i: usize, per_source: usize) -> Ipv4Addr {
    let n = base + (i / per_source) as u32;
    Ipv4Addr::new(127, 0, (n / 250) as u8, (2 + n % 250) as u8)
}

pub fn open_socket(src: Ipv4Addr, target: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None)?;
    // Let connect() pick the port per (src, dst) pair, so one source address is not limited to
    // ~28k ports shared by all destinations.
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.set_nodelay(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(unsafe {
        std::net::TcpStream::from_raw_fd(s.into_raw_fd())
    }))
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) {
    // SAFETY: `set` is a plain bitmask, zeroed then filled by CPU_SET within its size; the
    // call reads it for the calling thread (0) only.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if !ok {
        eprintln!(
            "cue-bench: pinning to core {cpu} failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Runs a worker until the parent says `report` or `quit`.
pub fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let cmd_rx = crate::stack::stdin_commands();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut devs: Vec<Dev> = Vec::with_capacity(spec.devices);
    let mut report = WorkerReport::default();
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut t0 = Instant::now();
    let mut ready_sent = false;
    let tokens: Vec<String> = match &spec.tokens_file {
        None => vec![],
        Some(f) => serde_json::from_str(&std::fs::read_to_string(f)?)?,
    };
    // Admission tickets by device number, kept across reconnects as a device keeps cookies.
    let mut tickets: Vec<Option<String>> = vec![None; spec.devices];
    let mut base = spec.source_base;
    let mut out = Vec::with_capacity(512);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Keep `concurrency` upgrades in flight.
        while next < spec.devices && in_flight < spec.concurrency {
            let src = source_addr(base, next, spec.per_source);
            next += 1;
            match open_socket(src, spec.target) {
                Ok(mut sock) => {
                    let tok = Token(devs.len());
                    poll.registry().register(
                        &mut sock,
                        tok,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    devs.push(Dev {
                        sock,
                        phase: Phase::Connecting,
                        buf: Vec::new(),
                        newest: 0,
                    });
                    in_flight += 1;
                }
                Err(e) => {
                    report.failed += 1;
                    if report.failed <= 3 {
                        eprintln!("worker: connect from {src}: {e}");
                    }
                }
            }
        }
        if !ready_sent
            && (in_flight == 0 && next >= spec.devices
                || t0.elapsed().as_secs() >= spec.connect_timeout_s)
        {
            ready_sent = true;
            report.connected = devs
                .iter()
                .filter(|d| matches!(d.phase, Phase::Open))
                .count();
            let line = serde_json::json!({
                "ready": report.connected,
                "failed": spec.devices - report.connected,
                "connect_s": t0.elapsed().as_secs_f64(),
            });
            println!("{line}");
            std::io::stdout().flush()?;
        }
        if let Ok(cmd) = cmd_rx.try_recv() {
            match cmd.trim() {
                "report" => {
                    report.connected = devs
                        .iter()
                        .filter(|d| matches!(d.phase, Phase::Open))
                        .count();
                    report.final_seqs = devs
                        .iter()
                        .filter(|d| matches!(d.phase, Phase::Open))
                        .map(|d| d.newest)
                        .collect();
                    println!("{}", serde_json::to_string(&report)?);
                    std::io::stdout().flush()?;
                    return Ok(());
                }
                "quit" => return Ok(()),
                "reconnect" => {
                    for mut d in devs.drain(..) {
                        let _ = poll.registry().deregister(&mut d.sock);
                    }
                    next = 0;
                    in_flight = 0;
                    base += spec.devices.div_ceil(spec.per_source.max(1)) as u32;
                    ready_sent = false;
                    t0 = Instant::now();
                    report = WorkerReport::default();
                    continue;
                }
                _ => {}
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(5)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let d = &mut devs[i];
            if let Phase::Connecting = d.phase {
                if ev.is_writable() || ev.is_readable() {
                    if !matches!(d.sock.take_error(), Ok(None)) {
                        // The connect failed (refused, reset): this device is lost.
                        d.phase = Phase::Dead;
                        in_flight -= 1;
                        let _ = poll.registry().deregister(&mut d.sock);
                        continue;
                    }
                    let nonce: [u8; 16] = rand::random();
                    let key = client_key(nonce);
                    out.clear();
                    let token = if tokens.is_empty() {
                        spec.token.as_deref()
                    } else {
                        Some(tokens[i % tokens.len()].as_str())
                    };
                    let path = if spec.paths.is_empty() {
                        spec.path.as_str()
                    } else {
                        spec.paths[i % spec.paths.len()].as_str()
                    };
                    write_client_request(
                        &spec.host,
                        path,
                        &key,
                        token,
                        tickets[i].as_deref(),
                        &mut out,
                    );
                    if d.sock.write_all(&out).is_err() {
                        d.phase = Phase::Dead;
                        in_flight -= 1;
                        continue;
                    }
                    d.phase = Phase::Upgrading {
                        expect: accept_key(&key),
                    };
                    poll.registry()
                        .reregister(&mut d.sock, ev.token(), Interest::READABLE)?;
                }
                continue;
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match d.sock.read(&mut chunk) {
                    Ok(0) => {
                        gone(d, &mut in_flight, &mut report);
                        let _ = poll.registry().deregister(&mut d.sock);
                        break;
                    }
                    Ok(n) => {
                        let now = unix_us();
                        d.buf.extend_from_slice(&chunk[..n]);
                        let ticket = &mut tickets[i];
                        if let Err(()) =
                            on_bytes(d, now, &mut report, &mut in_flight, &mut out, ticket)
                        {
                            let _ = poll.registry().deregister(&mut d.sock);
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        gone(d, &mut in_flight, &mut report);
                        let _ = poll.registry().deregister(&mut d.sock);
                        break;
                    }
                }
            }
        }
    }
}

/// The server closed device `d` (or its socket failed): it stops counting as a handshake in
/// flight or as an open device.
fn gone(d: &mut Dev, in_flight: &mut usize, report: &mut WorkerReport) {
    if matches!(d.phase, Phase::Upgrading { .. }) {
        *in_flight -= 1;
    } else if matches!(d.phase, Phase::Open) {
        report.closed += 1;
    }
    d.phase = Phase::Dead;
}

/// Handles bytes from the server; `Err` when the device is finished.
fn on_bytes(
    d: &mut Dev,
    now: u64,
    report: &mut WorkerReport,
    in_flight: &mut usize,
    out: &mut Vec<u8>,
    ticket: &mut Option<String>,
) -> Result<(), ()> {
    let mut used = 0;
    if let Phase::Upgrading { expect } = &d.phase {
        match parse_response(&d.buf, expect) {
            Ok(None) => return Ok(()),
            Ok(Some((101, n))) => {
                used = n;
                // A device keeps a ticket until the edge hands out another one.
                if let Some(t) = cue_edge::ws::handshake::response_ticket(&d.buf[..n]) {
                    *ticket = Some(t);
                }
                d.phase = Phase::Open;
                *in_flight -= 1;
            }
            Ok(Some((status, _))) => {
                *report.refusals.entry(status).or_default() += 1;
                d.phase = Phase::Dead;
                *in_flight -= 1;
                return Err(());
            }
            Err(_) => {
                d.phase = Phase::Dead;
                *in_flight -= 1;
                return Err(());
            }
        }
    }
    loop {
        match decode_frame(&mut d.buf[used..], Role::Client, 1 << 20) {
            Ok(Decoded::Incomplete) => break,
            Ok(Decoded::Frame {
                opcode,
                payload,
                consumed,
                ..
            }) => {
                let pl = &d.buf[used + payload.start..used + payload.end];
                match opcode {
                    Opcode::Text | Opcode::Binary => {
                        if let Some(seq) = seq_of(opcode, pl) {
                            report.frames += 1;
                            report.arrivals.entry(seq).or_default().push(now);
                            d.newest = d.newest.max(seq);
                        }
                    }
                    Opcode::Ping => {
                        out.clear();
                        encode_frame(Opcode::Pong, pl, Some(rand::random()), out);
                        let _ = d.sock.write_all(out);
                    }
                    Opcode::Close => {
                        report.closed += 1;
                        d.phase = Phase::Dead;
                        return Err(());
                    }
                    _ => {}
                }
                used += consumed;
            }
            Err(_) => {
                d.phase = Phase::Dead;
                return Err(());
            }
        }
    }
    d.buf.drain(..used);
    if d.buf.capacity() > 4096 && d.buf.is_empty() {
        d.buf = Vec::new();
    }
    Ok(())
}

/// The seq of a cue frame: a Cue binary record, or any JSON text with a numeric `seq` (so peer
/// servers that relay our published JSON are measured the same way).
fn seq_of(op: Opcode, pl: &[u8]) -> Option<u64> {
    match op {
        Opcode::Binary => cue_common::cue::Cue::from_binary(pl).ok().map(|c| c.seq()),
        _ => {
            if let Ok(c) = cue_common::cue::Cue::from_json(pl) {
                return Some(c.seq());
            }
            let v: serde_json::Value = serde_json::from_slice(pl).ok()?;
            v.get("seq")?.as_u64()
        }
    }
}

/// A started worker process.
pub struct WorkerProc {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl WorkerProc {
    /// Starts `cue-bench worker SPEC_JSON`.
    pub fn start(spec: &WorkerSpec) -> anyhow::Result<Self> {
        Self::start_cmd("worker", &serde_json::to_string(spec)?)
    }

    /// Starts `cue-bench SUBCOMMAND SPEC_JSON` (a WebSocket or QUIC worker).
    pub fn start_cmd(subcommand: &str, spec_json: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = crate::stack::child_command(exe)
            .arg(subcommand)
            .arg(spec_json)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self { child, stdout })
    }

    /// Waits for the worker's next JSON line.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            anyhow::bail!("worker exited early");
        }
        Ok(l)
    }

    /// Sends a command line.
    pub fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the process to end.
    pub fn wait(mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
