//! Quotas and metrics per tenant at the origin (docs/tenants.md).
//!
//! * Publishes per second: a token bucket per tenant holding one second's worth; a publish
//!   beyond it is `429` naming the tenant and the quota, with `Retry-After: 1`.
//! * Events: a publish that would start one more event of a tenant at its `max_events` is `429`
//!   too (publishes to its existing events go on).
//!
//! Named tenants get `tenant_publishes_per_s` and `tenant_max_events` unless
//! `[tenant_quotas.NAME]` says otherwise; the default tenant (a one-tenant deployment, or the
//! operator's own events) has no quota unless `[tenant_quotas._default]` gives it one. The
//! bucket table is bounded ([`MAX_BUCKETS`]); the metrics label at most [`MAX_LABELS`] tenants
//! and count the rest under `tenant="_other"`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

use cue_common::cue::EventName;
use cue_common::metrics::{header, sample};

/// The label and quota-table name of the default tenant.
pub const DEFAULT_TENANT: &str = "_default";
/// The label every tenant past [`MAX_LABELS`] is counted under.
pub const OTHER_TENANTS: &str = "_other";
/// Most tenants with a label of their own in the metrics.
pub const MAX_LABELS: usize = 64;
/// Most tenants with a publish bucket at once; beyond, a full (idle) bucket makes room, and
/// with none full the new tenant shares the default quota's bucket of `_other`.
pub const MAX_BUCKETS: usize = 65_536;

/// One tenant's quotas as configured (`[tenant_quotas.NAME]`); an absent field takes the default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuotaConfig {
    /// Publishes per second (a bucket of one second's worth); 0: no limit.
    pub publishes_per_s: Option<u32>,
    /// Events at once; 0: no limit.
    pub max_events: Option<usize>,
}

/// A tenant's effective quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Publishes per second; 0: no limit.
    pub publishes_per_s: u32,
    /// Events at once; 0: no limit.
    pub max_events: usize,
}

/// Which quota a refusal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `publishes_per_s`.
    Publishes = 0,
    /// `max_events`.
    Events = 1,
}

impl QuotaKind {
    /// The quota's name, as configured and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Publishes => "publishes_per_s",
            QuotaKind::Events => "max_events",
        }
    }
}

/// A publish refused for a tenant's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    /// The tenant's label (`_default` for the default tenant).
    pub tenant: String,
    /// The quota.
    pub kind: QuotaKind,
    /// Its value.
    pub limit: u64,
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tenant {} is at its quota {} ({})",
            self.tenant,
            self.kind.as_str(),
            self.limit
        )
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Counts {
    /// Publishes by label.
    publishes: BTreeMap<String, u64>,
    /// Refusals by (label, quota).
    refused: BTreeMap<String, [u64; 2]>,
}

/// The quotas and per-tenant counts of one origin.
#[derive(Debug)]
pub struct Tenants {
    defaults: Quota,
    overrides: HashMap<String, TenantQuotaConfig>,
    buckets: Mutex<HashMap<String, Bucket>>,
    counts: Mutex<Counts>,
}

/// The label of `tenant` (`None`: the default tenant).
pub fn label(tenant: Option<&str>) -> &str {
    tenant.unwrap_or(DEFAULT_TENANT)
}

impl Tenants {
    /// Quotas: `defaults` for named tenants, `overrides` by tenant name (`_default` for the
    /// default tenant, which otherwise has none).
    pub fn new(defaults: Quota, overrides: BTreeMap<String, TenantQuotaConfig>) -> Self {
        Self {
            defaults,
            overrides: overrides.into_iter().collect(),
            buckets: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// `tenant`'s quotas (`None` for the default tenant without a `_default` entry: no quota).
    pub fn quota(&self, tenant: Option<&str>) -> Option<Quota> {
        let o = self.overrides.get(label(tenant));
        if tenant.is_none() && o.is_none() {
            return None;
        }
        let o = o.cloned().unwrap_or_default();
        Some(Quota {
            publishes_per_s: o.publishes_per_s.unwrap_or(self.defaults.publishes_per_s),
            max_events: o.max_events.unwrap_or(self.defaults.max_events),
        })
    }

    /// Checks a publish to `event` at `now`: `new_event` is true when it would start an event,
    /// and `events` counts the tenant's events (asked only then). Takes a token on success.
    pub fn admit(
        &self,
        event: &EventName,
        new_event: bool,
        events: impl FnOnce() -> usize,
        now: Instant,
    ) -> Result<(), QuotaRefusal> {
        let tenant = event.tenant();
        let Some(q) = self.quota(tenant) else {
            return Ok(());
        };
        let refuse = |kind, limit: u64| {
            let r = QuotaRefusal {
                tenant: label(tenant).to_string(),
                kind,
                limit,
            };
            self.count_refusal(&r);
            Err(r)
        };
        if q.max_events > 0 && new_event && events() >= q.max_events {
            return refuse(QuotaKind::Events, q.max_events as u64);
        }
        if q.publishes_per_s > 0 {
            let rate = f64::from(q.publishes_per_s);
            let mut b = self.buckets.lock().expect("buckets lock");
            let key = label(tenant);
            if !b.contains_key(key) && b.len() >= MAX_BUCKETS {
                // Room: a bucket full again belongs to a tenant idle for a second or more.
                let idle = b
                    .iter()
                    .find(|(_, v)| v.tokens + now.duration_since(v.at).as_secs_f64() * rate >= rate)
                    .map(|(k, _)| k.clone());
                if let Some(k) = idle {
                    b.remove(&k);
                }
            }
            let key = if b.contains_key(key) || b.len() < MAX_BUCKETS {
                key
            } else {
                OTHER_TENANTS
            };
            let bucket = b.entry(key.to_string()).or_insert(Bucket {
                tokens: rate,
                at: now,
            });
            bucket.tokens =
                (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
            bucket.at = now;
            if bucket.tokens < 1.0 {
                drop(b);
                return refuse(QuotaKind::Publishes, u64::from(q.publishes_per_s));
            }
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// Counts a publish of `tenant` that was made durable.
    pub fn published(&self, tenant: Option<&str>) {
        let mut c = self.counts.lock().expect("counts lock");
        let l = bounded(&c.publishes, label(tenant));
        *c.publishes.entry(l).or_default() += 1;
    }

    fn count_refusal(&self, r: &QuotaRefusal) {
        let mut c = self.counts.lock().expect("counts lock");
        let l = bounded(&c.refused, &r.tenant);
        c.refused.entry(l).or_default()[r.kind as usize] += 1;
    }

    /// `cue_origin_tenant_publishes_total{tenant}` and
    /// `cue_origin_tenant_refused_total{tenant,quota}`.
    pub fn render(&self, out: &mut String) {
        let c = self.counts.lock().expect("counts lock");
        header(
            out,
            "cue_origin_tenant_publishes_total",
            "counter",
            "Cues made durable, by tenant (_default: the default tenant; _other: tenants past the label bound).",
        );
        for (t, n) in &c.publishes {
            sample(
                out,
                "cue_origin_tenant_publishes_total",
                &format!("tenant=\"{t}\""),
                *n,
            );
        }
        header(
            out,
            "cue_origin_tenant_refused_total",
            "counter",
            "Publishes refused with 429 for a tenant's quota, by tenant and quota.",
        );
        for (t, counts) in &c.refused {
            for (kind, n) in [QuotaKind::Publishes, QuotaKind::Events].iter().zip(counts) {
                if *n > 0 {
                    sample(
                        out,
                        "cue_origin_tenant_refused_total",
                        &format!("tenant=\"{t}\",quota=\"{}\"", kind.as_str()),
                        *n,
                    );
                }
            }
        }
    }
}

/// `l` when it already has a label or there is room for one, else [`OTHER_TENANTS`].
fn bounded<V>(labelled: &BTreeMap<String, V>, l: &str) -> String {
    let named = labelled.keys().filter(|k| *k != OTHER_TENANTS).count();
    if labelled.contains_key(l) || named < MAX_LABELS {
        l.to_string()
    } else {
        OTHER_TENANTS.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(t: Option<&str>, e: &str) -> EventName {
        EventName::qualify(t, e).unwrap()
    }

    #[test]
    fn a_tenant_at_its_rate_is_refused_and_others_are_not() {
        let mut o = BTreeMap::new();
        o.insert(
            "slow".to_string(),
            TenantQuotaConfig {
                publishes_per_s: Some(2),
                max_events: None,
            },
        );
        let t = Tenants::new(
            Quota {
                publishes_per_s: 100,
                max_events: 0,
            },
            o,
        );
        let now = Instant::now();
        let slow = ev(Some("slow"), "e");
        assert!(t.admit(&slow, false, || 0, now).is_ok());
        assert!(t.admit(&slow, false, || 0, now).is_ok());
        let r = t.admit(&slow, false, || 0, now).unwrap_err();
        assert_eq!(
            (r.tenant.as_str(), r.kind, r.limit),
            ("slow", QuotaKind::Publishes, 2)
        );
        assert_eq!(
            r.to_string(),
            "tenant slow is at its quota publishes_per_s (2)"
        );
        // Another tenant, and the default one (no quota), are not held back by it.
        for _ in 0..50 {
            t.admit(&ev(Some("fast"), "e"), false, || 0, now).unwrap();
            t.admit(&ev(None, "e"), false, || 0, now).unwrap();
        }
        // Refilled at its rate.
        assert!(t
            .admit(&slow, false, || 0, now + Duration::from_millis(600))
            .is_ok());
        let mut m = String::new();
        t.render(&mut m);
        assert!(
            m.contains(
                "cue_origin_tenant_refused_total{tenant=\"slow\",quota=\"publishes_per_s\"} 1"
            ),
            "{m}"
        );
    }

    #[test]
    fn max_events_refuses_a_new_event_only_and_the_default_tenant_may_get_a_quota() {
        let mut o = BTreeMap::new();
        o.insert(
            DEFAULT_TENANT.to_string(),
            TenantQuotaConfig {
                publishes_per_s: None,
                max_events: Some(1),
            },
        );
        let t = Tenants::new(
            Quota {
                publishes_per_s: 0,
                max_events: 2,
            },
            o,
        );
        let now = Instant::now();
        let a = ev(Some("a"), "x");
        assert!(t.admit(&a, true, || 1, now).is_ok());
        let r = t.admit(&a, true, || 2, now).unwrap_err();
        assert_eq!(r.kind, QuotaKind::Events);
        assert!(
            t.admit(&a, false, || 2, now).is_ok(),
            "an existing event goes on"
        );
        let r = t.admit(&ev(None, "x"), true, || 1, now).unwrap_err();
        assert_eq!((r.tenant.as_str(), r.limit), ("_default", 1));
    }

    #[test]
    fn labels_are_bounded_and_the_rest_is_other() {
        let t = Tenants::new(
            Quota {
                publishes_per_s: 0,
                max_events: 0,
            },
            BTreeMap::new(),
        );
        for i in 0..MAX_LABELS + 10 {
            t.published(Some(&format!("t{i}")));
        }
        let mut m = String::new();
        t.render(&mut m);
        let lines = m
            .lines()
            .filter(|l| l.starts_with("cue_origin_tenant_publishes_total{"))
            .count();
        assert_eq!(lines, MAX_LABELS + 1);
        assert!(
            m.contains("cue_origin_tenant_publishes_total{tenant=\"_other\"} 10"),
            "{m}"
        );
    }
}
