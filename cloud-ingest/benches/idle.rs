//! `cargo bench -p twinlake-cloud --bench idle`: the cloud's memory per idle device on its
//! own device listener (1,000 and 10,000 devices by default, `BENCH_DEVICES` to pick; the
//! clients in another process, each answering describe with an empty tree): resident memory,
//! and the live heap counted by an instrumented allocator (stats_alloc, in the idle harnesses
//! only). A real Mosquitto's memory per idle connection is measured in the same run. Without
//! `--bench` (under `cargo test --all-targets`) it runs 20 devices as a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../edge-agent/benches/common.rs"]
#[allow(dead_code)]
mod common;
mod harness;
#[path = "../../edge-agent/benches/idle_shared.rs"]
mod idle_shared;
#[allow(dead_code)]
#[path = "../../edge-agent/tests/it/mosquitto.rs"]
mod mosquitto;

use std::time::{Duration, Instant};

use harness::{USER, cloud_config, register, rt, start_cloud};
use idle_shared::live_heap;

/// (RSS, live heap) before the devices connect and once they are in, online in their
/// twins, and idle.
fn measure(n: usize, db_cache: Option<usize>) -> [(u64, (i64, i64)); 2] {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
    rt().block_on(async {
        let mut cfg = cloud_config(dir.path());
        if let Some(bytes) = db_cache {
            cfg.db_cache_bytes = bytes;
        }
        cfg.edge.listener.idle_timeout = Duration::from_secs(600);
        // Ten thousand logins at once queue behind their credential checks: none is cut
        // off by the login deadline.
        cfg.edge.listener.login_timeout = Duration::from_secs(600);
        cfg.edge.auth.max_failures = u32::MAX;
        cfg.edge.auth.max_failures_per_device = u32::MAX;
        let cloud = start_cloud(cfg).await;
        register(&cloud.state, &names, None, "k");
        // The in-process pipeline has the registry and the twins exist.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = (common::rss_bytes(), live_heap());
        let mut child = common::idle_clients(dir.path(), &cloud.devices.unwrap().to_string(), USER, &names, "k");
        let state = cloud.state.clone();
        let online = move || {
            state
                .twins
                .list(Some(USER))
                .unwrap()
                .iter()
                .filter(|t| t.connection.online)
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        while online() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(online(), n, "every device online in its twin");
        // Let the describe exchanges and what follows them (the twins' descriptions) settle.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = (common::rss_bytes(), live_heap());
        drop(child.stdin.take());
        let _ = child.wait();
        cloud.stop().await;
        [before, after]
    })
}

fn main() {
    println!("\n### Cloud memory per idle device on its own listener (clients in another process)\n");
    idle_shared::header("redb cache");
    // The twins live in redb, whose page cache (`db_cache_bytes`, 64 MiB by default) holds
    // the pages the devices' logins wrote: memory that is capped, not per device. The
    // second run of each count holds it to the least the configuration allows.
    for n in idle_shared::device_counts() {
        // The peer's memory does not depend on our cache: measured once per count.
        let peer = format!("{:.0} B", idle_shared::mosquitto_per_connection(n));
        for db_cache in [None, Some(1usize << 20)] {
            let m = measure(n, db_cache);
            let cache = db_cache.map_or("64 MiB (default)".into(), |b| format!("{} MiB", b >> 20));
            idle_shared::row(n, &cache, m, &peer);
        }
    }
}
