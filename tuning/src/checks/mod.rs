//! Host checks: pure functions from a [`HostFacts`] snapshot and [`Requirements`] to result
//! lines. Each line states the setting, what the host has, what N devices need, OK or CHANGE,
//! and why; a CHANGE line carries the fix `apply` would make (or says it cannot).

mod cpu;
mod files;
mod io_uring;
mod net;
mod udp;

use serde::Serialize;

use crate::facts::{HostFacts, Reading};
use crate::model::Requirements;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// The host already has what N devices need.
    Ok,
    /// The host must change before it holds N devices.
    Change,
    /// Recommended, not required: the edge works without it.
    Advise,
    /// The value could not be read; reported, never guessed.
    Unknown,
}

impl Status {
    /// The word shown in text output.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Change => "CHANGE",
            Status::Advise => "ADVISE",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// How a CHANGE (or ADVISE) line is fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fix {
    /// `apply` sets this sysctl (live and in the sysctl.d file).
    Sysctl {
        /// Dotted key.
        key: String,
        /// The value `apply` writes.
        value: String,
    },
    /// `apply` writes the systemd drop-in with LimitNOFILE/LimitMEMLOCK.
    ServiceLimits,
    /// Nothing `apply` can do; the operator must.
    Manual {
        /// What to do, plainly.
        action: String,
    },
}

/// One result line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    /// Stable identifier for scripts (`nofile.hard`, `net.core.somaxconn`, `nic.eth0`).
    pub id: String,
    /// Setting name as an operator knows it.
    pub name: String,
    /// What the host has.
    pub current: String,
    /// What N devices need.
    pub needed: String,
    /// OK, CHANGE, ADVISE or UNKNOWN.
    pub status: Status,
    /// Whether this line makes the host not ready (exit 1).
    pub blocking: bool,
    /// Why, in a few words.
    pub why: String,
    /// The fix, for CHANGE/ADVISE lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
}

/// A line under construction: name, current and needed; the status method finishes it.
pub(crate) struct Line {
    id: String,
    name: String,
    current: String,
    needed: String,
}

pub(crate) fn line(id: impl Into<String>, name: impl Into<String>) -> Line {
    Line {
        id: id.into(),
        name: name.into(),
        current: String::new(),
        needed: String::new(),
    }
}

impl Line {
    pub(crate) fn current(mut self, current: impl Into<String>) -> Line {
        self.current = current.into();
        self
    }

    pub(crate) fn needed(mut self, needed: impl Into<String>) -> Line {
        self.needed = needed.into();
        self
    }

    fn finish(
        self,
        status: Status,
        blocking: bool,
        why: impl Into<String>,
        fix: Option<Fix>,
    ) -> CheckLine {
        CheckLine {
            id: self.id,
            name: self.name,
            current: self.current,
            needed: self.needed,
            status,
            blocking,
            why: why.into(),
            fix,
        }
    }

    pub(crate) fn ok(self, why: impl Into<String>) -> CheckLine {
        self.finish(Status::Ok, false, why, None)
    }

    pub(crate) fn change(self, why: impl Into<String>, fix: Fix) -> CheckLine {
        self.finish(Status::Change, true, why, Some(fix))
    }

    pub(crate) fn advise(self, why: impl Into<String>, fix: Option<Fix>) -> CheckLine {
        self.finish(Status::Advise, false, why, fix)
    }

    /// An unreadable value: `blocking` when readiness cannot be confirmed without it.
    pub(crate) fn unknown(self, why: impl Into<String>, blocking: bool) -> CheckLine {
        self.finish(Status::Unknown, blocking, why, None)
    }

    /// Finishes a line for a reading that is not a value.
    pub(crate) fn not_read<T>(self, reading: &Reading<T>, blocking: bool) -> CheckLine {
        match reading {
            Reading::Absent => self
                .current("absent")
                .unknown("not present on this host", blocking),
            Reading::Unreadable(reason) => {
                self.current("unreadable").unknown(reason.clone(), blocking)
            }
            Reading::Value(_) => unreachable!("not_read called with a value"),
        }
    }
}

pub(crate) fn sysctl_fix(key: &str, value: impl ToString) -> Fix {
    Fix::Sysctl {
        key: key.to_string(),
        value: value.to_string(),
    }
}

pub(crate) fn manual(action: impl Into<String>) -> Fix {
    Fix::Manual {
        action: action.into(),
    }
}

/// A sysctl that must be at least `need`; `apply` raises it to exactly `need`.
pub(crate) fn sysctl_at_least(
    key: &str,
    reading: &Reading<u64>,
    need: u64,
    why: &str,
) -> CheckLine {
    let l = line(key, key).needed(format!(">= {need}"));
    match reading {
        Reading::Value(v) if *v >= need => l.current(v.to_string()).ok(why),
        Reading::Value(v) => l.current(v.to_string()).change(why, sysctl_fix(key, need)),
        other => l.not_read(other, true),
    }
}

/// Runs every check, in the order an operator fixes things: kernel and io_uring, fds and
/// memlock, the systemd unit, TCP, UDP/QUIC, conntrack, then memory, CPUs and NICs.
pub fn run(facts: &HostFacts, req: &Requirements) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    io_uring::checks(facts, req, &mut lines);
    files::checks(facts, req, &mut lines);
    net::checks(facts, req, &mut lines);
    udp::checks(facts, req, &mut lines);
    cpu::checks(facts, req, &mut lines);
    lines
}

/// The lines that make the host not ready.
pub fn blockers(lines: &[CheckLine]) -> Vec<&CheckLine> {
    lines.iter().filter(|l| l.blocking).collect()
}

/// Ready when nothing blocks.
pub fn ready(lines: &[CheckLine]) -> bool {
    blockers(lines).is_empty()
}
