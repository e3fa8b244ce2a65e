//! Checks a config file the package ships (`tuning/package/etc/*.toml`) against the service's
//! own defaults, so its comments cannot drift from the code:
//!
//! - the file as shipped parses;
//! - every `# key = value` line is the default: uncommenting it alone changes nothing;
//! - every key the service knows is in the file, set (`key = ...`), commented with its
//!   default (`# key = ...`), or marked unset (`#- key: ...`). The keys come from serde's own
//!   unknown-field error, so a key added to the struct and not to the file fails.

use serde::de::DeserializeOwned;

/// Every problem of `text` as the shipped config of `T`; empty when it holds.
pub fn problems<T: DeserializeOwned + Default + std::fmt::Debug>(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let parse = |t: &str| toml::from_str::<T>(t).map_err(|e| e.to_string());
    let shipped = match parse(text) {
        Ok(c) => format!("{c:?}"),
        Err(e) => return vec![format!("as shipped: {e}")],
    };
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(setting) = l.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = setting.split_once(" = ") else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let mut one = lines.clone();
        one[i] = setting;
        match parse(&one.join("\n")) {
            Ok(c) if format!("{c:?}") == shipped => {}
            Ok(_) => out.push(format!("line {}: `{setting}` is not the default", i + 1)),
            Err(e) => out.push(format!("line {}: `{setting}` does not parse: {e}", i + 1)),
        }
    }
    for key in known_keys::<T>() {
        let there = lines.iter().any(|l| {
            let l = l.strip_prefix("# ").unwrap_or(l);
            l.starts_with(&format!("{key} = "))
                || l.starts_with(&format!("#- {key}:"))
                || l.starts_with(&format!("[{key}."))
        });
        if !there {
            out.push(format!("key `{key}` is missing from the file"));
        }
    }
    out
}

/// The keys `T` accepts, from serde's "unknown field `x`, expected one of `a`, `b`" error.
pub fn known_keys<T: DeserializeOwned>() -> Vec<String> {
    let e = match toml::from_str::<T>("zz_no_such_key_probe = 0\n") {
        Ok(_) => panic!("a struct without deny_unknown_fields took any key"),
        Err(e) => e.to_string(),
    };
    let list = e
        .split_once("expected one of ")
        .or_else(|| e.split_once("expected "))
        .unwrap_or_else(|| panic!("no field list in: {e}"))
        .1;
    let keys: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(keys.len() > 3, "field list not understood: {e}");
    keys
}
