//! `cue-origin` configuration: one typed struct, TOML file (`--config`) with flags on top,
//! embedded defaults that run on loopback, and a `validate()` that reports every problem at once.
//! TOML loading and secret resolution are `cue_common::config`'s.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Origin settings. Every field has a default; see each for its trade-off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Publish/admin HTTP listener. Default `127.0.0.1:7000`.
    pub http: SocketAddr,
    /// Relay listener that edges dial. Default `127.0.0.1:7001`.
    pub relay: SocketAddr,
    /// Directory of the durable cue log (and of the generated auth secret). Default `./cue-data`.
    pub data_dir: PathBuf,
    /// Shared token secret (prefer `CUE_AUTH_SECRET` or `auth_secret_file`). Default none.
    pub auth_secret: Option<String>,
    /// File holding a shared HS256 secret (single-host use). Must exist; never created.
    /// Default none.
    pub auth_secret_file: Option<PathBuf>,
    /// The origin's signing keys (`cue-origin keys ...`). Default `<data_dir>/token-keys.json`,
    /// created with one Ed25519 key on first start when no secret is set; a configured file
    /// must exist. The public set is written beside it as `token-keys.pub.json`, which is what
    /// edges and prefetch read.
    pub keys_file: Option<PathBuf>,
    /// Turn token checks off (local experiments only; logged as a warning). Default false.
    pub no_auth: bool,
    /// Compact the log when it grows past this many bytes. Default 64 MiB. Smaller compacts more
    /// often; the compacted log holds one cue per event.
    pub log_max_bytes: u64,
    /// fdatasync every group commit. Default true. False breaks the 201-means-durable promise
    /// and exists only for benchmarks of everything else.
    pub fsync: bool,
    /// Publishes waiting for the log writer; beyond it publishes get 503. Default 4096.
    pub publish_queue: usize,
    /// Live cues buffered per edge before the edge is re-synchronised from the newest state
    /// instead. Default 1024.
    pub relay_buffer: usize,
    /// Relay heartbeat interval in ms. Default 1000.
    pub relay_heartbeat_ms: u64,
    /// Drop an edge heard nothing from for this many ms. Default 5000.
    pub relay_dead_after_ms: u64,
    /// Drop an edge that accepts no bytes for this many ms. Default 5000.
    pub relay_write_timeout_ms: u64,
    /// Most edges linked at once. Default 1024.
    pub max_edges: usize,
    /// Most HTTP connections served at once; beyond, new ones wait in the listen backlog.
    /// Each request's head must arrive within 10 s and a publish body within 10 s more.
    /// Default 4096.
    pub max_http_connections: usize,
    /// Retire an event that has had no new cue for this many seconds: it leaves catch-up,
    /// `GET` (404), every edge and (at compaction) the log. 0 never retires for idleness
    /// (`DELETE /v1/events/{event}` still does). Default 604800 (7 days): far longer than any
    /// live event, so a device that comes back hours late still gets the last cue, while a
    /// service running thousands of events a month keeps only about a week of them.
    pub event_retire_after_s: u64,
    /// Publishes per second a named tenant may make (a bucket of one second's worth); beyond,
    /// `429` naming the tenant and the quota. 0: no limit. Default 1000: far above a live
    /// event's pace (a cue every few seconds), low enough that one tenant's runaway publisher
    /// cannot take the log writer from the others. The default tenant has no quota unless
    /// `[tenant_quotas._default]` gives it one.
    pub tenant_publishes_per_s: u32,
    /// Events a named tenant may have at once; a publish that would start one more is `429`.
    /// 0: no limit. Default 10000 (retired events do not count).
    pub tenant_max_events: usize,
    /// Quotas of given tenants, `[tenant_quotas.acme]` with `publishes_per_s` and/or
    /// `max_events` (an absent one takes the default above); `_default` names the default
    /// tenant. Default none.
    pub tenant_quotas: std::collections::BTreeMap<String, crate::tenants::TenantQuotaConfig>,
    /// Relay TLS: the origin's certificate chain (PEM). With `relay_key` and `relay_client_ca`
    /// the relay speaks TLS 1.3 and accepts only edges whose certificate chains to the client
    /// CA. Default none (plaintext, for the loopback default).
    pub relay_cert: Option<PathBuf>,
    /// Relay TLS: the origin's private key (PEM). Default none.
    pub relay_key: Option<PathBuf>,
    /// Relay TLS: the CA edges' certificates must chain to (PEM). Default none.
    pub relay_client_ca: Option<PathBuf>,
    /// Allow a plaintext relay on an address that is not loopback (anyone on the path can read
    /// and inject cues; logged as a warning). Default false: such a relay refuses to start.
    pub relay_insecure: bool,
    /// How long the store must stay unhealthy before the relay drops its edges, ms. Default
    /// 15000: longer than a JetStream leader election (nats-server's Raft waits 4-9 s before
    /// it campaigns, 7.5 s measured here), during which nobody can publish and dropping links
    /// would only delay the next cue; an origin cut off for longer stops relaying so its edges
    /// follow the others.
    pub relay_unhealthy_grace_ms: u64,
    /// Where cues are made durable: `embedded` (default: the log in `data_dir`, fsync before
    /// 201) or `nats://HOST:PORT[,HOST:PORT...]` (a JetStream stream; several origins on one
    /// stream are peers). See docs/config.md for what a 201 promises in each.
    pub store: String,
    /// JetStream stream name, also the subject prefix. Default `CUE`.
    pub nats_stream: String,
    /// Replicas of the stream when the origin creates it (an existing stream must match).
    /// Default 3: a quorum of 2 survives one dead server. 1 for a single server.
    pub nats_replicas: usize,
    /// NATS user (with `nats_password`). Default none.
    pub nats_user: Option<String>,
    /// NATS password (prefer `CUE_NATS_PASSWORD` in the environment). Default none.
    pub nats_password: Option<String>,
    /// NATS credentials file (`.creds`: JWT and NKey seed). Default none.
    pub nats_creds_file: Option<PathBuf>,
    /// CA certificate (PEM) the NATS servers' certificates chain to; turns TLS on. Default none.
    pub nats_ca_file: Option<PathBuf>,
    /// Require TLS to NATS. Default false (true when `nats_ca_file` is set).
    pub nats_tls: bool,
    /// How long a publish waits for JetStream's ack before 503, ms. Default 2000: long enough
    /// for a stream leader election after a server dies (~1-2 s), short enough that a
    /// publisher retries soon.
    pub nats_ack_timeout_ms: u64,
}

/// Where the origin keeps cues, from [`OriginConfig::store`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded log.
    Embedded,
    /// JetStream on these `HOST:PORT` servers.
    Nats(Vec<String>),
}

/// Parses a `store` value: `embedded` or `nats://HOST:PORT[,HOST:PORT...]`.
pub fn parse_store(s: &str) -> Result<StoreKind, String> {
    if s == "embedded" {
        return Ok(StoreKind::Embedded);
    }
    let Some(list) = s.strip_prefix("nats://") else {
        return Err(format!(
            "store: '{s}' is neither 'embedded' nor 'nats://HOST:PORT[,HOST:PORT...]'"
        ));
    };
    let mut servers = Vec::new();
    for hp in list.split(',') {
        let hp = hp.trim().trim_start_matches("nats://");
        cue_common::config::host_port(hp).map_err(|e| format!("store: {e}"))?;
        servers.push(hp.to_string());
    }
    Ok(StoreKind::Nats(servers))
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:7000".parse().expect("literal"),
            relay: "127.0.0.1:7001".parse().expect("literal"),
            data_dir: PathBuf::from("./cue-data"),
            auth_secret: None,
            auth_secret_file: None,
            keys_file: None,
            no_auth: false,
            log_max_bytes: 64 << 20,
            fsync: true,
            publish_queue: 4096,
            relay_buffer: 1024,
            relay_heartbeat_ms: 1000,
            relay_dead_after_ms: 5000,
            relay_write_timeout_ms: 5000,
            max_edges: 1024,
            max_http_connections: 4096,
            event_retire_after_s: 604_800,
            tenant_publishes_per_s: 1000,
            tenant_max_events: 10_000,
            tenant_quotas: Default::default(),
            relay_unhealthy_grace_ms: 15_000,
            relay_cert: None,
            relay_key: None,
            relay_client_ca: None,
            relay_insecure: false,
            store: "embedded".into(),
            nats_stream: "CUE".into(),
            nats_replicas: 3,
            nats_user: None,
            nats_password: None,
            nats_creds_file: None,
            nats_ca_file: None,
            nats_tls: false,
            nats_ack_timeout_ms: 2000,
        }
    }
}

impl OriginConfig {
    /// Every problem, one line each; empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        for t in self.tenant_quotas.keys() {
            if t != crate::tenants::DEFAULT_TENANT && !cue_common::cue::valid_tenant(t) {
                e.push(format!(
                    "tenant_quotas.{t}: not a tenant (1-32 chars of [a-z0-9-]) nor _default"
                ));
            }
        }
        if self.http == self.relay {
            e.push(format!(
                "http and relay: both are {}; they must differ",
                self.http
            ));
        }
        if self.log_max_bytes < 4096 {
            e.push(format!(
                "log_max_bytes: {} is below the 4096 minimum",
                self.log_max_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.publish_queue) {
            e.push(format!(
                "publish_queue: {} must be 1..=1000000",
                self.publish_queue
            ));
        }
        if !(1..=1_000_000).contains(&self.max_http_connections) {
            e.push(format!(
                "max_http_connections: {} must be 1..=1000000",
                self.max_http_connections
            ));
        }
        if !(16..=1_000_000).contains(&self.relay_buffer) {
            e.push(format!(
                "relay_buffer: {} must be 16..=1000000",
                self.relay_buffer
            ));
        }
        if self.relay_heartbeat_ms == 0 {
            e.push("relay_heartbeat_ms: must be > 0".into());
        }
        if self.relay_dead_after_ms <= self.relay_heartbeat_ms {
            e.push(format!(
                "relay_dead_after_ms: {} must exceed relay_heartbeat_ms ({})",
                self.relay_dead_after_ms, self.relay_heartbeat_ms
            ));
        }
        if self.relay_write_timeout_ms == 0 {
            e.push("relay_write_timeout_ms: must be > 0".into());
        }
        if self.max_edges == 0 {
            e.push("max_edges: must be > 0".into());
        }
        let tls_set = [&self.relay_cert, &self.relay_key, &self.relay_client_ca]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if tls_set != 0 && tls_set != 3 {
            e.push("relay_cert, relay_key, relay_client_ca: set all three or none".into());
        }
        if tls_set == 0 && !self.relay.ip().is_loopback() && !self.relay_insecure {
            e.push(format!(
                "relay: {} is not loopback and relay TLS is off; set relay_cert, relay_key and relay_client_ca, or relay_insecure to accept plaintext",
                self.relay
            ));
        }
        if let Err(m) = parse_store(&self.store) {
            e.push(m);
        }
        if !crate::store::nats::valid_stream_name(&self.nats_stream) {
            e.push(format!(
                "nats_stream: '{}' must be 1-32 chars of [A-Za-z0-9_-]",
                self.nats_stream
            ));
        }
        if !(1..=5).contains(&self.nats_replicas) {
            e.push(format!(
                "nats_replicas: {} must be 1..=5 (JetStream's limit)",
                self.nats_replicas
            ));
        }
        if self.nats_user.is_some() != self.nats_password.is_some() {
            e.push("nats_user and nats_password: set both or neither".into());
        }
        if self.nats_ack_timeout_ms == 0 {
            e.push("nats_ack_timeout_ms: must be > 0".into());
        }
        if let Some(s) = &self.auth_secret {
            if s.len() < cue_common::token::MIN_SECRET_LEN {
                e.push(format!(
                    "auth_secret: {} bytes, needs at least {}",
                    s.len(),
                    cue_common::token::MIN_SECRET_LEN
                ));
            }
        }
        e
    }

    /// The NATS settings, when `store` is `nats://...`.
    pub fn nats(&self) -> Option<crate::store::nats::NatsOptions> {
        let StoreKind::Nats(servers) = parse_store(&self.store).ok()? else {
            return None;
        };
        Some(crate::store::nats::NatsOptions {
            servers,
            stream: self.nats_stream.clone(),
            replicas: self.nats_replicas,
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            creds_file: self.nats_creds_file.clone(),
            ca_file: self.nats_ca_file.clone(),
            tls: self.nats_tls,
            ack_timeout: std::time::Duration::from_millis(self.nats_ack_timeout_ms),
        })
    }

    /// The relay's TLS files, when all three are set.
    pub fn relay_tls(&self) -> Option<cue_common::tls::RelayTlsFiles> {
        Some(cue_common::tls::RelayTlsFiles {
            cert: self.relay_cert.clone()?,
            key: self.relay_key.clone()?,
            ca: self.relay_client_ca.clone()?,
        })
    }

    /// The token settings.
    pub fn auth(&self) -> cue_common::config::AuthSettings<'_> {
        cue_common::config::AuthSettings {
            no_auth: self.no_auth,
            secret: self.auth_secret.as_deref(),
            secret_file: self.auth_secret_file.as_deref(),
            keys_file: self.keys_file.as_deref(),
            dir: &self.data_dir,
            open: "anyone can publish",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = OriginConfig::default();
        assert!(c.validate().is_empty());
        assert!(c.http.ip().is_loopback() && c.relay.ip().is_loopback());
    }

    #[test]
    fn store_values() {
        assert_eq!(parse_store("embedded").unwrap(), StoreKind::Embedded);
        assert_eq!(
            parse_store("nats://a:4222, 127.0.0.1:4223,nats://b.example:1").unwrap(),
            StoreKind::Nats(vec![
                "a:4222".into(),
                "127.0.0.1:4223".into(),
                "b.example:1".into()
            ])
        );
        for bad in [
            "nats",
            "nats://",
            "nats://a",
            "nats://a:0",
            "nats://:1",
            "redis://a:1",
        ] {
            assert!(parse_store(bad).unwrap_err().starts_with("store:"), "{bad}");
        }
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = OriginConfig {
            relay: "127.0.0.1:7000".parse().unwrap(),
            publish_queue: 0,
            relay_dead_after_ms: 10,
            auth_secret: Some("short".into()),
            ..Default::default()
        };
        let errs = c.validate();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("http and relay"));
    }

    #[test]
    fn toml_unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "htp = \"127.0.0.1:1\"\n").unwrap();
        let e = cue_common::config::load_toml::<OriginConfig>(Some(&p)).unwrap_err();
        assert!(e.contains("htp"), "{e}");
        std::fs::write(&p, "max_edges = 3\n").unwrap();
        assert_eq!(
            cue_common::config::load_toml::<OriginConfig>(Some(&p))
                .unwrap()
                .max_edges,
            3
        );
    }
}
