//! Minimal Prometheus text-format metrics: counters, gauges and fixed-bucket histograms on
//! relaxed atomics. Each metric has one writer in the hot paths that matter (an edge shard writes
//! only its own), so there is no contention; readers render a consistent-enough snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// Adds `d` (may be negative).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Bucket upper bounds in microseconds used for latency histograms: 50 us .. 10 s.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram over [`LATENCY_BUCKETS_US`], rendered in seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 16],
    overflow: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation in microseconds.
    pub fn observe_us(&self, us: u64) {
        match LATENCY_BUCKETS_US.iter().position(|&b| us <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>() + self.overflow.load(Relaxed)
    }

    /// Renders `name_bucket`, `name_sum`, `name_count` with optional extra labels (`a="b"`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        cum += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let lb = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{lb} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{lb} {cum}");
    }
}

/// Writes a `# HELP` / `# TYPE` header.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line.
pub fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Header plus one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    sample(out, name, "", value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe_us(40);
        h.observe_us(700);
        h.observe_us(20_000_000);
        let mut s = String::new();
        h.render(&mut s, "x", "shard=\"0\"");
        assert!(
            s.contains("x_bucket{shard=\"0\",le=\"0.00005\"} 1\n"),
            "{s}"
        );
        assert!(s.contains("x_bucket{shard=\"0\",le=\"0.001\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{shard=\"0\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{shard=\"0\"} 3\n"), "{s}");
        assert_eq!(h.count(), 3);
    }
}
