//! The stream WebSocket's commands (`{"resource":…,"interval":…,"enabled":…}`) on arbitrary
//! text: no panic; what is accepted names a resource and an interval in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The cloud's input file itself, not the cloud crate (which links DataFusion).
#[allow(dead_code)]
#[path = "../../cloud-ingest/src/input.rs"]
mod input;

use input::{MAX_INTERVAL, MIN_INTERVAL, StreamCommand};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match input::stream_command(text) {
        Ok(StreamCommand::Subscribe { resource, interval }) => {
            assert!(!resource.is_empty());
            if let Some(i) = interval {
                assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&i), "{i:?}");
            }
        }
        Ok(StreamCommand::Unsubscribe { resource }) => assert!(!resource.is_empty()),
        Err(e) => assert!(!e.message.is_empty()),
    }
    if let Ok(i) = input::interval_param(text) {
        assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&i), "{i:?}");
    }
});
