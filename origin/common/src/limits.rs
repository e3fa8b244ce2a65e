//! What a service calls at start-up: raise the soft resource limits to the hard ones, then say
//! plainly how many connections the result allows. `cue-tune` reads the same limits for its
//! host checks.
//!
//! ```no_run
//! let report = cue_common::limits::raise_soft_limits()?;
//! tracing::info!("{}", report.capacity_line(96));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

use serde::Serialize;

use crate::units;

/// Connections per edge host Cue is designed for; a limit below it is called out at start-up.
pub const DESIGN_TARGET_CONNECTIONS: u64 = 1_000_000;

/// The resource limits Cue cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Resource {
    /// `RLIMIT_NOFILE`: one file descriptor per WebSocket device.
    NoFile,
    /// `RLIMIT_MEMLOCK`: io_uring registered buffers (glommio) without `CAP_IPC_LOCK`.
    MemLock,
}

impl Resource {
    /// Short lowercase name used in human text (`nofile`, `memlock`).
    pub fn name(self) -> &'static str {
        match self {
            Resource::NoFile => "nofile",
            Resource::MemLock => "memlock",
        }
    }
}

/// A soft/hard limit pair; `u64::MAX` means unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rlimit {
    /// The limit in force.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise `soft` to.
    pub hard: u64,
}

/// Reads and sets resource limits; the real implementation is [`SystemRlimits`], tests use a
/// fake.
pub trait RlimitOps {
    /// `getrlimit(2)`.
    fn get(&self, resource: Resource) -> io::Result<Rlimit>;
    /// `setrlimit(2)`.
    fn set(&self, resource: Resource, value: Rlimit) -> io::Result<()>;
}

/// This process's limits, through `getrlimit`/`setrlimit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRlimits;

impl RlimitOps for SystemRlimits {
    fn get(&self, resource: Resource) -> io::Result<Rlimit> {
        getrlimit(resource)
    }

    fn set(&self, resource: Resource, value: Rlimit) -> io::Result<()> {
        setrlimit(resource, value)
    }
}

/// `getrlimit(2)`. `RLIM_INFINITY` comes back as `u64::MAX`.
fn getrlimit(resource: Resource) -> io::Result<Rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` that outlives the call; the resource constant
    // comes from libc for this target.
    let rc = unsafe {
        match resource {
            Resource::NoFile => libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim),
            Resource::MemLock => libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Rlimit {
        soft: widen(lim.rlim_cur),
        hard: widen(lim.rlim_max),
    })
}

/// `setrlimit(2)`.
fn setrlimit(resource: Resource, value: Rlimit) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: narrow(value.soft),
        rlim_max: narrow(value.hard),
    };
    // SAFETY: `lim` is a valid `rlimit` that outlives the call; the kernel only reads it.
    let rc = unsafe {
        match resource {
            Resource::NoFile => libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
            Resource::MemLock => libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim),
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `rlim_t` is u64 on 64-bit Linux but narrower on some 32-bit targets: map RLIM_INFINITY to
/// `u64::MAX` explicitly so "unlimited" means the same everywhere.
#[allow(clippy::unnecessary_cast)]
fn widen(value: libc::rlim_t) -> u64 {
    if value == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        value as u64
    }
}

fn narrow(value: u64) -> libc::rlim_t {
    if value == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        value as libc::rlim_t
    }
}

/// The limits after [`raise_soft_limits`], and what was raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitReport {
    /// `RLIMIT_NOFILE` soft limit now in force.
    pub nofile_soft: u64,
    /// `RLIMIT_NOFILE` hard limit.
    pub nofile_hard: u64,
    /// `RLIMIT_MEMLOCK` soft limit now in force (`u64::MAX` = unlimited).
    pub memlock_soft: u64,
    /// `RLIMIT_MEMLOCK` hard limit (`u64::MAX` = unlimited).
    pub memlock_hard: u64,
    /// What was raised, human text, e.g. `nofile soft 1024 -> 20000`.
    pub raised: Vec<String>,
}

/// Raises RLIMIT_NOFILE and RLIMIT_MEMLOCK soft limits to their hard limits.
pub fn raise_soft_limits() -> io::Result<LimitReport> {
    raise_soft_limits_with(&SystemRlimits)
}

/// [`raise_soft_limits`] against any [`RlimitOps`]; the error names the limit that failed.
pub fn raise_soft_limits_with(ops: &impl RlimitOps) -> io::Result<LimitReport> {
    let mut raised = Vec::new();
    let nofile = raise_one(ops, Resource::NoFile, &mut raised)?;
    let memlock = raise_one(ops, Resource::MemLock, &mut raised)?;
    Ok(LimitReport {
        nofile_soft: nofile.soft,
        nofile_hard: nofile.hard,
        memlock_soft: memlock.soft,
        memlock_hard: memlock.hard,
        raised,
    })
}

fn raise_one(
    ops: &impl RlimitOps,
    resource: Resource,
    raised: &mut Vec<String>,
) -> io::Result<Rlimit> {
    let context = |what: &str, err: io::Error| {
        io::Error::new(
            err.kind(),
            format!("{what} RLIMIT_{}: {err}", resource.name().to_uppercase()),
        )
    };
    let current = ops.get(resource).map_err(|e| context("reading", e))?;
    if current.soft >= current.hard {
        return Ok(current);
    }
    let wanted = Rlimit {
        soft: current.hard,
        hard: current.hard,
    };
    ops.set(resource, wanted)
        .map_err(|e| context("raising", e))?;
    raised.push(format!(
        "{} soft {} -> {}",
        resource.name(),
        units::limit(current.soft),
        units::limit(current.hard)
    ));
    Ok(wanted)
}

impl LimitReport {
    /// How many connections the nofile limit allows once `reserved_fds` (listeners, io_uring
    /// rings, origin links, logs) are set aside.
    pub fn max_connections(&self, reserved_fds: u64) -> u64 {
        self.nofile_soft.saturating_sub(reserved_fds)
    }

    /// e.g. "nofile hard limit 20000 caps this process at ~19.9k connections (production: raise
    /// LimitNOFILE; see cue-tune check)"
    pub fn capacity_line(&self, reserved_fds: u64) -> String {
        let which = if self.nofile_soft >= self.nofile_hard {
            format!("nofile hard limit {}", units::limit(self.nofile_hard))
        } else {
            format!(
                "nofile soft limit {} (hard {})",
                units::limit(self.nofile_soft),
                units::limit(self.nofile_hard)
            )
        };
        let max = self.max_connections(reserved_fds);
        let mut line = format!(
            "{which} caps this process at ~{} connections",
            units::count(max)
        );
        if max < DESIGN_TARGET_CONNECTIONS {
            line.push_str(" (production: raise LimitNOFILE; see cue-tune check)");
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct FakeRlimits {
        nofile: RefCell<Rlimit>,
        memlock: RefCell<Rlimit>,
        refuse_set: bool,
    }

    impl FakeRlimits {
        fn new(nofile: (u64, u64), memlock: (u64, u64)) -> Self {
            FakeRlimits {
                nofile: RefCell::new(Rlimit {
                    soft: nofile.0,
                    hard: nofile.1,
                }),
                memlock: RefCell::new(Rlimit {
                    soft: memlock.0,
                    hard: memlock.1,
                }),
                refuse_set: false,
            }
        }

        fn slot(&self, resource: Resource) -> &RefCell<Rlimit> {
            match resource {
                Resource::NoFile => &self.nofile,
                Resource::MemLock => &self.memlock,
            }
        }
    }

    impl RlimitOps for FakeRlimits {
        fn get(&self, resource: Resource) -> io::Result<Rlimit> {
            Ok(*self.slot(resource).borrow())
        }

        fn set(&self, resource: Resource, value: Rlimit) -> io::Result<()> {
            if self.refuse_set {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            *self.slot(resource).borrow_mut() = value;
            Ok(())
        }
    }

    #[test]
    fn raises_soft_to_hard_and_says_what() {
        let fake = FakeRlimits::new((1024, 20_000), (8 << 20, 8 << 20));
        let report = raise_soft_limits_with(&fake).unwrap();
        assert_eq!(report.nofile_soft, 20_000);
        assert_eq!(report.memlock_soft, 8 << 20);
        assert_eq!(report.raised, vec!["nofile soft 1024 -> 20000".to_string()]);
        assert_eq!(fake.nofile.borrow().soft, 20_000);
    }

    #[test]
    fn capacity_line_names_the_hard_limit() {
        let fake = FakeRlimits::new((20_000, 20_000), (8 << 20, 8 << 20));
        let report = raise_soft_limits_with(&fake).unwrap();
        assert!(report.raised.is_empty());
        assert_eq!(report.max_connections(96), 19_904);
        assert_eq!(
            report.capacity_line(96),
            "nofile hard limit 20000 caps this process at ~19.9k connections (production: raise LimitNOFILE; see cue-tune check)"
        );
    }

    #[test]
    fn capacity_line_without_hint_at_design_scale() {
        let fake = FakeRlimits::new((2_000_000, 2_000_000), (u64::MAX, u64::MAX));
        let report = raise_soft_limits_with(&fake).unwrap();
        assert_eq!(
            report.capacity_line(288),
            "nofile hard limit 2000000 caps this process at ~1.9M connections"
        );
    }

    #[test]
    fn refused_raise_names_the_limit() {
        let mut fake = FakeRlimits::new((1024, 4096), (65_536, 65_536));
        fake.refuse_set = true;
        let err = raise_soft_limits_with(&fake).unwrap_err();
        assert!(
            err.to_string().starts_with("raising RLIMIT_NOFILE"),
            "{err}"
        );
    }

    #[test]
    fn real_process_limits_can_be_read() {
        // Read-only: raising would change the test process, which is harmless but pointless.
        let nofile = SystemRlimits.get(Resource::NoFile).unwrap();
        assert!(nofile.soft <= nofile.hard);
    }
}
