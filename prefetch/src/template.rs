//! A stage map ready to serve: the response body `{"event":E,"device":D,"stages":{...}}`
//! serialised once, split at every place the device id goes (the `device` field and every
//! `{device}` inside a payload string), so serving a device is a few `memcpy`s and its `ETag` is
//! a hash of the template's hash and the device id, with no per-request JSON work.
//!
//! `{device}` can only appear inside JSON strings of the serialised form (outside strings JSON
//! has only punctuation, numbers and literals), so splitting the serialised text at `{device}` is
//! exactly "substitute inside every string", keys included. The device id is JSON-escaped once
//! per request and inserted at each split.

use bytes::Bytes;

use crate::hash::{fnv1a, mix64, FNV_OFFSET};

/// The placeholder replaced by the device id.
pub const PLACEHOLDER: &str = "{device}";

/// A compiled response body for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTemplate {
    /// Literal pieces; the device id goes between consecutive pieces.
    pieces: Vec<Bytes>,
    /// Hash of the pieces, the base of every ETag served from this template.
    hash: u64,
    /// Stage keys in the map.
    stages: usize,
}

impl StageTemplate {
    /// Compiles the body of `event` with `stages` (already validated by the caller).
    pub fn compile(event: &str, stages: &serde_json::Map<String, serde_json::Value>) -> Self {
        let mut text = String::with_capacity(64);
        text.push_str("{\"event\":");
        text.push_str(&serde_json::Value::from(event).to_string());
        text.push_str(",\"device\":\"");
        text.push_str(PLACEHOLDER);
        text.push_str("\",\"stages\":");
        text.push_str(&serde_json::to_string(stages).expect("a JSON map serialises"));
        text.push('}');
        let pieces: Vec<Bytes> = text
            .split(PLACEHOLDER)
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        let mut h = FNV_OFFSET;
        for p in &pieces {
            h = fnv1a(h, &(p.len() as u64).to_le_bytes());
            h = fnv1a(h, p);
        }
        Self {
            pieces,
            hash: mix64(h),
            stages: stages.len(),
        }
    }

    /// Number of stage keys.
    pub fn stages(&self) -> usize {
        self.stages
    }

    /// Bytes held (what the cache charges for this template).
    pub fn size(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum::<usize>() + 64
    }

    /// The body for `device`.
    pub fn render(&self, device: &str) -> Bytes {
        let esc = escape(device);
        let n = self.pieces.len();
        let len = self.pieces.iter().map(|p| p.len()).sum::<usize>() + esc.len() * (n - 1);
        let mut out = Vec::with_capacity(len);
        for (i, p) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(esc.as_bytes());
            }
            out.extend_from_slice(p);
        }
        Bytes::from(out)
    }

    /// The strong ETag (quoted) of [`StageTemplate::render`]`(device)`.
    pub fn etag(&self, device: &str) -> String {
        let h = mix64(fnv1a(self.hash, device.as_bytes()));
        format!("\"{h:016x}\"")
    }
}

/// `s` escaped for the inside of a JSON string (no quotes added).
fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let quoted = serde_json::Value::from(s).to_string();
    std::borrow::Cow::Owned(quoted[1..quoted.len() - 1].to_string())
}

/// True when an `If-None-Match` header value matches `etag` (a list, `*`, or weak forms).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stages(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_with_device_everywhere_in_strings() {
        let t = StageTemplate::compile(
            "fight",
            &stages(json!({
                "round-1": {"url": "https://cdn/x/{device}/a.jpg", "n": 3, "{device}": ["{device}{device}"]},
                "round-2": "plain",
            })),
        );
        let body = t.render("tv-7");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"event":"fight","device":"tv-7","stages":{
                "round-1": {"url": "https://cdn/x/tv-7/a.jpg", "n": 3, "tv-7": ["tv-7tv-7"]},
                "round-2": "plain"}})
        );
        assert_eq!(t.stages(), 2);
    }

    #[test]
    fn device_ids_are_escaped() {
        let t = StageTemplate::compile("e", &stages(json!({"k": "a{device}b"})));
        let dev = "q\"\\\n\u{1}é";
        let v: serde_json::Value = serde_json::from_slice(&t.render(dev)).unwrap();
        assert_eq!(v["device"], dev);
        assert_eq!(v["stages"]["k"], format!("a{dev}b"));
    }

    #[test]
    fn escaped_placeholder_in_source_is_substituted_too() {
        // `\u007bdevice}` is `{device}` once parsed: the contract speaks of strings, not bytes.
        let m: serde_json::Value = serde_json::from_str(r#"{"k":"\u007bdevice}"}"#).unwrap();
        let t = StageTemplate::compile("e", m.as_object().unwrap());
        let v: serde_json::Value = serde_json::from_slice(&t.render("d1")).unwrap();
        assert_eq!(v["stages"]["k"], "d1");
    }

    #[test]
    fn etags_differ_by_device_and_content() {
        let a = StageTemplate::compile("e", &stages(json!({"k": 1})));
        let b = StageTemplate::compile("e", &stages(json!({"k": 2})));
        assert_eq!(a.etag("d"), a.etag("d"));
        assert_ne!(a.etag("d"), a.etag("d2"));
        assert_ne!(a.etag("d"), b.etag("d"));
        assert!(a.etag("d").starts_with('"') && a.etag("d").len() == 18);
    }

    #[test]
    fn if_none_match_forms() {
        assert!(if_none_match("\"abc\"", "\"abc\""));
        assert!(if_none_match("\"x\", W/\"abc\"", "\"abc\""));
        assert!(if_none_match("*", "\"abc\""));
        assert!(!if_none_match("\"abd\"", "\"abc\""));
    }
}
