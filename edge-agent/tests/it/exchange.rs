//! A scripted device that speaks exactly the captured bytes of §2.6 over TCP. The listener
//! must answer with the captured server bytes (stream ids aside, which are the server's to
//! pick: they are checked to be non-zero and echoed).

use std::time::Duration;

use twinlake_edge::listener::{DeviceEventKind, DeviceHandle, ListenerConfig};
use twinlake_sdk::frame::{Frame, FrameLimits, Message};
use twinlake_sdk::pson::Value;

use crate::support::{RawPeer, fixture, fixture_message, start};

/// The fixture message re-addressed to stream id `sid`.
fn with_sid(label: &str, sid: u32) -> Vec<u8> {
    Message {
        stream_id: sid,
        ..fixture_message(label)
    }
    .to_frame()
}

async fn authed(addr: std::net::SocketAddr) -> RawPeer {
    let mut dev = RawPeer::connect(addr).await;
    dev.send(&fixture("auth")).await;
    assert_eq!(
        dev.frame_bytes().await,
        fixture("auth_ok"),
        "auth answer is exactly 01 02 10 01"
    );
    dev.send(&fixture("keep_alive")).await;
    assert_eq!(
        dev.frame_bytes().await,
        fixture("keep_alive"),
        "keep-alive answer is exactly 02 00"
    );
    dev
}

/// A BUCKET_DATA frame: `payload` written to `bucket`, confirmed on `sid` unless it is 0.
fn bucket_frame(sid: u32, bucket: &str, payload: Value) -> Vec<u8> {
    Message::new(sid, twinlake_sdk::frame::Signal::BucketData)
        .with_identifier(bucket)
        .with_payload(payload)
        .to_frame()
}

/// The bucket of each write, and whether it wants a confirmation.
fn buckets_and_acks(mut rows: twinlake_edge::event::BucketRows) -> Vec<(String, bool)> {
    rows.drain()
        .map(|(w, ack)| (w.bucket.to_owned(), ack.is_some()))
        .collect()
}

/// Server request `req` must arrive as captured (modulo stream id); the device answers with
/// `reply`. Returns the stream id used.
async fn expect_request(dev: &mut RawPeer, req: &str, reply: &str) -> u32 {
    let Some(Frame::Message(got)) = dev.frame().await else {
        panic!("{req}: no message")
    };
    assert_ne!(got.stream_id, 0, "{req}: server requests need a non-zero stream id");
    assert!(got.stream_id <= 65535, "{req}: the device keeps only 16 bits");
    assert_eq!(got.to_frame(), with_sid(req, got.stream_id), "{req}");
    dev.send(&with_sid(reply, got.stream_id)).await;
    got.stream_id
}

/// Runs a handle call in the background while the scripted device answers it.
async fn step<T: Send + 'static>(
    dev: &mut RawPeer,
    call: impl std::future::Future<Output = T> + Send + 'static,
    req: &str,
    reply: &str,
) -> T {
    let call = tokio::spawn(call);
    expect_request(dev, req, reply).await;
    call.await.expect("join")
}

fn with<F, Fut>(h: &DeviceHandle, f: F) -> Fut
where
    F: FnOnce(DeviceHandle) -> Fut,
{
    f(h.clone())
}

#[tokio::test]
async fn captured_exchange_against_the_listener() {
    let mut srv = start(ListenerConfig::default(), false).await;
    let mut dev = authed(srv.tcp).await;
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(5))
        .await
        .expect("online");

    let hh = h.clone();
    let call = tokio::spawn(async move { hh.describe().await });
    expect_request(&mut dev, "describe", "describe_reply").await;
    let api = call.await.expect("join").expect("describe");
    assert_eq!(Some(api), fixture_message("describe_reply").payload);

    let t = step(
        &mut dev,
        with(&h, |h| async move { h.template(&["temp"]).await }),
        "template",
        "template_reply",
    )
    .await;
    assert_eq!(t.expect("template"), Value::object().with("out", 21.5));
    let r = step(
        &mut dev,
        with(&h, |h| async move { h.read(&["temp"]).await }),
        "read_temp",
        "read_temp_reply",
    )
    .await;
    assert_eq!(r.expect("read"), Some(Value::Float(21.5)));
    let w = step(
        &mut dev,
        with(&h, |h| async move { h.write(&["led"], true.into()).await }),
        "set_led",
        "set_led_reply",
    )
    .await;
    w.expect("write");
    let input = Value::object().with("value1", 2).with("value2", 3);
    let c = step(
        &mut dev,
        with(&h, |h| async move { h.call(&["sum"], Some(input)).await }),
        "call_sum",
        "call_sum_reply",
    )
    .await;
    assert_eq!(c.expect("call"), Some(Value::object().with("result", 5)));
    let r = step(
        &mut dev,
        with(&h, |h| async move { h.run(&["reboot"]).await }),
        "run_reboot",
        "run_reboot_reply",
    )
    .await;
    r.expect("run");
    let l = step(
        &mut dev,
        with(&h, |h| async move { h.read(&["cfg", "level"]).await }),
        "read_cfg_level",
        "cfg_level_reply",
    )
    .await;
    assert_eq!(l.expect("sub-resource"), Some(Value::Int(7)));
    let e = step(
        &mut dev,
        with(&h, |h| async move { h.read(&["nope"]).await }),
        "unknown",
        "unknown_reply",
    )
    .await;
    assert!(matches!(e, Err(twinlake_edge::Error::DeviceError { .. })), "{e:?}");

    // Interval stream: START_STREAM with 1000 ms, then samples arrive as events.
    let hh = h.clone();
    let call = tokio::spawn(async move { hh.start_stream(&["temp"], Some(Duration::from_millis(1000))).await });
    let sid = expect_request(&mut dev, "start_stream", "start_reply").await;
    call.await.expect("join").expect("stream started");
    dev.send(&with_sid("sample", sid)).await;
    assert_eq!(
        srv.next_event().await,
        DeviceEventKind::Stream {
            path: vec!["temp".into()],
            payload: Some(Value::object().with("out", 21.5)),
            sample: true
        }
    );
    let hh = h.clone();
    let call = tokio::spawn(async move { hh.stop_stream(&["temp"]).await });
    expect_request(&mut dev, "stop_stream", "stop_reply").await;
    call.await.expect("join").expect("stopped");

    // Event stream: START_STREAM without interval, then the device's event.
    let hh = h.clone();
    let call = tokio::spawn(async move { hh.start_stream(&["led"], None).await });
    let sid = expect_request(&mut dev, "start_event", "start_ev_reply").await;
    call.await.expect("join").expect("event stream");
    dev.send(&with_sid("event", sid)).await;
    assert_eq!(
        srv.next_event().await,
        DeviceEventKind::Stream {
            path: vec!["led".into()],
            payload: Some(Value::object().with("in", true)),
            sample: false
        }
    );

    // Confirmed endpoint call: the ack is exactly the captured bytes (sid 17767 echoed).
    dev.send(&fixture("call_endpoint")).await;
    match srv.next_event().await {
        DeviceEventKind::Endpoint { endpoint, payload, ack } => {
            assert_eq!(endpoint, "email_alert");
            assert_eq!(payload, Some(Value::object().with("temp", 31.5)));
            ack.expect("confirmation wanted").ack(true);
        }
        other => panic!("expected an endpoint call, got {other:?}"),
    }
    assert_eq!(dev.frame_bytes().await, fixture("endpoint_ack"));

    // Unconfirmed requests get no reply; the property get is answered with stream id 0.
    dev.send(&fixture("bucket_data")).await;
    let t20 = Value::object().with("t", 20).to_bytes();
    assert_eq!(srv.next_buckets().await, [("b1".to_owned(), Some(t20), false)]);
    srv.devices
        .set_property("alice", "sensor1", "cfg", Value::object().with("x", 1));
    dev.send(&fixture("get_property")).await;
    assert_eq!(dev.frame_bytes().await, fixture("property_value"));
    dev.send(&fixture("set_property")).await;
    assert!(matches!(srv.next_event().await, DeviceEventKind::PropertySet { property, .. } if property == "cfg2"));
    assert_eq!(
        srv.devices.property("alice", "sensor1", "cfg2"),
        Some(Value::object().with("mode", "eco"))
    );
    dev.send(&fixture("call_device")).await;
    assert!(matches!(srv.next_event().await, DeviceEventKind::CallDevice { target, .. } if target == "devB"));
    dev.send(&fixture("endpoint_noack")).await;
    assert!(matches!(srv.next_event().await, DeviceEventKind::Endpoint { .. }));
    // Nothing was sent for the unconfirmed ones: the next frame is the keep-alive answer.
    dev.send(&fixture("keep_alive")).await;
    assert_eq!(dev.frame_bytes().await, fixture("keep_alive"));
}

#[tokio::test]
async fn bad_credentials_get_an_error_then_a_close() {
    let srv = start(ListenerConfig::default(), false).await;
    let mut dev = RawPeer::connect(srv.tcp).await;
    dev.send(&Message::auth("alice", "sensor1", "wrong").to_frame()).await;
    assert_eq!(dev.frame_bytes().await, vec![0x01, 0x02, 0x10, 0x02]);
    assert!(dev.frame().await.is_none(), "closed after the refusal");
    assert!(srv.devices.get("alice", "sensor1").is_none());
}

#[tokio::test]
async fn protocol_violations_close_the_connection() {
    let srv = start(
        ListenerConfig {
            limits: FrameLimits {
                max_body: 1024,
                max_depth: 8,
            },
            ..ListenerConfig::default()
        },
        false,
    )
    .await;
    // Not AUTH first.
    let mut dev = RawPeer::connect(srv.tcp).await;
    dev.send(&fixture("describe")).await;
    assert!(dev.frame().await.is_none());
    // An unknown frame type after auth.
    let mut dev = authed(srv.tcp).await;
    dev.send(&[0x03, 0x00]).await;
    assert!(dev.frame().await.is_none());
    // A frame over the size limit is refused from its header alone.
    let mut dev = authed(srv.tcp).await;
    dev.send(&[0x01, 0x80, 0x80, 0x04]).await;
    assert!(dev.frame().await.is_none());
    // The listener is still serving.
    let _ = authed(srv.tcp).await;
}

#[tokio::test]
async fn idle_devices_are_disconnected_and_requests_time_out() {
    let cfg = ListenerConfig {
        idle_timeout: Duration::from_millis(400),
        request_timeout: Duration::from_millis(100),
        ..ListenerConfig::default()
    };
    let srv = start(cfg, false).await;
    let mut dev = authed(srv.tcp).await;
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(5))
        .await
        .expect("online");
    // The device never answers: the request times out, the connection stays.
    let err = h.read(&["temp"]).await.expect_err("no answer");
    assert!(
        matches!(err, twinlake_edge::Error::DeviceTimeout { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert!(
        matches!(dev.frame().await, Some(Frame::Message(_))),
        "the request itself arrived"
    );
    // Then silence past the idle timeout closes it.
    assert!(dev.frame().await.is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(srv.devices.get("alice", "sensor1").is_none());
    let err = h.read(&["temp"]).await.expect_err("offline");
    assert!(matches!(err, twinlake_edge::Error::DeviceOffline(_)), "{err:?}");
}

#[tokio::test]
async fn a_reconnecting_device_replaces_its_old_connection() {
    let srv = start(ListenerConfig::default(), false).await;
    let mut old = authed(srv.tcp).await;
    let _new = authed(srv.tcp).await;
    assert!(old.frame().await.is_none(), "the old connection is closed");
    assert!(
        srv.devices.get("alice", "sensor1").is_some(),
        "the new one stays registered"
    );
}

/// Bucket writes that come in together go on as one event in their order, with their own
/// confirmations; any other frame between them keeps its place (the writes before it go
/// first, the ones after it follow).
#[tokio::test]
async fn bucket_writes_of_one_read_keep_their_order_and_their_acks() {
    let mut srv = start(ListenerConfig::default(), false).await;
    let mut dev = authed(srv.tcp).await;
    let bucket = |sid: u32, name: &str, t: i64| bucket_frame(sid, name, Value::object().with("t", t));
    let mut bytes = [bucket(0, "b1", 1), bucket(7, "b1", 2), bucket(0, "b2", 3)].concat();
    bytes.extend(fixture("set_property"));
    bytes.extend(bucket(9, "b1", 4));
    dev.send(&bytes).await;

    let mut before = Vec::new();
    let mut acks = Vec::new();
    let after = loop {
        match srv.next_event().await {
            DeviceEventKind::Buckets(mut rows) => {
                for (w, ack) in rows.drain() {
                    let t = Value::decode(w.payload.expect("a payload")).expect("PSON");
                    before.push((w.bucket.to_owned(), t, ack.is_some()));
                    acks.extend(ack);
                }
            }
            DeviceEventKind::PropertySet { property, .. } => break property,
            other => panic!("unexpected {other:?}"),
        }
    };
    let t = |n: i64| Value::object().with("t", n);
    assert_eq!(
        before,
        [
            ("b1".to_owned(), t(1), false),
            ("b1".to_owned(), t(2), true),
            ("b2".to_owned(), t(3), false)
        ]
    );
    assert_eq!(after, "cfg2");
    let DeviceEventKind::Buckets(rows) = srv.next_event().await else {
        panic!("the write after the property")
    };
    assert_eq!(buckets_and_acks(rows), [("b1".to_owned(), true)]);
    // Each write's confirmation goes to its own stream id.
    for a in acks {
        a.ack(true);
    }
    // (The property write may be confirmed first, on its own stream id.)
    let ok7 = Message::ok(7, None).to_frame();
    for _ in 0..2 {
        if dev.frame_bytes().await == ok7 {
            return;
        }
    }
    panic!("no confirmation on stream 7");
}

/// A listener whose frames may nest deeper than the WAL reads back checks a bucket write
/// as the WAL will: one too deep for it is refused with an error to the device, not
/// confirmed (its row would be lost on replay); one within it goes on as usual.
#[tokio::test]
async fn a_bucket_write_deeper_than_the_wal_reads_is_refused() {
    let wal_depth = twinlake_sdk::pson::Limits::DEFAULT.max_depth;
    let config = ListenerConfig {
        limits: FrameLimits {
            max_body: 64 * 1024,
            max_depth: wal_depth + 8,
        },
        ..ListenerConfig::default()
    };
    let mut srv = start(config, false).await;
    let mut dev = authed(srv.tcp).await;
    let nested = |depth: usize| (0..depth).fold(Value::from(1), |v, _| Value::object().with("a", v));
    let bucket = |sid: u32, v: Value| bucket_frame(sid, "b", v);
    dev.send(&bucket(5, nested(wal_depth + 4))).await;
    assert_eq!(
        dev.frame_bytes().await,
        Message::error(5).to_frame(),
        "refused on its stream"
    );
    dev.send(&bucket(6, nested(3))).await;
    let DeviceEventKind::Buckets(rows) = srv.next_event().await else {
        panic!("the write within the WAL's depth")
    };
    assert_eq!(
        buckets_and_acks(rows),
        [("b".to_owned(), true)],
        "only the write the WAL reads goes on"
    );
}

/// A burst of writes goes on in events of bounded size (about 16 KiB each, the last write
/// may pass it), so the event queue's memory stays bounded; every write arrives, in order.
#[tokio::test]
async fn a_burst_of_bucket_writes_goes_in_bounded_events() {
    let mut srv = start(ListenerConfig::default(), false).await;
    let mut dev = authed(srv.tcp).await;
    let n = 3_000;
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i: i64| bucket_frame(0, "b1", Value::object().with("i", i).with("pad", "x".repeat(40))))
        .collect();
    dev.send(&bytes).await;
    let mut seen = 0;
    while seen < n {
        let DeviceEventKind::Buckets(mut rows) = srv.next_event().await else {
            panic!("expected bucket writes")
        };
        assert!(rows.bytes() < (16 << 10) + 100, "an event of {} bytes", rows.bytes());
        for (w, _) in rows.drain() {
            let v = Value::decode(w.payload.expect("a payload")).expect("PSON");
            assert_eq!(v.get("i").and_then(Value::as_i64), Some(seen));
            seen += 1;
        }
    }
}
