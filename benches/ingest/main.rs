//! Production-shaped ingest (issue #19): `cargo bench -p twinlake --bench ingest`.
//!
//! Three processes share the machine's cores, as on a gateway with its cloud: `twinlake
//! cloud` (HTTPS, production defaults), `twinlake edge` linked to it over wss:// (production
//! defaults: WAL group commit every 10 ms, the listener's limits, acks after the fsync), and
//! this process, the load generator: simulated SDK devices, each writing acknowledged
//! BUCKET_DATA frames of TSBS readings (7 floats) over plain TCP.
//!
//! * accepted: every row acknowledged, so durable in the agent's WAL;
//! * end to end: that, and every row counted at the cloud as a fresh row (sent over the
//!   link), and the agent stopped with SIGTERM and exited, so every row sealed into Parquet
//!   and uploaded to the lake (checked by reading the lake's footers).
//!
//! The floor peer, in the same run: the same bytes over TCP from the same load generator
//! into one file fsynced on the same group-commit rule, each device acked with its durable
//! byte count ([`floor`]), in its own process.
//!
//! `BENCH_DEVICES` (default 50,1000), `BENCH_ROWS` (total rows per run, default 1,000,000)
//! and `BENCH_RUNS` (default 5). `BENCH_LINK_ROWS` sets the agent's `link.max_waiting_rows`
//! (production default 200,000): fresh rows past it are dropped from the link (counted, and
//! reported) and reach the cloud in their file instead. `BENCH_LINK_FORMAT=text` has the
//! cloud refuse binary batches (`[link] binary_batches = false`), so the agent sends JSON
//! text as agents before them did. Without `--bench` (as in `cargo test --all-targets`) it
//! runs once on a few rows as a smoke test.

// A measurement harness, not a path for untrusted input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod floor;
mod load;
mod procs;
#[path = "../../edge-agent/benches/tsbs.rs"]
#[allow(dead_code)]
mod tsbs;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// One run of the agent path and one of the floor, on the same bytes.
struct Run {
    floor_s: f64,
    floor_cpu: f64,
    accepted_s: f64,
    e2e_s: f64,
    agent_cpu: f64,
    cloud_cpu: f64,
    load_cpu: f64,
    /// Fresh rows the agent's bounded link queue dropped (they reach the cloud in files).
    fresh_dropped: f64,
    /// Bytes of batch frames the agent sent the cloud.
    link_bytes: f64,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    if let Some(dir) = std::env::var_os(floor::ENV) {
        floor::serve(std::path::Path::new(&dir));
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let full = std::env::args().any(|a| a == "--bench");
    let (devices, rows, runs) = if full {
        (
            env_or("BENCH_DEVICES", "50,1000"),
            env_or("BENCH_ROWS", "1000000").parse::<usize>().expect("BENCH_ROWS"),
            env_or("BENCH_RUNS", "5").parse::<usize>().expect("BENCH_RUNS"),
        )
    } else {
        ("2".to_owned(), 200, 1)
    };
    let base = tempfile::tempdir().expect("a temp dir");
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(base.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("WAL, lake and floor file on {} ({fs})", base.path().display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    for d in devices
        .split(',')
        .map(|d| d.trim().parse::<usize>().expect("BENCH_DEVICES"))
    {
        let per = rows / d;
        let mut results = Vec::new();
        for r in 0..runs {
            let dir = base.path().join(format!("d{d}-r{r}"));
            std::fs::create_dir_all(&dir).expect("a run dir");
            let run = rt.block_on(one_run(&dir, d, per));
            eprintln!(
                "devices {d} run {r}: floor {:.3}s, accepted {:.3}s, end to end {:.3}s",
                run.floor_s, run.accepted_s, run.e2e_s
            );
            results.push(run);
            let _ = std::fs::remove_dir_all(&dir);
        }
        report(d, per * d, &results);
    }
}

async fn one_run(dir: &std::path::Path, devices: usize, per: usize) -> Run {
    let cloud = procs::cloud(dir);
    let http = procs::client(&cloud);
    let creds = procs::register(&cloud, &http, devices).await;
    let streams: Vec<Arc<load::Stream>> = creds
        .iter()
        .enumerate()
        .map(|(i, (dev, cred))| Arc::new(load::stream(procs::USER, dev, cred, per, i as u64 + 1)))
        .collect();
    let total = (devices * per) as f64;

    // The floor first, in its own process; then the agent on the same bytes.
    let floor_dir = dir.join("floor");
    std::fs::create_dir_all(&floor_dir).expect("floor dir");
    let (floor, addr) = procs::floor(&floor_dir);
    let cpu0 = procs::proc_cpu(0);
    let floor_s = load::floor(&addr, &streams).await.as_secs_f64();
    let floor_load_cpu = procs::proc_cpu(0) - cpu0;
    let floor_cpu = floor.stop() + floor_load_cpu;
    let _ = std::fs::remove_dir_all(&floor_dir);

    let edge = procs::edge(dir, &cloud);
    let cloud_cpu0 = cloud.proc.cpu_now();
    let cpu0 = procs::proc_cpu(0);
    let started = Instant::now();
    let accepted_s = load::agent(&edge.tcp, &streams).await.as_secs_f64();
    let load_cpu = procs::proc_cpu(0) - cpu0;
    // Every fresh row reached the cloud, or was dropped by the agent's bounded link queue
    // (counted, and reported: those rows reach the cloud in their file).
    let until = Instant::now() + Duration::from_secs(120);
    let fresh_dropped = loop {
        let dropped = procs::counter(&http, &edge.metrics, "twinlake_edge_link_rows_dropped_total").await;
        if procs::counter(&http, &cloud.metrics, "twinlake_cloud_fresh_rows_total").await + dropped >= total {
            break dropped;
        }
        assert!(Instant::now() < until, "fresh rows never all reached the cloud");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let link_bytes = procs::counter(&http, &edge.metrics, "twinlake_edge_link_bytes_sent_total").await;
    let agent_cpu = tokio::task::spawn_blocking(move || edge.proc.stop())
        .await
        .expect("stop the agent");
    let e2e_s = started.elapsed().as_secs_f64();
    let cloud_cpu = cloud.proc.cpu_now() - cloud_cpu0;
    let lake = procs::lake_rows(&dir.join("lake"));
    assert_eq!(lake, total as i64, "every row is in the lake");
    tokio::task::spawn_blocking(move || cloud.proc.stop())
        .await
        .expect("stop the cloud");
    Run {
        floor_s,
        floor_cpu,
        accepted_s,
        e2e_s,
        agent_cpu,
        cloud_cpu,
        load_cpu,
        fresh_dropped,
        link_bytes,
    }
}

/// min / median / max of `f` over the runs.
fn mmm(results: &[Run], f: impl Fn(&Run) -> f64) -> [f64; 3] {
    let mut v: Vec<f64> = results.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    [v[0], v[v.len() / 2], v[v.len() - 1]]
}

fn report(devices: usize, rows: usize, results: &[Run]) {
    let r = rows as f64;
    let per_s = |s: f64| r / s;
    println!(
        "\n### Production-shaped ingest: {devices} devices, {} acked BUCKET_DATA each ({rows} rows, {} values), {} runs\n",
        rows / devices,
        rows * 7,
        results.len()
    );
    println!("| measure | min | median | max |");
    println!("|---|---:|---:|---:|");
    let line = |name: &str, [a, b, c]: [f64; 3], digits: usize| {
        println!("| {name} | {a:.digits$} | {b:.digits$} | {c:.digits$} |");
    };
    // Rates: min/median/max of the per-run rates.
    line(
        "floor: rows/s (same bytes, TCP → file fsynced every 10 ms)",
        mmm(results, |x| per_s(x.floor_s)),
        0,
    );
    line(
        "accepted (acked, durable in the WAL): rows/s",
        mmm(results, |x| per_s(x.accepted_s)),
        0,
    );
    line(
        "accepted: field values/s",
        mmm(results, |x| per_s(x.accepted_s) * 7.0),
        0,
    );
    line(
        "end to end (+ fresh rows at the cloud, sealed and uploaded): rows/s",
        mmm(results, |x| per_s(x.e2e_s)),
        0,
    );
    line(
        "accepted ÷ floor (rate ratio)",
        mmm(results, |x| x.floor_s / x.accepted_s),
        2,
    );
    line("end to end ÷ floor", mmm(results, |x| x.floor_s / x.e2e_s), 2);
    line(
        "fresh rows the agent's bounded link queue dropped (they arrive in files)",
        mmm(results, |x| x.fresh_dropped),
        0,
    );
    line(
        "link: batch bytes sent per fresh row sent (before WebSocket and TLS framing)",
        mmm(results, |x| x.link_bytes / (r - x.fresh_dropped).max(1.0)),
        1,
    );
    let per_m = |cpu: f64| cpu / (r / 1e6);
    line(
        "agent CPU s per M rows (whole run: start, ingest, link, seal, upload, stop)",
        mmm(results, |x| per_m(x.agent_cpu)),
        2,
    );
    line(
        "cloud CPU s per M rows (from the first row to the agent's exit)",
        mmm(results, |x| per_m(x.cloud_cpu)),
        2,
    );
    line(
        "load generator CPU s per M rows (agent runs)",
        mmm(results, |x| per_m(x.load_cpu)),
        2,
    );
    line(
        "floor CPU s per M rows (its process + the load generator)",
        mmm(results, |x| per_m(x.floor_cpu)),
        2,
    );
}
