//! The LoRaWAN network-server path after GWMP: PHYPayloads into `NetworkServer::uplink`,
//! raw or built with the right keys (so the fuzzer gets past the MIC), for two ABP devices
//! (Cayenne and raw codecs) and one OTAA device. Input: records `[op][…]`: op 0 is a raw
//! frame `[len][bytes]`, 1 a signed data uplink `[device][flags][fcnt: u16 LE][port][len]
//! [payload]`, 2 a signed join request `[nonce: u16 LE]`, 3 lets time pass `[seconds]`.
//! No panic; every accepted uplink is a configured device's, with a counter above the last
//! one accepted from it (no replay gets through); a join's DevNonce is not accepted again while among the
//! latest 64.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use lorawan::creator::{DataPayloadCreator, JoinRequestCreator};
use lorawan::keys::{AppKey, AppSKey, NewSKey};
use twinlake_edge::sources::codec::Codec;
use twinlake_edge::sources::lorawan::network::{DeviceConf, NetworkServer, Outcome, Secret, Session};

const NWK: [u8; 16] = [2; 16];
const APP: [u8; 16] = [1; 16];
const ROOT: [u8; 16] = [3; 16];
const JOIN_EUI: [u8; 8] = [0x70, 0xb3, 0xd5, 0x7e, 0xd0, 0, 0, 1];
const OTAA_EUI: [u8; 8] = [0, 4, 0xa3, 0x0b, 0, 0x1c, 5, 0x30];

fn abp(n: u8, codec: Codec) -> DeviceConf {
    DeviceConf {
        dev_eui: [0, 0, 0, 0, 0, 0, 0, n],
        name: format!("abp-{n}"),
        join_eui: None,
        app_key: None,
        abp: Some(Session {
            dev_addr: 0x2601_1b00 | u32::from(n),
            nwk_skey: Secret(NWK),
            app_skey: Secret(APP),
            fcnt_up: None,
            fcnt_down: 0,
            dev_nonces: Vec::new(),
            resend_acked: None,
        }),
        table: "lorawan".into(),
        codec,
    }
}

fn otaa() -> DeviceConf {
    DeviceConf {
        dev_eui: OTAA_EUI,
        name: "otaa".into(),
        join_eui: Some(JOIN_EUI),
        app_key: Some(Secret(ROOT)),
        abp: None,
        table: "lorawan".into(),
        codec: Codec::Cayenne,
    }
}

fn le<const N: usize>(mut a: [u8; N]) -> [u8; N] {
    a.reverse();
    a
}

fn data_uplink(dev: u8, flags: u8, fcnt: u16, port: u8, payload: &[u8]) -> Vec<u8> {
    let addr = 0x2601_1b00 | u32::from(1 + dev % 2);
    let mut c = DataPayloadCreator::new();
    c.set_uplink(true)
        .set_confirmed(flags & 1 != 0)
        .set_dev_addr(&addr.to_le_bytes())
        .set_fcnt(u32::from(fcnt));
    if flags & 2 != 0 {
        c.set_f_port(port);
    }
    c.build(payload, &[], &NewSKey::from(NWK), &AppSKey::from(APP))
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn join_request(nonce: [u8; 2]) -> Vec<u8> {
    let mut c = JoinRequestCreator::new();
    c.set_app_eui(&le(JOIN_EUI))
        .set_dev_eui(&le(OTAA_EUI))
        .set_dev_nonce(&nonce);
    c.build(&AppKey::from(ROOT)).to_vec()
}

fuzz_target!(|data: &[u8]| {
    let devices = vec![abp(1, Codec::Cayenne), abp(2, Codec::Raw), otaa()];
    let mut ns = NetworkServer::new(devices, HashMap::new(), [0, 0, 0x13], 1, Duration::from_secs(10));
    let mut now = Instant::now();
    let mut random = |b: &mut [u8]| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8);
    let mut last: HashMap<String, u32> = HashMap::new();
    let mut nonces: Vec<u16> = Vec::new();
    let mut d = data;
    while let Some((&op, rest)) = d.split_first() {
        let (phy, rest) = match op % 4 {
            0 => {
                let n = rest
                    .first()
                    .map_or(0, |n| *n as usize)
                    .min(rest.len().saturating_sub(1));
                (
                    rest.get(1..1 + n).unwrap_or_default().to_vec(),
                    rest.get(1 + n..).unwrap_or_default(),
                )
            }
            1 if rest.len() >= 6 => {
                // At most what the creator's 256-byte buffer holds (it panics past it; the
                // server builds only empty downlinks with it).
                let n = (rest[5] as usize).min(rest.len() - 6).min(200);
                let fcnt = u16::from_le_bytes([rest[2], rest[3]]);
                (
                    data_uplink(rest[0], rest[1], fcnt, rest[4], &rest[6..6 + n]),
                    &rest[6 + n..],
                )
            }
            2 if rest.len() >= 2 => (join_request([rest[0], rest[1]]), &rest[2..]),
            3 if !rest.is_empty() => {
                now += Duration::from_secs(u64::from(rest[0]));
                d = &rest[1..];
                continue;
            }
            _ => return,
        };
        d = rest;
        match ns.uplink(&phy, now, &mut random) {
            Outcome::Uplink(up) => {
                assert!(
                    ["abp-1", "abp-2", "otaa"].contains(&up.device.as_str()),
                    "{}",
                    up.device
                );
                if let Some(prev) = last.insert(up.device.clone(), up.fcnt) {
                    assert!(
                        up.fcnt > prev,
                        "{} accepted counter {} after {prev}",
                        up.device,
                        up.fcnt
                    );
                }
            }
            Outcome::Joined { .. } => {
                let nonce = u16::from_le_bytes([phy[17], phy[18]]);
                // The server keeps the latest 64 DevNonces of a device (NONCES_KEPT).
                let kept = &nonces[nonces.len().saturating_sub(64)..];
                assert!(!kept.contains(&nonce), "DevNonce {nonce} accepted twice");
                nonces.push(nonce);
                // A new session starts its counters afresh.
                last.remove("otaa");
            }
            _ => {}
        }
    }
});
