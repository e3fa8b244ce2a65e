//! Human-readable figures for operators: bytes in binary units, device counts in k/M.

/// Formats bytes with a binary unit: `256 B`, `5.0 KiB`, `4.3 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub use cue_common::units::{count, limit};

/// `ceil(a / b)` for planning arithmetic; `b` is never zero after config validation.
pub fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

/// Rounds `n` up to a multiple of `step`.
pub fn round_up(n: u64, step: u64) -> u64 {
    div_ceil(n, step) * step.max(1)
}

/// A CPU list in the kernel's `0-3,8` form.
pub fn cpu_list(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        return "none".to_string();
    }
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut start = sorted[0];
    let mut prev = sorted[0];
    for &cpu in &sorted[1..] {
        if cpu != prev + 1 {
            parts.push(range(start, prev));
            start = cpu;
        }
        prev = cpu;
    }
    parts.push(range(start, prev));
    parts.join(",")
}

fn range(start: u32, end: u32) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(256), "256 B");
        assert_eq!(bytes(5 * 1024), "5.0 KiB");
        assert_eq!(bytes(8 << 20), "8.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn counts_round_down() {
        assert_eq!(count(999), "999");
        assert_eq!(count(19_904), "19.9k");
        assert_eq!(count(19_999), "19.9k");
        assert_eq!(count(1_048_476), "1.0M");
    }

    #[test]
    fn cpu_lists_collapse_ranges() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(cpu_list(&[]), "none");
    }

    #[test]
    fn rounding() {
        assert_eq!(div_ceil(10, 3), 4);
        assert_eq!(round_up(1_100_288, 1024), 1_100_800);
        assert_eq!(limit(u64::MAX), "unlimited");
    }
}
