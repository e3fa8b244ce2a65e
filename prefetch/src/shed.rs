//! Adaptive prioritisation, sans-IO. Requests carry a class (`X-Cue-Priority: critical | normal |
//! background`). Two signals decide who is refused:
//!
//! * **Live**: the requested event is live (the origin has published a cue for it and its window
//!   is on). A live event's devices need their capacity for the broadcast, so its background
//!   prefetches wait.
//! * **Load**: the service's own in-flight requests, queue time (how late the runtime runs a timer
//!   it was asked to run: the time a ready request waits for a thread), and requests per second.
//!   [`LoadPolicy`] turns them into a [`Level`] with hysteresis: it rises at once when a signal
//!   crosses a threshold and falls only after the signals stayed below the lower level's
//!   thresholds for `cooldown`, so shedding does not flap.
//!
//! Each step sheds one more class: live or [`Level::Elevated`] sheds background; live and
//! elevated, or [`Level::High`], sheds normal too. Critical is never shed.

use std::time::{Duration, Instant};

/// A request's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Never shed (a device that has nothing for an event about to start).
    Critical,
    /// The default.
    Normal,
    /// Refreshes and early prefetches: shed first.
    Background,
}

impl Priority {
    /// Every class, in metric order.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Background];

    /// Parses an `X-Cue-Priority` value (case-insensitive); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            ("critical", Self::Critical),
            ("normal", Self::Normal),
            ("background", Self::Background),
        ]
        .into_iter()
        .find(|(n, _)| s.eq_ignore_ascii_case(n))
        .map(|(_, p)| p)
    }

    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Normal => "normal",
            Self::Background => "background",
        }
    }

    /// Index into per-class arrays ([`Priority::ALL`] order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How loaded the service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Serve everything.
    Calm = 0,
    /// Shed background.
    Elevated = 1,
    /// Shed background and normal.
    High = 2,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Admit,
    /// Refuse it with 503 and a jittered `Retry-After`.
    Shed,
}

/// Decides one request: `load` from [`LoadPolicy`], `live` for the requested event.
pub fn admit(class: Priority, load: Level, live: bool) -> Decision {
    let step = load as u8 + live as u8;
    let shed = match class {
        Priority::Critical => false,
        Priority::Normal => step >= 2,
        Priority::Background => step >= 1,
    };
    if shed {
        Decision::Shed
    } else {
        Decision::Admit
    }
}

/// Thresholds of the load signals: crossing the first raises the level to
/// [`Level::Elevated`], the second to [`Level::High`]. Zero turns a signal off.
#[derive(Debug, Clone)]
pub struct LoadThresholds {
    /// Requests being handled at once.
    pub in_flight: [u64; 2],
    /// Queue time (runtime lateness), smoothed.
    pub queue: [Duration; 2],
    /// Requests per second, smoothed.
    pub rps: [f64; 2],
    /// How long the signals must stay below a level's thresholds before it is left.
    pub cooldown: Duration,
}

impl LoadThresholds {
    /// The level the in-flight count alone calls for.
    pub fn in_flight_level(&self, in_flight: u64) -> Level {
        level_of(in_flight as f64, self.in_flight.map(|x| x as f64))
    }
}

/// One reading of the load signals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// Requests being handled now.
    pub in_flight: u64,
    /// Lateness of the last probe timer.
    pub queue: Duration,
    /// Requests per second since the last reading.
    pub rps: f64,
}

/// Turns load signals into a [`Level`] with hysteresis. Queue time and RPS are smoothed with an
/// exponentially weighted moving average (weight 0.3 on each new reading).
#[derive(Debug, Clone)]
pub struct LoadPolicy {
    t: LoadThresholds,
    level: Level,
    /// Since when the signals have been below the current level's entry thresholds.
    below_since: Option<Instant>,
    queue_ewma: f64,
    rps_ewma: f64,
}

const EWMA: f64 = 0.3;

impl LoadPolicy {
    /// Starts calm.
    pub fn new(t: LoadThresholds) -> Self {
        Self {
            t,
            level: Level::Calm,
            below_since: None,
            queue_ewma: 0.0,
            rps_ewma: 0.0,
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Smoothed queue time and RPS, for metrics.
    pub fn smoothed(&self) -> (Duration, f64) {
        (
            Duration::from_secs_f64(self.queue_ewma.max(0.0)),
            self.rps_ewma,
        )
    }

    /// The level the in-flight count alone calls for (for a per-request check between readings,
    /// so a burst is shed before the next reading).
    pub fn instant(&self, in_flight: u64) -> Level {
        self.t.in_flight_level(in_flight)
    }

    /// Takes one reading at `now`; returns the new level.
    pub fn observe(&mut self, now: Instant, s: Signals) -> Level {
        self.queue_ewma = EWMA * s.queue.as_secs_f64() + (1.0 - EWMA) * self.queue_ewma;
        self.rps_ewma = EWMA * s.rps + (1.0 - EWMA) * self.rps_ewma;
        let wanted = self
            .t
            .in_flight_level(s.in_flight)
            .max(level_of(
                self.queue_ewma,
                self.t.queue.map(|d| d.as_secs_f64()),
            ))
            .max(level_of(self.rps_ewma, self.t.rps));
        if wanted >= self.level {
            if wanted > self.level {
                self.level = wanted;
            }
            self.below_since = None;
        } else {
            let since = *self.below_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.t.cooldown {
                // One step at a time, each with its own cooldown.
                self.level = if self.level == Level::High {
                    Level::Elevated
                } else {
                    Level::Calm
                };
                self.below_since = if wanted < self.level { Some(now) } else { None };
            }
        }
        self.level
    }
}

fn level_of(v: f64, t: [f64; 2]) -> Level {
    if t[1] > 0.0 && v >= t[1] {
        Level::High
    } else if t[0] > 0.0 && v >= t[0] {
        Level::Elevated
    } else {
        Level::Calm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> LoadThresholds {
        LoadThresholds {
            in_flight: [100, 200],
            queue: [Duration::from_millis(20), Duration::from_millis(100)],
            rps: [0.0, 0.0],
            cooldown: Duration::from_secs(2),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn classes_shed_in_order_critical_never() {
        use Decision::*;
        use Priority::*;
        let table = [
            (Level::Calm, false, [Admit, Admit, Admit]),
            (Level::Calm, true, [Admit, Admit, Shed]),
            (Level::Elevated, false, [Admit, Admit, Shed]),
            (Level::Elevated, true, [Admit, Shed, Shed]),
            (Level::High, false, [Admit, Shed, Shed]),
            (Level::High, true, [Admit, Shed, Shed]),
        ];
        for (load, live, want) in table {
            for (c, w) in Priority::ALL.iter().zip(want) {
                assert_eq!(admit(*c, load, live), w, "{c:?} {load:?} live={live}");
            }
        }
        assert_eq!(admit(Critical, Level::High, true), Admit);
    }

    #[test]
    fn priority_parse() {
        assert_eq!(Priority::parse("Background"), Some(Priority::Background));
        assert_eq!(Priority::parse(" critical "), Some(Priority::Critical));
        assert_eq!(Priority::parse("urgent"), None);
    }

    #[test]
    fn in_flight_raises_at_once_and_falls_after_cooldown() {
        let t0 = Instant::now();
        let mut p = LoadPolicy::new(thresholds());
        let sig = |n| Signals {
            in_flight: n,
            ..Default::default()
        };
        assert_eq!(p.observe(t0, sig(50)), Level::Calm);
        assert_eq!(p.observe(t0 + ms(100), sig(250)), Level::High);
        // Calm signals: still High until the cooldown has passed, then one step down at a time.
        assert_eq!(p.observe(t0 + ms(200), sig(10)), Level::High);
        assert_eq!(p.observe(t0 + ms(2_100), sig(10)), Level::High);
        assert_eq!(p.observe(t0 + ms(2_200), sig(10)), Level::Elevated);
        assert_eq!(p.observe(t0 + ms(3_000), sig(10)), Level::Elevated);
        assert_eq!(p.observe(t0 + ms(4_200), sig(10)), Level::Calm);
    }

    #[test]
    fn a_blip_resets_the_cooldown() {
        let t0 = Instant::now();
        let mut p = LoadPolicy::new(thresholds());
        let sig = |n| Signals {
            in_flight: n,
            ..Default::default()
        };
        p.observe(t0, sig(150));
        assert_eq!(p.level(), Level::Elevated);
        p.observe(t0 + ms(1_500), sig(10));
        p.observe(t0 + ms(3_000), sig(120)); // back above: cooldown starts again
        p.observe(t0 + ms(3_100), sig(10));
        assert_eq!(p.observe(t0 + ms(4_900), sig(10)), Level::Elevated);
        assert_eq!(p.observe(t0 + ms(5_100), sig(10)), Level::Calm);
    }

    #[test]
    fn queue_time_is_smoothed() {
        let t0 = Instant::now();
        let mut p = LoadPolicy::new(thresholds());
        let q = |d| Signals {
            queue: ms(d),
            ..Default::default()
        };
        // One 50 ms hiccup: the average moves to 15 ms, below 20.
        assert_eq!(p.observe(t0, q(50)), Level::Calm);
        // Sustained lateness: elevated within a few readings.
        let mut t = t0;
        let mut lvl = Level::Calm;
        for _ in 0..5 {
            t += ms(100);
            lvl = p.observe(t, q(60));
        }
        assert_eq!(lvl, Level::Elevated);
        for _ in 0..20 {
            t += ms(100);
            lvl = p.observe(t, q(500));
        }
        assert_eq!(lvl, Level::High);
    }

    #[test]
    fn rps_threshold_and_off_switch() {
        let t0 = Instant::now();
        let mut t = thresholds();
        t.rps = [1000.0, 0.0];
        let mut p = LoadPolicy::new(t);
        let mut lvl = Level::Calm;
        for i in 0..10 {
            lvl = p.observe(
                t0 + ms(100 * i),
                Signals {
                    rps: 5000.0,
                    ..Default::default()
                },
            );
        }
        assert_eq!(
            lvl,
            Level::Elevated,
            "second rps threshold 0 means off: never High by rps"
        );
        assert_eq!(p.instant(150), Level::Elevated);
        assert_eq!(p.instant(10), Level::Calm);
    }
}
