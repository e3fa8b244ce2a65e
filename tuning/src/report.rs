//! `check` output: an aligned table for people, one JSON object for scripts.

use serde::Serialize;

use crate::checks::{self, CheckLine};
use crate::model::Requirements;

/// The JSON form of a check run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport<'a> {
    /// No blocking line.
    pub ready: bool,
    /// Devices checked for.
    pub connections: u64,
    /// Cores planned.
    pub cores: u32,
    /// Shards planned.
    pub shards: u64,
    /// Every line.
    pub lines: &'a [CheckLine],
    /// `name: why` of each blocking line.
    pub blockers: Vec<String>,
}

/// Builds the JSON report.
pub fn json<'a>(lines: &'a [CheckLine], r: &Requirements) -> CheckReport<'a> {
    CheckReport {
        ready: checks::ready(lines),
        connections: r.connections,
        cores: r.layout.cores,
        shards: r.shards(),
        lines,
        blockers: checks::blockers(lines)
            .iter()
            .map(|l| blocker_text(l))
            .collect(),
    }
}

fn blocker_text(l: &CheckLine) -> String {
    format!("{} {} (needs {}): {}", l.name, l.current, l.needed, l.why)
}

/// The text table and verdict.
pub fn text(lines: &[CheckLine], r: &Requirements) -> String {
    let widths = [
        lines.iter().map(|l| l.name.len()).max().unwrap_or(0).max(7),
        lines
            .iter()
            .map(|l| l.current.len())
            .max()
            .unwrap_or(0)
            .clamp(7, 36),
        lines
            .iter()
            .map(|l| l.needed.len())
            .max()
            .unwrap_or(0)
            .clamp(6, 36),
    ];
    let mut out = format!(
        "cue-tune check: {} devices on {} cores ({} shards, {}% QUIC)\n\n",
        r.connections,
        r.layout.cores,
        r.shards(),
        r.quic_percent
    );
    out.push_str(&format!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {:<7} WHY\n",
        "SETTING",
        "CURRENT",
        "NEEDED",
        "STATUS",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    ));
    for l in lines {
        out.push_str(&format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<7} {}\n",
            l.name,
            l.current,
            l.needed,
            l.status.label(),
            l.why,
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    }
    out.push('\n');
    let blockers = checks::blockers(lines);
    if blockers.is_empty() {
        out.push_str(&format!("READY for {} devices.\n", r.connections));
    } else {
        out.push_str(&format!(
            "NOT READY for {} devices: {} blocker{}\n",
            r.connections,
            blockers.len(),
            if blockers.len() == 1 { "" } else { "s" }
        ));
        for l in blockers {
            out.push_str(&format!("  - {}\n", blocker_text(l)));
            if let Some(checks::Fix::Manual { action }) = &l.fix {
                out.push_str(&format!("    fix: {action}\n"));
            }
        }
        out.push_str("`cue-tune apply` shows what it can change.\n");
    }
    out
}
