//! `cue-origin`: publish API, durable cue log, relay to edges; `cue-origin token ...` mints tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use cue_common::config::load_toml;
use cue_common::time::unix_now_s;
use cue_origin::config::OriginConfig;

/// Cue origin: publish API, durable cue log, relay to edges.
///
/// Settings come from `--config FILE` (TOML, keys as in docs/config.md), then flags override
/// them. With neither, it runs on loopback with embedded defaults.
#[derive(Parser, Debug)]
#[command(name = "cue-origin", version = cue_build_info::LONG_VERSION)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, for a log shipper); also CUE_LOG_FORMAT.
    #[arg(
        long,
        global = true,
        env = "CUE_LOG_FORMAT",
        default_value = "text",
        hide_env = true
    )]
    log_format: cue_common::logging::LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file; flags override its values.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Check the settings (file and flags) and every file they name, print each problem, and
    /// exit 0 (fine) or 2 (problems) without starting or writing anything.
    #[arg(long)]
    check_config: bool,
    /// Publish/admin HTTP listen address [default: 127.0.0.1:7000].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Relay listen address that edges dial [default: 127.0.0.1:7001].
    #[arg(long)]
    relay: Option<SocketAddr>,
    /// Directory of the durable cue log [default: ./cue-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// File with a shared HS256 token secret (CUE_AUTH_SECRET wins); must exist.
    #[arg(long, global = true)]
    auth_secret_file: Option<PathBuf>,
    /// The signing keys [default: DATA_DIR/token-keys.json, made on first start].
    #[arg(long, global = true)]
    keys_file: Option<PathBuf>,
    /// Turn token checks off: anyone may publish. Local experiments only.
    #[arg(long)]
    no_auth: bool,
    /// Compact the cue log beyond this many bytes [default: 67108864].
    #[arg(long)]
    log_max_bytes: Option<u64>,
    /// Skip fdatasync (breaks 201-means-durable; benchmarks only).
    #[arg(long)]
    no_fsync: bool,
    /// Publishes queued for the log writer before 503 [default: 4096].
    #[arg(long)]
    publish_queue: Option<usize>,
    /// Live cues buffered per edge before it is resynchronised [default: 1024].
    #[arg(long)]
    relay_buffer: Option<usize>,
    /// Relay heartbeat interval, ms [default: 1000].
    #[arg(long)]
    relay_heartbeat_ms: Option<u64>,
    /// Drop an edge silent for this long, ms [default: 5000].
    #[arg(long)]
    relay_dead_after_ms: Option<u64>,
    /// Drop an edge that takes no bytes for this long, ms [default: 5000].
    #[arg(long)]
    relay_write_timeout_ms: Option<u64>,
    /// Retire events with no new cue for this long, seconds; 0 = never [default: 604800].
    #[arg(long)]
    event_retire_after_s: Option<u64>,
    /// Publishes per second a named tenant may make; 0 = no limit [default: 1000].
    #[arg(long)]
    tenant_publishes_per_s: Option<u32>,
    /// Events a named tenant may have at once; 0 = no limit [default: 10000].
    #[arg(long)]
    tenant_max_events: Option<usize>,
    /// Most edges linked at once [default: 1024].
    #[arg(long)]
    max_edges: Option<usize>,
    /// Relay TLS: the origin's certificate chain (PEM); with --relay-key and --relay-client-ca.
    #[arg(long)]
    relay_cert: Option<PathBuf>,
    /// Relay TLS: the origin's private key (PEM).
    #[arg(long)]
    relay_key: Option<PathBuf>,
    /// Relay TLS: the CA edges' certificates must chain to (PEM).
    #[arg(long)]
    relay_client_ca: Option<PathBuf>,
    /// Allow a plaintext relay off loopback (anyone on the path reads and injects cues).
    #[arg(long)]
    relay_insecure: bool,
    /// The store must be unhealthy this long before the relay drops edges, ms [default: 15000].
    #[arg(long)]
    relay_unhealthy_grace_ms: Option<u64>,
    /// Where cues are made durable: `embedded` (the log in DATA_DIR) or
    /// `nats://HOST:PORT[,HOST:PORT...]` (a JetStream stream) [default: embedded].
    #[arg(long)]
    store: Option<String>,
    /// JetStream stream name and subject prefix [default: CUE].
    #[arg(long)]
    nats_stream: Option<String>,
    /// Replicas when creating the stream; an existing one must match [default: 3].
    #[arg(long)]
    nats_replicas: Option<usize>,
    /// NATS user name (with --nats-password or CUE_NATS_PASSWORD).
    #[arg(long)]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "CUE_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long)]
    nats_creds_file: Option<PathBuf>,
    /// CA certificate (PEM) for TLS to NATS; turns TLS on.
    #[arg(long)]
    nats_ca_file: Option<PathBuf>,
    /// Require TLS to NATS.
    #[arg(long)]
    nats_tls: bool,
    /// How long a publish waits for JetStream's ack, ms [default: 2000].
    #[arg(long)]
    nats_ack_timeout_ms: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mint a token with the origin's keys (or CUE_AUTH_SECRET) and print it.
    Token {
        #[command(subcommand)]
        kind: TokenKind,
    },
    /// Manage the signing keys (KEYS_FILE; the public set is written beside it).
    Keys {
        #[command(subcommand)]
        op: KeysOp,
    },
}

#[derive(Subcommand, Debug)]
enum KeysOp {
    /// Make the signing keys with one key (refuses to replace existing ones).
    New {
        /// EdDSA (Ed25519) or ES256 (P-256).
        #[arg(long, default_value = "EdDSA")]
        alg: String,
    },
    /// Add a new active key; older keys keep verifying until retired. Then give edges and
    /// prefetch the new public set and SIGHUP them, and SIGHUP (or restart) the origin.
    Rotate {
        /// EdDSA (Ed25519) or ES256 (P-256).
        #[arg(long, default_value = "EdDSA")]
        alg: String,
    },
    /// Drop a key: tokens signed with it stop verifying where the new public set is loaded.
    Retire {
        /// The key's id.
        #[arg(long)]
        kid: String,
    },
    /// Print the public key set (JWKS) for edges and prefetch.
    Export,
}

#[derive(Subcommand, Debug)]
enum TokenKind {
    /// A device token.
    Device {
        /// Device id (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Events the device may follow, comma-separated, or '*' for all.
        #[arg(long)]
        events: String,
        /// Lifetime, seconds (`--ttl` is the same flag).
        #[arg(
            long = "ttl-s",
            visible_alias = "ttl",
            value_name = "SECS",
            default_value_t = 86_400
        )]
        ttl: u64,
        /// Grant prefetch's `critical` priority class (never shed) to this device.
        #[arg(long)]
        critical: bool,
        /// The tenant whose events the device follows (1-32 chars of [a-z0-9-]) [default: the
        /// default tenant].
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A publisher token.
    Publisher {
        /// Lifetime, seconds (`--ttl` is the same flag).
        #[arg(
            long = "ttl-s",
            visible_alias = "ttl",
            value_name = "SECS",
            default_value_t = 86_400
        )]
        ttl: u64,
        /// Events the token may publish, comma-separated [default: every event].
        #[arg(long)]
        events: Option<String>,
        /// The tenant whose events the token publishes (1-32 chars of [a-z0-9-]) [default: the
        /// default tenant].
        #[arg(long)]
        tenant: Option<String>,
    },
    /// An admin token: drains and undrains edges (`POST /admin/drain`, `/admin/undrain`).
    Admin {
        /// Lifetime, seconds (`--ttl` is the same flag).
        #[arg(
            long = "ttl-s",
            visible_alias = "ttl",
            value_name = "SECS",
            default_value_t = 3_600
        )]
        ttl: u64,
    },
}

fn file_and_flags(a: &ServeArgs) -> Result<OriginConfig, String> {
    let mut c: OriginConfig = load_toml(a.config.as_deref())?;
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    over!(
        http,
        relay,
        data_dir,
        log_max_bytes,
        publish_queue,
        relay_buffer,
        relay_heartbeat_ms
    );
    over!(relay_dead_after_ms, relay_write_timeout_ms, max_edges);
    over!(
        relay_unhealthy_grace_ms,
        event_retire_after_s,
        tenant_publishes_per_s,
        tenant_max_events
    );
    over!(store, nats_stream, nats_replicas, nats_ack_timeout_ms);
    macro_rules! over_opt {
        ($($f:ident),*) => { $( if a.$f.is_some() { c.$f = a.$f.clone(); } )* };
    }
    over_opt!(nats_user, nats_password, nats_creds_file, nats_ca_file);
    over_opt!(relay_cert, relay_key, relay_client_ca);
    c.relay_insecure |= a.relay_insecure;
    c.nats_tls |= a.nats_tls;
    if a.keys_file.is_some() {
        c.keys_file = a.keys_file.clone();
    }
    if a.auth_secret_file.is_some() {
        c.auth_secret_file = a.auth_secret_file.clone();
    }
    c.no_auth |= a.no_auth;
    if a.no_fsync {
        c.fsync = false;
    }
    Ok(c)
}

/// What a start reads before it binds anything, read only: the token keys (keys a start would
/// generate need a directory to go in), the relay TLS files, the data directory (embedded
/// store). `--check-config` stops after it; a start runs it too, so that a bad file named by
/// the config exits 2 (a config problem) before anything starts.
fn preflight(cfg: &OriginConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = cue_common::config::check_origin_keys(cfg.auth()) {
        problems.push(e);
    }
    if let Some(files) = cfg.relay_tls() {
        if let Err(e) = cue_common::tls::relay_server_config(&files) {
            problems.push(format!("relay TLS: {e}"));
        }
    }
    if cfg.nats().is_none() {
        let probe = cfg.data_dir.join("log");
        let usable = if cfg.data_dir.exists() {
            if cfg.data_dir.is_dir() {
                cue_common::config::can_create(&probe)
            } else {
                Err(format!("{} is not a directory", cfg.data_dir.display()))
            }
        } else {
            cue_common::config::can_create(&cfg.data_dir)
        };
        if let Err(e) = usable {
            problems.push(format!("data_dir: {e}"));
        }
    }
    problems
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cue_common::build::set_commit(cue_build_info::COMMIT);
    cue_common::logging::init_logging(cli.log_format, cli.cmd.is_none() && cli.serve.check_config);
    // Subcommands (token, keys) need the settings, not the files a start reads.
    let serving = cli.cmd.is_none();
    let cfg = match cue_common::config::settle(
        "cue-origin",
        file_and_flags(&cli.serve),
        OriginConfig::validate,
        |c| if serving { preflight(c) } else { Vec::new() },
        serving && cli.serve.check_config,
        cli.serve.config.as_deref(),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.cmd {
        Some(Cmd::Token { kind }) => token(&cfg, kind),
        Some(Cmd::Keys { op }) => keys(&cfg, op),
        None => serve(cfg),
    }
}

fn keys(cfg: &OriginConfig, op: KeysOp) -> ExitCode {
    use cue_common::config::{write_atomic, write_public_set, SIGNING_KEYS_FILE};
    use cue_common::keys::{KeyAlg, SigningKeys};
    let file = cfg
        .keys_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join(SIGNING_KEYS_FILE));
    let alg = |a: &str| match a {
        "EdDSA" => Ok(KeyAlg::EdDSA),
        "ES256" => Ok(KeyAlg::ES256),
        other => Err(format!("--alg: '{other}' is not EdDSA or ES256")),
    };
    let load = || -> Result<SigningKeys, String> {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("signing keys {}: {e}", file.display()))?;
        SigningKeys::from_json(&text).map_err(|e| format!("signing keys {}: {e}", file.display()))
    };
    let now = unix_now_s();
    let r = (|| -> Result<String, String> {
        let (keys, say) = match op {
            KeysOp::Export => return Ok(load()?.export()),
            KeysOp::New { alg: a } => {
                if file.exists() {
                    return Err(format!(
                        "signing keys {} exist: use `keys rotate`",
                        file.display()
                    ));
                }
                let k = SigningKeys::generate(alg(&a)?, now).map_err(|e| e.to_string())?;
                let say = format!("new key {}", k.active_kid());
                (k, say)
            }
            KeysOp::Rotate { alg: a } => {
                let mut k = load()?;
                let kid = k.rotate(alg(&a)?, now).map_err(|e| e.to_string())?;
                (k, format!("active key now {kid}"))
            }
            KeysOp::Retire { kid } => {
                let mut k = load()?;
                k.retire(&kid).map_err(|e| e.to_string())?;
                (k, format!("retired {kid}"))
            }
        };
        write_atomic(&file, &keys.to_json(), 0o600)?;
        write_public_set(&keys, &file)?;
        Ok(format!(
            "{say}; wrote {} and its public set beside it",
            file.display()
        ))
    })();
    match r {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cue-origin: {e}");
            ExitCode::from(2)
        }
    }
}

fn token(cfg: &OriginConfig, kind: TokenKind) -> ExitCode {
    let keys = match cue_common::config::origin_keys(cfg.auth(), false, unix_now_s()) {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!("cue-origin: --no-auth: no keys to sign with");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("cue-origin: {e}");
            return ExitCode::from(2);
        }
    };
    let now = unix_now_s();
    let events = |list: &str| -> Result<Vec<String>, String> {
        let evs: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
        for e in &evs {
            if e != "*" && !cue_common::cue::valid_event(e) {
                return Err(format!(
                    "--events: '{e}' is not 1-64 chars of [a-z0-9._-] or '*'"
                ));
            }
        }
        Ok(evs)
    };
    let tenant = |t: Option<String>| -> Result<Option<String>, String> {
        match t {
            Some(t) if !cue_common::cue::valid_tenant(&t) => {
                Err(format!("--tenant: '{t}' is not 1-32 chars of [a-z0-9-]"))
            }
            t => Ok(t),
        }
    };
    let minted = match kind {
        TokenKind::Device {
            sub,
            events: list,
            ttl,
            critical,
            tenant: t,
        } => events(&list).and_then(|evs| {
            let t = tenant(t)?;
            if sub.is_empty() || sub.len() > 256 {
                return Err("--sub: must be 1-256 bytes".into());
            }
            Ok(keys.mint(&cue_common::token::Claims {
                sub: Some(sub),
                events: Some(evs),
                role: None,
                priority: critical.then(|| "critical".to_string()),
                tenant: t,
                exp: now.saturating_add(ttl),
            }))
        }),
        TokenKind::Admin { ttl } => Ok(keys.mint(&cue_common::token::Claims {
            sub: None,
            events: None,
            role: Some("admin".into()),
            priority: None,
            tenant: None,
            exp: now.saturating_add(ttl),
        })),
        TokenKind::Publisher {
            ttl,
            events: list,
            tenant: t,
        } => {
            let evs = match list {
                None => Ok(None),
                Some(l) => events(&l).map(Some),
            };
            evs.and_then(|evs| Ok((evs, tenant(t)?))).map(|(evs, t)| {
                keys.mint(&cue_common::token::Claims {
                    sub: None,
                    events: evs,
                    role: Some("publisher".into()),
                    priority: None,
                    tenant: t,
                    exp: now.saturating_add(ttl),
                })
            })
        }
    };
    let t = match minted {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cue-origin: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{t}");
    ExitCode::SUCCESS
}

fn serve(cfg: OriginConfig) -> ExitCode {
    cue_service::run_service("cue-origin", 2, |stop| cue_origin::server::run(cfg, stop))
}
