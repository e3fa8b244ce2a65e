//! The write() floor: a plain blocking `write()` loop of the same frame over as many loopback
//! TCP sockets, pinned to the same core as the edge. It is what a fanout costs with no
//! protocol, no bookkeeping and no event loop, so the edge's delivery rate is reported as a
//! ratio to it, measured in the same run on the same machine.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::worker::{pin, source_addr};

/// Floor settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorSpec {
    /// Socket pairs (each costs two fds in this process).
    pub sockets: usize,
    /// Rounds (one write to every socket each).
    pub rounds: usize,
    /// Bytes per write (the frame size of a cue).
    pub bytes: usize,
    /// Core to pin to.
    pub cpu: Option<usize>,
    /// First source address index (so floor sockets use fresh source addresses).
    pub source_base: u32,
}

/// What it measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FloorResult {
    /// Writes done.
    pub writes: u64,
    /// Wall seconds of the write loops.
    pub seconds: f64,
    /// CPU seconds (user + system) of the write loops.
    pub cpu_s: f64,
}

fn cpu_now() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs the floor in this process.
pub fn run(spec: &FloorSpec) -> anyhow::Result<FloorResult> {
    if let Some(c) = spec.cpu {
        pin(c);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut clients = Vec::with_capacity(spec.sockets);
    let mut servers = Vec::with_capacity(spec.sockets);
    for i in 0..spec.sockets {
        let src = source_addr(spec.source_base, i, 10_000);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
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
        s.bind(&SocketAddr::new(src.into(), 0).into())?;
        s.connect(&addr.into())?;
        clients.push(s);
        let (srv, _) = listener.accept()?;
        srv.set_nodelay(true)?;
        servers.push(srv);
    }
    let frame = vec![b'x'; spec.bytes];
    let mut res = FloorResult::default();
    for _ in 0..spec.rounds {
        let (t0, c0) = (Instant::now(), cpu_now());
        for s in &mut servers {
            s.write_all(&frame)?;
        }
        res.seconds += t0.elapsed().as_secs_f64();
        res.cpu_s += cpu_now() - c0;
        res.writes += servers.len() as u64;
    }
    drop(clients);
    Ok(res)
}
