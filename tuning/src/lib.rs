//! `cue-tune`: is this host ready for N Cue devices, and what must change.
//!
//! What it does:
//! - [`facts`] reads a host snapshot: files under a root directory (`/proc`, `/sys`, `/etc`,
//!   `/run` of the real host by default, a fixture tree in tests) plus a few probes of this
//!   process (rlimits, an io_uring probe, UDP offload) behind the [`facts::HostProbe`] trait.
//! - [`model`] turns N devices on C cores into requirements, from Cue's per-connection figures
//!   (all in one place, all overridable); [`layout`] picks shard and IRQ cores.
//! - [`checks`] compares the two: pure functions, one line per setting.
//! - [`plan`] prints the layout, memory budget and fanout estimate for a machine.
//! - [`apply`] writes a sysctl.d file, a systemd drop-in and the live sysctls, saving the
//!   previous values so `revert` restores them.
//! - [`limits`] re-exports `cue_common::limits`: the rlimits every service raises at start-up
//!   and these checks read.
//!
//! What it does not do: restart services, run `sysctl --system` or `systemctl`, change another
//! process's limits, or guess a value it could not read.

pub mod apply;
pub mod checks;
pub mod config;
pub mod facts;
pub mod layout;
/// The resource limits, shared with the services.
pub use cue_common::limits;
pub mod model;
pub mod plan;
pub mod report;
mod sys;
pub mod units;

pub use config::Config;
pub use limits::{
    raise_soft_limits, raise_soft_limits_with, LimitReport, Resource, Rlimit, RlimitOps,
    SystemRlimits,
};
pub use model::{reserved_fds, Requirements};
