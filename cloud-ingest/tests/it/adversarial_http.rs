//! Slow and many HTTP clients (#13, finding 9): headers that never finish and bodies that
//! trickle are cut off at their deadlines, and one address cannot open more than its cap.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::closed_within;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_many_http_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.http.header_timeout = Duration::from_millis(500);
    cfg.http.body_timeout = Duration::from_millis(500);
    cfg.http.max_connections_per_ip = 60;
    let cloud = TestCloud::start(cfg).await;
    // Slowloris: 50 connections whose headers never end.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(cloud.addr).await.unwrap();
        s.write_all(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        // Generous: twenty times the configured deadline.
        assert!(
            closed_within(s, Duration::from_secs(10)).await,
            "a slow header stayed open"
        );
    }
    // A body that trickles.
    let mut s = tokio::net::TcpStream::connect(cloud.addr).await.unwrap();
    s.write_all(
        format!("POST /v1/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\nContent-Length: 100\r\n\r\nSEL")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut reply)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    drop(slow);
    // The cap: of 70 sockets from one address, 10 are closed at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut socks = Vec::new();
    for _ in 0..70 {
        socks.push(tokio::net::TcpStream::connect(cloud.addr).await.unwrap());
    }
    let mut refused = 0;
    for s in socks.iter_mut().skip(60) {
        if closed_within(s, Duration::from_millis(300)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    drop(socks);
    cloud.stop().await;
}

/// Everything logged, at every level, into one buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this thread at TRACE into the returned buffer, while the guard lives.
/// Two dispatchers alive, not one: with a single one, tracing-core works out a callsite's
/// interest from the default of whichever thread hits it first, and a test on another
/// thread (with no subscriber) would switch this test's callsites off for good.
fn capture_logs() -> (Captured, (tracing::Dispatch, tracing::subscriber::DefaultGuard)) {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let second = tracing::Dispatch::new(tracing_subscriber::registry());
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, (second, guard))
}

/// Tokens passed as `?authorization=` (what browsers' EventSource and WebSocket clients
/// must use) appear in no log line at any level, valid or not, on plain, streaming and
/// refused requests (#13, "Hygiene"). A current-thread runtime, so the subscriber set here
/// sees the server's tasks.
#[tokio::test]
async fn query_tokens_are_not_logged() {
    let (logs, _capture) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let guess = "guessed-token-4f1c9e";
    let http = reqwest::Client::new();
    let base = format!("http://{}", cloud.addr);
    for (path, token) in [
        ("/v1/devices", READ),
        ("/v1/devices", guess),
        ("/v1/twins/nobody", READ),
        ("/v1/users/other/devices", READ),
        ("/v1/sql", READ),
    ] {
        let _ = http.get(format!("{base}{path}?authorization={token}")).send().await;
    }
    // A stream, opened and dropped.
    if let Ok(r) = http.get(format!("{base}/v1/events?authorization={READ}")).send().await {
        let _ = tokio::time::timeout(Duration::from_millis(300), r.bytes()).await;
    }
    cloud.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.lines().count() > 10, "the subscriber saw the server: {text}");
    for secret in [READ, guess] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}

/// Device tokens in URI paths (the HTTP device API's `/api/v1/{token}/…`, CoAP's Uri-Path)
/// appear in no log line at any level, right or wrong.
#[tokio::test]
async fn device_tokens_in_paths_are_not_logged() {
    let (logs, _capture) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.edge.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.edge.coap.udp = Some("127.0.0.1:0".parse().unwrap());
    let cloud = TestCloud::start(cfg).await;
    cloud.api().register("tok", None).await;
    let guess = "guessed-cred-8d2e7a";
    let http = reqwest::Client::new();
    let coap = cloud.coap.unwrap();
    for cred in [CREDENTIAL, guess] {
        let token = format!("{USER}:tok:{cred}");
        let url = format!("http://{}/api/v1/{token}/telemetry", cloud.device_http.unwrap());
        let _ = http.post(url).body(r#"{"a":1}"#).send().await;
        let uri = format!("coap://{coap}/api/v1/{token}/telemetry");
        let _ = tokio::task::spawn_blocking(move || {
            std::process::Command::new("coap-client-notls")
                .args(["-m", "post", "-t", "json", "-e", r#"{"a":2}"#, "-B", "3", &uri])
                .output()
        })
        .await;
    }
    cloud.stop().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("device authentication failed"),
        "the subscriber saw the refusal: {text}"
    );
    for secret in [CREDENTIAL, guess] {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}
