//! `cue-origin` configuration: one typed struct, TOML file (`--config`) with flags on top,
//! embedded defaults that run on loopback, and a `validate()` that reports every problem at once.
//! Also the TOML loading and shared-secret resolution every Cue binary uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Origin settings. Every field has a default; see each for its trade-off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Publish/admin HTTP listener. Default `127.0.0.1:7000`.
    pub http: SocketAddr,
    /// Relay listener that edges dial. Default `127.0.0.1:7001`.
    pub relay: SocketAddr,
    /// Directory of the durable cue log (and of the generated auth secret). Default `./cue-data`.
    pub data_dir: PathBuf,
    /// Shared token secret (prefer `CUE_AUTH_SECRET` or `auth_secret_file`). Default none.
    pub auth_secret: Option<String>,
    /// File holding the secret. Default `<data_dir>/auth.secret`, created with a random secret
    /// on first start when no secret is configured, so `cue-origin token` and a `cue-edge` in the
    /// same directory share it.
    pub auth_secret_file: Option<PathBuf>,
    /// Turn token checks off (local experiments only; logged as a warning). Default false.
    pub no_auth: bool,
    /// Compact the log when it grows past this many bytes. Default 64 MiB. Smaller compacts more
    /// often; the compacted log holds one cue per event.
    pub log_max_bytes: u64,
    /// fdatasync every group commit. Default true. False breaks the 201-means-durable promise
    /// and exists only for benchmarks of everything else.
    pub fsync: bool,
    /// Publishes waiting for the log writer; beyond it publishes get 503. Default 4096.
    pub publish_queue: usize,
    /// Live cues buffered per edge before the edge is re-synchronised from the newest state
    /// instead. Default 1024.
    pub relay_buffer: usize,
    /// Relay heartbeat interval in ms. Default 1000.
    pub relay_heartbeat_ms: u64,
    /// Drop an edge heard nothing from for this many ms. Default 5000.
    pub relay_dead_after_ms: u64,
    /// Drop an edge that accepts no bytes for this many ms. Default 5000.
    pub relay_write_timeout_ms: u64,
    /// Most edges linked at once. Default 1024.
    pub max_edges: usize,
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:7000".parse().expect("literal"),
            relay: "127.0.0.1:7001".parse().expect("literal"),
            data_dir: PathBuf::from("./cue-data"),
            auth_secret: None,
            auth_secret_file: None,
            no_auth: false,
            log_max_bytes: 64 << 20,
            fsync: true,
            publish_queue: 4096,
            relay_buffer: 1024,
            relay_heartbeat_ms: 1000,
            relay_dead_after_ms: 5000,
            relay_write_timeout_ms: 5000,
            max_edges: 1024,
        }
    }
}

impl OriginConfig {
    /// Every problem, one line each; empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut e = Vec::new();
        if self.http == self.relay {
            e.push(format!(
                "http and relay: both are {}; they must differ",
                self.http
            ));
        }
        if self.log_max_bytes < 4096 {
            e.push(format!(
                "log_max_bytes: {} is below the 4096 minimum",
                self.log_max_bytes
            ));
        }
        if !(1..=1_000_000).contains(&self.publish_queue) {
            e.push(format!(
                "publish_queue: {} must be 1..=1000000",
                self.publish_queue
            ));
        }
        if !(16..=1_000_000).contains(&self.relay_buffer) {
            e.push(format!(
                "relay_buffer: {} must be 16..=1000000",
                self.relay_buffer
            ));
        }
        if self.relay_heartbeat_ms == 0 {
            e.push("relay_heartbeat_ms: must be > 0".into());
        }
        if self.relay_dead_after_ms <= self.relay_heartbeat_ms {
            e.push(format!(
                "relay_dead_after_ms: {} must exceed relay_heartbeat_ms ({})",
                self.relay_dead_after_ms, self.relay_heartbeat_ms
            ));
        }
        if self.relay_write_timeout_ms == 0 {
            e.push("relay_write_timeout_ms: must be > 0".into());
        }
        if self.max_edges == 0 {
            e.push("max_edges: must be > 0".into());
        }
        if let Some(s) = &self.auth_secret {
            if s.len() < crate::token::MIN_SECRET_LEN {
                e.push(format!(
                    "auth_secret: {} bytes, needs at least {}",
                    s.len(),
                    crate::token::MIN_SECRET_LEN
                ));
            }
        }
        e
    }

    /// Where the secret file is.
    pub fn secret_file(&self) -> PathBuf {
        self.auth_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("auth.secret"))
    }
}

/// The token keys a service checks with: `None` (and a warning naming what is open) with
/// `no_auth`, else keys from [`resolve_secret`] (`CUE_AUTH_SECRET`, the inline secret, the file;
/// `create` makes the file when missing). `open` says what `--no-auth` lets anyone do.
pub fn token_keys(
    no_auth: bool,
    inline: Option<&str>,
    file: &Path,
    create: bool,
    open: &str,
) -> Result<Option<crate::token::TokenKeys>, String> {
    if no_auth {
        tracing::warn!("auth is OFF (--no-auth): {open}; local experiments only");
        return Ok(None);
    }
    let secret = resolve_secret(std::env::var("CUE_AUTH_SECRET").ok(), inline, file, create)?;
    crate::token::TokenKeys::new(&secret)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Loads a TOML config file into `T` (unknown keys are errors), or `T::default()` without one.
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, String> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config {}: cannot read: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_string();
        format!(
            "config {}: {}",
            path.display(),
            msg.lines().next().unwrap_or("invalid TOML")
        )
    })
}

/// Resolves the shared token secret: `CUE_AUTH_SECRET` from the environment, else the inline
/// setting, else the secret file. With `create`, a missing file is created (0600) holding a
/// random 64-hex-digit secret. Errors are one line naming the setting.
pub fn resolve_secret(
    env: Option<String>,
    inline: Option<&str>,
    file: &Path,
    create: bool,
) -> Result<Vec<u8>, String> {
    let check = |s: Vec<u8>, from: &str| {
        if s.len() < crate::token::MIN_SECRET_LEN {
            Err(format!(
                "{from}: secret is {} bytes, needs at least {}",
                s.len(),
                crate::token::MIN_SECRET_LEN
            ))
        } else {
            Ok(s)
        }
    };
    if let Some(s) = env.filter(|s| !s.is_empty()) {
        return check(s.into_bytes(), "CUE_AUTH_SECRET");
    }
    if let Some(s) = inline {
        return check(s.as_bytes().to_vec(), "auth_secret");
    }
    match std::fs::read_to_string(file) {
        Ok(s) => check(
            s.trim().as_bytes().to_vec(),
            &format!("auth secret file {}", file.display()),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use rand::Rng;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut raw = [0u8; 32];
            rand::thread_rng().fill(&mut raw);
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("auth secret file {}: {e}", file.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(file)
                .map_err(|e| format!("auth secret file {}: cannot create: {e}", file.display()))?;
            writeln!(f, "{hex}")
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("auth secret file {}: cannot write: {e}", file.display()))?;
            tracing::warn!(file = %file.display(), "no auth secret configured: generated one");
            Ok(hex.into_bytes())
        }
        Err(e) => Err(format!(
            "auth secret: none configured and {} is unreadable ({e}); set CUE_AUTH_SECRET, \
             auth_secret_file, or --no-auth",
            file.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = OriginConfig::default();
        assert!(c.validate().is_empty());
        assert!(c.http.ip().is_loopback() && c.relay.ip().is_loopback());
    }

    #[test]
    fn validate_reports_every_problem() {
        let c = OriginConfig {
            relay: "127.0.0.1:7000".parse().unwrap(),
            publish_queue: 0,
            relay_dead_after_ms: 10,
            auth_secret: Some("short".into()),
            ..Default::default()
        };
        let errs = c.validate();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("http and relay"));
    }

    #[test]
    fn toml_unknown_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "htp = \"127.0.0.1:1\"\n").unwrap();
        let e = load_toml::<OriginConfig>(Some(&p)).unwrap_err();
        assert!(e.contains("htp"), "{e}");
        std::fs::write(&p, "max_edges = 3\n").unwrap();
        assert_eq!(load_toml::<OriginConfig>(Some(&p)).unwrap().max_edges, 3);
    }

    #[test]
    fn secret_resolution_order_and_creation() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/auth.secret");
        assert!(resolve_secret(None, None, &f, false).is_err());
        let s = resolve_secret(None, None, &f, true).unwrap();
        assert_eq!(s.len(), 64);
        assert_eq!(resolve_secret(None, None, &f, false).unwrap(), s);
        let env = "e".repeat(40);
        assert_eq!(
            resolve_secret(Some(env.clone()), Some(&"i".repeat(40)), &f, false).unwrap(),
            env.as_bytes()
        );
        assert!(resolve_secret(Some("short".into()), None, &f, false)
            .unwrap_err()
            .starts_with("CUE_AUTH_SECRET"));
    }
}
