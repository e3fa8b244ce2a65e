//! `cue-prefetch`: per-device stage maps ahead of time, a prefetch schedule, priority shedding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cue_common::config::load_toml;
use cue_prefetch::config::PrefetchConfig;

/// Cue prefetch: serves each device its stage map for an event ahead of time.
///
/// Settings come from `--config FILE` (TOML, keys as in docs/prefetch.md), then flags override
/// them. With neither, it runs on loopback with embedded defaults (catalog in ./catalog).
#[derive(Parser, Debug)]
#[command(name = "cue-prefetch", version = cue_build_info::LONG_VERSION)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, for a log shipper); also CUE_LOG_FORMAT.
    #[arg(long, env = "CUE_LOG_FORMAT", default_value = "text", hide_env = true)]
    log_format: cue_common::logging::LogFormat,
    /// TOML config file; flags override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the settings (file and flags) and every file they name, print each problem, and
    /// exit 0 (fine) or 2 (problems) without starting or writing anything.
    #[arg(long)]
    check_config: bool,
    /// HTTP listen address (API, /metrics, /healthz) [default: 127.0.0.1:7100].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The origin's HTTP API, polled for the live signal; 'none' turns it off ('' too)
    /// [default: http://127.0.0.1:7000].
    #[arg(long)]
    origin_http: Option<String>,
    /// How often each event's current cue is polled at the origin, ms [default: 500].
    #[arg(long)]
    live_poll_ms: Option<u64>,
    /// Catalog directory: one EVENT.json per event [default: ./catalog].
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Check the catalog for changes every this many ms; 0 = never [default: 2000].
    #[arg(long)]
    catalog_reload_ms: Option<u64>,
    /// Upstream recommendation service returning the stages object, e.g.
    /// 'http://127.0.0.1:9000/recs?event={event}&device={device}' [default: none: the catalog's
    /// stages are served].
    #[arg(long)]
    upstream: Option<String>,
    /// Whole-call timeout of an upstream request, ms [default: 2000].
    #[arg(long)]
    upstream_timeout_ms: Option<u64>,
    /// Most upstream requests in flight at once [default: 64].
    #[arg(long)]
    upstream_concurrency: Option<usize>,
    /// Largest upstream answer, bytes [default: 1048576].
    #[arg(long)]
    upstream_max_bytes: Option<usize>,
    /// TTL of upstream maps for events not in the catalog, s [default: 600].
    #[arg(long)]
    default_ttl_s: Option<u64>,
    /// Cache entries [default: 100000].
    #[arg(long)]
    cache_max_entries: Option<usize>,
    /// Cache bytes [default: 268435456].
    #[arg(long)]
    cache_max_bytes: Option<usize>,
    /// Server-side TTL jitter, fraction in [0, 1) [default: 0.1].
    #[arg(long)]
    cache_ttl_jitter: Option<f64>,
    /// Serve an expired map this long while it is refreshed or the upstream fails, s
    /// [default: 3600].
    #[arg(long)]
    stale_s: Option<u64>,
    /// Remember a failed upstream call this long, ms [default: 5000].
    #[arg(long)]
    negative_ttl_ms: Option<u64>,
    /// max-age jitter, fraction in [0, 1) [default: 0.2].
    #[arg(long)]
    max_age_jitter: Option<f64>,
    /// Retry-After base on 503, s (uniform in [base, 2*base]) [default: 5].
    #[arg(long)]
    retry_after_s: Option<u64>,
    /// In-flight requests that shed background,normal; 0 = off [default: 256,1024].
    #[arg(long, value_parser = pair::<u64>)]
    shed_in_flight: Option<[u64; 2]>,
    /// Queue time (runtime lateness) that sheds background,normal, ms [default: 25,100].
    #[arg(long, value_parser = pair::<u64>)]
    shed_queue_ms: Option<[u64; 2]>,
    /// Requests/s that sheds background,normal; 0 = off [default: 0,0].
    #[arg(long, value_parser = pair::<f64>)]
    shed_rps: Option<[f64; 2]>,
    /// Signals must stay low this long before shedding eases a step, ms [default: 2000].
    #[arg(long)]
    shed_cooldown_ms: Option<u64>,
    /// Most open connections [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Time a request head has to arrive, ms [default: 10000].
    #[arg(long)]
    header_timeout_ms: Option<u64>,
    /// Time an answer has to be read once its write stalls, ms [default: 10000].
    #[arg(long)]
    write_timeout_ms: Option<u64>,
    /// Runtime worker threads [default: number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the jitter RNGs [default: random].
    #[arg(long)]
    seed: Option<u64>,
    /// File with a shared HS256 token secret (CUE_AUTH_SECRET wins); must exist.
    #[arg(long)]
    auth_secret_file: Option<PathBuf>,
    /// Public token key set (JWKS) [default: ./cue-data/token-keys.pub.json when no secret is set].
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Turn token checks off: any device may prefetch. Local experiments only.
    #[arg(long)]
    no_auth: bool,
    /// Page origins whose scripts may read the API from a browser (CORS), comma-separated
    /// (https://app.example,https://tv.example); '*' any page; 'none' no browser page
    /// [default: *].
    #[arg(long, value_name = "LIST")]
    cors_origins: Option<String>,
}

fn pair<T: std::str::FromStr>(s: &str) -> Result<[T; 2], String> {
    let (a, b) = s
        .split_once(',')
        .ok_or("expected two values: FIRST,SECOND")?;
    let p = |x: &str| {
        x.trim()
            .parse::<T>()
            .map_err(|_| format!("{x:?} is not a number"))
    };
    Ok([p(a)?, p(b)?])
}

fn file_and_flags(a: &Cli) -> Result<PrefetchConfig, String> {
    let mut c: PrefetchConfig = load_toml(a.config.as_deref())?;
    macro_rules! over {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    over!(
        http,
        origin_http,
        live_poll_ms,
        catalog,
        catalog_reload_ms,
        upstream_timeout_ms
    );
    over!(
        upstream_concurrency,
        upstream_max_bytes,
        default_ttl_s,
        cache_max_entries,
        cache_max_bytes
    );
    over!(
        cache_ttl_jitter,
        stale_s,
        negative_ttl_ms,
        max_age_jitter,
        retry_after_s,
        shed_in_flight
    );
    over!(shed_queue_ms, shed_rps, shed_cooldown_ms, max_connections);
    over!(write_timeout_ms, header_timeout_ms);
    if a.upstream.is_some() {
        c.upstream = a.upstream.clone();
    }
    if c.origin_http == "none" {
        c.origin_http.clear();
    }
    if let Some(list) = &a.cors_origins {
        c.cors_origins = match list.trim() {
            "none" => Vec::new(),
            l => l.split(',').map(|o| o.trim().to_string()).collect(),
        };
    }
    if a.threads.is_some() {
        c.threads = a.threads;
    }
    if a.seed.is_some() {
        c.seed = a.seed;
    }
    if a.keys.is_some() {
        c.keys = a.keys.clone();
    }
    if a.auth_secret_file.is_some() {
        c.auth_secret_file = a.auth_secret_file.clone();
    }
    c.no_auth |= a.no_auth;
    Ok(c)
}

/// What a start reads before it binds anything, read only: the token keys and the catalog.
/// `--check-config` stops after it; a start runs it too, so that a bad file named by the
/// config exits 2 (a config problem) before anything starts.
fn preflight(cfg: &PrefetchConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = cue_common::config::verifier(cfg.auth()) {
        problems.push(e);
    }
    if let Err(e) = cue_prefetch::server::initial_catalog(cfg, &cfg.catalog_limits()) {
        problems.push(e);
    }
    problems
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cue_common::build::set_commit(cue_build_info::COMMIT);
    cue_common::logging::init_logging(cli.log_format, cli.check_config);
    let cfg = match cue_common::config::settle(
        "cue-prefetch",
        file_and_flags(&cli),
        PrefetchConfig::validate,
        preflight,
        cli.check_config,
        cli.config.as_deref(),
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let threads = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    cue_service::run_service("cue-prefetch", threads, |stop| {
        cue_prefetch::server::run(cfg, stop)
    })
}
