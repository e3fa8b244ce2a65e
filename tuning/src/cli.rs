//! Command line: flags over an optional TOML config over embedded defaults, then one of
//! check / plan / apply / revert. Exit codes: 0 ready or done, 1 not ready or something left
//! that cue-tune cannot change, 2 error (bad flag, bad config, unreadable root).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use cue_tune::config::Config;
use cue_tune::facts::{self, HostTree, RealHost};
use cue_tune::{apply, checks, plan, report, Requirements};

const ABOUT: &str = "Is this host ready for N cue-edge devices, and what must change.";
const AFTER_HELP: &str = "\
Command flags: check --json, plan --json, apply --yes (see `cue-tune help COMMAND`).
Exit codes: 0 ready / done, 1 not ready (or apply cannot fix everything), 2 error.
Per-connection figures default to Cue's measured/target values (docs/tuning.md says where each
comes from); replace them with cue-bench results via the --*-bytes-per-conn flags.";

#[derive(Debug, Parser)]
#[command(name = "cue-tune", version = cue_build_info::LONG_VERSION, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare this host with what N devices need (the default command).
    Check {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show what check wants changed; with --yes write it (live sysctls, a sysctl.d file, a
    /// systemd drop-in), saving previous values for revert.
    Apply {
        /// Make the changes (without it, only show them).
        #[arg(long)]
        yes: bool,
    },
    /// Restore the sysctls and files apply saved.
    Revert,
    /// Shard/IRQ core layout, memory budget, fanout time and wanted settings for N devices on
    /// C cores (pure arithmetic: plan another machine with --cores).
    Plan {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Every flag overrides the config key of the same name (dashes become underscores).
#[derive(Debug, Args)]
struct Opts {
    /// TOML config file (keys as the flags below, with underscores); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Devices the edge host must hold. Default 1000000.
    #[arg(long, global = true, value_name = "N")]
    connections: Option<u64>,
    /// Cores given to cue-edge. Default: this host's online CPUs.
    #[arg(long, global = true, value_name = "C")]
    cores: Option<u32>,
    /// Share of devices on QUIC, 0-100. Default 10.
    #[arg(long, global = true, value_name = "PERCENT")]
    quic_percent: Option<u32>,
    /// Edge user-space bytes per idle WebSocket device. Default 256 (target).
    #[arg(long, global = true, value_name = "BYTES")]
    user_bytes_per_conn: Option<u64>,
    /// Kernel bytes per idle TCP socket. Default 5120 (measured).
    #[arg(long, global = true, value_name = "BYTES")]
    kernel_bytes_per_conn: Option<u64>,
    /// Bytes per idle QUIC device. Default 16384 (target).
    #[arg(long, global = true, value_name = "BYTES")]
    quic_bytes_per_conn: Option<u64>,
    /// Kernel socket memory per device while a cue is in flight. Default 4096.
    #[arg(long, global = true, value_name = "BYTES")]
    inflight_bytes_per_conn: Option<u64>,
    /// Cue deliveries per second per shard core. Default 100000 (measured write() floor).
    #[arg(long, global = true, value_name = "RATE")]
    deliveries_per_core: Option<u64>,
    /// Goal for one cue to reach every device, ms. Default 1000.
    #[arg(long, global = true, value_name = "MS")]
    target_fanout_ms: Option<u64>,
    /// Seconds a mass reconnect spreads over. Default 30.
    #[arg(long, global = true, value_name = "SECS")]
    reconnect_window_s: Option<u64>,
    /// Extra fds for devices reconnecting before their old socket is reaped, percent. Default 10.
    #[arg(long, global = true, value_name = "PERCENT")]
    fd_headroom_percent: Option<u32>,
    /// io_uring registered buffer per shard, bytes. Default 262144.
    #[arg(long, global = true, value_name = "BYTES")]
    io_memory_per_shard: Option<u64>,
    /// glommio ring depth. Default 128.
    #[arg(long, global = true, value_name = "N")]
    ring_depth: Option<u32>,
    /// Ports cue-edge listens on, comma-separated. Default 8080,8443,9100.
    #[arg(long, global = true, value_name = "PORTS", value_delimiter = ',')]
    edge_ports: Option<Vec<u16>>,
    /// systemd unit the drop-in is for. Default cue-edge@ where the package's template unit is
    /// installed, else cue-edge.
    #[arg(long, global = true, value_name = "UNIT")]
    service: Option<String>,
    /// Root directory for host files read and written. Default /.
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
}

impl Opts {
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            )*};
        }
        set!(
            connections,
            quic_percent,
            user_bytes_per_conn,
            kernel_bytes_per_conn,
            quic_bytes_per_conn,
            inflight_bytes_per_conn,
            deliveries_per_core,
            target_fanout_ms,
            reconnect_window_s,
            fd_headroom_percent,
            io_memory_per_shard,
            ring_depth,
            edge_ports,
            service,
            root
        );
        if self.cores.is_some() {
            c.cores = self.cores;
        }
        let c = c.with_installed_unit();
        if let Err(problems) = c.validate() {
            bail!("invalid settings: {problems}");
        }
        Ok(c)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return parse_error(err),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("cue-tune: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// clap's errors span several lines; the contract wants one.
fn parse_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.trim_start_matches("error: "))
        .collect();
    eprintln!("cue-tune: {} (see --help)", parts.join("; "));
    ExitCode::from(2)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = cli.opts.config()?;
    let tree = HostTree::new(&config.root).context("root")?;
    let command = cli.command.unwrap_or(Command::Check { json: false });
    let host_cores = || {
        tree.parse("sys/devices/system/cpu/online", facts::parse::cpu_list)
            .value()
            .map(|cpus| cpus.len() as u32)
            .filter(|&n| n > 0)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| n.get() as u32)
            })
            .unwrap_or(1)
    };
    let cores = config.cores.unwrap_or_else(host_cores);
    let req = Requirements::new(&config, cores);

    match command {
        Command::Plan { json } => {
            if json {
                println!("{}", serde_json::to_string(&plan::plan(&req))?);
            } else {
                print!("{}", plan::render(&req));
            }
            Ok(0)
        }
        Command::Check { json } => {
            let facts = facts::gather(&tree, &RealHost, config.service_name());
            let lines = checks::run(&facts, &req);
            if json {
                println!("{}", serde_json::to_string(&report::json(&lines, &req))?);
            } else {
                print!("{}", report::text(&lines, &req));
            }
            Ok(if checks::ready(&lines) { 0 } else { 1 })
        }
        Command::Apply { yes } => {
            let facts = facts::gather(&tree, &RealHost, config.service_name());
            let lines = checks::run(&facts, &req);
            let set = apply::changes(&tree, &facts, &lines, &req, config.service_name());
            println!(
                "cue-tune apply: {} devices on {} cores, root {}",
                req.connections,
                req.layout.cores,
                config.root.display()
            );
            print!("{}", apply::render(&set, &config.root));
            if !yes {
                println!("dry run: nothing written. Run again with --yes to make these changes.");
                return Ok(if set.cannot.is_empty() { 0 } else { 1 });
            }
            if set.is_empty() {
                println!("nothing to write.");
                return Ok(if set.cannot.is_empty() { 0 } else { 1 });
            }
            let applied = apply::write(&config.root, &set)?;
            println!("saved previous values to {}", applied.state.display());
            for path in &applied.written {
                println!("wrote {}", path.display());
            }
            let mut failed = false;
            for (key, result) in &applied.live {
                match result {
                    Ok(()) => println!("set {key} live"),
                    Err(e) => {
                        failed = true;
                        println!("could not set {key} live ({e}); the sysctl.d file applies it at next boot");
                    }
                }
            }
            Ok(if set.cannot.is_empty() && !failed {
                0
            } else {
                1
            })
        }
        Command::Revert => match apply::revert(&config.root)? {
            None => {
                println!(
                    "nothing to revert: no saved state at {}",
                    config.root.join(apply::STATE_FILE).display()
                );
                Ok(0)
            }
            Some(done) => {
                let mut failed = false;
                for (key, value, result) in &done.sysctls {
                    match result {
                        Ok(()) => println!("restored {key} = {value}"),
                        Err(e) => {
                            failed = true;
                            println!("could not restore {key} = {value} live: {e}");
                        }
                    }
                }
                for path in &done.restored {
                    println!("restored {}", path.display());
                }
                for path in &done.removed {
                    println!("removed {}", path.display());
                }
                println!("reverted; saved state removed.");
                Ok(if failed { 1 } else { 0 })
            }
        },
    }
}
