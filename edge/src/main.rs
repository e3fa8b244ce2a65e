//! `cue-edge`: thread-per-core device fanout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cue_common::config::load_toml;
use cue_edge::admin::{self, AdminState};
use cue_edge::config::EdgeConfig;
use cue_edge::relay_link::{self, Control, LinkConfig, LinkStats};
use cue_edge::shard::{self, QuicSpec, ShardSpec};
use cue_edge::stats::ShardStats;
use cue_edge::tls::{CertSource, CertStore};

/// Cue edge: holds device connections (WebSocket, WebSocket over TLS, QUIC) on pinned
/// thread-per-core shards and fans cues from the origin out to them.
///
/// Settings come from `--config FILE` (TOML, keys as in docs/config.md), then flags override
/// them. With neither, it runs on loopback with embedded defaults.
#[derive(Parser, Debug)]
#[command(name = "cue-edge", version = cue_build_info::LONG_VERSION)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, for a log shipper); also CUE_LOG_FORMAT.
    #[arg(long, env = "CUE_LOG_FORMAT", default_value = "text", hide_env = true)]
    log_format: cue_common::logging::LogFormat,
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the settings (file and flags) and every file they name, print each problem, and
    /// exit 0 (fine) or 2 (problems) without starting or writing anything.
    #[arg(long)]
    check_config: bool,
    /// Origin relay address, HOST:PORT (a name or an IP); repeat for several origins
    /// [default: 127.0.0.1:7001].
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// Device WebSocket listen address (SO_REUSEPORT: shared by shards and processes)
    /// [default: 127.0.0.1:8080].
    #[arg(long)]
    ws: Option<SocketAddr>,
    /// Device WebSocket-over-TLS (wss://) listen address; off unless given.
    #[arg(long)]
    wss: Option<SocketAddr>,
    /// Device QUIC (UDP, ALPN cue/1) listen address, or 'none' to turn QUIC off
    /// [default: 127.0.0.1:8443].
    #[arg(long)]
    quic: Option<String>,
    /// PEM certificate chain for wss and QUIC (with --tls-key); reloaded on SIGHUP. Without
    /// both, a self-signed certificate is generated and its SHA-256 fingerprint logged.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Relay TLS: CA the origins' certificates must chain to (with --relay-cert, --relay-key).
    #[arg(long)]
    origin_ca: Option<PathBuf>,
    /// Relay TLS: this edge's certificate chain (PEM), presented to origins.
    #[arg(long)]
    relay_cert: Option<PathBuf>,
    /// Relay TLS: this edge's private key (PEM).
    #[arg(long)]
    relay_key: Option<PathBuf>,
    /// Allow plaintext links to origins off loopback (anyone on the path reads and injects cues).
    #[arg(long)]
    relay_insecure: bool,
    /// WebSocket connections per shard from one source address (IPv4, or IPv6 /64); 0 = off
    /// [default: 0].
    #[arg(long)]
    max_connections_per_source: Option<u32>,
    /// QUIC handshakes in flight per shard before new ones are refused [default: 1024].
    #[arg(long)]
    quic_max_handshakes: Option<usize>,
    /// QUIC handshakes in flight per shard above which devices get a stateless retry;
    /// 0 = always [default: 256].
    #[arg(long)]
    quic_retry_above: Option<usize>,
    /// QUIC idle timeout, seconds (a silent connection is closed) [default: 60].
    #[arg(long)]
    quic_idle_timeout_s: Option<u64>,
    /// QUIC keep-alive, seconds (< idle timeout) [default: 30].
    #[arg(long)]
    quic_keep_alive_s: Option<u64>,
    /// Do not steer QUIC datagrams to their connection's socket across processes (steering is
    /// a reuseport eBPF program, on by default; it needs root: CAP_BPF, CAP_NET_ADMIN,
    /// CAP_SYS_ADMIN, else a warning).
    #[arg(long)]
    no_quic_steer: bool,
    /// Older spelling of --no-quic-steer (`--quic-steer false`); kept for scripts.
    #[arg(long, hide = true)]
    quic_steer: Option<bool>,
    /// Admin/metrics listen address [default: 127.0.0.1:9100].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Shards (pinned executors) [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
    /// Cores to pin shards to, comma-separated; 'none' disables pinning [default: 0..cores].
    #[arg(long)]
    cpus: Option<String>,
    /// File with a shared HS256 token secret (CUE_AUTH_SECRET wins); must exist.
    #[arg(long)]
    auth_secret_file: Option<PathBuf>,
    /// Public token key set (JWKS) [default: ./cue-data/token-keys.pub.json when no secret is set].
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Turn token checks off: any device may subscribe. Local experiments only.
    #[arg(long)]
    no_auth: bool,
    /// Hand devices no admission tickets (every admission checks the token's signature).
    #[arg(long)]
    no_admit_tickets: bool,
    /// Admission-ticket secret shared by the host's edges [default: ./cue-data/admit-ticket.secret].
    #[arg(long)]
    ticket_secret_file: Option<PathBuf>,
    /// QUIC stateless-reset secret shared by the host's edges [default: ./cue-data/quic-reset.secret].
    #[arg(long)]
    quic_reset_secret_file: Option<PathBuf>,
    /// Most sessions this process holds [default: what the fd limit allows].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Device input poll interval, ms [default: 1].
    #[arg(long)]
    poll_ms: Option<u64>,
    /// Idle seconds before a ping; silent devices close one interval later [default: 30].
    #[arg(long)]
    ping_interval_s: Option<u64>,
    /// Drain window, seconds (SIGTERM, POST /admin/drain) [default: 30].
    #[arg(long)]
    drain_window_s: Option<u64>,
    /// Edge id sent to origins [default: edge-PID].
    #[arg(long)]
    edge_id: Option<String>,
    /// Seed for jitter (retry hints, backoff) [default: from pid and time].
    #[arg(long)]
    seed: Option<u64>,
    /// Listen backlog of the device listeners (the kernel caps it at net.core.somaxconn)
    /// [default: 4096].
    #[arg(long)]
    backlog: Option<i32>,
    /// How fanouts leave: batched sends on each shard's io_uring, or one send() per device
    /// [default: uring].
    #[arg(long, value_enum)]
    send_path: Option<cue_edge::config::SendPath>,
}

fn file_and_flags(cli: &Cli) -> Result<EdgeConfig, String> {
    let mut c: EdgeConfig = load_toml(cli.config.as_deref())?;
    if !cli.origins.is_empty() {
        c.origins = cli.origins.clone();
    }
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = cli.$f.clone() { c.$f = v; } )* };
    }
    over!(
        ws,
        admin,
        poll_ms,
        ping_interval_s,
        drain_window_s,
        quic_max_handshakes,
        quic_retry_above,
        max_connections_per_source,
        quic_idle_timeout_s,
        quic_keep_alive_s,
        quic_steer,
        send_path,
        backlog
    );
    for (f, v) in [
        (&mut c.origin_ca, &cli.origin_ca),
        (&mut c.relay_cert, &cli.relay_cert),
        (&mut c.relay_key, &cli.relay_key),
    ] {
        if v.is_some() {
            *f = v.clone();
        }
    }
    c.relay_insecure |= cli.relay_insecure;
    if cli.no_quic_steer {
        c.quic_steer = false;
    }
    if cli.wss.is_some() {
        c.wss = cli.wss;
    }
    if let Some(q) = &cli.quic {
        c.quic = if q == "none" {
            None
        } else {
            Some(
                q.parse()
                    .map_err(|_| format!("--quic: '{q}' is not IP:PORT or none"))?,
            )
        };
    }
    if cli.tls_cert.is_some() {
        c.tls_cert = cli.tls_cert.clone();
    }
    if cli.tls_key.is_some() {
        c.tls_key = cli.tls_key.clone();
    }
    if cli.shards.is_some() {
        c.shards = cli.shards;
    }
    if cli.max_connections.is_some() {
        c.max_connections = cli.max_connections;
    }
    if cli.edge_id.is_some() {
        c.edge_id = cli.edge_id.clone();
    }
    if cli.seed.is_some() {
        c.seed = cli.seed;
    }
    if cli.keys.is_some() {
        c.keys = cli.keys.clone();
    }
    if cli.auth_secret_file.is_some() {
        c.auth_secret_file = cli.auth_secret_file.clone();
    }
    c.no_auth |= cli.no_auth;
    if cli.no_admit_tickets {
        c.admit_tickets = false;
    }
    if let Some(f) = &cli.ticket_secret_file {
        c.ticket_secret_file = f.clone();
    }
    if let Some(f) = &cli.quic_reset_secret_file {
        c.quic_reset_secret_file = f.clone();
    }
    if let Some(s) = &cli.cpus {
        c.cpus = Some(if s == "none" {
            vec![]
        } else {
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("--cpus: '{x}' is not a core number"))
                })
                .collect::<Result<_, _>>()?
        });
    }
    Ok(c)
}

/// What a start reads before it binds anything, read only: token keys, the relay
/// certificate's tenants, the TLS files, the host secrets (a missing one must be creatable).
/// `--check-config` stops after it; a start runs it too, so that a bad file named by the
/// config exits 2 (a config problem) before anything starts.
fn preflight(cfg: &EdgeConfig) -> Vec<String> {
    use cue_common::config::check_host_secret;
    let mut problems = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            problems.push(e);
        }
    };
    let keys = cue_common::config::verifier(cfg.auth());
    let key_set = matches!(keys, Ok(Some(cue_common::keys::Verifier::Keys(_))));
    note(keys.map(|_| ()));
    note(tenant_scope(cfg).map(|_| ()));
    if cfg.wss.is_some() || cfg.quic.is_some() {
        note(
            CertStore::new(cfg.cert_source())
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
    }
    if let Some(files) = cfg.relay_tls() {
        note(
            cue_common::tls::relay_client_config(&files)
                .map(|_| ())
                .map_err(|e| format!("relay TLS: {e}")),
        );
    }
    if cfg.quic.is_some() {
        note(
            check_host_secret(&cfg.quic_reset_secret_file)
                .map_err(|e| format!("quic reset secret: {e}")),
        );
    }
    if key_set && cfg.admit_tickets {
        note(
            check_host_secret(&cfg.ticket_secret_file)
                .map_err(|e| format!("admission ticket secret: {e}")),
        );
    }
    problems
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cue_common::build::set_commit(cue_build_info::COMMIT);
    cue_common::logging::init_logging(cli.log_format, cli.check_config);
    let cfg = match cue_common::config::settle(
        "cue-edge",
        file_and_flags(&cli),
        EdgeConfig::validate,
        preflight,
        cli.check_config,
        cli.config.as_deref(),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cue-edge: {e}");
            ExitCode::from(1)
        }
    }
}

/// The stateless-reset key of the edges on this host: HMAC-SHA256 of the host's reset secret
/// (its own file, shared by the host's edges so they reset each other's devices).
fn quic_reset_key(file: &std::path::Path) -> Result<[u8; 32], String> {
    let s = cue_common::config::host_secret(file).map_err(|e| format!("quic reset secret: {e}"))?;
    Ok(cue_common::token::TokenKeys::new(&s)
        .map_err(|e| format!("quic reset secret {}: {e}", file.display()))?
        .derive("cue-edge/quic-stateless-reset/v1"))
}

/// Liveness counts "no origin linked" from the start until the first link.
fn link_stats_start(st: &AdminState) {
    st.link
        .changed_ms
        .set(cue_common::time::unix_now_ms() as i64);
}

/// Ends the process (exit 70) if a shard or the relay link stops while the edge is not
/// stopping: a dead shard's devices would get nothing while the rest looks healthy, and without
/// the link no device gets anything. Under systemd the unit restarts.
fn supervise(st: Arc<AdminState>, stopping: Arc<AtomicBool>) {
    // A panic in a shard or the link ends the process from the panic itself: unwinding out of
    // glommio's executor can block (its reactor waits for the io_uring operations in flight,
    // such as the link's read from its origin; tried: the link's thread never ended, so its
    // exit flag below never rose). Panics elsewhere (an admin request's task) keep the
    // default behaviour.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let name = std::thread::current().name().unwrap_or("").to_string();
        if name.starts_with("cue-shard-") {
            tracing::error!(thread = %name, "a shard stopped unexpectedly; exiting (70) so the process is restarted");
            std::process::exit(70);
        }
        if name.starts_with("cue-relay-link") {
            tracing::error!(thread = %name, "the relay link stopped unexpectedly; exiting (70) so the process is restarted");
            std::process::exit(70);
        }
    }));
    std::thread::Builder::new()
        .name("cue-supervisor".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Some(i) = st
                .shards
                .iter()
                .position(|s| s.stopped.load(Ordering::SeqCst))
            {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                tracing::error!(
                    shard = i,
                    "a shard stopped unexpectedly; exiting (70) so the process is restarted"
                );
                std::process::exit(70);
            }
            if st.link.stopped.load(Ordering::SeqCst) && !stopping.load(Ordering::SeqCst) {
                tracing::error!(
                    "the relay link stopped unexpectedly; exiting (70) so the process is restarted"
                );
                std::process::exit(70);
            }
        })
        .expect("spawn supervisor thread");
}

/// The tenants this edge's relay certificate names (docs/tenants.md), `None` for every tenant
/// (no relay certificate, or one naming none). Read at start: a certificate naming other
/// tenants takes a restart to change whose devices are admitted (the origin applies it at the
/// next link).
fn tenant_scope(cfg: &EdgeConfig) -> Result<Option<cue_common::tenant::Scope>, String> {
    let Some(path) = &cfg.relay_cert else {
        return Ok(None);
    };
    let chain = cue_common::tls::read_chain(path).map_err(|e| format!("relay TLS: {e}"))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("relay_cert {}: no certificate", path.display()))?;
    let scope = cue_common::tenant::scope_of_cert(leaf.as_ref())
        .map_err(|e| format!("relay_cert {}: {e}", path.display()))?;
    if let Some(s) = &scope {
        tracing::info!(tenants = %s.describe(), "this edge carries these tenants only (its relay certificate names them)");
    }
    Ok(scope)
}

fn run(cfg: EdgeConfig) -> Result<(), String> {
    let keys = cue_common::config::verifier(cfg.auth())?;
    let tenants = tenant_scope(&cfg)?;

    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let nshards = cfg.shards.unwrap_or(ncpu);
    let cpus: Vec<usize> = cfg.cpus.clone().unwrap_or_else(|| (0..ncpu).collect());

    // Raise soft limits to hard and say what caps this process.
    // Listeners, epoll and io_uring fds, origin links, logs; plus per shard a few sockets
    // beyond its session limit, to answer excess devices with a 503 instead of a silent close.
    const REFUSAL_HEADROOM: usize = 32;
    let reserved = 64 + (8 + REFUSAL_HEADROOM as u64) * nshards as u64;
    let limits = cue_common::limits::raise_soft_limits().map_err(|e| format!("limits: {e}"))?;
    for r in &limits.raised {
        tracing::info!("raised {r}");
    }
    let fd_cap = limits.max_connections(reserved) as usize;
    tracing::info!("{}", limits.capacity_line(reserved));
    let capacity = cfg.max_connections.map_or(fd_cap, |m| m.min(fd_cap));
    if cfg.max_connections.is_some_and(|m| m > fd_cap) {
        tracing::warn!(
            configured = cfg.max_connections,
            fd_cap,
            "max_connections exceeds what the fd limit allows; capped"
        );
    }
    let per_shard = capacity.div_ceil(nshards).max(1);

    let seed = cfg.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ (std::process::id() as u64) << 32
    });
    // TLS: one certificate for wss and QUIC, reloadable on SIGHUP.
    let certs = if cfg.wss.is_some() || cfg.quic.is_some() {
        let store = CertStore::new(cfg.cert_source()).map_err(|e| e.to_string())?;
        match store.source() {
            CertSource::SelfSigned => tracing::info!(
                sha256 = %store.fingerprint(),
                "TLS: self-signed certificate generated (pin this SHA-256 fingerprint, or pass --tls-cert/--tls-key)"
            ),
            CertSource::Files { cert, .. } => tracing::info!(
                sha256 = %store.fingerprint(),
                cert = %cert.display(),
                "TLS: certificate loaded"
            ),
        }
        Some(store)
    } else {
        None
    };
    let wss_tls = match (&certs, cfg.wss) {
        (Some(c), Some(_)) => Some(c.wss_config().map_err(|e| e.to_string())?),
        _ => None,
    };
    let quic_tls = match (&certs, cfg.quic) {
        (Some(c), Some(_)) => Some(c.quic_config().map_err(|e| e.to_string())?),
        _ => None,
    };
    let steer = match cfg.quic {
        Some(addr) if cfg.quic_steer && quic_tls.is_some() => {
            match cue_edge::quic::steer::Steering::open(
                addr.port(),
                cue_edge::quic::cid::CID_LEN as u8,
            ) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::warn!(error = %e, "QUIC steering across processes off: a device whose address changes may reach another process on the port and reconnect");
                    None
                }
            }
        }
        _ => None,
    };
    let reset_key = match cfg.quic {
        Some(_) => Some(quic_reset_key(&cfg.quic_reset_secret_file)?),
        None => None,
    };
    // Tickets spare a signature check; with a shared secret there is none to spare.
    let tickets = match &keys {
        Some(cue_common::keys::Verifier::Keys(_)) if cfg.admit_tickets => {
            let s = cue_common::config::host_secret(&cfg.ticket_secret_file)
                .map_err(|e| format!("admission ticket secret: {e}"))?;
            Some(cue_common::keys::TicketKey::new(&s))
        }
        _ => None,
    };
    let mesh = (nshards > 1 && cfg.quic.is_some())
        .then(|| glommio::channels::channel_mesh::MeshBuilder::full(nshards, 1024));

    let shard_stats: Vec<Arc<ShardStats>> = (0..nshards)
        .map(|_| Arc::new(ShardStats::default()))
        .collect();
    let mut senders = Vec::new();
    let mut catchup_rx = Vec::new();
    let mut handles = Vec::new();
    let mut ticker = shard::Ticker::new().map_err(|e| format!("ticker epoll set: {e}"))?;
    for (i, stats) in shard_stats.iter().enumerate() {
        let tick = ticker
            .shard_timer()
            .map_err(|e| format!("shard {i}: tick socket: {e}"))?;
        let (tx, rx) = glommio::channels::shared_channel::new_bounded(cfg.shard_queue);
        senders.push(tx);
        let (catchup_tx, c_rx) =
            glommio::channels::shared_channel::new_bounded(cue_edge::core::MAX_CATCHUPS);
        catchup_rx.push(c_rx);
        let spec = ShardSpec {
            id: i,
            cpu: if cpus.is_empty() {
                None
            } else {
                Some(cpus[i % cpus.len()])
            },
            listen: cfg.ws,
            backlog: cfg.backlog,
            core: cue_edge::core::CoreConfig {
                tenants: tenants.clone(),
                ..cfg.core(keys.clone(), tickets.clone(), per_shard, nshards)
            },
            poll: Duration::from_millis(cfg.poll_ms),
            poll_idle_max: Duration::from_millis(cfg.poll_idle_max_ms),
            io_memory: cfg.io_memory_kib * 1024,
            stats: stats.clone(),
            rx,
            catchups: catchup_tx,
            seed: seed.wrapping_add(i as u64 * 0x9E37_79B9),
            max_sockets: per_shard + REFUSAL_HEADROOM,
            max_per_source: cfg.max_connections_per_source,
            send_path: cfg.send_path,
            tick,
            wss: cfg.wss.zip(wss_tls.clone()),
            quic: match (cfg.quic, &quic_tls) {
                (Some(listen), Some(crypto)) => Some(QuicSpec {
                    listen,
                    crypto: crypto.clone(),
                    settings: cfg.quic_settings(per_shard + REFUSAL_HEADROOM),
                    mesh: mesh.clone(),
                    steer: steer.clone(),
                    reset_key,
                }),
                _ => None,
            },
        };
        handles.push(shard::spawn(spec).map_err(|e| format!("shard {i}: {e} (ws {})", cfg.ws))?);
    }
    shard::spawn_ticker(ticker).map_err(|e| format!("ticker thread: {e}"))?;

    let relay_tls = match cfg.relay_tls() {
        None => {
            if cfg.relay_insecure {
                tracing::warn!("relay links are plaintext (--relay-insecure): anyone on the path can read and inject cues");
            }
            None
        }
        Some(files) => Some(Arc::new(
            cue_common::tls::Reloadable::new(move || cue_common::tls::relay_client_config(&files))
                .map_err(|e| format!("relay TLS: {e}"))?,
        )),
    };
    let link_stats = Arc::new(LinkStats::default());
    let (ctl_tx, ctl_rx) = crossbeam_channel::bounded(16);
    let link = relay_link::spawn(
        LinkConfig {
            origins: cfg.origins.clone(),
            edge_id: cfg
                .edge_id
                .clone()
                .unwrap_or_else(|| format!("edge-{}", std::process::id())),
            heartbeat: Duration::from_millis(cfg.relay_heartbeat_ms),
            dead_after: Duration::from_millis(cfg.relay_dead_after_ms),
            backoff_base: Duration::from_millis(cfg.backoff_base_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            seed,
            tls: relay_tls.clone(),
            cache_events: cfg.relay_cache_events,
            hold_background_above: cfg.fanout_slice * cue_edge::relay_link::HOLD_SLICES,
            shard_stats: shard_stats.clone(),
        },
        senders,
        catchup_rx,
        ctl_rx,
        link_stats.clone(),
    )
    .map_err(|e| e.to_string())?;

    let admin_listener =
        std::net::TcpListener::bind(cfg.admin).map_err(|e| format!("admin {}: {e}", cfg.admin))?;
    let admin_state = Arc::new(AdminState {
        shards: shard_stats,
        link: link_stats,
        control: ctl_tx.clone(),
        draining: AtomicBool::new(false),
        drain_window: Duration::from_secs(cfg.drain_window_s),
        capacity: capacity as u64,
        quic_tls: quic_tls.clone(),
        unlinked_unhealthy: (cfg.origin_unlinked_unhealthy_s > 0)
            .then(|| Duration::from_secs(cfg.origin_unlinked_unhealthy_s)),
        serving: Default::default(),
        stopping: Arc::new(AtomicBool::new(false)),
        drain_gen: Default::default(),
        keys: std::sync::RwLock::new(keys.clone()),
        refused: Default::default(),
    });
    if keys.is_none() {
        tracing::warn!(
            "auth is off: /admin/drain, /admin/undrain and /admin/send-path take no token"
        );
    }
    link_stats_start(&admin_state);
    let stopping = admin_state.stopping.clone();
    supervise(admin_state.clone(), stopping.clone());
    {
        let st = admin_state.clone();
        std::thread::Builder::new()
            .name("cue-admin".into())
            .spawn(move || admin::serve(admin_listener, st))
            .map_err(|e| format!("admin thread: {e}"))?;
    }
    tracing::info!(ws = %cfg.ws, wss = ?cfg.wss, quic = ?cfg.quic, admin = %cfg.admin, shards = nshards, capacity, origins = ?cfg.origins, "cue-edge running");

    // SIGTERM/SIGINT: drain over the window, then stop; a second signal stops at once.
    let window = Duration::from_secs(cfg.drain_window_s);
    {
        let st = admin_state.clone();
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ])
        .map_err(|e| format!("signals: {e}"))?;
        let certs = certs.clone();
        let keys_mode = matches!(keys, Some(cue_common::keys::Verifier::Keys(_)));
        let cfg_auth = cfg.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("cue-signals".into())
            .spawn(move || {
                let mut n = 0;
                for sig in signals.forever() {
                    if sig == signal_hook::consts::SIGHUP {
                        // New handshakes get the new certificate; connections stay.
                        // Token keys: a public set is read again and sent to the shards;
                        // a shared secret comes from the environment and stays.
                        if keys_mode {
                            match cue_common::config::verifier(cfg_auth.auth()) {
                                Ok(Some(k)) => {
                                    *st.keys.write().expect("admin keys lock") = Some(k.clone());
                                    let _ = st.control.send(Control::Keys(k));
                                    tracing::info!("SIGHUP: token key set reloaded");
                                }
                                Ok(None) => {}
                                Err(e) => tracing::error!(error = %e, "SIGHUP: token key set NOT reloaded; keeping the one in force"),
                            }
                        }
                        if let Some(t) = &relay_tls {
                            match t.reload() {
                                Ok(()) => tracing::info!("SIGHUP: relay certificates reloaded (new links)"),
                                Err(e) => tracing::error!(error = %e, "SIGHUP: relay certificates NOT reloaded; keeping the ones in force"),
                            }
                        }
                        match certs.as_ref().map(|c| c.reload()) {
                            Some(Ok(fp)) => tracing::info!(sha256 = %fp, "SIGHUP: TLS certificate reloaded"),
                            Some(Err(e)) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the current certificate"),
                            None => tracing::info!("SIGHUP: no TLS configured; nothing to reload"),
                        }
                        continue;
                    }
                    n += 1;
                    if n == 1 {
                        // A drain already in force (POST /admin/drain) ends the process too.
                        tracing::info!(signal = sig, ?window, "draining, then stopping");
                        admin::begin_drain(&st, window);
                    } else {
                        tracing::info!(signal = sig, "second signal: stopping now");
                        stopping.store(true, Ordering::SeqCst);
                        let _ = st.control.send(Control::Stop);
                    }
                }
            })
            .map_err(|e| format!("signal thread: {e}"))?;
    }
    let _ = link.join();
    stopping.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("cue-edge stopped");
    Ok(())
}
