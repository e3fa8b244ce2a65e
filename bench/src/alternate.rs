//! `cue-bench fanout --send-path A,B --alternate`: both send paths in one stack, cue by cue.
//!
//! Two phases (the stack and fleet started anew for each, `--send-path A,B`) are tens of
//! seconds apart, and on a shared 2-core VM the same phase run twice spreads by +-15%: a
//! comparison of two phases is partly a comparison of two moments. Alternating measures both
//! paths on the same edges, the same connections and the same kernel state, cues a few hundred
//! milliseconds apart: before each cue the bench switches every edge's shards
//! (`POST /admin/send-path`), waits until no fanout is in progress, and reads the edges'
//! counters, so each cue's CPU and deliveries are its own.
//!
//! Cues go A, B, B, A, A, B, ...: pairs (1, 2), (3, 4), ... each hold one cue of each path,
//! and the order inside a pair flips every pair, so a trend over the series (the first cues
//! after the fleet connects grow the kernel's slabs) weighs on both paths alike.

use anyhow::{bail, Context};
use serde_json::json;

use crate::fanout::{median, SendPath};

/// The path cue `n` (1-based) goes out on: A, B, B, A, repeated.
pub fn path_of(n: u64, pair: [SendPath; 2]) -> SendPath {
    match n.saturating_sub(1) % 4 {
        0 | 3 => pair[0],
        _ => pair[1],
    }
}

/// What one cue of the series measured.
#[derive(Debug, Clone)]
pub struct CueSample {
    /// The cue's seq (the bench event's).
    pub seq: u64,
    /// The path its fanout used.
    pub path: SendPath,
    /// WebSocket deliveries of the fanout slices over the cue, all edges.
    pub deliveries: f64,
    /// The shards' CPU seconds in those slices.
    pub cpu_s: f64,
    /// Devices per second of the edges' own span of the cue (`GET /fanouts`), if timed.
    pub span_rate: Option<f64>,
    /// Devices per second between the fleet's first and last arrival, if timed.
    pub fleet_rate: Option<f64>,
}

/// One path's CPU rate, and its span and fleet rate medians.
type Figures = (f64, Option<f64>, Option<f64>);

/// Median, range and how many values are below 1 (the ratios of a figure over the pairs).
fn spread(v: Vec<f64>) -> serde_json::Value {
    let below = v.iter().filter(|&&r| r < 1.0).count();
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let n = v.len();
    match median(v) {
        Some(m) => json!({"median": m, "min": min, "max": max, "below_1": below, "pairs": n}),
        None => serde_json::Value::Null,
    }
}

/// Per path: CPU rate over all its cues, medians over its cues of the span and fleet rates;
/// per pair: the second path's rate over the first's. A path with no deliveries or no CPU,
/// or a pair missing a cue of either path, fails the reading.
pub fn summarize(pair: [SendPath; 2], samples: &[CueSample]) -> anyhow::Result<serde_json::Value> {
    if samples.len() < 2 || samples.len() % 2 != 0 {
        bail!(
            "--alternate: {} cues measured; it needs an even number, at least 2",
            samples.len()
        );
    }
    let mut paths = serde_json::Map::new();
    let mut figures = Vec::new();
    for p in pair {
        let of: Vec<&CueSample> = samples.iter().filter(|s| s.path == p).collect();
        let n: f64 = of.iter().map(|s| s.deliveries).sum();
        let cpu: f64 = of.iter().map(|s| s.cpu_s).sum();
        if n <= 0.0 || cpu <= 0.0 {
            bail!(
                "--alternate: {} cues on {}: {n} deliveries in {cpu} CPU-seconds",
                of.len(),
                p.as_str()
            );
        }
        let span = median(of.iter().filter_map(|s| s.span_rate).collect());
        let fleet = median(of.iter().filter_map(|s| s.fleet_rate).collect());
        paths.insert(
            p.as_str().into(),
            json!({
                "cues": of.len(),
                "deliveries": n,
                "cpu_s": cpu,
                "cpu_rate": n / cpu,
                "send_wall_rate": span,
                "wall_rate": fleet,
            }),
        );
        figures.push((n / cpu, span, fleet));
    }
    let (mut cpu_r, mut span_r, mut fleet_r) = (Vec::new(), Vec::new(), Vec::new());
    for two in samples.chunks(2) {
        let partner = |p: SendPath| {
            two.iter().find(|s| s.path == p).with_context(|| {
                format!(
                    "--alternate: cue {} has no {} partner",
                    two[0].seq,
                    p.as_str()
                )
            })
        };
        let (a, b) = (partner(pair[0])?, partner(pair[1])?);
        if a.cpu_s > 0.0 && b.cpu_s > 0.0 && a.deliveries > 0.0 {
            cpu_r.push((b.deliveries / b.cpu_s) / (a.deliveries / a.cpu_s));
        }
        if let (Some(x), Some(y)) = (a.span_rate, b.span_rate) {
            span_r.push(y / x);
        }
        if let (Some(x), Some(y)) = (a.fleet_rate, b.fleet_rate) {
            fleet_r.push(y / x);
        }
    }
    let ratio =
        |f: fn(&Figures) -> Option<f64>| f(&figures[0]).zip(f(&figures[1])).map(|(a, b)| b / a);
    Ok(json!({
        "order": format!("{a}, {b}, {b}, {a}, ... (pairs (1, 2), (3, 4), ...)", a = pair[0].as_str(), b = pair[1].as_str()),
        "basis": "one stack and fleet; before each cue every edge is switched to its path (POST /admin/send-path) once no fanout is in progress, and its counters read; cpu_rate: fanout deliveries / fanout CPU-seconds over the path's cues; send_wall_rate and wall_rate: medians over the path's cues of the edges' span rate and the fleet's first-to-last rate",
        "paths": paths,
        "ratio": {
            "basis": format!("{} / {}", pair[1].as_str(), pair[0].as_str()),
            "cpu_rate": ratio(|f| Some(f.0)),
            "send_wall_rate": ratio(|f| f.1),
            "wall_rate": ratio(|f| f.2),
            "pairs": {
                "basis": "per pair of neighbouring cues (one on each path): the ratio of their rates; median, range, pairs below 1",
                "cpu_rate": spread(cpu_r),
                "send_wall_rate": spread(span_r),
                "wall_rate": spread(fleet_r),
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIR: [SendPath; 2] = [SendPath::Syscall, SendPath::Uring];

    fn cue(seq: u64, path: SendPath, cpu_s: f64, span: f64) -> CueSample {
        CueSample {
            seq,
            path,
            deliveries: 1000.0,
            cpu_s,
            span_rate: Some(span),
            fleet_rate: Some(span / 2.0),
        }
    }

    #[test]
    fn cues_go_a_b_b_a() {
        let got: Vec<_> = (1..=8).map(|n| path_of(n, PAIR)).collect();
        use SendPath::{Syscall as S, Uring as U};
        assert_eq!(got, [S, U, U, S, S, U, U, S]);
    }

    #[test]
    fn figures_per_path_and_per_pair() {
        let s = [
            cue(1, SendPath::Syscall, 0.01, 100.0),
            cue(2, SendPath::Uring, 0.008, 120.0),
            cue(3, SendPath::Uring, 0.008, 90.0),
            cue(4, SendPath::Syscall, 0.01, 100.0),
        ];
        let v = summarize(PAIR, &s).unwrap();
        let r = &v["ratio"];
        assert!((r["cpu_rate"].as_f64().unwrap() - 1.25).abs() < 1e-9);
        // Medians (upper) of [120, 90] and [100, 100].
        assert!((r["send_wall_rate"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        let pairs = &r["pairs"]["send_wall_rate"];
        assert_eq!(pairs["pairs"], 2);
        assert_eq!(pairs["below_1"], 1);
        assert!((pairs["min"].as_f64().unwrap() - 0.9).abs() < 1e-9);
        assert!((pairs["max"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(v["paths"]["uring"]["cues"], 2);
        assert!((v["paths"]["syscall"]["cpu_rate"].as_f64().unwrap() - 100_000.0).abs() < 1e-6);
    }

    #[test]
    fn an_odd_series_or_a_path_without_work_fails() {
        let s = [cue(1, SendPath::Syscall, 0.01, 100.0)];
        assert!(summarize(PAIR, &s).is_err());
        let mut s = vec![
            cue(1, SendPath::Syscall, 0.01, 100.0),
            cue(2, SendPath::Uring, 0.0, 120.0),
        ];
        assert!(summarize(PAIR, &s).is_err(), "no CPU: no rate, never 0");
        s[1] = cue(2, SendPath::Syscall, 0.01, 120.0);
        assert!(summarize(PAIR, &s).is_err(), "a pair without a uring cue");
    }
}
