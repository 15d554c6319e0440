//! Tokens and scopes: 401 without a valid token and 403 without the scope, on every class
//! of route.

use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_class_of_route_checks_token_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    api.register("dev", Some(GATEWAY)).await;
    let u = USER;
    let routes: Vec<(Method, String, Option<Json>, &str, &str)> = vec![
        // (method, path, body, a token that may, a token that may not)
        (Method::GET, "/v1/openapi.json".into(), None, READ, DESIRED),
        (Method::GET, "/v1/devices".into(), None, READ, CONTROL),
        (Method::GET, format!("/v1/users/{u}/devices"), None, READ, DESIRED),
        (Method::GET, format!("/v1/users/{u}/devices/dev"), None, READ, DESIRED),
        (
            Method::GET,
            format!("/v1/users/{u}/devices/dev/stats"),
            None,
            READ,
            DESIRED,
        ),
        (
            Method::GET,
            format!("/v1/users/{u}/devices/dev/twin"),
            None,
            READ,
            CONTROL,
        ),
        (Method::GET, "/v1/twins".into(), None, READ, CONTROL),
        (
            Method::GET,
            format!("/v3/users/{u}/devices/dev/resources/temp"),
            None,
            READ,
            DESIRED,
        ),
        (
            Method::GET,
            format!("/v2/users/{u}/devices/dev/temp"),
            None,
            READ,
            DESIRED,
        ),
        (
            Method::GET,
            format!("/v3/users/{u}/devices/dev/properties"),
            None,
            READ,
            DESIRED,
        ),
        (Method::GET, format!("/v1/users/{u}/endpoints"), None, READ, DESIRED),
        (
            Method::PATCH,
            format!("/v1/users/{u}/devices/dev/twin"),
            Some(json!({"desired": {"led": true}})),
            DESIRED,
            READ,
        ),
        (
            Method::PATCH,
            format!("/v1/users/{u}/devices/dev/twin"),
            Some(json!({"desired": {}})),
            DESIRED,
            CONTROL,
        ),
        (
            Method::POST,
            format!("/v3/users/{u}/devices/dev/resources/led"),
            Some(json!(true)),
            CONTROL,
            READ,
        ),
        (
            Method::POST,
            format!("/v3/users/{u}/devices/dev/resources/led"),
            Some(json!(true)),
            CONTROL,
            DESIRED,
        ),
        (
            Method::POST,
            format!("/v2/users/{u}/devices/dev/led"),
            Some(json!({"in": true})),
            CONTROL,
            READ,
        ),
        (
            Method::PUT,
            format!("/v3/users/{u}/devices/dev/properties/p"),
            Some(json!(1)),
            CONTROL,
            READ,
        ),
        (
            Method::POST,
            format!("/v1/users/{u}/endpoints/e/call"),
            Some(json!({})),
            CONTROL,
            READ,
        ),
        (
            Method::POST,
            format!("/v1/users/{u}/devices"),
            Some(json!({"device": "new1"})),
            ADMIN,
            CONTROL,
        ),
        (
            Method::PATCH,
            format!("/v1/users/{u}/devices/dev"),
            Some(json!({"name": "x"})),
            ADMIN,
            CONTROL,
        ),
        (
            Method::DELETE,
            format!("/v1/users/{u}/devices/nobody"),
            None,
            ADMIN,
            READ,
        ),
        (
            Method::PUT,
            format!("/v1/users/{u}/endpoints/e"),
            Some(json!({"url": "http://127.0.0.1:9/x"})),
            ADMIN,
            CONTROL,
        ),
        (Method::GET, "/v1/tokens".into(), None, ADMIN, READ),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"name": "t2", "scopes": ["read"]})),
            ADMIN,
            CONTROL,
        ),
        (Method::GET, "/v1/gateways".into(), None, ADMIN, READ),
        (
            Method::POST,
            "/v1/gateways".into(),
            Some(json!({"id": "gw9"})),
            ADMIN,
            CONTROL,
        ),
        (Method::GET, "/v1/no/such/route".into(), None, READ, "not-a-token"),
    ];
    for (method, path, body, good, weak) in routes {
        let what = format!("{method} {path}");
        let (s, j) = api.call(method.clone(), &path, None, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} without a token: {j}");
        let (s, _) = api.call(method.clone(), &path, Some("tl_forged"), body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} with a forged token");
        let (s, j) = api.call(method.clone(), &path, Some(weak), body.clone()).await;
        let expected = if weak == "not-a-token" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(s, expected, "{what} with a token lacking the scope: {j}");
        let (s, j) = api.call(method.clone(), &path, Some(good), body.clone()).await;
        assert!(
            s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
            "{what} with the right scope gave {s}: {j}"
        );
        // Admin holds every scope.
        let (s, _) = api.call(method, &path, Some(ADMIN), body).await;
        assert!(
            s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
            "{what} as admin gave {s}"
        );
    }

    // ?authorization= works where headers cannot be set.
    let (s, _) = api
        .call(
            Method::GET,
            &format!("/v1/users/{u}/devices/dev/twin?authorization={READ}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The gateway link takes gateway tokens only.
    for token in [None, Some(ADMIN), Some("tlg_forged")] {
        let (s, _) = api.call(Method::GET, "/v1/gateway/link", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "link with {token:?}");
    }

    // A token made through the API works, is listed without its secret, and can be revoked.
    let (s, j) = api.post("/v1/tokens", json!({"name": "ci", "scopes": ["read"]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let token = j["token"].as_str().unwrap().to_owned();
    let (s, _) = api.call(Method::GET, "/v1/devices", Some(&token), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = api.get("/v1/tokens").await;
    assert!(!list.to_string().contains(&token), "secrets are never listed");
    let (s, _) = api.call(Method::DELETE, "/v1/tokens/ci", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.call(Method::GET, "/v1/devices", Some(&token), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Device credentials are returned once and stored hashed.
    let (s, j) = api
        .post(&format!("/v1/users/{u}/devices"), json!({"device": "made"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let cred = j["credential"].as_str().unwrap().to_owned();
    let (_, again) = api.get(&format!("/v1/users/{u}/devices/made")).await;
    assert!(!again.to_string().contains(&cred) && again.get("credential").is_none());
    let raw = std::fs::read(dir.path().join("cloud/cloud.redb")).unwrap();
    assert!(
        !raw.windows(cred.len()).any(|w| w == cred.as_bytes()),
        "no plaintext credential on disk"
    );
    cloud.stop().await;
}

/// The web console in a real Chromium (tests/python/console.py): sign-in with a token,
/// the fleet, search, a hostile tag rendered as text, the token in sessionStorage only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_signs_in_and_shows_the_fleet_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.sql.max_rows = 20_000;
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    for d in ["sensor-a", "sensor-b"] {
        api.register(d, None).await;
    }
    let (s, j) = api
        .post(
            &format!("/v1/users/{USER}/devices"),
            serde_json::json!({"device": "evil", "name": "<img src=x onerror=\"alert('pwned')\">", "credential": CREDENTIAL, "tags": {"note": "<img src=x onerror=\"document.title='pwned'\">"}}),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{j}");
    // A connected device, for its resources' controls.
    api.register("live-1", None).await;
    let device = TestDevice::start(cloud.devices.unwrap(), "live-1");
    wait_online(&api, "live-1").await;
    // An alarm for the alarms page: a scheduled SQL rule that returns one row.
    let (s, j) = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/users/{USER}/rules/busy-a"),
            Some(ADMIN),
            Some(
                serde_json::json!({"when": {"type": "sql", "every": "10m", "key": ["device"],
                "query": "SELECT device FROM devices WHERE device = 'sensor-a'"}}),
            ),
        )
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{j}");
    // An endpoint the console calls from the device page.
    let (hook, mut calls) = receiver().await;
    api.put_endpoint("console-hook", serde_json::json!({ "url": hook }))
        .await;
    let base = format!("http://{}", cloud.addr);
    browser("console.py", &[&base, ADMIN, READ], "console: ok").await;
    assert!(
        device.led.load(std::sync::atomic::Ordering::SeqCst),
        "the console's write reached the device"
    );
    let (_, body) = tokio::time::timeout(std::time::Duration::from_secs(20), calls.recv())
        .await
        .expect("the console's endpoint call")
        .unwrap();
    assert_eq!(body, r#"{"from":"console"}"#);
    device.stop();
    cloud.stop().await;
}

/// The console stays usable with 10,000 devices (tests/python/console_fleet.py, Chromium):
/// listed with counts, searched by name and tag, filtered and paged. The steps' times are
/// printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_stays_usable_with_ten_thousand_devices() {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    cloud
        .state
        .twins
        .write(|t| -> Result<(), twinlake_twin::TwinError> {
            for i in 0..N {
                let site = if i % 2 == 0 { "a" } else { "b" };
                let tags = json!({ "site": site }).as_object().cloned().unwrap_or_default();
                t.create(&twinlake_twin::TwinKey::new(USER, &format!("dev-{i:05}")), tags)?;
            }
            Ok(())
        })
        .unwrap();
    let base = format!("http://{}", cloud.addr);
    let out = browser("console_fleet.py", &[&base, ADMIN, &N.to_string()], "fleet10k: ok").await;
    println!("{out}");
    cloud.stop().await;
}

/// Runs a browser script of `tests/python` with `args`; its output, which must contain `ok`.
async fn browser(script: &str, args: &[&str], ok: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python())
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains(ok),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
