//! The service's shared state and the upstream path: cache lookup, single-flight fetch task,
//! waking waiters. The decisions are the sans-IO [`crate::cache::Cache`]'s; this file only does
//! what they say.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cue_common::keys::Verifier;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::cache::{Cache, Lookup};
use crate::catalog::{Catalog, CatalogLimits};
use crate::live::LiveSet;
use crate::metrics::Metrics;
use crate::shed::{Level, LoadThresholds};
use crate::template::StageTemplate;
use crate::upstream::{parse_answer, HttpClient, UpstreamError, UrlTemplate};

/// What a waiter of an upstream call is told.
pub type MapResult = Result<Arc<StageTemplate>, UpstreamError>;
/// Cache key: event, and device when the upstream URL names it (else empty: one map per event).
pub type MapKey = (Box<str>, Box<str>);
/// The upstream map cache.
pub type MapCache = Cache<MapKey, Arc<StageTemplate>, UpstreamError, oneshot::Sender<MapResult>>;

/// The upstream source.
pub struct Upstream {
    /// URL template.
    pub url: UrlTemplate,
    /// Pooled, bounded client.
    pub client: HttpClient,
    /// Maps fetched.
    pub cache: Mutex<MapCache>,
    /// How long a request waits for a call in flight before giving up.
    pub wait_limit: Duration,
}

impl Upstream {
    /// True when the upstream may be asked for `key` (a catalog name): a valid event name, and
    /// for a tenant's event a URL with `{tenant}` (without it the upstream could not tell two
    /// tenants' events of one name apart, and one tenant would get another's map).
    pub fn serves(&self, key: &str) -> bool {
        match cue_common::cue::EventName::new(key) {
            Ok(e) => e.tenant().is_none() || self.url.per_tenant(),
            Err(_) => false,
        }
    }
}

/// Shared state of the service.
pub struct App {
    /// Token keys; `None` with `--no-auth`. A public key set is replaced on SIGHUP.
    pub keys: RwLock<Option<Verifier>>,
    /// The catalog, swapped whole on reload.
    pub catalog: RwLock<Arc<Catalog>>,
    /// Events with a cue at the origin.
    pub live: Arc<RwLock<LiveSet>>,
    /// Load level from the policy ticker ([`Level`] as u8).
    pub level: AtomicU8,
    /// Shedding thresholds (the in-flight check runs per request).
    pub thresholds: LoadThresholds,
    /// The upstream source, if configured.
    pub upstream: Option<Upstream>,
    /// Counters.
    pub metrics: Metrics,
    /// Limits for upstream answers.
    pub limits: CatalogLimits,
    /// `max-age` jitter fraction.
    pub max_age_jitter: f64,
    /// `Retry-After` base, s.
    pub retry_after_s: u64,
    /// TTL of upstream maps of events not in the catalog, s.
    pub default_ttl_s: u64,
    /// Seed of the per-thread jitter RNGs.
    pub seed: u64,
    /// Which browser pages may read the API.
    pub cors: crate::cors::CorsPolicy,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("App")
    }
}

static THREAD_SEQ: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RNG: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

impl App {
    /// A uniform number in `[0, 1)` from this thread's RNG, seeded from [`App::seed`] and the
    /// thread's ordinal (no lock shared between threads).
    pub fn unit(&self) -> f64 {
        RNG.with(|r| {
            let mut r = r.borrow_mut();
            let rng = r.get_or_insert_with(|| {
                let n = THREAD_SEQ.fetch_add(1, Relaxed);
                SmallRng::seed_from_u64(crate::hash::mix64(
                    self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                ))
            });
            rng.gen::<f64>()
        })
    }

    /// The current load level, combining the ticker's reading with the in-flight count now.
    pub fn load_level(&self) -> Level {
        let ticked = match self.level.load(Relaxed) {
            0 => Level::Calm,
            1 => Level::Elevated,
            _ => Level::High,
        };
        ticked.max(
            self.thresholds
                .in_flight_level(self.metrics.in_flight.get().max(0) as u64),
        )
    }

    /// The upstream map of `event` for `device`: from the cache, or after the one call in flight
    /// for it, or a cached error.
    pub async fn upstream_map(
        self: &Arc<Self>,
        event: &str,
        device: &str,
        ttl: Duration,
    ) -> MapResult {
        let up = self.upstream.as_ref().expect("upstream configured");
        let key: MapKey = (
            event.into(),
            if up.url.per_device() {
                device.into()
            } else {
                "".into()
            },
        );
        let rx = {
            let mut cache = up.cache.lock().expect("cache lock");
            match cache.lookup(&key, Instant::now()) {
                Lookup::Hit(v) => return Ok(v),
                Lookup::Stale { value, refresh } => {
                    if refresh {
                        self.spawn_fetch(key, event, device, ttl);
                    }
                    return Ok(value);
                }
                Lookup::Negative(e) => return Err(e),
                Lookup::Busy => return Err(UpstreamError::Busy),
                Lookup::InFlight => {
                    let (tx, rx) = oneshot::channel();
                    cache.wait(&key, tx).map_err(|_| UpstreamError::Busy)?;
                    rx
                }
                Lookup::Fill => {
                    // This request is the first waiter. The call runs in its own task so a
                    // device that hangs up cannot strand the others.
                    let (tx, rx) = oneshot::channel();
                    let waiting = cache.wait(&key, tx).is_ok();
                    self.spawn_fetch(key, event, device, ttl);
                    if !waiting {
                        return Err(UpstreamError::Busy);
                    }
                    rx
                }
            }
        };
        match tokio::time::timeout(up.wait_limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(UpstreamError::Io("upstream call abandoned".into())),
            Err(_) => Err(UpstreamError::Timeout(up.wait_limit)),
        }
    }

    fn spawn_fetch(self: &Arc<Self>, key: MapKey, event: &str, device: &str, ttl: Duration) {
        let app = self.clone();
        let (event, device) = (event.to_string(), device.to_string());
        tokio::spawn(async move { app.fetch(key, &event, &device, ttl).await });
    }

    async fn fetch(&self, key: MapKey, event: &str, device: &str, ttl: Duration) {
        let up = self.upstream.as_ref().expect("upstream configured");
        let m = &self.metrics;
        m.upstream_calls.inc();
        m.upstream_in_flight.add(1);
        let t0 = Instant::now();
        // `event` is the catalog name: the URL and the map get the bare name (and the tenant).
        let (tenant, bare) = match cue_common::cue::EventName::new(event) {
            Ok(e) => (e.tenant().map(str::to_string), e.local().to_string()),
            Err(_) => (None, event.to_string()),
        };
        let url = up.url.expand_for(tenant.as_deref(), &bare, device);
        let r: MapResult = match up.client.get(&url).await {
            Ok(body) => parse_answer(&bare, &body, &self.limits).map(Arc::new),
            Err(e) => Err(e),
        };
        m.upstream_in_flight.add(-1);
        m.upstream_latency
            .observe_us(t0.elapsed().as_micros() as u64);
        if let Err(e) = &r {
            m.upstream_error(e.kind());
            tracing::debug!(event, device, error = %e, "upstream call failed");
        }
        let now = Instant::now();
        let unit = self.unit();
        let (waiters, outcome) = {
            let mut cache = up.cache.lock().expect("cache lock");
            let stored = r.clone().map(|v| {
                let n = v.size();
                (v, n)
            });
            let waiters = cache.complete(&key, stored, ttl, now, unit);
            let outcome = match r {
                Ok(v) => Ok(v),
                Err(e) => cache.fallback(&key, e, now),
            };
            (waiters, outcome)
        };
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}
