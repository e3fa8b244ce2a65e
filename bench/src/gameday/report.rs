//! The game-day report: `summary.json` (figures) and `index.html` (self-contained: inline SVG
//! charts, no external assets), with the faults marked on every time axis.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::json;

use super::fleet::FleetReport;
use super::script::Script;
use super::{GamedayOpts, Sample};

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Builds the summary (the contract's fields first).
#[allow(clippy::too_many_arguments)]
pub fn summarize(
    script: &Script,
    o: &GamedayOpts,
    reports: &[FleetReport],
    published: &HashMap<u64, (u64, String)>,
    samples: &[Sample],
    marks: &[(f64, String, &'static str)],
    notes: &[String],
    deliveries: f64,
    fanout_cpu: f64,
) -> anyhow::Result<serde_json::Value> {
    let last_seq = published.keys().copied().max().unwrap_or(0);
    let newest: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.newest.iter().copied())
        .collect();
    let missed = newest.iter().filter(|&&s| s != last_seq).count();
    let mut all: Vec<f64> = Vec::new();
    let mut seqs: Vec<u64> = published.keys().copied().collect();
    seqs.sort();
    let mut per_cue = Vec::new();
    for seq in &seqs {
        let (t_pub, key) = &published[seq];
        let mut lat: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.arrivals.get(seq))
            .flatten()
            .map(|&a| a.saturating_sub(*t_pub) as f64 / 1e3)
            .collect();
        lat.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        all.extend_from_slice(&lat);
        per_cue.push(json!({
            "seq": seq, "key": key, "devices": lat.len(),
            "p50_ms": pct(&lat, 0.5), "p90_ms": pct(&lat, 0.9), "p99_ms": pct(&lat, 0.99),
            "last_ms": lat.last().copied().unwrap_or(0.0),
        }));
    }
    all.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let rps: Vec<f64> = samples
        .iter()
        .map(|s| s.prefetch_rps)
        .filter(|&r| r > 0.0)
        .collect();
    let mean_rps = if rps.is_empty() {
        0.0
    } else {
        rps.iter().sum::<f64>() / rps.len() as f64
    };
    let peak_rps = rps.iter().copied().fold(0.0, f64::max);
    let last = reports.iter().map(|r| &r.status);
    let prefetch_reqs: u64 = last.clone().map(|s| s.prefetch_reqs).sum();
    if fanout_cpu <= 0.0 || deliveries <= 0.0 {
        anyhow::bail!(
            "the edges recorded no fanout ({deliveries} deliveries in {fanout_cpu} CPU-seconds): no delivery rate"
        );
    }
    let rate = deliveries / fanout_cpu;
    // Memory per connection, from the first sample at the peak device count (before any
    // fault) against the first sample of the run: edge RSS for user space; the kernel's slab
    // for kernel memory, halved because both ends of every connection live on this host (the
    // prefetch service's short connections add a little to it, so it errs high).
    let peak_open = samples.iter().map(|s| s.open).max().unwrap_or(0);
    let at_peak = samples.iter().find(|s| s.open == peak_open);
    let first = samples.first();
    let per_conn = |f: fn(&Sample) -> u64| match (at_peak, first) {
        (Some(p), Some(f0)) if peak_open > 0 => {
            f(p).saturating_sub(f(f0)) as f64 / peak_open as f64
        }
        _ => 0.0,
    };
    let user_bytes = per_conn(|s| s.edge_rss);
    let kernel_bytes = per_conn(|s| s.slab) / 2.0;
    let scale = super::scale::at_scale(
        rate,
        user_bytes,
        kernel_bytes,
        "game day: WebSocket deliveries of fanout slices per CPU-second of those slices, loopback receive work on the edge core too (not steered)",
    );
    Ok(json!({
        "scenario": "gameday",
        "devices": o.devices,
        "cues": seqs.len(),
        "delivered": reports.iter().map(|r| r.displayed).sum::<u64>(),
        "missed": missed,
        "latency_ms": {"p50": pct(&all, 0.5), "p99": pct(&all, 0.99), "max": all.last().copied().unwrap_or(0.0)},
        "displayed_without_stage_map": reports.iter().map(|r| r.displayed_without_map).sum::<usize>(),
        "duplicates_dropped_by_seq": reports.iter().map(|r| r.duplicates).sum::<u64>(),
        "reconnects": last.clone().map(|s| s.reconnects).sum::<u64>(),
        "refusals": reports.iter().flat_map(|r| r.refusals.iter()).fold(HashMap::<u16, usize>::new(), |mut m, (k, v)| { *m.entry(*k).or_default() += v; m }),
        "prefetch": {
            "requests": prefetch_reqs,
            "shed_503": last.clone().map(|s| s.prefetch_shed).sum::<u64>(),
            "errors": last.clone().map(|s| s.prefetch_errors).sum::<u64>(),
            "not_modified_304": reports.iter().map(|r| r.not_modified).sum::<u64>(),
            "devices_with_map": last.clone().map(|s| s.prefetched).sum::<usize>(),
            "peak_rps": peak_rps,
            "mean_rps": mean_rps,
            "peak_to_mean": if mean_rps > 0.0 { peak_rps / mean_rps } else { 0.0 },
        },
        "per_cue": per_cue,
        "edges": script.edges,
        "edge_deliveries_per_s_per_core": rate,
        "edge_user_bytes_per_conn": user_bytes,
        "kernel_bytes_per_conn": kernel_bytes,
        "peak_devices_on": peak_open,
        "at_scale": scale,
        "faults": marks.iter().filter(|m| m.2 == "fault").map(|m| json!({"t_s": m.0, "what": m.1})).collect::<Vec<_>>(),
        "script": {
            "ramp_s": script.ramp.as_secs_f64(),
            "prefetch_window_s": [script.window.0.as_secs_f64(), script.window.1.as_secs_f64()],
            "ttl_s": script.ttl_s,
            "end_s": script.end.as_secs_f64(),
        },
        "command": o.command,
        "store": format!("{:?}", o.store).to_lowercase(),
        "machine": machine(),
        "notes": notes,
    }))
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "memory_gib": mem as f64 / 1024.0 / 1024.0,
        "kernel": kernel,
    })
}

const W: f64 = 860.0;
const H: f64 = 230.0;
const PAD_L: f64 = 64.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 28.0;
const PAD_B: f64 = 34.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A chart series: name, colour, (t, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A time-series line chart with fault and cue marks.
fn line_chart(
    title: &str,
    unit: &str,
    x_max: f64,
    series: &[Series<'_>],
    marks: &[(f64, String, &'static str)],
) -> String {
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x_max = x_max.max(1.0);
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let x = |t: f64| PAD_L + t / x_max * pw;
    let y = |v: f64| PAD_T + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{PAD_L}" y="18" class="t">{}</text>"#,
        esc(title)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{PAD_L}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" class="g"/><text x="{}" y="{:.1}" class="a" text-anchor="end">{}</text>"##,
            W - PAD_R,
            PAD_L - 6.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let step = if x_max > 120.0 { 30.0 } else { 10.0 };
    let mut t = 0.0;
    while t <= x_max {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" class="a" text-anchor="middle">{t:.0}s</text>"#,
            x(t),
            H - PAD_B + 16.0
        );
        t += step;
    }
    let _ = write!(
        s,
        r#"<text x="12" y="{}" class="a" transform="rotate(-90 12 {})">{}</text>"#,
        PAD_T + ph / 2.0,
        PAD_T + ph / 2.0,
        esc(unit)
    );
    for (i, (t, label, kind)) in marks.iter().enumerate() {
        let xx = x(*t);
        let cls = if *kind == "fault" { "f" } else { "c" };
        let ly = PAD_T + 10.0 + (i % 3) as f64 * 11.0;
        let _ = write!(
            s,
            r#"<line x1="{xx:.1}" x2="{xx:.1}" y1="{PAD_T}" y2="{:.1}" class="{cls}"/><text x="{:.1}" y="{ly:.1}" class="m {cls}t">{}</text>"#,
            PAD_T + ph,
            xx + 3.0,
            esc(label)
        );
    }
    for (li, (name, color, pts)) in series.iter().enumerate() {
        let mut d = String::new();
        for (i, (t, v)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(*t),
                y(*v)
            );
        }
        let _ = write!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
        let lx = W - PAD_R - 180.0;
        let ly = H - 6.0 - li as f64 * 0.0;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="10" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}" class="a">{}</text>"#,
            lx + li as f64 * 95.0,
            ly - 4.0,
            lx + li as f64 * 95.0 + 14.0,
            ly,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Per-cue latency bands: p50..p99 bar, p90 tick, max dot, "last" label.
fn latency_chart(per_cue: &[serde_json::Value]) -> String {
    let y_max = nice_max(
        per_cue
            .iter()
            .map(|c| c["last_ms"].as_f64().unwrap_or(0.0))
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - PAD_L - PAD_R, H - PAD_T - PAD_B);
    let n = per_cue.len().max(1) as f64;
    let y = |v: f64| PAD_T + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="per-cue latency">"#
    );
    let _ = write!(
        s,
        r#"<text x="{PAD_L}" y="18" class="t">Publish to delivery, per cue: p50-p99 band, p90 tick, last device dot (ms)</text>"#
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let _ = write!(
            s,
            r#"<line x1="{PAD_L}" x2="{}" y1="{:.1}" y2="{:.1}" class="g"/><text x="{}" y="{:.1}" class="a" text-anchor="end">{}</text>"#,
            W - PAD_R,
            y(v),
            y(v),
            PAD_L - 6.0,
            y(v) + 4.0,
            fmt_num(v)
        );
    }
    for (i, c) in per_cue.iter().enumerate() {
        let cx = PAD_L + (i as f64 + 0.5) / n * pw;
        let g = |k: &str| c[k].as_f64().unwrap_or(0.0);
        let (p50, p90, p99, last) = (g("p50_ms"), g("p90_ms"), g("p99_ms"), g("last_ms"));
        let _ = write!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="26" height="{:.1}" fill="#4e79a7" opacity="0.55"/>"##,
            cx - 13.0,
            y(p99),
            (y(p50) - y(p99)).max(1.5)
        );
        let _ = write!(
            s,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#1f3b57" stroke-width="2"/>"##,
            cx - 13.0,
            cx + 13.0,
            y(p90),
            y(p90)
        );
        let _ = write!(
            s,
            r##"<circle cx="{cx:.1}" cy="{:.1}" r="4" fill="#e15759"/><text x="{:.1}" y="{:.1}" class="a">{}</text>"##,
            y(last),
            cx + 7.0,
            y(last) + 4.0,
            fmt_num(last)
        );
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{}" class="a" text-anchor="middle">{}</text>"#,
            H - PAD_B + 16.0,
            esc(c["key"].as_str().unwrap_or(""))
        );
    }
    s.push_str("</svg>");
    s
}

/// The HTML page.
pub fn html(
    summary: &serde_json::Value,
    samples: &[Sample],
    marks: &[(f64, String, &'static str)],
) -> String {
    let x_max = summary["script"]["end_s"].as_f64().unwrap_or(60.0);
    let pts = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
    let connected = line_chart(
        "Devices connected, and holding their stage map",
        "devices",
        x_max,
        &[
            ("connected", "#4e79a7", pts(&|s| s.open as f64)),
            ("with stage map", "#59a14f", pts(&|s| s.prefetched as f64)),
        ],
        marks,
    );
    let prefetch = line_chart(
        "Prefetch requests per second (schedule + stage map)",
        "req/s",
        x_max,
        &[("prefetch req/s", "#f28e2b", pts(&|s| s.prefetch_rps))],
        marks,
    );
    let cpu = line_chart(
        "Edge CPU (all edge processes, % of one core)",
        "% core",
        x_max,
        &[("edge CPU", "#e15759", pts(&|s| s.edge_cpu_pct))],
        marks,
    );
    let mem = line_chart(
        "Edge memory (RSS, all edge processes)",
        "MiB",
        x_max,
        &[(
            "edge RSS",
            "#76b7b2",
            pts(&|s| s.edge_rss as f64 / 1048576.0),
        )],
        marks,
    );
    let lat = latency_chart(
        summary["per_cue"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
    );
    let g = |p: &str| {
        summary
            .pointer(p)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let missed = g("/missed").as_u64().unwrap_or(1);
    let nomap = g("/displayed_without_stage_map").as_u64().unwrap_or(1);
    let verdict = if missed == 0 && nomap == 0 {
        r#"<p class="ok">PASS: every device holds the newest cue, and had the stage map for every cue it displayed.</p>"#.to_string()
    } else {
        format!(
            r#"<p class="bad">FAIL: {missed} devices missed the newest cue; {nomap} displayed a cue without its stage map.</p>"#
        )
    };
    let row = |k: &str, v: String| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    let num = |p: &str| g(p).as_f64().map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut table = String::new();
    table += &row("devices", g("/devices").to_string());
    table += &row("cues published", g("/cues").to_string());
    table += &row(
        "cues displayed (first receipt per device)",
        g("/delivered").to_string(),
    );
    table += &row(
        "missed (not on the newest cue at the end)",
        g("/missed").to_string(),
    );
    table += &row(
        "displayed without the stage map",
        g("/displayed_without_stage_map").to_string(),
    );
    table += &row(
        "publish -> delivery p50 / p99 / max (ms)",
        format!(
            "{} / {} / {}",
            num("/latency_ms/p50"),
            num("/latency_ms/p99"),
            num("/latency_ms/max")
        ),
    );
    table += &row("reconnects", g("/reconnects").to_string());
    table += &row(
        "duplicates dropped by seq",
        g("/duplicates_dropped_by_seq").to_string(),
    );
    table += &row(
        "prefetch requests / shed (503) / errors / 304",
        format!(
            "{} / {} / {} / {}",
            g("/prefetch/requests"),
            g("/prefetch/shed_503"),
            g("/prefetch/errors"),
            g("/prefetch/not_modified_304")
        ),
    );
    table += &row(
        "prefetch peak / mean req/s (ratio)",
        format!(
            "{} / {} ({})",
            num("/prefetch/peak_rps"),
            num("/prefetch/mean_rps"),
            num("/prefetch/peak_to_mean")
        ),
    );
    table += &row("edge processes", g("/edges").to_string());
    table += &row(
        "edge WebSocket deliveries/s per core (CPU basis)",
        num("/edge_deliveries_per_s_per_core"),
    );
    table += &row(
        "edge user bytes per connection",
        num("/edge_user_bytes_per_conn"),
    );
    table += &row(
        "kernel bytes per connection (slab growth / 2 ends)",
        num("/kernel_bytes_per_conn"),
    );
    table += &row("at 100M devices", super::scale::line(&g("/at_scale")));
    let mut cues = String::from("<tr><th>cue</th><th>seq</th><th>devices</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>last device ms</th></tr>");
    for c in summary["per_cue"].as_array().into_iter().flatten() {
        let f = |k: &str| c[k].as_f64().map_or("-".into(), |v| format!("{v:.1}"));
        let _ = write!(cues, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", esc(c["key"].as_str().unwrap_or("")), c["seq"], c["devices"], f("p50_ms"), f("p90_ms"), f("p99_ms"), f("last_ms"));
    }
    let faults: String = marks
        .iter()
        .map(|m| format!("<li>{:.1} s: {}</li>", m.0, esc(&m.1)))
        .collect();
    let notes: String = summary["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| format!("<li>{}</li>", esc(n.as_str().unwrap_or(""))))
        .collect();
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Cue game day</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:900px;color:#222}}
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:16px;margin:24px 0 6px}}
table{{border-collapse:collapse;margin:6px 0}} th,td{{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left}}
td{{font-variant-numeric:tabular-nums}} .ok{{color:#1b7f3b;font-weight:600}} .bad{{color:#b00020;font-weight:600}}
svg{{display:block;margin:10px 0;background:#fbfbfb;border:1px solid #eee}}
svg .t{{font-size:13px;font-weight:600}} svg .a{{font-size:11px;fill:#555}} svg .m{{font-size:10px}}
svg .g{{stroke:#e6e6e6}} svg .f{{stroke:#b00020;stroke-dasharray:4 3}} svg .c{{stroke:#999;stroke-dasharray:1 3}}
svg .ft{{fill:#b00020}} svg .ct{{fill:#777}} code{{background:#f3f3f3;padding:1px 4px}}
</style></head><body>
<h1>Cue game day: {event}</h1>
<p>{devices} devices, {cues} cues, faults on the time axis (red dashes: faults; grey dots: cues).</p>
{verdict}
<h2>Headline figures</h2><table>{table}</table>
{connected}{prefetch}{lat}
<table>{cues_t}</table>
{cpu}{mem}
<h2>Faults and cues</h2><ul>{faults}</ul>
<h2>How this was run</h2><p><code>{command}</code></p>
<table>{machine}</table>
<ul>{notes}</ul>
</body></html>
"#,
        event = "fight-night",
        devices = g("/devices"),
        cues = g("/cues"),
        cues_t = cues,
        command = esc(summary["command"].as_str().unwrap_or("")),
        machine = [
            row("cpus", g("/machine/cpus").to_string()),
            row(
                "cpu model",
                g("/machine/cpu_model").as_str().unwrap_or("").to_string()
            ),
            row("memory GiB", num("/machine/memory_gib")),
            row(
                "kernel",
                g("/machine/kernel").as_str().unwrap_or("").to_string()
            ),
        ]
        .concat(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_self_contained_svg() {
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t: i as f64,
                open: i * 10,
                ..Default::default()
            })
            .collect();
        let marks = vec![
            (3.0, "edge 0 killed".to_string(), "fault"),
            (5.0, "cue round-1".to_string(), "cue"),
        ];
        let s = line_chart(
            "x",
            "y",
            10.0,
            &[(
                "a",
                "#000",
                samples.iter().map(|s| (s.t, s.open as f64)).collect(),
            )],
            &marks,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("edge 0 killed") && s.contains("class=\"f\""));
        assert!(!s.contains("http"), "no external assets");
        assert_eq!(nice_max(73.0), 100.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(fmt_num(12_345.0), "12.3k");
    }
}
