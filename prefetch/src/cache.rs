//! The server-side cache of upstream stage maps, sans-IO: the caller passes `now` and a uniform
//! number from its seeded RNG; the cache says what to do (serve, serve stale and refresh, fetch,
//! wait for the fetch in flight, serve the cached error) and the caller does the I/O.
//!
//! * **Bounded** in entries and in bytes; the least recently used entry goes first. Entries with
//!   a fetch in flight are never evicted (their waiters would be lost); when every entry has one,
//!   a new key is refused ([`Lookup::Busy`]) rather than growing the map.
//! * **Jittered TTL**: each fill lives `ttl` shortened by up to `ttl_jitter` of itself, so entries
//!   filled together (a cold start, a herd) do not expire together.
//! * **Single-flight**: at most one fetch per key at a time; concurrent misses wait for it
//!   (at most `max_waiters` per key, then `Busy`).
//! * **Stale-while-revalidate**: an expired entry is served for up to `stale_for` while one
//!   refresh runs, so expiry never sends a herd upstream.
//! * **Negative caching**: a failed fetch is remembered for `negative_ttl`: a miss gets the cached
//!   error, and a stale entry keeps being served without a new refresh (stale-if-error), so a
//!   failing upstream sees at most one call per key per `negative_ttl`.

use std::hash::Hash;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::schedule::jittered_ttl;

/// Cache bounds and lifetimes.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most entries (including ones being fetched).
    pub max_entries: usize,
    /// Most bytes of values (plus a fixed overhead per entry).
    pub max_bytes: usize,
    /// Fraction (0..1) by which each fill's TTL is shortened at random.
    pub ttl_jitter: f64,
    /// How long past its TTL an entry may still be served while it is refreshed.
    pub stale_for: Duration,
    /// How long a failed fetch is remembered.
    pub negative_ttl: Duration,
    /// Most requests waiting on one key's fetch.
    pub max_waiters: usize,
}

/// Bytes charged per entry on top of its value (key, bookkeeping).
pub const ENTRY_OVERHEAD: usize = 128;

/// What to do for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V, E> {
    /// Fresh: serve it.
    Hit(V),
    /// Past its TTL but within `stale_for`: serve it. With `refresh`, this caller must fetch and
    /// call [`Cache::complete`]; otherwise a refresh is already running or backing off.
    Stale {
        /// The stale value.
        value: V,
        /// Whether this caller starts the refresh.
        refresh: bool,
    },
    /// The last fetch failed and no value is held: answer with this error.
    Negative(E),
    /// Nothing held, nothing in flight: this caller must fetch and call [`Cache::complete`].
    Fill,
    /// A fetch for this key is in flight: call [`Cache::wait`] to be told its outcome.
    InFlight,
    /// No room: too many waiters on this key, or every entry is being fetched.
    Busy,
}

/// Counts of what the cache did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Fresh hits.
    pub hits: u64,
    /// Stale hits.
    pub stale: u64,
    /// Misses that started a fetch.
    pub misses: u64,
    /// Misses that joined a fetch in flight.
    pub coalesced: u64,
    /// Cached errors served.
    pub negative: u64,
    /// Entries evicted for room.
    pub evictions: u64,
    /// Lookups refused for room.
    pub busy: u64,
}

#[derive(Debug)]
struct Held<V> {
    value: V,
    bytes: usize,
    fresh_until: Instant,
    stale_until: Instant,
}

#[derive(Debug)]
struct Entry<V, E, W> {
    held: Option<Held<V>>,
    /// Last failure and until when it stands.
    negative: Option<(E, Instant)>,
    /// Waiters of the fetch in flight; `Some` while one is.
    flight: Option<Vec<W>>,
}

/// The cache. `W` is whatever the caller uses to wake a waiter (a channel sender; a number in
/// tests).
#[derive(Debug)]
pub struct Cache<K: Hash + Eq, V, E, W> {
    cfg: CacheConfig,
    map: LruCache<K, Entry<V, E, W>>,
    bytes: usize,
    stats: CacheStats,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone, W> Cache<K, V, E, W> {
    /// An empty cache.
    pub fn new(cfg: CacheConfig) -> Self {
        Self {
            cfg,
            map: LruCache::unbounded(),
            bytes: 0,
            stats: CacheStats::default(),
        }
    }

    /// Entries held (including in-flight ones).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the cache did so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Decides what a request for `key` at `now` does.
    pub fn lookup(&mut self, key: &K, now: Instant) -> Lookup<V, E> {
        let Some(e) = self.map.get_mut(key) else {
            if !self.make_room(ENTRY_OVERHEAD) {
                self.stats.busy += 1;
                return Lookup::Busy;
            }
            self.map.put(
                key.clone(),
                Entry {
                    held: None,
                    negative: None,
                    flight: Some(Vec::new()),
                },
            );
            self.bytes += ENTRY_OVERHEAD;
            self.stats.misses += 1;
            return Lookup::Fill;
        };
        if e.held.as_ref().is_some_and(|h| now >= h.stale_until) {
            let h = e.held.take().expect("checked");
            self.bytes -= h.bytes;
        }
        if e.negative.as_ref().is_some_and(|(_, until)| now >= *until) {
            e.negative = None;
        }
        match (&e.held, &e.negative, &e.flight) {
            (Some(h), _, _) if now < h.fresh_until => {
                self.stats.hits += 1;
                Lookup::Hit(h.value.clone())
            }
            (Some(h), neg, flight) => {
                self.stats.stale += 1;
                let refresh = neg.is_none() && flight.is_none();
                let value = h.value.clone();
                if refresh {
                    e.flight = Some(Vec::new());
                }
                Lookup::Stale { value, refresh }
            }
            (None, Some((err, _)), _) => {
                self.stats.negative += 1;
                Lookup::Negative(err.clone())
            }
            (None, None, Some(_)) => {
                self.stats.coalesced += 1;
                Lookup::InFlight
            }
            (None, None, None) => {
                self.stats.misses += 1;
                e.flight = Some(Vec::new());
                Lookup::Fill
            }
        }
    }

    /// Registers `waiter` for the fetch in flight on `key` (after [`Lookup::InFlight`]). Gives the
    /// waiter back when there is no such fetch or `max_waiters` are already waiting.
    pub fn wait(&mut self, key: &K, waiter: W) -> Result<(), W> {
        match self.map.peek_mut(key).and_then(|e| e.flight.as_mut()) {
            Some(ws) if ws.len() < self.cfg.max_waiters => {
                ws.push(waiter);
                Ok(())
            }
            _ => {
                self.stats.busy += 1;
                Err(waiter)
            }
        }
    }

    /// Records the outcome of the fetch started for `key` and returns the waiters to wake with
    /// it. A success of `bytes` lives `ttl` (jittered with `unit`, uniform in `[0, 1)`). A failure
    /// is remembered for `negative_ttl`; a value already held stays servable until its
    /// `stale_until` (stale-if-error). A value larger than the whole cache is handed to the
    /// waiters but not kept.
    pub fn complete(
        &mut self,
        key: &K,
        outcome: Result<(V, usize), E>,
        ttl: Duration,
        now: Instant,
        unit: f64,
    ) -> Vec<W> {
        let waiters = match self.map.peek_mut(key) {
            Some(e) => e.flight.take().unwrap_or_default(),
            None => Vec::new(),
        };
        match outcome {
            Ok((value, bytes)) => {
                let fresh_until = now + jittered_ttl(ttl, self.cfg.ttl_jitter, unit);
                let held = Held {
                    value,
                    bytes,
                    fresh_until,
                    stale_until: fresh_until + self.cfg.stale_for,
                };
                let old = self
                    .map
                    .pop(key)
                    .map(|e| e.held.map_or(0, |h| h.bytes) + ENTRY_OVERHEAD);
                self.bytes -= old.unwrap_or(0);
                if self.make_room(bytes + ENTRY_OVERHEAD) {
                    self.bytes += bytes + ENTRY_OVERHEAD;
                    self.map.put(
                        key.clone(),
                        Entry {
                            held: Some(held),
                            negative: None,
                            flight: None,
                        },
                    );
                }
            }
            Err(err) => {
                let until = now + self.cfg.negative_ttl;
                match self.map.get_mut(key) {
                    Some(e) => e.negative = Some((err, until)),
                    None => {
                        if self.make_room(ENTRY_OVERHEAD) {
                            self.bytes += ENTRY_OVERHEAD;
                            self.map.put(
                                key.clone(),
                                Entry {
                                    held: None,
                                    negative: Some((err, until)),
                                    flight: None,
                                },
                            );
                        }
                    }
                }
            }
        }
        waiters
    }

    /// The value to give waiters of a fetch that failed with `err`: a stale value if one is
    /// still servable at `now`, else the error.
    pub fn fallback(&mut self, key: &K, err: E, now: Instant) -> Result<V, E> {
        match self.map.peek(key).and_then(|e| e.held.as_ref()) {
            Some(h) if now < h.stale_until => Ok(h.value.clone()),
            _ => Err(err),
        }
    }

    /// Evicts least recently used entries without a fetch in flight until `need` more bytes and
    /// one more entry fit. False when that is impossible.
    fn make_room(&mut self, need: usize) -> bool {
        if need > self.cfg.max_bytes {
            return false;
        }
        while self.map.len() + 1 > self.cfg.max_entries || self.bytes + need > self.cfg.max_bytes {
            // Oldest first; skip entries being fetched.
            let victim = self
                .map
                .iter()
                .rev()
                .find(|(_, e)| e.flight.is_none())
                .map(|(k, _)| k.clone());
            let Some(k) = victim else { return false };
            let e = self.map.pop(&k).expect("found above");
            self.bytes -= e.held.map_or(0, |h| h.bytes) + ENTRY_OVERHEAD;
            self.stats.evictions += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type C = Cache<u32, &'static str, &'static str, u32>;

    fn cfg() -> CacheConfig {
        CacheConfig {
            max_entries: 100,
            max_bytes: 1 << 20,
            ttl_jitter: 0.0,
            stale_for: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_waiters: 3,
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn fill_hit_stale_refresh_expire() {
        let t0 = Instant::now();
        let mut c = C::new(cfg());
        assert_eq!(c.lookup(&1, t0), Lookup::Fill);
        assert_eq!(c.lookup(&1, t0), Lookup::InFlight);
        assert!(c.complete(&1, Ok(("v1", 10)), TTL, t0, 0.5).is_empty());
        assert_eq!(c.lookup(&1, t0 + s(9)), Lookup::Hit("v1"));
        // Expired: one caller refreshes, the others get stale without a second refresh.
        assert_eq!(
            c.lookup(&1, t0 + s(10)),
            Lookup::Stale {
                value: "v1",
                refresh: true
            }
        );
        assert_eq!(
            c.lookup(&1, t0 + s(11)),
            Lookup::Stale {
                value: "v1",
                refresh: false
            }
        );
        c.complete(&1, Ok(("v2", 10)), TTL, t0 + s(12), 0.5);
        assert_eq!(c.lookup(&1, t0 + s(13)), Lookup::Hit("v2"));
        // Past stale_for nothing is served: a new fill.
        assert_eq!(c.lookup(&1, t0 + s(12 + 10 + 60)), Lookup::Fill);
        assert_eq!(c.stats().hits, 2);
        assert_eq!(c.stats().stale, 2);
        assert_eq!(c.stats().misses, 2);
    }

    #[test]
    fn single_flight_wakes_waiters_and_bounds_them() {
        let t0 = Instant::now();
        let mut c = C::new(cfg());
        assert_eq!(c.lookup(&7, t0), Lookup::Fill);
        for w in 0..3 {
            assert_eq!(c.lookup(&7, t0), Lookup::InFlight);
            c.wait(&7, w).unwrap();
        }
        assert_eq!(c.wait(&7, 99), Err(99));
        assert_eq!(c.complete(&7, Ok(("v", 1)), TTL, t0, 0.0), vec![0, 1, 2]);
        assert_eq!(c.wait(&7, 5), Err(5), "no fetch in flight any more");
        assert_eq!(c.stats().coalesced, 3);
    }

    #[test]
    fn failures_are_cached_and_stale_is_kept() {
        let t0 = Instant::now();
        let mut c = C::new(cfg());
        assert_eq!(c.lookup(&1, t0), Lookup::Fill);
        c.complete(&1, Err("boom"), TTL, t0, 0.0);
        assert_eq!(c.lookup(&1, t0 + s(4)), Lookup::Negative("boom"));
        assert_eq!(
            c.lookup(&1, t0 + s(5)),
            Lookup::Fill,
            "negative entry expired"
        );
        c.complete(&1, Ok(("v", 1)), TTL, t0 + s(5), 0.0);
        // Expired; refresh fails: stale keeps being served and no refresh until negative_ttl.
        assert_eq!(
            c.lookup(&1, t0 + s(15)),
            Lookup::Stale {
                value: "v",
                refresh: true
            }
        );
        c.complete(&1, Err("down"), TTL, t0 + s(16), 0.0);
        assert_eq!(c.fallback(&1, "down", t0 + s(16)), Ok("v"));
        assert_eq!(
            c.lookup(&1, t0 + s(17)),
            Lookup::Stale {
                value: "v",
                refresh: false
            }
        );
        assert_eq!(
            c.lookup(&1, t0 + s(21)),
            Lookup::Stale {
                value: "v",
                refresh: true
            }
        );
    }

    #[test]
    fn jitter_spreads_expiry() {
        let t0 = Instant::now();
        let mut c = C::new(CacheConfig {
            ttl_jitter: 0.5,
            ..cfg()
        });
        for k in 0..10u32 {
            assert_eq!(c.lookup(&k, t0), Lookup::Fill);
            c.complete(&k, Ok(("v", 1)), TTL, t0, k as f64 / 10.0);
        }
        // At 7.5 s, the keys whose TTL was cut by 25% or more are stale, the others fresh.
        let stale: Vec<u32> = (0..10)
            .filter(|k| {
                matches!(
                    c.lookup(k, t0 + Duration::from_millis(7_500)),
                    Lookup::Stale { .. }
                )
            })
            .collect();
        assert_eq!(stale, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn bounded_by_entries_and_bytes_lru_first() {
        let t0 = Instant::now();
        let mut c = C::new(CacheConfig {
            max_entries: 3,
            max_bytes: 3 * ENTRY_OVERHEAD + 300,
            ..cfg()
        });
        for k in 0..3 {
            c.lookup(&k, t0);
            c.complete(&k, Ok(("v", 50)), TTL, t0, 0.0);
        }
        assert_eq!(c.lookup(&0, t0), Lookup::Hit("v")); // 0 is now the most recent
        c.lookup(&3, t0);
        c.complete(&3, Ok(("v", 50)), TTL, t0, 0.0);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.lookup(&1, t0),
            Lookup::Fill,
            "1 was the least recently used"
        );
        c.complete(&1, Ok(("big", 250)), TTL, t0, 0.0);
        assert!(c.bytes() <= 3 * ENTRY_OVERHEAD + 300);
        // Too big for the whole cache: not kept.
        c.lookup(&9, t0);
        c.complete(&9, Ok(("huge", 10_000)), TTL, t0, 0.0);
        assert_eq!(c.lookup(&9, t0), Lookup::Fill);
    }

    #[test]
    fn in_flight_entries_are_not_evicted() {
        let t0 = Instant::now();
        let mut c = C::new(CacheConfig {
            max_entries: 2,
            ..cfg()
        });
        assert_eq!(c.lookup(&1, t0), Lookup::Fill);
        assert_eq!(c.lookup(&2, t0), Lookup::Fill);
        assert_eq!(c.lookup(&3, t0), Lookup::Busy);
        c.complete(&1, Ok(("v", 1)), TTL, t0, 0.0);
        assert_eq!(c.lookup(&3, t0), Lookup::Fill, "1 is evictable now");
        assert_eq!(c.lookup(&2, t0), Lookup::InFlight);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lookup(u32),
        Complete(u32, bool, usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..20).prop_map(Op::Lookup),
            (0u32..20, any::<bool>(), 0usize..2000).prop_map(|(k, ok, b)| Op::Complete(k, ok, b)),
            (0u64..20_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever happens: bounds hold, and a key never has two fetches in flight (a second
        /// Fill/refresh only after the first completed).
        #[test]
        fn invariants(ops in proptest::collection::vec(op(), 1..300), jitter in 0.0f64..0.9) {
            let cfg = CacheConfig { max_entries: 8, max_bytes: 8 * ENTRY_OVERHEAD + 3000, ttl_jitter: jitter, ..cfg() };
            let mut c = C::new(cfg.clone());
            let mut t = Instant::now();
            let mut in_flight = std::collections::HashSet::new();
            for (i, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Lookup(k) => match c.lookup(&k, t) {
                        Lookup::Fill | Lookup::Stale { refresh: true, .. } => {
                            prop_assert!(in_flight.insert(k), "second fetch for {}", k);
                        }
                        Lookup::InFlight => prop_assert!(in_flight.contains(&k)),
                        _ => {}
                    },
                    Op::Complete(k, ok, b) => {
                        if in_flight.remove(&k) {
                            let out = if ok { Ok(("v", b)) } else { Err("e") };
                            c.complete(&k, out, Duration::from_millis(5_000), t, (i % 10) as f64 / 10.0);
                        }
                    }
                    Op::Advance(ms) => t += Duration::from_millis(ms),
                }
                prop_assert!(c.len() <= cfg.max_entries);
                prop_assert!(c.bytes() <= cfg.max_bytes);
            }
        }
    }
}
