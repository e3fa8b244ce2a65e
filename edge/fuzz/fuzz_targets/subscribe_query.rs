//! The subscribe query parser on arbitrary strings, with the default limits and tight ones. A
//! query it accepts must respect the limits: 1 to max_events distinct events.
#![no_main]

use cue_edge::ws::query::{parse_subscribe, QueryLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let tight = QueryLimits {
        max_query_len: 256,
        max_events: 2,
    };
    for limits in [QueryLimits::default(), tight] {
        if let Ok(sub) = parse_subscribe(query, &limits) {
            assert!(query.len() <= limits.max_query_len);
            assert!(!sub.events.is_empty() && sub.events.len() <= limits.max_events);
            for (i, (event, _)) in sub.events.iter().enumerate() {
                assert!(!event.is_empty());
                assert!(
                    sub.events[..i].iter().all(|(e, _)| e != event),
                    "duplicate event"
                );
            }
            if let Some(token) = &sub.token {
                assert!(!token.is_empty());
            }
        }
    }
});
