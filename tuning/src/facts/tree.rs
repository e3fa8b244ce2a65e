//! Reading host files under a root directory (`/` on a real host, a fixture tree in tests).

use std::io;
use std::path::{Path, PathBuf};

use super::Reading;

/// A host's file tree rooted at `root`: `proc/`, `sys/`, `etc/`, `run/` are read below it.
#[derive(Debug, Clone)]
pub struct HostTree {
    root: PathBuf,
}

impl HostTree {
    /// A tree rooted at `root`, which must be a directory.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<HostTree> {
        let root = root.into();
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("root {} is not a directory", root.display()),
            ));
        }
        Ok(HostTree { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of `rel` under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The text of `rel`: `Absent` when it does not exist, `Unreadable` on any other error.
    pub fn read(&self, rel: &str) -> Reading<String> {
        let path = self.path(rel);
        match std::fs::read_to_string(&path) {
            Ok(text) => Reading::Value(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Reading::Absent,
            Err(e) => Reading::Unreadable(format!("{}: {e}", display_rel(rel))),
        }
    }

    /// Reads `rel` and parses it; a parse failure is `Unreadable` with the file named.
    pub fn parse<T>(
        &self,
        rel: &str,
        parser: impl FnOnce(&str) -> Result<T, String>,
    ) -> Reading<T> {
        self.read(rel).and_then(|text| match parser(&text) {
            Ok(v) => Reading::Value(v),
            Err(reason) => Reading::Unreadable(format!("{}: {reason}", display_rel(rel))),
        })
    }

    /// A sysctl by its dotted key (`net.core.somaxconn`), parsed.
    pub fn sysctl<T>(
        &self,
        key: &str,
        parser: impl FnOnce(&str) -> Result<T, String>,
    ) -> Reading<T> {
        self.parse(&sysctl_path(key), parser)
    }

    /// Whether `rel` exists.
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Entry names of directory `rel`, sorted: `Absent` if it does not exist.
    pub fn list(&self, rel: &str) -> Reading<Vec<String>> {
        match std::fs::read_dir(self.path(rel)) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Reading::Value(names)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Reading::Absent,
            Err(e) => Reading::Unreadable(format!("{}: {e}", display_rel(rel))),
        }
    }
}

/// `proc/sys/net/core/somaxconn` for `net.core.somaxconn`.
pub fn sysctl_path(key: &str) -> String {
    format!("proc/sys/{}", key.replace('.', "/"))
}

fn display_rel(rel: &str) -> String {
    format!("/{}", rel.trim_start_matches('/'))
}
