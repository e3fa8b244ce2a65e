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

/// `cue_<service>_build_info{version,commit} 1`: which build a scrape came from.
pub fn build_info(out: &mut String, service: &str) {
    let name = format!("cue_{service}_build_info");
    header(
        out,
        &name,
        "gauge",
        "The build this process runs (always 1; the labels tell).",
    );
    sample(
        out,
        &name,
        &format!(
            "version=\"{}\",commit=\"{}\"",
            crate::build::VERSION,
            crate::build::commit()
        ),
        1,
    );
}

/// What `/proc/self/stat` says of this process, the fields the `process_*` metrics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// User plus system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, clock ticks.
    pub start_ticks: u64,
    /// Virtual memory size, bytes.
    pub vsize_bytes: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
    /// Threads.
    pub threads: u64,
}

/// Parses the text of `/proc/self/stat` (proc(5)): the command name in parentheses may hold
/// spaces and parentheses, so fields are counted after its last `)`. `None` on anything else.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is rest[0]; utime is field 14, stime 15, num_threads 20, starttime 22,
    // vsize 23, rss 24.
    let f: Vec<&str> = rest.split_whitespace().take(22).collect();
    let n = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: n(11)?.checked_add(n(12)?)?,
        threads: n(17)?,
        start_ticks: n(19)?,
        vsize_bytes: n(20)?,
        rss_pages: n(21)?,
    })
}

/// The boot time in seconds since the epoch, from the text of `/proc/stat` (`btime`).
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The standard `process_*` series (CPU seconds, resident and virtual memory, open and most
/// descriptors, start time, threads), read from `/proc/self` at each scrape. A series whose
/// reading fails is left out, never written as 0: an absent series is what an alert on
/// `absent(process_open_fds)` sees.
pub fn process(out: &mut String) {
    // SAFETY: sysconf only reads a configuration value.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t));
    if let (Some(st), true, true) = (stat, tick > 0, page > 0) {
        let tick = tick as f64;
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            st.cpu_ticks as f64 / tick,
        );
        single(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            st.rss_pages.saturating_mul(page as u64),
        );
        single(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            st.vsize_bytes,
        );
        single(
            out,
            "process_threads",
            "gauge",
            "Threads of the process.",
            st.threads,
        );
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_boot_time(&t));
        if let Some(boot) = boot {
            single(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + st.start_ticks as f64 / tick,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory's own descriptor, open while it is read, is not counted.
        let open = dir.count().saturating_sub(1);
        single(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open,
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        single(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            lim.rlim_cur,
        );
    }
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
    #[test]
    fn proc_stat_fields_after_a_name_with_spaces_and_parens() {
        let t = "4242 (cue edge) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 \
                 123456 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0";
        assert_eq!(
            parse_proc_stat(t),
            Some(ProcStat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 2500,
            })
        );
        assert_eq!(parse_proc_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_proc_stat("no parens"), None);
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn this_process_has_every_process_series() {
        let mut s = String::new();
        process(&mut s);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_threads",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            let v: f64 = s
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing: {s}"))
                .parse()
                .unwrap();
            assert!(v > 0.0 || name == "process_cpu_seconds_total", "{name} {v}");
        }
        let start: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }

    proptest::proptest! {
        /// Any text: no panic.
        #[test]
        fn proc_stat_parser_never_panics(t in "(?s).{0,300}") {
            let _ = parse_proc_stat(&t);
            let _ = parse_boot_time(&t);
        }
    }
}
