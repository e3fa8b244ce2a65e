//! The prefetch query parser on arbitrary strings: an accepted device id is within the limits.
#![no_main]

use cue_prefetch::query::{parse, MAX_DEVICE, MAX_QUERY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = parse(s) {
        assert!(s.len() <= MAX_QUERY);
        if let Some(d) = q.device {
            assert!(!d.is_empty() && d.len() <= MAX_DEVICE && !d.chars().any(char::is_control));
        }
    }
});
