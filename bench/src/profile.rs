//! `cue-bench fanout --perf DIR`: where the edge core's time per delivery goes, measured.
//!
//! Around each phase's cue series (each send path's, and the write() floor's) the bench runs
//! `perf record` on the edge core alone (software clock, call graphs), stops it when the
//! series ends, and sorts every sample of the measured processes (the edges, or the floor
//! processes) into one place by its call chain:
//!
//! - **TCP/IP send**: under `tcp_sendmsg` (segment building, IP output, the loopback
//!   transmit, and any softirq the send itself runs);
//! - **send entry**: in a send system call (`sendto`, `write`) or `io_uring_enter`, not in TCP
//!   (system call entry and exit, fd lookup, io_uring submission and completion);
//! - **interrupts**: in interrupt or softirq context that came in between (timers, IPIs);
//! - **user space**: the process's own code (Cue's fanout bookkeeping, the floor's loop);
//! - **other kernel**: the rest (epoll, the executor's own rings, scheduling).
//!
//! Each count over the sample rate is CPU time; divided by the phase's deliveries it is
//! microseconds per delivery. The samples cover everything those processes did on the edge
//! core during the series, so the total is a little above the CPU-counter figure, which times
//! the fanout slices alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

/// Sampling rate, Hz.
const FREQ: u64 = 4999;

/// Where a sample's time went.
const PLACES: [&str; 5] = [
    "tcp_ip_send",
    "send_entry",
    "interrupts",
    "user_space",
    "other_kernel",
];

/// A `perf record` of one core, running.
pub struct Recording {
    child: Child,
    data: PathBuf,
}

impl Recording {
    /// Starts recording core `cpu` into `DIR/LABEL.perf.data`.
    pub fn start(dir: &Path, label: &str, cpu: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join(format!("{label}.perf.data"));
        let child = crate::stack::child_command("perf")
            .args(["record", "-q", "-g", "-e", "cpu-clock", "-F"])
            .arg(FREQ.to_string())
            .arg("-C")
            .arg(cpu.to_string())
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("--perf: starting perf record (Debian package linux-perf)")?;
        // perf needs a moment to open its buffers before the series starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, data })
    }

    /// Stops the recording (SIGINT, as perf expects).
    pub fn stop(mut self) -> anyhow::Result<Recorded> {
        // SAFETY: kill takes no pointers; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = self.child.wait()?;
        // perf writes its file out on SIGINT and then ends by that signal (or with 130).
        use std::os::unix::process::ExitStatusExt;
        if !st.success() && st.code() != Some(130) && st.signal() != Some(libc::SIGINT) {
            bail!("perf record exited with {st}");
        }
        Ok(Recorded { data: self.data })
    }
}

/// A finished recording.
pub struct Recorded {
    data: PathBuf,
}

impl Recorded {
    /// Sorts the samples of `pids`; `deliveries` is what those processes delivered meanwhile.
    pub fn breakdown(&self, pids: &[u32], deliveries: f64) -> anyhow::Result<serde_json::Value> {
        breakdown(&self.data, pids, deliveries)
    }
}

/// Sorts the samples of `pids` in `data` by place; per-delivery microseconds of each.
fn breakdown(data: &Path, pids: &[u32], deliveries: f64) -> anyhow::Result<serde_json::Value> {
    if deliveries <= 0.0 {
        bail!("--perf: no deliveries in the recorded phase");
    }
    let pid_list = pids
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("perf")
        .args(["script", "-F", "pid,ip,sym,dso", "--pid", &pid_list, "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("--perf: running perf script")?;
    if !out.status.success() {
        bail!("perf script failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let counts = sort_samples(&text);
    let total: u64 = counts.values().sum();
    if total == 0 {
        bail!(
            "--perf: no samples of pids {pid_list} in {}",
            data.display()
        );
    }
    let us = |n: u64| n as f64 / FREQ as f64 / deliveries * 1e6;
    let mut places = serde_json::Map::new();
    for p in PLACES {
        let n = counts.get(p).copied().unwrap_or(0);
        places.insert(
            p.to_string(),
            json!({"us_per_delivery": us(n), "share": n as f64 / total as f64}),
        );
    }
    Ok(json!({
        "samples": total,
        "deliveries": deliveries,
        "us_per_delivery": us(total),
        "places": places,
        "data": data.display().to_string(),
        "basis": format!("perf record -e cpu-clock -F {FREQ} -g on the edge core during the cue series; each sample of the measured processes sorted by its call chain"),
    }))
}

/// Counts samples of `perf script` output (a header line, then one frame per line, leaf first,
/// then a blank line) by place.
fn sort_samples(text: &str) -> HashMap<&'static str, u64> {
    let mut counts = HashMap::new();
    let mut frames: Vec<&str> = Vec::new();
    let mut in_sample = false;
    let flush = |frames: &mut Vec<&str>, counts: &mut HashMap<&'static str, u64>| {
        if !frames.is_empty() {
            *counts.entry(place(frames)).or_insert(0) += 1;
            frames.clear();
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut frames, &mut counts);
            in_sample = false;
        } else if line.starts_with(|c: char| c.is_whitespace()) && in_sample {
            frames.push(line.trim());
        } else {
            flush(&mut frames, &mut counts);
            in_sample = true;
        }
    }
    flush(&mut frames, &mut counts);
    counts
}

/// The place of one sample from its frames (`ADDR SYMBOL+OFF (DSO)`, leaf first).
fn place(frames: &[&str]) -> &'static str {
    // The first frame (from the leaf) whose symbol starts with one of `names`.
    let first = |names: &[&str]| {
        frames.iter().position(|f| {
            let sym = f.split_whitespace().nth(1).unwrap_or("");
            names.iter().any(|n| sym.starts_with(n))
        })
    };
    let leaf_kernel = frames[0].contains("[kernel.kallsyms]") || frames[0].contains("[unknown]");
    if !leaf_kernel {
        return "user_space";
    }
    if first(&["tcp_sendmsg"]).is_some() {
        return "tcp_ip_send";
    }
    // Interrupt work that came in between (it is above any send entry in the chain).
    let irq = first(&[
        "handle_softirqs",
        "asm_sysvec",
        "sysvec_",
        "asm_common_interrupt",
    ]);
    let entry = first(&[
        "__x64_sys_sendto",
        "__sys_sendto",
        "ksys_write",
        "__x64_sys_write",
        "__do_sys_io_uring_enter",
        "__x64_sys_io_uring_enter",
    ]);
    match (irq, entry) {
        (Some(i), Some(e)) if i < e => "interrupts",
        (Some(_), None) => "interrupts",
        (_, Some(_)) => "send_entry",
        _ => "other_kernel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
   101 
\tffffffff81000001 tcp_write_xmit+0x10 ([kernel.kallsyms])
\tffffffff81000002 tcp_sendmsg+0x20 ([kernel.kallsyms])
\tffffffff81000003 __x64_sys_sendto+0x5 ([kernel.kallsyms])
\t7f00000001 __send+0x4 (/usr/lib/libc.so.6)

   101 
\tffffffff81000004 io_submit_sqes+0x10 ([kernel.kallsyms])
\tffffffff81000005 __do_sys_io_uring_enter+0x20 ([kernel.kallsyms])

   101 
\tffffffff81000006 run_timer_softirq+0x1 ([kernel.kallsyms])
\tffffffff81000007 handle_softirqs+0x1 ([kernel.kallsyms])
\tffffffff81000008 __do_sys_io_uring_enter+0x20 ([kernel.kallsyms])

   101 
\t55550001 cue_edge::core::deliver::fanout+0x1 (/usr/bin/cue-edge)

   101 
\tffffffff81000009 do_epoll_wait+0x1 ([kernel.kallsyms])

";

    #[test]
    fn samples_are_sorted_by_their_call_chain() {
        let c = sort_samples(SCRIPT);
        assert_eq!(c.get("tcp_ip_send"), Some(&1));
        assert_eq!(c.get("send_entry"), Some(&1));
        assert_eq!(c.get("interrupts"), Some(&1), "softirq on top of a submit");
        assert_eq!(c.get("user_space"), Some(&1));
        assert_eq!(c.get("other_kernel"), Some(&1));
        assert_eq!(c.values().sum::<u64>(), 5);
    }
}
