//! The embedded catalog: a directory with one `EVENT.json` per event,
//! `{"window":{"start_ms":T0,"end_ms":T1},"ttl_s":600,"stages":{"KEY":PAYLOAD,...}}`.
//!
//! Parsing is pure ([`parse_event`] takes the file name and bytes) and bounded: file size, event
//! count, stage count and nesting depth all have limits ([`CatalogLimits`]), checked before the
//! expensive step they guard (size before reading, depth before building a tree). Errors name the
//! file and the problem. Reading the directory ([`load_dir`]) is the only I/O.
//!
//! Unknown top-level fields are accepted and reported as warnings, so a catalog written for a
//! newer version still loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cue_common::cue::{valid_event, valid_key};
use serde_json::{Map, Value};

use crate::schedule::Window;
use crate::template::StageTemplate;

/// Bounds on what a catalog (or an upstream answer) may hold.
#[derive(Debug, Clone)]
pub struct CatalogLimits {
    /// Largest `EVENT.json`, bytes. Default 4 MiB.
    pub max_file_bytes: u64,
    /// Most events (files) in the directory. Default 10,000.
    pub max_events: usize,
    /// Most stage keys in one map. Default 10,000.
    pub max_stages: usize,
    /// Deepest nesting of arrays/objects in a file, the outer object counting 1. Default 32.
    pub max_depth: usize,
    /// `ttl_s` of a file that does not say. Default 600.
    pub default_ttl_s: u64,
    /// Longest `ttl_s` accepted. Default 7 days.
    pub max_ttl_s: u64,
    /// Whether `stages` must be present (embedded source) or may be left to the upstream.
    pub require_stages: bool,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 << 20,
            max_events: 10_000,
            max_stages: 10_000,
            max_depth: 32,
            default_ttl_s: 600,
            max_ttl_s: 7 * 86_400,
            require_stages: true,
        }
    }
}

/// What is wrong with one catalog file (or upstream answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The name is not `EVENT.json` with a valid event name.
    #[error("file name must be EVENT.json with EVENT 1-64 chars of [a-z0-9._-]")]
    BadName,
    /// Larger than [`CatalogLimits::max_file_bytes`].
    #[error("{size} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Size found.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// Nested deeper than [`CatalogLimits::max_depth`].
    #[error("nested deeper than the limit of {max}")]
    TooDeep {
        /// Limit.
        max: usize,
    },
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A field has the wrong type or is missing.
    #[error("{field}: {want}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What it should be.
        want: &'static str,
    },
    /// The window is empty or reversed.
    #[error("window: end_ms ({end}) must be after start_ms ({start})")]
    BadWindow {
        /// start_ms found.
        start: u64,
        /// end_ms found.
        end: u64,
    },
    /// `ttl_s` out of range.
    #[error("ttl_s: {got} must be 1..={max}")]
    BadTtl {
        /// Value found.
        got: u64,
        /// Limit.
        max: u64,
    },
    /// More stage keys than [`CatalogLimits::max_stages`].
    #[error("stages: {n} keys, more than the limit of {max}")]
    TooManyStages {
        /// Count found.
        n: usize,
        /// Limit.
        max: usize,
    },
    /// A stage key outside the cue key alphabet.
    #[error("stages: key {0:?} must be 1-64 chars of [A-Za-z0-9._:-] (a cue key)")]
    BadStageKey(String),
    /// More files than [`CatalogLimits::max_events`].
    #[error("more than {max} event files")]
    TooManyEvents {
        /// Limit.
        max: usize,
    },
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
}

/// A catalog problem with the file it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalog {}: {problem}", file.display())]
pub struct CatalogError {
    /// The file (or directory) at fault.
    pub file: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// One event of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    /// Event name (from the file name).
    pub name: String,
    /// Prefetch window.
    pub window: Window,
    /// Freshness promised to devices, seconds (`max-age` before jitter).
    pub ttl_s: u64,
    /// The stage map, compiled; `None` when the file has no `stages` (upstream source).
    pub template: Option<Arc<StageTemplate>>,
    /// Top-level fields this version does not know (warned about, ignored).
    pub unknown_fields: Vec<String>,
}

/// Every event of a catalog directory.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Events by name.
    pub events: HashMap<String, Arc<EventSpec>>,
}

impl Catalog {
    /// The event named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<EventSpec>> {
        self.events.get(name)
    }
}

/// The event name of a catalog file name, or `None` for files that are not `*.json` (ignored).
/// `Some(Err)` for a `.json` file whose stem is not a valid event name.
pub fn event_of_file_name(file_name: &str) -> Option<Result<&str, Problem>> {
    let stem = file_name.strip_suffix(".json")?;
    Some(if valid_event(stem) {
        Ok(stem)
    } else {
        Err(Problem::BadName)
    })
}

/// Deepest nesting of `[`/`{` in JSON text, ignoring brackets inside strings. Stops counting
/// (returns `limit + 1`) as soon as `limit` is passed, so its cost is one pass at most.
pub fn json_depth(bytes: &[u8], limit: usize) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > limit {
                        return max;
                    }
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses JSON text into a tree after checking its size and depth.
pub fn parse_bounded(bytes: &[u8], limits: &CatalogLimits) -> Result<Value, Problem> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(Problem::TooLarge {
            size: bytes.len() as u64,
            max: limits.max_file_bytes,
        });
    }
    if json_depth(bytes, limits.max_depth) > limits.max_depth {
        return Err(Problem::TooDeep {
            max: limits.max_depth,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| Problem::Json(e.to_string()))
}

/// Checks a stage map: an object of at most `max_stages` valid cue keys.
pub fn check_stages<'a>(
    v: &'a Value,
    limits: &CatalogLimits,
) -> Result<&'a Map<String, Value>, Problem> {
    let m = v.as_object().ok_or(Problem::Field {
        field: "stages",
        want: "must be an object",
    })?;
    if m.len() > limits.max_stages {
        return Err(Problem::TooManyStages {
            n: m.len(),
            max: limits.max_stages,
        });
    }
    if let Some(k) = m.keys().find(|k| !valid_key(k)) {
        return Err(Problem::BadStageKey(k.chars().take(80).collect()));
    }
    Ok(m)
}

/// A non-negative integer; `600.0` is accepted as 600 (some JSON writers only emit floats).
fn as_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..1.8e19).contains(f))
            .map(|f| f as u64)
    })
}

fn u64_field(obj: &Map<String, Value>, name: &str, field: &'static str) -> Result<u64, Problem> {
    let v = obj.get(name).ok_or(Problem::Field {
        field,
        want: "missing",
    })?;
    as_count(v).ok_or(Problem::Field {
        field,
        want: "must be a non-negative integer",
    })
}

/// Parses one catalog file: its name (`EVENT.json`) and its bytes.
pub fn parse_event(
    file_name: &str,
    bytes: &[u8],
    limits: &CatalogLimits,
) -> Result<EventSpec, Problem> {
    parse_tenant_event(None, file_name, bytes, limits)
}

/// [`parse_event`] of a file of tenant `tenant`'s directory (`None`: the default tenant's,
/// the catalog's top level): the spec is named `TENANT/EVENT`, the map says `EVENT`.
pub fn parse_tenant_event(
    tenant: Option<&str>,
    file_name: &str,
    bytes: &[u8],
    limits: &CatalogLimits,
) -> Result<EventSpec, Problem> {
    let name = match event_of_file_name(file_name) {
        Some(Ok(n)) => n,
        _ => return Err(Problem::BadName),
    };
    let qualified = cue_common::cue::EventName::qualify(tenant, name)
        .map_err(|_| Problem::BadName)?
        .as_str()
        .to_string();
    let v = parse_bounded(bytes, limits)?;
    let top = v.as_object().ok_or(Problem::Field {
        field: "(top level)",
        want: "must be an object",
    })?;
    let w = top
        .get("window")
        .ok_or(Problem::Field {
            field: "window",
            want: "missing",
        })?
        .as_object()
        .ok_or(Problem::Field {
            field: "window",
            want: "must be an object {start_ms, end_ms}",
        })?;
    let start = u64_field(w, "start_ms", "window.start_ms")?;
    let end = u64_field(w, "end_ms", "window.end_ms")?;
    if end <= start {
        return Err(Problem::BadWindow { start, end });
    }
    let ttl_s = match top.get("ttl_s") {
        None => limits.default_ttl_s,
        Some(t) => as_count(t).ok_or(Problem::Field {
            field: "ttl_s",
            want: "must be a non-negative integer",
        })?,
    };
    if !(1..=limits.max_ttl_s).contains(&ttl_s) {
        return Err(Problem::BadTtl {
            got: ttl_s,
            max: limits.max_ttl_s,
        });
    }
    let template = match top.get("stages") {
        Some(s) => Some(Arc::new(StageTemplate::compile(
            name,
            check_stages(s, limits)?,
        ))),
        None if limits.require_stages => {
            return Err(Problem::Field {
                field: "stages",
                want: "missing",
            })
        }
        None => None,
    };
    let mut unknown_fields: Vec<String> = top
        .keys()
        .filter(|k| !matches!(k.as_str(), "window" | "ttl_s" | "stages"))
        .cloned()
        .collect();
    unknown_fields.sort();
    Ok(EventSpec {
        name: qualified,
        window: Window {
            start_ms: start,
            end_ms: end,
        },
        ttl_s,
        template,
        unknown_fields,
    })
}

/// The catalog's files: `(tenant, file name, path)` of every `*.json` at the top level (the
/// default tenant's events) and in a directory named after a tenant (that tenant's events);
/// other files and directories are ignored. At most `max` files; sorted.
fn catalog_files(
    dir: &Path,
    max: usize,
) -> Result<Vec<(Option<String>, String, std::path::PathBuf)>, CatalogError> {
    let err = |file: &Path, problem| CatalogError {
        file: file.to_path_buf(),
        problem,
    };
    let mut out = Vec::new();
    let mut dirs = vec![(None, dir.to_path_buf())];
    while let Some((tenant, d)) = dirs.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| err(&d, Problem::Io(e.to_string())))?;
        for ent in rd {
            let ent = ent.map_err(|e| err(&d, Problem::Io(e.to_string())))?;
            let fname = ent.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if fname.starts_with('.') {
                continue;
            }
            let path = ent.path();
            if tenant.is_none() && path.is_dir() {
                if cue_common::cue::valid_tenant(fname) {
                    dirs.push((Some(fname.to_string()), path));
                }
                continue;
            }
            if event_of_file_name(fname).is_none() {
                continue;
            }
            out.push((tenant.clone(), fname.to_string(), path));
            if out.len() > max {
                return Err(err(dir, Problem::TooManyEvents { max }));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every `*.json` file of `dir`, and of its directories named after tenants (a tenant's
/// events: `dir/acme/fight.json` is tenant acme's `fight`); other files are ignored. The first
/// problem found is the error; a catalog is loaded whole or not at all.
pub fn load_dir(dir: &Path, limits: &CatalogLimits) -> Result<Catalog, CatalogError> {
    let err = |file: &Path, problem| CatalogError {
        file: file.to_path_buf(),
        problem,
    };
    let mut cat = Catalog::default();
    for (tenant, fname, path) in catalog_files(dir, limits.max_events)? {
        let meta = std::fs::metadata(&path).map_err(|e| err(&path, Problem::Io(e.to_string())))?;
        if !meta.is_file() {
            continue;
        }
        if meta.len() > limits.max_file_bytes {
            return Err(err(
                &path,
                Problem::TooLarge {
                    size: meta.len(),
                    max: limits.max_file_bytes,
                },
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| err(&path, Problem::Io(e.to_string())))?;
        let ev = parse_tenant_event(tenant.as_deref(), &fname, &bytes, limits)
            .map_err(|p| err(&path, p))?;
        if !ev.unknown_fields.is_empty() {
            tracing::warn!(file = %path.display(), fields = ?ev.unknown_fields, "catalog: unknown fields ignored");
        }
        cat.events.insert(ev.name.clone(), Arc::new(ev));
    }
    Ok(cat)
}

/// A cheap fingerprint of a catalog directory (names, sizes, modification times), to notice
/// changes without re-reading files.
pub fn dir_fingerprint(dir: &Path) -> Option<u64> {
    let mut items: Vec<(String, u64, u128)> = Vec::new();
    for (tenant, name, path) in catalog_files(dir, usize::MAX).ok()? {
        let name = format!("{}/{name}", tenant.unwrap_or_default());
        let m = std::fs::metadata(&path).ok()?;
        let mtime = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        items.push((name, m.len(), mtime));
    }
    items.sort();
    let mut h = crate::hash::FNV_OFFSET;
    for (n, l, t) in items {
        h = crate::hash::fnv1a(h, n.as_bytes());
        h = crate::hash::fnv1a(h, &l.to_le_bytes());
        h = crate::hash::fnv1a(h, &t.to_le_bytes());
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lim() -> CatalogLimits {
        CatalogLimits::default()
    }

    #[test]
    fn parses_the_contract_example() {
        let b = br#"{"window":{"start_ms":1000,"end_ms":2000},"ttl_s":600,"stages":{"round-1":{"img":"x/{device}.jpg"},"round-2":[1,2]}}"#;
        let e = parse_event("fight-night.json", b, &lim()).unwrap();
        assert_eq!(e.name, "fight-night");
        assert_eq!(
            e.window,
            Window {
                start_ms: 1000,
                end_ms: 2000
            }
        );
        assert_eq!(e.ttl_s, 600);
        assert_eq!(e.template.unwrap().stages(), 2);
        assert!(e.unknown_fields.is_empty());
        // Integral floats are integers.
        let f = br#"{"window":{"start_ms":1000.0,"end_ms":2e3},"ttl_s":60.0,"stages":{}}"#;
        let e = parse_event("f.json", f, &lim()).unwrap();
        assert_eq!(
            (e.window.start_ms, e.window.end_ms, e.ttl_s),
            (1000, 2000, 60)
        );
        assert!(parse_event(
            "f.json",
            br#"{"window":{"start_ms":1.5,"end_ms":2},"stages":{}}"#,
            &lim()
        )
        .is_err());
    }

    #[test]
    fn problems_are_named() {
        let l = lim();
        let p = |name: &str, body: &str| {
            parse_event(name, body.as_bytes(), &l)
                .unwrap_err()
                .to_string()
        };
        assert!(p("Bad.json", "{}").contains("file name"));
        assert!(p("e.json", "{").contains("invalid JSON"));
        assert!(p("e.json", "[]").contains("(top level)"));
        assert_eq!(p("e.json", r#"{"stages":{}}"#), "window: missing");
        assert_eq!(
            p(
                "e.json",
                r#"{"window":{"start_ms":5,"end_ms":5},"stages":{}}"#
            ),
            "window: end_ms (5) must be after start_ms (5)"
        );
        assert_eq!(
            p(
                "e.json",
                r#"{"window":{"start_ms":-1,"end_ms":5},"stages":{}}"#
            ),
            "window.start_ms: must be a non-negative integer"
        );
        assert_eq!(
            p(
                "e.json",
                r#"{"window":{"start_ms":1,"end_ms":5},"ttl_s":0,"stages":{}}"#
            ),
            "ttl_s: 0 must be 1..=604800"
        );
        assert_eq!(
            p("e.json", r#"{"window":{"start_ms":1,"end_ms":5}}"#),
            "stages: missing"
        );
        assert!(p(
            "e.json",
            r#"{"window":{"start_ms":1,"end_ms":5},"stages":{"a b":1}}"#
        )
        .contains("\"a b\""));
        assert_eq!(
            p(
                "e.json",
                r#"{"window":{"start_ms":1,"end_ms":5},"stages":[1]}"#
            ),
            "stages: must be an object"
        );
    }

    #[test]
    fn limits_hold() {
        let mut l = lim();
        l.max_depth = 4;
        let deep = r#"{"window":{"start_ms":1,"end_ms":5},"stages":{"a":{"b":[{"c":1}]}}}"#;
        assert_eq!(
            parse_event("e.json", deep.as_bytes(), &l).unwrap_err(),
            Problem::TooDeep { max: 4 }
        );
        l.max_depth = 5;
        assert!(parse_event("e.json", deep.as_bytes(), &l).is_ok());
        // Brackets inside strings do not count.
        assert_eq!(json_depth(br#"{"a":"[[[[{{{{\"[["}"#, 10), 1);
        l.max_stages = 1;
        let two = r#"{"window":{"start_ms":1,"end_ms":5},"stages":{"a":1,"b":2}}"#;
        assert_eq!(
            parse_event("e.json", two.as_bytes(), &l).unwrap_err(),
            Problem::TooManyStages { n: 2, max: 1 }
        );
        l.max_file_bytes = 10;
        assert!(matches!(
            parse_event("e.json", two.as_bytes(), &l),
            Err(Problem::TooLarge { .. })
        ));
        // A very deep document is refused before serde recurses into it.
        let bomb = "[".repeat(1_000_000);
        assert!(matches!(
            parse_event("e.json", bomb.as_bytes(), &lim()),
            Err(Problem::TooDeep { .. })
        ));
    }

    #[test]
    fn unknown_fields_warned_ttl_defaulted_stages_optional_for_upstream() {
        let mut l = lim();
        l.require_stages = false;
        let e = parse_event(
            "e.json",
            br#"{"window":{"start_ms":1,"end_ms":5},"title":"x"}"#,
            &l,
        )
        .unwrap();
        assert_eq!(e.ttl_s, 600);
        assert!(e.template.is_none());
        assert_eq!(e.unknown_fields, vec!["title".to_string()]);
    }

    #[test]
    fn load_dir_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.json"),
            r#"{"window":{"start_ms":1,"end_ms":5},"stages":{"k":1}}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("README.txt"), "ignored").unwrap();
        let c = load_dir(d.path(), &lim()).unwrap();
        assert_eq!(c.events.len(), 1);
        assert!(c.get("a").is_some());
        std::fs::write(d.path().join("b.json"), "{").unwrap();
        let e = load_dir(d.path(), &lim()).unwrap_err();
        assert_eq!(e.file, d.path().join("b.json"));
        assert!(e.to_string().starts_with(&format!(
            "catalog {}: invalid JSON",
            d.path().join("b.json").display()
        )));
        let missing = load_dir(&d.path().join("nope"), &lim()).unwrap_err();
        assert!(matches!(missing.problem, Problem::Io(_)));
        let f1 = dir_fingerprint(d.path());
        std::fs::write(d.path().join("c.json"), "{}").unwrap();
        assert_ne!(f1, dir_fingerprint(d.path()));
    }

    fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z{}\"\\\\ ]{0,12}".prop_map(Value::from),
            Just(Value::from("{device}")),
        ];
        leaf.prop_recursive(depth, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map("[a-z{}]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_event("e.json", &b, &lim());
        }

        #[test]
        fn parser_never_panics_on_near_json(s in "[\\[\\]{}\":,0-9a-z_ \\\\]{0,300}") {
            let _ = parse_event("e.json", s.as_bytes(), &lim());
        }

        /// Any stage map of valid keys round-trips through file text, compile and render, with
        /// `{device}` replaced everywhere in strings.
        #[test]
        fn valid_catalogs_round_trip(
            stages in proptest::collection::btree_map("[A-Za-z0-9._:-]{1,10}", arb_json(3), 0..8),
            start in 0u64..1u64 << 50, span in 1u64..1u64 << 40, ttl in 1u64..100_000,
            dev in "[a-z0-9-]{1,12}",
        ) {
            let stages: Map<String, Value> = stages.into_iter().collect();
            let file = serde_json::json!({"window":{"start_ms":start,"end_ms":start+span},"ttl_s":ttl,"stages":stages});
            let e = parse_event("ev.json", file.to_string().as_bytes(), &lim()).unwrap();
            prop_assert_eq!(e.window, Window { start_ms: start, end_ms: start + span });
            prop_assert_eq!(e.ttl_s, ttl);
            let body: Value = serde_json::from_slice(&e.template.unwrap().render(&dev)).unwrap();
            let want = serde_json::from_str::<Value>(&Value::Object(stages).to_string().replace("{device}", &dev)).unwrap();
            prop_assert_eq!(&body["stages"], &want);
            prop_assert_eq!(&body["device"], &Value::from(dev));
        }
    }
}
