//! Wires the origin together on a tokio runtime: log recovery, the writer thread, the HTTP API,
//! the relay listener, metrics and graceful shutdown.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::config::OriginConfig;
use crate::http::Api;
use crate::log::{CueLog, LogOptions};
use crate::relay::{RelayMetrics, RelayOptions};
use crate::store::embedded::{Publisher, WriterParts};
use crate::store::nats::NatsStore;
use crate::store::{Health, Latest, PublishMetrics, Store};
use cue_common::cue::EventName;
use cue_common::metrics::{header, single};
use cue_common::time::unix_now_ms;

/// Loads the relay's certificates again at every `SIGHUP`, for new links; a failed reload keeps
/// the ones in force and says why.
async fn reload_on_sighup(tls: crate::relay::RelayTls) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("no SIGHUP handler: relay certificates reload only at restart");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: relay certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: relay certificates NOT reloaded; keeping the ones in force")
            }
        }
    }
}

/// Opens the embedded log, loads its newest cues into `latest` and starts its writer thread.
fn start_embedded(
    cfg: &OriginConfig,
    latest: &Latest,
    live: &broadcast::Sender<crate::store::Live>,
    pm: &Arc<PublishMetrics>,
) -> anyhow::Result<(Publisher, Health, std::thread::JoinHandle<()>)> {
    let opts = LogOptions {
        max_bytes: cfg.log_max_bytes,
        sync: cfg.fsync,
    };
    let (log, rec) = CueLog::open(&cfg.data_dir, opts)
        .with_context(|| format!("data_dir {}: opening the cue log", cfg.data_dir.display()))?;
    tracing::info!(
        records = rec.records,
        torn_bytes = rec.torn_bytes,
        events = log.events(),
        dir = %cfg.data_dir.display(),
        "cue log recovered"
    );
    if rec.torn_bytes > 0 {
        tracing::warn!(
            torn_bytes = rec.torn_bytes,
            "dropped a torn tail from the cue log (never served)"
        );
    }
    let skipped: u64 = rec.skipped.iter().map(|(a, b)| b - a).sum();
    if skipped > 0 {
        tracing::error!(
            regions = rec.skipped.len(),
            bytes = skipped,
            "cue log: corrupt regions skipped at recovery (their records are lost, later ones kept; the log was rewritten); check the disk"
        );
    }
    pm.log_skipped_bytes.set(skipped as i64);
    {
        let mut l = latest.write().expect("latest lock");
        **l = log.latest().clone();
        for (ev, &class) in log.classes() {
            l.set_class(ev, class);
        }
        for ev in log.retired_at_open() {
            l.mark_retired(ev);
        }
    }
    let (health_tx, health) = watch::channel(None);
    let (p, w) = Publisher::start(
        WriterParts {
            log,
            latest: latest.clone(),
            relay: live.clone(),
            metrics: pm.clone(),
            health: health_tx,
        },
        cfg.publish_queue,
        unix_now_ms,
    );
    Ok((p, health, w))
}

/// Runs the origin until `shutdown` resolves, then stops accepting, lets in-flight publishes
/// finish, and returns.
pub async fn run(
    cfg: OriginConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = cue_common::config::origin_keys(cfg.auth(), true, cue_common::time::unix_now_s())
        .map_err(anyhow::Error::msg)?
        .map(|k| k.verifier());

    let latest: Latest = Arc::new(RwLock::new(crate::store::State::default()));
    let (live, _) = broadcast::channel(cfg.relay_buffer);
    let pm = Arc::new(PublishMetrics::default());
    let rm = Arc::new(RelayMetrics::default());
    let mut shutdown = std::pin::pin!(shutdown);
    // Ports first: a port in use fails the start at once, and while the store comes up (NATS
    // may take a while) the HTTP port answers 503 "starting" instead of refusing connections.
    let http = TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("http: binding {}", cfg.http))?;
    let relay = TcpListener::bind(cfg.relay)
        .await
        .with_context(|| format!("relay: binding {}", cfg.relay))?;
    tracing::info!(http = %cfg.http, relay = %cfg.relay, "cue-origin listening");
    let http = Arc::new(http);
    let starting = tokio::spawn(answer_starting(http.clone()));
    let (store, health, writer) = match cfg.nats() {
        None => {
            let (p, health, w) = start_embedded(&cfg, &latest, &live, &pm)?;
            (Store::Embedded(p), health, Some(w))
        }
        Some(opts) => {
            let start = NatsStore::start(
                &opts,
                latest.clone(),
                live.clone(),
                pm.clone(),
                cfg.publish_queue,
                unix_now_ms,
            );
            let s = tokio::select! {
                r = start => r.map_err(|e| anyhow::anyhow!("store {}: {e}", cfg.store))?,
                _ = &mut shutdown => {
                    starting.abort();
                    tracing::info!("shut down before the store was reachable");
                    return Ok(());
                }
            };
            (Store::Nats(s.clone()), s.health(), None)
        }
    };

    starting.abort();
    let _ = starting.await;

    let relay_tls = match cfg.relay_tls() {
        None => {
            if !cfg.relay.ip().is_loopback() {
                tracing::warn!(relay = %cfg.relay, "relay is plaintext off loopback (--relay-insecure): anyone on the path can read and inject cues");
            }
            None
        }
        Some(files) => {
            let t = cue_common::tls::Reloadable::new(move || {
                cue_common::tls::relay_server_config(&files)
            })
            .map_err(|e| anyhow::anyhow!("relay TLS: {e}"))?;
            tracing::info!("relay: TLS 1.3, edges must present a certificate of relay_client_ca");
            let t = Arc::new(t);
            tokio::spawn(reload_on_sighup(t.clone()));
            Some(t)
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let relay_task = tokio::spawn(crate::relay::serve(
        relay,
        latest.clone(),
        live.clone(),
        RelayOptions {
            heartbeat: Duration::from_millis(cfg.relay_heartbeat_ms),
            dead_after: Duration::from_millis(cfg.relay_dead_after_ms),
            write_timeout: Duration::from_millis(cfg.relay_write_timeout_ms),
            max_edges: cfg.max_edges,
            tls: relay_tls,
        },
        rm.clone(),
        crate::store::after_grace(
            health.clone(),
            Duration::from_millis(cfg.relay_unhealthy_grace_ms),
        ),
        stop_rx.clone(),
    ));

    let api = Arc::new(Api {
        store,
        health: health.clone(),
        latest,
        keys,
        render_metrics: {
            let (pm, rm, h) = (pm.clone(), rm.clone(), health.clone());
            Box::new(move || render(&pm, &rm, &h))
        },
        requests: Default::default(),
        refused: Default::default(),
        tenants: crate::tenants::Tenants::new(
            crate::tenants::Quota {
                publishes_per_s: cfg.tenant_publishes_per_s,
                max_events: cfg.tenant_max_events,
            },
            cfg.tenant_quotas.clone(),
        ),
    });
    // Idle retirement holds a store handle: it must end before the writer can.
    let retire_task = (cfg.event_retire_after_s > 0).then(|| {
        tokio::spawn(retire_idle(
            api.store.clone(),
            api.latest.clone(),
            Duration::from_secs(cfg.event_retire_after_s),
            stop_rx.clone(),
        ))
    });
    let api2 = api.clone();
    let mut http_stop = stop_rx.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_http_connections));
    let http_task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            // At the cap, connections wait in the listen backlog (bounded by the kernel).
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = http_stop.changed() => break,
            };
            let (sock, _) = tokio::select! {
                r = http.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = http_stop.changed() => break,
            };
            let api = api2.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req| crate::http::handle(api.clone(), req));
                // The head must arrive within HEADER_TIMEOUT of the connection's first byte
                // wait (however it trickles in); the body has BODY_TIMEOUT (http.rs).
                let _ = http1_settings()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
                drop(permit);
            });
            while conns.try_join_next().is_some() {}
        }
        // Let in-flight requests (publishes waiting for fsync) finish, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
    });

    (&mut shutdown).await;
    tracing::info!("shutting down: closing listeners, finishing in-flight publishes");
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    let _ = relay_task.await;
    if let Some(t) = retire_task {
        let _ = t.await;
    }
    // The writer stops once every publisher handle is gone.
    drop(api);
    if let Some(writer) = writer {
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    tracing::info!("cue-origin stopped");
    Ok(())
}

/// The HTTP/1 settings of every connection on the HTTP port: the head within
/// [`crate::http::HEADER_TIMEOUT`], at most 64 KiB buffered.
fn http1_settings() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(crate::http::HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    b
}

/// Connections answered at once while the store starts; beyond, they wait in the backlog.
const STARTING_CONNECTIONS: usize = 64;

/// Answers every request on `http` with `503 {"status":"starting"}` and `Retry-After: 1` until
/// aborted (the store is up and the API takes the listener over).
async fn answer_starting(http: Arc<TcpListener>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(STARTING_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    // Aborting this task drops the set, which aborts the connections it holds.
    loop {
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let Ok((sock, _)) = http.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        conns.spawn(async move {
            let svc = service_fn(|_req| async {
                let body = "{\"status\":\"starting\",\"reason\":\"the store is not reachable yet (see the log)\"}\n";
                hyper::Response::builder()
                    .status(503)
                    .header("content-type", "application/json")
                    .header("retry-after", "1")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(
                        body.as_bytes(),
                    )))
            });
            let _ = http1_settings()
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), svc)
                .await;
            drop(permit);
        });
        while conns.try_join_next().is_some() {}
    }
}

/// Retires every event whose newest cue is older than `after`, checking every `after / 4`
/// (1 s..=60 s), until the process ends. Several origins on one stream may race for the same
/// event: the store's compare-and-set lets one retire it, the others find it gone.
async fn retire_idle(
    store: Store,
    latest: Latest,
    after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let after_ms = after.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let cutoff = unix_now_ms().saturating_sub(after_ms);
        let idle: Vec<EventName> = latest
            .read()
            .expect("latest lock")
            .values()
            .filter(|c| c.ts() < cutoff)
            .map(|c| c.event().clone())
            .collect();
        for ev in idle {
            match store.retire(ev.clone()).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(event = %ev, error = %e, "retiring an idle event failed; will retry");
                }
            }
        }
    }
}

fn render(pm: &PublishMetrics, rm: &RelayMetrics, health: &Health) -> String {
    let mut s = String::with_capacity(4096);
    single(
        &mut s,
        "cue_origin_published_total",
        "counter",
        "Cues made durable.",
        pm.published.get(),
    );
    single(
        &mut s,
        "cue_origin_publish_failed_total",
        "counter",
        "Publishes refused because the log failed.",
        pm.failed.get(),
    );
    single(
        &mut s,
        "cue_origin_publish_batches_total",
        "counter",
        "Group commits written (embedded) or publishes sent to JetStream.",
        pm.batches.get(),
    );
    single(
        &mut s,
        "cue_origin_publish_overloaded_total",
        "counter",
        "Publishes refused because the publish queue was full.",
        pm.overloaded.get(),
    );
    single(
        &mut s,
        "cue_origin_publish_idempotent_repeats_total",
        "counter",
        "Publishes answered with an earlier cue for their Idempotency-Key.",
        pm.idempotent_repeats.get(),
    );
    single(
        &mut s,
        "cue_origin_publish_seq_conflicts_total",
        "counter",
        "JetStream publishes retried because another origin published the event first.",
        pm.seq_conflicts.get(),
    );
    header(
        &mut s,
        "cue_origin_publish_durable_seconds",
        "histogram",
        "Publish request to durable.",
    );
    pm.durable_latency
        .render(&mut s, "cue_origin_publish_durable_seconds", "");
    single(
        &mut s,
        "cue_origin_log_bytes",
        "gauge",
        "Size of the cue log.",
        pm.log_bytes.get(),
    );
    single(
        &mut s,
        "cue_origin_log_compactions_total",
        "counter",
        "Log compactions since start.",
        pm.compactions.get(),
    );
    single(
        &mut s,
        "cue_origin_events",
        "gauge",
        "Events with a current cue.",
        pm.events.get(),
    );
    single(
        &mut s,
        "cue_origin_edges",
        "gauge",
        "Edges linked now.",
        rm.edges.get(),
    );
    single(
        &mut s,
        "cue_origin_edge_links_total",
        "counter",
        "Edge links accepted.",
        rm.accepted.get(),
    );
    single(
        &mut s,
        "cue_origin_edge_links_refused_total",
        "counter",
        "Edge links refused (max_edges).",
        rm.refused.get(),
    );
    single(
        &mut s,
        "cue_origin_edge_links_dropped_total",
        "counter",
        "Edge links ended by error, silence or write timeout.",
        rm.dropped.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_cues_sent_total",
        "counter",
        "Cues sent to edges.",
        rm.cues_sent.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_catch_up_cues_total",
        "counter",
        "Catch-up cues sent after HELLO or resync.",
        rm.catch_up_cues.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_store_unhealthy_total",
        "counter",
        "Edge links refused or dropped because the store was unhealthy.",
        rm.store_unhealthy.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_tls_refused_total",
        "counter",
        "Relay dialers refused in the TLS handshake.",
        rm.tls_refused.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_cues_out_of_scope_total",
        "counter",
        "Live cues not relayed to an edge that does not carry their tenant, once per edge.",
        rm.cues_out_of_scope.get(),
    );
    single(
        &mut s,
        "cue_origin_store_healthy",
        "gauge",
        "1 while the store can make cues durable, else 0.",
        u8::from(health.borrow().is_none()),
    );
    single(
        &mut s,
        "cue_origin_log_skipped_bytes",
        "gauge",
        "Corrupt bytes skipped between valid records when the log was recovered at start (their records are lost); page on > 0.",
        pm.log_skipped_bytes.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_retirements_sent_total",
        "counter",
        "RETIRED frames sent to edges (an event retired while linked, or found retired at HELLO).",
        rm.retirements_sent.get(),
    );
    single(
        &mut s,
        "cue_origin_events_retired_total",
        "counter",
        "Events retired (DELETE, or idle past event_retire_after_s).",
        pm.retired.get(),
    );
    single(
        &mut s,
        "cue_origin_relay_resyncs_total",
        "counter",
        "Edges that lagged and were resynchronised.",
        rm.resyncs.get(),
    );
    s
}
