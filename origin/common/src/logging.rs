//! Logging the same way in every Cue binary: to stderr, filtered by `CUE_LOG`, as text (colours
//! only on a terminal) or as one JSON object per line (`--log-format json`, for a log shipper).

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("'{s}' is not text or json")),
        }
    }
}

/// Logs to stderr, filtered by `CUE_LOG` (default `info`; `warn` for a `--check-config` run,
/// `check_only`, whose output is its verdict, not what loading the files said), in `format`.
pub fn init_logging(format: LogFormat, check_only: bool) {
    let default = if check_only { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => b.json().with_ansi(false).init(),
    }
}
