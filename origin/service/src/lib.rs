//! `cue-service`: what Cue's tokio services (`cue-origin`, `cue-prefetch`) do the same way at
//! the top: a tokio runtime that runs a service until SIGTERM or SIGINT, and the exit codes (1
//! for a runtime failure; 2, for bad settings, is each binary's own). Logging and everything
//! else the binaries share without tokio is in `cue-common`.

use std::future::Future;
use std::process::ExitCode;

/// Resolves at the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Runs `service` (given the shutdown signal) on a multi-threaded tokio runtime of `threads`
/// workers; errors print as `NAME: error` and exit 1.
pub fn run_service<F, Fut>(name: &str, threads: usize, service: F) -> ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(service(Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(1)
        }
    }
}
