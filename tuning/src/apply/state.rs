//! What `apply` saved so `revert` can put the host back: previous sysctl values, previous file
//! contents (or their absence) and directories it created. Written before any change is made.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{fsx, ApplyError};

/// Location of the state file under the root.
pub const STATE_FILE: &str = "var/lib/cue-tune/state.json";

/// The saved state. Values recorded by the first `apply` are kept by later ones, so `revert`
/// always returns to the host as it was before cue-tune touched it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// sysctl key to its value before the first apply (as the kernel printed it).
    pub sysctls: BTreeMap<String, String>,
    /// File (relative to the root) to its content before the first apply; `None`: it did not
    /// exist.
    pub files: BTreeMap<String, Option<String>>,
    /// Directories (relative to the root) apply created, parents first.
    pub created_dirs: Vec<String>,
}

impl State {
    /// Loads the state, `None` when there is none.
    pub fn load(root: &Path) -> Result<Option<State>, ApplyError> {
        let path = root.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ApplyError::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ApplyError::Io { path, source }),
        }
    }

    /// Saves the state atomically, creating its directory (and recording that).
    pub fn save(&mut self, root: &Path) -> Result<(), ApplyError> {
        self.version = 1;
        let created = fsx::create_parents(root, STATE_FILE)?;
        self.note_created(created);
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        fsx::write_atomic(root, STATE_FILE, &text)
    }

    /// Records directories created by apply, keeping parents before children.
    pub fn note_created(&mut self, dirs: Vec<String>) {
        for dir in dirs {
            if !self.created_dirs.contains(&dir) {
                self.created_dirs.push(dir);
            }
        }
    }
}
