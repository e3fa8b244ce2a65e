//! Pure timing decisions: where in the prefetch window a device fetches (`prefetch_at`), and the
//! jitter on `max-age`, on server-side TTLs and on `Retry-After`. Nothing here reads a clock or
//! an RNG: callers pass `now` and a uniform number `unit` in `[0, 1)` from their seeded RNG.

use std::time::Duration;

use crate::hash::hash64;

/// An event's prefetch window, Unix milliseconds, `start_ms < end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First millisecond of the window.
    pub start_ms: u64,
    /// End of the window (exclusive).
    pub end_ms: u64,
}

impl Window {
    /// True when `now_ms` is inside the window.
    pub fn contains(&self, now_ms: u64) -> bool {
        (self.start_ms..self.end_ms).contains(&now_ms)
    }
}

/// When `device` should prefetch: `start + floor(h * span / 2^64)` with `h` a stable 64-bit hash
/// of the device id. Stable for a device (same on every replica and every restart), uniform over
/// a fleet (multiply-shift maps a uniform `h` onto the span without modulo bias), always inside
/// the window.
pub fn prefetch_at(window: Window, device: &str) -> u64 {
    let span = window.end_ms.saturating_sub(window.start_ms);
    let h = hash64(device.as_bytes());
    window.start_ms + ((h as u128 * span as u128) >> 64) as u64
}

/// `max-age` for one response: the TTL shortened by up to `jitter` of itself (`jitter` in
/// `[0, 1)`), never below one second. Shortening rather than lengthening keeps the TTL a promise:
/// no device holds a map longer than the event's `ttl_s`.
pub fn jittered_max_age(ttl_s: u64, jitter: f64, unit: f64) -> u64 {
    let cut = (ttl_s as f64 * jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0)).floor() as u64;
    ttl_s.saturating_sub(cut).max(1)
}

/// A server-side freshness lifetime: `ttl` shortened by up to `jitter` of itself, so entries
/// filled together (a cold start, a herd) do not expire together.
pub fn jittered_ttl(ttl: Duration, jitter: f64, unit: f64) -> Duration {
    let keep = 1.0 - jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0);
    ttl.mul_f64(keep).max(Duration::from_millis(1))
}

/// `Retry-After` seconds for a shed or failed request: uniform in `[base, 2 * base]`, so the
/// devices refused together do not come back together.
pub fn retry_after_s(base_s: u64, unit: f64) -> u64 {
    let base = base_s.max(1);
    base + (base as f64 * unit.clamp(0.0, 1.0)).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: Window = Window {
        start_ms: 1_000_000,
        end_ms: 1_000_000 + 3_600_000,
    };

    #[test]
    fn prefetch_at_is_stable_and_inside() {
        let a = prefetch_at(W, "tv-1");
        assert_eq!(a, prefetch_at(W, "tv-1"));
        assert!(W.contains(a));
        assert_ne!(a, prefetch_at(W, "tv-2"));
        let one = Window {
            start_ms: 5,
            end_ms: 6,
        };
        assert_eq!(prefetch_at(one, "x"), 5);
    }

    #[test]
    fn prefetch_at_is_uniform_over_a_fleet() {
        // 100,000 sequential ids (the worst case for a weak hash) into 20 slots: each slot's count
        // within 5% of the mean, and a chi-square far below what a skew would give.
        let slots = 20usize;
        let n = 100_000;
        let mut count = vec![0u64; slots];
        let span = W.end_ms - W.start_ms;
        for i in 0..n {
            let t = prefetch_at(W, &format!("device-{i}")) - W.start_ms;
            count[(t * slots as u64 / span) as usize] += 1;
        }
        let mean = n as f64 / slots as f64;
        let chi2: f64 = count
            .iter()
            .map(|&c| (c as f64 - mean).powi(2) / mean)
            .sum();
        for &c in &count {
            assert!((c as f64 - mean).abs() < mean * 0.05, "{count:?}");
        }
        // 19 degrees of freedom: p = 0.001 at 43.8.
        assert!(chi2 < 43.8, "chi2 {chi2} {count:?}");
    }

    #[test]
    fn max_age_jitter_bounds() {
        assert_eq!(jittered_max_age(600, 0.2, 0.0), 600);
        assert_eq!(jittered_max_age(600, 0.2, 0.999_999), 481);
        assert_eq!(jittered_max_age(600, 0.0, 0.7), 600);
        assert_eq!(jittered_max_age(1, 0.9, 0.9), 1);
        assert_eq!(jittered_max_age(0, 0.5, 0.5), 1);
    }

    #[test]
    fn ttl_and_retry_after_jitter() {
        let t = Duration::from_secs(100);
        assert_eq!(jittered_ttl(t, 0.1, 0.0), t);
        assert_eq!(jittered_ttl(t, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(retry_after_s(5, 0.0), 5);
        assert_eq!(retry_after_s(5, 1.0), 10);
        assert_eq!(retry_after_s(0, 0.0), 1);
    }

    proptest! {
        #[test]
        fn prefetch_at_always_in_window(start in 0u64..u64::MAX / 2, span in 1u64..u64::MAX / 2, dev in ".{0,40}") {
            let w = Window { start_ms: start, end_ms: start + span };
            prop_assert!(w.contains(prefetch_at(w, &dev)));
        }

        #[test]
        fn max_age_within_jitter(ttl in 1u64..1_000_000, j in 0.0f64..1.0, u in 0.0f64..1.0) {
            let m = jittered_max_age(ttl, j, u);
            prop_assert!(m <= ttl && m >= 1);
            prop_assert!(m as f64 >= (ttl as f64 * (1.0 - j)).floor().max(1.0));
        }
    }
}
