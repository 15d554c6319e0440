//! The link's messages from the network: arbitrary text never panics the decoders, every
//! message round-trips through its JSON, and every truncation of a valid frame is refused.

use proptest::prelude::*;
use serde_json::{Value as Json, json};
use twinlake_edge::link::{Down, Item, Op, RegistryEntry, Up};

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        (-1e9f64..1e9).prop_map(Json::from),
        "[a-z0-9 ]{0,8}".prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4).prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// An optional value; `null` means "none" on the wire, so a `Some(null)` is not generated.
fn some_value() -> impl Strategy<Value = Option<Json>> {
    proptest::option::of(json_value().prop_filter("null is no value", |v| !v.is_null()))
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,12}"
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        (name(), name(), any::<bool>(), any::<u64>()).prop_map(|(user, device, online, at)| Item::Presence {
            user,
            device,
            online,
            at,
            ip: Some("127.0.0.1".into()),
            rx_bytes: 1,
            tx_bytes: 2,
            reason: (!online).then(|| "bye".into()),
            protocol: online.then(|| "mqtt".into()),
        }),
        (name(), name(), name(), any::<u64>(), json_value()).prop_map(|(user, device, path, at, value)| {
            Item::Reported {
                user,
                device,
                path,
                at,
                value,
            }
        }),
        (name(), name(), name(), some_value()).prop_map(|(user, device, endpoint, payload)| {
            Item::Endpoint {
                user,
                device,
                endpoint,
                at: 5,
                payload,
            }
        }),
        (name(), name(), json_value()).prop_map(|(user, device, resources)| Item::Described {
            user,
            device,
            resources
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Describe),
        name().prop_map(|path| Op::Read { path }),
        (name(), json_value()).prop_map(|(path, value)| Op::Write { path, value }),
        (name(), some_value()).prop_map(|(path, input)| Op::Call { path, input }),
        (name(), proptest::option::of(1u64..100_000))
            .prop_map(|(path, interval_ms)| Op::StartStream { path, interval_ms }),
        name().prop_map(|path| Op::StopStream { path }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn batches_and_requests_round_trip(seq in any::<u64>(), items in prop::collection::vec(item(), 0..6),
                                       id in any::<u64>(), user in name(), device in name(), op in op()) {
        let up = Up::Batch { seq, items };
        let text = serde_json::to_string(&up).unwrap();
        prop_assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
        let down = Down::Request { id, user, device, op };
        let text = serde_json::to_string(&down).unwrap();
        prop_assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down.clone());
        // Every strict prefix of a frame is refused, never half-read.
        for cut in 0..text.len() {
            if let Some(prefix) = text.get(..cut) {
                prop_assert!(serde_json::from_str::<Down>(prefix).is_err());
            }
        }
    }

    #[test]
    fn queue_reports_and_welcomes_round_trip(q in prop::array::uniform5(any::<i64>()), acked in any::<u64>(),
                                             features in prop::collection::vec(name(), 0..3)) {
        let up = Up::Status(twinlake_edge::link::GatewayStatus {
            upload_files: q[0], upload_bytes: q[1], buffer_rows: q[2], unacked_batches: q[3], devices_connected: q[4],
        });
        let text = serde_json::to_string(&up).unwrap();
        prop_assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
        let down = Down::Welcome { acked, features };
        let text = serde_json::to_string(&down).unwrap();
        prop_assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = serde_json::from_str::<Up>(&text);
        let _ = serde_json::from_str::<Down>(&text);
        let _ = serde_json::from_slice::<Up>(&bytes);
        let _ = serde_json::from_slice::<Down>(&bytes);
    }
}

#[test]
fn wrong_shapes_are_refused_with_a_reason() {
    for bad in [
        json!({"type": "batch", "seq": -1, "items": []}),
        json!({"type": "batch", "seq": 1, "items": [{"kind": "nope"}]}),
        json!({"type": "reply", "id": 1}),
        json!({"type": "hello", "gateway": 7}),
        json!({"seq": 1}),
    ] {
        assert!(serde_json::from_value::<Up>(bad.clone()).is_err(), "{bad}");
    }
    let reg = json!({"type": "registry", "devices": [{"user": "u", "device": "d"}]});
    let Down::Registry { devices, .. } = serde_json::from_value::<Down>(reg).unwrap() else {
        panic!("a registry");
    };
    assert_eq!(
        devices,
        [RegistryEntry {
            user: "u".into(),
            device: "d".into(),
            credential_hash: None,
            properties: Default::default()
        }]
    );
}

/// Found by the round-trip property: without serde_json's `float_roundtrip`, this value came
/// back one ULP off, so a twin could differ from the lake in the last digit.
#[test]
fn floats_cross_the_link_exactly() {
    for x in [-100312676.3232948f64, 0.1 + 0.2, f64::MAX, f64::MIN_POSITIVE, 21.5] {
        let up = Up::Batch {
            seq: 1,
            items: vec![Item::Reported {
                user: "u".into(),
                device: "d".into(),
                path: "p".into(),
                at: 0,
                value: json!(x),
            }],
        };
        let back: Up = serde_json::from_str(&serde_json::to_string(&up).unwrap()).unwrap();
        assert_eq!(back, up, "{x:e}");
    }
}
