//! The MQTT source against a real Mosquitto, and the LoRaWAN source over real UDP sockets
//! with the spec's vectors and frames npm lora-packet makes: rows in the lake, metrics, and
//! what goes back (commands, PUSH/PULL acks, join accepts, ACK downlinks).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value as Json, json};
use tokio::net::UdpSocket;
use twinlake_edge::EdgeConfig;
use twinlake_edge::arrow::array::RecordBatch;
use twinlake_edge::arrow::compute::cast;
use twinlake_edge::arrow::datatypes::DataType;
use twinlake_edge::arrow::util::display::array_value_to_string;
use twinlake_edge::config::{LoraDevice, LoraProfile, MqttSubscription};
use twinlake_edge::sources::mqtt::payload::Format;
use twinlake_sdk::pson::Value;

use crate::lake::{Running, read_dir_lake, start};
use crate::mosquitto::{Mosquitto, TlsFiles};

const K1: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const K2: &str = "000102030405060708090a0b0c0d0e0f";

/// An agent with only a lake (its listener and metrics on free loopback ports).
pub fn base_config(dir: &Path) -> EdgeConfig {
    let mut c = EdgeConfig {
        gateway: "gw-src".into(),
        data_dir: dir.join("data"),
        ..EdgeConfig::default()
    };
    c.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
    c.upload.url = format!("file://{}", dir.join("lake").display());
    c.buffer.max_age = Duration::from_millis(300);
    c
}

pub async fn stop(agent: Running) {
    agent.stop().await.expect("clean stop");
}

/// Waits until `source` counted exactly `n` messages with `outcome`.
pub async fn wait_count(agent: &Running, source: &'static str, outcome: &'static str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = agent.metrics.source_count(source, outcome);
        if got >= n {
            assert_eq!(got, n, "{source} {outcome}");
            return;
        }
        assert!(Instant::now() < deadline, "{source} {outcome}: {got} of {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every row of `table` in the lake, as column → displayed value.
pub fn rows(lake: &BTreeMap<String, Vec<RecordBatch>>, table: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for (path, batches) in lake {
        if !path.starts_with(&format!("{table}/")) {
            continue;
        }
        for b in batches {
            for i in 0..b.num_rows() {
                let mut row = BTreeMap::new();
                for (f, col) in b.schema().fields().iter().zip(b.columns()) {
                    // Shown without the zone (the display has no zone database).
                    let col = match f.data_type() {
                        DataType::Timestamp(unit, Some(_)) => cast(col, &DataType::Timestamp(*unit, None)).unwrap(),
                        _ => col.clone(),
                    };
                    if col.is_valid(i) {
                        row.insert(f.name().clone(), array_value_to_string(&col, i).unwrap());
                    }
                }
                out.push(row);
            }
        }
    }
    out
}

/// The values of `column` in `table`'s rows, sorted.
pub fn sorted_column(lake: &BTreeMap<String, Vec<RecordBatch>>, table: &str, column: &str) -> Vec<String> {
    let mut v: Vec<String> = rows(lake, table)
        .into_iter()
        .filter_map(|mut r| r.remove(column))
        .collect();
    v.sort_unstable();
    v
}

/// Subscribes to `filter` with `opts`; what arrives comes out as (topic, payload).
async fn watch_commands(
    mut opts: rumqttc::MqttOptions,
    filter: &str,
) -> tokio::sync::mpsc::Receiver<(String, Vec<u8>)> {
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let _client = client;
        while let Ok(ev) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec())).await;
            }
        }
    });
    rx
}

/// Publishes probes with `probe` until the MQTT source takes one (its subscriptions are
/// then in place).
async fn wait_subscribed(agent: &Running, probe: impl Fn()) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.metrics.source_count("mqtt", "accepted") == 0 {
        assert!(Instant::now() < deadline, "the MQTT source never took a message");
        probe();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sub(topic: &str, format: Format) -> MqttSubscription {
    toml::from_str::<MqttSubscription>(&format!("topic = {topic:?}\nformat = {:?}", toml_format(format))).unwrap()
}

fn toml_format(f: Format) -> &'static str {
    match f {
        Format::Json => "json",
        Format::Pson => "pson",
        Format::Plain => "plain",
        Format::Sparkplug => "sparkplug",
        Format::Thingsboard => "thingsboard",
        Format::ThingsboardGateway => "thingsboard_gateway",
        Format::Chirpstack => "chirpstack",
    }
}

fn hex(s: &str) -> Vec<u8> {
    twinlake_edge::sources::unhex(s).unwrap()
}

/// A Sparkplug B payload with one Double metric under alias 3; births also name it (and
/// give its datatype).
fn sparkplug(timestamp: u64, seq: u64, birth: Option<(&str, u32)>, value: f64) -> Vec<u8> {
    use prost::Message as _;
    use twinlake_edge::sources::mqtt::sparkplug::{Metric, MetricValue, Payload};
    Payload {
        timestamp: Some(timestamp),
        metrics: vec![Metric {
            name: birth.map(|(n, _)| n.to_owned()),
            alias: Some(3),
            datatype: birth.map(|(_, d)| d),
            value: Some(MetricValue::Double(value)),
            ..Default::default()
        }],
        seq: Some(seq),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Every payload format through a real Mosquitto into the lake; a resource write for an
/// MQTT device goes out on the command topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_payload_formats_land_in_the_lake() {
    let broker = Mosquitto::start(20);
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(dir.path());
    c.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    c.mqtt.client_id = "edge-formats".into();
    c.mqtt.subscriptions = vec![
        sub("json/{device}/{resource}", Format::Json),
        sub("pson/{device}/{resource}", Format::Pson),
        sub("plain/{device}/{resource}", Format::Plain),
        sub("spBv1.0/#", Format::Sparkplug),
        sub("tb/{device}/v1/devices/me/telemetry", Format::Thingsboard),
        sub("v1/gateway/telemetry", Format::ThingsboardGateway),
        sub("application/+/device/+/event/up", Format::Chirpstack),
    ];
    let agent = start(c).await;

    // The command topic, watched by a plain subscriber.
    let opts = rumqttc::MqttOptions::new("test-commands", "127.0.0.1", broker.port);
    let mut cmd_rx = watch_commands(opts, "twinlake/+/+/set").await;
    wait_subscribed(&agent, || {
        broker.publish_lines("json/probe/climate", 1, &[r#"{"temp":1}"#.into()]);
    })
    .await;
    let probes = agent.metrics.source_count("mqtt", "accepted");

    let sparkplug_birth = sparkplug(1_700_000_000_000, 0, Some(("pressure", 10)), 1.5);
    let sparkplug_alias_data = sparkplug(1_700_000_001_000, 2, None, 2.5);
    let chirpstack = json!({
        "deduplicationId": "3ac7e3c4", "time": "2024-01-01T12:00:00Z",
        "deviceInfo": {"applicationId": "f0c5", "devEui": "0004a30b001c0530", "deviceName": "field-7"},
        "devAddr": "26011bda", "fCnt": 42, "fPort": 2, "dr": 5, "confirmed": true,
        "data": "A2cBEA==",
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -52, "snr": 13.75}],
        "txInfo": {"frequency": 867300000}
    });
    let messages: Vec<(&str, Vec<u8>)> = vec![
        (
            "json/d-json/climate",
            br#"{"temp":21.5,"hum":40,"nested":{"a":1}}"#.to_vec(),
        ),
        (
            "pson/d-pson/climate",
            Value::object().with("temp", Value::Double(22.5)).to_bytes(),
        ),
        ("plain/d-plain/level", b"17".to_vec()),
        ("plain/d-plain/state", b"open".to_vec()),
        ("spBv1.0/plant1/NBIRTH/gw01", sparkplug_birth),
        (
            "spBv1.0/plant1/DDATA/gw01/sensor42",
            hex(
                "0880d095ffbc31121f0a0b74656d70657261747572651880d095ffbc31200a693333333333333b40120c0a066f6e6c696e65200b70011801",
            ),
        ),
        ("spBv1.0/plant1/NDATA/gw01", sparkplug_alias_data),
        (
            "tb/d-tb/v1/devices/me/telemetry",
            br#"{"ts":1451649600512,"values":{"speed":88}}"#.to_vec(),
        ),
        (
            "v1/gateway/telemetry",
            br#"{"Pump A":[{"ts":1451649600513,"values":{"rpm":1200}}]}"#.to_vec(),
        ),
        (
            "application/f0c5/device/0004a30b001c0530/event/up",
            serde_json::to_vec(&chirpstack).unwrap(),
        ),
        ("json/d-json/climate", b"{not json".to_vec()),
    ];
    let (publisher, mut pub_events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("test-pub", "127.0.0.1", broker.port), 64);
    tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
    for (topic, payload) in &messages {
        publisher
            .publish(*topic, rumqttc::QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    wait_count(&agent, "mqtt", "accepted", probes + 10).await;
    wait_count(&agent, "mqtt", "undecodable", 1).await;

    // A Sparkplug death certificate takes its device offline at once.
    let mut watch = agent.watch.resubscribe();
    publisher
        .publish(
            "spBv1.0/plant1/DDEATH/gw01/sensor42",
            rumqttc::QoS::AtLeastOnce,
            false,
            Vec::new(),
        )
        .await
        .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = watch.recv().await.unwrap();
            if let twinlake_edge::listener::DeviceEventKind::Disconnected { reason, .. } = &ev.kind {
                break (ev.device.to_string(), reason.clone());
            }
        }
    })
    .await
    .expect("DDEATH: the device goes offline");
    assert_eq!(gone, ("mqtt/sensor42".to_owned(), "DDEATH".to_owned()));

    // A resource write for an MQTT device: the value as JSON on its command topic.
    let key = twinlake_edge::listener::DeviceKey::new("mqtt", "d-json");
    let control = agent.southbound.get(&key).expect("the device has a route");
    control.write("d-json", "led", &json!({"on": true})).unwrap();
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), cmd_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topic, "twinlake/d-json/led/set");
    assert_eq!(serde_json::from_slice::<Json>(&payload).unwrap(), json!({"on": true}));

    stop(agent).await;
    let lake = read_dir_lake(&dir.path().join("lake"));
    let climate = rows(&lake, "climate");
    let by_dev = |rows: &[BTreeMap<String, String>], d: &str| {
        rows.iter().filter(|r| r["device"] == d).cloned().collect::<Vec<_>>()
    };
    let j = by_dev(&climate, "d-json");
    assert_eq!(j.len(), 1);
    assert_eq!(
        (j[0]["temp"].as_str(), j[0]["hum"].as_str(), j[0]["nested.a"].as_str()),
        ("21.5", "40", "1")
    );
    assert_eq!(by_dev(&climate, "d-pson")[0]["temp"], "22.5");
    assert_eq!(rows(&lake, "level")[0]["value"], "17");
    assert_eq!(rows(&lake, "state")[0]["value"], "open");
    let sp = rows(&lake, "sparkplug");
    let s42 = by_dev(&sp, "sensor42");
    assert_eq!(
        (s42[0]["temperature"].as_str(), s42[0]["online"].as_str()),
        ("27.2", "true")
    );
    assert!(s42[0]["time"].starts_with("2023-11-14T22:13:20"), "{:?}", s42[0]);
    let node = by_dev(&sp, "gw01");
    let pressures: Vec<&str> = node.iter().map(|r| r["pressure"].as_str()).collect();
    assert_eq!(pressures, ["1.5", "2.5"], "the NDATA alias resolves through the NBIRTH");
    let tb = rows(&lake, "telemetry");
    assert_eq!(by_dev(&tb, "d-tb")[0]["speed"], "88");
    assert!(by_dev(&tb, "d-tb")[0]["time"].starts_with("2016-01-01T12:00:00.512"));
    assert_eq!(by_dev(&tb, "Pump A")[0]["rpm"], "1200");
    let cs = rows(&lake, "lorawan");
    let cs = by_dev(&cs, "0004a30b001c0530");
    assert_eq!(cs[0]["temperature_3"], "27.2");
    assert_eq!(
        (
            cs[0]["f_cnt"].as_str(),
            cs[0]["rssi"].as_str(),
            cs[0]["lora_gateway"].as_str()
        ),
        ("42", "-52.0", "0016c001f153a14c")
    );
}

/// Mosquitto (with persistence) restarts three times while it delivers a QoS 1 stream: the
/// source reconnects, resumes its session, and every message reaches the lake (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_source_rides_out_broker_restarts() {
    let mut broker = Mosquitto::start_persistent(20);
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(dir.path());
    c.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    c.mqtt.client_id = "edge-restarts".into();
    c.mqtt.max_inflight = 20;
    c.mqtt.subscriptions = vec![sub("seq/{device}/{resource}", Format::Json)];
    let agent = start(c).await;
    wait_subscribed(&agent, || {
        broker.publish_lines("seq/probe/n", 1, &[r#"{"i":-1}"#.into()]);
    })
    .await;

    let n = 3_000;
    let lines: Vec<String> = (0..n).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    for chunk in lines.chunks(n / 3) {
        broker.publish_lines("seq/d1/n", 1, chunk);
        // At once, while the agent is still taking what was just published.
        broker.restart();
    }
    // Until all were taken (copies count too) and nothing more comes for a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (0, Instant::now());
    loop {
        let taken = agent.metrics.source_count("mqtt", "accepted");
        if taken != last.0 {
            last = (taken, Instant::now());
        }
        if taken > n as u64 && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the source stalled after the restarts: {taken} taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(agent).await;
    let lake = read_dir_lake(&dir.path().join("lake"));
    let got: Vec<i64> = rows(&lake, "n")
        .iter()
        .filter(|r| r["device"] == "d1")
        .map(|r| r["i"].parse().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let missing: Vec<i64> = (0..n as i64).filter(|i| !distinct.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{} missing, from {:?}",
        missing.len(),
        missing.first()
    );
    // At least once: a message taken but not acknowledged when the broker went comes again.
    eprintln!(
        "{} copies beyond the {n} messages across three broker restarts",
        got.len() - distinct.len()
    );
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
/// `dir`: (ca, server cert, server key, client cert, client key).
fn test_pki(dir: &Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "twinlake test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(vec!["127.0.0.1".into()]);
    let (client, client_key) = leaf(vec!["edge-tls".into()]);
    let files = [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server),
        ("server-key.pem", server_key),
        ("client.pem", client),
        ("client-key.pem", client_key),
    ];
    files.map(|(name, pem)| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    })
}

/// mqtts:// to a Mosquitto TLS listener that requires a client certificate: with our CA file
/// and the client certificate the source subscribes and takes messages; without the
/// certificate the broker refuses it and nothing arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key, client_cert, client_key] = test_pki(dir.path());
    let broker = Mosquitto::start_tls(TlsFiles {
        ca: &ca,
        cert: &cert,
        key: &key,
    });
    let config = |name: &str, with_cert: bool| {
        let mut c = base_config(&dir.path().join(name));
        c.mqtt.url = format!("mqtts://127.0.0.1:{}", broker.tls_port);
        c.mqtt.client_id = format!("edge-{name}");
        c.mqtt.ca_file = Some(ca.clone());
        if with_cert {
            c.mqtt.client_cert = Some(client_cert.clone());
            c.mqtt.client_key = Some(client_key.clone());
        }
        c.mqtt.subscriptions = vec![sub("json/{device}/{resource}", Format::Json)];
        c
    };
    let probe = || broker.publish_lines("json/probe/climate", 1, &[r#"{"temp":1}"#.into()]);

    let without = start(config("no-cert", false)).await;
    for _ in 0..10 {
        probe();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        without.metrics.source_count("mqtt", "accepted"),
        0,
        "the broker wants a client certificate"
    );
    stop(without).await;

    let with = start(config("cert", true)).await;
    wait_subscribed(&with, probe).await;
    stop(with).await;
    let lake = read_dir_lake(&dir.path().join("cert/lake"));
    assert!(
        rows(&lake, "climate")
            .iter()
            .any(|r| r["device"] == "probe" && r["temp"] == "1")
    );
}

/// `mosquitto_pub` with a device account: one message, QoS 1, MQTT `version`
/// ("mqttv311" or "mqttv5"). Whether the broker took it.
fn account_pub(port: u16, version: &str, password: &str, topic: &str, message: &str) -> bool {
    std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version, "-q", "1"])
        .args(["-i", &format!("pub-{version}"), "-u", "sensor", "-P", password])
        .args(["-t", topic, "-m", message])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("mosquitto_pub runs")
        .success()
}

/// The embedded broker (rumqttd) for gateways without one: Mosquitto's own clients publish
/// with a device account over MQTT 3.1.1 and MQTT 5, a wrong password is refused, the rows
/// land in the lake, and a resource write reaches a device subscribed to its command topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_takes_devices_without_an_external_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(dir.path());
    c.mqtt.embedded = Some(
        toml::from_str("listen = \"127.0.0.1:0\"\nlisten_v5 = \"127.0.0.1:0\"\nusers = { sensor = \"s3cret\" }")
            .unwrap(),
    );
    c.mqtt.subscriptions = vec![sub("json/{device}/{resource}", Format::Json)];
    let agent = start(c).await;
    let (v4, v5) = agent.mqtt_broker.expect("the embedded broker listens");
    let v5 = v5.expect("and on MQTT 5");

    // A device (rumqttc, MQTT 3.1.1) that listens on its command topic.
    let mut opts = rumqttc::MqttOptions::new("d-v4", "127.0.0.1", v4.port());
    opts.set_credentials("sensor", "s3cret");
    let mut cmd_rx = watch_commands(opts, "twinlake/d-v4/+/set").await;
    wait_subscribed(&agent, || {
        account_pub(v4.port(), "mqttv311", "s3cret", "json/probe/climate", r#"{"temp":0}"#);
    })
    .await;
    let probes = agent.metrics.source_count("mqtt", "accepted");

    assert!(account_pub(
        v4.port(),
        "mqttv311",
        "s3cret",
        "json/d-v4/climate",
        r#"{"temp":1.5}"#
    ));
    assert!(account_pub(
        v5.port(),
        "mqttv5",
        "s3cret",
        "json/d-v5/climate",
        r#"{"temp":2.5}"#
    ));
    assert!(
        !account_pub(v4.port(), "mqttv311", "wrong", "json/d-bad/climate", r#"{"temp":9}"#),
        "a wrong password is refused"
    );
    wait_count(&agent, "mqtt", "accepted", probes + 2).await;

    let key = twinlake_edge::listener::DeviceKey::new("mqtt", "d-v4");
    let control = agent.southbound.get(&key).expect("the device has a route");
    control.write("d-v4", "led", &json!(true)).unwrap();
    let (topic, payload) = tokio::time::timeout(Duration::from_secs(5), cmd_rx.recv())
        .await
        .expect("the command reaches the device")
        .unwrap();
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("twinlake/d-v4/led/set", b"true".as_slice())
    );

    stop(agent).await;
    let lake = read_dir_lake(&dir.path().join("lake"));
    let mut got: Vec<(String, String)> = rows(&lake, "climate")
        .into_iter()
        .filter(|r| r["device"] != "probe")
        .map(|r| (r["device"].clone(), r["temp"].clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("d-v4".to_owned(), "1.5".to_owned()),
            ("d-v5".to_owned(), "2.5".to_owned())
        ]
    );
}

// ---------------------------------------------------------------------------------------
// LoRaWAN

/// Frames from npm lora-packet (edge-agent/tests/node, installed by scripts/test).
fn lora_packet(requests: Json) -> Vec<Json> {
    use std::io::Write as _;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        dir.join("node_modules/lora-packet").exists(),
        "npm lora-packet is missing: run `npm ci --prefix edge-agent/tests/node` (scripts/test does)"
    );
    let mut child = std::process::Command::new("node")
        .arg(dir.join("frames.js"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(requests.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn data_frame(dev_addr: &str, fcnt: u32, payload: &str, nwk: &str, app: &str, confirmed: bool) -> Json {
    json!({"kind": "data", "confirmed": confirmed, "devAddr": dev_addr, "fcnt": fcnt, "port": 2,
           "payload": payload, "nwkSKey": nwk, "appSKey": app})
}

/// A gateway: an "up" socket for PUSH_DATA and a "down" socket for PULL_DATA, as the
/// Semtech packet forwarder has.
struct Gateway {
    eui: [u8; 8],
    up: UdpSocket,
    down: UdpSocket,
    server: std::net::SocketAddr,
    token: u16,
    /// The GWMP version it speaks and expects back.
    version: u8,
}

impl Gateway {
    async fn new(eui: [u8; 8], server: std::net::SocketAddr) -> Self {
        Self::speaking(2, eui, server).await
    }

    async fn speaking(version: u8, eui: [u8; 8], server: std::net::SocketAddr) -> Self {
        let g = Self {
            eui,
            up: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            down: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            token: 0x1000,
            version,
        };
        let mut d = vec![version, 0xab, 0xcd, 2];
        d.extend_from_slice(&g.eui);
        g.down.send_to(&d, server).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), g.down.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[version, 0xab, 0xcd, 4], "PULL_ACK");
        g
    }

    /// Sends rxpks in one PUSH_DATA; checks the PUSH_ACK echoes the token.
    async fn push(&mut self, rxpk: Vec<Json>) {
        self.token += 1;
        let t = self.token.to_be_bytes();
        let mut d = vec![self.version, t[0], t[1], 0];
        d.extend_from_slice(&self.eui);
        d.extend_from_slice(json!({"rxpk": rxpk}).to_string().as_bytes());
        self.up.send_to(&d, self.server).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), self.up.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &[self.version, t[0], t[1], 1], "PUSH_ACK");
    }

    /// The next PULL_RESP's txpk, answered with a TX_ACK.
    async fn pull_resp(&self) -> Json {
        let mut buf = vec![0u8; 4096];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), self.down.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((buf[0], buf[3]), (self.version, 3), "PULL_RESP");
        let mut ack = vec![self.version, buf[1], buf[2], 5];
        ack.extend_from_slice(&self.eui);
        ack.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
        self.down.send_to(&ack, from).await.unwrap();
        let j: Json = serde_json::from_slice(&buf[4..n]).unwrap();
        j["txpk"].clone()
    }
}

/// The ACK downlink in `txpk`: an unconfirmed data down with the ACK bit whose MIC verifies
/// with `nwk` at `fcnt_down`.
fn check_ack(txpk: &Json, nwk: &str, fcnt_down: u32) {
    let ack = base64::engine::general_purpose::STANDARD
        .decode(txpk["data"].as_str().unwrap())
        .unwrap();
    let lorawan::parser::PhyPayload::Data(lorawan::parser::DataPayload::Encrypted(down)) =
        lorawan::parser::parse(ack).unwrap()
    else {
        panic!("not a data frame")
    };
    use lorawan::parser::DataHeader as _;
    assert!(!down.is_uplink() && down.fhdr().fctrl().ack(), "an ACK downlink");
    assert_eq!(u32::from(down.fhdr().fcnt()), fcnt_down);
    assert!(down.validate_mic(&lorawan::keys::AES128(hex(nwk).try_into().unwrap()), fcnt_down));
}

fn rxpk(phy_hex: &str, rssi: f64, lsnr: f64) -> Json {
    let phy = hex(phy_hex);
    json!({"time": "2024-01-01T12:00:00.000000Z", "tmst": 1_000_000u32, "chan": 2, "rfch": 0, "freq": 868.5,
           "stat": 1, "modu": "LORA", "datr": "SF7BW125", "codr": "4/5", "rssi": rssi, "lsnr": lsnr,
           "size": phy.len(), "data": base64::engine::general_purpose::STANDARD.encode(&phy)})
}

fn lora_device(eui: &str, name: &str) -> LoraDevice {
    toml::from_str(&format!("dev_eui = {eui:?}\nname = {name:?}")).unwrap()
}

fn lora_config(dir: &Path) -> EdgeConfig {
    let mut c = base_config(dir);
    c.lorawan.udp = Some("127.0.0.1:0".parse().unwrap());
    c.lorawan.dedup_window = Duration::from_millis(300);
    let abp = |eui: &str, name: &str, addr: &str, nwk: &str, app: &str, profile: Option<&str>| LoraDevice {
        dev_addr: Some(addr.into()),
        nwk_skey: Some(toml::from_str::<BTreeMap<String, _>>(&format!("k = {nwk:?}")).unwrap()["k"]),
        app_skey: Some(toml::from_str::<BTreeMap<String, _>>(&format!("k = {app:?}")).unwrap()["k"]),
        profile: profile.map(String::from),
        ..lora_device(eui, name)
    };
    c.lorawan.profiles =
        vec![toml::from_str::<LoraProfile>("name = \"raw\"\ntable = \"lora_raw\"\ncodec = \"raw\"").unwrap()];
    c.lorawan.devices = vec![
        abp(
            "0000000000000001",
            "v1",
            "01020304",
            &"02".repeat(16),
            &"01".repeat(16),
            Some("raw"),
        ),
        abp("0000000000000002", "v2", "26011bda", K1, K2, None),
        abp("0000000000000003", "roll", "26000003", K1, K2, None),
        LoraDevice {
            join_eui: Some("70b3d57ed0000001".into()),
            app_key: Some(toml::from_str::<BTreeMap<String, _>>(&format!("k = {K1:?}")).unwrap()["k"]),
            ..lora_device("0004a30b001c0530", "otaa")
        },
    ];
    c
}

/// The spec's vectors V1–V5 and lora-packet frames over real UDP: ABP with FCnt rollover,
/// one uplink heard by two gateways, a bad MIC, a replay, an FSK rxpk, a confirmed uplink's
/// ACK, an OTAA join end to end, and sessions that survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lorawan_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(lora_config(dir.path())).await;
    let server = agent.lorawan.unwrap();
    let mut gw_a = Gateway::new([0xaa, 0x55, 0x5a, 0, 0, 0, 1, 1], server).await;
    let mut gw_b = Gateway::new([0xaa, 0x55, 0x5a, 0, 0, 0, 2, 2], server).await;

    // V1: ABP, unconfirmed, "hello" through the raw profile.
    gw_a.push(vec![rxpk("400403020180010001a694642615d6c3b582", -60.0, 7.0)])
        .await;
    wait_count(&agent, "lorawan", "accepted", 1).await;

    // V2: confirmed, heard by both gateways: stored once, and acknowledged in RX1 through
    // the gateway that was first.
    let v2 = "80da1b0126002a00023a23613062961739";
    gw_a.push(vec![rxpk(v2, -57.0, 9.5)]).await;
    gw_b.push(vec![rxpk(v2, -90.0, -3.0)]).await;
    wait_count(&agent, "lorawan", "accepted", 2).await;
    wait_count(&agent, "lorawan", "duplicate", 1).await;
    let txpk = gw_a.pull_resp().await;
    assert_eq!(
        (txpk["tmst"].as_u64(), txpk["ipol"].as_bool()),
        (Some(2_000_000), Some(true))
    );
    check_ack(&txpk, K1, 0);

    // V3: FCnt 0x00010005 on air as 5, after 42: the rollover of the low 16 bits.
    gw_a.push(vec![rxpk("40da1b0126000500023561e379e395df1e", -57.0, 9.5)])
        .await;
    wait_count(&agent, "lorawan", "accepted", 3).await;

    // lora-packet frames across a 16-bit rollover, then a replay and a bad MIC.
    let frames = lora_packet(json!([
        data_frame("26000003", 65534, "03670110", K1, K2, false),
        data_frame("26000003", 65535, "03670111", K1, K2, false),
        data_frame("26000003", 65536, "03670112", K1, K2, false),
        data_frame("26000003", 65537, "03670113", K1, K2, false),
        data_frame("26000003", 65538, "03670114", K1, K2, false),
    ]));
    let f: Vec<&str> = frames.iter().map(|f| f.as_str().unwrap()).collect();
    for phy in &f[..4] {
        gw_a.push(vec![rxpk(phy, -70.0, 5.0)]).await;
    }
    wait_count(&agent, "lorawan", "accepted", 7).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // past the de-duplication window
    gw_a.push(vec![rxpk(f[1], -70.0, 5.0)]).await;
    wait_count(&agent, "lorawan", "replay", 1).await;
    let mut bad = hex(f[4]);
    *bad.last_mut().unwrap() ^= 0x55;
    let bad = twinlake_edge::sources::hex(&bad);
    gw_a.push(vec![rxpk(&bad, -70.0, 5.0)]).await;
    wait_count(&agent, "lorawan", "bad_mic", 1).await;

    // An FSK rxpk (numeric datr, no lsnr, no codr) is read like any other.
    let phy = hex(f[4]);
    let fsk = json!({"tmst": 3_512_348_514u32, "chan": 9, "rfch": 1, "freq": 868.8, "stat": 1, "modu": "FSK",
                     "datr": 50000, "rssi": -75, "size": phy.len(),
                     "data": base64::engine::general_purpose::STANDARD.encode(&phy)});
    gw_a.push(vec![fsk]).await;
    wait_count(&agent, "lorawan", "accepted", 8).await;

    // OTAA end to end: lora-packet's join request, our join accept in the RX1 window 5 s
    // after the uplink, decrypted and checked by lora-packet, then an uplink with the keys.
    let join = lora_packet(
        json!([{"kind": "join", "appEui": "70b3d57ed0000001", "devEui": "0004a30b001c0530",
                                   "devNonce": "a1b2", "appKey": K1}]),
    );
    gw_b.push(vec![rxpk(join[0].as_str().unwrap(), -80.0, 1.0)]).await;
    let txpk = gw_b.pull_resp().await;
    assert_eq!(txpk["tmst"].as_u64(), Some(6_000_000));
    wait_count(&agent, "lorawan", "join", 1).await;
    let ja = base64::engine::general_purpose::STANDARD
        .decode(txpk["data"].as_str().unwrap())
        .unwrap();
    let ja_hex = twinlake_edge::sources::hex(&ja);
    let keys = lora_packet(json!([{"kind": "decrypt_join_accept", "phy": ja_hex, "appKey": K1, "devNonce": "a1b2"}]));
    let keys = &keys[0];
    assert_eq!(keys["micOk"], true, "lora-packet checks our join accept's MIC");
    let addr = keys["devAddr"].as_str().unwrap().to_owned();
    assert!(
        addr.starts_with("26") || addr.starts_with("27"),
        "NetID 000013 addresses: {addr}"
    );
    let (nwk, app) = (keys["nwkSKey"].as_str().unwrap(), keys["appSKey"].as_str().unwrap());
    let up = lora_packet(json!([
        data_frame(&addr, 1, "0367fff6", nwk, app, false),
        data_frame(&addr, 2, "0367fff5", nwk, app, false),
    ]));
    gw_a.push(vec![rxpk(up[0].as_str().unwrap(), -66.0, 4.0)]).await;
    wait_count(&agent, "lorawan", "accepted", 9).await;
    stop(agent).await;

    // After a restart the OTAA session and its counter are still there. Silent for
    // `offline_after`, the device shows offline.
    let mut c = lora_config(dir.path());
    c.lorawan.offline_after = Duration::from_secs(1);
    let mut agent = start(c).await;
    let mut gw_a = Gateway::new([0xaa, 0x55, 0x5a, 0, 0, 0, 1, 1], agent.lorawan.unwrap()).await;
    gw_a.push(vec![rxpk(up[0].as_str().unwrap(), -66.0, 4.0)]).await;
    wait_count(&agent, "lorawan", "replay", 1).await;
    gw_a.push(vec![rxpk(up[1].as_str().unwrap(), -66.0, 4.0)]).await;
    wait_count(&agent, "lorawan", "accepted", 1).await;
    let mut presence = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = agent.watch.recv().await.unwrap();
            match &ev.kind {
                twinlake_edge::listener::DeviceEventKind::Connected { .. } => {
                    presence.push(format!("{} online", ev.device));
                }
                twinlake_edge::listener::DeviceEventKind::Disconnected { reason, .. } => {
                    presence.push(format!("{} offline: {reason}", ev.device));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the silent device goes offline");
    assert_eq!(
        presence,
        [
            "lorawan/otaa online",
            "lorawan/otaa offline: silent for lorawan.offline_after"
        ]
    );
    stop(agent).await;

    let lake = read_dir_lake(&dir.path().join("lake"));
    let raw = rows(&lake, "lora_raw");
    assert_eq!(raw.len(), 1);
    assert_eq!(
        (raw[0]["device"].as_str(), raw[0]["payload"].as_str()),
        ("v1", "68656c6c6f")
    );
    let mut lw: Vec<(String, String, String)> = rows(&lake, "lorawan")
        .into_iter()
        .map(|r| (r["device"].clone(), r["f_cnt"].clone(), r["temperature_3"].clone()))
        .collect();
    lw.sort();
    let want: Vec<(String, String, String)> = [
        ("otaa", "1", "-1.0"),
        ("otaa", "2", "-1.1"),
        ("roll", "65534", "27.2"),
        ("roll", "65535", "27.3"),
        ("roll", "65536", "27.4"),
        ("roll", "65537", "27.5"),
        ("roll", "65538", "27.6"),
        ("v2", "42", "27.2"),
        ("v2", "65541", "27.2"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(lw, want);
    let all = rows(&lake, "lorawan");
    let v2 = all.iter().find(|r| r["device"] == "v2" && r["f_cnt"] == "42").unwrap();
    assert_eq!(
        (
            v2["rssi"].as_str(),
            v2["snr"].as_str(),
            v2["lora_gateway"].as_str(),
            v2["frequency"].as_str(),
            v2["data_rate"].as_str()
        ),
        ("-57.0", "9.5", "aa555a0000000101", "868500000", "SF7BW125")
    );
    assert!(v2["time"].starts_with("2024-01-01T12:00:00"));
    let fsk = all.iter().find(|r| r["f_cnt"] == "65538").unwrap();
    assert_eq!(fsk["data_rate"], "FSK50000");
    assert!(!fsk.contains_key("snr"));
    // Keys are never in the session file's neighbours: the log, the lake. The session file
    // itself is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("data/lorawan/sessions.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "sessions.json is readable by its owner only");
}

/// Three LoRaWAN fixes (#18) over real UDP with lora-packet frames:
/// * a version-1 forwarder gets every answer (PULL_ACK, PUSH_ACK, PULL_RESP) in version 1;
/// * a confirmed uplink sent again after the copies' window (the device missed its ACK)
///   gets a new ACK, FCntDown 1, whose MIC verifies, and its row is stored once;
/// * radio metadata out of range (rssi -1e300, snr 1e300, 1e300 MHz) is stored as null
///   and counted, never clamped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lorawan_resends_versions_and_radio_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(lora_config(dir.path())).await;
    let mut gw = Gateway::speaking(1, [0xaa, 0x55, 0x5a, 0, 0, 0, 3, 3], agent.lorawan.unwrap()).await;
    let frames = lora_packet(json!([
        data_frame("26000003", 10, "03670110", K1, K2, true),
        data_frame("26000003", 11, "03670111", K1, K2, false),
    ]));
    let (confirmed, plain) = (frames[0].as_str().unwrap(), frames[1].as_str().unwrap());

    gw.push(vec![rxpk(confirmed, -70.0, 5.0)]).await;
    wait_count(&agent, "lorawan", "accepted", 1).await;
    check_ack(&gw.pull_resp().await, K1, 0);
    // The ACK was lost: after its ACK timeout the device sends the same frame again.
    tokio::time::sleep(Duration::from_millis(400)).await; // past lorawan.dedup_window
    gw.push(vec![rxpk(confirmed, -71.0, 4.0)]).await;
    wait_count(&agent, "lorawan", "resent", 1).await;
    check_ack(&gw.pull_resp().await, K1, 1);

    let mut wild = rxpk(plain, -1e300, 1e300);
    wild["freq"] = json!(1e300);
    gw.push(vec![wild]).await;
    wait_count(&agent, "lorawan", "accepted", 2).await;
    wait_count(&agent, "lorawan", "metadata_out_of_range", 1).await;
    assert_eq!(agent.metrics.source_count("lorawan", "replay"), 0);
    stop(agent).await;

    let lake = read_dir_lake(&dir.path().join("lake"));
    let mut got: Vec<_> = rows(&lake, "lorawan")
        .into_iter()
        .map(|r| {
            let v = |k: &str| r.get(k).cloned().unwrap_or_else(|| "null".into());
            (v("f_cnt"), v("rssi"), v("snr"), v("frequency"))
        })
        .collect();
    got.sort();
    let s = |x: &str| x.to_string();
    assert_eq!(
        got,
        [
            (s("10"), s("-70.0"), s("5.0"), s("868500000")),
            (s("11"), s("null"), s("null"), s("null")),
        ],
        "stored once each; out-of-range metadata as null"
    );
}
