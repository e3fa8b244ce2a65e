//! The QUIC hello parser and line scanner on arbitrary bytes, with the default limits and tight
//! ones. A hello it accepts must respect the limits and name only subscribed events in `since`.
#![no_main]

use cue_edge::quic::hello::{parse_hello, scan_line, HelloLimits, Scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tight = HelloLimits {
        max_len: 128,
        max_events: 2,
    };
    for limits in [HelloLimits::default(), tight] {
        if let Ok(Scan::Line(n)) = scan_line(data, limits.max_len) {
            assert!(n <= limits.max_len && data[n] == b'\n');
        }
        if let Ok(h) = parse_hello(data, &limits) {
            assert!(data.len() <= limits.max_len);
            assert!(!h.events.is_empty() && h.events.len() <= limits.max_events);
            for (i, (event, _)) in h.events.iter().enumerate() {
                assert!(cue_origin_valid(event));
                assert!(h.events[..i].iter().all(|(e, _)| e != event), "duplicate event");
            }
            if let Some(t) = &h.token {
                assert!(!t.is_empty());
            }
        }
    }
});

fn cue_origin_valid(e: &str) -> bool {
    (1..=64).contains(&e.len())
        && e.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}
