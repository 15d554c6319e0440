//! The CoAP source driven by Debian's libcoap3 client (`coap-client-notls`): Confirmable
//! and Non-confirmable POSTs, content formats, block-wise uploads, Observe of commands;
//! and bad input answered with an error code, never a panic, with nothing stored.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use twinlake_edge::config::DeviceEntry;
use twinlake_edge::registry::CredentialHash;

use crate::lake::{read_dir_lake, start};
use crate::sources::{base_config, rows, sorted_column, stop, wait_count};

/// Runs coap-client-notls with `args`: (exit success, stdout).
pub async fn coap_client(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("coap-client-notls")
            .args(&args)
            .output()
            .expect("coap-client-notls runs (scripts/test installs libcoap3-bin)");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .unwrap()
}

/// POSTs `body` as `format` with `extra` options.
async fn post(extra: &[&str], format: &str, body: &str, uri: &str) -> (bool, String) {
    coap_client(args(&[extra, &["-m", "post", "-t", format, "-e", body, uri]].concat())).await
}

/// POSTs a JSON file in 64-byte blocks.
async fn post_blocks(file: &Path, uri: &str) -> (bool, String) {
    let f = file.to_str().unwrap();
    coap_client(args(&["-m", "post", "-t", "json", "-b", "64", "-f", f, uri])).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn config(dir: &Path) -> twinlake_edge::EdgeConfig {
    let mut c = base_config(dir);
    c.coap.udp = Some("127.0.0.1:0".parse().unwrap());
    c.coap.max_body_bytes = 2048;
    c.devices.push(DeviceEntry {
        user: "acme".into(),
        device: "c1".into(),
        credential_hash: CredentialHash::new("s3cret", 1000).to_string(),
        properties: Default::default(),
    });
    c
}

/// Sends one raw datagram and returns the answer (or None within 2 s).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    raw_on(&s, addr, bytes).await
}

/// [`raw`] from a given socket (a retransmission comes from the same port).
async fn raw_on(s: &tokio::net::UdpSocket, addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let r = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf)).await;
    r.ok().map(|r| buf[..r.unwrap().0].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_devices_post_observe_and_upload_block_wise() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(config(dir.path())).await;
    let addr = agent.coap.unwrap();
    let uri = |what: &str| format!("coap://{addr}/api/v1/acme:c1:s3cret/{what}");

    // Confirmable (the default) and Non-confirmable JSON; CBOR; plain text.
    assert!(post(&[], "json", r#"{"temperature":21.5}"#, &uri("telemetry")).await.0);
    let timed = r#"[{"ts":1700000000000,"values":{"temperature":1}}]"#;
    assert!(post(&["-N"], "json", timed, &uri("telemetry")).await.0);
    let cbor_file = dir.path().join("v.cbor");
    // {"co2": 400} in CBOR.
    std::fs::write(&cbor_file, [0xa1, 0x63, b'c', b'o', b'2', 0x19, 0x01, 0x90]).unwrap();
    let cbor = ["-f", cbor_file.to_str().unwrap()];
    assert!(
        coap_client(args(
            &[&["-m", "post", "-t", "cbor"], &cbor[..], &[&uri("telemetry/climate")]].concat()
        ))
        .await
        .0
    );
    assert!(post(&[], "text", "1013.2", &uri("telemetry/pressure")).await.0);

    // Block-wise: a 1,500-byte body in 64-byte blocks.
    let big = format!(r#"{{"blob":"{}","n":7}}"#, "y".repeat(1480));
    let big_file = dir.path().join("big.json");
    std::fs::write(&big_file, &big).unwrap();
    let (ok, _) = post_blocks(&big_file, &uri("telemetry/blobs")).await;
    assert!(ok);
    // Past max_body_bytes: 4.13, nothing stored.
    let huge_file = dir.path().join("huge.json");
    std::fs::write(&huge_file, format!(r#"{{"blob":"{}"}}"#, "z".repeat(3000))).unwrap();
    let (_, out) = post_blocks(&huge_file, &uri("telemetry/blobs")).await;
    assert!(!out.contains('z'), "{out}");

    // Observe the command resource; a write reaches the observer as a notification.
    let observe = tokio::spawn(coap_client(args(&["-s", "6", "-B", "7", &uri("rpc")])));
    let key = twinlake_edge::listener::DeviceKey::new("acme", "c1");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while agent.metrics.source_count("coap", "observe") == 0 {
        assert!(std::time::Instant::now() < deadline, "no observation registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
        .southbound
        .get(&key)
        .expect("a CoAP device online has a route")
        .write("c1", "led", &serde_json::json!(true))
        .unwrap();
    let (_, out) = observe.await.unwrap();
    let cmd: serde_json::Value = serde_json::from_str(out.lines().find(|l| l.contains("led")).unwrap_or("{}")).unwrap();
    assert_eq!(
        (cmd["method"].clone(), cmd["params"].clone()),
        (serde_json::json!("led"), serde_json::json!(true)),
        "{out}"
    );
    let reply = format!("rpc/{}", cmd["id"]);
    assert!(post(&[], "json", "true", &uri(&reply)).await.0);

    // Refusals: a wrong credential (4.01), unknown path (4.04), bad JSON (4.00), an
    // unsupported content format (4.15); malformed datagrams are dropped.
    let wrong = format!("coap://{addr}/api/v1/acme:c1:guess/telemetry");
    post(&[], "json", r#"{"temperature":-1}"#, &wrong).await;
    post(&[], "json", r#"{"temperature":"#, &uri("telemetry")).await;
    post(&[], "xml", "<t>-3</t>", &uri("telemetry")).await;
    assert_eq!(raw(addr, &[0xff, 0x00]).await, None, "garbage: no answer");
    // A Confirmable POST to an unknown path from a raw socket: 4.04 (0x84), no payload,
    // no larger than the request.
    let req = [0x40, 0x02, 0x12, 0x34, 0xb3, b'a', b'p', b'i'];
    let ans = raw(addr, &req).await.expect("an answer");
    assert_eq!(ans, [0x60, 0x84, 0x12, 0x34], "ACK 4.04, same message id");
    // A CoAP ping gets RST.
    assert_eq!(
        raw(addr, &[0x40, 0x00, 0xab, 0xcd]).await,
        Some(vec![0x70, 0x00, 0xab, 0xcd])
    );

    wait_count(&agent, "coap", "stored", 6).await;
    assert_eq!(agent.metrics.source_count("coap", "unauthorized"), 1);
    assert_eq!(agent.metrics.source_count("coap", "bad_request"), 2);
    stop(agent).await;

    let lake = read_dir_lake(&dir.path().join("lake"));
    assert_eq!(sorted_column(&lake, "telemetry", "temperature"), ["1.0", "21.5"]);
    assert_eq!(rows(&lake, "climate")[0]["co2"], "400");
    assert_eq!(rows(&lake, "pressure")[0]["value"], "1013.2");
    let b = rows(&lake, "blobs");
    assert_eq!(b.len(), 1, "the upload past the limit stored nothing");
    assert_eq!(b[0]["n"], "7");
    assert_eq!(b[0]["blob"].len(), 1480);
    assert_eq!(rows(&lake, "led").len(), 1);
}

/// A Confirmable POST sent again with the same Message ID (its ACK was lost) gets the
/// same answer from the cache, and its rows are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_confirmable_post_is_stored_once() {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
    let dir = tempfile::tempdir().unwrap();
    let agent = start(config(dir.path())).await;
    let addr = agent.coap.unwrap();
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = 0x0777;
    p.set_token(vec![1, 2, 3, 4]);
    for seg in ["api", "v1", "acme:c1:s3cret", "telemetry", "dups"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.payload = br#"{"seq":1}"#.to_vec();
    let bytes = p.to_bytes().unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = raw_on(&sock, addr, &bytes).await.expect("answered");
    let again = raw_on(&sock, addr, &bytes).await.expect("answered again");
    assert_eq!(first, again, "the same answer");
    assert_eq!(first[1], 0x44, "2.04 Changed");
    wait_count(&agent, "coap", "duplicate", 1).await;
    assert_eq!(agent.metrics.source_count("coap", "stored"), 1);

    // A device that does not observe gets a waiting command in its next POST's answer.
    let key = twinlake_edge::listener::DeviceKey::new("acme", "c1");
    let route = agent.southbound.get(&key).expect("online");
    route.write("c1", "fan", &serde_json::json!(3)).unwrap();
    let uri = format!("coap://{addr}/api/v1/acme:c1:s3cret/telemetry/later");
    let (ok, out) = post(&[], "json", r#"{"seq":2}"#, &uri).await;
    assert!(ok && out.contains(r#""method":"fan","params":3"#), "{out}");
    stop(agent).await;
    assert_eq!(rows(&read_dir_lake(&dir.path().join("lake")), "dups").len(), 1);
}
