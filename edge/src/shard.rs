//! The shard driver: one glommio executor pinned to a core, owning its own `SO_REUSEPORT`
//! listeners (WebSocket, and `wss` when configured), its own `SO_REUSEPORT` UDP socket and
//! quinn-proto endpoint for QUIC ([`crate::quic::driver`]), its device sockets and its
//! [`ShardCore`]. Nothing is shared with other shards; the only cross-shard path besides the
//! relay link's cue channel is the QUIC forwarding mesh (a glommio `channel_mesh`): a datagram
//! whose connection ID names another shard is handed to it.
//!
//! Cues arrive from the relay link over a glommio shared channel (which wakes the executor at
//! once), so fanout starts the moment a cue lands. Device sockets are not glommio streams: an
//! idle device must cost no task, no future and no buffer, so the shard keeps them in its own
//! epoll set and polls it every `poll` interval (default 1 ms) from a timer task. Input from
//! devices (upgrade requests, pongs, closes) is therefore handled within one poll interval,
//! while cue delivery never waits for it. Reads go through one shared 64 KiB scratch buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::shared_channel::SharedReceiver;
use glommio::{LocalExecutorBuilder, Placement};
use rand::SeedableRng;

use crate::core::{BatchSend, ConnKey, CoreConfig, Io, Link, Now, Sent, ShardCore};
use crate::encoded::{EncodedCue, Transport};
use crate::quic::config::QuicSettings;
use crate::quic::driver::{Forwarded, QuicDriver, QuicEvent};
use crate::quic::udp::UdpSocket;
use crate::stats::ShardStats;
use crate::wss::{TlsRead, TlsSessions};

/// Messages from the relay link and the control plane to a shard.
#[derive(Debug)]
pub enum ShardMsg {
    /// A new cue (already encoded in every format).
    Cue(Arc<EncodedCue>),
    /// Close the listeners (a successor on the same port takes new devices) and close devices
    /// over this window.
    Drain(Duration, u64),
    /// End a drain: listen again and stop closing devices.
    Undrain,
    /// Stop now (after a drain, or on a second signal).
    Stop,
    /// New token keys for new sessions (SIGHUP); sessions up are not checked again.
    Keys(cue_common::keys::Verifier),
    /// The origin retired this event: forget its cue.
    Retired(cue_common::cue::EventName),
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
    /// Longest poll interval while the shard is idle (the interval doubles up to it).
    pub poll_idle_max: Duration,
    /// io_uring registered memory per ring (glommio `io_memory`).
    pub io_memory: usize,
    /// The shard's counters.
    pub stats: Arc<ShardStats>,
    /// Cues and control.
    pub rx: SharedReceiver<ShardMsg>,
    /// Catch-up requests to the relay link: events a device subscribed to whose slot is new.
    pub catchups: glommio::channels::shared_channel::SharedSender<cue_common::cue::EventName>,
    /// Seed for retry-hint jitter.
    pub seed: u64,
    /// Sockets this shard may hold (its share of the process's fd limit). Somewhat above the
    /// core's `max_connections`, so devices over the limit get a 503 with Retry-After rather
    /// than a silent close.
    pub max_sockets: usize,
    /// WebSocket connections per source address (0: no limit; [`crate::sources`]).
    pub max_per_source: u32,
    /// How fanouts leave ([`crate::uring`] or one `send()` per device).
    pub send_path: crate::config::SendPath,
    /// The shard's timer outside glommio ([`ShardTimer`]).
    pub tick: ShardTimer,
    /// WebSocket-over-TLS listener and its rustls settings.
    pub wss: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// QUIC, when enabled.
    pub quic: Option<QuicSpec>,
}

/// A shard's QUIC settings.
#[derive(Clone)]
pub struct QuicSpec {
    /// UDP listen address (shared by shards and processes via SO_REUSEPORT).
    pub listen: SocketAddr,
    /// TLS for QUIC (ALPN `cue/1`).
    pub crypto: Arc<crate::quic::session::LeanServerConfig>,
    /// Limits and transport settings.
    pub settings: QuicSettings,
    /// The forwarding mesh between this process's shards (`None` with one shard).
    pub mesh: Option<MeshBuilder<Forwarded, Full>>,
    /// The port's steering map and program (`None`: off or not permitted).
    pub steer: Option<Arc<crate::quic::steer::Steering>>,
    /// Stateless-reset key shared by every edge with the same token secret (`None`: auth off,
    /// a random key per shard).
    pub reset_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for QuicSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSpec")
            .field("listen", &self.listen)
            .field("mesh", &self.mesh.is_some())
            .finish()
    }
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
    Ok(OwnedFd::from(s))
}

/// Starts the shard on its own thread. The handle's join returns when the shard stops.
pub fn spawn(spec: ShardSpec) -> std::io::Result<glommio::ExecutorJoinHandle<()>> {
    let placement = match spec.cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    let listener = bind_listener(spec.listen, spec.backlog)?;
    let wss = match &spec.wss {
        Some((addr, _)) => Some(
            bind_listener(*addr, spec.backlog)
                .map_err(|e| std::io::Error::new(e.kind(), format!("wss {addr}: {e}")))?,
        ),
        None => None,
    };
    spec.stats.quic_steer_slot.set(-1);
    let udp = match &spec.quic {
        Some(q) => Some(
            UdpSocket::bind(q.listen, q.settings.socket_buffer)
                .map_err(|e| std::io::Error::new(e.kind(), format!("quic {}: {e}", q.listen)))?,
        ),
        None => None,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("cue-shard-{}", spec.id))
        .io_memory(spec.io_memory)
        .spawn(move || run(spec, listener, wss, udp))
        .map_err(|e| std::io::Error::other(format!("starting shard executor: {e}")))
}

/// The ticker thread's longest wait: a shard whose deadline passed is woken within about this
/// even when glommio's timer does not fire (device input wakes it at once, see [`Ticker`]).
pub const TICK: Duration = Duration::from_millis(20);

/// A wake by the ticker this much past the deadline means glommio's timer did not fire: it is
/// counted (`cue_edge_timer_rescues_total`).
const RESCUE_LATE: Duration = Duration::from_millis(10);

/// A shard's wake-ups from outside glommio, through the process's ticker thread
/// ([`spawn_ticker`]), which writes a byte to the shard's tick socket (I/O on glommio's own
/// ring) in two cases:
///
/// * **Device input.** The shard's epoll set (its listeners, devices, QUIC socket) is in the
///   ticker's epoll set, one-shot. A shard that found nothing to do arms it ([`Self::watch`])
///   before it waits; the first event on any of its sockets then wakes it at once, so an idle
///   shard neither polls nor waits out an interval for its next upgrade or pong.
/// * **A missed deadline.** The poller arms its deadline before each wait; once it has passed
///   the ticker wakes the shard. With 56 edge processes sharing one core (the million-device
///   run) a shard's glommio timer sometimes never fired, and the shard stopped polling and
///   accepting, with thousands of devices queued at its listener.
///
/// The poller waits for glommio's timer or that byte, whichever comes first.
#[derive(Debug, Clone)]
pub struct ShardTimer {
    /// The shard's end of its tick socket.
    pub sock: Arc<std::os::unix::net::UnixStream>,
    /// The deadline, ns since `epoch`; 0 when the poller is not waiting.
    wake: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
    /// The ticker's epoll set and this shard's index in it.
    watch: Arc<OwnedFd>,
    index: u64,
}

impl ShardTimer {
    fn arm(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.wake
            .store(ns.max(1), std::sync::atomic::Ordering::Release);
    }

    fn disarm(&self) {
        self.wake.store(0, std::sync::atomic::Ordering::Release);
    }

    /// Asks the ticker to wake this shard at the first event in `epfd` (once: one-shot, armed
    /// again by the next call). The first call adds the set, later ones re-arm it; an event
    /// already waiting wakes the ticker at once (epoll checks readiness on `EPOLL_CTL_MOD`).
    fn watch(&self, epfd: RawFd, added: &mut bool) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: self.index,
        };
        let op = if *added {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        // SAFETY: both descriptors are open (the ticker's set lives as long as any
        // ShardTimer, `epfd` is the calling shard's); `ev` is a valid event for the call.
        if unsafe { libc::epoll_ctl(self.watch.as_raw_fd(), op, epfd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *added = true;
        Ok(())
    }
}

/// The ticker's side of every shard's timer: their tick sockets and deadlines, and an epoll set
/// holding each shard's own epoll set.
#[derive(Debug)]
pub struct Ticker {
    shards: Vec<(
        std::os::unix::net::UnixStream,
        Arc<std::sync::atomic::AtomicU64>,
    )>,
    epoch: Instant,
    watch: Arc<OwnedFd>,
}

impl Ticker {
    /// A ticker for no shard yet.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            shards: Vec::new(),
            epoch: Instant::now(),
            // SAFETY: `fd` is a fresh descriptor (checked above) that nothing else owns.
            watch: Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// A timer for one more shard.
    pub fn shard_timer(&mut self) -> std::io::Result<ShardTimer> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let wake = Arc::new(std::sync::atomic::AtomicU64::new(0));
        self.shards.push((ours, wake.clone()));
        Ok(ShardTimer {
            sock: Arc::new(theirs),
            wake,
            epoch: self.epoch,
            watch: self.watch.clone(),
            index: self.shards.len() as u64 - 1,
        })
    }
}

/// Starts the ticker thread. It waits (at most [`TICK`]) on the epoll set of the shards' epoll
/// sets; it writes a byte to each shard with input waiting, and to each shard whose armed
/// deadline has passed (disarming it, so a busy shard gets one byte, not a byte a tick).
pub fn spawn_ticker(t: Ticker) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    const EVENTS: usize = 64;
    std::thread::Builder::new()
        .name("cue-ticker".into())
        .spawn(move || {
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
            loop {
                // SAFETY: `events` holds EVENTS entries for the kernel to fill; the set is ours.
                let n = unsafe {
                    libc::epoll_wait(
                        t.watch.as_raw_fd(),
                        events.as_mut_ptr(),
                        EVENTS as i32,
                        TICK.as_millis() as i32,
                    )
                };
                for ev in events.iter().take(n.max(0) as usize) {
                    if let Some((sock, _)) = t.shards.get(ev.u64 as usize) {
                        // A full socket already holds a wake; a closed one (exit) needs none.
                        let _ = (&*sock).write(&[1]);
                    }
                }
                let now = t.epoch.elapsed().as_nanos() as u64;
                for (sock, wake) in &t.shards {
                    let at = wake.load(Ordering::Acquire);
                    if at != 0
                        && now >= at
                        && wake
                            .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    {
                        let _ = (&*sock).write(&[1]);
                    }
                }
            }
        })
        .map(|_| ())
}

/// Marks a turn that found nothing to do: the next wait is input-driven ([`quiet_wait`]).
const QUIET: Duration = Duration::ZERO;

/// After a quiet turn: how long the poller may wait for input, at most `idle_max`, less when a
/// QUIC timer falls due sooner (never under 1 ms).
fn quiet_wait(d: &Driver, now: Instant, idle_max: Duration) -> Duration {
    let quic = d.io.quic.as_ref().and_then(|q| q.next_timer()).map(|t| {
        t.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    });
    quic.map_or(idle_max, |q| q.min(idle_max))
}

/// The poller's pause between two fanout slices: just long enough for the executor to poll
/// its reactor (cues, timers, the QUIC socket) in between.
const FANOUT_TURN: Duration = Duration::from_micros(20);

const LISTENER: u64 = u64::MAX;
const WSS_LISTENER: u64 = u64::MAX - 1;
const QUIC_SOCKET: u64 = u64::MAX - 2;
const SCRATCH: usize = 64 * 1024;
const EVENTS: usize = 1024;

struct Driver {
    core: ShardCore,
    io: SysIo,
    /// The WebSocket listener (`None` while draining).
    listener: Option<OwnedFd>,
    /// The wss listener (`None` while draining or without wss).
    wss_listener: Option<OwnedFd>,
    /// Where the listeners bind, for listening again after an undrain.
    listen: SocketAddr,
    wss_listen: Option<SocketAddr>,
    backlog: i32,
    /// The drain in force (its number), 0 for none.
    drain_gen: u64,
    scratch: Box<[u8]>,
    plain: Vec<u8>,
    quic_events: Vec<QuicEvent>,
    events: Vec<libc::epoll_event>,
    stats: Arc<ShardStats>,
    max_sockets: usize,
}

async fn run(spec: ShardSpec, listener: OwnedFd, wss: Option<OwnedFd>, udp: Option<UdpSocket>) {
    // Marks the shard stopped however its thread ends, a panic included.
    let stats = spec.stats.clone();
    crate::stats::on_thread_exit(move || {
        stats
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst)
    });
    #[cfg(debug_assertions)]
    inject_panic(spec.id);
    // SAFETY: epoll_create1 takes no pointers; the result is checked below.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epfd >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `epfd` is a fresh descriptor (checked above) that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    epoll_add(epfd, listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)
        .expect("registering the listener with epoll");
    if let Some(w) = &wss {
        epoll_add(epfd, w.as_raw_fd(), WSS_LISTENER, libc::EPOLLIN as u32)
            .expect("registering the wss listener with epoll");
    }
    let epoch = Instant::now();
    let quic = match (spec.quic.clone(), udp) {
        (Some(q), Some(sock)) => Some(start_quic(&spec, q, sock, epfd).await),
        _ => None,
    };
    let uring = match spec.send_path {
        crate::config::SendPath::Syscall => None,
        crate::config::SendPath::Uring => {
            match crate::uring::UringSender::new(spec.core.fanout_slice as u32, u32::MAX) {
                Ok(u) => {
                    let f = u.features();
                    tracing::info!(
                        shard = spec.id,
                        fixed_files = f.fixed_files,
                        fixed_buffer = f.fixed_buffer,
                        defer_taskrun = f.defer_taskrun,
                        "fanout sends on io_uring"
                    );
                    Some(u)
                }
                Err(e) => {
                    tracing::warn!(shard = spec.id, error = %e, "io_uring unavailable; fanout sends one send() per device");
                    None
                }
            }
        }
    };
    // An admin switch to send() calls may have come before the shard started.
    let paused = spec
        .stats
        .uring_paused
        .load(std::sync::atomic::Ordering::SeqCst);
    spec.stats
        .uring_active
        .set(i64::from(uring.is_some() && !paused));
    spec.stats
        .uring_ready
        .store(uring.is_some(), std::sync::atomic::Ordering::SeqCst);
    let core = ShardCore::new(
        spec.core.clone(),
        spec.stats.clone(),
        rand::rngs::SmallRng::seed_from_u64(spec.seed),
        epoch,
    );
    let d = Rc::new(RefCell::new(Driver {
        core,
        io: SysIo {
            epfd,
            tls: spec.wss.as_ref().map(|(_, c)| TlsSessions::new(c.clone())),
            quic,
            sources: (spec.max_per_source > 0)
                .then(|| crate::sources::SourceLimit::new(spec.max_per_source)),
            uring,
            uring_paused: false,
            results: Vec::new(),
        },
        listener: Some(listener),
        wss_listener: wss,
        listen: spec.listen,
        wss_listen: spec.wss.as_ref().map(|w| w.0),
        backlog: spec.backlog,
        drain_gen: 0,
        scratch: vec![0u8; SCRATCH].into_boxed_slice(),
        plain: Vec::with_capacity(SCRATCH),
        quic_events: Vec::new(),
        events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        stats: spec.stats.clone(),
        max_sockets: spec.max_sockets,
    }));
    spec.stats
        .listening
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let rx = spec.rx.connect().await;
    let catchups = spec.catchups.connect().await;
    let stop = Rc::new(std::cell::Cell::new(false));

    // The tick socket: the ticker thread writes to it when input reaches a quiet shard and
    // once the poller's deadline has passed ([`spawn_ticker`]); read through glommio's own
    // ring, it wakes the poller without glommio's timer.
    let tick_fd = spec
        .tick
        .sock
        .try_clone()
        .map(OwnedFd::from)
        .expect("duplicating the shard's tick socket");
    // SAFETY: `tick_fd` is ours (a fresh dup of the tick socket), handed over whole.
    let tick_sock = unsafe { glommio::net::UnixStream::from_raw_fd(tick_fd.into_raw_fd()) };
    // Rung by the cue handler when it starts a fanout on an idle shard: the poller, asleep for
    // up to `poll_idle_max` (no device input is coming), runs the fanout's next slice at once.
    let (fanout_bell, fanout_rung) = glommio::channels::local_channel::new_bounded::<()>(1);
    let poller = {
        let (d, stop, poll, idle_max) = (d.clone(), stop.clone(), spec.poll, spec.poll_idle_max);
        let timer = spec.tick.clone();
        glommio::spawn_local(async move {
            use futures_lite::AsyncReadExt;
            let mut tick_sock = tick_sock;
            let mut tick_buf = [0u8; 4096];
            // `poll` while anything happens (input is taken in batches, at most one turn a
            // `poll`); once a turn finds nothing, the ticker watches the shard's sockets and
            // input wakes it at once, `idle_max` (or the next QUIC timer) at the latest. If the
            // ticker cannot watch them, the interval doubles from `poll` to `idle_max` instead.
            let mut interval = poll;
            let mut last = Instant::now();
            let (mut watched, mut watching) = (false, true);
            let epfd = d.borrow().io.epfd;
            while !stop.get() {
                let armed = Instant::now();
                if interval == QUIET {
                    interval = match timer.watch(epfd, &mut watched) {
                        Ok(()) => quiet_wait(&d.borrow(), armed, idle_max),
                        Err(e) => {
                            watching = false;
                            tracing::warn!(error = %e, "the ticker cannot watch this shard's sockets; polling them instead");
                            poll
                        }
                    };
                }
                timer.arm(armed + interval);
                let by_ticker = futures_lite::future::or(
                    futures_lite::future::or(
                        async {
                            glommio::timer::sleep(interval).await;
                            false
                        },
                        async {
                            // Only a deadline passed writes here; an error (the ticker gone at
                            // exit) must not spin: wait out the interval then.
                            if tick_sock.read(&mut tick_buf).await.is_err() {
                                glommio::timer::sleep(interval).await;
                            }
                            true
                        },
                    ),
                    async {
                        // A fanout started (the sender lives as long as the shard; once it is
                        // gone, wait out the interval).
                        if fanout_rung.recv().await.is_none() {
                            glommio::timer::sleep(interval).await;
                        }
                        false
                    },
                )
                .await;
                timer.disarm();
                let elapsed = last.elapsed();
                last = Instant::now();
                let mut drv = d.borrow_mut();
                if by_ticker {
                    let waited = last.saturating_duration_since(armed);
                    if waited > interval + RESCUE_LATE {
                        drv.stats.timer_rescues.inc();
                    } else if waited < interval {
                        drv.stats.input_wakes.inc();
                    }
                }
                drv.stats.poll_turns.inc();
                let mut active = drv.poll_once(elapsed);
                if drv.core.fanout_pending() {
                    // One slice per turn, then straight back (after the reactor ran).
                    drv.fan();
                    active = true;
                }
                // The drain supervisor ends the process once every shard says so.
                if drv.drain_gen != 0 && drv.core.drained() {
                    let gen = drv.drain_gen;
                    drv.stats
                        .drained_gen
                        .store(gen, std::sync::atomic::Ordering::SeqCst);
                }
                // Admissions may have given events new slots: the link sends their newest cue.
                let Driver { core, stats, .. } = &mut *drv;
                core.drain_catchups(|ev| {
                    if catchups.try_send(ev).is_err() {
                        stats.catchups_dropped.inc();
                    }
                });
                drop(drv);
                interval = if d.borrow().core.fanout_pending() {
                    FANOUT_TURN
                } else if active {
                    poll
                } else if watching {
                    // Quiet: the next wait watches the sockets (above).
                    QUIET
                } else {
                    (interval * 2).min(idle_max)
                };
            }
        })
        .detach()
    };

    tracing::info!(shard = spec.id, cpu = ?spec.cpu, listen = %spec.listen, wss = ?spec.wss.as_ref().map(|w| w.0), quic = ?spec.quic.as_ref().map(|q| q.listen), "shard started");
    let mut next: Option<ShardMsg> = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        match msg {
            ShardMsg::Cue(cue) => {
                // Every cue already waiting in the channel is taken in before any is written,
                // so the fanouts run most urgent first (a critical cue behind 60 flood cues
                // does not wait for their fanouts) and the backlog the link's lane looks at
                // (to hold background cues back) is all of this shard's work. Then the first
                // slice now if nothing else was being fanned out; the poller runs the rest
                // between its other work.
                let was_idle = !d.borrow().core.fanout_pending();
                let mut closed = false;
                d.borrow_mut().core.take_cue_at(cue, unix_us());
                loop {
                    match futures_lite::future::poll_once(rx.recv()).await {
                        Some(Some(ShardMsg::Cue(c))) => {
                            d.borrow_mut().core.take_cue_at(c, unix_us());
                        }
                        Some(Some(other)) => {
                            next = Some(other);
                            break;
                        }
                        Some(None) => {
                            closed = true;
                            break;
                        }
                        None => break,
                    }
                }
                let mut drv = d.borrow_mut();
                if was_idle && drv.core.fanout_pending() {
                    drv.fan();
                    if drv.core.fanout_pending() {
                        // Full: the poller is awake or about to be.
                        let _ = fanout_bell.try_send(());
                    }
                } else {
                    let backlog = drv.core.fanout_backlog() as i64;
                    drv.stats.fanout_backlog.set(backlog);
                }
                drop(drv);
                if closed {
                    break;
                }
            }
            ShardMsg::Drain(window, gen) => {
                // Listeners first: closed, they leave the port's SO_REUSEPORT group, so a
                // successor on the same port takes every new device (with
                // net.ipv4.tcp_migrate_req=1 also those queued here and not yet accepted).
                // WebSocket devices accepted before are admitted and closed with the rest over
                // the window (core::admit); new QUIC devices get 503 (the socket stays).
                let mut drv = d.borrow_mut();
                drv.stop_accepting();
                drv.drain_gen = gen;
                drv.core.start_drain(window, now());
                tracing::info!(
                    shard = spec.id,
                    ?window,
                    sessions = drv.core.open_sessions(),
                    "draining: listeners closed"
                );
            }
            ShardMsg::Undrain => {
                let mut drv = d.borrow_mut();
                drv.core.stop_drain();
                drv.drain_gen = 0;
                match drv.start_accepting() {
                    Ok(()) => tracing::info!(shard = spec.id, "drain ended: listening again"),
                    Err(e) => {
                        tracing::error!(shard = spec.id, error = %e, "drain ended but a listener could not bind again; this shard takes no new devices")
                    }
                }
            }
            ShardMsg::Retired(ev) => d.borrow_mut().core.retire(&ev),
            ShardMsg::Keys(k) => {
                d.borrow_mut().core.set_auth(Some(k));
                tracing::info!(shard = spec.id, "token keys reloaded");
            }
            ShardMsg::Stop => break,
        }
    }
    stop.set(true);
    let _ = poller.await;
    let mut drv = d.borrow_mut();
    drv.stop_accepting();
    drv.close_all();
    if let Some(q) = drv.io.quic.as_mut() {
        q.close_all_now(Instant::now());
    }
    drop(epoll);
    tracing::info!(shard = spec.id, "shard stopped");
}

/// Debug builds only (the tests' binaries): `CUE_EDGE_FAULT_PANIC_SHARD=ID:MS` makes shard `ID`
/// panic `MS` ms after it starts, so a test can show that a dead shard ends the process.
#[cfg(debug_assertions)]
fn inject_panic(id: usize) {
    let Ok(v) = std::env::var("CUE_EDGE_FAULT_PANIC_SHARD") else {
        return;
    };
    let parsed = v
        .split_once(':')
        .and_then(|(i, ms)| Some((i.parse::<usize>().ok()?, ms.parse::<u64>().ok()?)));
    let Some((shard, ms)) = parsed else {
        panic!("CUE_EDGE_FAULT_PANIC_SHARD={v}: want ID:MS");
    };
    if shard == id {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(ms)).await;
            panic!("injected fault: CUE_EDGE_FAULT_PANIC_SHARD={shard}:{ms}");
        })
        .detach();
    }
}

fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix_ms: unix_us() / 1000,
    }
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call writes into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Driver {
    /// One fanout slice of the fanouts in progress, most urgent first. Counts its CPU time
    /// (split between the transports by deliveries) and wall time, and the delivery lag of
    /// every cue whose fanout finished.
    fn fan(&mut self) {
        // The send path the operator chose last (`POST /admin/send-path`), read once a slice.
        let paused = self
            .stats
            .uring_paused
            .load(std::sync::atomic::Ordering::Relaxed);
        if paused != self.io.uring_paused {
            self.io.uring_paused = paused;
            let on = self.io.uring.is_some() && !paused;
            tracing::info!(uring = on, "fanout send path switched");
        }
        let (t0, cpu0) = (Instant::now(), thread_cpu_ns());
        let fan = self.core.fanout(&mut self.io);
        if fan.quic > 0 {
            // Packetise and send what the fanout wrote into QUIC streams, now.
            self.quic_round(now(), false);
        }
        let spent = t0.elapsed();
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        // Split by deliveries (a cue's event usually has devices of both transports; the bench
        // gives each transport its own event, so each cue is one or the other).
        let quic_cpu = if fan.ws + fan.quic == 0 {
            0
        } else {
            (cpu as u128 * fan.quic as u128 / (fan.ws + fan.quic) as u128) as u64
        };
        let stats = &self.stats;
        stats.fanout_backlog.set(self.core.fanout_backlog() as i64);
        stats.fanout_cpu_ns.add(cpu - quic_cpu);
        stats.quic_cpu_ns.add(quic_cpu);
        stats.fanout_time.observe_us(spent.as_micros() as u64);
        if let Some(u) = self.io.uring.as_mut() {
            let (submits, sends) = u.take_counts();
            stats.uring_submits.add(submits);
            stats.uring_sends.add(sends);
        }
        let done_us = unix_us();
        let now_ms = done_us / 1000;
        self.core.take_finished(|f| {
            let lag_ms = now_ms.saturating_sub(f.published_ms);
            stats.delivery_lag[f.class as usize].observe_us(lag_ms.saturating_mul(1000));
            stats.fanout_finished(f, done_us);
        });
    }

    /// One poll; returns whether anything happened (input, accepts, QUIC work).
    fn poll_once(&mut self, tick: Duration) -> bool {
        let now = now();
        let mut quic_ready = false;
        let mut active = false;
        // A few rounds so a burst (many accepts, then their requests) is handled in one tick.
        for _ in 0..4 {
            // SAFETY: `events` holds EVENTS entries the kernel may fill; `epfd` is ours.
            let n = unsafe {
                libc::epoll_wait(self.io.epfd, self.events.as_mut_ptr(), EVENTS as i32, 0)
            };
            if n <= 0 {
                break;
            }
            active = true;
            for i in 0..n as usize {
                let ev = self.events[i];
                let (flags, key) = (ev.events, ev.u64);
                match key {
                    LISTENER => self.accept_all(now, false),
                    WSS_LISTENER => self.accept_all(now, true),
                    QUIC_SOCKET => quic_ready = true,
                    _ => self.on_event(ConnKey(key), flags, now),
                }
            }
            if (n as usize) < EVENTS {
                break;
            }
        }
        self.core.tick(now, tick, &mut self.io);
        if self.io.quic.is_some() {
            active |= self.quic_round(now, quic_ready);
        }
        active
    }

    /// One pass of QUIC work: read datagrams (when the socket is readable), fire timers, hand
    /// the connections' events to the core, send what is queued. Its CPU time is counted as
    /// handshake work or as QUIC (fanout and acknowledgements) work.
    fn quic_round(&mut self, now: Now, readable: bool) -> bool {
        let Some(q) = self.io.quic.as_mut() else {
            return false;
        };
        if !readable && !q.busy(now.mono) {
            return false;
        }
        let cpu0 = thread_cpu_ns();
        q.receive(now.mono, readable);
        q.fire_timers(now.mono);
        self.apply_quic(now);
        let q = self.io.quic.as_mut().expect("checked");
        q.transmit(now.mono);
        let cpu = thread_cpu_ns().saturating_sub(cpu0);
        if q.take_handshake_flag() {
            self.stats.quic_handshake_cpu_ns.add(cpu);
        } else {
            self.stats.quic_cpu_ns.add(cpu);
        }
        true
    }

    /// Hands QUIC connection events to the core until none are left (bounded).
    fn apply_quic(&mut self, now: Now) {
        let mut evs = std::mem::take(&mut self.quic_events);
        for _ in 0..8 {
            evs.clear();
            let Some(q) = self.io.quic.as_mut() else {
                break;
            };
            q.drive(now.mono, &mut evs);
            if evs.is_empty() {
                break;
            }
            for ev in evs.drain(..) {
                let Driver { core, io, .. } = self;
                match ev {
                    QuicEvent::Opened(id) => {
                        let key = core.accept(Link::quic(id), now);
                        if let Some(q) = io.quic.as_mut() {
                            q.set_key(id, key);
                        }
                    }
                    QuicEvent::Input(id, bytes) => {
                        if let Some(k) = io.quic.as_ref().and_then(|q| q.key(id)) {
                            core.on_input(k, &bytes, now, io);
                        }
                    }
                    QuicEvent::Writable(id) => {
                        if let Some(k) = io.quic.as_ref().and_then(|q| q.key(id)) {
                            core.on_writable(k, io);
                        }
                    }
                    QuicEvent::Gone(k, reason) => core.on_gone(k, reason, io),
                }
            }
        }
        self.quic_events = evs;
    }

    fn accept_all(&mut self, now: Now, tls: bool) {
        let listener = match if tls {
            &self.wss_listener
        } else {
            &self.listener
        } {
            Some(l) => l.as_raw_fd(),
            None => return,
        };
        let want_peer = self.io.sources.is_some();
        for _ in 0..4096 {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut peer_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let (addr, len) = if want_peer {
                (
                    (&mut peer as *mut libc::sockaddr_storage).cast::<libc::sockaddr>(),
                    &mut peer_len as *mut libc::socklen_t,
                )
            } else {
                (std::ptr::null_mut(), std::ptr::null_mut())
            };
            // SAFETY: `listener` is a live listening socket of this shard; `addr`/`len` are
            // null (no peer address wanted) or point at `peer` and its length, both live.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    addr,
                    len,
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
                        if self.stats.accept_out_of_fds.get() % 1000 == 0 {
                            tracing::warn!("accept: out of file descriptors (raise LimitNOFILE; see cue-tune check)");
                        }
                        self.stats.accept_out_of_fds.inc();
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
                // SAFETY: `fd` came from accept4 above and is owned by nobody else yet.
                unsafe { libc::close(fd) };
                continue;
            }
            if self.core.handshakes_full() {
                // Too many in handshake: answer 503 before reading anything (plain TCP only;
                // a wss device would need a TLS handshake first, so it is just closed).
                self.stats.handshakes_shed.inc();
                refuse_at_accept(
                    fd,
                    tls,
                    "edge busy: too many handshakes",
                    self.core.retry_hint(),
                );
                continue;
            }
            // Only with the limit on is the peer address read (and filled in by accept4).
            if let Some(src) = self.io.sources.as_mut() {
                if peer_ip(&peer).is_some_and(|ip| !src.admit(fd, ip)) {
                    self.stats.source_shed.inc();
                    refuse_at_accept(
                        fd,
                        tls,
                        "too many connections from this address",
                        self.core.retry_hint(),
                    );
                    continue;
                }
            }
            set_nodelay(fd);
            if tls {
                let added = self.io.tls.as_mut().map(|t| t.add(fd));
                if !matches!(added, Some(Ok(()))) {
                    tracing::warn!("wss: could not start a TLS session; dropping connection");
                    if let Some(s) = self.io.sources.as_mut() {
                        s.release(fd);
                    }
                    // SAFETY: `fd` is ours (from accept4) and registered nowhere yet.
                    unsafe { libc::close(fd) };
                    continue;
                }
            }
            if !tls {
                // The fanout's sends name it by its slot (a socket the table cannot take is
                // sent to by its fd).
                if let Some(u) = self.io.uring.as_mut() {
                    u.register(fd);
                }
            }
            let key = self.core.accept(Link::ws(fd), now);
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
            core,
            io,
            scratch,
            plain,
            stats,
            ..
        } = self;
        let Some(link) = core.link_of(key) else {
            return;
        };
        let fd = link.fd();
        let tls = io.tls.as_ref().is_some_and(|t| t.is_tls(fd));
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            // Bounded: at most 4 scratch-fulls per device per tick, so one chatty device cannot
            // starve the others.
            for _ in 0..4 {
                // SAFETY: `fd` is a live device socket; `scratch` is a buffer of the length
                // passed.
                let n = unsafe {
                    libc::recv(
                        fd,
                        scratch.as_mut_ptr().cast(),
                        scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0 {
                    let got = &scratch[..n as usize];
                    if tls {
                        let t = io.tls.as_mut().expect("tls socket");
                        plain.clear();
                        match t.read(fd, got, plain) {
                            TlsRead::Ok => {}
                            TlsRead::Eof => {
                                core.on_eof(key, io);
                                return;
                            }
                            TlsRead::Failed => {
                                stats.tls_failures.inc();
                                core.on_error(key, io);
                                return;
                            }
                        }
                        if !plain.is_empty() {
                            core.on_input(key, plain, now, io);
                        }
                        if let Some(t) = io.tls.as_mut() {
                            if core.link_of(key).is_some() && t.wants_writable(fd) {
                                io.watch(fd, key, true);
                            }
                        }
                    } else {
                        core.on_input(key, got, now, io);
                    }
                    if (n as usize) < scratch.len() || core.link_of(key).is_none() {
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
        if flags & libc::EPOLLOUT as u32 != 0 && core.link_of(key).is_some() {
            if tls {
                let t = io.tls.as_mut().expect("tls socket");
                match t.flush(fd) {
                    None => {
                        core.on_error(key, io);
                        return;
                    }
                    Some(false) => return,
                    Some(true) => {
                        let wants = t.core_wants(fd);
                        if !wants {
                            io.watch(fd, key, false);
                            return;
                        }
                    }
                }
            }
            core.on_writable(key, io);
        }
    }

    /// Closes the listeners: the kernel takes them out of the port's `SO_REUSEPORT` group at
    /// once, so new connections go to the other listeners on the port.
    fn stop_accepting(&mut self) {
        self.stats
            .listening
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for l in [self.listener.take(), self.wss_listener.take()]
            .into_iter()
            .flatten()
        {
            // SAFETY: `epfd` and `l` are live descriptors this shard owns; EPOLL_CTL_DEL takes
            // no event pointer. Dropping `l` afterwards closes it.
            unsafe {
                libc::epoll_ctl(
                    self.io.epfd,
                    libc::EPOLL_CTL_DEL,
                    l.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Binds the listeners again (after an undrain).
    fn start_accepting(&mut self) -> std::io::Result<()> {
        if self.listener.is_none() {
            let l = bind_listener(self.listen, self.backlog)?;
            epoll_add(self.io.epfd, l.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
            self.listener = Some(l);
        }
        if let (None, Some(addr)) = (&self.wss_listener, self.wss_listen) {
            let l = bind_listener(addr, self.backlog)?;
            epoll_add(
                self.io.epfd,
                l.as_raw_fd(),
                WSS_LISTENER,
                libc::EPOLLIN as u32,
            )?;
            self.wss_listener = Some(l);
        }
        self.stats
            .listening
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn close_all(&mut self) {
        self.core.close_all(&mut self.io);
    }
}

/// Joins the forwarding mesh (when there are several shards) and starts the QUIC driver.
async fn start_quic(spec: &ShardSpec, q: QuicSpec, sock: UdpSocket, epfd: RawFd) -> QuicDriver {
    let inbox: Rc<RefCell<VecDeque<Forwarded>>> = Rc::new(RefCell::new(VecDeque::new()));
    let (mesh_index, peers) = match q.mesh {
        Some(mesh) => {
            let (senders, mut receivers) = mesh.join().await.expect("joining the QUIC mesh");
            let me = senders.peer_id();
            let cap = q.settings.forward_queue;
            for (_, rx) in receivers.streams() {
                let inbox = inbox.clone();
                glommio::spawn_local(async move {
                    while let Some(f) = rx.recv().await {
                        let mut b = inbox.borrow_mut();
                        // Bounded: beyond it a forwarded datagram is dropped (QUIC recovers).
                        if b.len() < cap {
                            b.push_back(f);
                        }
                    }
                })
                .detach();
            }
            (me as u16, Some(Rc::new(senders)))
        }
        None => (0, None),
    };
    epoll_add(epfd, sock.raw_fd(), QUIC_SOCKET, libc::EPOLLIN as u32)
        .expect("registering the QUIC socket with epoll");
    let slot = match q.steer.as_ref().map(|s| s.join(sock.raw_fd())) {
        Some(Ok(slot)) => {
            spec.stats.quic_steer_slot.set(slot as i64);
            Some(slot)
        }
        Some(Err(e)) => {
            tracing::warn!(shard = spec.id, error = %e, "QUIC steering off for this shard");
            None
        }
        None => None,
    };
    tracing::info!(shard = spec.id, mesh_index, steer_slot = ?slot, local = %sock.local, gso = sock.gso, gro = sock.gro, "QUIC endpoint up");
    QuicDriver::new(
        sock,
        crate::quic::config::endpoint(
            mesh_index,
            slot.unwrap_or(crate::quic::cid::NO_SLOT),
            spec.seed,
            q.reset_key,
        ),
        crate::quic::config::server(q.crypto.clone(), &q.settings),
        q.settings.clone(),
        mesh_index,
        peers,
        inbox,
        spec.stats.clone(),
        Instant::now(),
    )
}

/// Answers a fresh connection 503 with `reason` and a `Retry-After` of `retry` seconds before
/// anything is read (plain TCP only: a wss device would need a TLS handshake first, so it is
/// just closed), and closes it.
fn refuse_at_accept(fd: RawFd, tls: bool, reason: &str, retry: u32) {
    if !tls {
        let mut out = Vec::with_capacity(160);
        crate::ws::handshake::write_refusal(503, reason, Some(retry), &mut out);
        // SAFETY: `fd` is ours (from accept4); `out` is a live buffer of its length. Best
        // effort on a fresh socket, whose send buffer takes the whole answer.
        unsafe { libc::send(fd, out.as_ptr().cast(), out.len(), libc::MSG_NOSIGNAL) };
    }
    // SAFETY: as above; nothing else holds `fd`.
    unsafe { libc::close(fd) };
}

/// The IP address in a peer address accept4 filled in (`None` if it filled in none, or of
/// another family).
fn peer_ip(ss: &libc::sockaddr_storage) -> Option<std::net::IpAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(std::net::IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(std::net::IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed with it.
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
    // SAFETY: `ev` is a live epoll_event the kernel copies.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The real I/O: non-blocking `send` (through TLS for `wss` sockets), epoll interest changes,
/// and QUIC stream writes.
struct SysIo {
    epfd: RawFd,
    tls: Option<TlsSessions>,
    quic: Option<QuicDriver>,
    /// Per-source counts, when `max_connections_per_source` is on.
    sources: Option<crate::sources::SourceLimit>,
    /// The fanout's send ring (`send_path = "uring"` and the kernel allows it).
    uring: Option<crate::uring::UringSender>,
    /// Fanouts go out by `send()` although the ring is there (`POST /admin/send-path`).
    uring_paused: bool,
    /// One result per entry of the batch in flight.
    results: Vec<Sent>,
}

impl SysIo {
    fn watch(&mut self, fd: RawFd, key: ConnKey, writable: bool) {
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if writable {
            events |= libc::EPOLLOUT as u32;
        }
        let mut ev = libc::epoll_event { events, u64: key.0 };
        // SAFETY: `ev` is a live epoll_event the kernel copies.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }
}

fn plain_send(fd: RawFd, bytes: &[u8]) -> Sent {
    loop {
        // SAFETY: `bytes` is a live buffer of the length passed; MSG_NOSIGNAL keeps a closed
        // peer from raising SIGPIPE.
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

impl Io for SysIo {
    fn send_cue_batch(&mut self, cue: &EncodedCue, batch: &mut [BatchSend]) {
        // Plain WebSocket sockets go on the ring; wss (through rustls) and QUIC (into a stream)
        // are sent inline, as `send` does. Taken out for the batch so `send` can be called.
        let ring = if self.uring_paused {
            None
        } else {
            self.uring.take()
        };
        let Some(mut u) = ring else {
            for b in batch {
                b.result = self.send(b.link, cue.frame(b.encoding));
            }
            return;
        };
        let mut results = std::mem::take(&mut self.results);
        results.clear();
        results.resize(batch.len(), Sent::Closed);
        u.begin();
        for (i, b) in batch.iter().enumerate() {
            let frame = cue.frame(b.encoding);
            let plain = b.link.transport == Transport::Ws
                && !self.tls.as_ref().is_some_and(|t| t.is_tls(b.link.fd()));
            if plain {
                u.push(i, b.link.fd(), frame, &mut results);
            } else {
                results[i] = self.send(b.link, frame);
            }
        }
        u.finish(&mut results);
        for (b, r) in batch.iter_mut().zip(&results) {
            b.result = *r;
        }
        self.uring = Some(u);
        self.results = results;
    }

    fn send(&mut self, link: Link, bytes: &[u8]) -> Sent {
        match link.transport {
            Transport::Ws => match self.tls.as_mut() {
                Some(t) if t.is_tls(link.fd()) => t.send(link.fd(), bytes),
                _ => plain_send(link.fd(), bytes),
            },
            Transport::Quic => match self.quic.as_mut() {
                Some(q) => q.stream_write(link.id, bytes),
                None => Sent::Closed,
            },
        }
    }

    fn want_write(&mut self, link: Link, key: ConnKey, want: bool) {
        match link.transport {
            Transport::Ws => {
                let fd = link.fd();
                let watch = match self.tls.as_mut() {
                    Some(t) if t.is_tls(fd) => t.want_write(fd, want),
                    _ => want,
                };
                self.watch(fd, key, watch);
            }
            // quinn-proto reports a writable stream by itself after a blocked write.
            Transport::Quic => {}
        }
    }

    fn close(&mut self, link: Link, code: u16, reason: &str) {
        match link.transport {
            Transport::Ws => {
                if let Some(t) = self.tls.as_mut() {
                    if t.is_tls(link.fd()) {
                        t.remove(link.fd());
                    }
                }
                if let Some(s) = self.sources.as_mut() {
                    s.release(link.fd());
                }
                // A registered socket stays open while the ring holds it.
                if let Some(u) = self.uring.as_mut() {
                    u.unregister(link.fd());
                }
                // Closing removes the fd from the epoll set.
                // SAFETY: the core gave the record up: nothing refers to this fd any more.
                unsafe { libc::close(link.fd()) };
            }
            Transport::Quic => {
                if let Some(q) = self.quic.as_mut() {
                    q.close(link.id, code, reason);
                }
            }
        }
    }
}
