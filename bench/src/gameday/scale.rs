//! At Netflix's scale, on paper: from a measured delivery rate per edge core and measured bytes
//! per connection, what it takes to deliver one cue to 100 million devices.
//!
//! ```text
//! edge cores(T) = ceil(devices / (deliveries_per_s_per_core * T))
//! memory        = devices * (user_bytes_per_conn + kernel_bytes_per_conn)
//! ```
//!
//! Memory does not depend on T (every device holds a connection either way); cores do. The
//! estimate assumes cores scale linearly (shards share nothing) and that the NICs carry it
//! (100M cues of ~80 bytes in 10 s is ~6.4 Gbit/s of payload before headers).

use serde_json::json;

/// Devices of the estimate.
pub const DEVICES: f64 = 100e6;

/// The estimate as JSON (and the formula); `basis` says what the rate counts.
pub fn at_scale(
    rate_per_core: f64,
    user_bytes: f64,
    kernel_bytes: f64,
    basis: &str,
) -> serde_json::Value {
    let cores = |t: f64| {
        if rate_per_core > 0.0 {
            (DEVICES / (rate_per_core * t)).ceil()
        } else {
            f64::NAN
        }
    };
    let mem = DEVICES * (user_bytes + kernel_bytes);
    json!({
        "devices": DEVICES,
        "deliveries_per_s_per_core": rate_per_core,
        "rate_basis": basis,
        "bytes_per_conn": {"user": user_bytes, "kernel": kernel_bytes},
        "edge_cores_for_60s": cores(60.0),
        "edge_cores_for_10s": cores(10.0),
        "memory_bytes": mem,
        "memory_gib": mem / (1u64 << 30) as f64,
        "formula": "cores(T) = ceil(100e6 / (rate_per_core * T)); memory = 100e6 * (user + kernel bytes per connection)",
    })
}

/// One human line of the estimate.
pub fn line(v: &serde_json::Value) -> String {
    if v["deliveries_per_s_per_core"].as_f64().unwrap_or(0.0) <= 0.0 {
        return "at 100M devices: no WebSocket fanout measured to scale from (an all-QUIC fleet: see cue-bench fanout --transport quic)".into();
    }
    format!(
        "at 100M devices: {:.0} edge cores deliver a cue in 60 s, {:.0} in 10 s (at {:.0} deliveries/s/core); connections hold {:.0} GiB ({:.0} B user + {:.0} B kernel each)",
        v["edge_cores_for_60s"].as_f64().unwrap_or(f64::NAN),
        v["edge_cores_for_10s"].as_f64().unwrap_or(f64::NAN),
        v["deliveries_per_s_per_core"].as_f64().unwrap_or(0.0),
        v["memory_gib"].as_f64().unwrap_or(0.0), v["bytes_per_conn"]["user"].as_f64().unwrap_or(0.0),
        v["bytes_per_conn"]["kernel"].as_f64().unwrap_or(0.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula() {
        let v = at_scale(100_000.0, 100.0, 5000.0, "test");
        assert_eq!(v["edge_cores_for_60s"], 17.0);
        assert_eq!(v["edge_cores_for_10s"], 100.0);
        assert_eq!(v["memory_bytes"], 100e6 * 5100.0);
        assert!(line(&v).starts_with("at 100M devices: 17 edge cores"));
        // No WebSocket fanout (an all-QUIC fleet): said so, not a number from a zero CPU time.
        let q = at_scale(0.0, 15000.0, 0.0, "test");
        assert!(line(&q).contains("no WebSocket fanout"), "{}", line(&q));
    }
}
