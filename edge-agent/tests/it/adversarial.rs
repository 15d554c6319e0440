//! Login attacks on the device listener (#13, finding 9): a device id is locked after its
//! own limit of guesses, and logging in an attacker's own valid device between guesses
//! does not wipe its address's record (it did: any success cleared the address).

use std::time::Duration;

use crate::lake;
use crate::net::closed_within;

/// Tries one login of `device` with `credential`; true if it was accepted.
fn login(port: u16, device: &str, credential: &str) -> bool {
    let mut c = twinlake_sdk::client::ClientConfig::new("127.0.0.1", port, lake::USER, device, credential);
    c.poll_interval = Duration::from_millis(5);
    let mut client = twinlake_sdk::client::Client::new(c, lake::sensor());
    client.wait_connected(Duration::from_secs(2)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_are_limited_per_address_and_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lake::config(dir.path(), "memory://", 3);
    cfg.auth.max_failures = 4;
    cfg.auth.max_failures_per_device = 2;
    let agent = lake::start(cfg).await;
    let port = agent.tcp.port();
    let outcome = tokio::task::spawn_blocking(move || {
        vec![
            // Guesses at dev-0, each followed by the attacker's own good login of dev-1.
            login(port, "dev-0", "wrong"),
            login(port, "dev-1", lake::CREDENTIAL),
            login(port, "dev-0", "wrong"),
            // dev-0 is locked now (2 failures), even with its right credential.
            login(port, "dev-0", lake::CREDENTIAL),
            login(port, "dev-1", lake::CREDENTIAL),
            login(port, "dev-2", "wrong"),
            login(port, "dev-2", "wrong"),
            // The address has 4 failures (the lock-out refusal counted none): locked for
            // every device, the attacker's own too.
            login(port, "dev-1", lake::CREDENTIAL),
        ]
    })
    .await
    .unwrap();
    assert_eq!(outcome, vec![false, true, false, false, true, false, false, false]);
    agent.stop().await.unwrap();
}

/// Keep-alives before a login used to hold a connection for ever (each one renewed the
/// idle deadline); now the login deadline closes it, and a cap per address refuses the
/// sockets past it at once (#13, finding 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_are_bounded_in_time_and_number() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lake::config(dir.path(), "memory://", 1);
    cfg.listener.login_timeout = Duration::from_millis(500);
    cfg.listener.max_connections_per_ip = 5;
    let agent = lake::start(cfg).await;
    let addr = agent.tcp;
    // Pre-auth keep-alives (`02 00`) every 100 ms: closed after the login deadline anyway.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let flood = async {
        for _ in 0..100 {
            if s.write_all(&[2, 0]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    // Generous: twenty times the configured deadline.
    assert!(
        flood.await,
        "a connection sending only keep-alives stayed open for 10 s"
    );
    // Ten sockets from one address: five are admitted, the rest closed at once.
    let mut socks = Vec::new();
    for _ in 0..10 {
        socks.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut refused = 0;
    for s in socks.iter_mut().skip(5) {
        if closed_within(s, Duration::from_millis(300)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 5, "sockets past the per-address cap");
    agent.stop().await.unwrap();
}

/// A device that stops reading used to wedge its connection in a write, and shutdown waited
/// for it (2 minutes once); now the write gives up after listener.write_timeout (#13,
/// finding 9). The client floods keep-alives, each answered with two bytes it never reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lake::config(dir.path(), "memory://", 1);
    cfg.listener.write_timeout = Duration::from_secs(1);
    cfg.listener.login_timeout = Duration::from_secs(600);
    let agent = lake::start(cfg).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(agent.tcp).await.unwrap();
    // Logged in (keep-alives are answered only then); the answer goes unread too.
    let auth = twinlake_sdk::frame::Message::auth(lake::USER, "dev-0", lake::CREDENTIAL).to_frame();
    s.write_all(&auth).await.unwrap();
    let flood = [2u8, 0].repeat(64 << 10);
    // Write until the agent stops reading us (its replies fill our unread buffer), or 10 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if s.write_all(&flood).await.is_err() {
                break;
            }
        }
    })
    .await;
    // Generous: thirty times the write timeout.
    tokio::time::timeout(Duration::from_secs(30), agent.stop())
        .await
        .expect("shutdown waited on a device that does not read")
        .unwrap();
    drop(s);
}

/// With `metrics.token_sha256`, `/metrics` answers 401 without the token (or with another)
/// and the metrics with it; `/healthz` stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::sources::base_config(dir.path());
    c.metrics.token_sha256 = Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()); // "test"
    let agent = crate::lake::start(c).await;
    let url = format!("http://{}/metrics", agent.metrics_addr);
    let code = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code(&[]), "401");
    assert_eq!(code(&["-H", "Authorization: Bearer guess"]), "401");
    assert_eq!(code(&["-H", "Authorization: Bearer test"]), "200");
    let health = format!("http://{}/healthz", agent.metrics_addr);
    let out = std::process::Command::new("curl")
        .args(["-sf", &health])
        .output()
        .unwrap();
    assert!(out.status.success());
    crate::sources::stop(agent).await;
}
