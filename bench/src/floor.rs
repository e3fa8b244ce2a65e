//! The write() floor: what a fanout costs with no protocol logic, no bookkeeping and no event
//! loop. A floor process listens on the same kind of port as an edge (`SO_REUSEPORT`, pinned
//! to the edge core), answers the same fleet's upgrade requests with a bare 101, then on each
//! round does a plain blocking `write()` of one cue frame to every socket. The fleet reads and
//! timestamps the frames exactly as it does for the edge, so the two rates are measured against
//! the same receivers, frames, core and socket count, in the same run.
//!
//! Protocol with the parent: the process prints `{"listening":true}` once bound, `{"accepted":N}`
//! once it holds its share of devices; then each stdin line `SEQ` makes one round, answered by
//! `{"writes":N,"seconds":S,"cpu_s":C,"started_us":T0,"done_us":T1}`; `quit` (or EOF) ends it.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use cue_edge::ws::handshake::{parse_request, write_accept};

use crate::worker::pin;

/// Floor settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorSpec {
    /// Address to listen on (shared with the other floor processes).
    pub listen: SocketAddr,
    /// Devices this process holds before it reports.
    pub devices: usize,
    /// Core to pin to.
    pub cpu: Option<usize>,
}

/// One round's measurement.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloorResult {
    /// Writes done.
    pub writes: u64,
    /// Wall seconds of the write loop.
    pub seconds: f64,
    /// CPU seconds (user + system) of the write loop.
    pub cpu_s: f64,
    /// When the write loop began and when its last write returned, Unix us (so the rounds of
    /// several floor processes on one core combine into one wall span).
    pub started_us: u64,
    pub done_us: u64,
}

fn cpu_now() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs a floor process (see the module docs).
pub fn run(spec: &FloorSpec) -> anyhow::Result<()> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let fd = cue_edge::shard::bind_listener(spec.listen, 4096)?;
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) };
    listener.set_nonblocking(false)?;
    println!("{{\"listening\":true}}");
    std::io::stdout().flush()?;
    let mut socks: Vec<TcpStream> = Vec::with_capacity(spec.devices);
    let mut buf = vec![0u8; 8192];
    let mut out = Vec::with_capacity(256);
    while socks.len() < spec.devices {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut have = 0;
        let req = loop {
            let n = s.read(&mut buf[have..])?;
            if n == 0 {
                break None;
            }
            have += n;
            match parse_request(&buf[..have], buf.len()) {
                Ok(Some((req, _))) => break Some(req),
                Ok(None) => continue,
                Err(_) => break None,
            }
        };
        let Some(req) = req else { continue };
        out.clear();
        write_accept(&req.key, None, &mut out);
        s.write_all(&out)?;
        socks.push(s);
    }
    println!("{{\"accepted\":{}}}", socks.len());
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Ok(seq) = line.trim().parse::<u64>() else {
            break;
        };
        let ts = crate::stack::unix_us() / 1000;
        let cue = cue_common::cue::Cue::new("bench", &format!("stage-{seq}"), seq, ts)?;
        let frame = cue_edge::encoded::EncodedCue::new(cue).ws_json;
        let (t0, c0, started_us) = (Instant::now(), cpu_now(), crate::stack::unix_us());
        for s in &mut socks {
            s.write_all(&frame)?;
        }
        let r = FloorResult {
            writes: socks.len() as u64,
            seconds: t0.elapsed().as_secs_f64(),
            cpu_s: cpu_now() - c0,
            started_us,
            done_us: crate::stack::unix_us(),
        };
        println!("{}", serde_json::to_string(&r)?);
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// A started floor process.
pub struct FloorProc {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl FloorProc {
    /// Starts `cue-bench floor-worker SPEC` and waits until it listens.
    pub fn start(spec: &FloorSpec) -> anyhow::Result<Self> {
        let mut child = crate::stack::child_command(std::env::current_exe()?)
            .arg("floor-worker")
            .arg(serde_json::to_string(spec)?)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut p = Self { child, stdout };
        p.line()?;
        Ok(p)
    }

    /// The next line from the process.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            anyhow::bail!("floor process exited early");
        }
        Ok(l)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts round `seq` (does not wait).
    pub fn round(&mut self, seq: u64) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{seq}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for FloorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
