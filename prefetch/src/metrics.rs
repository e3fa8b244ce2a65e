//! The service's counters and their Prometheus rendering (the primitives are `cue_common`'s).

use cue_common::metrics::{header, sample, single, Counter, Gauge, Histogram};

use crate::cache::CacheStats;
use crate::shed::Priority;

/// Statuses counted individually in `cue_prefetch_http_responses_total`; others count as
/// `other`.
pub const STATUSES: [u16; 10] = [200, 204, 304, 400, 401, 403, 404, 405, 503, 504];

/// Per-class counters.
#[derive(Debug, Default)]
pub struct ClassMetrics {
    /// Prefetch requests of this class.
    pub requests: Counter,
    /// Answered 200.
    pub served: Counter,
    /// Answered 304.
    pub not_modified: Counter,
    /// Shed with 503.
    pub shed: Counter,
    /// Handling time of admitted requests.
    pub latency: Histogram,
}

/// Everything `/metrics` shows.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per class, in [`Priority::ALL`] order.
    pub class: [ClassMetrics; 3],
    /// Responses by status ([`STATUSES`] then other).
    pub responses: [Counter; STATUSES.len() + 1],
    /// Requests being handled.
    pub in_flight: Gauge,
    /// Every HTTP request.
    pub requests: Counter,
    /// Schedule answers.
    pub schedules: Counter,
    /// CORS preflights (`OPTIONS`) answered for an allowed origin.
    pub cors_preflights: Counter,
    /// CORS preflights refused: origin not allowed, or a method or header the API does not take.
    pub cors_refused: Counter,
    /// Requests that asked for `critical` without a token granting it (served as `normal`).
    pub critical_demoted: Counter,
    /// Connections closed because an answer was not read within `write_timeout_ms`.
    pub write_timeouts: std::sync::Arc<Counter>,
    /// Upstream calls started.
    pub upstream_calls: Counter,
    /// Upstream calls in flight.
    pub upstream_in_flight: Gauge,
    /// Upstream call time.
    pub upstream_latency: Histogram,
    /// Upstream errors by kind: not_found, status, timeout, io, too_large, bad_body.
    pub upstream_errors: [Counter; 6],
    /// Origin polls and failed ones.
    pub origin_polls: Counter,
    /// Origin polls that failed.
    pub origin_poll_errors: Counter,
    /// Catalog reloads done and refused.
    pub catalog_reloads: Counter,
    /// Catalog reloads refused (bad file; the previous catalog stays).
    pub catalog_reload_errors: Counter,
    /// Events in the catalog.
    pub catalog_events: Gauge,
    /// Live events now.
    pub live_events: Gauge,
    /// Load level (0 calm, 1 elevated, 2 high).
    pub load_level: Gauge,
    /// Smoothed queue time, µs.
    pub queue_us: Gauge,
    /// Smoothed requests per second.
    pub rps: Gauge,
    /// Prefetch requests by tenant (`_default`; at most [`MAX_TENANT_LABELS`] names, the rest
    /// under `_other`).
    pub tenant_requests: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Most tenants with a label of their own in `cue_prefetch_tenant_requests_total`.
pub const MAX_TENANT_LABELS: usize = 64;

/// Upstream error kinds in [`Metrics::upstream_errors`] order.
pub const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "not_found",
    "status",
    "timeout",
    "io",
    "too_large",
    "bad_body",
];

impl Metrics {
    /// Counts a prefetch request of a device of `tenant` (`None`: the default tenant).
    pub fn tenant_request(&self, tenant: Option<&str>) {
        let mut m = self.tenant_requests.lock().expect("tenant metrics lock");
        let l = tenant.unwrap_or("_default");
        let named = m.keys().filter(|k| *k != "_other").count();
        let l = if m.contains_key(l) || named < MAX_TENANT_LABELS {
            l
        } else {
            "_other"
        };
        *m.entry(l.to_string()).or_default() += 1;
    }

    /// Counts a response status.
    pub fn response(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.responses[i].inc();
    }

    /// Counts an upstream error of `kind`.
    pub fn upstream_error(&self, kind: &str) {
        if let Some(i) = UPSTREAM_ERROR_KINDS.iter().position(|&k| k == kind) {
            self.upstream_errors[i].inc();
        }
    }

    /// Prometheus text, with the cache's figures.
    pub fn render(&self, cache: Option<(CacheStats, usize, usize)>) -> String {
        let mut s = String::with_capacity(8192);
        header(
            &mut s,
            "cue_prefetch_tenant_requests_total",
            "counter",
            "Prefetch requests by the device's tenant (_default: the default tenant; _other: past the label bound).",
        );
        for (t, n) in self
            .tenant_requests
            .lock()
            .expect("tenant metrics lock")
            .iter()
        {
            sample(
                &mut s,
                "cue_prefetch_tenant_requests_total",
                &format!("tenant=\"{t}\""),
                n,
            );
        }
        let per_class =
            |s: &mut String, name: &str, help: &str, f: &dyn Fn(&ClassMetrics) -> u64| {
                header(s, name, "counter", help);
                for p in Priority::ALL {
                    sample(
                        s,
                        name,
                        &format!("class=\"{}\"", p.as_str()),
                        f(&self.class[p.index()]),
                    );
                }
            };
        per_class(
            &mut s,
            "cue_prefetch_requests_total",
            "Prefetch requests by priority class.",
            &|c| c.requests.get(),
        );
        per_class(
            &mut s,
            "cue_prefetch_served_total",
            "Prefetch requests answered 200, by class.",
            &|c| c.served.get(),
        );
        per_class(
            &mut s,
            "cue_prefetch_not_modified_total",
            "Prefetch requests answered 304, by class.",
            &|c| c.not_modified.get(),
        );
        per_class(
            &mut s,
            "cue_prefetch_shed_total",
            "Prefetch requests shed with 503, by class.",
            &|c| c.shed.get(),
        );
        header(
            &mut s,
            "cue_prefetch_request_seconds",
            "histogram",
            "Handling time of admitted prefetch requests.",
        );
        for p in Priority::ALL {
            self.class[p.index()].latency.render(
                &mut s,
                "cue_prefetch_request_seconds",
                &format!("class=\"{}\"", p.as_str()),
            );
        }
        header(
            &mut s,
            "cue_prefetch_http_responses_total",
            "counter",
            "HTTP responses by status.",
        );
        for (i, st) in STATUSES.iter().enumerate() {
            sample(
                &mut s,
                "cue_prefetch_http_responses_total",
                &format!("status=\"{st}\""),
                self.responses[i].get(),
            );
        }
        sample(
            &mut s,
            "cue_prefetch_http_responses_total",
            "status=\"other\"",
            self.responses[STATUSES.len()].get(),
        );
        single(
            &mut s,
            "cue_prefetch_http_requests_total",
            "counter",
            "HTTP requests.",
            self.requests.get(),
        );
        single(
            &mut s,
            "cue_prefetch_schedules_total",
            "counter",
            "Schedule answers.",
            self.schedules.get(),
        );
        single(
            &mut s,
            "cue_prefetch_write_timeouts_total",
            "counter",
            "Connections closed because an answer was not read within write_timeout_ms.",
            self.write_timeouts.get(),
        );
        single(
            &mut s,
            "cue_prefetch_cors_preflights_total",
            "counter",
            "CORS preflights (OPTIONS) answered for an allowed page origin.",
            self.cors_preflights.get(),
        );
        single(
            &mut s,
            "cue_prefetch_cors_refused_total",
            "counter",
            "CORS preflights refused (origin not allowed, or a method or header the API does not take).",
            self.cors_refused.get(),
        );
        single(
            &mut s,
            "cue_prefetch_critical_demoted_total",
            "counter",
            "Requests asking for critical without a token claim granting it (served as normal).",
            self.critical_demoted.get(),
        );
        single(
            &mut s,
            "cue_prefetch_in_flight",
            "gauge",
            "Requests being handled.",
            self.in_flight.get(),
        );
        if let Some((c, entries, bytes)) = cache {
            single(
                &mut s,
                "cue_prefetch_cache_hits_total",
                "counter",
                "Fresh cache hits.",
                c.hits,
            );
            single(
                &mut s,
                "cue_prefetch_cache_stale_total",
                "counter",
                "Stale entries served (while revalidating or while the upstream fails).",
                c.stale,
            );
            single(
                &mut s,
                "cue_prefetch_cache_misses_total",
                "counter",
                "Misses that started an upstream call.",
                c.misses,
            );
            single(
                &mut s,
                "cue_prefetch_cache_coalesced_total",
                "counter",
                "Misses that waited for a call already in flight.",
                c.coalesced,
            );
            single(
                &mut s,
                "cue_prefetch_cache_negative_total",
                "counter",
                "Cached upstream errors served.",
                c.negative,
            );
            single(
                &mut s,
                "cue_prefetch_cache_evictions_total",
                "counter",
                "Entries evicted for room.",
                c.evictions,
            );
            single(
                &mut s,
                "cue_prefetch_cache_busy_total",
                "counter",
                "Lookups refused for room (waiters or in-flight entries at the limit).",
                c.busy,
            );
            single(
                &mut s,
                "cue_prefetch_cache_entries",
                "gauge",
                "Cache entries.",
                entries,
            );
            single(
                &mut s,
                "cue_prefetch_cache_bytes",
                "gauge",
                "Cache bytes charged.",
                bytes,
            );
        }
        single(
            &mut s,
            "cue_prefetch_upstream_calls_total",
            "counter",
            "Upstream calls started.",
            self.upstream_calls.get(),
        );
        single(
            &mut s,
            "cue_prefetch_upstream_in_flight",
            "gauge",
            "Upstream calls in flight.",
            self.upstream_in_flight.get(),
        );
        header(
            &mut s,
            "cue_prefetch_upstream_errors_total",
            "counter",
            "Upstream errors by kind.",
        );
        for (i, k) in UPSTREAM_ERROR_KINDS.iter().enumerate() {
            sample(
                &mut s,
                "cue_prefetch_upstream_errors_total",
                &format!("kind=\"{k}\""),
                self.upstream_errors[i].get(),
            );
        }
        header(
            &mut s,
            "cue_prefetch_upstream_seconds",
            "histogram",
            "Upstream call time.",
        );
        self.upstream_latency
            .render(&mut s, "cue_prefetch_upstream_seconds", "");
        single(
            &mut s,
            "cue_prefetch_origin_polls_total",
            "counter",
            "Polls of the origin's current cue.",
            self.origin_polls.get(),
        );
        single(
            &mut s,
            "cue_prefetch_origin_poll_errors_total",
            "counter",
            "Origin polls that failed.",
            self.origin_poll_errors.get(),
        );
        single(
            &mut s,
            "cue_prefetch_catalog_events",
            "gauge",
            "Events in the catalog.",
            self.catalog_events.get(),
        );
        single(
            &mut s,
            "cue_prefetch_catalog_reloads_total",
            "counter",
            "Catalog reloads.",
            self.catalog_reloads.get(),
        );
        single(
            &mut s,
            "cue_prefetch_catalog_reload_errors_total",
            "counter",
            "Catalog reloads refused (the previous catalog stays).",
            self.catalog_reload_errors.get(),
        );
        single(
            &mut s,
            "cue_prefetch_live_events",
            "gauge",
            "Events live now (cue published, window on).",
            self.live_events.get(),
        );
        single(
            &mut s,
            "cue_prefetch_load_level",
            "gauge",
            "Load level: 0 calm, 1 elevated (shed background), 2 high (shed normal).",
            self.load_level.get(),
        );
        single(
            &mut s,
            "cue_prefetch_queue_seconds",
            "gauge",
            "Smoothed queue time (runtime lateness).",
            self.queue_us.get() as f64 / 1e6,
        );
        single(
            &mut s,
            "cue_prefetch_requests_per_second",
            "gauge",
            "Smoothed request rate.",
            self.rps.get(),
        );
        s
    }
}
