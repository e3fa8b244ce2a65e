//! `cue-tune`'s one typed configuration: a TOML file (`--config`), then flags on top. Every
//! field has a default, so the tool runs with no file at all.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model;

/// Planning inputs and where to read/write the host. Field docs state default and trade-off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Devices the edge host must hold at once. Default 1 000 000, Cue's design target per edge.
    pub connections: u64,
    /// Cores given to `cue-edge` on the host. Default: this host's online CPUs. More cores fan
    /// out faster but each shard costs fixed memory and fds.
    pub cores: Option<u32>,
    /// Share of devices expected on QUIC, 0-100; the rest use WebSocket. Default 10. File
    /// descriptors are sized for every device on TCP anyway (QUIC falls back to WebSocket where
    /// UDP is blocked); memory and UDP buffers use this share.
    pub quic_percent: u32,
    /// Edge user-space bytes per idle WebSocket device. Default 256 (target; see
    /// `model::EDGE_USER_BYTES_PER_CONN`). Replace with the bench's `edge_user_bytes_per_conn`.
    pub user_bytes_per_conn: u64,
    /// Kernel bytes per idle TCP socket. Default 5120 (measured on the development host).
    /// Replace with the bench's `kernel_bytes_per_conn`.
    pub kernel_bytes_per_conn: u64,
    /// Bytes per idle QUIC device (user space, including quinn's state). Default 16384 (target).
    pub quic_bytes_per_conn: u64,
    /// Kernel socket memory per device while one cue is in flight during a fanout. Default 4096
    /// (one page: socket memory is charged in pages). Sizes `tcp_mem`.
    pub inflight_bytes_per_conn: u64,
    /// Cue deliveries per second one shard core sustains. Default 100 000 (the write() floor
    /// measured on the development host was 100-130k). Drives fanout time and buffer sizes.
    pub deliveries_per_core: u64,
    /// How fast one cue should reach every device, in ms. Default 1000. `check` wants enough
    /// shard cores to meet it.
    pub target_fanout_ms: u64,
    /// Seconds over which a mass reconnect (edge restart, network blip) spreads, given the
    /// jittered retry hints. Default 30. Shorter windows need deeper accept queues.
    pub reconnect_window_s: u64,
    /// Extra fds, as a percent of connections, for devices that reconnect before the edge has
    /// noticed their old connection died (both sockets are open until the ping timeout).
    /// Default 10.
    pub fd_headroom_percent: u32,
    /// io_uring registered buffer ("io_memory") per shard, bytes. Default 262 144 (256 KiB, what
    /// cue-edge configures). glommio registers it in each of its 3 rings, so memlock counts it
    /// three times.
    pub io_memory_per_shard: u64,
    /// glommio ring depth (submission entries per ring). Default 128 (glommio's default).
    pub ring_depth: u32,
    /// Ports the edge listens on; `check` makes sure outgoing connections cannot take them.
    /// Default [8080, 8443, 9100] (WebSocket, QUIC, admin).
    pub edge_ports: Vec<u16>,
    /// systemd unit name the drop-in is written for. Default "cue-edge@" when the Debian
    /// package's template unit is installed under `root` (one drop-in for every `cue-edge@PORT`
    /// process), else "cue-edge" ([`Config::with_installed_unit`]).
    pub service: String,
    /// Root directory for every host file read or written (`proc/`, `sys/`, `etc/`, `run/`,
    /// `var/lib/cue-tune/`). Default "/". Tests and dry runs point it at a copy.
    pub root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connections: model::DESIGN_TARGET_CONNECTIONS,
            cores: None,
            quic_percent: model::DEFAULT_QUIC_PERCENT,
            user_bytes_per_conn: model::EDGE_USER_BYTES_PER_CONN,
            kernel_bytes_per_conn: model::KERNEL_BYTES_PER_CONN,
            quic_bytes_per_conn: model::QUIC_BYTES_PER_CONN,
            inflight_bytes_per_conn: model::INFLIGHT_BYTES_PER_CONN,
            deliveries_per_core: model::DELIVERIES_PER_SEC_PER_CORE,
            target_fanout_ms: model::DEFAULT_TARGET_FANOUT_MS,
            reconnect_window_s: model::DEFAULT_RECONNECT_WINDOW_S,
            fd_headroom_percent: model::DEFAULT_FD_HEADROOM_PERCENT,
            io_memory_per_shard: model::IO_MEMORY_PER_SHARD,
            ring_depth: model::RING_DEPTH,
            edge_ports: model::EDGE_PORTS.to_vec(),
            service: "cue-edge".to_string(),
            root: PathBuf::from("/"),
        }
    }
}

/// One setting and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting's name as written in the config file (flags use the same name with dashes).
    pub setting: &'static str,
    /// What is wrong, in a few words.
    pub problem: String,
}

/// Every problem found by [`Config::validate`], shown on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|p| format!("{}: {}", p.setting, p.problem))
            .collect();
        write!(f, "{}", parts.join("; "))
    }
}

/// Why a configuration could not be used. Retrying does not help; the operator must edit it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("config {path}: line {line}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// The parser's message, prefixed with the setting when known.
        message: String,
    },
    /// Values that parse but make no sense.
    #[error("invalid settings: {0}")]
    Invalid(Problems),
}

impl Config {
    /// Reads a TOML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses TOML text; `path` only labels errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let start = err.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or("");
            let mut message = err.message().replace('\n', " ");
            if let Some((key, _)) = line_text.split_once('=') {
                let key = key.trim();
                if !key.is_empty() && !message.contains(key) {
                    message = format!("{key}: {message}");
                }
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message,
            }
        })
    }

    /// Checks every setting and reports all problems at once.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        let mut bad =
            |setting: &'static str, problem: String| problems.push(Problem { setting, problem });
        if self.connections == 0 {
            bad("connections", "must be at least 1".into());
        }
        if self.connections > model::MAX_NR_OPEN {
            bad(
                "connections",
                format!(
                    "{} is above the kernel's fd ceiling ({})",
                    self.connections,
                    model::MAX_NR_OPEN
                ),
            );
        }
        match self.cores {
            Some(0) => bad("cores", "must be at least 1".into()),
            Some(c) if c > 4096 => bad("cores", format!("{c} is above 4096")),
            _ => {}
        }
        if self.quic_percent > 100 {
            bad(
                "quic_percent",
                format!("{} is above 100", self.quic_percent),
            );
        }
        // Upper bounds keep the planning arithmetic far from u64 overflow and catch unit
        // mistakes (bytes given as KiB * 1024 twice, ms given as us).
        for (setting, value, max) in [
            ("user_bytes_per_conn", self.user_bytes_per_conn, 1 << 20),
            ("kernel_bytes_per_conn", self.kernel_bytes_per_conn, 1 << 20),
            ("quic_bytes_per_conn", self.quic_bytes_per_conn, 1 << 20),
            (
                "inflight_bytes_per_conn",
                self.inflight_bytes_per_conn,
                1 << 20,
            ),
            ("deliveries_per_core", self.deliveries_per_core, 100_000_000),
            ("target_fanout_ms", self.target_fanout_ms, 3_600_000),
            ("reconnect_window_s", self.reconnect_window_s, 86_400),
            ("io_memory_per_shard", self.io_memory_per_shard, 1 << 30),
        ] {
            if value == 0 {
                bad(setting, "must be at least 1".into());
            } else if value > max {
                bad(setting, format!("{value} is above {max}"));
            }
        }
        if self.fd_headroom_percent > 1000 {
            bad(
                "fd_headroom_percent",
                format!("{} is above 1000", self.fd_headroom_percent),
            );
        }
        if self.ring_depth == 0 || self.ring_depth > 32_768 {
            bad(
                "ring_depth",
                format!("{} is outside 1-32768 (io_uring's limit)", self.ring_depth),
            );
        }
        if self.edge_ports.contains(&0) {
            bad("edge_ports", "port 0 is not a listen port".into());
        }
        let service_ok = !self.service.is_empty()
            && self
                .service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        if !service_ok {
            bad(
                "service",
                format!(
                    "{:?} is not a systemd unit name ([A-Za-z0-9@._-])",
                    self.service
                ),
            );
        }
        if !self.root.is_dir() {
            bad(
                "root",
                format!("{} is not a directory", self.root.display()),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// Where the package's template unit may be installed, relative to `root`.
    pub const TEMPLATE_UNIT_PATHS: [&'static str; 3] = [
        "etc/systemd/system/cue-edge@.service",
        "lib/systemd/system/cue-edge@.service",
        "usr/lib/systemd/system/cue-edge@.service",
    ];

    /// With the default `service` and the package's `cue-edge@.service` installed under
    /// `root`, the template (`cue-edge@`): that is the unit the package's edges run as, and
    /// a drop-in for a `cue-edge.service` nothing provides would change nothing.
    pub fn with_installed_unit(mut self) -> Self {
        let installed = Self::TEMPLATE_UNIT_PATHS
            .iter()
            .any(|p| self.root.join(p).is_file());
        if self.service == "cue-edge" && installed {
            self.service = "cue-edge@".into();
        }
        self
    }

    /// The unit name without a `.service` suffix.
    pub fn service_name(&self) -> &str {
        self.service
            .strip_suffix(".service")
            .unwrap_or(&self.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn validate_reports_every_problem_on_one_line() {
        let config = Config {
            connections: 0,
            quic_percent: 150,
            deliveries_per_core: 0,
            ring_depth: 0,
            service: "cue edge".into(),
            root: PathBuf::from("/definitely/not/here"),
            ..Config::default()
        };
        let problems = config.validate().unwrap_err();
        let text = problems.to_string();
        assert_eq!(problems.0.len(), 6, "{text}");
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with("connections: must be at least 1; quic_percent: 150 is above 100"),
            "{text}"
        );
        assert!(text.contains("deliveries_per_core: must be at least 1"));
        assert!(text.contains("root: /definitely/not/here is not a directory"));
    }

    #[test]
    fn implausible_figures_are_refused() {
        let config = Config {
            kernel_bytes_per_conn: 5 << 30,
            target_fanout_ms: u64::MAX,
            ..Config::default()
        };
        let text = config.validate().unwrap_err().to_string();
        assert_eq!(
            text,
            format!(
                "kernel_bytes_per_conn: {} is above 1048576; target_fanout_ms: {} is above 3600000",
                5u64 << 30,
                u64::MAX
            )
        );
    }

    #[test]
    fn toml_overrides_defaults_and_keeps_the_rest() {
        let config =
            Config::from_toml("connections = 5000\ncores = 4\n", Path::new("t.toml")).unwrap();
        assert_eq!(config.connections, 5000);
        assert_eq!(config.cores, Some(4));
        assert_eq!(config.quic_percent, model::DEFAULT_QUIC_PERCENT);
    }

    #[test]
    fn toml_errors_name_line_and_setting() {
        let err = Config::from_toml("cores = 4\nconnections = \"many\"\n", Path::new("t.toml"))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("config t.toml: line 2: connections: "),
            "{text}"
        );
        assert!(!text.contains('\n'));

        let err = Config::from_toml("conections = 4\n", Path::new("t.toml")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `conections`"),
            "{err}"
        );
    }

    #[test]
    fn the_package_template_unit_is_the_default_where_installed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let plain = Config {
            root: root.clone(),
            ..Config::default()
        };
        assert_eq!(plain.clone().with_installed_unit().service, "cue-edge");
        std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
        std::fs::write(
            root.join("lib/systemd/system/cue-edge@.service"),
            "[Unit]\n",
        )
        .unwrap();
        assert_eq!(plain.clone().with_installed_unit().service, "cue-edge@");
        let chosen = Config {
            service: "edge-blue".into(),
            ..plain
        };
        assert_eq!(chosen.with_installed_unit().service, "edge-blue");
    }

    #[test]
    fn service_suffix_is_optional() {
        let config = Config {
            service: "cue-edge.service".into(),
            ..Config::default()
        };
        assert_eq!(config.service_name(), "cue-edge");
    }
}
