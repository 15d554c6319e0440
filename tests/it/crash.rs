//! Crash safety of `twinlake edge`: SIGKILL mid-ingest, several times at random moments;
//! every row the agent confirmed is in the lake exactly once, and no row is there twice.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use twinlake_edge::arrow::array::{Array, AsArray};
use twinlake_edge::arrow::datatypes::{Int32Type, Int64Type};
use twinlake_edge::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use twinlake_edge::registry::CredentialHash;
use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::{Event, Thing};
use twinlake_sdk::pson::Value;

use crate::mosquitto::free_port;

const DEVICES: usize = 2;
const ROUNDS: usize = 5;

/// The part of a crash test's agent config they share: data in `dir/data`, a lake in
/// `dir/lake`, a quick fsync, seals every 300 ms and quick upload retries.
pub fn crash_config(dir: &Path, gateway: &str) -> String {
    format!(
        r#"gateway = "{gateway}"
data_dir = "{data}"
[wal]
fsync_interval = "2ms"
[buffer]
max_age = "300ms"
[upload]
url = "file://{lake}"
retry_min = "50ms"
"#,
        data = dir.join("data").display(),
        lake = dir.join("lake").display(),
    )
}

pub fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let hash = CredentialHash::new("k", 1000);
    let mut text = crash_config(dir, "gw-crash");
    text += &format!(
        r#"[listener]
tcp = "127.0.0.1:{port}"
[metrics]
addr = "off"
[streams]
default_interval = "1h"
inputs = false
"#
    );
    for d in 0..DEVICES {
        text += &format!("[[devices]]\nuser = \"u\"\ndevice = \"dev-{d}\"\ncredential_hash = \"{hash}\"\n");
    }
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// SIGTERM, and the agent must shut down cleanly.
pub fn terminate(mut child: Child) {
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown: {status:?}");
}

/// Starts the agent and waits for its ready line.
pub fn start(config: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twinlake"));
    cmd.args(["edge", "--config"]).arg(config);
    start_ready(cmd)
}

/// Runs `cmd` (an agent) with RUST_LOG=warn and waits for its ready line.
pub fn start_ready(mut cmd: Command) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("twinlake edge ready"), "got {line:?}");
    child
}

/// Writes confirmed records from `next` on until the agent goes away; returns the confirmed
/// ones and the next number to use.
pub fn writer(port: u16, dev: usize, mut next: i64, stop: Arc<AtomicBool>) -> (Vec<i64>, i64) {
    let mut cfg = ClientConfig::new("127.0.0.1", port, "u", &format!("dev-{dev}"), "k");
    cfg.poll_interval = Duration::from_millis(2);
    let mut client = Client::new(cfg, Thing::default());
    let mut acked = Vec::new();
    if client.wait_connected(Duration::from_secs(10)).is_err() {
        return (acked, next);
    }
    while !stop.load(Ordering::SeqCst) {
        let rec = Value::object().with("seq", next).with("v", next as f64 * 0.5);
        let seq = next;
        next += 1;
        let Some(id) = client.thing().write_bucket("readings", rec, true) else {
            break;
        };
        match client.wait_for(
            Duration::from_secs(5),
            |e| matches!(e, Event::Ack { request, .. } if *request == id),
        ) {
            Ok(Event::Ack { ok: true, .. }) => acked.push(seq),
            _ => break,
        }
    }
    (acked, next)
}

/// A small deterministic generator for the kill moments (seed printed on failure).
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn sigkill_mid_ingest_loses_and_duplicates_nothing() {
    let _one = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut acked: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    let mut next = [0i64; DEVICES];
    for round in 0..ROUNDS {
        let mut child = start(&config);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..DEVICES)
            .map(|d| {
                let (stop, from) = (stop.clone(), next[d]);
                std::thread::spawn(move || writer(port, d, from, stop))
            })
            .collect();
        let wait = Duration::from_millis(300 + lcg(&mut seed) % 1200);
        std::thread::sleep(wait);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for (d, t) in threads.into_iter().enumerate() {
            let (a, n) = t.join().unwrap();
            eprintln!(
                "round {round}: killed after {wait:?}; dev-{d} had {} confirmed",
                a.len()
            );
            acked.entry(d).or_default().extend(a);
            next[d] = n;
        }
    }
    // A last, clean run: replay, seal, upload, and stop on SIGTERM.
    let child = start(&config);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(child);

    // Everything went up: no seal is left waiting in the outbox.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("data/outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "seals left in the outbox: {left:?}");

    let seen = lake_counts(&dir.path().join("lake"), "readings");
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "rows stored twice: {dups:?}");
    let mut total = 0;
    for (d, seqs) in &acked {
        total += seqs.len();
        for s in seqs {
            assert_eq!(
                seen.get(&(format!("dev-{d}"), *s)),
                Some(&1),
                "confirmed row dev-{d}/{s} is missing"
            );
        }
    }
    assert!(total > 0, "no row was confirmed at all");
    eprintln!(
        "{total} confirmed rows over {ROUNDS} kills; {} rows in the lake",
        seen.len()
    );
}

/// How often each `(device, seq)` is in the Parquet files of `table` under `lake`.
pub fn lake_counts(lake: &Path, table: &str) -> BTreeMap<(String, i64), usize> {
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut stack = vec![lake.join(table)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "parquet") {
                continue;
            }
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let dev = b.column_by_name("device").unwrap().as_dictionary::<Int32Type>();
                let names = dev.values().as_string::<i32>();
                let seq = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
                for r in 0..b.num_rows() {
                    assert!(!seq.is_null(r));
                    let key = (names.value(dev.keys().value(r) as usize).to_owned(), seq.value(r));
                    *seen.entry(key).or_default() += 1;
                }
            }
        }
    }
    seen
}
