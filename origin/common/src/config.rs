//! Loading settings the same way in every Cue binary: a TOML file into a typed struct (unknown
//! keys are errors), and the token secret from the environment, the config or a file.

use std::path::Path;

use serde::de::DeserializeOwned;

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

/// Checks a `HOST:PORT` address (a host name, an IPv4 address or a bracketed IPv6 address, and
/// a port 1-65535) and returns its parts; names are resolved when dialled, not here.
pub fn host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("'{s}' is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let bracketed = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if port == 0 || !(bracketed || name_ok) {
        return Err(bad());
    }
    Ok((host, port))
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
    fn host_ports() {
        assert_eq!(
            host_port("origin-a.example:7001").unwrap(),
            ("origin-a.example", 7001)
        );
        assert_eq!(host_port("127.0.0.1:1").unwrap(), ("127.0.0.1", 1));
        assert_eq!(host_port("[::1]:7001").unwrap(), ("[::1]", 7001));
        for bad in [
            "", "a", "a:", ":1", "a:0", "a:70000", "a b:1", "[]:1", "a/b:1",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
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
