//! Which build this process runs, for the `cue_<service>_build_info{version,commit}` metric.
//! The commit comes from the binary (`cue-build-info`, set once at start), so that a new
//! commit does not rebuild this crate and everything above it.

use std::sync::OnceLock;

/// The workspace version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

static COMMIT: OnceLock<&'static str> = OnceLock::new();

/// Records the binary's commit (first call wins).
pub fn set_commit(commit: &'static str) {
    let _ = COMMIT.set(commit);
}

/// The commit set by the binary, or `unknown` (a library test, say).
pub fn commit() -> &'static str {
    COMMIT.get().copied().unwrap_or("unknown")
}
