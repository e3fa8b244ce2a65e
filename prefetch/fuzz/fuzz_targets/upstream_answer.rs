//! An upstream answer (`{stages}` or `{"stages":{...}}`) on arbitrary bytes: never panics, and
//! an accepted answer renders to valid JSON.
#![no_main]

use cue_prefetch::catalog::CatalogLimits;
use cue_prefetch::upstream::parse_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = parse_answer("ev", data, &CatalogLimits::default()) {
        let _: serde_json::Value = serde_json::from_slice(&t.render("dev-1")).expect("valid JSON");
    }
});
