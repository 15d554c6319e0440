//! `cargo bench -p twinlake-edge --bench idle`: the agent's memory per idle connected device
//! (1,000 and 10,000 devices, plain TCP and TLS, the clients in another process): resident
//! memory, and the live heap counted by an instrumented allocator (stats_alloc), which this
//! harness alone uses so that no other benchmark pays for the counting. Without `--bench` (under `cargo test
//! --all-targets`) it runs 20 devices as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
#[path = "common.rs"]
mod common;
mod config;
#[allow(dead_code)]
#[path = "../tests/it/mosquitto.rs"]
mod mosquitto;

use std::alloc::System;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use twinlake_edge::EdgeAgent;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, and how many blocks.
fn live_heap() -> (i64, i64) {
    let s = GLOBAL.stats();
    (
        s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64,
        s.allocations as i64 - s.deallocations as i64,
    )
}

/// (RSS, live heap) before the devices connect and once they are in and idle.
fn measure(n: usize, tls: bool) -> [(u64, (i64, i64)); 2] {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = config::edge_config(dir.path(), n);
        cfg.listener.idle_timeout = Duration::from_secs(600);
        if tls {
            // A self-signed certificate; the clients do not check it.
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let (crt, key) = (dir.path().join("agent.crt"), dir.path().join("agent.key"));
            std::fs::write(&crt, cert.cert.pem()).unwrap();
            std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
            cfg.listener.tls = Some("127.0.0.1:0".parse().unwrap());
            cfg.listener.tls_cert = Some(crt);
            cfg.listener.tls_key = Some(key);
        }
        let agent = EdgeAgent::start(cfg).await.unwrap();
        let addr = if tls { agent.tls_addr() } else { agent.tcp_addr() }.unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = (common::rss_bytes(), live_heap());
        let at = if tls { format!("tls://{addr}") } else { addr.to_string() };
        let mut child = common::idle_clients(dir.path(), &at, "bench", &names, "k");
        while metrics.devices_connected.get() < n as i64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the on-connect describe exchanges settle (each client answers its describe
        // request with an empty resource tree, then stays silent).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = (common::rss_bytes(), live_heap());
        drop(child.stdin.take());
        let _ = child.wait();
        let _ = stop.send(());
        let _ = run.await;
        [before, after]
    })
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
fn mosquitto_per_connection(n: usize) -> f64 {
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let counts: Vec<usize> = match std::env::var("BENCH_DEVICES") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) if full => vec![1000, 10_000],
        Err(_) => vec![20],
    };
    println!("\n### Agent memory with idle connected devices (clients in another process)\n");
    println!(
        "| devices | transport | RSS before | RSS connected | RSS per device | live heap per device | live blocks per device | Mosquitto RSS per connection (plain) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (n, tls) in counts.iter().flat_map(|n| [(*n, false), (*n, true)]) {
        let [(rss0, (heap0, blocks0)), (rss1, (heap1, blocks1))] = measure(n, tls);
        let peer = if tls {
            String::from("-")
        } else {
            format!("{:.0} B", mosquitto_per_connection(n))
        };
        println!(
            "| {n} | {} | {:.1} MiB | {:.1} MiB | {:.0} B | {:.0} B | {:.1} | {peer} |",
            if tls { "TLS" } else { "TCP" },
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / n as f64,
            (heap1 - heap0) as f64 / n as f64,
            (blocks1 - blocks0) as f64 / n as f64
        );
    }
}
