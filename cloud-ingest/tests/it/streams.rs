//! SSE and WebSocket streams deliver twin changes and resource values.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Reads SSE `data:` lines from a response until `pred` holds for one, within 10 s.
async fn sse_until(resp: &mut reqwest::Response, mut pred: impl FnMut(&str, &Json) -> bool) -> Json {
    let mut buf = String::new();
    let mut event = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end();
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                let j: Json = serde_json::from_str(d.trim()).expect("JSON data");
                if pred(&event, &j) {
                    return j;
                }
            }
        }
    }
}

async fn ws(addr: std::net::SocketAddr, path: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.expect("WebSocket");
    ws
}

async fn ws_until(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut pred: impl FnMut(&Json) -> bool,
) -> Json {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = m {
            let j: Json = serde_json::from_str(&t).unwrap();
            if pred(&j) {
                return j;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_and_websocket_deliver_twin_changes_and_resource_values() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d5"]).await;

    // Subscribed before the device arrives: its connect and first values come through.
    let mut all = api
        .client
        .get(format!("{}/v1/events?device=d5", api.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(all.status(), 200);
    let mut twin_ws = ws(
        cloud.addr,
        &format!("/v1/users/{USER}/devices/d5/twin/events?authorization={READ}"),
    )
    .await;

    let dev = TestDevice::start(edge.tcp, "d5");
    let online = sse_until(&mut all, |e, j| {
        e == "connection" && j["connection"]["online"] == json!(true)
    })
    .await;
    assert_eq!(online["device"], json!("d5"));
    let rep = sse_until(&mut all, |e, j| {
        e == "reported" && j["state"]["reported"]["temp"].is_number()
    })
    .await;
    assert!(rep["version"].as_u64().is_some());
    let j = ws_until(&mut twin_ws, |j| j["event"] == json!("reported")).await;
    assert_eq!(j["device"], json!("d5"));
    wait_online(&api, "d5").await;

    // A desired change is an event too.
    api.set_desired("d5", json!({"led": true})).await;
    ws_until(&mut twin_ws, |j| j["event"] == json!("desired")).await;
    ws_until(&mut twin_ws, |j| j["state"]["reported"]["led"] == json!(true)).await;

    // A resource stream over SSE at an interval the cloud asks the device for.
    let mut temp = api
        .client
        .get(format!(
            "{}/v1/users/{USER}/devices/d5/streams/temp?interval=1",
            api.base
        ))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(temp.status(), 200);
    let v = sse_until(&mut temp, |e, j| e == "value" && j["resource"] == json!("temp")).await;
    assert!(v["value"].is_number(), "{v}");

    // The Thinger stream WebSocket on /v3/…/resources.
    let mut thinger = ws(
        cloud.addr,
        &format!("/v3/users/{USER}/devices/d5/resources?authorization={READ}"),
    )
    .await;
    thinger
        .send(Message::Text(
            json!({"resource": "temp", "interval": 1, "enabled": true})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let got = ws_until(&mut thinger, |j| {
        j["resource"] == json!("temp") && j["value"].is_number()
    })
    .await;
    assert_eq!(got["device"], json!("d5"));
    thinger
        .send(Message::Text(
            json!({"resource": "temp", "enabled": false}).to_string().into(),
        ))
        .await
        .unwrap();
    ws_until(&mut thinger, |j| j["enabled"] == json!(false)).await;

    // Without a token, no stream.
    let r = api.client.get(format!("{}/v1/events", api.base)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    drop((temp, all));
    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}

/// The interval the device samples `temp` at, as its stream says.
async fn device_interval(dev: &TestDevice) -> Option<u64> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    dev.with(move |thing| {
        let _ = tx.send(thing.stream_interval(&["temp"]));
    });
    rx.await.unwrap()
}

/// A read token's stream cannot make a device sample faster than `http.stream_min_interval`;
/// an admin token's (with control) can (#13, "Scopes"). Read off the device's own stream, not timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_token_cannot_speed_up_sampling_past_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.http.stream_min_interval = Duration::from_secs(2);
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    api.register("d6", Some(GATEWAY)).await;
    let mut ec = edge_config(dir.path(), cloud.addr);
    // The agent's own sampling is slow: only the subscribers' streams can speed it up.
    ec.streams.default_interval = Duration::from_secs(3600);
    let edge = TestEdge::start(ec).await;
    let dev = TestDevice::start(edge.tcp, "d6");
    wait_online(&api, "d6").await;
    let url = format!("{}/v1/users/{USER}/devices/d6/streams/temp?interval=100ms", api.base);
    let mut read = api.client.get(&url).bearer_auth(READ).send().await.unwrap();
    assert_eq!(read.status(), 200);
    sse_until(&mut read, |e, j| e == "value" && j["resource"] == json!("temp")).await;
    assert_eq!(
        device_interval(&dev).await,
        Some(2_000),
        "the floor, not the 100 ms asked"
    );
    drop(read);
    let mut admin = api.client.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(admin.status(), 200);
    sse_until(&mut admin, |e, j| e == "value" && j["resource"] == json!("temp")).await;
    eventually(10, "the admin token's interval reaches the device", || async {
        (device_interval(&dev).await == Some(100)).then_some(())
    })
    .await;
    drop(admin);
    // The last subscriber gone, the device goes back to the agent's own stream (its
    // interval from what the device described), not to no stream at all.
    eventually(10, "the agent's own stream is back on the device", || async {
        (device_interval(&dev).await == Some(3_600_000)).then_some(())
    })
    .await;
    dev.stop();
    edge.stop().await;
    cloud.stop().await;
}
