//! The two files `apply` owns: a sysctl.d file and a systemd drop-in for the edge's unit.
//! Re-running `apply` merges with what is already there and never lowers a value.

use crate::facts::parse;

/// The sysctl.d file, relative to the root.
pub const SYSCTL_FILE: &str = "etc/sysctl.d/90-cue-edge.conf";

/// The drop-in for `service`, relative to the root.
pub fn dropin_path(service: &str) -> String {
    format!("etc/systemd/system/{service}.service.d/90-cue-tune.conf")
}

/// `key = value` entries of a sysctl.d file, in order.
pub fn parse_sysctl_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Merges `new` entries into `existing` ones (same key: the new value, in place).
pub fn merge_entries(
    existing: Vec<(String, String)>,
    new: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged = existing;
    for (key, value) in new {
        match merged.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.clone(),
            None => merged.push((key.clone(), value.clone())),
        }
    }
    merged
}

/// The sysctl.d file text.
pub fn render_sysctl_file(entries: &[(String, String)], headline: &str) -> String {
    let mut text = format!(
        "# Written by cue-tune apply ({headline}).\n# Values are only ever raised; `cue-tune revert` restores the previous ones\n# (saved in /var/lib/cue-tune/state.json).\n"
    );
    for (key, value) in entries {
        text.push_str(&format!("{key} = {value}\n"));
    }
    text
}

/// LimitNOFILE/LimitMEMLOCK already in a drop-in (hard values).
pub fn parse_dropin(text: &str) -> (Option<u64>, Option<u64>) {
    let mut nofile = None;
    let mut memlock = None;
    for (key, value) in parse::systemd_settings(text) {
        match key.as_str() {
            "LimitNOFILE" => nofile = parse::systemd_limit(&value).ok(),
            "LimitMEMLOCK" => memlock = parse::systemd_limit(&value).ok(),
            _ => {}
        }
    }
    (nofile, memlock)
}

/// The drop-in text.
pub fn render_dropin(nofile: u64, memlock: u64, headline: &str) -> String {
    let memlock = if memlock == u64::MAX {
        "infinity".to_string()
    } else {
        memlock.to_string()
    };
    format!(
        "# Written by cue-tune apply ({headline}).\n# cue-edge raises its soft limits to these at start-up. `cue-tune revert` undoes this.\n[Service]\nLimitNOFILE={nofile}\nLimitMEMLOCK={memlock}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_file_round_trip_and_merge() {
        let text = render_sysctl_file(&[("fs.nr_open".into(), "1100800".into())], "test");
        let entries = parse_sysctl_file(&text);
        assert_eq!(
            entries,
            vec![("fs.nr_open".to_string(), "1100800".to_string())]
        );
        let merged = merge_entries(
            entries,
            &[
                ("net.core.somaxconn".into(), "8192".into()),
                ("fs.nr_open".into(), "2000896".into()),
            ],
        );
        assert_eq!(merged[0].1, "2000896");
        assert_eq!(merged[1].0, "net.core.somaxconn");
    }

    #[test]
    fn dropin_round_trip() {
        let text = render_dropin(1_100_800, 12 << 20, "test");
        assert!(text.contains("[Service]\nLimitNOFILE=1100800\nLimitMEMLOCK=12582912\n"));
        assert_eq!(parse_dropin(&text), (Some(1_100_800), Some(12 << 20)));
        assert_eq!(
            dropin_path("cue-edge"),
            "etc/systemd/system/cue-edge.service.d/90-cue-tune.conf"
        );
    }
}
