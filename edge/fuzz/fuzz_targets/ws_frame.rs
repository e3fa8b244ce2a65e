//! Frame decoding as the edge and the bench client run it: frames decoded in a loop and fed to
//! `MessageState`, for both roles. The oracle: bytes arriving in small reads must give exactly
//! the frames (or the error) that the same bytes give all at once, since `decode_frame` may only
//! say Incomplete or fail from the header, never decide differently on a prefix.
#![no_main]

use cue_edge::ws::frame::{decode_frame, Decoded, Message, MessageState, Role};
use libfuzzer_sys::fuzz_target;

/// What a run saw: the frames' fin, opcode, payload and what `MessageState` said, then the
/// error that ended it, if any.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(bool, u8, Vec<u8>, Result<Option<String>, u16>),
    Error(u16),
}

/// Decodes `wire` arriving `chunk` bytes at a time.
fn run(wire: &[u8], role: Role, chunk: usize, max: usize) -> Vec<Event> {
    let mut buf = wire.to_vec();
    let mut state = MessageState::new();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut avail = 0;
    while avail < buf.len() {
        avail = (avail + chunk).min(buf.len());
        loop {
            let before = buf[pos..avail].to_vec();
            match decode_frame(&mut buf[pos..avail], role, max) {
                Ok(Decoded::Incomplete) => {
                    assert_eq!(buf[pos..avail], before[..], "Incomplete changed the buffer");
                    break;
                }
                Ok(Decoded::Frame {
                    fin,
                    opcode,
                    payload,
                    consumed,
                }) => {
                    assert!(consumed > 0 && payload.end == consumed && pos + consumed <= avail);
                    assert!(payload.len() <= max);
                    let bytes = &buf[pos + payload.start..pos + payload.end];
                    let seen = state
                        .on_frame(fin, opcode, bytes, max)
                        .map(|m| m.map(|m| describe(&m)))
                        .map_err(|e| e.code);
                    let failed = seen.is_err();
                    events.push(Event::Frame(fin, opcode.as_u8(), bytes.to_vec(), seen));
                    pos += consumed;
                    if failed {
                        return events;
                    }
                }
                Err(e) => {
                    assert!(matches!(e.code, 1002 | 1007 | 1009));
                    events.push(Event::Error(e.code));
                    return events;
                }
            }
        }
    }
    events
}

fn describe(m: &Message<'_>) -> String {
    format!("{m:?}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, wire)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(ctl & 0x0F) + 1;
    let max = if ctl & 0x10 != 0 { 200 } else { 1 << 16 };
    for role in [Role::Server, Role::Client] {
        let whole = run(wire, role, wire.len().max(1), max);
        let pieces = run(wire, role, chunk, max);
        assert_eq!(whole, pieces);
    }
});
