//! Shared test helpers: fixture trees, a fake probe, and tree snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cue_tune::config::Config;
use cue_tune::facts::{self, HostFacts, HostProbe, HostTree, IoUringStatus, Reading, UdpOffload};
use cue_tune::{Requirements, Resource, Rlimit};

/// `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of fixture `name` in a fresh temporary directory (kept alive by the returned guard).
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every directory (`None`) and file (`Some(content)`) under `root`, by relative path.
pub fn snapshot(root: &Path) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<String>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            out.insert(rel, None);
            walk(root, &path, out);
        } else {
            out.insert(rel, Some(std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Probe answers chosen by the test.
pub struct FakeProbe {
    pub nofile: Reading<Rlimit>,
    pub memlock: Reading<Rlimit>,
    pub io_uring: Reading<IoUringStatus>,
    pub gso: Reading<bool>,
    pub gro: Reading<bool>,
}

impl FakeProbe {
    /// A process on a healthy host: generous limits, io_uring and offloads available.
    pub fn healthy() -> FakeProbe {
        FakeProbe {
            nofile: Reading::Value(Rlimit {
                soft: 1024,
                hard: 2_000_000,
            }),
            memlock: Reading::Value(Rlimit {
                soft: 8 << 20,
                hard: u64::MAX,
            }),
            io_uring: Reading::Value(IoUringStatus::Available {
                missing_ops: vec![],
            }),
            gso: Reading::Value(true),
            gro: Reading::Value(true),
        }
    }

    /// Like the development machine: nofile hard 20000, memlock 8 MiB.
    pub fn capped(nofile_hard: u64, memlock: u64) -> FakeProbe {
        FakeProbe {
            nofile: Reading::Value(Rlimit {
                soft: nofile_hard,
                hard: nofile_hard,
            }),
            memlock: Reading::Value(Rlimit {
                soft: memlock,
                hard: memlock,
            }),
            ..FakeProbe::healthy()
        }
    }
}

impl HostProbe for FakeProbe {
    fn rlimit(&self, resource: Resource) -> Reading<Rlimit> {
        match resource {
            Resource::NoFile => self.nofile.clone(),
            Resource::MemLock => self.memlock.clone(),
        }
    }

    fn io_uring(&self) -> Reading<IoUringStatus> {
        self.io_uring.clone()
    }

    fn udp_offload(&self) -> UdpOffload {
        UdpOffload {
            gso: self.gso.clone(),
            gro: self.gro.clone(),
        }
    }
}

/// Facts of the tree at `root` with `probe`.
pub fn facts_at(root: &Path, probe: &FakeProbe) -> (HostTree, HostFacts) {
    let tree = HostTree::new(root).unwrap();
    let facts = facts::gather(&tree, probe, "cue-edge");
    (tree, facts)
}

/// Requirements for `connections` devices on `cores` cores with default figures.
pub fn requirements(connections: u64, cores: u32) -> Requirements {
    Requirements::new(
        &Config {
            connections,
            ..Config::default()
        },
        cores,
    )
}
