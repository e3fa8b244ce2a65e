//! Loading settings the same way in every Cue binary: a TOML file into a typed struct (unknown
//! keys are errors), and the token secret from the environment, the config or a file.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Name of the public key set (JWKS) an origin writes beside its signing keys, and that edges
/// and prefetch read by default from `./cue-data`.
pub const PUBLIC_KEYS_FILE: &str = "token-keys.pub.json";
/// Name of an origin's signing keys in its data directory.
pub const SIGNING_KEYS_FILE: &str = "token-keys.json";
/// Name of the legacy shared-secret file.
pub const SECRET_FILE: &str = "auth.secret";

/// Where a service's token settings come from.
#[derive(Debug, Clone, Copy)]
pub struct AuthSettings<'a> {
    /// `--no-auth`.
    pub no_auth: bool,
    /// `auth_secret` (inline).
    pub secret: Option<&'a str>,
    /// `auth_secret_file`, when configured.
    pub secret_file: Option<&'a Path>,
    /// `keys`, when configured: the public set (edge, prefetch) or the signing set (origin).
    pub keys_file: Option<&'a Path>,
    /// Where the defaults live: the origin's data directory, `./cue-data` for the others.
    pub dir: &'a Path,
    /// What `--no-auth` lets anyone do (for the warning).
    pub open: &'a str,
}

impl<'a> AuthSettings<'a> {
    /// An edge's or prefetch's settings: defaults in `./cue-data`.
    pub fn service(
        no_auth: bool,
        secret: Option<&'a str>,
        secret_file: Option<&'a Path>,
        keys_file: Option<&'a Path>,
        open: &'a str,
    ) -> Self {
        Self {
            no_auth,
            secret,
            secret_file,
            keys_file,
            dir: Path::new("./cue-data"),
            open,
        }
    }
}

fn env_secret() -> Option<String> {
    std::env::var("CUE_AUTH_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// What every service decides before looking at key files: auth off, a shared secret, or keys.
enum First {
    Off,
    Secret(Box<crate::token::TokenKeys>),
    Keys,
}

fn first(a: &AuthSettings<'_>) -> Result<First, String> {
    if a.no_auth {
        tracing::warn!(
            "auth is OFF (--no-auth): {}; local experiments only",
            a.open
        );
        return Ok(First::Off);
    }
    Ok(match explicit_secret(a)? {
        Some(k) => First::Secret(Box::new(k)),
        None => First::Keys,
    })
}

/// A secret from the environment, the inline setting or a configured file, if one is set.
fn explicit_secret(a: &AuthSettings<'_>) -> Result<Option<crate::token::TokenKeys>, String> {
    if env_secret().is_none() && a.secret.is_none() && a.secret_file.is_none() {
        return Ok(None);
    }
    let file = a.secret_file.unwrap_or_else(|| Path::new(""));
    let s = resolve_secret(env_secret(), a.secret, file)?;
    crate::token::TokenKeys::new(&s)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The `DIR/auth.secret` an older version left, if there is one (with a warning).
fn legacy_secret(dir: &Path) -> Result<Option<crate::token::TokenKeys>, String> {
    let legacy = dir.join(SECRET_FILE);
    if !legacy.exists() {
        return Ok(None);
    }
    tracing::warn!(file = %legacy.display(), "token keys: the shared secret of an older setup (HS256); `cue-origin keys new` moves to asymmetric keys");
    let s = resolve_secret(None, None, &legacy)?;
    crate::token::TokenKeys::new(&s)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn read_file(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// What an edge or prefetch checks tokens with: `None` with `no_auth` (and a warning); a shared
/// secret when one is set (`CUE_AUTH_SECRET`, `auth_secret`, a configured `auth_secret_file`);
/// else the public key set (`keys`, or `DIR/token-keys.pub.json`); else, for a host set up
/// before asymmetric keys, `DIR/auth.secret`. A configured file that is missing is an error,
/// never a silent fallback.
pub fn verifier(a: AuthSettings<'_>) -> Result<Option<crate::keys::Verifier>, String> {
    use crate::keys::{KeySet, Verifier};
    match first(&a)? {
        First::Off => return Ok(None),
        First::Secret(k) => return Ok(Some(Verifier::Secret(k))),
        First::Keys => {}
    }
    let default_keys = a.dir.join(PUBLIC_KEYS_FILE);
    let keys = a
        .keys_file
        .map(Path::to_path_buf)
        .or_else(|| default_keys.exists().then_some(default_keys.clone()));
    if let Some(path) = keys {
        let set = KeySet::from_jwks(&read_file(&path, "keys")?)
            .map_err(|e| format!("keys {}: {e}", path.display()))?;
        tracing::info!(file = %path.display(), kids = ?set.kids(), "token keys: public key set");
        return Ok(Some(Verifier::Keys(set)));
    }
    if let Some(k) = legacy_secret(a.dir)? {
        return Ok(Some(Verifier::Secret(Box::new(k))));
    }
    Err(format!(
        "no token keys: set CUE_AUTH_SECRET, auth_secret_file or keys, or start cue-origin with its data directory at {} first (it writes {})",
        a.dir.display(),
        default_keys.display()
    ))
}

/// An origin's token keys: a shared secret, or signing keys (and the file they live in).
// One per process, never moved on a hot path: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum OriginKeys {
    /// A shared HS256 secret.
    Secret(Box<crate::token::TokenKeys>),
    /// Signing keys; the public set is written beside them.
    Signing {
        /// The keys.
        keys: crate::keys::SigningKeys,
        /// Their file.
        file: std::path::PathBuf,
    },
}

impl OriginKeys {
    /// Signs `claims` (HS256 with the secret, or the active signing key).
    pub fn mint(&self, claims: &crate::token::Claims) -> String {
        match self {
            OriginKeys::Secret(k) => k.mint(claims),
            OriginKeys::Signing { keys, .. } => keys.mint(claims),
        }
    }

    /// What the origin checks publisher tokens with.
    pub fn verifier(&self) -> crate::keys::Verifier {
        match self {
            OriginKeys::Secret(k) => crate::keys::Verifier::Secret(k.clone()),
            OriginKeys::Signing { keys, .. } => crate::keys::Verifier::Keys(keys.key_set()),
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename, `mode` bits, fsynced.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let e = |what: &str, err: std::io::Error| format!("{} {}: {err}", what, path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| e("creating the directory of", err))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|err| e("writing", err))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|err| e("writing", err))?;
    std::fs::rename(&tmp, path).map_err(|err| e("renaming onto", err))
}

/// Writes the public set of `keys` beside `file` (`token-keys.pub.json`).
pub fn write_public_set(keys: &crate::keys::SigningKeys, file: &Path) -> Result<(), String> {
    let public = file.with_file_name(PUBLIC_KEYS_FILE);
    write_atomic(&public, &keys.export(), 0o644)
}

/// The origin's token keys: `None` with `no_auth`; a shared secret when one is set; else the
/// signing keys (`keys`, or `DIR/token-keys.json`); else the `DIR/auth.secret` of an older
/// setup; else, with `create`, a new Ed25519 key pair in `DIR` (logged). A configured file that
/// is missing is an error. With signing keys the public set is (re)written beside them.
pub fn origin_keys(
    a: AuthSettings<'_>,
    create: bool,
    now_s: u64,
) -> Result<Option<OriginKeys>, String> {
    use crate::keys::{KeyAlg, SigningKeys};
    let (keys, path) = match find_origin_keys(&a)? {
        Found::Off => return Ok(None),
        Found::Secret(k) => return Ok(Some(OriginKeys::Secret(k))),
        Found::Signing(keys, path) => (keys, path),
        Found::Missing(path) if create => {
            let k = SigningKeys::generate(KeyAlg::EdDSA, now_s).map_err(|e| e.to_string())?;
            write_atomic(&path, &k.to_json(), 0o600)?;
            tracing::warn!(file = %path.display(), kid = k.active_kid(), "no token keys configured: generated an Ed25519 signing key");
            (k, path)
        }
        Found::Missing(path) => {
            return Err(format!(
                "no token keys: {} does not exist (start cue-origin once, or `cue-origin keys new`), and no CUE_AUTH_SECRET or auth_secret_file is set",
                path.display()
            ))
        }
    };
    write_public_set(&keys, &path)?;
    Ok(Some(OriginKeys::Signing { keys, file: path }))
}

/// What an origin finds of its token keys, reading only.
// One per check, never moved on a hot path: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Found {
    Off,
    Secret(Box<crate::token::TokenKeys>),
    Signing(crate::keys::SigningKeys, std::path::PathBuf),
    /// No keys yet: a start makes them here.
    Missing(std::path::PathBuf),
}

fn find_origin_keys(a: &AuthSettings<'_>) -> Result<Found, String> {
    use crate::keys::SigningKeys;
    match first(a)? {
        First::Off => return Ok(Found::Off),
        First::Secret(k) => return Ok(Found::Secret(k)),
        First::Keys => {}
    }
    let default = a.dir.join(SIGNING_KEYS_FILE);
    let path = a
        .keys_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default.clone());
    if path.exists() || a.keys_file.is_some() {
        let keys = SigningKeys::from_json(&read_file(&path, "signing keys")?)
            .map_err(|e| format!("signing keys {}: {e}", path.display()))?;
        return Ok(Found::Signing(keys, path));
    }
    if let Some(k) = legacy_secret(a.dir)? {
        return Ok(Found::Secret(Box::new(k)));
    }
    Ok(Found::Missing(path))
}

/// `--check-config` for an origin's token keys: reads what is there and writes nothing. Keys
/// a start would generate are fine when their directory can be made.
pub fn check_origin_keys(a: AuthSettings<'_>) -> Result<(), String> {
    match find_origin_keys(&a)? {
        Found::Missing(path) => can_create(&path).map_err(|e| format!("signing keys: {e}")),
        _ => Ok(()),
    }
}

/// `--check-config` for a host secret ([`host_secret`]): an existing file must hold a secret;
/// a missing one must be creatable (a start makes it).
pub fn check_host_secret(file: &Path) -> Result<(), String> {
    if file.exists() {
        let s = std::fs::read_to_string(file)
            .map_err(|err| format!("reading {}: {err}", file.display()))?;
        return secret_long_enough(file, s.trim()).map(|_| ());
    }
    can_create(file)
}

/// Whether `file` could be created: its nearest existing ancestor is a directory this process
/// may write to (nothing is created here).
pub fn can_create(file: &Path) -> Result<(), String> {
    let mut dir = file.parent();
    while let Some(d) = dir {
        let d = if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        };
        if d.exists() {
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| format!("{}: a path with a NUL byte", file.display()))?;
            // SAFETY: `c` is a live NUL-terminated path; access(2) only reads it.
            let ok =
                d.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
            return if ok {
                Ok(())
            } else {
                Err(format!(
                    "{} does not exist and cannot be created: {} is not a writable directory",
                    file.display(),
                    d.display()
                ))
            };
        }
        dir = d.parent();
    }
    Err(format!("{}: no directory to create it in", file.display()))
}

/// The settings as read (`read`: the file, then the flags over it) with every problem of
/// their values (`validate`), all of them, not the first.
pub fn checked<C>(
    read: Result<C, String>,
    validate: impl FnOnce(&C) -> Vec<String>,
) -> Result<C, Vec<String>> {
    let c = read.map_err(|e| vec![e])?;
    let problems = validate(&c);
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(problems)
    }
}

/// The whole settling of a start: the settings as read, their values checked, then the files
/// they name (`preflight`); any problem is printed ([`config_problems`]) and gives exit 2.
/// With `check_only` (`--check-config`) a good config prints [`config_ok`] and gives exit 0.
/// `Ok` is a config to start with.
pub fn settle<C>(
    bin: &str,
    read: Result<C, String>,
    validate: impl FnOnce(&C) -> Vec<String>,
    preflight: impl FnOnce(&C) -> Vec<String>,
    check_only: bool,
    file: Option<&Path>,
) -> Result<C, std::process::ExitCode> {
    let c = checked(read, validate).map_err(|p| config_problems(bin, &p))?;
    let problems = preflight(&c);
    if !problems.is_empty() {
        return Err(config_problems(bin, &problems));
    }
    if check_only {
        return Err(config_ok(bin, file));
    }
    Ok(c)
}

/// Prints each config problem on its own line (`BIN: config: PROBLEM`) and a summary, and
/// gives exit code 2: what every binary does with a bad setting, at a start or with
/// `--check-config`.
pub fn config_problems(bin: &str, problems: &[String]) -> std::process::ExitCode {
    for p in problems {
        eprintln!("{bin}: {p}");
    }
    eprintln!(
        "{bin}: {} config problem{}; nothing started",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    std::process::ExitCode::from(2)
}

/// What `--check-config` prints when the settings hold: exit 0.
pub fn config_ok(bin: &str, file: Option<&Path>) -> std::process::ExitCode {
    match file {
        Some(f) => println!("{bin}: config {} ok", f.display()),
        None => println!("{bin}: config ok (defaults and flags, no file)"),
    }
    std::process::ExitCode::SUCCESS
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
    toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))
}

/// A TOML error as `config FILE:LINE:COLUMN: key `KEY`: MESSAGE`: the line and column of the
/// error's span, and the dotted key on that line (under its `[table]`), so a wrong type
/// (`ws = 12`) names the key it is about, not only what was expected.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().lines().next().unwrap_or("invalid TOML");
    let Some(at) = e.span().map(|s| s.start.min(text.len())) else {
        return format!("config {}: {msg}", path.display());
    };
    let (line, col, key) = locate(text, at);
    let key = key.map(|k| format!(" key `{k}`:")).unwrap_or_default();
    format!("config {}:{line}:{col}:{key} {msg}", path.display())
}

/// The 1-based line and column of byte `at` in `text`, and the dotted key written on that line
/// (`table.key` under a `[table]` header; the table itself on a header line), if any.
fn locate(text: &str, at: usize) -> (usize, usize, Option<String>) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_no = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[start..at].chars().count() + 1;
    let this = text[start..].lines().next().unwrap_or("");
    let table = text[..start]
        .lines()
        .rev()
        .find_map(header)
        .map(str::to_string);
    let key = if let Some(h) = header(this) {
        Some(h.to_string())
    } else {
        this.split_once('=')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .map(|k| match &table {
                Some(t) => format!("{t}.{k}"),
                None => k.to_string(),
            })
    };
    (line_no, col, key)
}

/// The name in a `[table]` or `[[array]]` header line.
fn header(line: &str) -> Option<&str> {
    let l = line.trim();
    let inner = l
        .strip_prefix("[[")
        .and_then(|r| r.split_once("]]"))
        .map(|(n, _)| n);
    let inner = inner.or_else(|| {
        l.strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n)
    });
    inner.map(str::trim).filter(|n| !n.is_empty())
}

/// A secret that the processes of one host share and nobody else needs (the edges' QUIC
/// stateless-reset secret, their admission-ticket secret): 32 random bytes, hex, in `file`
/// (0600), made by the first process that finds none. Creation never replaces: when two
/// processes start at once, the one whose link lands first wins and both read its secret.
pub fn host_secret(file: &Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let e = |what: &str, err: std::io::Error| format!("{what} {}: {err}", file.display());
    if !file.exists() {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| e("creating the directory of", err))?;
        }
        let raw: [u8; 32] = rand::random();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = file.with_extension(format!(
            "new.{}.{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|err| e("creating", err))?;
        let written = f
            .write_all(hex.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|err| e("writing", err));
        // A link never replaces an existing file: when another process won, its secret stays.
        let linked = written.and_then(|_| match std::fs::hard_link(&tmp, file) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(err) => Err(e("creating", err)),
        });
        let _ = std::fs::remove_file(&tmp);
        linked?;
    }
    let s = std::fs::read_to_string(file).map_err(|err| e("reading", err))?;
    secret_long_enough(file, s.trim())
}

fn secret_long_enough(file: &Path, s: &str) -> Result<Vec<u8>, String> {
    if s.len() < crate::token::MIN_SECRET_LEN {
        return Err(format!(
            "{}: secret is {} bytes, needs at least {}",
            file.display(),
            s.len(),
            crate::token::MIN_SECRET_LEN
        ));
    }
    Ok(s.as_bytes().to_vec())
}

/// Resolves the shared token secret: `CUE_AUTH_SECRET` from the environment, else the inline
/// setting, else the secret file (which must exist). Errors are one line naming the setting.
pub fn resolve_secret(
    env: Option<String>,
    inline: Option<&str>,
    file: &Path,
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
        Err(e) => Err(format!(
            "auth secret file {}: cannot read it ({e}); a configured file is never created",
            file.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        ws: String,
        port: u16,
        tls: SampleTls,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct SampleTls {
        cert: String,
    }

    fn load_err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let e = load_toml::<Sample>(Some(&p)).unwrap_err();
        e.replace(&p.display().to_string(), "c.toml")
    }

    #[test]
    fn a_wrong_type_names_the_key_and_its_line() {
        assert_eq!(
            load_err("port = 1\nws = 12\n"),
            "config c.toml:2:6: key `ws`: invalid type: integer `12`, expected a string"
        );
        assert_eq!(
            load_err("ws = \"a\"\n\n[tls]\ncert = 5\n"),
            "config c.toml:4:8: key `tls.cert`: invalid type: integer `5`, expected a string"
        );
        let e = load_err("port = 70000\n");
        assert!(e.starts_with("config c.toml:1:8: key `port`:"), "{e}");
    }

    #[test]
    fn broken_toml_and_unknown_keys_say_where() {
        let e = load_err("ws = \"a\"\nport = = 3\n");
        assert!(e.starts_with("config c.toml:2:"), "{e}");
        let e = load_err("[tls]\nkey = \"x\"\n");
        assert!(
            e.starts_with("config c.toml:2:1: key `tls.key`: unknown field `key`"),
            "{e}"
        );
    }

    proptest::proptest! {
        /// Any text and any offset (in or past it, on or off a character boundary) gives a
        /// line and column inside the text and no panic.
        #[test]
        fn locate_never_panics_and_stays_in_the_text(text in "(?s).{0,200}", at in 0usize..300) {
            let (line, col, _) = locate(&text, at);
            proptest::prop_assert!(line >= 1 && line <= text.matches('\n').count() + 1);
            proptest::prop_assert!(col >= 1 && col <= text.chars().count() + 1);
        }
    }

    #[test]
    fn host_secret_is_made_once_and_shared_by_racing_processes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/host.secret");
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| host_secret(&file))).collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(
            got.iter().all(|g| g == &got[0]),
            "every racer reads one secret"
        );
        assert_eq!(got[0].len(), 64);
        assert_eq!(
            host_secret(&file).unwrap(),
            got[0],
            "an existing file is kept"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing but the secret is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
        std::fs::write(&file, "short").unwrap();
        assert!(host_secret(&file).unwrap_err().contains("needs at least"));
    }

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
    fn secret_resolution_order_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sub/auth.secret");
        let e = resolve_secret(None, None, &f).unwrap_err();
        assert!(e.contains("never created"), "{e}");
        assert!(!f.exists(), "a missing secret file is not created");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, format!("{}\n", "f".repeat(40))).unwrap();
        assert_eq!(
            resolve_secret(None, None, &f).unwrap(),
            "f".repeat(40).as_bytes()
        );
        let env = "e".repeat(40);
        assert_eq!(
            resolve_secret(Some(env.clone()), Some(&"i".repeat(40)), &f).unwrap(),
            env.as_bytes()
        );
        assert!(resolve_secret(Some("short".into()), None, &f)
            .unwrap_err()
            .starts_with("CUE_AUTH_SECRET"));
    }

    #[test]
    fn origin_makes_keys_once_and_services_read_the_public_set() {
        let dir = tempfile::tempdir().unwrap();
        let a = |keys: Option<&'static Path>| AuthSettings {
            no_auth: false,
            secret: None,
            secret_file: None,
            keys_file: keys,
            dir: dir.path(),
            open: "",
        };
        // Nothing there and no creation: an error naming what to do.
        let e = origin_keys(a(None), false, 1).unwrap_err();
        assert!(e.contains("keys new"), "{e}");
        let Some(OriginKeys::Signing { keys, .. }) = origin_keys(a(None), true, 1).unwrap() else {
            panic!("signing keys")
        };
        let kid = keys.active_kid().to_string();
        // Again: the same keys, not new ones.
        let Some(OriginKeys::Signing { keys: again, .. }) = origin_keys(a(None), true, 2).unwrap()
        else {
            panic!("signing keys")
        };
        assert_eq!(again.active_kid(), kid);
        // An edge in the same directory verifies with the public set only.
        let Some(crate::keys::Verifier::Keys(set)) = verifier(a(None)).unwrap() else {
            panic!("public set")
        };
        assert_eq!(set.kids(), vec![kid]);
        // A configured file that is missing is an error, never a fallback.
        let missing: &'static Path = Path::new("/nonexistent/cue/token-keys.pub.json");
        assert!(verifier(a(Some(missing)))
            .unwrap_err()
            .contains("/nonexistent"));
        assert!(origin_keys(a(Some(missing)), true, 1).is_err());
        assert!(!missing.exists());
    }
}
