//! `cue-bench`: synthetic device fleet and scenarios. The last line of every run is one JSON
//! object with the figures of the run.

mod alternate;
mod compare;
mod corebusy;
mod fanout;
mod floor;
mod gameday;
mod herd;
mod profile;
mod quic_worker;
mod relay_bench;
mod stack;
mod store;
mod storm;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Cue bench: starts the stack on loopback, drives a synthetic device fleet, prints figures.
///
/// Every scenario also takes `--config FILE`: TOML whose keys are the scenario's long flag
/// names (`devices = 100000`, `out = "bench-out/big"`, `no-floor = true`); flags given on the
/// command line win over the file.
#[derive(Parser, Debug)]
#[command(name = "cue-bench", version = cue_build_info::LONG_VERSION, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// cue-edge processes (several share the port with SO_REUSEPORT) [default: devices/18000, at least 1].
    #[arg(long)]
    edges: Option<usize>,
    /// Shards per cue-edge process.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Core the edges (and the floor) are pinned to; the fleet gets the next core.
    #[arg(long, default_value_t = 0)]
    edge_cpu: usize,
    /// Devices per fleet worker process (<= 18000 under a 20000 fd limit).
    #[arg(long, default_value_t = 15_000)]
    per_worker: usize,
    /// Directory holding cue-origin and cue-edge [default: next to cue-bench].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Output/scratch directory (logs, origin data).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Progress on stderr.
    #[arg(long)]
    verbose: bool,
    /// Fleet transport: WebSocket, QUIC, or both (--devices of each, figures side by side).
    #[arg(long, value_enum, default_value_t = fanout::Transport::Ws)]
    transport: fanout::Transport,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fan cues out to a fleet; measures delivery, latency, rate per core vs the write() floor,
    /// and bytes per connection.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Cues to publish.
        #[arg(long, default_value_t = 10)]
        cues: usize,
        /// Gap between cues, ms [default: devices/40, within 200..5000].
        #[arg(long)]
        interval_ms: Option<u64>,
        /// Peer mode: drive any WebSocket server that pushes text frames (ws://IP:PORT/path).
        #[arg(long, requires = "publish_url")]
        target_url: Option<String>,
        /// Peer mode: URL the cue payload is POSTed to (http://IP:PORT/path).
        #[arg(long, requires = "target_url")]
        publish_url: Option<String>,
        /// Skip the write() floor measurement.
        #[arg(long)]
        no_floor: bool,
        /// Devices of a second event that is flooded with cues (one publish after another)
        /// while the fleet's cues go out; 0: no flood. Implies --no-floor (the floor has no
        /// flood).
        #[arg(long, default_value_t = 0)]
        flood: usize,
        /// With --flood: spread the flood's devices over this many events (`flood-0` ..),
        /// each device following one, published in turn (1: the one event `flood`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        flood_events: u16,
        /// With --flood: publish the fleet's cues as critical and the flood as background
        /// (without it both are normal).
        #[arg(long)]
        priorities: bool,
        /// The edges' send path(s): `uring`, `syscall`, or both (`syscall,uring`: one phase
        /// each, same fleet shape, same core, same run, figures side by side and their ratio)
        /// [default: the edge's own, uring].
        #[arg(long, value_enum, value_delimiter = ',')]
        send_path: Vec<fanout::SendPath>,
        /// With two send paths: one phase instead of two, the paths taking turns cue by cue
        /// (A, B, B, A, ...) on the same edges and fleet, switched on every edge before each
        /// cue (`POST /admin/send-path`); figures per path and the ratio of each pair of
        /// neighbouring cues. Needs an even --cues, at most 64.
        #[arg(long)]
        alternate: bool,
        /// Steer the loopback device's receive work to the fleet's core while the run lasts
        /// (/sys/class/net/lo/queues/rx-0/rps_cpus, restored after; needs root), so the edge
        /// core's CPU per delivery is the send side alone, as with a real NIC.
        #[arg(long)]
        rx_steer: bool,
        /// Raise the host's TCP memory (net.ipv4.tcp_mem) and open-file (fs.file-max) bounds
        /// to what the fleet needs while the run lasts, restored after (needs root). Both ends
        /// of every device connection live on this host, so it needs twice an edge host's.
        #[arg(long)]
        tune_host: bool,
        /// Record the edge core with `perf` during each cue series (each send path's and the
        /// floor's) into DIR, and report where each microsecond of a delivery goes: TCP/IP
        /// send, system call or io_uring entry, interrupts, user space, other kernel.
        #[arg(long, value_name = "DIR")]
        perf: Option<PathBuf>,
    },
    /// Connect an idle fleet; measures connect rate and memory per connection.
    Density {
        #[command(flatten)]
        common: Common,
    },
    /// A live event end to end: the whole stack, a device fleet with prefetch, cues at set
    /// times, faults (devices dropped, an edge killed and restarted, a cue while it is down),
    /// a check of every device, and a report (DIR/index.html, DIR/summary.json).
    Gameday {
        /// Devices in the fleet.
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Report and logs directory.
        #[arg(long, default_value = "bench-out/gameday")]
        out: PathBuf,
        /// Directory holding cue-origin, cue-edge, cue-prefetch [default: next to cue-bench].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Core the edges are pinned to; the fleet, origin and prefetch get the next one.
        #[arg(long, default_value_t = 0)]
        edge_cpu: usize,
        /// Seed of the fleet's jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// No progress bar or progress lines.
        #[arg(long)]
        quiet: bool,
        /// Share of the devices on QUIC (cue/1) instead of WebSocket, 0..=1 (a mixed fleet).
        #[arg(long, default_value_t = 0.0)]
        quic_share: f64,
        /// The origins' store: `embedded` (one origin) or `nats` (a 3-node JetStream cluster
        /// from the nats-server on PATH, two origins, and two more faults: the stream leader's
        /// node and the publishing origin killed during the event).
        #[arg(long, value_enum, default_value_t = gameday::GamedayStore::Embedded)]
        store: gameday::GamedayStore,
        /// 2: two tenants (tenant-a, tenant-b) with the same event name on one fleet, half
        /// the devices each, tenant-b flooding publishes on another event meanwhile; the
        /// report's figures are tenant-a's, with both tenants side by side under `tenants`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        tenants: u8,
    },
    /// A fleet prefetching stage maps through cue-prefetch, (a) fixed TTLs and no schedule, (b)
    /// jittered TTLs and the schedule: requests/s over time, peak/mean, upstream calls per key
    /// per TTL, cached responses/s per core.
    PrefetchHerd(herd::HerdArgs),
    /// Cue and nginx+nchan measured by the same fleet in one run (install the peer first:
    /// bench/peers/nchan/install.sh). Prints a table on stderr, JSON last.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Cues to publish to each.
        #[arg(long, default_value_t = 10)]
        cues: usize,
    },
    /// The origin's stores side by side in one run: embedded log, JetStream R1, JetStream R3
    /// (nats-server from PATH): publish -> 201 p50/p99, publishes/s, publish -> last device
    /// through each, and the failover of an origin killed mid-event (R3, two origins).
    Store {
        /// WebSocket devices of the fanout phase.
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Cues of the fanout phase.
        #[arg(long, default_value_t = 10)]
        cues: usize,
        /// Sequential publishes of the latency phase.
        #[arg(long, default_value_t = 2_000)]
        publishes: usize,
        /// Concurrent publishers of the throughput phase (one event each).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of the throughput phase.
        #[arg(long, default_value_t = 5)]
        throughput_s: u64,
        /// Output directory.
        #[arg(long, default_value = "bench-out/store")]
        out: PathBuf,
        /// Directory holding cue-origin and cue-edge [default: next to cue-bench].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Core the edges are pinned to.
        #[arg(long, default_value_t = 0)]
        edge_cpu: usize,
        /// Progress on stderr.
        #[arg(long)]
        verbose: bool,
    },
    /// The origin's relay, plaintext then mutual TLS, in one run: cues delivered to --links
    /// relay links per CPU-second of the origin, and per second.
    Relay {
        /// Relay links (edges), held by this process.
        #[arg(long, default_value_t = 64)]
        links: usize,
        /// Publishers, each on its own event.
        #[arg(long, default_value_t = 8)]
        publishers: usize,
        /// Seconds of publishing per phase.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Output directory.
        #[arg(long, default_value = "bench-out/relay")]
        out: PathBuf,
        /// Directory holding cue-origin [default: next to cue-bench].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// A reconnect storm with a token per device, HS256 against EdDSA in one run: how long
    /// until every device is connected, first and again after all drop at once.
    Storm {
        /// Devices, each with its own token.
        #[arg(long, default_value_t = 20_000)]
        devices: usize,
        /// Output directory.
        #[arg(long, default_value = "bench-out/storm")]
        out: PathBuf,
        /// Directory holding cue-edge [default: next to cue-bench].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Core the edges are pinned to; the fleet gets the next one.
        #[arg(long, default_value_t = 0)]
        edge_cpu: usize,
        /// Reconnect storms per phase; the median is the figure.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Internal: a game-day fleet worker process.
    #[command(hide = true)]
    GamedayWorker { spec: String },
    /// Internal: a game-day QUIC fleet worker process.
    #[command(hide = true)]
    GamedayQuicWorker { spec: String },
    /// Internal: a fleet worker process.
    #[command(hide = true)]
    Worker { spec: String },
    /// Internal: a QUIC fleet worker process.
    #[command(hide = true)]
    QuicWorker { spec: String },
    /// Internal: a write() floor process.
    #[command(hide = true)]
    FloorWorker { spec: String },
}

fn opts(c: &Common, cues: usize) -> fanout::RunOpts {
    fanout::RunOpts {
        devices: c.devices,
        cues,
        edges: c.edges,
        shards: c.shards,
        interval_ms: None,
        edge_cpu: c.edge_cpu,
        per_worker: c.per_worker,
        bin_dir: c.bin_dir.clone(),
        out: c.out.clone(),
        target_url: None,
        publish_url: None,
        no_floor: false,
        verbose: c.verbose,
        peer_pid: None,
        transport: c.transport,
        store: None,
        flood: 0,
        flood_events: 1,
        priorities: false,
        send_path: None,
        alternate: None,
        rx_steer: false,
        tune_host: false,
        perf: None,
    }
}

fn validate(c: &Common) -> Result<(), String> {
    let mut e = Vec::new();
    if c.devices == 0 {
        e.push("--devices: must be > 0".to_string());
    }
    if !(1..=18_000).contains(&c.per_worker) {
        e.push("--per-worker: must be 1..=18000 (fd limit)".into());
    }
    if c.shards == 0 {
        e.push("--shards: must be > 0".into());
    }
    if c.edges == Some(0) {
        e.push("--edges: must be > 0".into());
    }
    if e.is_empty() {
        Ok(())
    } else {
        Err(e.join("; "))
    }
}

/// The command line with `--config FILE` expanded: the file's keys become flags placed right
/// after the subcommand, so flags the user typed (later on the line) override them.
fn args_with_config(mut args: Vec<String>) -> Result<Vec<String>, String> {
    let Some(i) = args
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(args);
    };
    let path = if let Some(p) = args[i].strip_prefix("--config=") {
        let p = p.to_string();
        args.remove(i);
        p
    } else {
        if i + 1 >= args.len() {
            return Err("--config: needs a file".into());
        }
        let p = args.remove(i + 1);
        args.remove(i);
        p
    };
    if args.len() < 2 || args[1].starts_with('-') {
        return Err("--config: goes after a scenario, e.g. cue-bench fanout --config FILE".into());
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("config {path}: cannot read: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!(
            "config {path}: {}",
            e.message().lines().next().unwrap_or("invalid TOML")
        )
    })?;
    let mut flags = Vec::new();
    for (k, v) in table {
        let flag = format!("--{}", k.replace('_', "-"));
        match v {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => flags.extend([flag, s]),
            toml::Value::Integer(n) => flags.extend([flag, n.to_string()]),
            toml::Value::Float(x) => flags.extend([flag, x.to_string()]),
            other => {
                return Err(format!(
                    "config {path}: {k}: {} is not a flag value",
                    other.type_str()
                ))
            }
        }
    }
    args.splice(2..2, flags);
    Ok(args)
}

fn main() -> ExitCode {
    let args = match args_with_config(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cue-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.cmd {
        Cmd::Worker { spec } => {
            return match serde_json::from_str(&spec)
                .map_err(anyhow::Error::from)
                .and_then(worker::run)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cue-bench worker: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::GamedayWorker { spec } => {
            return match serde_json::from_str(&spec)
                .map_err(anyhow::Error::from)
                .and_then(gameday::fleet::run)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cue-bench gameday worker: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::GamedayQuicWorker { spec } => {
            return match serde_json::from_str(&spec)
                .map_err(anyhow::Error::from)
                .and_then(gameday::quic_fleet::run)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cue-bench gameday quic worker: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Cmd::Gameday {
            devices,
            out,
            bin_dir,
            edge_cpu,
            seed,
            quiet,
            quic_share,
            store,
            tenants,
        } => {
            if !(0.0..=1.0).contains(&quic_share) {
                eprintln!("cue-bench: --quic-share: must be 0..=1");
                return ExitCode::from(2);
            }
            if !(100..=200_000).contains(&devices) {
                eprintln!("cue-bench: --devices: must be 100..=200000");
                return ExitCode::from(2);
            }
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let o = gameday::GamedayOpts {
                devices,
                out,
                bin_dir,
                quiet,
                edge_cpu,
                seed,
                command,
                store,
                quic_share,
                tenants: usize::from(tenants),
            };
            gameday::run(&o)
        }
        Cmd::QuicWorker { spec } => {
            return match serde_json::from_str(&spec)
                .map_err(anyhow::Error::from)
                .and_then(quic_worker::run)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cue-bench quic-worker: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::FloorWorker { spec } => {
            return match serde_json::from_str(&spec)
                .map_err(anyhow::Error::from)
                .and_then(|s| floor::run(&s))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cue-bench floor: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Fanout {
            common,
            cues,
            interval_ms,
            target_url,
            publish_url,
            no_floor,
            flood,
            flood_events,
            priorities,
            send_path,
            alternate,
            rx_steer,
            tune_host,
            perf,
        } => {
            if let Err(e) = validate(&common) {
                eprintln!("cue-bench: {e}");
                return ExitCode::from(2);
            }
            if cues == 0 {
                eprintln!("cue-bench: --cues: must be > 0");
                return ExitCode::from(2);
            }
            let mut o = opts(&common, cues);
            o.interval_ms = interval_ms;
            o.target_url = target_url;
            o.publish_url = publish_url;
            o.no_floor = no_floor || flood > 0;
            o.flood = flood;
            o.flood_events = usize::from(flood_events);
            o.priorities = priorities;
            o.rx_steer = rx_steer;
            o.tune_host = tune_host;
            o.perf = perf;
            if alternate {
                match (send_path.as_slice(), cues) {
                    ([a, b], c) if a != b && c % 2 == 0 && c <= fanout::FANOUT_RECORDS => {
                        o.alternate = Some([*a, *b]);
                    }
                    _ => {
                        eprintln!("cue-bench: --alternate: needs --send-path with two different paths and an even --cues of at most {}", fanout::FANOUT_RECORDS);
                        return ExitCode::from(2);
                    }
                }
                if o.target_url.is_some() || o.transport != fanout::Transport::Ws || flood > 0 {
                    eprintln!("cue-bench: --alternate: Cue's WebSocket fleet only (no peer, QUIC or flood)");
                    return ExitCode::from(2);
                }
            }
            // At-least-once is the contract: a device that does not end on the newest cue
            // fails the run, after its figures are printed for the record.
            match fanout::run_paths(&o, &send_path, "fanout") {
                Ok(v) => match fanout::missed_total(&v) {
                    Some(0) => Ok(v),
                    missed => {
                        println!("{v}");
                        match missed {
                            Some(n) => eprintln!(
                                "cue-bench: {n} device(s) did not end on the newest cue (\"missed\"): the run failed"
                            ),
                            None => {
                                eprintln!("cue-bench: the run's figures have no \"missed\" count")
                            }
                        }
                        return ExitCode::from(1);
                    }
                },
                e => e,
            }
        }
        Cmd::Store {
            devices,
            cues,
            publishes,
            concurrency,
            throughput_s,
            out,
            bin_dir,
            edge_cpu,
            verbose,
        } => {
            if devices == 0 || cues < 3 || publishes == 0 || concurrency == 0 || throughput_s == 0 {
                eprintln!("cue-bench: --devices, --publishes, --concurrency, --throughput-s must be > 0 and --cues >= 3");
                return ExitCode::from(2);
            }
            store::run(&store::StoreBenchOpts {
                devices,
                cues,
                publishes,
                concurrency,
                throughput: std::time::Duration::from_secs(throughput_s),
                out,
                bin_dir,
                edge_cpu,
                verbose,
            })
        }
        Cmd::Relay {
            links,
            publishers,
            seconds,
            out,
            bin_dir,
        } => {
            if !(1..=1000).contains(&links) || publishers == 0 || seconds == 0 {
                eprintln!("cue-bench: --links must be 1..=1000, --publishers and --seconds > 0");
                return ExitCode::from(2);
            }
            relay_bench::run(&relay_bench::RelayBenchOpts {
                links,
                publishers,
                seconds,
                out,
                bin_dir,
            })
        }
        Cmd::Storm {
            devices,
            out,
            bin_dir,
            edge_cpu,
            rounds,
        } => {
            if !(1..=200_000).contains(&devices) {
                eprintln!("cue-bench: --devices must be 1..=200000");
                return ExitCode::from(2);
            }
            if !(1..=20).contains(&rounds) {
                eprintln!("cue-bench: --rounds must be 1..=20");
                return ExitCode::from(2);
            }
            storm::run(&storm::StormOpts {
                devices,
                out,
                bin_dir,
                edge_cpu,
                rounds,
            })
        }
        Cmd::PrefetchHerd(a) => {
            if let Err(e) = herd::validate(&a) {
                eprintln!("cue-bench: {e}");
                return ExitCode::from(2);
            }
            herd::run(&a)
        }
        Cmd::Compare { common, cues } => {
            if let Err(e) = validate(&common) {
                eprintln!("cue-bench: {e}");
                return ExitCode::from(2);
            }
            compare::run(&opts(&common, cues.max(1)))
        }
        Cmd::Density { common } => {
            if let Err(e) = validate(&common) {
                eprintln!("cue-bench: {e}");
                return ExitCode::from(2);
            }
            fanout::run(&opts(&common, 0), "density")
        }
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cue-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn config_keys_become_flags_that_typed_flags_override() {
        let dir = std::env::temp_dir().join(format!("cue-bench-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "devices = 500\nno_floor = true\nverbose = false\nout = \"x\"\n",
        )
        .unwrap();
        let args = v(&[
            "cue-bench",
            "fanout",
            "--config",
            f.to_str().unwrap(),
            "--devices",
            "7",
        ]);
        let got = args_with_config(args).unwrap();
        assert_eq!(got[..2], v(&["cue-bench", "fanout"])[..]);
        assert!(got.ends_with(&v(&["--devices", "7"])), "{got:?}");
        let cli = Cli::try_parse_from(got).unwrap();
        let Cmd::Fanout {
            common, no_floor, ..
        } = cli.cmd
        else {
            panic!("fanout")
        };
        assert_eq!(common.devices, 7, "the typed flag wins");
        assert_eq!(common.out, PathBuf::from("x"));
        assert!(no_floor && !common.verbose);
        std::fs::write(&f, "devices = [1]\n").unwrap();
        let e = args_with_config(v(&["cue-bench", "fanout", "--config", f.to_str().unwrap()]))
            .unwrap_err();
        assert!(e.contains("devices"), "{e}");
        assert!(args_with_config(v(&["cue-bench", "--config", "x"])).is_err());
    }
}
