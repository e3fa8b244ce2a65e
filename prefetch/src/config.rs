//! `cue-prefetch` configuration: one typed struct read from TOML (`--config`), flags on top,
//! embedded defaults that run on loopback, and a `validate()` that reports every problem at once.
//! Every bound of the service is here with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::CacheConfig;
use crate::catalog::CatalogLimits;
use crate::shed::LoadThresholds;
use crate::upstream::UrlTemplate;

/// Prefetch settings. Every field has a default; see each for its trade-off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    /// HTTP listener (API, `/metrics`, `/healthz`). Default `127.0.0.1:7100`.
    pub http: SocketAddr,
    /// The origin's HTTP API, polled (`GET /v1/events/{event}`) for the live signal. Default
    /// `http://127.0.0.1:7000`. `"none"` (or empty) turns the live signal off.
    pub origin_http: String,
    /// How often each catalog event's current cue is polled, ms (jittered by up to 20%).
    /// Default 500. Shorter notices a live event sooner and costs the origin one small GET per
    /// event per interval.
    pub live_poll_ms: u64,
    /// Catalog directory, one `EVENT.json` per event. Default `./catalog`; when that default is
    /// missing the service starts with no events (and says so); a configured one must exist.
    pub catalog: PathBuf,
    /// Re-read the catalog when its files change, checked every this many ms; 0 = never.
    /// Default 2000. A bad file during a reload keeps the previous catalog.
    pub catalog_reload_ms: u64,
    /// Largest catalog file, bytes. Default 4 MiB.
    pub catalog_max_file_bytes: u64,
    /// Most events in the catalog. Default 10,000.
    pub catalog_max_events: usize,
    /// Most stage keys in one map (catalog or upstream). Default 10,000.
    pub max_stages: usize,
    /// Deepest JSON nesting in a catalog file or upstream answer. Default 32.
    pub max_depth: usize,
    /// Upstream recommendation service, `http://HOST:PORT/PATH?event={event}&device={device}`;
    /// its answer is the `stages` object. Default none (the catalog's stages are served).
    pub upstream: Option<String>,
    /// TTL of upstream maps for events the catalog does not list, s. Default 600.
    pub default_ttl_s: u64,
    /// Whole-call timeout of one upstream request (connect, answer, body), ms. Default 2000.
    pub upstream_timeout_ms: u64,
    /// Most upstream requests in flight at once; more wait (up to the timeout). Default 64.
    pub upstream_concurrency: usize,
    /// Largest upstream answer, bytes; larger is an error. Default 1 MiB.
    pub upstream_max_bytes: usize,
    /// Cache entries (upstream maps). Default 100,000.
    pub cache_max_entries: usize,
    /// Cache bytes. Default 256 MiB.
    pub cache_max_bytes: usize,
    /// Server-side TTL jitter: each fill lives its TTL shortened by up to this fraction.
    /// Default 0.1.
    pub cache_ttl_jitter: f64,
    /// Serve an expired map for up to this long while one refresh runs (and while the upstream
    /// fails), s. Default 3600. Longer rides out longer outages with older maps.
    pub stale_s: u64,
    /// Remember a failed upstream call this long, ms. Default 5000. Longer protects a sick
    /// upstream more; shorter recovers sooner.
    pub negative_ttl_ms: u64,
    /// Most requests waiting on one key's upstream call. Default 4096.
    pub max_waiters: usize,
    /// `max-age` jitter: each response's TTL shortened by up to this fraction. Default 0.2.
    pub max_age_jitter: f64,
    /// `Retry-After` on 503: uniform in `[base, 2 * base]` seconds. Default 5.
    pub retry_after_s: u64,
    /// In-flight requests that shed background / normal. Default 256 / 1024; 0 = off.
    pub shed_in_flight: [u64; 2],
    /// Queue time (runtime lateness), ms, that sheds background / normal. Default 25 / 100.
    pub shed_queue_ms: [u64; 2],
    /// Requests per second that shed background / normal. Default 0 / 0 (off).
    pub shed_rps: [f64; 2],
    /// Signals must stay low this long before shedding eases one step, ms. Default 2000.
    pub shed_cooldown_ms: u64,
    /// Most open device connections; more wait in the kernel's backlog. Default 10,000.
    pub max_connections: usize,
    /// Time a request head has to arrive, from the wait for it (however it trickles in), ms.
    /// Default 10,000.
    pub header_timeout_ms: u64,
    /// Time an answer has to be read once its write stalls, ms; then the connection is closed.
    /// Default 10,000.
    pub write_timeout_ms: u64,
    /// Runtime worker threads. Default: the number of cores.
    pub threads: Option<usize>,
    /// Seed of the jitter RNGs. Default: random at start.
    pub seed: Option<u64>,
    /// Shared token secret (prefer `CUE_AUTH_SECRET` or `auth_secret_file`). Default none.
    pub auth_secret: Option<String>,
    /// Secret file. Default `./cue-data/auth.secret` (what `cue-origin` writes on first start).
    pub auth_secret_file: Option<PathBuf>,
    /// The public token key set (JWKS) to verify device tokens with. Default
    /// `./cue-data/token-keys.pub.json` (what `cue-origin` writes beside its signing keys) when
    /// no secret is set; a configured file must exist. Read again on SIGHUP, for new sessions.
    pub keys: Option<PathBuf>,
    /// Turn token checks off (local experiments only; logged as a warning). Default false.
    pub no_auth: bool,
    /// Page origins (`https://app.example`) whose scripts may read the API from a browser
    /// (CORS; docs/sdk.md). Default `["*"]`: any page (every request carries its own token,
    /// never a cookie). `[]`: none, for a fleet with no browser devices.
    pub cors_origins: Vec<String>,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:7100".parse().expect("literal"),
            origin_http: "http://127.0.0.1:7000".into(),
            live_poll_ms: 500,
            catalog: PathBuf::from(DEFAULT_CATALOG),
            catalog_reload_ms: 2000,
            catalog_max_file_bytes: 4 << 20,
            catalog_max_events: 10_000,
            max_stages: 10_000,
            max_depth: 32,
            upstream: None,
            default_ttl_s: 600,
            upstream_timeout_ms: 2000,
            upstream_concurrency: 64,
            upstream_max_bytes: 1 << 20,
            cache_max_entries: 100_000,
            cache_max_bytes: 256 << 20,
            cache_ttl_jitter: 0.1,
            stale_s: 3600,
            negative_ttl_ms: 5000,
            max_waiters: 4096,
            max_age_jitter: 0.2,
            retry_after_s: 5,
            shed_in_flight: [256, 1024],
            shed_queue_ms: [25, 100],
            shed_rps: [0.0, 0.0],
            shed_cooldown_ms: 2000,
            max_connections: 10_000,
            write_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            threads: None,
            seed: None,
            auth_secret: None,
            auth_secret_file: None,
            keys: None,
            no_auth: false,
            cors_origins: vec!["*".into()],
        }
    }
}

/// The catalog directory used when none is configured.
pub const DEFAULT_CATALOG: &str = "./catalog";

impl PrefetchConfig {
    /// Every problem, one line each; empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        let frac = |name: &str, v: f64, e: &mut Vec<String>| {
            if !(0.0..1.0).contains(&v) {
                e.push(format!("{name}: {v} must be in [0, 1)"));
            }
        };
        frac("max_age_jitter", self.max_age_jitter, &mut e);
        frac("cache_ttl_jitter", self.cache_ttl_jitter, &mut e);
        if !self.origin_http.is_empty() {
            if let Err(m) = crate::upstream::parse_http_base(&self.origin_http) {
                e.push(format!("origin_http: {m}"));
            }
        }
        if let Err(m) = crate::cors::CorsPolicy::parse(&self.cors_origins) {
            e.push(format!("cors_origins: {m}"));
        }
        if let Some(u) = &self.upstream {
            if let Err(m) = UrlTemplate::parse(u) {
                e.push(format!("upstream: {m}"));
            }
        }
        let positive = [
            ("live_poll_ms", self.live_poll_ms),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("negative_ttl_ms", self.negative_ttl_ms),
            ("default_ttl_s", self.default_ttl_s),
            ("catalog_max_file_bytes", self.catalog_max_file_bytes),
            ("retry_after_s", self.retry_after_s),
            ("write_timeout_ms", self.write_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                e.push(format!("{name}: must be > 0"));
            }
        }
        let counts = [
            ("catalog_max_events", self.catalog_max_events),
            ("max_stages", self.max_stages),
            ("upstream_concurrency", self.upstream_concurrency),
            ("upstream_max_bytes", self.upstream_max_bytes),
            ("cache_max_entries", self.cache_max_entries),
            ("max_waiters", self.max_waiters),
            ("max_connections", self.max_connections),
        ];
        for (name, v) in counts {
            if v == 0 {
                e.push(format!("{name}: must be > 0"));
            }
        }
        if !(2..=128).contains(&self.max_depth) {
            e.push(format!("max_depth: {} must be 2..=128", self.max_depth));
        }
        if self.cache_max_bytes < 64 * 1024 {
            e.push(format!(
                "cache_max_bytes: {} is below the 65536 minimum",
                self.cache_max_bytes
            ));
        }
        if self.threads == Some(0) || self.threads.is_some_and(|t| t > 256) {
            e.push("threads: must be 1..=256".into());
        }
        let pair = |name: &str, a: f64, b: f64, e: &mut Vec<String>| {
            if a < 0.0 || b < 0.0 || (a > 0.0 && b > 0.0 && b < a) {
                e.push(format!(
                    "{name}: [{a}, {b}] must be non-negative with the second >= the first"
                ));
            }
        };
        pair(
            "shed_in_flight",
            self.shed_in_flight[0] as f64,
            self.shed_in_flight[1] as f64,
            &mut e,
        );
        pair(
            "shed_queue_ms",
            self.shed_queue_ms[0] as f64,
            self.shed_queue_ms[1] as f64,
            &mut e,
        );
        pair("shed_rps", self.shed_rps[0], self.shed_rps[1], &mut e);
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

    /// The token settings (defaults in `./cue-data`).
    pub fn auth(&self) -> cue_common::config::AuthSettings<'_> {
        cue_common::config::AuthSettings::service(
            self.no_auth,
            self.auth_secret.as_deref(),
            self.auth_secret_file.as_deref(),
            self.keys.as_deref(),
            "any device may prefetch",
        )
    }

    /// Catalog parsing limits.
    pub fn catalog_limits(&self) -> CatalogLimits {
        CatalogLimits {
            max_file_bytes: self.catalog_max_file_bytes,
            max_events: self.catalog_max_events,
            max_stages: self.max_stages,
            max_depth: self.max_depth,
            default_ttl_s: self.default_ttl_s,
            require_stages: self.upstream.is_none(),
            ..CatalogLimits::default()
        }
    }

    /// Cache bounds.
    pub fn cache(&self) -> CacheConfig {
        CacheConfig {
            max_entries: self.cache_max_entries,
            max_bytes: self.cache_max_bytes,
            ttl_jitter: self.cache_ttl_jitter,
            stale_for: Duration::from_secs(self.stale_s),
            negative_ttl: Duration::from_millis(self.negative_ttl_ms),
            max_waiters: self.max_waiters,
        }
    }

    /// Shedding thresholds.
    pub fn load_thresholds(&self) -> LoadThresholds {
        LoadThresholds {
            in_flight: self.shed_in_flight,
            queue: self.shed_queue_ms.map(Duration::from_millis),
            rps: self.shed_rps,
            cooldown: Duration::from_millis(self.shed_cooldown_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = PrefetchConfig::default();
        assert_eq!(c.validate(), Vec::<String>::new());
        assert!(c.http.ip().is_loopback());
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = PrefetchConfig {
            max_age_jitter: 1.5,
            upstream: Some("ftp://x/{event}".into()),
            upstream_concurrency: 0,
            shed_in_flight: [100, 10],
            auth_secret: Some("short".into()),
            origin_http: "nope".into(),
            ..Default::default()
        };
        let errs = c.validate();
        assert_eq!(errs.len(), 6, "{errs:?}");
        assert!(errs[0].starts_with("max_age_jitter"));
        assert!(errs.iter().any(|e| e.starts_with("upstream: ")));
        assert!(errs.iter().any(|e| e.starts_with("origin_http: ")));
    }

    #[test]
    fn toml_keys_and_unknown_key() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(&p, "http = \"127.0.0.1:7200\"\nshed_in_flight = [10, 20]\nupstream = \"http://127.0.0.1:9/r?e={event}\"\n").unwrap();
        let c: PrefetchConfig = cue_common::config::load_toml(Some(&p)).unwrap();
        assert_eq!(c.http.port(), 7200);
        assert_eq!(c.shed_in_flight, [10, 20]);
        assert!(c.validate().is_empty());
        std::fs::write(&p, "catalg = \"x\"\n").unwrap();
        let e = cue_common::config::load_toml::<PrefetchConfig>(Some(&p)).unwrap_err();
        assert!(e.contains("catalg"), "{e}");
    }
}
