//! The wall clock, read only at the top of binaries: logic takes `now` as a parameter.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (token expiry).
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (the publish time stamped on cues).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
