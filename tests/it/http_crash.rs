//! At least once through the HTTP device API: SIGKILL `twinlake edge` several times while
//! a client POSTs telemetry one request at a time, sending a request again until it gets
//! a 200 (as ThingsBoard's clients do). After the restarts every request answered 200 has
//! its row in the lake. A request whose rows were durable when the agent died but whose
//! answer never left is stored again when the client resends it: a duplicate, never a
//! loss. The test prints how many it saw.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use twinlake_edge::registry::CredentialHash;

use crate::crash::{crash_config, lake_counts, start, terminate};
use crate::mosquitto::free_port;

const REQUESTS: i64 = 1500;
const KILLS: usize = 4;

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let hash = CredentialHash::new("k", 1000);
    let mut text = crash_config(dir, "gw-http");
    text += &format!(
        r#"[listener]
tcp = "off"
[metrics]
addr = "off"
[device_http]
addr = "127.0.0.1:{port}"
[[devices]]
user = "u"
device = "h1"
credential_hash = "{hash}"
"#
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One POST on a kept-alive connection: the status, or an error if the connection broke.
fn post(conn: &mut Option<BufReader<TcpStream>>, port: u16, body: &str) -> std::io::Result<u16> {
    if conn.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some(BufReader::new(s));
    }
    let r = conn.as_mut().unwrap();
    let req = format!(
        "POST /api/v1/u:h1:k/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    r.get_mut().write_all(req.as_bytes())?;
    let mut status = String::new();
    r.read_line(&mut status)?;
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status:?}")))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut skip = vec![0; len];
    r.read_exact(&mut skip)?;
    Ok(code)
}

#[test]
fn sigkill_while_posting_loses_no_acknowledged_http_request() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut child = start(&config);

    let client = std::thread::spawn(move || {
        let mut conn = None;
        let (mut acked, mut resent) = (0i64, 0u64);
        while acked < REQUESTS {
            let body = format!(r#"{{"seq":{acked},"v":{}}}"#, acked * 2);
            match post(&mut conn, port, &body) {
                Ok(200) => acked += 1,
                Ok(_) | Err(_) => {
                    conn = None;
                    resent += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        resent
    });
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(300 + 200 * k as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(&config);
    }
    let resent = client.join().unwrap();

    let lake = dir.path().join("lake");
    terminate(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = lake_counts(&lake, "telemetry");
        if seen.len() as i64 == REQUESTS || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing: Vec<i64> = (0..REQUESTS)
        .filter(|i| !seen.contains_key(&("h1".to_owned(), *i)))
        .collect();
    assert!(missing.is_empty(), "acknowledged requests lost: {missing:?}");
    let dups = seen.values().filter(|n| **n > 1).count();
    eprintln!("{REQUESTS} requests, {KILLS} kills: all stored; {resent} sent again; {dups} stored twice");
    // A duplicate needs a kill between a request's fsync and its answer: one per kill.
    assert!(dups <= KILLS, "too many duplicates: {dups}");
}
