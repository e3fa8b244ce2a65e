//! What a binary is built from: the workspace version and the commit (`build.rs`). Only the
//! binaries depend on this crate, so a commit relinks them and rebuilds nothing else; they
//! hand [`COMMIT`] to `cue_common::build::set_commit` for the metrics.

/// The workspace version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit of the build (12 hex digits), `CUE_COMMIT` when a build sets it, or `unknown`
/// when neither git nor the variable could tell.
pub const COMMIT: &str = env!("CUE_COMMIT");

/// What `--version` prints after the binary's name: `0.1.0 (commit 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CUE_COMMIT"),
    ")"
);
