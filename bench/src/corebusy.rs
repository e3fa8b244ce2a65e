//! How busy each core was while cues were being fanned out: `/proc/stat` sampled every
//! [`PERIOD`] on a thread of its own during the publish phase, then read over each cue's window
//! (publish to the fleet's last arrival). It says which side bounds the wall rate the fleet
//! sees: a fleet core at ~100% for the whole window while the edge core has idle time means the
//! fleet-observed rate is the fleet's (its reads, and the loopback receive work steered to it
//! with `--rx-steer`), not the edge's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

/// Sampling period. `/proc/stat` counts in clock ticks (10 ms with USER_HZ 100): a 200 ms
/// window holds ~20 ticks a core, a fraction to ~5%.
const PERIOD: Duration = Duration::from_millis(10);

/// Samples kept: ~17 minutes at [`PERIOD`]; past it sampling stops and windows after the last
/// sample cannot be read (an error, never a guess).
const MAX_SAMPLES: usize = 100_000;

/// One reading: Unix us, then per core (busy ticks, all ticks).
type Sample = (u64, Vec<(u64, u64)>);

/// Per-core (busy, total) ticks from `/proc/stat` text; busy is all but idle and iowait.
pub fn parse_stat(text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut cores = Vec::new();
    for line in text.lines() {
        // `cpuN ...` lines; not the `cpu  ...` total.
        let Some(rest) = line
            .strip_prefix("cpu")
            .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        let Some(Ok(id)) = f.next().map(|id| id.parse::<usize>()) else {
            bail!("/proc/stat: a bad cpu line: {line}");
        };
        let ticks: Vec<u64> = f
            .map(|v| v.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat: a bad cpu{id} line: {line}"))?;
        if ticks.len() < 4 {
            bail!(
                "/proc/stat: cpu{id} has {} fields, want at least 4",
                ticks.len()
            );
        }
        if id != cores.len() {
            bail!(
                "/proc/stat: cpu{id} out of order (expected cpu{})",
                cores.len()
            );
        }
        let total: u64 = ticks.iter().sum();
        let idle = ticks[3] + ticks.get(4).copied().unwrap_or(0);
        cores.push((total - idle, total));
    }
    if cores.is_empty() {
        bail!("/proc/stat: no cpuN line");
    }
    Ok(cores)
}

/// A running sampler; [`Sampler::stop`] returns what it read.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<Sample>>>,
}

impl Sampler {
    /// Starts sampling on a thread pinned to `cpu` (not the edge core: a sampler there
    /// preempted the shard, seen in a scheduler trace); the first reading is taken before this
    /// returns, so a failing `/proc/stat` fails here.
    pub fn start(cpu: Option<usize>) -> anyhow::Result<Self> {
        let first = read()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corebusy".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    crate::worker::pin(c);
                }
                let mut samples = vec![first];
                while !flag.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES {
                    std::thread::sleep(PERIOD);
                    samples.push(read()?);
                }
                Ok(samples)
            })?;
        Ok(Sampler { stop, thread })
    }

    /// Stops sampling (one last reading) and returns the samples.
    pub fn stop(self) -> anyhow::Result<Busy> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("core sampler panicked"))??;
        Ok(Busy { samples })
    }
}

fn read() -> anyhow::Result<Sample> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok((crate::stack::unix_us(), parse_stat(&text)?))
}

/// The samples of a phase.
pub struct Busy {
    samples: Vec<Sample>,
}

impl Busy {
    /// The fraction of `core`'s time it was busy from `from_us` to `to_us` (Unix us), read
    /// between the last sample at or before `from_us` and the first at or after `to_us` (so
    /// the window is widened by up to a period on each side). An error when the samples do not
    /// cover the window, the core is not there, or no tick was counted in it.
    pub fn fraction(&self, core: usize, from_us: u64, to_us: u64) -> anyhow::Result<f64> {
        let s = &self.samples;
        let a = s
            .iter()
            .rposition(|x| x.0 <= from_us)
            .context("core samples start after the window")?;
        let b = s[a..]
            .iter()
            .position(|x| x.0 >= to_us)
            .map(|i| a + i)
            .context("core samples end before the window")?;
        let (Some(&(b0, t0)), Some(&(b1, t1))) = (s[a].1.get(core), s[b].1.get(core)) else {
            bail!("no core {core} in /proc/stat");
        };
        if t1 <= t0 {
            bail!("core {core}: no clock tick counted from {from_us} to {to_us} us");
        }
        Ok((b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_busy_and_total_ticks_per_core() {
        let text = "cpu  10 0 10 80 0 0 0 0 0 0\n\
                    cpu0 5 1 4 30 10 0 0 0 0 0\n\
                    cpu1 5 0 6 50 0 0 2 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_stat(text).unwrap(), vec![(10, 50), (13, 63)]);
        assert!(parse_stat("intr 1\n").is_err(), "no core");
        assert!(parse_stat("cpu0 1 2\n").is_err(), "too few fields");
        assert!(parse_stat("cpu0 1 2 x 4\n").is_err(), "not a number");
        assert!(parse_stat("cpu1 1 2 3 4\n").is_err(), "cpu0 missing");
    }

    #[test]
    fn a_window_reads_between_the_samples_around_it() {
        let busy = Busy {
            samples: vec![
                (1_000, vec![(0, 0), (0, 0)]),
                (2_000, vec![(1, 1), (0, 1)]),
                (3_000, vec![(2, 2), (1, 2)]),
                (4_000, vec![(2, 3), (2, 3)]),
            ],
        };
        // Exactly on samples: 2000..3000, core 0 busy its one tick.
        assert_eq!(busy.fraction(0, 2_000, 3_000).unwrap(), 1.0);
        // 1500..3500 widens to 1000..4000: core 0 busy 2 of 3, core 1 2 of 3.
        assert!((busy.fraction(0, 1_500, 3_500).unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((busy.fraction(1, 1_500, 3_500).unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!(busy.fraction(0, 500, 3_000).is_err(), "before the samples");
        assert!(busy.fraction(0, 2_000, 5_000).is_err(), "after the samples");
        assert!(busy.fraction(2, 2_000, 3_000).is_err(), "no such core");
    }
}
