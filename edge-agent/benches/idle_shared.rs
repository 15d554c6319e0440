//! What the idle-memory benchmarks of the agent's and the cloud's listeners share: the
//! instrumented allocator that counts the live heap (stats_alloc, in these harnesses only, so
//! no other benchmark pays for the counting), and their peer, a real Mosquitto's resident
//! memory per idle MQTT connection, measured in the same run.

use std::alloc::System;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

use super::{common, mosquitto};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The device counts to measure: `BENCH_DEVICES` (comma-separated), else 1,000 and
/// 10,000 under `--bench`, else 20 (the smoke test `cargo test --all-targets` runs).
pub fn device_counts() -> Vec<usize> {
    let full = std::env::args().any(|a| a == "--bench");
    match std::env::var("BENCH_DEVICES") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) if full => vec![1000, 10_000],
        Err(_) => vec![20],
    }
}

/// The table's header, its second column named `variant`.
pub fn header(variant: &str) {
    println!(
        "| devices | {variant} | RSS before | RSS connected | RSS per device | live heap per device | live blocks per device | Mosquitto RSS per connection |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
}

/// One row: (RSS, (live heap, live blocks)) before and after `n` devices came in.
pub fn row(
    n: usize,
    variant: &str,
    [(rss0, (heap0, blocks0)), (rss1, (heap1, blocks1))]: [(u64, (i64, i64)); 2],
    peer: &str,
) {
    println!(
        "| {n} | {variant} | {:.1} MiB | {:.1} MiB | {:.0} B | {:.0} B | {:.1} | {peer} |",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss1.saturating_sub(rss0) as f64 / n as f64,
        (heap1 - heap0) as f64 / n as f64,
        (blocks1 - blocks0) as f64 / n as f64
    );
}

/// Bytes allocated and not yet freed, and how many blocks. stats_alloc already counts a
/// reallocation's growth in `bytes_allocated` (and its shrinking in `bytes_deallocated`);
/// its `bytes_reallocated` is the same difference again, so it is not added. (Until
/// 2026-11-29 it was: every buffer grown by reallocation and freed since the first reading
/// was counted as still live.)
pub fn live_heap() -> (i64, i64) {
    let s = GLOBAL.stats();
    (
        s.bytes_allocated as i64 - s.bytes_deallocated as i64,
        s.allocations as i64 - s.deallocations as i64,
    )
}

/// An MQTT 3.1.1 CONNECT: client `id`, clean session, keep-alive ten minutes.
fn mqtt_connect(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut frame = vec![0x10, body.len() as u8];
    frame.extend(body);
    frame
}

/// Mosquitto's resident memory per idle MQTT connection: the broker's RSS before and once
/// `n` clients (another process) are connected.
pub fn mosquitto_per_connection(n: usize) -> f64 {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto::Mosquitto::start(0);
    std::thread::sleep(Duration::from_millis(300));
    let before = common::rss_of(broker.pid());
    let frames: Vec<Vec<u8>> = (0..n).map(|i| mqtt_connect(&format!("idle-{i}"))).collect();
    let mut child = common::idle_connections(
        dir.path(),
        &format!("127.0.0.1:{}", broker.port),
        &frames,
        &[0x20, 2, 0, 0],
    );
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    assert!(line.starts_with("ready"), "the MQTT clients: {line:?}");
    std::thread::sleep(Duration::from_millis(1000));
    let after = common::rss_of(broker.pid());
    drop(child.stdin.take());
    let _ = child.wait();
    after.saturating_sub(before) as f64 / n as f64
}
