//! Property tests: PSON and frames round-trip for arbitrary values, and the decoders return
//! errors, never panics, on arbitrary bytes and on every truncation and corruption of valid
//! input.

use proptest::prelude::*;
use twinlake_sdk::frame::{FrameDecoder, FrameLimits, FrameRef, Message, Signal, decode_frame};
use twinlake_sdk::pson::{Limits, Value, ValueRef};

/// Values in canonical form (what a decoder returns), nested up to 4 levels.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        Just(Value::Unset),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        any::<f32>().prop_map(Value::Float),
        any::<f64>().prop_map(Value::Double),
        ".{0,12}".prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..8).prop_map(Value::Object),
        ]
    })
}

fn signal() -> impl Strategy<Value = Signal> {
    (0u32..20).prop_map(Signal::from_code)
}

fn message() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        signal(),
        prop::option::of(value()),
        prop::option::of(value()),
        prop::option::of(value()),
    )
        .prop_map(|(stream_id, signal, identifier, resource, payload)| Message {
            stream_id,
            signal,
            identifier,
            resource,
            payload,
        })
}

/// Compares through the encoding, so NaN payloads compare equal to themselves.
fn same(a: &Value, b: &Value) -> bool {
    a.to_bytes() == b.to_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pson_round_trips(v in value()) {
        let bytes = v.to_bytes();
        prop_assert_eq!(bytes.len(), v.encoded_len());
        let mut generic = Vec::new();
        v.encode(&mut generic).expect("vec sink");
        prop_assert_eq!(&generic, &bytes);
        let back = Value::decode(&bytes).expect("decodes");
        prop_assert!(same(&back, &v));
        if !format!("{v:?}").contains("NaN") {
            prop_assert_eq!(&back, &v);
        }
        let r = ValueRef::decode(&bytes).expect("ref decodes");
        prop_assert_eq!(r.encoded_len(), bytes.len());
        prop_assert!(same(&Value::from_ref(r), &v));
    }

    /// Bytes a value encoded read the same without the container walk.
    #[test]
    fn pson_trusted_decode_reads_what_decode_reads(v in value()) {
        let bytes = v.to_bytes();
        let checked = ValueRef::decode(&bytes).expect("decodes");
        let trusted = ValueRef::decode_trusted(&bytes).expect("decodes");
        prop_assert!(same(&Value::from_ref(trusted), &Value::from_ref(checked)));
    }

    /// Bytes nobody checked: no panic, and whatever reads turns into a value.
    #[test]
    fn pson_trusted_decode_of_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = ValueRef::decode_trusted(&bytes) {
            let _ = Value::from_ref(v);
        }
    }

    #[test]
    fn pson_truncations_are_errors(v in value()) {
        let bytes = v.to_bytes();
        for cut in 0..bytes.len() {
            prop_assert!(Value::decode(&bytes[..cut]).is_err(), "prefix {} decoded", cut);
            prop_assert!(ValueRef::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn pson_corruption_never_panics(v in value(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = v.to_bytes();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let owned = Value::decode(&bytes);
        let borrowed = ValueRef::decode(&bytes);
        // Both decoders agree on whether the bytes are valid.
        prop_assert_eq!(owned.is_ok(), borrowed.is_ok());
    }

    #[test]
    fn pson_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let tight = Limits { max_depth: 3, max_size: 64 };
        let _ = Value::decode(&bytes);
        let _ = Value::decode_with(&bytes, &tight);
        if let Ok(v) = ValueRef::decode(&bytes) {
            // Whatever decodes re-encodes to something that decodes to the same value.
            let owned = Value::from_ref(v);
            prop_assert!(same(&Value::decode(&owned.to_bytes()).expect("re-decodes"), &owned));
        }
    }

    #[test]
    fn frames_round_trip(m in message()) {
        let bytes = m.to_frame();
        let mut dec = FrameDecoder::new(FrameLimits { max_body: 1 << 20, max_depth: 32 });
        dec.push(&bytes);
        let got = dec.next_frame().expect("valid").expect("complete");
        prop_assert_eq!(got.to_bytes(), bytes.clone());
        let (r, used) = decode_frame(&bytes, &FrameLimits { max_body: 1 << 20, max_depth: 32 }).expect("valid").expect("complete");
        prop_assert_eq!(used, bytes.len());
        let FrameRef::Message(mr) = r else { panic!("a message") };
        prop_assert_eq!(mr.body_len() + 1 + twinlake_sdk::varint::len_u64(mr.body_len() as u64), bytes.len());
    }

    #[test]
    fn frame_truncations_are_incomplete(m in message()) {
        let bytes = m.to_frame();
        let limits = FrameLimits { max_body: 1 << 20, max_depth: 32 };
        for cut in 0..bytes.len() {
            prop_assert_eq!(decode_frame(&bytes[..cut], &limits), Ok(None), "cut at {}", cut);
        }
    }

    #[test]
    fn frame_decoder_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut dec = FrameDecoder::new(FrameLimits { max_body: 256, max_depth: 4 });
        'outer: for c in &chunks {
            dec.push(c);
            loop {
                match dec.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    #[test]
    fn frame_corruption_never_panics(m in message(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = m.to_frame();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_frame(&bytes, &FrameLimits::DEFAULT);
    }

    #[test]
    fn number_rule_keeps_the_value_close(v in any::<f64>()) {
        let n = Value::number(v);
        match n {
            Value::Int(i) => prop_assert_eq!(i as f64, v),
            Value::UInt(u) => prop_assert_eq!(u as f64, v),
            Value::Float(f) => prop_assert!((f64::from(f) - v).abs() <= 1e-5),
            Value::Double(d) => prop_assert!(d.to_bits() == v.to_bits()),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
