//! Wires the service on a tokio runtime: the catalog (and its reloader), the origin poller, the
//! load ticker, the HTTP listener, and graceful shutdown.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::app::{App, Upstream};
use crate::cache::Cache;
use crate::catalog::{dir_fingerprint, load_dir, Catalog, CatalogLimits};
use crate::config::{PrefetchConfig, DEFAULT_CATALOG};
use crate::live::{poll_origin, LiveSet, PollTarget};
use crate::shed::{LoadPolicy, Signals};
use crate::upstream::{parse_http_base, HttpClient, UrlTemplate};

/// Largest request head (request line and headers) buffered per connection.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How often the load policy takes a reading (and the queue-time probe fires).
pub const TICK: Duration = Duration::from_millis(100);

/// Loads the catalog at start: a missing default directory means no events; anything else wrong
/// is an error naming the file.
pub fn initial_catalog(cfg: &PrefetchConfig, limits: &CatalogLimits) -> Result<Catalog, String> {
    if cfg.catalog == Path::new(DEFAULT_CATALOG) && !cfg.catalog.exists() {
        tracing::warn!(
            dir = DEFAULT_CATALOG,
            "no catalog directory: serving no events until it appears"
        );
        return Ok(Catalog::default());
    }
    load_dir(&cfg.catalog, limits).map_err(|e| e.to_string())
}

/// Runs the service until `shutdown` resolves, then stops accepting, finishes requests in flight
/// (closing idle keep-alive connections at once), and returns.
pub async fn run(
    cfg: PrefetchConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = cue_common::config::verifier(cfg.auth()).map_err(anyhow::Error::msg)?;
    let limits = cfg.catalog_limits();
    let auth_cfg = cfg.clone();
    let catalog = initial_catalog(&cfg, &limits).map_err(anyhow::Error::msg)?;
    tracing::info!(events = catalog.events.len(), dir = %cfg.catalog.display(), "catalog loaded");
    let seed = cfg.seed.unwrap_or_else(rand::random);
    let upstream = match &cfg.upstream {
        Some(u) => {
            let url = UrlTemplate::parse(u).map_err(anyhow::Error::msg)?;
            let timeout = Duration::from_millis(cfg.upstream_timeout_ms);
            Some(Upstream {
                url,
                client: HttpClient::new(cfg.upstream_concurrency, timeout, cfg.upstream_max_bytes),
                cache: Mutex::new(Cache::new(cfg.cache())),
                wait_limit: timeout + Duration::from_secs(1),
            })
        }
        None => None,
    };
    let keys_mode = matches!(keys, Some(cue_common::keys::Verifier::Keys(_)));
    let app = Arc::new(App {
        keys: RwLock::new(keys),
        catalog: RwLock::new(Arc::new(catalog)),
        live: Arc::new(RwLock::new(LiveSet::new())),
        level: Default::default(),
        thresholds: cfg.load_thresholds(),
        upstream,
        metrics: Default::default(),
        limits: limits.clone(),
        max_age_jitter: cfg.max_age_jitter,
        retry_after_s: cfg.retry_after_s,
        default_ttl_s: cfg.default_ttl_s,
        seed,
        cors: crate::cors::CorsPolicy::parse(&cfg.cors_origins)
            .map_err(|e| anyhow::anyhow!("cors_origins: {e}"))?,
    });
    app.metrics
        .catalog_events
        .set(app.catalog.read().expect("catalog lock").events.len() as i64);

    let listener = TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("http: binding {}", cfg.http))?;
    tracing::info!(http = %cfg.http, source = if cfg.upstream.is_some() { "upstream" } else { "catalog" }, "cue-prefetch listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(load_ticker(
        app.clone(),
        LoadPolicy::new(cfg.load_thresholds()),
        stop_rx.clone(),
    )));
    {
        // A public key set is read again on SIGHUP; requests in flight keep the old one. The
        // handler is there in every mode, so SIGHUP never ends the service.
        let app = app.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                if !keys_mode {
                    tracing::info!("SIGHUP: no token key set to reload (shared secret or no auth)");
                    continue;
                }
                match cue_common::config::verifier(auth_cfg.auth()) {
                    Ok(k) => {
                        *app.keys.write().expect("keys lock") = k;
                        tracing::info!("SIGHUP: token key set reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: token key set NOT reloaded; keeping the one in force")
                    }
                }
            }
        });
    }
    if cfg.catalog_reload_ms > 0 {
        let every = Duration::from_millis(cfg.catalog_reload_ms);
        tasks.push(tokio::spawn(reload_catalog(
            app.clone(),
            cfg.catalog.clone(),
            limits,
            every,
            stop_rx.clone(),
        )));
    }
    if !cfg.origin_http.is_empty() {
        let base = parse_http_base(&cfg.origin_http)
            .map_err(anyhow::Error::msg)?
            .to_string();
        let (a1, a2, a3) = (app.clone(), app.clone(), app.clone());
        let target = PollTarget {
            base,
            events: Box::new(move || {
                a1.catalog
                    .read()
                    .expect("catalog lock")
                    .events
                    .keys()
                    .cloned()
                    .collect()
            }),
            live: app.live.clone(),
            every: Duration::from_millis(cfg.live_poll_ms),
            unit: Box::new(move || a2.unit()),
            on_poll: Box::new(move |failed| {
                a3.metrics.origin_polls.inc();
                if failed {
                    a3.metrics.origin_poll_errors.inc();
                }
            }),
        };
        let client = HttpClient::new(4, Duration::from_millis(1000), 64 * 1024);
        tasks.push(tokio::spawn(poll_origin(target, client, stop_rx.clone())));
    }

    let conns = Arc::new(Semaphore::new(cfg.max_connections));
    let write_timeout = Duration::from_millis(cfg.write_timeout_ms);
    let header_timeout = Duration::from_millis(cfg.header_timeout_ms);
    let graceful = GracefulShutdown::new();
    let mut accept_stop = stop_rx.clone();
    let accept_app = app.clone();
    let accept = async {
        loop {
            let permit = tokio::select! {
                p = conns.clone().acquire_owned() => p.expect("semaphore open"),
                _ = accept_stop.changed() => break,
            };
            let (sock, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = accept_stop.changed() => break,
            };
            let _ = sock.set_nodelay(true);
            let app = accept_app.clone();
            let sock = crate::deadline::WriteDeadline::new(
                sock,
                write_timeout,
                app.metrics.write_timeouts.clone(),
            );
            let svc = service_fn(move |req| crate::http::handle(app.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(sock), svc);
            let fut = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = fut.await;
                drop(permit);
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    tracing::info!("shutting down: closing the listener, finishing requests in flight");
    let _ = stop_tx.send(true);
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 5 s");
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("cue-prefetch stopped");
    Ok(())
}

/// Every [`TICK`]: reads the load signals (in-flight requests, how late this timer fired, request
/// rate), feeds the policy, publishes its level; refreshes the live-events gauge.
async fn load_ticker(app: Arc<App>, mut policy: LoadPolicy, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_count = app.metrics.requests.get();
    let mut last_at = tokio::time::Instant::now();
    loop {
        let scheduled = tokio::select! {
            t = tick.tick() => t,
            _ = stop.changed() => return,
        };
        let now = tokio::time::Instant::now();
        let lateness = now.saturating_duration_since(scheduled);
        let count = app.metrics.requests.get();
        let dt = now
            .saturating_duration_since(last_at)
            .as_secs_f64()
            .max(1e-3);
        let rps = (count - last_count) as f64 / dt;
        (last_count, last_at) = (count, now);
        let s = Signals {
            in_flight: app.metrics.in_flight.get().max(0) as u64,
            queue: lateness,
            rps,
        };
        let level = policy.observe(now.into_std(), s);
        if app.level.swap(level as u8, Relaxed) != level as u8 {
            tracing::info!(
                ?level,
                in_flight = s.in_flight,
                queue_ms = lateness.as_millis() as u64,
                rps = rps as u64,
                "load level changed"
            );
        }
        let (q, r) = policy.smoothed();
        let m = &app.metrics;
        m.load_level.set(level as i64);
        m.queue_us.set(q.as_micros() as i64);
        m.rps.set(r as i64);
        let now_ms = cue_common::time::unix_now_ms();
        let cat = app.catalog.read().expect("catalog lock").clone();
        let live = app.live.read().expect("live lock");
        m.live_events.set(
            cat.events
                .values()
                .filter(|s| live.is_live(&s.name, s.window, now_ms))
                .count() as i64,
        );
    }
}

/// Re-reads the catalog when the directory's fingerprint changes; a bad catalog is logged and
/// the previous one kept.
async fn reload_catalog(
    app: Arc<App>,
    dir: std::path::PathBuf,
    limits: CatalogLimits,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = dir_fingerprint(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let fp = dir_fingerprint(&dir);
        if fp == seen || fp.is_none() {
            continue;
        }
        seen = fp;
        let (d, l) = (dir.clone(), limits.clone());
        match tokio::task::spawn_blocking(move || load_dir(&d, &l)).await {
            Ok(Ok(cat)) => {
                let n = cat.events.len();
                *app.catalog.write().expect("catalog lock") = Arc::new(cat);
                app.metrics.catalog_reloads.inc();
                app.metrics.catalog_events.set(n as i64);
                tracing::info!(events = n, "catalog reloaded");
            }
            Ok(Err(e)) => {
                app.metrics.catalog_reload_errors.inc();
                tracing::warn!(error = %e, "catalog reload refused; keeping the previous catalog");
            }
            Err(e) => tracing::warn!(error = %e, "catalog reload task failed"),
        }
    }
}
