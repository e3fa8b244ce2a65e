//! The catalog file parser on arbitrary bytes, with the default limits and tight ones. A file it
//! accepts must respect the limits, and its map must render to valid JSON for any device id.
#![no_main]

use cue_prefetch::catalog::{parse_event, CatalogLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tight = CatalogLimits {
        max_file_bytes: 512,
        max_stages: 3,
        max_depth: 4,
        ..CatalogLimits::default()
    };
    for limits in [CatalogLimits::default(), tight] {
        if let Ok(ev) = parse_event("ev.json", data, &limits) {
            assert!(data.len() as u64 <= limits.max_file_bytes);
            assert!(ev.window.start_ms < ev.window.end_ms);
            assert!((1..=limits.max_ttl_s).contains(&ev.ttl_s));
            let t = ev.template.expect("stages required by default");
            assert!(t.stages() <= limits.max_stages);
            for dev in ["d", "q\"\\\n", "{device}"] {
                let body: serde_json::Value =
                    serde_json::from_slice(&t.render(dev)).expect("valid JSON");
                assert_eq!(body["device"], dev);
            }
        }
    }
});
