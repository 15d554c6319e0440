//! The GWMP (Semtech UDP packet forwarder) parser on arbitrary datagrams: no panic; every
//! rxpk it accepts has a payload that decodes or says why; acks echo the version and token; a PULL_RESP
//! built from an accepted rxpk is a header and valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The codec file itself, not the edge crate (which would pull Arrow and Parquet into the
// sanitizer build).
#[allow(dead_code)]
#[path = "../../edge-agent/src/sources/lorawan/gwmp.rs"]
mod gwmp;

fuzz_target!(|data: &[u8]| {
    let parsed = gwmp::parse(data);
    let version = || gwmp::Version::of(data).expect("a datagram parse accepts has a known version");
    match parsed {
        Ok(gwmp::Up::PushData { token, rxpk, .. }) => {
            assert_eq!(gwmp::push_ack(version(), token)[..3], [data[0], token[0], token[1]]);
            for rx in rxpk.into_iter().flatten() {
                let _ = rx.crc_ok();
                if let Ok(phy) = rx.payload() {
                    let d = gwmp::pull_resp(version(), token, &gwmp::TxPk::rx1(&rx, &phy, 1_000_000, 14));
                    assert_eq!(d[..4], [data[0], token[0], token[1], 3]);
                    let _: serde_json::Value = serde_json::from_slice(&d[4..]).expect("PULL_RESP is JSON");
                }
            }
        }
        Ok(gwmp::Up::PullData { token, .. }) => assert_eq!(gwmp::pull_ack(version(), token)[3], 4),
        Ok(gwmp::Up::TxAck { .. }) | Err(_) => {}
    }
});
