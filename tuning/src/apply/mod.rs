//! `cue-tune apply` and `revert`: turn CHANGE lines into sysctl writes, a sysctl.d file and a
//! systemd drop-in, saving what was there first; put it all back on revert. Everything is
//! relative to a root directory, so tests work on a temporary copy of a host tree.
//!
//! It never runs `sysctl --system`, `systemctl` or restarts anything: it says what to run.

mod files;
mod fsx;
mod state;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use files::{dropin_path, SYSCTL_FILE};
pub use state::{State, STATE_FILE};

use crate::checks::{CheckLine, Fix, Status};
use crate::facts::{sysctl_path, HostFacts, HostTree};
use crate::model::Requirements;

/// Why apply or revert failed. File errors name the file; retrying helps only once the cause
/// (permissions, a read-only root) is fixed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading or writing a file under the root failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The saved state cannot be parsed; nothing was changed.
    #[error("saved state {path} is unreadable ({reason}); fix or remove it by hand")]
    State {
        /// The state file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
}

/// One sysctl apply would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    /// Dotted key.
    pub key: String,
    /// The value now.
    pub from: String,
    /// The value apply writes.
    pub to: String,
    /// Why, from the check.
    pub why: String,
}

/// A file apply would write: its previous content and the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFile {
    /// Path relative to the root.
    pub rel: String,
    /// Content now (`None`: absent).
    pub previous: Option<String>,
    /// Content apply writes (`None`: nothing to write).
    pub content: Option<String>,
}

impl PlannedFile {
    /// Whether writing it changes anything.
    pub fn changes(&self) -> bool {
        self.content.is_some() && self.content != self.previous
    }
}

/// Everything apply would do, and what it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeSet {
    /// sysctls to set live and persist.
    pub sysctls: Vec<SysctlChange>,
    /// The sysctl.d file.
    pub sysctl_file: PlannedFile,
    /// The systemd drop-in.
    pub dropin: PlannedFile,
    /// Blockers apply cannot fix, each with what the operator must do.
    pub cannot: Vec<String>,
    /// Things worth knowing (systemd absent, commands to run afterwards).
    pub notes: Vec<String>,
}

impl ChangeSet {
    /// Whether anything would be written.
    pub fn is_empty(&self) -> bool {
        self.sysctls.is_empty() && !self.sysctl_file.changes() && !self.dropin.changes()
    }
}

/// Works out the changes for the check `lines` (run on `facts`, read from `tree`).
pub fn changes(
    tree: &HostTree,
    facts: &HostFacts,
    lines: &[CheckLine],
    r: &Requirements,
    service: &str,
) -> ChangeSet {
    let headline = format!(
        "last run for {} devices on {} cores",
        r.connections, r.layout.cores
    );
    let mut sysctls = Vec::new();
    let mut cannot = Vec::new();
    for l in lines
        .iter()
        .filter(|l| l.status == Status::Change || (l.status == Status::Unknown && l.blocking))
    {
        match &l.fix {
            Some(Fix::Sysctl { key, value }) => sysctls.push(SysctlChange {
                key: key.clone(),
                // The kernel's own text (tabs become spaces), not the check's display form.
                from: tree
                    .read(&sysctl_path(key))
                    .value()
                    .map(|raw| raw.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_else(|| l.current.clone()),
                to: value.clone(),
                why: l.why.clone(),
            }),
            Some(Fix::ServiceLimits) => {}
            Some(Fix::Manual { action }) => cannot.push(format!("{}: {}", l.name, action)),
            None => cannot.push(format!(
                "{}: could not be read ({}); check it by hand",
                l.name, l.why
            )),
        }
    }

    let previous = tree.read(SYSCTL_FILE).value().cloned();
    let new: Vec<(String, String)> = sysctls
        .iter()
        .map(|c| (c.key.clone(), c.to.clone()))
        .collect();
    let existing = previous
        .as_deref()
        .map(files::parse_sysctl_file)
        .unwrap_or_default();
    let entries = files::merge_entries(existing, &new);
    let sysctl_file = PlannedFile {
        rel: SYSCTL_FILE.to_string(),
        content: if new.is_empty() {
            previous.clone()
        } else {
            Some(files::render_sysctl_file(&entries, &headline))
        },
        previous,
    };

    let rel = dropin_path(service);
    let previous = tree.read(&rel).value().cloned();
    let (old_nofile, old_memlock) = previous
        .as_deref()
        .map(files::parse_dropin)
        .unwrap_or((None, None));
    let nofile = old_nofile.unwrap_or(0).max(r.limit_nofile);
    let memlock = old_memlock.unwrap_or(0).max(r.limit_memlock);
    let unchanged = old_nofile == Some(nofile) && old_memlock == Some(memlock);
    let dropin = PlannedFile {
        rel,
        content: if unchanged {
            previous.clone()
        } else {
            Some(files::render_dropin(nofile, memlock, &headline))
        },
        previous,
    };

    let mut notes = Vec::new();
    if facts.systemd {
        if dropin.changes() {
            notes.push(format!(
                "then run: systemctl daemon-reload && systemctl restart {service}"
            ));
        }
    } else {
        notes.push(format!(
            "systemd is not running under {}: the drop-in only takes effect where {service} runs as a systemd unit",
            tree.root().display()
        ));
    }
    if !sysctls.is_empty() && facts.has_cap(crate::facts::CAP_SYS_ADMIN) == Some(false) {
        notes.push("no CAP_SYS_ADMIN: live sysctl writes will fail; the sysctl.d file applies at next boot".into());
    }
    ChangeSet {
        sysctls,
        sysctl_file,
        dropin,
        cannot,
        notes,
    }
}

/// What `write` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Each sysctl and whether the live write worked (`Err` text when not).
    pub live: Vec<(String, Result<(), String>)>,
    /// Files written (absolute paths).
    pub written: Vec<PathBuf>,
    /// The saved state (absolute path).
    pub state: PathBuf,
}

/// Makes the changes under `root`: saves previous values first, then writes the files, then
/// sets the sysctls live. A failed live write is reported, not fatal (the file applies at boot).
pub fn write(root: &Path, set: &ChangeSet) -> Result<Applied, ApplyError> {
    let mut state = State::load(root)?.unwrap_or_default();
    for change in &set.sysctls {
        if !state.sysctls.contains_key(&change.key) {
            let rel = sysctl_path(&change.key);
            let raw = match std::fs::read_to_string(root.join(&rel)) {
                Ok(text) => text.trim_end_matches('\n').to_string(),
                Err(source) => {
                    return Err(ApplyError::Io {
                        path: root.join(rel),
                        source,
                    })
                }
            };
            state.sysctls.insert(change.key.clone(), raw);
        }
    }
    let files: Vec<&PlannedFile> = [&set.sysctl_file, &set.dropin]
        .into_iter()
        .filter(|f| f.changes())
        .collect();
    for file in &files {
        state
            .files
            .entry(file.rel.clone())
            .or_insert_with(|| file.previous.clone());
    }
    state.save(root)?;

    let mut written = Vec::new();
    for file in &files {
        let created = fsx::create_parents(root, &file.rel)?;
        if !created.is_empty() {
            state.note_created(created);
            state.save(root)?;
        }
        fsx::write_atomic(root, &file.rel, file.content.as_deref().unwrap_or_default())?;
        written.push(root.join(&file.rel));
    }
    let live = set
        .sysctls
        .iter()
        .map(|c| {
            let result = fsx::write_in_place(root, &sysctl_path(&c.key), &format!("{}\n", c.to));
            (c.key.clone(), result)
        })
        .collect();
    Ok(Applied {
        live,
        written,
        state: root.join(STATE_FILE),
    })
}

/// What `revert` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reverted {
    /// Each sysctl restored live, and whether it worked.
    pub sysctls: Vec<(String, String, Result<(), String>)>,
    /// Files restored to their previous content.
    pub restored: Vec<PathBuf>,
    /// Files removed (they did not exist before).
    pub removed: Vec<PathBuf>,
}

/// Restores what `apply` saved under `root`, then removes the state. `None`: nothing to revert.
pub fn revert(root: &Path) -> Result<Option<Reverted>, ApplyError> {
    let Some(state) = State::load(root)? else {
        return Ok(None);
    };
    let mut done = Reverted {
        sysctls: Vec::new(),
        restored: Vec::new(),
        removed: Vec::new(),
    };
    for (key, value) in &state.sysctls {
        let result = fsx::write_in_place(root, &sysctl_path(key), &format!("{value}\n"));
        done.sysctls.push((key.clone(), value.clone(), result));
    }
    for (rel, previous) in &state.files {
        match previous {
            Some(text) => {
                fsx::write_atomic(root, rel, text)?;
                done.restored.push(root.join(rel));
            }
            None => {
                fsx::remove(root, rel)?;
                done.removed.push(root.join(rel));
            }
        }
    }
    fsx::remove(root, STATE_FILE)?;
    // Children were recorded after their parents; remove_dir only succeeds on empty ones.
    for dir in state.created_dirs.iter().rev() {
        let _ = std::fs::remove_dir(root.join(dir));
    }
    Ok(Some(done))
}

/// Operator text for a change set.
pub fn render(set: &ChangeSet, root: &Path) -> String {
    let mut out = String::new();
    if set.sysctls.is_empty() {
        out.push_str("sysctls: nothing to change\n");
    } else {
        out.push_str("sysctls to change:\n");
        for c in &set.sysctls {
            out.push_str(&format!(
                "  {} : {} -> {}   ({})\n",
                c.key, c.from, c.to, c.why
            ));
        }
    }
    for file in [&set.sysctl_file, &set.dropin] {
        let path = root.join(&file.rel);
        if file.changes() {
            let verb = if file.previous.is_some() {
                "replace"
            } else {
                "create"
            };
            out.push_str(&format!("{verb} {}:\n", path.display()));
            for line in file.content.as_deref().unwrap_or_default().lines() {
                out.push_str(&format!("  | {line}\n"));
            }
        } else if file.content.is_some() {
            out.push_str(&format!("unchanged {}\n", path.display()));
        }
    }
    if !set.cannot.is_empty() {
        out.push_str("cannot change from here:\n");
        for c in &set.cannot {
            out.push_str(&format!("  - {c}\n"));
        }
    }
    for note in &set.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}
