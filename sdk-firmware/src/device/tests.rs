//! The runtime answers the server's side of the captured exchange (§2.6) with exactly the
//! captured device bytes.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::frame::{FrameDecoder, FrameLimits};

/// The device of §2.6: temp `>>` 21.5, led `<<`, sum `=`, reboot (run), cfg/level `>>` 7.
pub(crate) fn spec_device() -> (Thing, Arc<AtomicBool>, Arc<AtomicBool>) {
    let mut t = Thing::default();
    let led = Arc::new(AtomicBool::new(false));
    let rebooted = Arc::new(AtomicBool::new(false));
    t.resource("temp").output(|out| *out = 21.5.into());
    t.resource("led").input_bool(led.clone());
    t.resource("sum").input_output(|input, out| {
        let a = input.entry("value1").or_insert(0).as_i64().unwrap_or(0);
        let b = input.entry("value2").or_insert(0).as_i64().unwrap_or(0);
        *out.entry("result") = (a + b).into();
    });
    let r = rebooted.clone();
    t.resource("reboot").run(move || r.store(true, Ordering::SeqCst));
    t.resource("cfg").resource("level").output(|out| *out = 7.into());
    (t, led, rebooted)
}

fn fixture(label: &str) -> Vec<u8> {
    crate::frame::tests::exchange()
        .into_iter()
        .find(|(_, l, _)| *l == label)
        .map(|(_, _, b)| b)
        .unwrap_or_else(|| panic!("no frame {label}"))
}

fn feed(t: &mut Thing, label: &str, now: u64) {
    let mut d = FrameDecoder::new(FrameLimits::DEFAULT);
    d.push(&fixture(label));
    let f = d.next_frame().expect("valid").expect("complete");
    t.handle_frame(f, now);
}

fn sent(t: &mut Thing) -> Vec<Vec<u8>> {
    core::iter::from_fn(|| t.poll_transmit()).collect()
}

fn expect(t: &mut Thing, labels: &[&str]) {
    let want: Vec<Vec<u8>> = labels.iter().map(|l| fixture(l)).collect();
    assert_eq!(sent(t), want, "expected {labels:?}");
}

#[test]
fn answers_the_captured_exchange_byte_for_byte() {
    let (mut t, led, rebooted) = spec_device();
    t.connected("alice", "sensor1", "s3cr3t!", 0);
    expect(&mut t, &["auth"]);
    feed(&mut t, "auth_ok", 0);
    assert_eq!(t.poll_event(), Some(Event::Authenticated));
    expect(&mut t, &["keep_alive"]);
    feed(&mut t, "keep_alive", 0);
    let steps: &[(&str, &[&str])] = &[
        ("describe", &["describe_reply"]),
        ("template", &["template_reply"]),
        ("read_temp", &["read_temp_reply"]),
        ("set_led", &["set_led_reply"]),
        ("call_sum", &["call_sum_reply"]),
        ("run_reboot", &["run_reboot_reply"]),
        ("read_cfg_level", &["cfg_level_reply"]),
        ("unknown", &["unknown_reply"]),
        ("start_stream", &["start_reply", "sample"]),
    ];
    for (req, replies) in steps {
        feed(&mut t, req, 10);
        expect(&mut t, replies);
    }
    assert!(led.load(Ordering::SeqCst));
    assert!(rebooted.load(Ordering::SeqCst));
    // Samples every 1000 ms.
    t.poll(500);
    expect(&mut t, &[]);
    t.poll(1010);
    expect(&mut t, &["sample"]);
    t.poll(2010);
    expect(&mut t, &["sample"]);
    feed(&mut t, "stop_stream", 2100);
    expect(&mut t, &["stop_reply"]);
    t.poll(3010);
    expect(&mut t, &[]);
    // Event stream on the input: current state at once.
    feed(&mut t, "start_event", 3100);
    expect(&mut t, &["start_ev_reply", "event"]);
    assert!(t.stream(&["led"]));
    expect(&mut t, &["event"]);
    assert!(!t.stream(&["temp"]));

    // Device requests.
    let id = t
        .call_endpoint("email_alert", Some(Value::object().with("temp", 31.5)), true)
        .expect("confirmed");
    // The fixture's id is glibc's 17767; ours is our own random id, so compare the rest.
    let m = Message::new(u32::from(id.0), Signal::CallEndpoint)
        .with_identifier("email_alert")
        .with_payload(Value::object().with("temp", 31.5));
    assert_eq!(sent(&mut t), vec![m.to_frame()]);
    t.handle_frame(Frame::Message(Message::ok(u32::from(id.0), None)), 3200);
    assert_eq!(t.poll_event(), Some(Event::Ack { request: id, ok: true }));
    assert_eq!(t.write_bucket("b1", Value::object().with("t", 20), false), None);
    expect(&mut t, &["bucket_data"]);
    t.get_property("cfg");
    expect(&mut t, &["get_property"]);
    feed(&mut t, "property_value", 3300);
    assert_eq!(
        t.poll_event(),
        Some(Event::Property {
            name: "cfg".into(),
            value: Some(Value::object().with("x", 1))
        })
    );
    t.set_property("cfg2", Value::object().with("mode", "eco"), false);
    expect(&mut t, &["set_property"]);
    t.call_device("devB", &["led"], None, false);
    expect(&mut t, &["call_device"]);
    t.call_endpoint("email_alert", Some(Value::object().with("temp", 31.5)), false);
    expect(&mut t, &["endpoint_noack"]);
}

#[test]
fn writes_to_a_streamed_input_follow_the_reply_with_an_event() {
    let (mut t, _, _) = spec_device();
    t.connected("a", "b", "c", 0);
    t.handle_frame(Frame::Message(Message::ok(0, None)), 0);
    sent(&mut t);
    t.handle_frame(
        Frame::Message(Message::new(5, Signal::StartStream).with_path(&["led"])),
        1,
    );
    sent(&mut t);
    t.handle_frame(
        Frame::Message(Message::new(6, Signal::None).with_path(&["led"]).with_payload(true)),
        2,
    );
    assert_eq!(
        sent(&mut t),
        vec![
            Message::ok(6, None).to_frame(),
            Message::new(5, Signal::StreamEvent)
                .with_payload(Value::object().with("in", true))
                .to_frame()
        ]
    );
}

#[test]
fn odd_requests() {
    let (mut t, _, _) = spec_device();
    t.connected("a", "b", "c", 0);
    t.handle_frame(Frame::Message(Message::ok(0, None)), 0);
    sent(&mut t);
    // Stream id 0: run, but no reply.
    t.handle_frame(Frame::Message(Message::new(0, Signal::None).with_path(&["temp"])), 1);
    assert!(sent(&mut t).is_empty());
    // A plain string path is the empty path: OK, no payload.
    t.handle_frame(
        Frame::Message(Message {
            resource: Some("temp".into()),
            ..Message::new(3, Signal::None)
        }),
        1,
    );
    assert_eq!(sent(&mut t), vec![Message::ok(3, None).to_frame()]);
    // Non-string path element, and no resource at all: errors.
    t.handle_frame(
        Frame::Message(Message {
            resource: Some(Value::Array(vec![1.into()])),
            ..Message::new(4, Signal::None)
        }),
        1,
    );
    t.handle_frame(Frame::Message(Message::new(5, Signal::None)), 1);
    assert_eq!(
        sent(&mut t),
        vec![Message::error(4).to_frame(), Message::error(5).to_frame()]
    );
    // Templates: run → {}, parent → {}, in/out → out then in.
    t.handle_frame(
        Frame::Message(Message::new(6, Signal::None).with_path(&["sum", "api"])),
        1,
    );
    t.handle_frame(
        Frame::Message(Message::new(7, Signal::None).with_path(&["reboot", "api"])),
        1,
    );
    t.handle_frame(
        Frame::Message(Message::new(8, Signal::None).with_path(&["cfg", "api"])),
        1,
    );
    let sum = Value::object()
        .with("out", Value::object().with("result", 0))
        .with("in", Value::object().with("value1", 0).with("value2", 0));
    assert_eq!(
        sent(&mut t),
        vec![
            Message::ok(6, Some(sum)).to_frame(),
            Message::ok(7, Some(Value::object())).to_frame(),
            Message::ok(8, Some(Value::object())).to_frame()
        ]
    );
}

#[test]
fn auth_rejection_and_keep_alive_timeout() {
    let (mut t, _, _) = spec_device();
    t.connected("a", "b", "bad", 0);
    t.handle_frame(Frame::Message(Message::error(0)), 0);
    assert_eq!(t.poll_event(), Some(Event::AuthRejected));
    assert!(!t.is_connected());

    t.connected("a", "b", "c", 0);
    t.handle_frame(Frame::Message(Message::ok(0, None)), 0);
    assert_eq!(t.poll_event(), Some(Event::Authenticated));
    sent(&mut t);
    // The hello keep-alive is answered; the next one is not.
    t.handle_frame(Frame::KeepAlive, 5);
    t.poll(60_000);
    assert_eq!(sent(&mut t), vec![crate::frame::KEEP_ALIVE.to_vec()]);
    assert_eq!(t.next_deadline(), Some(120_000));
    t.poll(120_000);
    assert_eq!(t.poll_event(), Some(Event::KeepAliveTimeout));
    assert!(!t.is_connected());
}
