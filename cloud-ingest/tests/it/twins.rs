//! Twins follow devices; desired state reaches them; twins outlive the cloud.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twin_follows_streams_and_desired_reaches_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d1"]).await;
    let dev = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;

    // Streamed outputs show up in reported, with metadata and a rising version.
    let first = eventually(10, "temp reported", || async {
        let t = api.twin("d1").await;
        t["state"]["reported"]["temp"]
            .as_f64()
            .map(|v| (v, t["version"].as_u64().unwrap()))
    })
    .await;
    let later = eventually(10, "a later temp", || async {
        let t = api.twin("d1").await;
        let v = t["state"]["reported"]["temp"].as_f64()?;
        (v > first.0).then(|| {
            (
                t["version"].as_u64().unwrap(),
                t["metadata"]["reported"]["temp"]["timestamp"].as_u64(),
            )
        })
    })
    .await;
    assert!(later.0 > first.1, "the version rises");
    assert!(later.1.is_some(), "per-field timestamps");
    let t = api.twin("d1").await;
    assert_eq!(t["connection"]["gateway"], json!(GATEWAY));
    assert_eq!(
        t["connection"]["protocol"],
        json!("thinger"),
        "the protocol it last used"
    );
    assert_eq!(t["tags"]["site"], json!("lab"));
    assert_eq!(
        t["state"]["reported"]["led"],
        json!(false),
        "the input stream reports the LED"
    );

    // PATCH desired: the device's LED switches and reported follows; the delta clears.
    let j = api.set_desired("d1", json!({"led": true})).await;
    assert_eq!(j["state"]["delta"], json!({"led": true}));
    eventually(10, "the device's LED is on", || {
        let on = dev.led.load(std::sync::atomic::Ordering::Relaxed);
        async move { on.then_some(()) }
    })
    .await;
    eventually(10, "reported follows and the delta clears", || async {
        let t = api.twin("d1").await;
        (t["state"]["reported"]["led"] == json!(true) && t["state"]["delta"] == json!({})).then_some(())
    })
    .await;

    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn desired_set_while_offline_is_applied_on_reconnect() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d2"]).await;
    let dev = TestDevice::start(edge.tcp, "d2");
    wait_online(&api, "d2").await;
    dev.stop();
    eventually(10, "d2 offline", || async {
        (api.twin("d2").await["connection"]["online"] == json!(false)).then_some(())
    })
    .await;

    api.set_desired("d2", json!({"led": true})).await;
    // Nothing can happen while it is away.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(api.twin("d2").await["state"]["delta"], json!({"led": true}));

    let dev = TestDevice::start(edge.tcp, "d2");
    eventually(10, "the LED is on after the reconnect", || {
        let on = dev.led.load(std::sync::atomic::Ordering::Relaxed);
        async move { on.then_some(()) }
    })
    .await;
    eventually(10, "the delta clears", || async {
        (api.twin("d2").await["state"]["delta"] == json!({})).then_some(())
    })
    .await;
    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twins_survive_a_cloud_restart_and_versions_guard_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    let cloud = TestCloud::start(cfg.clone()).await;
    let api = cloud.api();
    // A device straight on the cloud's own listener (no gateway).
    api.register("direct", None).await;
    let dev = TestDevice::start(cloud.devices.unwrap(), "direct");
    wait_online(&api, "direct").await;
    eventually(10, "temp reported", || async {
        api.twin("direct").await["state"]["reported"]["temp"].as_f64()
    })
    .await;
    let path = format!("/v1/users/{USER}/devices/direct/twin");
    let (_, t) = api
        .call(
            Method::PATCH,
            &path,
            Some(ADMIN),
            Some(json!({"desired": {"cfg": {"rate": 5}}})),
        )
        .await;
    let version = t["version"].as_u64().unwrap();

    // Optimistic concurrency: a stale If-Match is 412, a stale body version 409.
    let stale = api
        .client
        .patch(format!("{}{path}", api.base))
        .bearer_auth(ADMIN)
        .header("if-match", format!("\"{}\"", version.saturating_sub(1)))
        .body(json!({"desired": {"x": 1}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let (s, _) = api
        .call(
            Method::PATCH,
            &path,
            Some(ADMIN),
            Some(json!({"desired": {"x": 1}, "version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The document size is bounded with a clear error.
    let (s, j) = api
        .call(
            Method::PATCH,
            &path,
            Some(ADMIN),
            Some(json!({"desired": {"blob": "x".repeat(70_000)}})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{j}");
    assert!(j["error"]["message"].as_str().unwrap().contains("limit"), "{j}");

    drop(dev);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = api.twin("direct").await;
    cloud.stop().await;

    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    let after = api.twin("direct").await;
    for field in ["version", "state", "metadata", "tags", "resources"] {
        assert_eq!(after[field], before[field], "{field} after the restart");
    }
    assert_eq!(after["state"]["desired"]["cfg"], json!({"rate": 5}));
    // The device comes back and the twin carries on from where it was.
    let dev = TestDevice::start(cloud.devices.unwrap(), "direct");
    eventually(10, "a newer version after the reconnect", || async {
        let v = api.twin("direct").await["version"].as_u64()?;
        (v > before["version"].as_u64().unwrap()).then_some(())
    })
    .await;
    drop(dev);
    cloud.stop().await;
}

/// An MQTT device behind the edge (a real Mosquitto): what it publishes becomes its twin's
/// reported state, and a desired value set in the cloud is published to its command topic.
/// Silent for `mqtt.offline_after`, it shows offline; its next message brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_device_gets_a_twin_and_its_desired_state_on_the_command_topic() {
    use crate::mosquitto::{Mosquitto, publish_lines};
    let broker = Mosquitto::start(0);
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = &cloud.api();
    let mut cfg = edge_config(dir.path(), cloud.addr);
    cfg.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    cfg.mqtt.user = USER.into();
    cfg.mqtt.subscriptions = vec![toml::from_str("topic = \"sensors/{device}/{resource}\"").unwrap()];
    cfg.mqtt.offline_after = std::time::Duration::from_secs(3);
    cfg.mqtt.keep_alive = std::time::Duration::from_secs(5);
    let edge = TestEdge::start(cfg).await;

    // A command-topic subscriber with a session, so nothing published meanwhile is missed.
    let port = broker.port;
    let sub = move |extra: &[&str]| {
        std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-c",
                "-i",
                "cmd-watch",
            ])
            .args(["-t", "twinlake/+/+/set", "-v"])
            .args(extra)
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    sub(&["-W", "1"]);

    eventually(20, "the MQTT device's twin", || async move {
        publish_lines(port, "sensors/m1/climate", 1, &[r#"{"temp":21.5}"#.into()]);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let (s, t) = api.get(&format!("/v1/users/{USER}/devices/m1/twin")).await;
        (s == StatusCode::OK
            && t["state"]["reported"]["climate"]["temp"] == json!(21.5)
            && t["connection"]["online"] == json!(true)
            && t["connection"]["protocol"] == json!("mqtt"))
        .then_some(())
    })
    .await;

    api.set_desired("m1", json!({"led": true})).await;
    let out = tokio::task::spawn_blocking(move || sub(&["-C", "1", "-W", "10"]))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "twinlake/m1/led/set true");

    // Silence: offline after offline_after (checked between MQTT events, so within a
    // keep-alive of it). The next message: online again.
    eventually(15, "the silent MQTT device goes offline", || async move {
        (api.twin("m1").await["connection"]["online"] == json!(false)).then_some(())
    })
    .await;
    publish_lines(port, "sensors/m1/climate", 1, &[r#"{"temp":22.5}"#.into()]);
    eventually(10, "online again with its new value", || async move {
        let t = api.twin("m1").await;
        (t["connection"]["online"] == json!(true) && t["state"]["reported"]["climate"]["temp"] == json!(22.5))
            .then_some(())
    })
    .await;

    edge.stop().await;
    cloud.stop().await;
}

/// After a SIGKILL the twins of the cloud's own listener still said online, and a device's
/// reconnect did not renew `connected_at` (#13, finding 13). A twin left online when the
/// cloud stopped stands in for that: the next start says offline, at its last sighting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_does_not_claim_the_clouds_own_devices_are_online() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    let local = cfg.edge.gateway.clone();
    let cloud = TestCloud::start(cfg.clone()).await;
    let key = twinlake_twin::TwinKey::new(USER, "ghost");
    cloud
        .state
        .twins
        .write(|t| {
            t.set_connection(&key, 1_000, |c| {
                c.online = true;
                c.gateway = Some(local.clone());
                c.connected_at = Some(1_000);
            })
        })
        .unwrap();
    cloud.stop().await;
    let cloud = TestCloud::start(cfg).await;
    let t = cloud.api().twin("ghost").await;
    assert_eq!(t["connection"]["online"], json!(false), "{t}");
    assert_eq!(t["connection"]["last_seen"], json!(1_000), "{t}");
    cloud.stop().await;
}

/// A device registered in the cloud speaks the HTTP device API of the cloud's own
/// pipeline: its telemetry is its twin's reported state; a desired value reaches its
/// long-poll; its reply is reported, and the twin is in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_device_polls_its_desired_state_and_its_reply_syncs_the_twin() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.edge.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    let cloud = TestCloud::start(cfg).await;
    let api = &cloud.api();
    api.register("h1", None).await;
    let base = format!("http://{}/api/v1/{USER}:h1:{CREDENTIAL}", cloud.device_http.unwrap());
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/telemetry"))
        .body(r#"{"temp":20.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    eventually(10, "the HTTP device's twin", || async move {
        let t = api.twin("h1").await;
        (t["state"]["reported"]["telemetry"]["temp"] == json!(20.5)
            && t["connection"]["online"] == json!(true)
            && t["connection"]["protocol"] == json!("http"))
        .then_some(())
    })
    .await;

    let poll = tokio::spawn(http.get(format!("{base}/rpc?timeout=10000")).send());
    api.set_desired("h1", json!({"led": true})).await;
    let r = poll.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cmd: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (cmd["method"].clone(), cmd["params"].clone()),
        (json!("led"), json!(true))
    );
    let r = http
        .post(format!("{base}/rpc/{}", cmd["id"]))
        .body("true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    eventually(10, "the reply syncs the twin", || async move {
        let t = api.twin("h1").await;
        (t["state"]["reported"]["led"] == json!(true) && t["state"]["delta"] == json!({})).then_some(())
    })
    .await;
    cloud.stop().await;
}

/// A CoAP device written with aiocoap (tests/python/coap_device.py) reports a reading and
/// observes its command resource on the cloud's own pipeline; a desired LED set through
/// the API is pushed to it as a notification, its reply is reported, and the twin is in
/// sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aiocoap_device_observes_its_desired_state_and_the_twin_syncs() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.edge.coap.udp = Some("127.0.0.1:0".parse().unwrap());
    let cloud = TestCloud::start(cfg).await;
    let api = &cloud.api();
    api.register("c1", None).await;
    let base = format!("coap://{}/api/v1/{USER}:c1:{CREDENTIAL}", cloud.coap.unwrap());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/coap_device.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .arg(&base)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            let _ = lines_tx.send(std::mem::take(&mut line));
        }
    });
    let wait = std::time::Duration::from_secs(30);
    let line = tokio::time::timeout(wait, lines.recv()).await.ok().flatten();
    assert_eq!(line.as_deref().map(str::trim), Some("observing"));
    eventually(10, "the CoAP device's twin", || async move {
        let t = api.twin("c1").await;
        (t["connection"]["protocol"] == json!("coap") && t["state"]["reported"]["telemetry"]["temp"] == json!(20.5))
            .then_some(())
    })
    .await;

    api.set_desired("c1", json!({"led": true})).await;
    let line = tokio::time::timeout(wait, lines.recv()).await.ok().flatten();
    assert_eq!(line.as_deref().map(str::trim), Some("replied led true"));
    assert!(child.wait().unwrap().success());
    eventually(10, "the reply syncs the twin", || async move {
        let t = api.twin("c1").await;
        (t["state"]["reported"]["led"] == json!(true) && t["state"]["delta"] == json!({})).then_some(())
    })
    .await;
    cloud.stop().await;
}

/// A stop sent before the cloud's tasks first ran (here: a shutdown that is already
/// complete, on one thread, so no spawned task has started) still ends them all, and the
/// database is closed for the next start in the same process. Tasks that waited for the
/// stop signal to *change* missed it and held the database (a CI flake: "Database already
/// open").
#[tokio::test]
async fn a_cloud_stopped_before_its_tasks_ran_closes_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.edge.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    for _ in 0..3 {
        let cloud = twinlake_cloud::Cloud::start(cfg.clone()).await.expect("cloud starts");
        cloud.run(async {}).await.unwrap();
    }
}
