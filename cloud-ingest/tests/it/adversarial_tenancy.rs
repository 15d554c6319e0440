//! Two users on one cloud (#13, finding 3): each user's token sees and controls only that
//! user's devices, through REST, streams and SQL on every surface, and a listing's or an
//! aggregate's answer is the user's own.

use std::net::SocketAddr;
use std::time::Duration;

use arrow::array::Array;
use futures_util::TryStreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::support::*;

/// Registers `user/device` on the cloud's own listener and makes a read+control token for
/// `user`; returns the token.
async fn user_with_device(api: &Api, user: &str, device: &str) -> String {
    let (s, j) = api
        .post(
            &format!("/v1/users/{user}/devices"),
            json!({"device": device, "credential": CREDENTIAL}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    let (s, j) = api
        .post(
            "/v1/tokens",
            json!({"name": format!("{user}-token"), "scopes": ["read", "control", "write-desired"], "user": user}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    j["token"].as_str().unwrap().to_owned()
}

async fn sql(api: &Api, token: &str, q: &str) -> Json {
    let (s, j) = api
        .call(Method::POST, "/v1/sql", Some(token), Some(json!({ "sql": q })))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}: {j}");
    j
}

async fn pg_rows(addr: SocketAddr, token: &str, q: &str) -> Vec<Vec<String>> {
    let c = pg_connect(addr, token).await;
    c.simple_query(q)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

async fn flight_strings(addr: SocketAddr, token: &str, q: &str) -> Vec<String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    c.set_token(token.into());
    let info = c.execute(q.into(), None).await.unwrap();
    let mut out = Vec::new();
    for ep in info.endpoint {
        let batches: Vec<_> = c.do_get(ep.ticket.unwrap()).await.unwrap().try_collect().await.unwrap();
        for b in batches {
            let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let s = col.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
            out.extend((0..s.len()).map(|i| s.value(i).to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_users_see_and_control_only_their_own_devices() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    let acme = user_with_device(&api, "acme", "a1").await;
    let globex = user_with_device(&api, "globex", "g1").await;
    let devices = cloud.devices.unwrap();
    let (a1, g1) = (
        TestDevice::start_as(devices, "acme", "a1"),
        TestDevice::start_as(devices, "globex", "g1"),
    );
    // Both stream temp; wait until both are in SQL for the platform.
    eventually(20, "both devices' rows", || async {
        let (s, j) = api
            .call(
                Method::POST,
                "/v1/sql",
                Some(ADMIN),
                Some(json!({"sql": "SELECT count(DISTINCT device) AS n FROM temp"})),
            )
            .await;
        (s == StatusCode::OK && j[0]["n"] == 2).then_some(())
    })
    .await;

    // REST: the other user's paths are refused, whatever the route.
    let refused = [
        (Method::GET, "/v1/users/globex/devices"),
        (Method::GET, "/v1/users/globex/devices/g1"),
        (Method::GET, "/v1/users/globex/devices/g1/twin"),
        (Method::GET, "/v2/users/globex/devices/g1/temp"),
        (Method::GET, "/v3/users/globex/devices/g1/resources/temp"),
        (Method::GET, "/v3/users/globex/devices/g1/properties"),
        (Method::GET, "/v1/users/globex/endpoints"),
        (Method::GET, "/v1/users/globex/devices/g1/streams/temp"),
        (Method::GET, "/v1/users/globex/devices/g1/twin/events"),
        (Method::GET, "/v1/users/gl%6Fbex/devices/g1/twin"),
        (Method::GET, "/v1/twins?user=globex"),
        (Method::GET, "/v1/events?user=globex"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/v1/gateways"),
    ];
    for (m, path) in refused.clone() {
        let (s, j) = api.call(m, path, Some(&acme), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {j}");
    }
    let writes = [
        (
            Method::POST,
            "/v3/users/globex/devices/g1/resources/led",
            json!({"in": true}),
        ),
        (
            Method::PATCH,
            "/v1/users/globex/devices/g1/twin",
            json!({"desired": {"led": true}}),
        ),
        (
            Method::POST,
            "/v1/users/globex/devices",
            json!({"device": "x", "credential": CREDENTIAL}),
        ),
        (Method::POST, "/v1/tokens", json!({"name": "t", "scopes": ["admin"]})),
        (Method::POST, "/v1/users", json!({"user": "initech"})),
    ];
    for (m, path, body) in writes {
        let (s, j) = api.call(m, path, Some(&acme), Some(body)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {j}");
    }
    // Its own are fine, and listings are its own.
    let (s, j) = api
        .call(Method::GET, "/v1/users/acme/devices/a1/twin", Some(&acme), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let (_, j) = api.call(Method::GET, "/v1/devices", Some(&acme), None).await;
    let names: Vec<_> = j.as_array().unwrap().iter().map(|d| d["device"].clone()).collect();
    assert_eq!(names, [json!("a1")], "{j}");
    let (_, j) = api.call(Method::GET, "/v1/twins", Some(&acme), None).await;
    let users: Vec<_> = j.as_array().unwrap().iter().map(|t| t["user"].clone()).collect();
    assert_eq!(users, [json!("acme")], "{j}");
    // The guard counts what it refused on user paths (ten reads, three writes); the
    // listings and the platform routes refuse in their handlers.
    assert_eq!(metric(&cloud), 13);

    // SQL over HTTP: each user's own rows and aggregates (the rows hold still first).
    a1.stop();
    g1.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (token, dev) in [(&acme, "a1"), (&globex, "g1")] {
        let j = sql(&api, token, "SELECT DISTINCT device FROM temp").await;
        assert_eq!(j, json!([{ "device": dev }]));
        let j = sql(&api, token, "SELECT count(*) AS n FROM twins").await;
        assert_eq!(j, json!([{ "n": 1 }]));
        let j = sql(&api, token, "SELECT device FROM devices").await;
        assert_eq!(j, json!([{ "device": dev }]));
        let stats = "SELECT count(*) AS n, min(value) AS lo, max(value) AS hi FROM temp";
        let theirs = sql(&api, ADMIN, &format!("{stats} WHERE device = '{dev}'")).await;
        assert_eq!(sql(&api, token, stats).await, theirs, "{dev}");
    }
    let other = sql(&api, &acme, "SELECT count(*) AS n FROM temp WHERE device = 'g1'").await;
    assert_eq!(other, json!([{ "n": 0 }]));

    // The Postgres wire and Flight SQL.
    let pg = cloud.postgres.unwrap();
    assert_eq!(pg_rows(pg, &acme, "SELECT DISTINCT device FROM temp").await, [["a1"]]);
    assert_eq!(pg_rows(pg, &globex, "SELECT user FROM twins").await.len(), 1);
    assert_eq!(
        pg_rows(pg, &globex, "SELECT count(*) FROM temp WHERE device = 'a1'").await,
        [["0"]]
    );
    let flight = cloud.flight.unwrap();
    assert_eq!(
        flight_strings(flight, &globex, "SELECT DISTINCT device FROM temp").await,
        ["g1"]
    );
    assert_eq!(
        flight_strings(flight, &acme, "SELECT device FROM devices").await,
        ["a1"]
    );
    cloud.stop().await;
}

/// Two users' devices of the same name on one gateway: every row records its user (the
/// `owner` column), so their series stay apart, and each user's count, min and max are its
/// own on every SQL surface.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_named_devices_of_two_users_keep_their_rows_apart() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    let acme = user_with_device(&api, "acme", "d1").await;
    let globex = user_with_device(&api, "globex", "d1").await;
    let devices = cloud.devices.unwrap();
    let (a, g) = (
        TestDevice::start_as(devices, "acme", "d1"),
        TestDevice::start_as(devices, "globex", "d1"),
    );
    let by_owner = "SELECT owner, count(*) AS n FROM temp GROUP BY owner ORDER BY owner";
    eventually(20, "both users' rows", || async {
        let (s, j) = api
            .call(Method::POST, "/v1/sql", Some(ADMIN), Some(json!({ "sql": by_owner })))
            .await;
        (s == StatusCode::OK && j.as_array().is_some_and(|r| r.len() == 2)).then_some(())
    })
    .await;
    a.stop();
    g.stop();
    // Every row is in a lake file (no fresh row left to answer for it).
    let lake = cloud.state.sql.lake();
    eventually(20, "every row in a file", || async {
        let j = sql(&api, ADMIN, "SELECT count(*) AS n FROM temp").await;
        let in_files: u64 = lake.files("temp").iter().map(|f| f.rows).sum();
        (in_files > 0 && j[0]["n"] == in_files && lake.fresh_rows() == 0).then_some(())
    })
    .await;
    let all = sql(&api, ADMIN, by_owner).await;
    assert_eq!(
        (all[0]["owner"].clone(), all[1]["owner"].clone()),
        (json!("acme"), json!("globex")),
        "{all}"
    );
    let stats = "SELECT count(*) AS n, min(value) AS lo, max(value) AS hi FROM temp";
    let pg = cloud.postgres.unwrap();
    let flight = cloud.flight.unwrap();
    for (token, user) in [(&acme, "acme"), (&globex, "globex")] {
        let theirs = sql(&api, ADMIN, &format!("{stats} WHERE owner = '{user}'")).await;
        assert_eq!(sql(&api, token, stats).await, theirs, "{user}");
        assert_eq!(
            sql(&api, token, "SELECT DISTINCT owner FROM temp").await,
            json!([{ "owner": user }])
        );
        let n = theirs[0]["n"].to_string();
        assert_eq!(
            pg_rows(pg, token, "SELECT count(*) FROM temp WHERE device = 'd1'").await,
            [[n.clone()]]
        );
        assert_eq!(flight_strings(flight, token, "SELECT count(*) FROM temp").await, [n]);
    }
    // The other user's twin of the same name stays out of reach.
    let (s, _) = api
        .call(Method::GET, "/v1/users/globex/devices/d1/twin", Some(&acme), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    cloud.stop().await;
}

fn metric(cloud: &TestCloud) -> u64 {
    cloud.state.metrics.tenant_refusals.get()
}

/// A token's user can see only its own twin events on the all-events stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_stream_carries_only_the_tokens_user() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    let acme = user_with_device(&api, "acme", "a1").await;
    let _ = user_with_device(&api, "globex", "g1").await;
    let resp = reqwest::Client::new()
        .get(format!("http://{}/v1/events", cloud.addr))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let devices = cloud.devices.unwrap();
    let (_a1, _g1) = (
        TestDevice::start_as(devices, "globex", "g1"),
        TestDevice::start_as(devices, "acme", "a1"),
    );
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text.contains("\"a1\"") {
        let chunk = tokio::time::timeout_at(deadline, body.try_next())
            .await
            .expect("an event for acme's device")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("globex"), "{text}");
    cloud.stop().await;
}

/// A GET runs the resource on the device (#13, finding 5): a read token may read outputs
/// and inputs, but running a `run` resource or calling an input/output needs `control`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_cannot_run_device_code() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d1"]).await;
    let dev = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;
    let get = |path: &'static str, token: &'static str| {
        let api = api.clone();
        async move {
            api.call(
                Method::GET,
                &format!("/v3/users/{USER}/devices/d1/resources/{path}"),
                Some(token),
                None,
            )
            .await
            .0
        }
    };
    assert_eq!(get("temp", READ).await, StatusCode::OK);
    assert_eq!(get("led", READ).await, StatusCode::OK);
    assert_eq!(get("reboot", READ).await, StatusCode::FORBIDDEN);
    assert_eq!(get("in_out", READ).await, StatusCode::FORBIDDEN);
    let v2 = api
        .call(
            Method::GET,
            &format!("/v2/users/{USER}/devices/d1/reboot"),
            Some(READ),
            None,
        )
        .await
        .0;
    assert_eq!(v2, StatusCode::FORBIDDEN);
    assert_eq!(
        dev.reboots.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a read token ran reboot"
    );
    assert_eq!(get("reboot", CONTROL).await, StatusCode::OK);
    assert_eq!(dev.reboots.load(std::sync::atomic::Ordering::Relaxed), 1);

    drop(dev);
    edge.stop().await;
    cloud.stop().await;
}
