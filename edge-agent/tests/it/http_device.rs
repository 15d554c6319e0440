//! The HTTP device API driven by curl, with ThingsBoard's documented payload shapes.

use std::net::SocketAddr;
use std::path::Path;

use twinlake_edge::config::DeviceEntry;
use twinlake_edge::registry::CredentialHash;

use crate::lake::{read_dir_lake, start};
use crate::sources::{base_config, rows, sorted_column, stop, wait_count};

/// Runs curl: (status, body).
async fn curl(args: Vec<String>) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"])
            .args(&args)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    })
    .await
    .unwrap()
}

fn post(url: String, body: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        body.into(),
    ];
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a.push(url);
    a
}

fn config(dir: &Path) -> twinlake_edge::EdgeConfig {
    let mut c = base_config(dir);
    c.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    c.device_http.max_body_bytes = 4096;
    c.devices.push(DeviceEntry {
        user: "acme".into(),
        device: "th1".into(),
        credential_hash: CredentialHash::new("s3cret", 1000).to_string(),
        properties: Default::default(),
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_devices_post_telemetry_and_attributes_and_poll_commands() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(config(dir.path())).await;
    let addr: SocketAddr = agent.device_http.unwrap();
    let tb = |what: &str| format!("http://{addr}/api/v1/acme:th1:s3cret/{what}");
    let v1 = |what: &str| format!("http://{addr}/v1/{what}");
    let auth = ["-H", "Authorization: Bearer acme:th1:s3cret"];

    // ThingsBoard's three shapes: an object, an array, values with a ts.
    let (code, _) = curl(post(tb("telemetry"), r#"{"temperature":42,"humidity":73}"#, &[])).await;
    assert_eq!(code, 200);
    let arr = r#"[{"ts":1700000000000,"values":{"temperature":1}},{"temperature":2}]"#;
    assert_eq!(curl(post(tb("telemetry"), arr, &[])).await.0, 200);
    let timed = r#"{"ts":1700000001000,"values":{"co2":400}}"#;
    assert_eq!(curl(post(v1("telemetry/climate"), timed, &auth)).await.0, 200);
    assert_eq!(
        curl(post(tb("attributes"), r#"{"firmware":"1.2.3"}"#, &[])).await.0,
        200
    );

    // Refusals store nothing and say why.
    let wrong = format!("http://{addr}/api/v1/acme:th1:guess/telemetry");
    assert_eq!(curl(post(wrong, r#"{"temperature":-1}"#, &[])).await.0, 401);
    assert_eq!(
        curl(post(v1("telemetry"), r#"{"temperature":-2}"#, &[])).await.0,
        401,
        "no token"
    );
    let (code, body) = curl(post(tb("telemetry"), r#"{"temperature":"#, &[])).await;
    assert_eq!(code, 400);
    assert!(body.contains("\"error\"") && body.contains("JSON"), "{body}");
    let (code, _) = curl(post(tb("telemetry"), r#"[{"temperature":-3},7]"#, &[])).await;
    assert_eq!(code, 400, "wrong anywhere: nothing of it stored");
    let big = format!(r#"{{"temperature":-4,"pad":"{}"}}"#, "x".repeat(5000));
    assert_eq!(curl(post(tb("telemetry"), &big, &[])).await.0, 413);
    assert_eq!(curl(post(v1("telemetry/bad%20name"), "{}", &auth)).await.0, 400);
    assert_eq!(curl(post(tb("attributes"), "[1]", &[])).await.0, 400);
    // Deeper than the WAL's PSON reads back: refused, not confirmed and then lost.
    let deep = format!(r#"{{"temperature":-5,"x":{}1{}}}"#, "[".repeat(40), "]".repeat(40));
    let (code, body) = curl(post(tb("telemetry"), &deep, &[])).await;
    assert_eq!(code, 400, "{body}");

    let (code, body) = curl(vec![v1("whoami"), auth[0].into(), auth[1].into()]).await;
    assert_eq!((code, body.as_str()), (200, r#"{"user":"acme","device":"th1"}"#));

    // Commands: none waits (408); a write waits for the poll; the reply is reported.
    let (code, _) = curl(vec![tb("rpc?timeout=100")]).await;
    assert_eq!(code, 408);
    let key = twinlake_edge::listener::DeviceKey::new("acme", "th1");
    let control = agent.southbound.get(&key).expect("an HTTP device online has a route");
    let poller = tokio::spawn(curl(vec![tb("rpc?timeout=10000")]));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    control.write("th1", "led", &serde_json::json!(true)).unwrap();
    let (code, body) = poller.await.unwrap();
    assert_eq!(code, 200);
    let cmd: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cmd["method"], "led");
    assert_eq!(cmd["params"], true);
    let id = cmd["id"].as_u64().unwrap();
    assert_eq!(curl(post(v1(&format!("rpc/{id}")), "true", &auth)).await.0, 200);
    assert_eq!(
        curl(post(v1(&format!("rpc/{id}")), "true", &auth)).await.0,
        404,
        "replied once"
    );

    wait_count(&agent, "http", "stored", 5).await;
    assert_eq!(agent.metrics.source_count("http", "unauthorized"), 2);
    assert_eq!(agent.metrics.source_count("http", "bad_request"), 5);
    stop(agent).await;

    let lake = read_dir_lake(&dir.path().join("lake"));
    assert_eq!(sorted_column(&lake, "telemetry", "temperature"), ["1", "2", "42"]);
    assert!(rows(&lake, "telemetry").iter().all(|r| r["device"] == "th1"));
    let c = rows(&lake, "climate");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["co2"], "400");
    assert_eq!(c[0]["time"], "2023-11-14T22:13:21", "{c:?}");
    assert_eq!(rows(&lake, "attributes")[0]["firmware"], "1.2.3");
    assert_eq!(rows(&lake, "led").len(), 1);
}

/// Guessing credentials: past `auth.max_failures_per_device` the device is locked out,
/// and even its right credential gets 429 until the lockout ends; an unknown device and a
/// token that is not `user:device:credential` get 401 like a wrong credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_http_credentials_locks_the_device_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.auth.max_failures_per_device = 3;
    let agent = start(c).await;
    let addr = agent.device_http.unwrap();
    let url = |token: &str| format!("http://{addr}/api/v1/{token}/telemetry");
    assert_eq!(curl(post(url("acme:ghost:x"), "{}", &[])).await.0, 401);
    assert_eq!(curl(post(url("not-a-token"), "{}", &[])).await.0, 401);
    for _ in 0..3 {
        assert_eq!(curl(post(url("acme:th1:guess"), r#"{"a":1}"#, &[])).await.0, 401);
    }
    let (code, body) = curl(post(url("acme:th1:s3cret"), r#"{"a":1}"#, &[])).await;
    assert_eq!(code, 429, "{body}");
    assert!(agent.metrics.auth_rate_limited.get() >= 1);
    assert_eq!(agent.metrics.source_count("http", "stored"), 0);
    stop(agent).await;
}

/// Retention where rows enter (#17): a reading whose hour the lake would already delete is
/// refused before it is stored and counted; a current one in the same request is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_already_past_retention_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.retention
        .tables
        .insert("telemetry".into(), std::time::Duration::from_secs(3600).into());
    let agent = start(c).await;
    let addr = agent.device_http.unwrap();
    let url = format!("http://{addr}/api/v1/acme:th1:s3cret/telemetry");
    let old = r#"[{"ts":1700000000000,"values":{"temperature":1}},{"temperature":2}]"#;
    assert_eq!(curl(post(url.clone(), old, &[])).await.0, 200);
    wait_count(&agent, "http", "stored", 1).await;
    assert_eq!(agent.metrics.refused_count("expired"), 1);
    stop(agent).await;
    let lake = read_dir_lake(&dir.path().join("lake"));
    assert_eq!(sorted_column(&lake, "telemetry", "temperature"), ["2"]);
}
