//! Figures for operators' log lines: counts in k/M, limits where `u64::MAX` is unlimited.

/// Formats a count with a k/M suffix, rounding down so a capacity is never overstated:
/// `19904` is `19.9k`, `999` stays `999`.
pub fn count(n: u64) -> String {
    if n < 1_000 {
        n.to_string()
    } else if n < 1_000_000 {
        format!("{}.{}k", n / 1_000, (n % 1_000) / 100)
    } else {
        format!("{}.{}M", n / 1_000_000, (n % 1_000_000) / 100_000)
    }
}

/// A limit value where `u64::MAX` is `RLIM_INFINITY`.
pub fn limit(n: u64) -> String {
    if n == u64::MAX {
        "unlimited".to_string()
    } else {
        n.to_string()
    }
}
