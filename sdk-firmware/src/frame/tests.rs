//! Every frame of the captured exchange (§2.6), both directions, plus strictness checks.

use super::*;
use crate::pson::tests_support::hex;

/// (direction, label, bytes) for each line of the fixture.
pub(crate) fn exchange() -> alloc::vec::Vec<(&'static str, &'static str, alloc::vec::Vec<u8>)> {
    include_str!("../../tests/data/exchange-2.6.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (head, bytes) = l.split_once(':').expect("label : bytes");
            let mut words = head.split_whitespace();
            let dir = words.next().expect("direction");
            let label = words.next().expect("label");
            (dir, label, hex(bytes))
        })
        .collect()
}

#[test]
fn every_exchange_frame_decodes_whole() {
    for (_, label, bytes) in exchange() {
        let (frame, used) = decode_frame(&bytes, &FrameLimits::DEFAULT)
            .unwrap_or_else(|e| panic!("{label}: {e}"))
            .unwrap_or_else(|| panic!("{label}: incomplete"));
        assert_eq!(used, bytes.len(), "{label}");
        if let FrameRef::Message(m) = frame {
            // The borrowed encoder reproduces the frame byte for byte.
            let mut out = [0u8; 256];
            let mut sink = crate::SliceSink::new(&mut out);
            m.encode_frame(&mut sink).expect("fits");
            assert_eq!(sink.written(), &bytes[..], "{label}");
        }
        // Every strict prefix is incomplete, never an error or a frame.
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut], &FrameLimits::DEFAULT),
                Ok(None),
                "{label} cut at {cut}"
            );
        }
    }
}

#[cfg(feature = "alloc")]
mod owned {
    use super::exchange;
    use crate::frame::*;
    use crate::pson::Value;
    use alloc::vec;

    fn api_entry(fn_: i64) -> Value {
        Value::object().with("al", 0).with("fn", fn_)
    }

    /// What each frame of the exchange means, built with the public API.
    fn expected(label: &str) -> Frame {
        let m = |sid, sig| Message::new(sid, sig);
        let out_215 = Value::object().with("out", 21.5);
        Frame::Message(match label {
            "keep_alive" => return Frame::KeepAlive,
            "auth" => Message::auth("alice", "sensor1", "s3cr3t!"),
            "auth_ok" => Message::ok(0, None),
            "describe" => m(1, Signal::None).with_path(&["api"]),
            "describe_reply" => Message::ok(
                1,
                Some(
                    Value::object()
                        .with("temp", api_entry(3))
                        .with("led", api_entry(2))
                        .with("sum", api_entry(4))
                        .with("reboot", api_entry(1))
                        .with(
                            "cfg",
                            Value::object().with("/", Value::object().with("level", api_entry(3))),
                        ),
                ),
            ),
            "template" => m(2, Signal::None).with_path(&["temp", "api"]),
            "template_reply" => Message::ok(2, Some(out_215)),
            "read_temp" => m(7, Signal::None).with_path(&["temp"]),
            "read_temp_reply" => Message::ok(7, Some(21.5.into())),
            "set_led" => m(8, Signal::None).with_path(&["led"]).with_payload(true),
            "set_led_reply" => Message::ok(8, None),
            "call_sum" => m(10, Signal::None)
                .with_path(&["sum"])
                .with_payload(Value::object().with("value1", 2).with("value2", 3)),
            "call_sum_reply" => Message::ok(10, Some(Value::object().with("result", 5))),
            "run_reboot" => m(11, Signal::None).with_path(&["reboot"]),
            "run_reboot_reply" => Message::ok(11, None),
            "read_cfg_level" => m(12, Signal::None).with_path(&["cfg", "level"]),
            "cfg_level_reply" => Message::ok(12, Some(7.into())),
            "unknown" => m(13, Signal::None).with_path(&["nope"]),
            "unknown_reply" => Message::error(13),
            "start_stream" => m(15, Signal::StartStream).with_path(&["temp"]).with_payload(1000),
            "start_reply" => Message::ok(15, None),
            "sample" => m(15, Signal::StreamSample).with_payload(out_215),
            "stop_stream" => m(16, Signal::StopStream).with_path(&["temp"]),
            "stop_reply" => Message::ok(16, None),
            "start_event" => m(17, Signal::StartStream).with_path(&["led"]),
            "start_ev_reply" => Message::ok(17, None),
            "event" => m(17, Signal::StreamEvent).with_payload(Value::object().with("in", true)),
            "call_endpoint" => m(17767, Signal::CallEndpoint)
                .with_identifier("email_alert")
                .with_payload(Value::object().with("temp", 31.5)),
            "endpoint_ack" => Message::ok(17767, None),
            "endpoint_noack" => m(0, Signal::CallEndpoint)
                .with_identifier("email_alert")
                .with_payload(Value::object().with("temp", 31.5)),
            "bucket_data" => m(0, Signal::BucketData)
                .with_identifier("b1")
                .with_payload(Value::object().with("t", 20)),
            "get_property" => m(0, Signal::GetProperty).with_identifier("cfg"),
            "property_value" => Message::ok(0, Some(Value::object().with("x", 1))),
            "set_property" => m(0, Signal::SetProperty)
                .with_identifier("cfg2")
                .with_payload(Value::object().with("mode", "eco")),
            "call_device" => m(0, Signal::CallDevice).with_identifier("devB").with_path(&["led"]),
            other => panic!("no expectation for {other}"),
        })
    }

    #[test]
    fn exchange_encodes_and_decodes_byte_for_byte() {
        for (_, label, bytes) in exchange() {
            let want = expected(label);
            assert_eq!(want.to_bytes(), bytes, "encode {label}");
            let mut dec = FrameDecoder::new(FrameLimits::DEFAULT);
            dec.push(&bytes);
            assert_eq!(dec.next_frame(), Ok(Some(want)), "decode {label}");
            assert_eq!(dec.next_frame(), Ok(None));
        }
    }

    #[test]
    fn decoder_takes_the_stream_a_byte_at_a_time() {
        let all: vec::Vec<u8> = exchange().into_iter().flat_map(|(_, _, b)| b).collect();
        let mut dec = FrameDecoder::new(FrameLimits::DEFAULT);
        let mut frames = vec![];
        for b in &all {
            dec.push(core::slice::from_ref(b));
            while let Some(f) = dec.next_frame().expect("valid stream") {
                frames.push(f);
            }
        }
        let want: vec::Vec<Frame> = exchange().into_iter().map(|(_, l, _)| expected(l)).collect();
        assert_eq!(frames, want);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn paths() {
        let m = Message::new(1, Signal::None).with_path(&["cfg", "level"]);
        assert_eq!(m.path(), Some(vec!["cfg", "level"]));
        let plain = Message {
            resource: Some("temp".into()),
            ..Message::new(1, Signal::None)
        };
        assert_eq!(plain.path(), None);
        let mixed = Message {
            resource: Some(Value::Array(vec!["a".into(), 1.into()])),
            ..Message::default()
        };
        assert_eq!(mixed.path(), None);
    }
}

#[test]
fn strictness() {
    let l = FrameLimits {
        max_body: 16,
        max_depth: 4,
    };
    let cases: &[(&str, FrameError)] = &[
        ("03 00", FrameError::UnknownFrameType { frame_type: 3 }),
        ("01 11", FrameError::TooLarge { len: 17, limit: 16 }),
        ("01 FF FF FF FF 7F", FrameError::HeaderOverflow),
        ("01 01 08", FrameError::Truncated),
        ("01 02 0B 00", FrameError::BadField { field: 1, wire: 3 }),
        ("01 02 0A 00", FrameError::BadField { field: 1, wire: 2 }),
        (
            "01 02 36 18",
            FrameError::Pson(crate::pson::DecodeError::UnknownType { tag: 0x18 }),
        ),
        ("01 02 3E 00", FrameError::UnknownPsonField { field: 7 }),
        ("01 02 2E 00", FrameError::UnknownPsonField { field: 5 }),
        ("01 03 36 4A 05", FrameError::Pson(crate::pson::DecodeError::Truncated)),
    ];
    for (bytes, err) in cases {
        assert_eq!(decode_frame(&hex(bytes), &l), Err(*err), "{bytes}");
    }
}

#[test]
fn unknown_non_pson_fields_are_skipped() {
    // field 7 varint, field 8 fixed64, field 9 length-delimited, field 10 fixed32, then STREAM_ID 5
    let b = hex("01 19 38 96 01 41 01 02 03 04 05 06 07 08 4A 02 AA BB 55 01 02 03 04 08 05 10 01");
    let (f, _) = decode_frame(&b, &FrameLimits::DEFAULT)
        .expect("valid")
        .expect("complete");
    assert_eq!(f, FrameRef::Message(MessageRef::new(5, Signal::RequestOk)));
}

#[test]
fn keep_alive_with_a_body_is_skipped_whole() {
    let b = hex("02 02 AA BB 02 00");
    assert_eq!(
        decode_frame(&b, &FrameLimits::DEFAULT),
        Ok(Some((FrameRef::KeepAlive, 4)))
    );
}
