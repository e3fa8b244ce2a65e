//! The opening handshake parsers on arbitrary bytes. Besides not panicking: a request the server
//! accepts must lead to a 101 that the client side accepts, and `consumed` stays in bounds.
#![no_main]

use cue_edge::ws::handshake::{
    accept_key, parse_request, parse_response, write_accept, write_refusal,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max_len = match data.first() {
        Some(b) => usize::from(*b) * 16,
        None => 0,
    };
    match parse_request(data, max_len) {
        Ok(Some((req, consumed))) => {
            assert!(consumed <= data.len() && consumed <= max_len);
            assert!(req.path.starts_with('/'));
            let mut resp = Vec::new();
            write_accept(&req.key, None, &mut resp);
            assert_eq!(
                parse_response(&resp, &accept_key(&req.key)),
                Ok(Some((101, resp.len())))
            );
        }
        Ok(None) => assert!(data.len() < max_len),
        Err(e) => {
            let mut resp = Vec::new();
            write_refusal(e.status, e.reason, None, &mut resp);
            let parsed = parse_response(&resp, "");
            assert_eq!(
                parsed,
                Ok(Some((e.status, resp.len() - e.reason.len() - 1)))
            );
        }
    }
    if let Ok(Some((_, consumed))) = parse_response(data, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") {
        assert!(consumed <= data.len());
    }
});
