//! A rogue gateway (#13, finding 4): a second linked gateway with a device of the same name
//! as another gateway's. Its presence, reports and descriptions are refused and counted, live
//! calls and desired writes keep going to the real device's gateway, the user's SQL never
//! shows its rows, and the real device keeps working after it leaves.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use twinlake_cloud::auth::sha256_hex;
use twinlake_cloud::config::GatewayEntry;
use twinlake_edge::config::DeviceEntry;
use twinlake_edge::registry::CredentialHash;

use crate::support::*;

const ROGUE: &str = "gw-rogue";
const ROGUE_TOKEN: &str = "rogue-gateway-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rogue_gateway_cannot_speak_for_another_gateways_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.gateways.push(GatewayEntry {
        id: ROGUE.into(),
        token_sha256: sha256_hex(ROGUE_TOKEN),
        users: Vec::new(),
    });
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    api.register("d1", Some(GATEWAY)).await;
    let edge = TestEdge::start(edge_config(dir.path(), cloud.addr)).await;
    let real = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;

    // The rogue: its own agent, with acme/d1 in its local registry.
    let mut rc = edge_config(&dir.path().join("rogue"), cloud.addr);
    // It has the store's credentials: its files land in the cloud's lake.
    rc.upload.url = format!("file://{}", dir.path().join("lake").display());
    rc.gateway = ROGUE.into();
    rc.link.token = ROGUE_TOKEN.into();
    rc.devices.push(DeviceEntry {
        user: USER.into(),
        device: "d1".into(),
        credential_hash: CredentialHash::new(CREDENTIAL, 1000).to_string(),
        properties: Default::default(),
    });
    let rogue_edge = TestEdge::start(rc).await;
    let rogue = TestDevice::start(rogue_edge.tcp, "d1");
    let state = cloud.state.clone();
    eventually(15, "the rogue's items refused", || {
        let n = state.metrics.gateway_refusals.get();
        async move { (n >= 3).then_some(()) }
    })
    .await;

    // The twin still places d1 at the real gateway.
    let t = api.twin("d1").await;
    assert_eq!(t["connection"]["gateway"], json!(GATEWAY), "{t}");
    assert_eq!(t["connection"]["online"], json!(true), "{t}");
    // A desired write reaches the real device, not the rogue's.
    api.set_desired("d1", json!({"led": true})).await;
    eventually(10, "the real LED on", || {
        let on = real.led.load(Ordering::Relaxed);
        async move { on.then_some(()) }
    })
    .await;
    assert!(
        !rogue.led.load(Ordering::Relaxed),
        "the rogue received the desired write"
    );
    // A live write goes to the real device too.
    let (s, j) = api
        .call(
            Method::POST,
            &format!("/v3/users/{USER}/devices/d1/resources/led"),
            Some(CONTROL),
            Some(json!(false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert!(!real.led.load(Ordering::Relaxed));

    // Its files land, but the rows in them are not its devices': quarantined, not catalogued.
    eventually(20, "the rogue's file quarantined", || {
        let n = state.metrics.files_quarantined.get();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let quarantined = dir.path().join("lake/_quarantine");
    assert!(quarantined.exists(), "no file under {}", quarantined.display());
    let lake = cloud.state.sql.lake();
    for table in lake.table_names() {
        assert!(
            lake.files(&table).iter().all(|f| f.gateway.as_deref() != Some(ROGUE)),
            "a rogue file of {table} was catalogued"
        );
    }

    // Nor do its fresh rows reach SQL, even for a platform token.
    let (s, j) = api
        .call(
            Method::POST,
            "/v1/sql",
            Some(READ),
            Some(json!({"sql": format!("SELECT count(*) AS n FROM temp WHERE gateway = '{ROGUE}'")})),
        )
        .await;
    assert_eq!((s, j), (StatusCode::OK, json!([{"n": 0}])));

    // The rogue leaves; the real device's live calls still work.
    rogue.stop();
    rogue_edge.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, j) = api
        .call(
            Method::GET,
            &format!("/v3/users/{USER}/devices/d1/resources/temp"),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let t = api.twin("d1").await;
    assert_eq!(t["connection"]["gateway"], json!(GATEWAY), "{t}");
    real.stop();
    edge.stop().await;
    cloud.stop().await;
}

/// Old credential hashes are rehashed at the next successful login (#13, finding 12): a
/// device whose record holds a hash weaker than `registry.credential_iterations` logs in
/// through its gateway, which replaces the hash (locally at once, in the cloud's record
/// through the link) without dropping the device; the next login checks the new hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weak_credential_hashes_are_rehashed_at_the_next_login() {
    use twinlake_cloud::store::{DEVICES, DeviceRecord};
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    api.register("d1", Some(GATEWAY)).await;
    let state = cloud.state.clone();
    let key = format!("{USER}/d1");
    let hash_of = |state: &std::sync::Arc<twinlake_cloud::server::AppState>| {
        let rec: DeviceRecord = state.db.get(DEVICES, &key).unwrap().unwrap();
        CredentialHash::parse(&rec.credential_hash).unwrap()
    };
    // As a record made by an older release would be.
    let mut rec: DeviceRecord = state.db.get(DEVICES, &key).unwrap().unwrap();
    rec.credential_hash = CredentialHash::new(CREDENTIAL, 100).to_string();
    state.db.put(DEVICES, &key, &rec).unwrap();
    assert_eq!(hash_of(&state).iterations(), Some(100));

    let edge = TestEdge::start(edge_config(dir.path(), cloud.addr)).await;
    let device = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;
    let connected_at = api.twin("d1").await["connection"]["connected_at"].clone();
    eventually(10, "the cloud's record rehashed", || {
        let n = hash_of(&state).iterations();
        async move { (n == Some(1_000)).then_some(()) }
    })
    .await;
    assert_eq!(state.metrics.credential_rehashes.get(), 1);
    assert_eq!(state.metrics.gateway_refusals.get(), 0);
    // The registry the cloud pushed back holds the gateway's new hash: no disconnect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = api.twin("d1").await;
    assert_eq!(t["connection"]["online"], json!(true), "{t}");
    assert_eq!(t["connection"]["connected_at"], connected_at, "{t}");
    assert!(hash_of(&state).verify(CREDENTIAL));

    // The next login goes against the new hash, and rehashes nothing.
    device.stop();
    eventually(10, "d1 offline", || async {
        (api.twin("d1").await["connection"]["online"] == json!(false)).then_some(())
    })
    .await;
    let again = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;
    assert_eq!(state.metrics.credential_rehashes.get(), 1);
    again.stop();
    edge.stop().await;
    cloud.stop().await;
}

/// No gateway may be called like the lake's own files (`compacted-…`) or directories
/// (`_quarantine`): its store credentials, scoped to its file names, would reach them.
#[tokio::test]
async fn no_gateway_is_named_like_the_lakes_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    for id in ["compacted", "_quarantine", ".hidden"] {
        let (s, j) = api.post("/v1/gateways", json!({ "id": id })).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{id}: {j}");
    }
    let (s, j) = api.post("/v1/gateways", json!({ "id": "edge-7" })).await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let listed = |id: &str| format!("[[gateways]]\nid = {id:?}\ntoken_sha256 = {:?}\n", sha256_hex("t"));
    assert!(twinlake_cloud::config::CloudConfig::parse(&listed("edge-8")).is_ok());
    assert!(twinlake_cloud::config::CloudConfig::parse(&listed("compacted")).is_err());
    assert!(twinlake_edge::EdgeConfig::parse("gateway = \"compacted\"").is_err());
    cloud.stop().await;
}

/// Device quotas (#13, "every map keyed by what a peer sends is bounded"): MQTT device ids
/// come from topics, so a publisher can name any number of devices. The agent keeps at most
/// `mqtt.max_devices` online (the rest counted as `device_cap`); the cloud takes at most
/// `link.max_unregistered_devices` new devices from one gateway (the rest counted as
/// `device_quota_refusals`), and deleting such a device's twin makes room. Registration
/// stops at `registry.max_devices_per_user` with a 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_ids_a_gateway_or_user_brings_are_bounded() {
    use crate::mosquitto::{Mosquitto, publish_lines};
    let broker = Mosquitto::start(0);
    let dir = tempfile::tempdir().unwrap();
    let mut cc = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cc.link.max_unregistered_devices = 3;
    cc.registry.max_devices_per_user = 2;
    let cloud = TestCloud::start(cc).await;
    let api = &cloud.api();
    let mut cfg = edge_config(dir.path(), cloud.addr);
    cfg.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    cfg.mqtt.user = USER.into();
    cfg.mqtt.subscriptions = vec![toml::from_str("topic = \"sensors/{device}/{resource}\"").unwrap()];
    cfg.mqtt.max_devices = 4;
    let edge = TestEdge::start(cfg).await;
    let port = broker.port;
    let publish = |device: &str, temp: f64| {
        publish_lines(
            port,
            &format!("sensors/{device}/climate"),
            1,
            &[format!("{{\"temp\":{temp}}}")],
        );
    };
    let reported = |device: &'static str| async move {
        let (s, t) = api.get(&format!("/v1/users/{USER}/devices/{device}/twin")).await;
        (s == StatusCode::OK).then(|| t["state"]["reported"]["climate"]["temp"].clone())
    };

    // m1 first, until the source is subscribed; then four more device ids.
    eventually(20, "m1's twin", || async move {
        publish("m1", 1.5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        reported("m1").await.filter(|t| *t == json!(1.5))
    })
    .await;
    for (i, d) in ["m2", "m3", "m4", "m5"].into_iter().enumerate() {
        publish(d, 2.5 + i as f64);
    }
    let metrics = edge.metrics.clone();
    eventually(20, "m5 refused by the agent", || {
        let n = metrics.source_count("mqtt", "device_cap");
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let state = cloud.state.clone();
    eventually(20, "m4 refused by the cloud", || {
        let n = state.metrics.device_quota_refusals.get();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    assert!(reported("m2").await.is_some() && reported("m3").await.is_some());
    assert_eq!(reported("m4").await, None, "past link.max_unregistered_devices");
    assert_eq!(reported("m5").await, None, "past mqtt.max_devices");
    assert_eq!(cloud.state.unregistered.count(GATEWAY), 3);

    // Deleting an unregistered device's twin makes room for the next.
    let (s, j) = api
        .call(
            Method::DELETE,
            &format!("/v1/users/{USER}/devices/m1"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{j}");
    eventually(20, "m4 admitted after m1 left", || async move {
        publish("m4", 4.5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        reported("m4").await.filter(|t| *t == json!(4.5))
    })
    .await;

    // A user registers at most registry.max_devices_per_user devices.
    api.register("r1", None).await;
    api.register("r2", None).await;
    let (s, j) = api
        .post(
            &format!("/v1/users/{USER}/devices"),
            json!({"device": "r3", "credential": CREDENTIAL}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{j}");
    assert!(j.to_string().contains("max_devices_per_user"), "{j}");

    edge.stop().await;
    cloud.stop().await;
}
