//! MQTT payload formats (JSON, PSON, plain, Sparkplug B, ThingsBoard device and gateway,
//! ChirpStack) on arbitrary messages, several per input so Sparkplug's alias state carries
//! over. Input: a format byte, then messages as `[topic len: u8][topic][payload len: u16
//! LE][payload]`. No panic; every row has a device, a time in the lake's range, a resource
//! the table-name rules decide on, and a payload that PSON-encodes, decodes and flattens.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use twinlake_edge::lake::model;
use twinlake_edge::sources::mqtt::payload::{Decoder, Format};
use twinlake_edge::sources::mqtt::topic::Captures;
use twinlake_sdk::pson::ValueRef;

const FORMATS: [Format; 7] = [
    Format::Json,
    Format::Pson,
    Format::Plain,
    Format::Sparkplug,
    Format::Thingsboard,
    Format::ThingsboardGateway,
    Format::Chirpstack,
];

/// The messages of an input; a truncated one ends the list.
fn messages(mut d: &[u8]) -> Vec<(&str, &[u8])> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = d.split_first() {
        let n = n as usize;
        if rest.len() < n + 2 {
            break;
        }
        let (topic, rest) = rest.split_at(n);
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let rest = &rest[2..];
        let Ok(topic) = std::str::from_utf8(topic) else { break };
        let payload = &rest[..len.min(rest.len())];
        out.push((topic, payload));
        d = &rest[payload.len()..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&f, rest)) = data.split_first() else { return };
    let format = FORMATS[f as usize % FORMATS.len()];
    let mut decoder = Decoder::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (topic, payload) in messages(rest) {
        let captures = Captures {
            device: Some("dev-1"),
            resource: None,
            rest: "",
        };
        let Ok(rows) = decoder.decode(format, topic, &captures, format.default_resource(), payload, now) else {
            continue;
        };
        for r in rows {
            assert!(!r.resource.is_empty());
            let _ = model::table_name(&[r.resource.as_str()]);
            // The WAL and the lake keep microseconds since the epoch in an i64.
            let us = match r.at.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => d.as_micros(),
                Err(e) => e.duration().as_micros(),
            };
            assert!(us <= i64::MAX as u128, "a row's time {:?} does not fit the lake", r.at);
            let bytes = r.payload.to_bytes();
            let v = ValueRef::decode(&bytes).expect("a row's payload decodes again");
            let mut fields = Vec::new();
            model::flatten(v, false, &mut fields);
        }
    }
});
