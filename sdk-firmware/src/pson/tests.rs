//! Golden vectors from device-protocol.md §1.3, both directions, plus strictness checks.

use super::*;

/// Parses "6A 0E | 04 74 .." hex with `|` separators and `"quoted"` raw strings.
pub(crate) fn hex(s: &str) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec::Vec::new();
    let mut quoted = false;
    for part in s.split('"') {
        if quoted {
            out.extend_from_slice(part.as_bytes());
        } else {
            for tok in part.split_whitespace().filter(|t| *t != "|") {
                out.push(u8::from_str_radix(tok, 16).expect("hex byte"));
            }
        }
        quoted = !quoted;
    }
    out
}

#[cfg(feature = "alloc")]
mod owned {
    use super::hex;
    use crate::pson::*;
    use alloc::vec;

    fn golden(v: Value, bytes: &str) {
        let want = hex(bytes);
        assert_eq!(v.to_bytes(), want, "encode {v:?}");
        assert_eq!(v.encoded_len(), want.len(), "encoded_len {v:?}");
        let mut slice = [0u8; 64];
        let mut sink = crate::SliceSink::new(&mut slice);
        v.encode(&mut sink).expect("fits");
        assert_eq!(sink.written(), &want[..], "generic encode {v:?}");
        assert_eq!(Value::decode(&want), Ok(v.clone()), "decode {bytes}");
        let r = ValueRef::decode(&want).expect("ref decode");
        assert_eq!(Value::from_ref(r), v);
        assert_eq!(r.encoded_len(), want.len());
    }

    #[test]
    fn example_1_object() {
        let v = Value::object().with("temp", 21.5).with("on", true);
        golden(v, "6A 0E | 04 74 65 6D 70 | 1D 00 00 AC 41 | 02 6F 6E | 28");
    }

    #[test]
    fn example_2_array() {
        let v = Value::Array(vec![
            0.into(),
            1.into(),
            300.into(),
            (-300).into(),
            "hi".into(),
            123456.789.into(),
            false.into(),
        ]);
        golden(
            v,
            "72 16 | 38 | 40 | 08 AC 02 | 10 AC 02 | 4A 02 68 69 | 21 C9 76 BE 9F 0C 24 FE 40 | 30",
        );
    }

    #[test]
    fn example_3_negative() {
        golden((-1).into(), "10 01");
        golden((-300).into(), "10 AC 02");
        golden((-2147483647).into(), "10 FF FF FF FF 07");
        golden(Value::Int(i64::MIN), "10 80 80 80 80 80 80 80 80 80 01");
    }

    #[test]
    fn example_4_others() {
        golden("hello".into(), "4A 05 68 65 6C 6C 6F");
        golden(Value::Bytes(vec![1, 2, 3]), "5A 03 01 02 03");
        golden(0.5.into(), "1D 00 00 00 3F");
        golden((1e10 + 0.5).into(), "21 00 00 04 20 5F A0 02 42");
        golden(Value::object(), "6A 00");
        golden(Value::Array(vec![]), "72 00");
        golden(
            Value::object().with("a", Value::object().with("b", 1)),
            "6A 07 01 61 6A 03 01 62 40",
        );
        golden(Value::Null, "00");
        golden(Value::Unset, "78");
        golden("".into(), "50");
        golden(Value::Bytes(vec![]), "60");
        golden(Value::UInt(u64::MAX), "08 FF FF FF FF FF FF FF FF FF 01");
    }

    #[test]
    fn number_rules() {
        assert_eq!(Value::from(22.0), Value::Int(22));
        assert_eq!(Value::from(22.0).to_bytes(), hex("08 16"));
        assert_eq!(Value::from(21.5), Value::Float(21.5));
        assert_eq!(Value::from(core::f64::consts::PI), Value::Float(core::f32::consts::PI));
        assert_eq!(Value::from(123456.789), Value::Double(123456.789));
        assert_eq!(Value::from(-0.0), Value::Int(0));
        assert_eq!(Value::from(1e19), Value::UInt(10_000_000_000_000_000_000));
        assert!(matches!(Value::from(f64::NAN), Value::Double(d) if d.is_nan()));
        assert_eq!(Value::from(f64::INFINITY), Value::Double(f64::INFINITY));
    }

    #[test]
    fn long_container_lengths_are_back_patched() {
        let long = "x".repeat(300);
        let v = Value::Array(vec![
            long.as_str().into(),
            Value::object().with(&long, vec![Value::Int(5)]),
        ]);
        let bytes = v.to_bytes();
        assert_eq!(bytes.len(), v.encoded_len());
        assert_eq!(Value::decode(&bytes), Ok(v));
    }

    #[test]
    fn empty_lengths_are_accepted() {
        assert_eq!(Value::decode(&hex("4A 00")), Ok(Value::Str("".into())));
        assert_eq!(Value::decode(&hex("5A 00")), Ok(Value::Bytes(vec![])));
    }

    #[test]
    fn overlong_tags_are_read_as_varints_like_the_device_does() {
        // Found by the fuzzer: `80 00` is tag 0 (null) in a two-byte varint. Both decoders,
        // at the top and inside containers, must take it the same way.
        for (bytes, want) in [
            ("80 00", Value::Null),
            ("72 02 80 00", Value::Array(vec![Value::Null])),
            ("6A 04 01 61 C0 00", Value::object().with("a", 1)),
        ] {
            let b = hex(bytes);
            assert_eq!(Value::decode(&b), Ok(want.clone()), "owned {bytes}");
            assert_eq!(ValueRef::decode(&b).map(Value::from_ref), Ok(want), "ref {bytes}");
        }
        for bytes in ["72 03 80 80 01", "72 02 80 03", "72 03 98 80 00"] {
            let b = hex(bytes);
            assert_eq!(Value::decode(&b).err(), ValueRef::decode(&b).err(), "{bytes}");
            assert!(Value::decode(&b).is_err(), "{bytes}");
        }
    }

    #[test]
    fn duplicates_keep_order_first_wins() {
        let bytes = hex("6A 06 01 61 40 01 61 38");
        let v = Value::decode(&bytes).expect("valid");
        assert_eq!(v.get("a"), Some(&Value::Int(1)));
        assert_eq!(v.to_bytes(), bytes);
    }

    #[test]
    fn strictness() {
        let bad: &[(&str, DecodeError)] = &[
            ("", DecodeError::Truncated),
            ("08", DecodeError::Truncated),
            ("1D 00 00", DecodeError::Truncated),
            ("4A 05 68 65", DecodeError::Truncated),
            ("4A 02 FF FE", DecodeError::InvalidUtf8),
            ("6A 02 01 61", DecodeError::LengthMismatch),
            ("6A 03 01 61 40 00", DecodeError::TrailingBytes { count: 1 }),
            ("72 02 08", DecodeError::Truncated),
            ("72 01 08", DecodeError::LengthMismatch),
            ("6A 04 01 62 4A 05", DecodeError::LengthMismatch),
            ("80", DecodeError::Truncated),
            ("18", DecodeError::UnknownType { tag: 0x18 }),
            ("4C", DecodeError::UnknownType { tag: 0x4C }),
            ("80 01", DecodeError::UnknownType { tag: 0x80 }),
            ("10 81 80 80 80 80 80 80 80 80 01", DecodeError::IntegerRange),
            ("08 FF FF FF FF FF FF FF FF FF 02", DecodeError::VarintOverflow),
            ("4A FF FF FF FF 1F", DecodeError::VarintOverflow),
            ("38 38", DecodeError::TrailingBytes { count: 1 }),
        ];
        for (bytes, err) in bad {
            let b = hex(bytes);
            assert_eq!(Value::decode(&b), Err(*err), "owned {bytes}");
            assert_eq!(ValueRef::decode(&b).err(), Some(*err), "ref {bytes}");
        }
    }

    #[test]
    fn depth_and_size_limits() {
        let mut v = Value::Int(5);
        for _ in 0..10 {
            v = Value::Array(vec![v]);
        }
        let bytes = v.to_bytes();
        let tight = Limits {
            max_depth: 9,
            max_size: 1024,
        };
        let ok = Limits {
            max_depth: 10,
            max_size: 1024,
        };
        assert_eq!(
            Value::decode_with(&bytes, &tight),
            Err(DecodeError::TooDeep { limit: 9 })
        );
        assert_eq!(
            ValueRef::decode_with(&bytes, &tight).err(),
            Some(DecodeError::TooDeep { limit: 9 })
        );
        assert!(Value::decode_with(&bytes, &ok).is_ok());
        assert!(ValueRef::decode_with(&bytes, &ok).is_ok());
        let small = Limits {
            max_depth: 32,
            max_size: 8,
        };
        assert_eq!(
            Value::decode_with(&bytes, &small),
            Err(DecodeError::TooLarge { limit: 8 })
        );
        assert_eq!(
            ValueRef::decode_with(&bytes, &small).err(),
            Some(DecodeError::TooLarge { limit: 8 })
        );
    }
}

#[test]
fn ref_decode_without_alloc() {
    let b = hex("6A 0E | 04 74 65 6D 70 | 1D 00 00 AC 41 | 02 6F 6E | 28");
    let v = ValueRef::decode(&b).expect("valid");
    assert_eq!(v.get("temp"), Some(ValueRef::Float(21.5)));
    assert_eq!(v.get("on"), Some(ValueRef::Bool(true)));
    assert_eq!(v.get("off"), None);
    let mut out = [0u8; 16];
    let mut sink = crate::SliceSink::new(&mut out);
    v.encode(&mut sink).expect("fits");
    assert_eq!(sink.written(), &b[..]);
    let mut tiny = [0u8; 4];
    assert_eq!(v.encode(&mut crate::SliceSink::new(&mut tiny)), Err(crate::BufferFull));
}
