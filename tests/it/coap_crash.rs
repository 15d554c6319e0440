//! At least once through the CoAP source: SIGKILL `twinlake edge` several times while a
//! device sends Confirmable POSTs one at a time, retransmitting each (same Message ID)
//! until it is acknowledged, as RFC 7252 devices do. After the restarts every acknowledged
//! message's row is in the lake. A message whose rows were durable when the agent died but
//! whose ACK never left is stored again when its retransmission reaches the new process
//! (the retransmission cache does not survive a crash): a duplicate, never a loss.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use twinlake_edge::registry::CredentialHash;

use crate::crash::{crash_config, lake_counts, start, terminate};
use crate::mosquitto::free_port;

const MESSAGES: i64 = 1500;
const KILLS: usize = 4;

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let hash = CredentialHash::new("k", 1000);
    let mut text = crash_config(dir, "gw-coap");
    text += &format!(
        r#"[listener]
tcp = "off"
[metrics]
addr = "off"
[coap]
udp = "127.0.0.1:{port}"
[[devices]]
user = "u"
device = "c1"
credential_hash = "{hash}"
"#
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A Confirmable POST to `api/v1/u:c1:k/telemetry` with a 2-byte token (RFC 7252 §3).
fn con_post(mid: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0x42, 0x02];
    m.extend_from_slice(&mid.to_be_bytes());
    m.extend_from_slice(&mid.to_be_bytes()); // the token
    let mut delta = 11; // Uri-Path
    for seg in ["api", "v1", "u:c1:k", "telemetry"] {
        m.push((delta << 4) | seg.len() as u8);
        m.extend_from_slice(seg.as_bytes());
        delta = 0;
    }
    m.push(0xff);
    m.extend_from_slice(payload);
    m
}

#[test]
fn sigkill_while_posting_loses_no_acknowledged_coap_message() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut child = start(&config);

    let device = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut retransmitted = 0u64;
        let mut buf = [0u8; 1500];
        for i in 0..MESSAGES {
            let mid = i as u16;
            let msg = con_post(mid, format!(r#"{{"seq":{i},"v":{}}}"#, i * 2).as_bytes());
            loop {
                sock.send_to(&msg, ("127.0.0.1", port)).unwrap();
                match sock.recv_from(&mut buf) {
                    // ACK, 2.04 Changed, our Message ID.
                    Ok((n, _)) if n >= 4 && buf[0] >> 4 == 0x6 && buf[1] == 0x44 && buf[2..4] == mid.to_be_bytes() => {
                        break;
                    }
                    _ => retransmitted += 1,
                }
            }
        }
        retransmitted
    });
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(300 + 200 * k as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(&config);
    }
    let retransmitted = device.join().unwrap();
    terminate(child);

    let lake = dir.path().join("lake");
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = lake_counts(&lake, "telemetry");
        if seen.len() as i64 == MESSAGES || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing: Vec<i64> = (0..MESSAGES)
        .filter(|i| !seen.contains_key(&("c1".to_owned(), *i)))
        .collect();
    assert!(missing.is_empty(), "acknowledged messages lost: {missing:?}");
    let dups = seen.values().filter(|n| **n > 1).count();
    eprintln!("{MESSAGES} messages, {KILLS} kills: all stored; {retransmitted} retransmissions; {dups} stored twice");
    assert!(dups <= KILLS, "too many duplicates: {dups}");
}
