//! Quotas and counts per tenant in one shard (docs/tenants.md): devices admitted and events
//! followed per tenant against the tenant's quota, and the per-tenant metrics.
//!
//! The table lives in [`crate::stats::ShardStats::tenants`] (a mutex the shard takes on
//! admissions, closes and once per fanout slice of an event, and the admin server when it
//! renders): index 0 is the default tenant, 1 gathers the tenants past [`MAX_TENANTS`]
//! (`_other`, which then share one quota), named tenants follow.

use std::collections::HashMap;

/// Most tenants with an entry (and a metrics label) of their own per shard.
pub const MAX_TENANTS: usize = 64;
/// Index of the default tenant.
pub const DEFAULT: u16 = 0;
/// Index of the tenants past [`MAX_TENANTS`].
pub const OTHER: u16 = 1;

/// A tenant's quotas in one shard (the process's quota divided among its shards); 0: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Devices admitted at once.
    pub max_devices: usize,
    /// Events followed at once (events with at least one of its devices).
    pub max_events: usize,
}

/// The quotas of every tenant in one shard.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    /// For named tenants without an entry of their own (and for `_other`).
    pub defaults: Quota,
    /// By tenant name; `_default` for the default tenant (which otherwise has none).
    pub by_name: HashMap<String, Quota>,
}

/// Which quota a refusal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// `max_devices`.
    Devices = 0,
    /// `max_events`.
    Events = 1,
}

impl QuotaKind {
    /// Its name, as configured and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Devices => "max_devices",
            QuotaKind::Events => "max_events",
        }
    }
}

/// One tenant's entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its label: the tenant's name, `_default` or `_other`.
    pub name: String,
    /// Its quota here.
    pub quota: Quota,
    /// Devices admitted now.
    pub devices: usize,
    /// Events followed now.
    pub events: usize,
    /// Fanout deliveries.
    pub deliveries: u64,
    /// Refusals by [`QuotaKind`].
    pub refused: [u64; 2],
}

impl Entry {
    fn new(name: &str, quota: Quota) -> Self {
        Self {
            name: name.to_string(),
            quota,
            devices: 0,
            events: 0,
            deliveries: 0,
            refused: [0; 2],
        }
    }
}

/// Every tenant seen by one shard.
#[derive(Debug, Clone)]
pub struct Table {
    quotas: Quotas,
    index: HashMap<String, u16>,
    /// Entries by index.
    pub entries: Vec<Entry>,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(Quotas::default())
    }
}

impl Table {
    /// An empty table under `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        let default = quotas.by_name.get("_default").copied().unwrap_or_default();
        let entries = vec![
            Entry::new("_default", default),
            Entry::new("_other", quotas.defaults),
        ];
        Self {
            quotas,
            index: HashMap::new(),
            entries,
        }
    }

    /// The index of `tenant` (`None`: the default tenant), given an entry when there is room.
    pub fn index(&mut self, tenant: Option<&str>) -> u16 {
        let Some(t) = tenant else { return DEFAULT };
        if let Some(&i) = self.index.get(t) {
            return i;
        }
        if self.entries.len() >= MAX_TENANTS + 2 {
            return OTHER;
        }
        let i = self.entries.len() as u16;
        let quota = self
            .quotas
            .by_name
            .get(t)
            .copied()
            .unwrap_or(self.quotas.defaults);
        self.entries.push(Entry::new(t, quota));
        self.index.insert(t.to_string(), i);
        i
    }

    /// Whether tenant `i` may admit one more device that would start following `new_events`
    /// events; the refusal (counted) names the quota and its value.
    pub fn admit(&mut self, i: u16, new_events: usize) -> Result<(), (QuotaKind, usize)> {
        let e = &mut self.entries[i as usize];
        let q = e.quota;
        let refused = if q.max_devices > 0 && e.devices >= q.max_devices {
            Some((QuotaKind::Devices, q.max_devices))
        } else if q.max_events > 0 && new_events > 0 && e.events + new_events > q.max_events {
            Some((QuotaKind::Events, q.max_events))
        } else {
            None
        };
        match refused {
            Some((k, n)) => {
                e.refused[k as usize] += 1;
                Err((k, n))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_hold_per_tenant_and_the_table_is_bounded() {
        let mut by_name = HashMap::new();
        by_name.insert(
            "acme".to_string(),
            Quota {
                max_devices: 1,
                max_events: 0,
            },
        );
        let mut t = Table::new(Quotas {
            defaults: Quota {
                max_devices: 0,
                max_events: 2,
            },
            by_name,
        });
        let a = t.index(Some("acme"));
        assert_eq!(t.index(Some("acme")), a);
        assert!(t.admit(a, 5).is_ok(), "acme has no events quota");
        t.entries[a as usize].devices = 1;
        assert_eq!(t.admit(a, 0), Err((QuotaKind::Devices, 1)));
        let b = t.index(Some("b"));
        assert!(t.admit(b, 2).is_ok());
        t.entries[b as usize].events = 2;
        assert_eq!(t.admit(b, 1), Err((QuotaKind::Events, 2)));
        assert!(t.admit(b, 0).is_ok(), "a device of followed events only");
        assert!(
            t.admit(DEFAULT, 100).is_ok(),
            "the default tenant has no quota"
        );
        assert_eq!(t.entries[b as usize].refused, [0, 1]);
        for i in 0..MAX_TENANTS * 2 {
            t.index(Some(&format!("t{i}")));
        }
        assert_eq!(t.entries.len(), MAX_TENANTS + 2);
        assert_eq!(t.index(Some("late")), OTHER);
    }
}
