//! Per-shard counters. Each shard is the only writer of its own [`ShardStats`] (relaxed
//! atomics, no contention); the admin thread reads them all to render `/metrics`.

use cue_common::cue::Priority;
use cue_common::metrics::{header, sample, Counter, Gauge, Histogram};

/// Why a device connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// The device sent a close frame (or closed after ours).
    Client = 0,
    /// The device closed the TCP connection without a close frame.
    PeerGone,
    /// No pong (or anything) after a ping.
    PingTimeout,
    /// No complete upgrade request in time.
    HandshakeTimeout,
    /// A WebSocket protocol violation (1002/1007/1009).
    ProtocolError,
    /// A socket error while sending.
    IoError,
    /// Closed by drain (1001 with a retry-after hint).
    Drain,
    /// Our close frame was not answered in time.
    CloseTimeout,
    /// Unsent output for the device exceeded its limit.
    SlowConsumer,
    /// The upgrade was refused (counted by status in `refused`).
    Refused,
}

/// Labels of [`CloseReason`], by discriminant.
pub const CLOSE_REASONS: [&str; 10] = [
    "client",
    "peer_gone",
    "ping_timeout",
    "handshake_timeout",
    "protocol_error",
    "io_error",
    "drain",
    "close_timeout",
    "slow_consumer",
    "refused",
];

/// HTTP statuses the edge refuses upgrades with, in the order of [`ShardStats::refused`].
pub const REFUSAL_STATUSES: [u16; 9] = [400, 401, 403, 404, 405, 426, 429, 431, 503];

/// Finished fanouts a shard keeps for `GET /fanouts`, newest last; the oldest is dropped
/// past this (~150 B each).
pub const RECENT_FANOUTS: usize = 64;

/// One finished fanout of a cue on a shard.
#[derive(Debug, Clone)]
pub struct FanoutRecord {
    /// What the core said of it (devices written to: `reached`; the others were blocked,
    /// gone, or already had it).
    pub fanout: crate::core::Finished,
    /// The kernel had accepted the fanout's last send, Unix us.
    pub done_us: u64,
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Set when the shard's executor ended (a stop, or a panic): the supervisor ends the
    /// process if it was not asked to stop.
    pub stopped: std::sync::atomic::AtomicBool,
    /// The drain (its number, `admin::begin_drain`) under which the shard holds no device any
    /// more; 0 for none.
    pub drained_gen: std::sync::atomic::AtomicU64,
    /// Set while the shard's listeners are open (cleared by a drain).
    pub listening: std::sync::atomic::AtomicBool,
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Event slots held (followed or kept for catch-up; at most `max_events`).
    pub event_slots: Gauge,
    /// Connections in handshake (accepted, not yet admitted).
    pub handshaking: Gauge,
    /// Accepts answered 503 at once because `max_handshakes` were in handshake.
    pub handshakes_shed: Counter,
    /// Devices the shard's fanouts in progress have yet to visit (set after every slice).
    pub fanout_backlog: Gauge,
    /// Fanouts ended before reaching every device because a newer cue of the event came.
    pub fanout_superseded: Counter,
    /// Accepts refused because their source address had `max_connections_per_source`.
    pub source_shed: Counter,
    /// QUIC connections closed because they opened no stream within the hello timeout.
    pub quic_hello_timeouts: Counter,
    /// Slots no device followed, reused for a device's new event (the table was full).
    pub event_slots_reused: Counter,
    /// Cues dropped because no device here followed their event and the table was full.
    pub cues_unfollowed: Counter,
    /// Catch-up requests to the relay link dropped (too many at once, or the link's queue full).
    pub catchups_dropped: Counter,
    /// TCP connections accepted.
    pub accepted: Counter,
    /// Accepts refused at once because the shard is at `max_connections` (no handshake read).
    pub accept_shed: Counter,
    /// Accept passes that stopped on `EMFILE`/`ENFILE`: the device stays queued at the listener
    /// until a descriptor frees up (raise `LimitNOFILE`).
    pub accept_out_of_fds: Counter,
    /// Upgrades completed.
    pub upgrades: Counter,
    /// Cues received from the relay link.
    pub cues_in: Counter,
    /// Cue frames written to devices (catch-up and live).
    pub deliveries: Counter,
    /// Admissions answered from the verified-token cache (no signature check).
    pub token_cache_hits: Counter,
    /// Admissions by a valid admission ticket (no signature check).
    pub ticket_hits: Counter,
    /// Admission tickets presented that did not hold (the token was checked for real).
    pub tickets_refused: Counter,
    /// Cues a blocked device never got because, when its socket drained, it was given a newer
    /// cue of the event instead (counted in cues, not in seq distance).
    pub conflated: Counter,
    /// Times a device's socket would not take a whole frame.
    pub write_blocked: Counter,
    /// Pings sent to idle devices.
    pub pings: Counter,
    /// Origin publish time to the shard's last write of that cue (shard-local fanout done), by
    /// class (`Priority as usize`).
    pub delivery_lag: [Histogram; 3],
    /// Wall time of one fanout slice (up to `fanout_slice` devices visited).
    pub fanout_time: Histogram,
    /// Wall time of one cue's fanout on the shard: from the shard taking the cue in to the
    /// kernel accepting its last send (every slice and the turns between them).
    pub cue_fanout_time: Histogram,
    /// The newest finished fanouts, at most [`RECENT_FANOUTS`] (`GET /fanouts`).
    pub recent_fanouts: std::sync::Mutex<std::collections::VecDeque<FanoutRecord>>,
    /// Thread CPU time spent in fanout (writing cues), nanoseconds: deliveries divided by this
    /// is the shard core's delivery rate, whatever else shares the core.
    pub fanout_cpu_ns: Counter,
    /// WebSocket cue frames written by fanout slices: the deliveries `fanout_cpu_ns` paid for
    /// (catch-up and the flush of a drained socket are counted in `deliveries` only).
    pub fanout_deliveries: Counter,
    /// io_uring submissions (`io_uring_enter` calls) of fanout batches.
    pub uring_submits: Counter,
    /// Sends those submissions carried.
    pub uring_sends: Counter,
    /// 1 while the shard sends fanouts on its io_uring, 0 on `send()` calls (from its next
    /// slice on, after a `POST /admin/send-path`).
    pub uring_active: Gauge,
    /// Set once the shard made its send ring (`send_path = "uring"` and the kernel allowed
    /// it): only such a shard can be switched to io_uring at run time.
    pub uring_ready: std::sync::atomic::AtomicBool,
    /// Set by `POST /admin/send-path?path=syscall`: a shard with a ring sends its next fanout
    /// slices with one `send()` per device, until `?path=uring` clears it. The shard reads it
    /// once per slice.
    pub uring_paused: std::sync::atomic::AtomicBool,
    /// Times glommio's timer did not wake the shard's poller and the ticker thread did, over
    /// 10 ms past the deadline ([`crate::shard::ShardTimer`]).
    pub timer_rescues: Counter,
    /// Turns of the shard's device poller (one `epoll_wait` pass each): a shard whose count
    /// stops while devices wait at its listener is not being run.
    pub poll_turns: Counter,
    /// Poller turns woken by device input (through the ticker's watch of the shard's sockets).
    pub input_wakes: Counter,
    /// Open QUIC sessions (also counted in `connections`).
    pub quic_sessions: Gauge,
    /// Cues written to QUIC devices (also counted in `deliveries`).
    pub quic_deliveries: Counter,
    /// Thread CPU time of the QUIC work, nanoseconds: writing cues into streams, packetising and
    /// sending them, and reading the devices' acknowledgements and other packets (handshakes
    /// excluded: see `quic_handshake_cpu_ns`).
    pub quic_cpu_ns: Counter,
    /// Thread CPU time spent in QUIC handshakes (new connections until established), ns.
    pub quic_handshake_cpu_ns: Counter,
    /// QUIC datagrams received by this shard's socket.
    pub quic_datagrams_in: Counter,
    /// QUIC datagrams sent.
    pub quic_datagrams_out: Counter,
    /// Send system calls for QUIC (sendmmsg batches; several datagrams each).
    pub quic_send_calls: Counter,
    /// Datagrams for a connection of another shard, forwarded to it.
    pub quic_forwarded: Counter,
    /// Datagrams dropped because the owner shard's queue was full.
    pub quic_forward_dropped: Counter,
    /// Handshakes answered with a stateless retry (address validation under load).
    pub quic_retries: Counter,
    /// Handshakes refused at once (too many in flight, or full).
    pub quic_refused: Counter,
    /// QUIC connections the driver holds (including handshaking and closing ones).
    pub quic_connections: Gauge,
    /// The shard's QUIC steering slot, -1 when its datagrams are not steered.
    pub quic_steer_slot: Gauge,
    /// TLS (wss) handshakes that failed.
    pub tls_failures: Counter,
    /// Closes by [`CloseReason`].
    pub closes: [Counter; 10],
    /// Refusals by status, see [`REFUSAL_STATUSES`].
    pub refused: [Counter; 9],
    /// Devices, events followed, deliveries and quota refusals per tenant.
    pub tenants: std::sync::Mutex<crate::core::tenants::Table>,
}

impl ShardStats {
    /// Records a fanout that finished at `done_us` (Unix us): its wall time, and its record in
    /// the recent ones. A cue no device here followed (its slot kept for catch-up) had no
    /// fanout to speak of and is not recorded.
    pub fn fanout_finished(&self, f: crate::core::Finished, done_us: u64) {
        if f.followers == 0 {
            return;
        }
        self.cue_fanout_time
            .observe_us(done_us.saturating_sub(f.taken_us));
        let mut recent = self.recent_fanouts.lock().expect("recent fanouts lock");
        if recent.len() == RECENT_FANOUTS {
            recent.pop_front();
        }
        recent.push_back(FanoutRecord { fanout: f, done_us });
    }

    /// Counts a close.
    pub fn close(&self, r: CloseReason) {
        self.closes[r as usize].inc();
    }
    /// A device of tenant `i` (a tenant table index: its events' slots say it, since a device
    /// follows only its tenant's events) is no longer admitted.
    pub fn tenant_device_left(&self, i: Option<u16>) {
        let Some(i) = i else { return };
        let mut t = self.tenants.lock().expect("tenants lock");
        if let Some(e) = t.entries.get_mut(i as usize) {
            e.devices = e.devices.saturating_sub(1);
        }
    }
    /// Counts a refusal with `status`.
    pub fn refuse(&self, status: u16) {
        if let Some(i) = REFUSAL_STATUSES.iter().position(|&s| s == status) {
            self.refused[i].inc();
        }
    }
}

/// A counter row: metric name, help text, how to read it from a shard.
type Row = (&'static str, &'static str, fn(&ShardStats) -> u64);

/// Renders every shard's stats in Prometheus text format, labelled `shard="N"`.
///
/// With `quic` false (QUIC off) no `cue_edge_quic_*` series is written: a transport that is off
/// has no series, so an alert on one of them cannot read a 0 that means nothing.
pub fn render(shards: &[std::sync::Arc<ShardStats>], quic: bool, out: &mut String) {
    let off = |name: &str| !quic && name.starts_with("cue_edge_quic_");
    header(
        out,
        "cue_edge_connections",
        "gauge",
        "Open device sessions.",
    );
    for (i, s) in shards.iter().enumerate() {
        sample(
            out,
            "cue_edge_connections",
            &format!("shard=\"{i}\""),
            s.connections.get(),
        );
    }
    for (name, help, f) in [
        (
            "cue_edge_quic_sessions",
            "Open QUIC device sessions (also in cue_edge_connections).",
            (|s| s.quic_sessions.get()) as fn(&ShardStats) -> i64,
        ),
        (
            "cue_edge_quic_connections",
            "QUIC connections held, including handshaking and closing ones.",
            |s| s.quic_connections.get(),
        ),
        (
            "cue_edge_quic_steer_slot",
            "The shard's QUIC steering slot (-1: datagrams not steered across processes).",
            |s| s.quic_steer_slot.get(),
        ),
        (
            "cue_edge_handshaking",
            "Connections in handshake (accepted, not yet admitted; at most max_handshakes).",
            |s| s.handshaking.get(),
        ),
        (
            "cue_edge_fanout_backlog_devices",
            "Devices the shard's fanouts in progress have yet to visit (past 4 slices, background cues wait).",
            |s| s.fanout_backlog.get(),
        ),
        (
            "cue_edge_uring_active",
            "1 while the shard writes fanouts with batched io_uring sends (send_path uring, not switched off by POST /admin/send-path), 0 with one send() call per device.",
            |s| s.uring_active.get(),
        ),
        (
            "cue_edge_event_slots",
            "Event slots the shard holds (followed by its devices or kept for catch-up; at most max_events).",
            |s| s.event_slots.get(),
        ),
    ] {
        if off(name) {
            continue;
        }
        header(out, name, "gauge", help);
        for (i, s) in shards.iter().enumerate() {
            sample(out, name, &format!("shard=\"{i}\""), f(s));
        }
    }
    for (name, help, f) in [
        (
            "cue_edge_quic_cpu_seconds_total",
            "Thread CPU time of QUIC work after handshakes (stream writes, packets out, acks in).",
            (|s| s.quic_cpu_ns.get()) as fn(&ShardStats) -> u64,
        ),
        (
            "cue_edge_quic_handshake_cpu_seconds_total",
            "Thread CPU time of QUIC handshakes.",
            |s| s.quic_handshake_cpu_ns.get(),
        ),
    ] {
        if off(name) {
            continue;
        }
        header(out, name, "counter", help);
        for (i, s) in shards.iter().enumerate() {
            sample(out, name, &format!("shard=\"{i}\""), f(s) as f64 / 1e9);
        }
    }
    let counters: [Row; 34] = [
        (
            "cue_edge_quic_hello_timeouts_total",
            "QUIC connections closed (1008) because they opened no stream within handshake_timeout_s.",
            |s| s.quic_hello_timeouts.get(),
        ),
        (
            "cue_edge_fanout_superseded_total",
            "Fanouts ended before every device was visited because a newer cue of the event arrived (the rest got only the newer one).",
            |s| s.fanout_superseded.get(),
        ),
        (
            "cue_edge_source_shed_total",
            "Accepts answered 503 at once: their source address (IPv4, IPv6 /64) held max_connections_per_source on the shard.",
            |s| s.source_shed.get(),
        ),
        (
            "cue_edge_handshakes_shed_total",
            "Accepts answered 503 at once: max_handshakes connections were in handshake.",
            |s| s.handshakes_shed.get(),
        ),
        (
            "cue_edge_event_slots_reused_total",
            "Slots no device followed, reused for a device's new event (table at max_events).",
            |s| s.event_slots_reused.get(),
        ),
        (
            "cue_edge_cues_unfollowed_total",
            "Cues a shard took no slot for: no device of it follows the event and the table is full (the relay link keeps them for catch-up).",
            |s| s.cues_unfollowed.get(),
        ),
        (
            "cue_edge_catchups_dropped_total",
            "Catch-up requests to the relay link dropped (those devices get their event's next cue).",
            |s| s.catchups_dropped.get(),
        ),
        (
            "cue_edge_quic_deliveries_total",
            "Cues written to QUIC devices (also in cue_edge_deliveries_total).",
            |s| s.quic_deliveries.get(),
        ),
        (
            "cue_edge_quic_datagrams_in_total",
            "QUIC datagrams received.",
            |s| s.quic_datagrams_in.get(),
        ),
        (
            "cue_edge_quic_datagrams_out_total",
            "QUIC datagrams sent.",
            |s| s.quic_datagrams_out.get(),
        ),
        (
            "cue_edge_quic_send_calls_total",
            "sendmmsg calls for QUIC (each carries many datagrams).",
            |s| s.quic_send_calls.get(),
        ),
        (
            "cue_edge_quic_forwarded_total",
            "Datagrams forwarded to the shard owning their connection.",
            |s| s.quic_forwarded.get(),
        ),
        (
            "cue_edge_quic_forward_dropped_total",
            "Datagrams dropped: the owner shard's queue was full.",
            |s| s.quic_forward_dropped.get(),
        ),
        (
            "cue_edge_quic_retries_total",
            "QUIC handshakes answered with a stateless retry.",
            |s| s.quic_retries.get(),
        ),
        (
            "cue_edge_quic_refused_total",
            "QUIC handshakes refused at once (limits).",
            |s| s.quic_refused.get(),
        ),
        (
            "cue_edge_tls_failures_total",
            "wss TLS handshakes that failed.",
            |s| s.tls_failures.get(),
        ),
        (
            "cue_edge_accepted_total",
            "TCP connections accepted.",
            |s| s.accepted.get(),
        ),
        (
            "cue_edge_accept_shed_total",
            "Connections closed at accept (shard full).",
            |s| s.accept_shed.get(),
        ),
        (
            "cue_edge_accept_out_of_fds_total",
            "Accept passes stopped by EMFILE/ENFILE: devices stay queued at the listener until a descriptor frees up (raise LimitNOFILE).",
            |s| s.accept_out_of_fds.get(),
        ),
        (
            "cue_edge_upgrades_total",
            "WebSocket upgrades completed.",
            |s| s.upgrades.get(),
        ),
        (
            "cue_edge_cues_in_total",
            "Cues received from the origin relay.",
            |s| s.cues_in.get(),
        ),
        (
            "cue_edge_deliveries_total",
            "Cue frames written to devices.",
            |s| s.deliveries.get(),
        ),
        (
            "cue_edge_token_cache_hits_total",
            "Admissions whose token had passed a public-key check before (no signature check).",
            |s| s.token_cache_hits.get(),
        ),
        (
            "cue_edge_admit_ticket_hits_total",
            "Admissions by an admission ticket this host issued (no signature check).",
            |s| s.ticket_hits.get(),
        ),
        (
            "cue_edge_admit_tickets_refused_total",
            "Admission tickets that did not hold (forged, expired, another host's, or their key retired); the token was checked in full.",
            |s| s.tickets_refused.get(),
        ),
        (
            "cue_edge_conflated_total",
            "Cues devices skipped for a newer one.",
            |s| s.conflated.get(),
        ),
        (
            "cue_edge_write_blocked_total",
            "Writes a device socket did not fully take.",
            |s| s.write_blocked.get(),
        ),
        (
            "cue_edge_fanout_deliveries_total",
            "WebSocket cue frames written by fanout slices, the work cue_edge_fanout_cpu_seconds_total times (catch-up and flushes of drained sockets are in cue_edge_deliveries_total only).",
            |s| s.fanout_deliveries.get(),
        ),
        (
            "cue_edge_timer_rescues_total",
            "Times the shard's executor timer did not wake its device poller and the ticker thread did, over 10 ms past the deadline.",
            |s| s.timer_rescues.get(),
        ),
        (
            "cue_edge_poll_turns_total",
            "Turns of the shard's device poller (accepts, device input, timers); one that stops growing while devices queue at the listener means a shard that is not run.",
            |s| s.poll_turns.get(),
        ),
        (
            "cue_edge_input_wakes_total",
            "Turns of the shard's device poller woken at once by device input (accepts, upgrades, pongs, QUIC datagrams) after a quiet turn, instead of at its next timer.",
            |s| s.input_wakes.get(),
        ),
        (
            "cue_edge_uring_submits_total",
            "io_uring submissions of fanout batches (send_path uring).",
            |s| s.uring_submits.get(),
        ),
        (
            "cue_edge_uring_sends_total",
            "Sends carried by those submissions.",
            |s| s.uring_sends.get(),
        ),
        ("cue_edge_pings_total", "Pings sent to idle devices.", |s| {
            s.pings.get()
        }),
    ];
    for (name, help, f) in counters {
        if off(name) {
            continue;
        }
        header(out, name, "counter", help);
        for (i, s) in shards.iter().enumerate() {
            sample(out, name, &format!("shard=\"{i}\""), f(s));
        }
    }
    header(
        out,
        "cue_edge_fanout_cpu_seconds_total",
        "counter",
        "Thread CPU time shards spent writing cues to devices.",
    );
    for (i, s) in shards.iter().enumerate() {
        sample(
            out,
            "cue_edge_fanout_cpu_seconds_total",
            &format!("shard=\"{i}\""),
            s.fanout_cpu_ns.get() as f64 / 1e9,
        );
    }
    header(
        out,
        "cue_edge_closes_total",
        "counter",
        "Device connections closed, by reason.",
    );
    for (i, s) in shards.iter().enumerate() {
        for (r, label) in CLOSE_REASONS.iter().enumerate() {
            sample(
                out,
                "cue_edge_closes_total",
                &format!("shard=\"{i}\",reason=\"{label}\""),
                s.closes[r].get(),
            );
        }
    }
    header(
        out,
        "cue_edge_refused_total",
        "counter",
        "Upgrades refused, by HTTP status.",
    );
    for (i, s) in shards.iter().enumerate() {
        for (r, st) in REFUSAL_STATUSES.iter().enumerate() {
            sample(
                out,
                "cue_edge_refused_total",
                &format!("shard=\"{i}\",status=\"{st}\""),
                s.refused[r].get(),
            );
        }
    }
    header(
        out,
        "cue_edge_delivery_lag_seconds",
        "histogram",
        "Origin publish time to the shard's last write of the cue, by the event's class.",
    );
    for (i, s) in shards.iter().enumerate() {
        for class in Priority::ALL {
            s.delivery_lag[class as usize].render(
                out,
                "cue_edge_delivery_lag_seconds",
                &format!("shard=\"{i}\",class=\"{}\"", class.as_str()),
            );
        }
    }
    header(
        out,
        "cue_edge_fanout_seconds",
        "histogram",
        "Wall time of one fanout slice (up to fanout_slice devices visited).",
    );
    for (i, s) in shards.iter().enumerate() {
        s.fanout_time
            .render(out, "cue_edge_fanout_seconds", &format!("shard=\"{i}\""));
    }
    header(
        out,
        "cue_edge_cue_fanout_seconds",
        "histogram",
        "Wall time of one cue's fanout on a shard: the shard taking it in to the kernel accepting its last send.",
    );
    for (i, s) in shards.iter().enumerate() {
        s.cue_fanout_time.render(
            out,
            "cue_edge_cue_fanout_seconds",
            &format!("shard=\"{i}\""),
        );
    }
    render_tenants(out, shards);
}

/// Per shard and tenant (`_default`: the default tenant; `_other`: those past the shard's
/// table bound): devices, events followed, fanout deliveries, quota refusals.
fn render_tenants(out: &mut String, shards: &[std::sync::Arc<ShardStats>]) {
    let tables: Vec<crate::core::tenants::Table> = shards
        .iter()
        .map(|s| s.tenants.lock().expect("tenants lock").clone())
        .collect();
    type Value = fn(&crate::core::tenants::Entry) -> u64;
    let rows: [(&str, &str, &str, Value); 3] = [
        (
            "cue_edge_tenant_devices",
            "gauge",
            "Devices admitted now, by tenant.",
            |e| e.devices as u64,
        ),
        (
            "cue_edge_tenant_events",
            "gauge",
            "Events followed now (with at least one device), by tenant.",
            |e| e.events as u64,
        ),
        (
            "cue_edge_tenant_deliveries_total",
            "counter",
            "Fanout deliveries, by tenant.",
            |e| e.deliveries,
        ),
    ];
    for (name, kind, help, value) in rows {
        header(out, name, kind, help);
        for (i, t) in tables.iter().enumerate() {
            for e in &t.entries {
                sample(
                    out,
                    name,
                    &format!("shard=\"{i}\",tenant=\"{}\"", e.name),
                    value(e),
                );
            }
        }
    }
    header(
        out,
        "cue_edge_tenant_refused_total",
        "counter",
        "Devices refused with 429 for their tenant's quota, by tenant and quota.",
    );
    for (i, t) in tables.iter().enumerate() {
        for e in &t.entries {
            for (q, n) in ["max_devices", "max_events"].iter().zip(e.refused) {
                sample(
                    out,
                    "cue_edge_tenant_refused_total",
                    &format!("shard=\"{i}\",tenant=\"{}\",quota=\"{q}\"", e.name),
                    n,
                );
            }
        }
    }
}

/// Runs `on_exit` when the calling thread ends, however it ends, a panic included. For the
/// flags the supervisor reads: a guard held by an executor's future is not enough, since a
/// panic unwinds out of glommio's executor without dropping the tasks it was running (tried: a
/// shard's guard local to its `run` never ran, and the supervisor never saw the dead shard),
/// while a thread's locals are always dropped when it exits.
pub fn on_thread_exit(on_exit: impl FnOnce() + 'static) {
    struct Guard(Option<Box<dyn FnOnce()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    thread_local! {
        static GUARDS: std::cell::RefCell<Vec<Guard>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    GUARDS.with(|g| g.borrow_mut().push(Guard(Some(Box::new(on_exit)))));
}

/// The shards' recent finished fanouts as JSON (`GET /fanouts`):
/// `{"shards":[{"shard":N,"fanouts":[{"event","seq","class","published_ms","taken_us","done_us","followers","devices"}]}]}`,
/// oldest first.
pub fn render_fanouts(shards: &[std::sync::Arc<ShardStats>]) -> String {
    let list: Vec<serde_json::Value> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let recent = s
                .recent_fanouts
                .lock()
                .expect("recent fanouts lock")
                .clone();
            let fanouts: Vec<serde_json::Value> = recent
                .iter()
                .map(|r| {
                    let f = &r.fanout;
                    serde_json::json!({
                        "event": f.event.as_str(),
                        "seq": f.seq,
                        "class": f.class.as_str(),
                        "published_ms": f.published_ms,
                        "taken_us": f.taken_us,
                        "done_us": r.done_us,
                        "followers": f.followers,
                        "devices": f.reached,
                    })
                })
                .collect();
            serde_json::json!({"shard": i, "fanouts": fanouts})
        })
        .collect();
    let mut text = serde_json::json!({ "shards": list }).to_string();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Finished;

    fn done(seq: u64, followers: u64) -> Finished {
        Finished {
            event: cue_common::cue::EventName::new("e").unwrap(),
            seq,
            published_ms: 1,
            class: Priority::Normal,
            taken_us: 1_000,
            followers,
            reached: followers,
        }
    }

    #[test]
    fn recent_fanouts_keep_the_newest_and_skip_cues_nobody_followed() {
        let s = ShardStats::default();
        s.fanout_finished(done(1, 0), 1_500);
        assert!(s.recent_fanouts.lock().unwrap().is_empty());
        assert_eq!(s.cue_fanout_time.count(), 0);
        for seq in 1..=RECENT_FANOUTS as u64 + 10 {
            s.fanout_finished(done(seq, 3), 1_000 + seq);
        }
        let recent = s.recent_fanouts.lock().unwrap().clone();
        assert_eq!(recent.len(), RECENT_FANOUTS);
        assert_eq!(recent.front().unwrap().fanout.seq, 11);
        assert_eq!(
            recent.back().unwrap().fanout.seq,
            RECENT_FANOUTS as u64 + 10
        );
        assert_eq!(s.cue_fanout_time.count(), RECENT_FANOUTS as u64 + 10);
        let v: serde_json::Value =
            serde_json::from_str(&render_fanouts(&[std::sync::Arc::new(s)])).unwrap();
        let last = &v["shards"][0]["fanouts"][RECENT_FANOUTS - 1];
        assert_eq!(last["done_us"], 1_000 + RECENT_FANOUTS as u64 + 10);
        assert_eq!(
            (last["followers"].clone(), last["devices"].clone()),
            (3.into(), 3.into())
        );
    }
}
