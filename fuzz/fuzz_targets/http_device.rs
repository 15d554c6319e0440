//! The HTTP device API's request decoding on arbitrary input: a token (`user:device:
//! credential`), a table name and a body, read as telemetry (ThingsBoard's shapes) and as
//! attributes. Input: `[token len: u8][token][table len: u8][table][body]`. No panic; a
//! token that parses has ids of the allowed characters; every row has the device, the
//! table (which the table-name rules accept), a time the lake holds, and a payload that
//! PSON-encodes, decodes and flattens.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use twinlake_edge::lake::model;
use twinlake_edge::sources::gate::parse_token;
use twinlake_edge::sources::http::{attribute_rows, telemetry_rows};
use twinlake_sdk::pson::ValueRef;

fn field(d: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&n, rest) = d.split_first()?;
    (rest.len() >= n as usize).then(|| rest.split_at(n as usize))
}

fn check_payload(v: &twinlake_sdk::pson::Value) {
    let bytes = v.to_bytes();
    let v = ValueRef::decode(&bytes).expect("a row's payload decodes again");
    let mut fields = Vec::new();
    model::flatten(v, false, &mut fields);
}

fuzz_target!(|data: &[u8]| {
    let Some((token, rest)) = field(data) else { return };
    let Some((table, body)) = field(rest) else { return };
    if let Some(c) = parse_token(&String::from_utf8_lossy(token)) {
        for id in [&c.user, &c.device] {
            assert!(!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
    }
    let table = String::from_utf8_lossy(table);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Ok(rows) = telemetry_rows("dev", &table, body, now) {
        assert!(model::table_name(&[table.as_ref()]).is_ok());
        for r in rows {
            assert_eq!((r.device.as_str(), r.resource.as_str()), ("dev", table.as_ref()));
            let us = r.at.duration_since(SystemTime::UNIX_EPOCH).expect("after the epoch").as_micros();
            assert!(us <= i64::MAX as u128, "a row's time {:?} does not fit the lake", r.at);
            check_payload(&r.payload);
        }
    }
    if let Ok((row, props)) = attribute_rows("dev", "attributes", body, now) {
        check_payload(&row.payload);
        for (_, v) in props {
            check_payload(&v);
        }
    }
});
