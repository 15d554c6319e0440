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
mod idle_shared;
#[allow(dead_code)]
#[path = "../tests/it/mosquitto.rs"]
mod mosquitto;

use idle_shared::live_heap;

use std::time::Duration;

use twinlake_edge::EdgeAgent;

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

fn main() {
    println!("\n### Agent memory with idle connected devices (clients in another process)\n");
    idle_shared::header("transport");
    for n in idle_shared::device_counts() {
        for tls in [false, true] {
            let m = measure(n, tls);
            // Mosquitto is measured on plain TCP only.
            let peer = if tls {
                String::from("-")
            } else {
                format!("{:.0} B", idle_shared::mosquitto_per_connection(n))
            };
            idle_shared::row(n, if tls { "TLS" } else { "TCP" }, m, &peer);
        }
    }
}
