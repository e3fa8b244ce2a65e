//! The game-day script: when devices connect, when the prefetch window is open, when each cue is
//! published and when each fault happens. Pure: computed from the device count alone, so a run
//! is reproducible and the report can show the plan next to what happened.

use std::time::Duration;

use serde_json::json;

/// One scripted action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a cue with this stage key.
    Cue(String),
    /// Drop this fraction of open devices abruptly (they reconnect with backoff and `since=`).
    DropDevices(f64),
    /// SIGKILL edge process i.
    KillEdge(usize),
    /// Start edge process i again.
    RestartEdge(usize),
    /// SIGKILL the JetStream stream's leader node (`--store nats`).
    KillNatsNode,
    /// SIGKILL this origin (`--store nats`: the one publishes go to; the other takes over).
    KillOrigin(usize),
}

/// An action at a time since the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// When.
    pub at: Duration,
    /// What.
    pub action: Action,
}

/// The whole script.
#[derive(Debug, Clone)]
pub struct Script {
    /// The event.
    pub event: String,
    /// Edge processes to start.
    pub edges: usize,
    /// Devices connect at uniform random times in `[0, ramp]`.
    pub ramp: Duration,
    /// Prefetch window, from the start.
    pub window: (Duration, Duration),
    /// Stage-map TTL in the catalog (seconds, before jitter).
    pub ttl_s: u64,
    /// Actions, in time order.
    pub actions: Vec<Timed>,
    /// When the run ends (reports are collected then).
    pub end: Duration,
}

/// The event's stage keys, in broadcast order.
pub const STAGES: [&str; 7] = [
    "pre-show",
    "round-1",
    "round-2",
    "round-3",
    "round-4",
    "round-5",
    "post-show",
];

/// Most devices one edge process holds here (fd limit 20000), leaving room for the devices of
/// a killed edge to move over.
pub const DEVICES_PER_EDGE: usize = 12_000;

impl Script {
    /// The script for `devices` devices.
    pub fn for_devices(devices: usize) -> Self {
        let s = Duration::from_secs;
        let ramp = s(15 + (devices / 10_000) as u64);
        let window = (s(5), ramp + s(25));
        let step = s(8);
        let first = window.1 + s(5);
        let cue_at = |i: u32| first + step * i;
        let mut actions: Vec<Timed> = STAGES
            .iter()
            .enumerate()
            .map(|(i, k)| Timed {
                at: cue_at(i as u32),
                action: Action::Cue(k.to_string()),
            })
            .collect();
        // Faults: 10% of devices drop after round-2; edge 0 dies 1 s before round-4, so its
        // devices are still backing off when round-4 is published (they get it by catch-up on
        // reconnect), and it comes back 3 s after.
        actions.push(Timed {
            at: cue_at(2) + s(3),
            action: Action::DropDevices(0.10),
        });
        actions.push(Timed {
            at: cue_at(4) - s(1),
            action: Action::KillEdge(0),
        });
        actions.push(Timed {
            at: cue_at(4) + s(3),
            action: Action::RestartEdge(0),
        });
        actions.sort_by_key(|a| a.at);
        let end = cue_at(STAGES.len() as u32 - 1) + s(12);
        Self {
            event: "fight-night".into(),
            edges: devices.div_ceil(DEVICES_PER_EDGE).max(3),
            ramp,
            window,
            ttl_s: 30,
            actions,
            end,
        }
    }

    /// The stage keys.
    /// The two store faults of `--store nats`: the stream leader's NATS node killed 4 s after
    /// round-1 (round-2 is published on the two nodes left), and origin 0, which takes the
    /// publishes, killed 2 s before round-3 (which origin 1 takes). Neither is restarted.
    pub fn with_store_faults(mut self) -> Self {
        let at = |key: &str| {
            self.actions
                .iter()
                .find(|a| a.action == Action::Cue(key.into()))
                .map(|a| a.at)
                .expect("stage in script")
        };
        let (r1, r3) = (at("round-1"), at("round-3"));
        self.actions.push(Timed {
            at: r1 + Duration::from_secs(4),
            action: Action::KillNatsNode,
        });
        self.actions.push(Timed {
            at: r3 - Duration::from_secs(2),
            action: Action::KillOrigin(0),
        });
        self.actions.sort_by_key(|a| a.at);
        self
    }

    pub fn keys(&self) -> Vec<String> {
        STAGES.iter().map(|s| s.to_string()).collect()
    }

    /// The prefetch catalog file for the event (contract format), with the window placed
    /// relative to the run's start.
    pub fn catalog_json(&self, t0_unix_ms: u64) -> serde_json::Value {
        let mut stages = serde_json::Map::new();
        for (i, k) in STAGES.iter().enumerate() {
            let recs: Vec<_> = (0..8)
                .map(|r| json!({"id": format!("title-{i}-{r}"), "for": "{device}", "art": format!("https://img.example/{k}/{r}.jpg")}))
                .collect();
            stages.insert(k.to_string(), json!({"stage": k, "headline": format!("{k} for {{device}}"), "recommendations": recs}));
        }
        json!({
            "window": {
                "start_ms": t0_unix_ms + self.window.0.as_millis() as u64,
                "end_ms": t0_unix_ms + self.window.1.as_millis() as u64,
            },
            "ttl_s": self.ttl_s,
            "stages": stages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_script_fits_two_minutes_and_orders_faults() {
        let sc = Script::for_devices(20_000);
        assert!(sc.end <= Duration::from_secs(115), "{:?}", sc.end);
        assert_eq!(sc.edges, 3);
        let cues: Vec<_> = sc
            .actions
            .iter()
            .filter(|a| matches!(a.action, Action::Cue(_)))
            .collect();
        assert_eq!(cues.len(), 7);
        assert!(
            cues[0].at > sc.window.1,
            "broadcast starts after the prefetch window"
        );
        let kill = sc
            .actions
            .iter()
            .find(|a| a.action == Action::KillEdge(0))
            .unwrap()
            .at;
        let restart = sc
            .actions
            .iter()
            .find(|a| a.action == Action::RestartEdge(0))
            .unwrap()
            .at;
        assert!(
            cues.iter().any(|c| c.at > kill && c.at < restart),
            "one cue while the edge is down"
        );
        assert!(sc.actions.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn store_faults_fall_between_cues() {
        let sc = Script::for_devices(20_000).with_store_faults();
        let pos = |a: &Action| sc.actions.iter().position(|x| &x.action == a).unwrap();
        let cue = |k: &str| pos(&Action::Cue(k.into()));
        assert!(cue("round-1") < pos(&Action::KillNatsNode));
        assert!(pos(&Action::KillNatsNode) < cue("round-2"));
        assert!(cue("round-2") < pos(&Action::KillOrigin(0)));
        assert!(pos(&Action::KillOrigin(0)) < cue("round-3"));
        assert!(sc.actions.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn big_fleets_get_enough_edges() {
        let sc = Script::for_devices(100_000);
        assert!(sc.edges >= 9);
        assert!(
            100_000 / (sc.edges - 1) < 19_000,
            "a killed edge's devices fit on the others"
        );
    }

    #[test]
    fn catalog_has_every_stage_and_the_device_placeholder() {
        let sc = Script::for_devices(1000);
        let c = sc.catalog_json(1_000_000);
        assert_eq!(c["window"]["start_ms"], 1_005_000);
        for k in STAGES {
            assert!(c["stages"][k]["headline"]
                .as_str()
                .unwrap()
                .contains("{device}"));
        }
    }
}
