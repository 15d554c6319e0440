//! Property tests of the GWMP codec: any datagram is parsed or refused without a panic, and
//! PUSH_DATA built from arbitrary rxpk fields reads back as written.

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::json;
use twinlake_edge::sources::lorawan::gwmp::{DataRate, TxPk, Up, Version, parse, pull_resp, push_ack};

fn datr() -> impl Strategy<Value = DataRate> {
    prop_oneof![
        (7u8..=12, prop::sample::select(vec![125u32, 250, 500]))
            .prop_map(|(sf, bw)| DataRate::Lora(format!("SF{sf}BW{bw}"))),
        (1200u32..=300_000).prop_map(|b| DataRate::Fsk(f64::from(b))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_datagram_is_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn any_json_after_a_header_is_parsed_or_refused(kind in prop::sample::select(vec![0u8, 2, 5]), text in ".{0,200}") {
        let mut d = vec![2, 1, 2, kind, 1, 2, 3, 4, 5, 6, 7, 8];
        d.extend_from_slice(text.as_bytes());
        let _ = parse(&d);
    }

    #[test]
    fn push_data_reads_back(
        token in any::<[u8; 2]>(),
        eui in any::<[u8; 8]>(),
        tmst in any::<u32>(),
        freq in 860.0f64..930.0,
        rssi in -140i32..0,
        lsnr in prop::option::of(-20.0f64..15.0),
        datr in datr(),
        phy in prop::collection::vec(any::<u8>(), 0..64),
        version in 1u8..=2,
    ) {
        let mut rx = json!({"tmst": tmst, "freq": freq, "stat": 1, "rssi": rssi, "datr": datr,
                            "data": base64::engine::general_purpose::STANDARD.encode(&phy), "size": phy.len()});
        if let Some(l) = lsnr {
            rx["lsnr"] = json!(l);
        }
        let mut d = vec![version, token[0], token[1], 0];
        d.extend_from_slice(&eui);
        d.extend_from_slice(json!({"rxpk": [rx]}).to_string().as_bytes());
        let Ok(Up::PushData { token: t, gateway, rxpk, .. }) = parse(&d) else { panic!("refused") };
        prop_assert_eq!(t, token);
        prop_assert_eq!(gateway.0, eui);
        let v = Version::of(&d).unwrap();
        prop_assert_eq!(push_ack(v, t), [version, token[0], token[1], 1]);
        let rx = rxpk[0].as_ref().unwrap();
        prop_assert_eq!(rx.tmst, Some(tmst));
        prop_assert_eq!(rx.freq, Some(freq));
        prop_assert_eq!(rx.lsnr, lsnr);
        prop_assert_eq!(rx.datr.as_ref(), Some(&datr));
        prop_assert_eq!(rx.payload().unwrap(), phy.clone());
        // The answer in RX1 carries the same bytes back.
        let resp = pull_resp(v, token, &TxPk::rx1(rx, &phy, 1_000_000, 14));
        prop_assert_eq!(resp[0], version);
        let j: serde_json::Value = serde_json::from_slice(&resp[4..]).unwrap();
        let back = base64::engine::general_purpose::STANDARD.decode(j["txpk"]["data"].as_str().unwrap()).unwrap();
        prop_assert_eq!(back, phy);
        prop_assert_eq!(j["txpk"]["tmst"].as_u64(), Some(u64::from(tmst.wrapping_add(1_000_000))));
    }
}
