//! `cue-edge` configuration: one typed struct with embedded loopback defaults, loaded from TOML
//! (`--config`) with flags on top, and a `validate()` that reports every problem at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::core::CoreConfig;
use crate::ws::query::QueryLimits;

/// How a shard writes a fanout's cue to its WebSocket devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SendPath {
    /// Batched sends on the shard's own io_uring.
    #[default]
    Uring,
    /// One `send()` system call per device.
    Syscall,
}

impl SendPath {
    /// The flag's and the config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SendPath::Uring => "uring",
            SendPath::Syscall => "syscall",
        }
    }
}

/// Edge settings. Every field has a default; each says its trade-off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Origin relay addresses to link to, `HOST:PORT` each (a name is resolved at every dial);
    /// all of them are linked and cues are de-duplicated by seq. Default `["127.0.0.1:7001"]`.
    pub origins: Vec<String>,
    /// Device WebSocket listener, shared by every shard and every `cue-edge` process on the host
    /// (SO_REUSEPORT). Default `127.0.0.1:8080`.
    pub ws: SocketAddr,
    /// Device WebSocket-over-TLS (`wss://`) listener; off unless set. Each TLS session costs
    /// memory per device (docs/edge.md: measured next to plain ws), so offer it only where
    /// devices need it (browsers on https pages). Default none.
    pub wss: Option<SocketAddr>,
    /// Device QUIC listener (UDP, SO_REUSEPORT, ALPN `cue/1`); `None` turns QUIC off.
    /// Default `127.0.0.1:8443`.
    pub quic: Option<SocketAddr>,
    /// PEM certificate chain for wss and QUIC. With neither this nor `tls_key`, a self-signed
    /// certificate is generated at start and its SHA-256 fingerprint logged (devices must pin
    /// it). Reloaded on SIGHUP without dropping connections. Default none.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// Relay TLS: the CA origins' certificates must chain to (PEM); with `relay_cert` and
    /// `relay_key` the links to the origins speak TLS 1.3, the origin must name the host dialled,
    /// and the edge presents its own certificate. Default none (plaintext, loopback only).
    pub origin_ca: Option<PathBuf>,
    /// Relay TLS: this edge's certificate chain (PEM), presented to origins. Default none.
    pub relay_cert: Option<PathBuf>,
    /// Relay TLS: this edge's private key (PEM). Default none.
    pub relay_key: Option<PathBuf>,
    /// Allow plaintext links to origins that are not on loopback (anyone on the path can read
    /// and inject cues; logged as a warning). Default false: such an edge refuses to start.
    pub relay_insecure: bool,
    /// QUIC keep-alive, seconds: the edge PINGs a connection that has sent nothing this long,
    /// so NAT bindings stay open and a gone device is noticed. Default 30 (as `ping_interval_s`);
    /// shorter finds dead devices sooner and costs a packet per device per interval.
    pub quic_keep_alive_s: u64,
    /// QUIC idle timeout, seconds: a connection that hears nothing this long is closed
    /// (`ping_timeout`). Must exceed the keep-alive. Default 60.
    pub quic_idle_timeout_s: u64,
    /// QUIC handshakes in flight per shard before new ones are refused (CONNECTION_REFUSED).
    /// Default 1024. Bounds the memory a handshake flood can take.
    pub quic_max_handshakes: usize,
    /// Handshakes in flight per shard above which devices get a stateless retry (address
    /// validation: one more round trip, no state kept before it). 0 = always. Default 256.
    pub quic_retry_above: usize,
    /// Unacknowledged bytes per QUIC connection; beyond, the stream blocks and the device is
    /// conflated like a full socket. Default 65536.
    pub quic_send_window: u64,
    /// UDP socket send/receive buffer per shard, KiB. Default 8192: a fanout to many devices
    /// brings their acknowledgements back in one burst; too small a buffer drops them.
    pub quic_socket_buffer_kib: usize,
    /// Steer QUIC datagrams to the socket that owns their connection with a reuseport eBPF
    /// program shared by every process on the port (docs/edge.md), so a device whose address
    /// changes keeps its connection even when several `cue-edge` processes share the port.
    /// Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); without them the edge logs why and runs
    /// unsteered (forwarding between its own shards only). Default true.
    pub quic_steer: bool,
    /// Admin/metrics HTTP listener. Default `127.0.0.1:9100`. Several processes on one host
    /// need distinct admin addresses.
    pub admin: SocketAddr,
    /// Shards (executors), default one per core. More shards than cores only adds switching.
    pub shards: Option<usize>,
    /// Cores to pin shards to, in order (shard i -> cpus[i % len]). Default: shard i on core
    /// i % cores. Empty list = no pinning.
    pub cpus: Option<Vec<usize>>,
    /// Shared token secret (prefer `CUE_AUTH_SECRET` or `auth_secret_file`).
    pub auth_secret: Option<String>,
    /// Secret file. Default `./cue-data/auth.secret` (what `cue-origin` writes on first start).
    pub auth_secret_file: Option<PathBuf>,
    /// The public token key set (JWKS) to verify device tokens with. Default
    /// `./cue-data/token-keys.pub.json` (what `cue-origin` writes beside its signing keys) when
    /// no secret is set; a configured file must exist. Read again on SIGHUP, for new sessions.
    pub keys: Option<PathBuf>,
    /// Token checks off (local experiments; logged as a warning). Default false.
    pub no_auth: bool,
    /// Hand devices admission tickets (with a public key set only): a device admitted after a
    /// signature check gets a ticket (WebSocket: `Set-Cookie: cue_admit=...`; QUIC: `"ticket"`
    /// in the `ok` line) that, presented with the same token and events, admits it at any
    /// process of this host for an HMAC instead of a signature check, so a reconnect storm
    /// costs what it costs with HS256 (docs/protocol.md). Default true.
    pub admit_tickets: bool,
    /// The admission-ticket secret every edge process of the host shares (made, 0600, by the
    /// first one that finds none). Delete it and restart the edges to void every ticket.
    /// Default `./cue-data/admit-ticket.secret`.
    pub ticket_secret_file: PathBuf,
    /// The QUIC stateless-reset secret every edge process of the host shares (made, 0600, by
    /// the first one that finds none), its own secret, never derived from token keys. Default
    /// `./cue-data/quic-reset.secret`.
    pub quic_reset_secret_file: PathBuf,
    /// Turn interval in ms of a shard's device poller while input keeps coming (upgrades,
    /// pongs, closes; never cue delivery): input is taken in batches at most this often.
    /// Default 1. A quiet shard is woken by its next input at once (docs/edge.md).
    pub poll_ms: u64,
    /// Longest wait in ms of a quiet shard (its last turn found nothing) before its sweep of
    /// timers and pings; sooner for a due QUIC timer, and device input wakes it before that.
    /// Default 16: an idle shard wakes ~60 times a second.
    pub poll_idle_max_ms: u64,
    /// Idle seconds before a ping; silent devices are closed one interval later. Default 30.
    pub ping_interval_s: u64,
    /// Seconds allowed for the upgrade request (QUIC: the hello line), counted from the
    /// accept: a device that trickles bytes gets no longer. Default 10.
    pub handshake_timeout_s: u64,
    /// Connections in handshake per shard (accepted, not yet admitted) before new accepts are
    /// answered 503 at once, before anything is read: a slow or idle flood cannot take the
    /// session pool. Default 1024 (a shard admits thousands per second, so a real burst rarely
    /// waits on it).
    pub max_handshakes: usize,
    /// WebSocket connections (in handshake or open) per shard from one source address (an
    /// IPv4 address or an IPv6 /64); beyond, 503 before anything is read. 0 = off (the
    /// default: a carrier-grade NAT puts thousands of devices behind one address).
    pub max_connections_per_source: u32,
    /// Seconds allowed for a device's close frame after ours. Default 5.
    pub close_timeout_s: u64,
    /// Most sessions this process holds (default: what its fd limit allows). Beyond: 503.
    pub max_connections: Option<usize>,
    /// Most events one device may subscribe to. Default 16.
    pub max_events_per_device: usize,
    /// Devices of one named tenant this process admits at once (split evenly among its
    /// shards); beyond, `429` naming the tenant and the quota. 0: no limit. Default 0: the
    /// process's own capacity bounds them all; set it where tenants share an edge and one must
    /// not take every slot. The default tenant has none unless `[tenant_quotas._default]`.
    pub tenant_max_devices: usize,
    /// Events one named tenant's devices may follow at once in this process (split among its
    /// shards); a device that would follow one more is `429`. 0: no limit. Default 0.
    pub tenant_max_events: usize,
    /// Quotas of given tenants, `[tenant_quotas.acme]` with `max_devices` and/or `max_events`
    /// (an absent one takes the default above); `_default` names the default tenant.
    pub tenant_quotas: std::collections::BTreeMap<String, TenantQuotaConfig>,
    /// Most events per shard with a slot (its devices' events, and others' newest cues while
    /// there is room). A device's new event reuses the slot no device followed longest, so only
    /// the events followed at once on one shard are limited, never the events ever published.
    /// Default 4096.
    pub max_events: usize,
    /// Most events whose newest cue the relay link holds, to give a shard's device the current
    /// cue of an event the shard has no slot for. Beyond, the event whose newest cue came
    /// longest ago is pushed out (a device of it then waits for its next cue). About 200 bytes
    /// each. Default 65536.
    pub relay_cache_events: usize,
    /// Largest frame a device may send, bytes. Default 4096 (devices send only control frames).
    pub max_frame: usize,
    /// Largest message a device may send, bytes. Default 16384.
    pub max_message: usize,
    /// Unsent bytes held per device before it is closed as a slow consumer. Default 65536.
    pub max_output: usize,
    /// Largest upgrade request head, bytes. Default 8192.
    pub max_request: usize,
    /// Drain window in seconds (SIGTERM, `POST /admin/drain`). Default 30.
    pub drain_window_s: u64,
    /// `/healthz` (liveness) answers 503 once no origin has been linked for this many seconds
    /// (since start or since the last link dropped): an edge cut off that long serves only
    /// stale cues. 0 = never. Default 30 (`/readyz` is 503 as soon as no origin is linked).
    pub origin_unlinked_unhealthy_s: u64,
    /// Retry-After / retry-after hint range in seconds, low end. Default 5.
    pub retry_after_min_s: u32,
    /// Retry-After / retry-after hint range in seconds, high end. Default 60.
    pub retry_after_max_s: u32,
    /// Relay heartbeat, ms. Default 1000.
    pub relay_heartbeat_ms: u64,
    /// Drop an origin link silent this long, ms. Default 5000.
    pub relay_dead_after_ms: u64,
    /// First re-dial delay, ms. Default 100.
    pub backoff_base_ms: u64,
    /// Longest re-dial delay, ms. Default 10000.
    pub backoff_max_ms: u64,
    /// Edge id in HELLO (logs/metrics at the origin). Default `edge-<pid>`.
    pub edge_id: Option<String>,
    /// glommio io_uring registered memory per ring, KiB. Default 256. glommio registers it in
    /// three rings per shard, and it counts against RLIMIT_MEMLOCK.
    pub io_memory_kib: usize,
    /// Listen backlog. Default 4096 (the kernel caps it at net.core.somaxconn).
    pub backlog: i32,
    /// Messages in each shard's channel from the relay link. Default 64. What does not fit
    /// waits in the shard's lane in the link, newest per event ([`crate::lane`]), so a small
    /// channel means superseded cues are dropped before the shard fans them out.
    pub shard_queue: usize,
    /// Devices one fanout slice visits before the shard serves input, accepts, pings and QUIC
    /// again. Default 1024 (about 5-10 ms of writes on this project's test machine).
    pub fanout_slice: usize,
    /// How fanouts leave: `uring` submits each slice's sends as one batch on an io_uring the
    /// shard owns (registered sockets, the frame in a registered buffer; [`crate::uring`]),
    /// `syscall` makes one `send()` call per device. Default `uring`; a shard whose ring cannot
    /// be made (io_uring off in the kernel or by a sandbox) logs a warning and uses `syscall`
    /// (`cue_edge_uring_active` says which each shard uses).
    pub send_path: SendPath,
    /// Seed for jitter (retry hints, backoff). Default: from the pid and time.
    pub seed: Option<u64>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            origins: vec!["127.0.0.1:7001".into()],
            ws: "127.0.0.1:8080".parse().expect("literal"),
            wss: None,
            quic: Some("127.0.0.1:8443".parse().expect("literal")),
            tls_cert: None,
            tls_key: None,
            origin_ca: None,
            relay_cert: None,
            relay_key: None,
            relay_insecure: false,
            quic_keep_alive_s: 30,
            quic_idle_timeout_s: 60,
            quic_max_handshakes: 1024,
            quic_retry_above: 256,
            quic_send_window: 65536,
            quic_socket_buffer_kib: 8192,
            quic_steer: true,
            admin: "127.0.0.1:9100".parse().expect("literal"),
            shards: None,
            cpus: None,
            auth_secret: None,
            auth_secret_file: None,
            keys: None,
            no_auth: false,
            admit_tickets: true,
            ticket_secret_file: "./cue-data/admit-ticket.secret".into(),
            quic_reset_secret_file: "./cue-data/quic-reset.secret".into(),
            poll_ms: 1,
            poll_idle_max_ms: 16,
            ping_interval_s: 30,
            handshake_timeout_s: 10,
            max_handshakes: 1024,
            max_connections_per_source: 0,
            close_timeout_s: 5,
            max_connections: None,
            max_events_per_device: 16,
            tenant_max_devices: 0,
            tenant_max_events: 0,
            tenant_quotas: Default::default(),
            max_events: 4096,
            relay_cache_events: 65_536,
            max_frame: 4096,
            max_message: 16384,
            max_output: 65536,
            max_request: 8192,
            drain_window_s: 30,
            origin_unlinked_unhealthy_s: 30,
            retry_after_min_s: 5,
            retry_after_max_s: 60,
            relay_heartbeat_ms: 1000,
            relay_dead_after_ms: 5000,
            backoff_base_ms: 100,
            backoff_max_ms: 10_000,
            edge_id: None,
            io_memory_kib: 256,
            backlog: 4096,
            shard_queue: 64,
            fanout_slice: 1024,
            send_path: SendPath::Uring,
            seed: None,
        }
    }
}

/// One tenant's quotas as configured (`[tenant_quotas.NAME]`); an absent one takes the default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuotaConfig {
    /// Devices admitted at once in this process; 0: no limit.
    pub max_devices: Option<usize>,
    /// Events followed at once in this process; 0: no limit.
    pub max_events: Option<usize>,
}

impl EdgeConfig {
    /// The relay's TLS files, when all three are set.
    pub fn relay_tls(&self) -> Option<cue_common::tls::RelayTlsFiles> {
        Some(cue_common::tls::RelayTlsFiles {
            cert: self.relay_cert.clone()?,
            key: self.relay_key.clone()?,
            ca: self.origin_ca.clone()?,
        })
    }

    /// Every problem, one line each; empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                e.push(msg)
            }
        };
        check(
            !self.origins.is_empty(),
            "origins: at least one origin relay address is needed".into(),
        );
        for t in self.tenant_quotas.keys() {
            check(
                t == "_default" || cue_common::cue::valid_tenant(t),
                format!("tenant_quotas.{t}: not a tenant (1-32 chars of [a-z0-9-]) nor _default"),
            );
        }
        for o in &self.origins {
            let r = cue_common::config::host_port(o);
            check(
                r.is_ok(),
                format!("origins: {}", r.err().unwrap_or_default()),
            );
        }
        check(
            self.ws != self.admin,
            format!("ws and admin: both are {}; they must differ", self.ws),
        );
        if let Some(w) = self.wss {
            check(
                w != self.ws && w != self.admin,
                format!("wss: {w} is also the ws or admin address"),
            );
        }
        let relay_tls = [&self.origin_ca, &self.relay_cert, &self.relay_key]
            .iter()
            .filter(|f| f.is_some())
            .count();
        check(
            relay_tls == 0 || relay_tls == 3,
            "origin_ca, relay_cert, relay_key: set all three or none".into(),
        );
        for o in &self.origins {
            let loopback = cue_common::config::host_port(o).is_ok_and(|(h, _)| {
                h == "localhost"
                    || h.trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            check(
                loopback || relay_tls == 3 || self.relay_insecure,
                format!("origins: {o} is not loopback and relay TLS is off; set origin_ca, relay_cert and relay_key, or relay_insecure to accept plaintext"),
            );
        }
        check(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert/tls_key: give both or neither (neither: a self-signed certificate)".into(),
        );
        check(
            self.quic_keep_alive_s >= 1 && self.quic_idle_timeout_s > self.quic_keep_alive_s,
            format!(
                "quic_keep_alive_s/quic_idle_timeout_s: need 1 <= keep-alive ({}) < idle timeout ({})",
                self.quic_keep_alive_s, self.quic_idle_timeout_s
            ),
        );
        check(
            (1..=1 << 20).contains(&self.quic_max_handshakes),
            "quic_max_handshakes: must be 1..=1048576".into(),
        );
        check(
            self.quic_retry_above <= self.quic_max_handshakes,
            "quic_retry_above: must be <= quic_max_handshakes".into(),
        );
        check(
            (4096..=1 << 30).contains(&self.quic_send_window),
            "quic_send_window: must be 4096..=1073741824".into(),
        );
        check(
            (64..=1 << 20).contains(&self.quic_socket_buffer_kib),
            "quic_socket_buffer_kib: must be 64..=1048576".into(),
        );
        check(self.shards != Some(0), "shards: must be at least 1".into());
        check(
            self.shards.unwrap_or(1) <= 1024,
            "shards: at most 1024".into(),
        );
        check(
            (1..=1000).contains(&self.poll_ms),
            format!("poll_ms: {} must be 1..=1000", self.poll_ms),
        );
        check(
            self.poll_idle_max_ms >= self.poll_ms && self.poll_idle_max_ms <= 1000,
            format!(
                "poll_idle_max_ms: {} must be poll_ms ({})..=1000",
                self.poll_idle_max_ms, self.poll_ms
            ),
        );
        check(
            self.ping_interval_s >= 1,
            "ping_interval_s: must be >= 1".into(),
        );
        check(
            self.handshake_timeout_s >= 1,
            "handshake_timeout_s: must be >= 1".into(),
        );
        check(
            self.max_connections_per_source <= 1_000_000,
            format!(
                "max_connections_per_source: {} must be 0 (off)..=1000000",
                self.max_connections_per_source
            ),
        );
        check(
            (1..=1_000_000).contains(&self.max_handshakes),
            format!(
                "max_handshakes: {} must be 1..=1000000",
                self.max_handshakes
            ),
        );
        check(
            self.close_timeout_s >= 1,
            "close_timeout_s: must be >= 1".into(),
        );
        check(
            self.max_connections != Some(0),
            "max_connections: must be > 0".into(),
        );
        check(
            (1..=256).contains(&self.max_events_per_device),
            format!(
                "max_events_per_device: {} must be 1..=256",
                self.max_events_per_device
            ),
        );
        check(
            (1..=65535).contains(&self.max_events),
            format!("max_events: {} must be 1..=65535", self.max_events),
        );
        check(
            (1..=10_000_000).contains(&self.relay_cache_events),
            format!(
                "relay_cache_events: {} must be 1..=10000000",
                self.relay_cache_events
            ),
        );
        check(
            (125..=1 << 20).contains(&self.max_frame),
            format!("max_frame: {} must be 125..=1048576", self.max_frame),
        );
        check(
            self.max_message >= self.max_frame,
            "max_message: must be >= max_frame".into(),
        );
        check(
            self.max_output >= 1024,
            "max_output: must be >= 1024".into(),
        );
        check(
            (1024..=65536).contains(&self.max_request),
            format!("max_request: {} must be 1024..=65536", self.max_request),
        );
        check(
            self.retry_after_min_s >= 1 && self.retry_after_min_s <= self.retry_after_max_s,
            format!(
                "retry_after_min_s/retry_after_max_s: need 1 <= min ({}) <= max ({})",
                self.retry_after_min_s, self.retry_after_max_s
            ),
        );
        check(
            self.relay_heartbeat_ms >= 10,
            "relay_heartbeat_ms: must be >= 10".into(),
        );
        check(
            self.relay_dead_after_ms > self.relay_heartbeat_ms,
            "relay_dead_after_ms: must exceed relay_heartbeat_ms".into(),
        );
        check(
            self.backoff_base_ms >= 1 && self.backoff_base_ms <= self.backoff_max_ms,
            "backoff_base_ms/backoff_max_ms: need 1 <= base <= max".into(),
        );
        check(
            (16..=65536).contains(&self.io_memory_kib),
            format!("io_memory_kib: {} must be 16..=65536", self.io_memory_kib),
        );
        check(self.backlog >= 16, "backlog: must be >= 16".into());
        check(
            (1..=1 << 20).contains(&self.fanout_slice),
            "fanout_slice: must be 1..=1048576".into(),
        );
        check(
            (16..=1 << 20).contains(&self.shard_queue),
            "shard_queue: must be 16..=1048576".into(),
        );
        if let Some(s) = &self.auth_secret {
            check(
                s.len() >= cue_common::token::MIN_SECRET_LEN,
                format!(
                    "auth_secret: {} bytes, needs at least {}",
                    s.len(),
                    cue_common::token::MIN_SECRET_LEN
                ),
            );
        }
        if let Some(id) = &self.edge_id {
            check(
                (1..=64).contains(&id.len()),
                "edge_id: must be 1-64 bytes".into(),
            );
        }
        e
    }

    /// The token settings (defaults in `./cue-data`).
    pub fn auth(&self) -> cue_common::config::AuthSettings<'_> {
        cue_common::config::AuthSettings::service(
            self.no_auth,
            self.auth_secret.as_deref(),
            self.auth_secret_file.as_deref(),
            self.keys.as_deref(),
            "any device may subscribe",
        )
    }

    /// The per-tenant quotas of one of `nshards` shards: the process's, divided (rounded up).
    pub fn tenant_quotas(&self, nshards: usize) -> crate::core::tenants::Quotas {
        use crate::core::tenants::{Quota, Quotas};
        let n = nshards.max(1);
        let per = |v: usize| if v == 0 { 0 } else { v.div_ceil(n) };
        let defaults = Quota {
            max_devices: per(self.tenant_max_devices),
            max_events: per(self.tenant_max_events),
        };
        let by_name = self
            .tenant_quotas
            .iter()
            .map(|(t, q)| {
                let q = Quota {
                    max_devices: per(q.max_devices.unwrap_or(self.tenant_max_devices)),
                    max_events: per(q.max_events.unwrap_or(self.tenant_max_events)),
                };
                (t.clone(), q)
            })
            .collect();
        Quotas { defaults, by_name }
    }

    /// The device-logic part, given the token keys, the ticket key and this shard's session
    /// limit (and the number of shards, for the per-tenant quotas).
    pub fn core(
        &self,
        auth: Option<cue_common::keys::Verifier>,
        tickets: Option<cue_common::keys::TicketKey>,
        max_connections: usize,
        nshards: usize,
    ) -> CoreConfig {
        CoreConfig {
            auth,
            tickets,
            max_request: self.max_request,
            query: QueryLimits {
                max_events: self.max_events_per_device,
                ..QueryLimits::default()
            },
            hello: crate::quic::hello::HelloLimits {
                max_events: self.max_events_per_device,
                ..Default::default()
            },
            max_frame: self.max_frame,
            max_message: self.max_message,
            max_output: self.max_output,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_s),
            max_handshakes: self.max_handshakes,
            ping_interval: Duration::from_secs(self.ping_interval_s),
            close_timeout: Duration::from_secs(self.close_timeout_s),
            max_connections,
            max_events: self.max_events,
            retry_after_s: (self.retry_after_min_s, self.retry_after_max_s),
            fanout_slice: self.fanout_slice,
            tenants: None,
            tenant_quotas: self.tenant_quotas(nshards),
        }
    }
}

impl EdgeConfig {
    /// The TLS certificate source.
    pub fn cert_source(&self) -> crate::tls::CertSource {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::tls::CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => crate::tls::CertSource::SelfSigned,
        }
    }

    /// The QUIC settings of one shard that may hold `max_connections` connections.
    pub fn quic_settings(&self, max_connections: usize) -> crate::quic::config::QuicSettings {
        crate::quic::config::QuicSettings {
            keep_alive: Duration::from_secs(self.quic_keep_alive_s),
            idle_timeout: Duration::from_secs(self.quic_idle_timeout_s),
            max_handshakes: self.quic_max_handshakes,
            retry_above: self.quic_retry_above,
            max_connections,
            socket_buffer: self.quic_socket_buffer_kib * 1024,
            send_window: self.quic_send_window,
            hello_timeout: Duration::from_secs(self.handshake_timeout_s),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_valid_on_loopback() {
        let c = EdgeConfig::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert!(c.ws.ip().is_loopback() && c.admin.ip().is_loopback());
    }

    #[test]
    fn every_problem_reported() {
        let c = EdgeConfig {
            origins: vec![],
            shards: Some(0),
            poll_ms: 0,
            retry_after_min_s: 9,
            retry_after_max_s: 3,
            ..Default::default()
        };
        let e = c.validate();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e.iter().any(|l| l.starts_with("poll_ms")));
    }
}
