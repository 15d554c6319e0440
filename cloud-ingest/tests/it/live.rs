//! Live resources through the REST API and the Thinger-compatible paths; endpoint webhooks;
//! properties.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_read_write_call_and_run_through_every_path() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d3", "gone"]).await;
    let dev = TestDevice::start(edge.tcp, "d3");
    wait_online(&api, "d3").await;
    let v3 = format!("/v3/users/{USER}/devices/d3/resources");
    let v2 = format!("/v2/users/{USER}/devices/d3");

    // Ours (= Thinger v3): raw values.
    let (s, j) = api.call(Method::GET, &format!("{v3}/temp"), Some(READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(j.as_f64().is_some_and(|t| t >= 20.0), "{j}");
    let (s, _) = api
        .call(Method::POST, &format!("{v3}/led"), Some(CONTROL), Some(json!(true)))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(dev.led.load(Ordering::Relaxed));
    let (s, j) = api
        .call(
            Method::POST,
            &format!("{v3}/in_out"),
            Some(CONTROL),
            Some(json!({"value1": 6, "value2": 7})),
        )
        .await;
    assert_eq!((s, j), (StatusCode::OK, json!({"sum": 13, "mult": 42})));
    let (s, _) = api
        .call(Method::POST, &format!("{v3}/reboot"), Some(CONTROL), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dev.reboots.load(Ordering::Relaxed), 1);
    let (s, j) = api.call(Method::GET, &v3, Some(READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["led"]["fn"], json!(2), "describe: {j}");
    assert_eq!(j["temp"]["fn"], json!(3));
    // The edge wrote answers onto the link's socket from the device's task, not through the
    // writer task (one falls back only when the socket is busy).
    assert!(
        edge.metrics.link_replies_direct.get() > 0,
        "no answer took the direct path"
    );
    // A PSON body (application/octet-stream) works as on Thinger.
    let pson = twinlake_sdk::pson::Value::Bool(false).to_bytes();
    let r = api
        .client
        .post(format!("{}{v3}/led", api.base))
        .bearer_auth(CONTROL)
        .header("content-type", "application/octet-stream")
        .body(pson)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!dev.led.load(Ordering::Relaxed));

    // Thinger v2: {"in": …} / {"out": …}.
    let (s, j) = api.call(Method::GET, &format!("{v2}/temp"), Some(READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(j["out"].as_f64().is_some(), "{j}");
    let (s, _) = api
        .call(
            Method::POST,
            &format!("{v2}/led"),
            Some(CONTROL),
            Some(json!({"in": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(dev.led.load(Ordering::Relaxed));
    let (s, j) = api
        .call(
            Method::POST,
            &format!("{v2}/in_out"),
            Some(CONTROL),
            Some(json!({"in": {"value1": 2, "value2": 3}})),
        )
        .await;
    assert_eq!((s, j), (StatusCode::OK, json!({"out": {"sum": 5, "mult": 6}})));
    let (s, j) = api.call(Method::GET, &format!("{v2}/api"), Some(READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["in_out"]["fn"], json!(4), "{j}");
    let (s, j) = api.call(Method::GET, &format!("{v2}/led/api"), Some(READ), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j, json!({"in": true}), "the template carries the input's state");

    // A live read of an output lands in the twin.
    eventually(5, "a read value in reported", || async {
        api.twin("d3").await["state"]["reported"]["temp"].as_f64()
    })
    .await;

    // Errors: unknown resource 404, unknown device 404, offline device 503, slow device 504.
    let (s, j) = api.call(Method::GET, &format!("{v3}/nope"), Some(READ), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{j}");
    let (s, j) = api
        .call(
            Method::GET,
            &format!("/v3/users/{USER}/devices/ghost/resources/temp"),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{j}");
    let (s, j) = api
        .call(
            Method::GET,
            &format!("/v3/users/{USER}/devices/gone/resources/temp"),
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{j}");
    let started = std::time::Instant::now();
    let (s, j) = api.call(Method::GET, &format!("{v3}/slow"), Some(READ), None).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{j}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the deadline");

    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_calls_fire_webhooks_and_properties_reach_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d4"]).await;
    let (url, mut hooks) = receiver().await;
    api.put_endpoint(
        "alarm",
        json!({"url": url, "body": "{\"who\":\"{{device}}\",\"t\":{{payload.temp}},\"all\":{{payload}}}"}),
    )
    .await;

    let dev = TestDevice::start(edge.tcp, "d4");
    wait_online(&api, "d4").await;
    dev.with(|thing| {
        let payload = twinlake_sdk::pson::Value::object().with("temp", 31.5);
        thing.call_endpoint("alarm", Some(payload), true);
    });
    let (who, body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "d4");
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"who": "d4", "t": 31.5, "all": {"temp": 31.5}}));
    // The API can call it too.
    let (s, _) = api
        .call(
            Method::POST,
            &format!("/v1/users/{USER}/endpoints/alarm/call"),
            Some(CONTROL),
            Some(json!({"temp": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, body) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(body.contains("\"t\":1"), "{body}");

    // Properties: set from the API, read by the device with GET_PROPERTY; set by the device,
    // read from the API.
    let (s, _) = api
        .call(
            Method::PUT,
            &format!("/v3/users/{USER}/devices/d4/properties/config"),
            Some(CONTROL),
            Some(json!({"value": {"rate": 9}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    dev.with(|thing| {
        thing
            .set_property("fw", twinlake_sdk::pson::Value::from("1.2.3"), false)
            .map(|_| ())
            .unwrap_or(())
    });
    eventually(10, "the device's property in the API", || async {
        let (s, j) = api.get(&format!("/v3/users/{USER}/devices/d4/properties/fw")).await;
        (s == StatusCode::OK && j["value"] == json!("1.2.3")).then_some(())
    })
    .await;
    let (_, list) = api.get(&format!("/v3/users/{USER}/devices/d4/properties")).await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");

    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}
