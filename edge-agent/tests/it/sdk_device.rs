//! The SDK's own client, running the §2.6 device, against the listener over real TCP and TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use twinlake_edge::listener::{DeviceEventKind, ListenerConfig};
use twinlake_sdk::client::{Client, ClientConfig, Tls};
use twinlake_sdk::device::{Config, Thing};
use twinlake_sdk::pson::Value;

use crate::support::{Server, start};

/// What the test asks the device thread to do.
enum Do {
    ConfirmedEndpoint(Value, std_mpsc::Sender<bool>),
    Bucket(Value),
    GetProperty(String, std_mpsc::Sender<Option<Value>>),
    SetProperty(String, Value),
    Status(std_mpsc::Sender<(bool, u64)>),
}

struct Device {
    todo: std_mpsc::Sender<Do>,
    stop: Arc<AtomicBool>,
    rebooted: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Device {
    fn ask<T>(&self, f: impl FnOnce(std_mpsc::Sender<T>) -> Do) -> T {
        let (tx, rx) = std_mpsc::channel();
        self.todo.send(f(tx)).expect("device thread alive");
        rx.recv_timeout(Duration::from_secs(10)).expect("device answered")
    }
}

/// The device of §2.6, with a 200 ms keep-alive so the test sees several.
fn spawn_device(config: ClientConfig) -> Device {
    let mut thing = Thing::new(Config {
        keep_alive_ms: 200,
        ..Config::default()
    });
    let led = Arc::new(AtomicBool::new(false));
    let rebooted = Arc::new(AtomicBool::new(false));
    thing.resource("temp").output(|out| *out = 21.5.into());
    thing.resource("led").input_bool(led.clone());
    thing.resource("sum").input_output(|input, out| {
        let a = input.entry("value1").or_insert(0).as_i64().unwrap_or(0);
        let b = input.entry("value2").or_insert(0).as_i64().unwrap_or(0);
        *out.entry("result") = (a + b).into();
    });
    let r = rebooted.clone();
    thing.resource("reboot").run(move || r.store(true, Ordering::SeqCst));
    thing.resource("cfg").resource("level").output(|out| *out = 7.into());

    let (todo, inbox) = std_mpsc::channel::<Do>();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut client = Client::new(config, thing);
        while !s.load(Ordering::SeqCst) {
            let _ = client.handle();
            while let Ok(task) = inbox.try_recv() {
                let t = Duration::from_secs(5);
                match task {
                    Do::ConfirmedEndpoint(v, tx) => {
                        let _ = tx.send(
                            client
                                .call_endpoint_confirmed("email_alert", Some(v), t)
                                .unwrap_or(false),
                        );
                    }
                    Do::Bucket(v) => {
                        client.thing().write_bucket("b1", v, false);
                    }
                    Do::GetProperty(name, tx) => {
                        let _ = tx.send(client.get_property(&name, t).ok().flatten());
                    }
                    Do::SetProperty(name, v) => {
                        client.thing().set_property(&name, v, false);
                    }
                    Do::Status(tx) => {
                        let _ = tx.send((client.is_connected(), client.stats().connects));
                    }
                }
            }
        }
    });
    Device {
        todo,
        stop,
        rebooted,
        thread: Some(thread),
    }
}

fn client_config(srv: &Server, tls: bool) -> ClientConfig {
    let (addr, host) = match tls {
        true => (srv.tls.expect("tls"), "localhost"),
        false => (srv.tcp, "127.0.0.1"),
    };
    let mut c = ClientConfig::new(host, addr.port(), "alice", "sensor1", "s3cr3t!");
    c.poll_interval = Duration::from_millis(20);
    c.reconnect_min = Duration::from_millis(100);
    if tls {
        c.tls = Tls::from_ca_pem(srv.ca_pem.as_bytes()).expect("ca");
    }
    c
}

async fn exercise(tls: bool) {
    let mut srv = start(ListenerConfig::default(), tls).await;
    let dev = spawn_device(client_config(&srv, tls));
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(10))
        .await
        .expect("device online");

    let api = h.describe().await.expect("describe");
    let entry = |f: i64| Value::object().with("al", 0).with("fn", f);
    assert_eq!(
        api,
        Value::object()
            .with("temp", entry(3))
            .with("led", entry(2))
            .with("sum", entry(4))
            .with("reboot", entry(1))
            .with(
                "cfg",
                Value::object().with("/", Value::object().with("level", entry(3)))
            )
    );
    assert_eq!(h.read(&["temp"]).await.expect("read"), Some(Value::Float(21.5)));
    h.write(&["led"], true.into()).await.expect("write");
    assert_eq!(
        h.template(&["led"]).await.expect("template"),
        Value::object().with("in", true)
    );
    let sum = h
        .call(&["sum"], Some(Value::object().with("value1", 2).with("value2", 3)))
        .await;
    assert_eq!(sum.expect("call"), Some(Value::object().with("result", 5)));
    h.run(&["reboot"]).await.expect("run");
    assert!(dev.rebooted.load(Ordering::SeqCst));
    assert_eq!(
        h.read(&["cfg", "level"]).await.expect("sub-resource"),
        Some(Value::Int(7))
    );
    assert!(matches!(
        h.read(&["nope"]).await,
        Err(twinlake_edge::Error::DeviceError { .. })
    ));

    // An interval stream delivers samples until stopped.
    h.start_stream(&["temp"], Some(Duration::from_millis(50)))
        .await
        .expect("start");
    for _ in 0..3 {
        assert_eq!(
            srv.next_event().await,
            DeviceEventKind::Stream {
                path: vec!["temp".into()],
                payload: Some(Value::object().with("out", 21.5)),
                sample: true
            }
        );
    }
    h.stop_stream(&["temp"]).await.expect("stop");
    tokio::time::sleep(Duration::from_millis(150)).await;
    srv.drain();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(srv.events.try_recv().is_err(), "no samples after STOP_STREAM");

    // An event stream: the current state at once, then every write.
    h.start_stream(&["led"], None).await.expect("event stream");
    let led = |on: bool| DeviceEventKind::Stream {
        path: vec!["led".into()],
        payload: Some(Value::object().with("in", on)),
        sample: false,
    };
    assert_eq!(srv.next_event().await, led(true));
    h.write(&["led"], false.into()).await.expect("write");
    assert_eq!(srv.next_event().await, led(false));

    // Device requests: a confirmed endpoint call, a bucket write, properties.
    let payload = Value::object().with("temp", 31.5);
    // The listener hands the confirmation to whoever takes the event.
    let (tx, confirmed) = std_mpsc::channel();
    dev.todo.send(Do::ConfirmedEndpoint(payload.clone(), tx)).expect("send");
    match srv.next_event().await {
        DeviceEventKind::Endpoint {
            endpoint,
            payload: p,
            ack,
        } => {
            assert_eq!((endpoint.as_str(), p), ("email_alert", Some(payload)));
            ack.expect("the device wants a confirmation").ack(true);
        }
        other => panic!("expected an endpoint call, got {other:?}"),
    }
    let confirmed = tokio::task::spawn_blocking(move || confirmed.recv_timeout(Duration::from_secs(10)));
    assert!(
        confirmed.await.expect("join").expect("answered"),
        "endpoint call confirmed"
    );
    dev.todo.send(Do::Bucket(Value::object().with("t", 20))).expect("send");
    let t20 = Value::object().with("t", 20).to_bytes();
    assert_eq!(srv.next_buckets().await, [("b1".to_owned(), Some(t20), false)]);
    srv.devices
        .set_property("alice", "sensor1", "cfg", Value::object().with("x", 1));
    assert_eq!(
        dev.ask(|tx| Do::GetProperty("cfg".into(), tx)),
        Some(Value::object().with("x", 1))
    );
    dev.todo
        .send(Do::SetProperty("mode".into(), "eco".into()))
        .expect("send");
    assert!(matches!(srv.next_event().await, DeviceEventKind::PropertySet { property, .. } if property == "mode"));

    // Keep-alives both ways: with a 200 ms interval the device would drop the connection
    // if one went unanswered; after a second it is still on its first connection.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(dev.ask(Do::Status), (true, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_device_over_tcp() {
    exercise(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_device_over_tls() {
    exercise(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_device_reconnects_after_the_server_drops_it() {
    let srv = start(ListenerConfig::default(), false).await;
    let dev = spawn_device(client_config(&srv, false));
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(10))
        .await
        .expect("online");
    h.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(10))
        .await
        .expect("back online");
    assert_eq!(h.read(&["temp"]).await.expect("read"), Some(Value::Float(21.5)));
    let (connected, connects) = dev.ask(Do::Status);
    assert!(connected);
    assert_eq!(connects, 2);
}

/// The SDK's example device (`sdk-firmware/examples/sensor.rs`), its own source.
#[path = "../../../sdk-firmware/examples/sensor.rs"]
#[allow(dead_code)]
mod example;

async fn example_device(tls: bool) {
    let srv = start(ListenerConfig::default(), tls).await;
    let mut config = client_config(&srv, tls);
    config.device = "sensor1".into();
    let (thing, led) = example::sensor_thing();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || Client::new(config, thing).run(&s, |_| {}));
    let h = srv
        .devices
        .wait_for("alice", "sensor1", Duration::from_secs(10))
        .await
        .expect("online");

    let entry = |f: i64| Value::object().with("al", 0).with("fn", f);
    assert_eq!(
        h.describe().await.expect("describe"),
        Value::object()
            .with("led", entry(2))
            .with("millis", entry(3))
            .with("in_out", entry(4))
    );
    assert!(matches!(h.read(&["millis"]).await.expect("read"), Some(Value::Int(ms)) if ms >= 0));
    h.write(&["led"], true.into()).await.expect("write");
    assert!(led.load(Ordering::SeqCst));
    let out = h
        .call(&["in_out"], Some(Value::object().with("value1", 3).with("value2", 4)))
        .await;
    assert_eq!(
        out.expect("call"),
        Some(Value::object().with("sum", 7).with("mult", 12))
    );
    assert_eq!(
        h.template(&["in_out"]).await.expect("template"),
        Value::object()
            .with("out", Value::object().with("sum", 0).with("mult", 0))
            .with("in", Value::object().with("value1", 0).with("value2", 0))
    );
    stop.store(true, Ordering::SeqCst);
    thread.join().expect("device thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_device_over_tcp() {
    example_device(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_device_over_tls() {
    example_device(true).await;
}
