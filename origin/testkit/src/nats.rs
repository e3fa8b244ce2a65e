//! Real `nats-server` processes for tests: a JetStream cluster of N nodes on free loopback ports,
//! each node killable, freezable (SIGSTOP, as a node cut off by a partition looks to the others)
//! and restartable on its own store directory.
//!
//! `nats-server` must be on PATH (Debian's package of that name; `.ci/run` installs it). A test
//! that needs it and cannot find it fails with that message: it never passes without running.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_addr, Proc};

/// The `nats-server` binary on PATH; panics with how to install it when there is none.
pub fn nats_server_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not on PATH: `apt-get install nats-server` (.ci/run does)")
}

/// One node of a [`NatsCluster`].
#[derive(Debug)]
pub struct NatsNode {
    /// Server name.
    pub name: String,
    /// Client port.
    pub client: SocketAddr,
    /// Cluster (route) port.
    pub route: SocketAddr,
    /// HTTP monitoring port (`/healthz`, `/jsz`).
    pub monitor: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

/// Clusters one test process runs at once: the tests of a file run on parallel threads, and
/// more 3-node clusters than this on a 2-core box stretch Raft elections past every test's
/// deadlines. A test waits for a slot when it configures its cluster.
pub const MAX_CLUSTERS_AT_ONCE: usize = 3;

fn slots() -> &'static (std::sync::Mutex<usize>, std::sync::Condvar) {
    static SLOTS: std::sync::OnceLock<(std::sync::Mutex<usize>, std::sync::Condvar)> =
        std::sync::OnceLock::new();
    SLOTS.get_or_init(|| (std::sync::Mutex::new(0), std::sync::Condvar::new()))
}

/// One of the [`MAX_CLUSTERS_AT_ONCE`] places, given back when the cluster is dropped.
#[derive(Debug)]
struct Slot;

impl Slot {
    fn take() -> Slot {
        let (m, cv) = slots();
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= MAX_CLUSTERS_AT_ONCE {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (m, cv) = slots();
        let mut n = m.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        cv.notify_one();
    }
}

/// A JetStream cluster (or, with one node, a single JetStream server) under a directory.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<NatsNode>,
    /// Its place among the clusters running at once (dropped after the nodes).
    _slot: Slot,
}

impl NatsCluster {
    /// Writes the configs of `n` nodes under `dir` (one store directory each) and starts them;
    /// returns once every node's `/healthz` says JetStream is ready and, with several nodes, once
    /// the cluster can place a stream on all of them (see [`NatsCluster::wait_placeable`]).
    pub fn start(dir: &Path, n: usize) -> NatsCluster {
        Self::start_with(dir, n, true)
    }

    /// As [`NatsCluster::start`], with JetStream on or off.
    pub fn start_with(dir: &Path, n: usize, jetstream: bool) -> NatsCluster {
        let mut c = Self::configure(dir, n, jetstream);
        for i in 0..n {
            c.start_node(i);
        }
        for i in 0..n {
            c.wait_ready(i, Duration::from_secs(30));
        }
        if jetstream && n > 1 {
            c.wait_placeable(Duration::from_secs(60));
        }
        c
    }

    /// Writes the nodes' configs and picks their ports, starting none of them.
    pub fn configure(dir: &Path, n: usize, jetstream: bool) -> NatsCluster {
        Self::configure_with(dir, n, jetstream, "")
    }

    /// As [`NatsCluster::configure`], with `extra` appended to every node's config (e.g. an
    /// `authorization { ... }` block).
    pub fn configure_with(dir: &Path, n: usize, jetstream: bool, extra: &str) -> NatsCluster {
        let slot = Slot::take();
        let ports: Vec<(SocketAddr, SocketAddr, SocketAddr)> = (0..n)
            .map(|_| (free_addr(), free_addr(), free_addr()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).expect("node store dir");
            let mut conf = format!("server_name: {name}\nlisten: {client}\nhttp: {monitor}\n",);
            if jetstream {
                conf.push_str(&format!(
                    "jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n",
                    store.display()
                ));
            }
            if n > 1 {
                // A cluster name of its own: a node of another test's cluster that dials a
                // port this cluster took over (ports are free again between a kill and a
                // restart) is refused instead of merging the two clusters.
                let cluster_name = format!("cue-test-{}", ports[0].1.port());
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats-route://{}", p.1))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{\n  name: {cluster_name}\n  listen: {route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            conf.push_str(extra);
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, conf).expect("node config");
            nodes.push(NatsNode {
                name,
                client: *client,
                route: *route,
                monitor: *monitor,
                log: dir.join(format!("n{i}.log")),
                config,
                proc: None,
            });
        }
        NatsCluster { nodes, _slot: slot }
    }

    /// `nats://HOST:PORT,...` of every node, for `--store`.
    pub fn store_url(&self) -> String {
        let list: Vec<String> = self.nodes.iter().map(|n| n.client.to_string()).collect();
        format!("nats://{}", list.join(","))
    }

    /// Starts node `i` (again) on its config and store directory.
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log).expect("node log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning nats-server");
        node.proc = Some(Proc(child));
    }

    /// SIGKILLs node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    /// SIGSTOPs node `i`: to the other nodes and its clients it is cut off, not gone.
    pub fn freeze(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONTs a frozen node.
    pub fn thaw(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, sig: libc::c_int) {
        let p = self.nodes[i].proc.as_ref().expect("node running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(p.0.id() as i32, sig) };
    }

    /// Waits until node `i`'s `/healthz` answers 200 (JetStream ready), up to `d`.
    pub fn wait_ready(&self, i: usize, d: Duration) {
        let node = &self.nodes[i];
        let t = Instant::now();
        loop {
            let ok = crate::client::request(node.monitor, "GET", "/healthz", &[], b"")
                .is_ok_and(|r| r.status == 200);
            if ok {
                return;
            }
            assert!(
                t.elapsed() < d,
                "nats-server {} not ready within {d:?}; its log:\n{}",
                node.name,
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the cluster places a stream on every node, up to `d`: creates and deletes a
    /// memory stream `CUE_READY_PROBE` with as many replicas as nodes, as an origin's
    /// `--nats-replicas` does. Every node's `/healthz` can say ready while the meta leader has not
    /// yet heard every peer's JetStream stats, and until then it answers "no suitable peers for
    /// placement".
    pub fn wait_placeable(&self, d: Duration) {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://{}", n.client))
            .collect();
        let replicas = self.nodes.len();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let t = Instant::now();
        let last = rt.block_on(async {
            let mut last = String::new();
            let mut probes = 0;
            while t.elapsed() < d {
                probes += 1;
                match probe_placement(&urls, replicas).await {
                    Ok(()) => {
                        if probes > 1 {
                            eprintln!(
                                "NATS cluster placeable after {:?} and {probes} probes; the last refusal: {last}",
                                t.elapsed()
                            );
                        }
                        return None;
                    }
                    Err(e) => last = e,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(last)
        });
        if let Some(e) = last {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    format!("--- {} ---\n{log}", n.name)
                })
                .collect();
            panic!(
                "the NATS cluster cannot place a stream of {replicas} replicas within {d:?}: {e}\n{}",
                logs.join("\n")
            );
        }
    }

    /// The name of the node that leads stream `stream`, from a running node's `/jsz`.
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        let q = "/jsz?streams=true&accounts=true";
        for n in self.nodes.iter().filter(|n| n.proc.is_some()) {
            let Ok(r) = crate::client::request(n.monitor, "GET", q, &[], b"") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) else {
                continue;
            };
            let leader = v["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == stream)
                .and_then(|s| s["cluster"]["leader"].as_str())
                .filter(|l| !l.is_empty());
            if let Some(l) = leader {
                return Some(l.to_string());
            }
        }
        None
    }

    /// Index of the node named `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("node name")
    }
}

/// Creates and deletes a memory stream of `replicas` replicas; the error says which step failed.
async fn probe_placement(urls: &[String], replicas: usize) -> Result<(), String> {
    use async_nats::jetstream::stream::{Config, StorageType};
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("NATS URL: {e}"))?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(addrs.as_slice())
        .await
        .map_err(|e| format!("connecting to {urls:?}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let name = "CUE_READY_PROBE";
    let created = tokio::time::timeout(
        Duration::from_secs(5),
        js.create_stream(Config {
            name: name.into(),
            subjects: vec!["cue-ready-probe".into()],
            num_replicas: replicas,
            storage: StorageType::Memory,
            ..Default::default()
        }),
    )
    .await;
    match created {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("creating the probe stream: {e}")),
        Err(_) => return Err("creating the probe stream: no answer in 5 s".into()),
    }
    match tokio::time::timeout(Duration::from_secs(5), js.delete_stream(name)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("deleting the probe stream: {e}")),
        Err(_) => Err("deleting the probe stream: no answer in 5 s".into()),
    }
}
