//! The shard driver: one glommio executor pinned to a core, owning its own `SO_REUSEPORT`
//! listener, its device sockets and its [`ShardCore`]. Nothing is shared with other shards.
//!
//! Cues arrive from the relay link over a glommio shared channel (which wakes the executor at
//! once), so fanout starts the moment a cue lands. Device sockets are not glommio streams: an
//! idle device must cost no task, no future and no buffer, so the shard keeps them in its own
//! epoll set and polls it every `poll` interval (default 1 ms) from a timer task. Input from
//! devices (upgrade requests, pongs, closes) is therefore handled within one poll interval,
//! while cue delivery never waits for it. Reads go through one shared 64 KiB scratch buffer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::shared_channel::SharedReceiver;
use glommio::{LocalExecutorBuilder, Placement};
use rand::SeedableRng;

use crate::core::{ConnKey, CoreConfig, Io, Now, Sent, ShardCore};
use crate::encoded::EncodedCue;
use crate::stats::ShardStats;

/// Messages from the relay link and the control plane to a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A new cue (already encoded in every format).
    Cue(Arc<EncodedCue>),
    /// Stop accepting and close devices over this window.
    Drain(Duration),
    /// Stop now (after a drain, or on a second signal).
    Stop,
}

/// Everything a shard needs to start.
pub struct ShardSpec {
    /// Shard index.
    pub id: usize,
    /// Core to pin to; `None` leaves placement to the OS.
    pub cpu: Option<usize>,
    /// Device WebSocket listen address (shared by all shards and processes via SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Listen backlog.
    pub backlog: i32,
    /// Device logic settings.
    pub core: CoreConfig,
    /// Device input poll interval.
    pub poll: Duration,
    /// io_uring registered memory per ring (glommio `io_memory`).
    pub io_memory: usize,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// Cues and control.
    pub rx: SharedReceiver<ShardMsg>,
    /// Seed for retry-hint jitter.
    pub seed: u64,
    /// Sockets this shard may hold (its share of the process's fd limit). Somewhat above the
    /// core's `max_connections`, so devices over the limit get a 503 with Retry-After rather
    /// than a silent close.
    pub max_sockets: usize,
}

impl std::fmt::Debug for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSpec")
            .field("id", &self.id)
            .field("cpu", &self.cpu)
            .finish()
    }
}

/// Binds the shard's listener: `SO_REUSEPORT` so every shard of every `cue-edge` process on
/// this host can listen on the same address and the kernel spreads connections among them.
pub fn bind_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) })
}

/// Starts the shard on its own thread. The handle's join returns when the shard stops.
pub fn spawn(spec: ShardSpec) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = match spec.cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    let listener = bind_listener(spec.listen, spec.backlog)?;
    LocalExecutorBuilder::new(placement)
        .name(&format!("cue-shard-{}", spec.id))
        .io_memory(spec.io_memory)
        .spawn(move || run(spec, listener))
        .map_err(|e| std::io::Error::other(format!("starting shard executor: {e}")))
}

const LISTENER: u64 = u64::MAX;
const SCRATCH: usize = 64 * 1024;
const EVENTS: usize = 1024;

struct Driver {
    core: ShardCore,
    io: SysIo,
    listener: OwnedFd,
    accepting: bool,
    scratch: Box<[u8]>,
    events: Vec<libc::epoll_event>,
    stats: Arc<ShardStats>,
    max_sockets: usize,
}

async fn run(spec: ShardSpec, listener: OwnedFd) {
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epfd >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    epoll_add(epfd, listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)
        .expect("registering the listener with epoll");
    let epoch = Instant::now();
    let core = ShardCore::new(
        spec.core.clone(),
        spec.stats.clone(),
        rand::rngs::SmallRng::seed_from_u64(spec.seed),
        epoch,
    );
    let d = Rc::new(RefCell::new(Driver {
        core,
        io: SysIo { epfd },
        listener,
        accepting: true,
        scratch: vec![0u8; SCRATCH].into_boxed_slice(),
        events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        stats: spec.stats.clone(),
        max_sockets: spec.max_sockets,
    }));
    let rx = spec.rx.connect().await;
    let stop = Rc::new(std::cell::Cell::new(false));

    let poller = {
        let (d, stop, poll) = (d.clone(), stop.clone(), spec.poll);
        glommio::spawn_local(async move {
            while !stop.get() {
                glommio::timer::sleep(poll).await;
                d.borrow_mut().poll_once(poll);
            }
        })
        .detach()
    };

    tracing::info!(shard = spec.id, cpu = ?spec.cpu, listen = %spec.listen, "shard started");
    while let Some(msg) = rx.recv().await {
        match msg {
            ShardMsg::Cue(cue) => {
                let (t0, cpu0) = (Instant::now(), thread_cpu_ns());
                let mut drv = d.borrow_mut();
                let Driver {
                    core, io, stats, ..
                } = &mut *drv;
                core.on_cue(cue.clone(), io);
                let spent = t0.elapsed();
                stats
                    .fanout_cpu_ns
                    .add(thread_cpu_ns().saturating_sub(cpu0));
                stats.fanout_time.observe_us(spent.as_micros() as u64);
                let lag_ms = unix_ms().saturating_sub(cue.cue.ts());
                stats.delivery_lag.observe_us(lag_ms.saturating_mul(1000));
            }
            ShardMsg::Drain(window) => {
                // Keep accepting: new devices get 503 with a jittered Retry-After (the contract),
                // which also spreads their return; the listener closes at Stop.
                let mut drv = d.borrow_mut();
                drv.core.start_drain(window, now());
                tracing::info!(
                    shard = spec.id,
                    ?window,
                    sessions = drv.core.open_sessions(),
                    "draining"
                );
            }
            ShardMsg::Stop => break,
        }
    }
    stop.set(true);
    let _ = poller.await;
    let mut drv = d.borrow_mut();
    drv.stop_accepting();
    drv.close_all();
    drop(epoll);
    tracing::info!(shard = spec.id, "shard stopped");
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix_ms: unix_ms(),
    }
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Driver {
    fn poll_once(&mut self, tick: Duration) {
        let now = now();
        // A few rounds so a burst (many accepts, then their requests) is handled in one tick.
        for _ in 0..4 {
            let n = unsafe {
                libc::epoll_wait(self.io.epfd, self.events.as_mut_ptr(), EVENTS as i32, 0)
            };
            if n <= 0 {
                break;
            }
            for i in 0..n as usize {
                let ev = self.events[i];
                let (flags, key) = (ev.events, ev.u64);
                if key == LISTENER {
                    self.accept_all(now);
                    continue;
                }
                self.on_event(ConnKey(key), flags, now);
            }
            if (n as usize) < EVENTS {
                break;
            }
        }
        self.core.tick(now, tick, &mut self.io);
    }

    fn accept_all(&mut self, now: Now) {
        for _ in 0..4096 {
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => return,
                    Some(libc::EMFILE) | Some(libc::ENFILE) => {
                        // The connection stays queued; say so once per thousand ticks, not
                        // every tick.
                        if self.stats.accept_shed.get() % 1000 == 0 {
                            tracing::warn!("accept: out of file descriptors (raise LimitNOFILE; see cue-tune check)");
                        }
                        self.stats.accept_shed.inc();
                        return;
                    }
                    _ => {
                        tracing::debug!(error = %e, "accept failed");
                        return;
                    }
                }
            }
            if self.core.connections() >= self.max_sockets {
                self.stats.accept_shed.inc();
                unsafe { libc::close(fd) };
                continue;
            }
            set_nodelay(fd);
            let key = self.core.accept(fd, now);
            if let Err(e) = epoll_add(
                self.io.epfd,
                fd,
                key.0,
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            ) {
                tracing::warn!(error = %e, "epoll add failed; dropping connection");
                self.core.on_error(key, &mut self.io);
            }
        }
    }

    fn on_event(&mut self, key: ConnKey, flags: u32, now: Now) {
        let Driver {
            core, io, scratch, ..
        } = self;
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            let fd = match core.fd_of(key) {
                Some(fd) => fd,
                None => return,
            };
            // Bounded: at most 4 scratch-fulls per device per tick, so one chatty device cannot
            // starve the others.
            for _ in 0..4 {
                let n = unsafe {
                    libc::recv(
                        fd,
                        scratch.as_mut_ptr().cast(),
                        scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    core.on_input(key, &scratch[..n as usize], now, io);
                    if (n as usize) < scratch.len() || core.fd_of(key).is_none() {
                        break;
                    }
                } else if n == 0 {
                    core.on_eof(key, io);
                    return;
                } else {
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EINTR) => break,
                        _ => {
                            core.on_error(key, io);
                            return;
                        }
                    }
                }
            }
        }
        if flags & libc::EPOLLOUT as u32 != 0 {
            core.on_writable(key, io);
        }
    }

    fn stop_accepting(&mut self) {
        if self.accepting {
            self.accepting = false;
            unsafe {
                libc::epoll_ctl(
                    self.io.epfd,
                    libc::EPOLL_CTL_DEL,
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                );
                // Stop the kernel from queueing more connections for this socket.
                libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD);
            }
        }
    }

    fn close_all(&mut self) {
        self.core.close_all(&mut self.io);
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd, key: u64, events: u32) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The real sockets: non-blocking `send` and epoll interest changes.
struct SysIo {
    epfd: RawFd,
}

impl Io for SysIo {
    fn send(&mut self, fd: RawFd, bytes: &[u8]) -> Sent {
        loop {
            let n = unsafe {
                libc::send(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Sent::Took(n as usize);
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Sent::WouldBlock,
                _ => return Sent::Closed,
            }
        }
    }

    fn want_write(&mut self, fd: RawFd, key: ConnKey, want: bool) {
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if want {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event { events, u64: key.0 };
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }

    fn close(&mut self, fd: RawFd) {
        // Closing removes the fd from the epoll set.
        unsafe { libc::close(fd) };
    }
}
