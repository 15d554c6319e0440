//! Cloud benchmarks. `cargo bench -p twinlake-cloud --bench cloud [rtt|twins|fanout|rules]`
//! prints Markdown for BENCHMARKS.md; each measures its peer or floor in the same run.
//! Without `--bench` (under `cargo test --all-targets`) every section runs on tiny inputs as
//! a smoke test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../edge-agent/benches/common.rs"]
#[allow(dead_code)]
mod common;
mod rules;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twinlake_edge::{EdgeAgent, EdgeConfig};
use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::Thing;
use twinlake_twin::{Limits, TwinKey, TwinStore};

mod harness;
use harness::*;

fn device_thread(addr: SocketAddr, device: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let mut thing = Thing::default();
    let n = Arc::new(AtomicU64::new(0));
    thing.resource("temp").output(move |out| {
        *out = (20.0 + (n.fetch_add(1, Ordering::Relaxed) % 100) as f64 / 10.0).into();
    });
    let mut cfg = ClientConfig::new(&addr.ip().to_string(), addr.port(), USER, device, "bench-credential");
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.poll_interval = Duration::from_millis(50);
    std::thread::spawn(move || {
        let mut client = Client::new(cfg, thing);
        client.run(&stop, |_| {});
    })
}

fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn us_signed(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// p50 and p99 of signed microseconds.
fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", us_signed(d))
}

/// Live control round trip: REST → cloud → (link) → edge → device → back, against the same
/// read sent straight over the device's TCP connection from the agent that holds it.
fn rtt(full: bool) {
    let n = if full { 3000 } else { 20 };
    let warm = if full { 300 } else { 5 };
    let rt = rt();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cloud = start_cloud(cloud_config(dir.path())).await;
        register(&cloud.state, &["via-gw".into()], Some("gw"), "bench-credential");
        register(&cloud.state, &["direct".into()], None, "bench-credential");
        let mut ec = EdgeConfig {
            gateway: "gw".into(),
            data_dir: dir.path().join("edge"),
            ..EdgeConfig::default()
        };
        ec.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
        ec.metrics.addr = None;
        ec.streams.default_interval = Duration::ZERO;
        ec.streams.inputs = false;
        ec.upload.url = format!("file://{}", dir.path().join("lake").display());
        ec.link.url = format!("ws://{}/v1/gateway/link", cloud.addr);
        ec.link.token = GW_TOKEN.into();
        let agent = EdgeAgent::start(ec).await.unwrap();
        let (edge_tcp, edge_devices, registry) = (agent.tcp_addr().unwrap(), agent.devices(), agent.registry());
        let (estop, estopped) = tokio::sync::oneshot::channel::<()>();
        let edge = tokio::spawn(agent.run(async move {
            let _ = estopped.await;
        }));
        while registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let t1 = device_thread(edge_tcp, "via-gw", stop.clone());
        let t2 = device_thread(cloud.devices.unwrap(), "direct", stop.clone());
        let handle = edge_devices
            .wait_for(USER, "via-gw", Duration::from_secs(10))
            .await
            .unwrap();
        // Wait until the cloud routes to both.
        let http = reqwest::Client::new();
        for d in ["via-gw", "direct"] {
            let url = format!("http://{}/v3/users/{USER}/devices/{d}/resources/temp", cloud.addr);
            loop {
                let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
                if r.status() == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        let runs: usize = if full {
            std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5)
        } else {
            1
        };
        let mut added_runs = Vec::new();
        for run in 1..=runs {
            let mut floor = Vec::with_capacity(n);
            let mut via_gw = Vec::with_capacity(n);
            let mut direct = Vec::with_capacity(n);
            let mut http_only = Vec::with_capacity(n);
            // The server-added latency of each interleaved sample: the round trip minus the
            // no-op route's time and the direct device read measured next to it.
            let mut added_gw = Vec::with_capacity(n);
            let mut added_direct = Vec::with_capacity(n);
            let gw_url = format!("http://{}/v3/users/{USER}/devices/via-gw/resources/temp", cloud.addr);
            let direct_url = format!("http://{}/v3/users/{USER}/devices/direct/resources/temp", cloud.addr);
            // The authenticated no-op of the definition: the token checked, a small JSON answer.
            let noop_url = format!("http://{}/v1/whoami", cloud.addr);
            // Interleaved, so load and noise hit every path alike.
            for i in 0..(n + warm) {
                let t = Instant::now();
                handle.read(&["temp"]).await.unwrap();
                let a = t.elapsed();
                let t = Instant::now();
                let r = http.get(&gw_url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                let b = t.elapsed();
                let t = Instant::now();
                let r = http.get(&direct_url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                let c = t.elapsed();
                let t = Instant::now();
                let r = http.get(&noop_url).bearer_auth(TOKEN).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await.unwrap();
                let d = t.elapsed();
                if i >= warm {
                    added_gw.push(us_signed(b) - us_signed(d) - us_signed(a));
                    added_direct.push(us_signed(c) - us_signed(d) - us_signed(a));
                    floor.push(a);
                    via_gw.push(b);
                    direct.push(c);
                    http_only.push(d);
                }
            }
            let (f50, f99) = summary(floor);
            let (g50, g99) = summary(via_gw);
            let (d50, d99) = summary(direct);
            let (h50, h99) = summary(http_only);
            println!("\n### Live control round trip, run {run} of {runs} ({n} sequential reads of an output, loopback)\n");
            println!("| path | p50 | p99 | p50 ÷ floor | p99 ÷ floor |");
            println!("|---|---:|---:|---:|---:|");
            println!(
                "| floor: the agent's own request on the device's TCP connection | {} | {} | 1.00 | 1.00 |",
                us(f50),
                us(f99)
            );
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            println!(
                "| REST → cloud → WebSocket link → edge agent → device | {} | {} | {:.2} | {:.2} |",
                us(g50),
                us(g99),
                ratio(g50, f50),
                ratio(g99, f99)
            );
            println!(
                "| REST → cloud → in-process pipeline → device (no gateway) | {} | {} | {:.2} | {:.2} |",
                us(d50),
                us(d99),
                ratio(d50, f50),
                ratio(d99, f99)
            );
            println!(
                "| REST alone: GET /v1/whoami (token check, small JSON) | {} | {} | – | – |",
                us(h50),
                us(h99)
            );
            let (ag, ad) = (percentiles(added_gw), percentiles(added_direct));
            println!(
                "\nserver-added (round trip − REST alone − floor, per sample): gateway p50 {:.0} µs, p99 {:.0} µs; in-process p50 {:.0} µs, p99 {:.0} µs",
                ag.0, ag.1, ad.0, ad.1
            );
            added_runs.push((ag.0, ad.0));
        }
        let mmm = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            format!("{:.0} / {:.0} / {:.0} µs", v[0], v[v.len() / 2], v[v.len() - 1])
        };
        println!(
            "\nserver-added p50 over {runs} runs, min / median / max: gateway {}; in-process {}",
            mmm(added_runs.iter().map(|a| a.0).collect()),
            mmm(added_runs.iter().map(|a| a.1).collect())
        );
        stop.store(true, Ordering::Relaxed);
        let _ = (t1.join(), t2.join());
        let _ = estop.send(());
        let _ = edge.await;
        cloud.stop().await;
    });
}

/// Persisted twin updates per second, against redb committing the same bytes.
fn twins(full: bool) {
    let devices = 1000;
    let total: usize = if full { 200_000 } else { 200 };
    println!("\n### Twin update throughput (persisted: each transaction is a durable redb commit)\n");
    println!("| updates per transaction | twin updates/s | redb alone, same commits and bytes | ratio |");
    println!("|---:|---:|---:|---:|");
    for batch in [1usize, 10, 100, 1000] {
        let n = if batch == 1 { total / 50 } else { total };
        let n = n.max(batch);
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("t.redb")).unwrap());
        let store = TwinStore::open(db, Limits::default()).unwrap();
        let keys: Vec<TwinKey> = (0..devices).map(|i| TwinKey::new(USER, &format!("dev-{i}"))).collect();
        // Give every twin a realistic body first.
        store
            .write(|t| {
                for k in &keys {
                    for r in ["temp", "hum", "pressure", "led"] {
                        t.report(k, r, json!(1.0), 1)?;
                    }
                }
                Ok::<_, twinlake_twin::TwinError>(())
            })
            .unwrap();
        let doc_bytes = store.get(&keys[0]).unwrap().unwrap().encode().len();
        let t = Instant::now();
        let mut i = 0usize;
        while i < n {
            store
                .write(|tx| {
                    for j in 0..batch {
                        let k = &keys[(i + j) % devices];
                        tx.report(k, "temp", json!(20.0 + (i + j) as f64 / 1000.0), (i + j) as u64)?;
                    }
                    Ok::<_, twinlake_twin::TwinError>(())
                })
                .unwrap();
            i += batch;
        }
        let ours = n as f64 / t.elapsed().as_secs_f64();

        // The floor: redb writing documents of the same size, same commits.
        let db = redb::Database::create(dir.path().join("raw.redb")).unwrap();
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");
        let body = vec![b'x'; doc_bytes];
        let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
        let t = Instant::now();
        let mut i = 0usize;
        while i < n {
            let tx = db.begin_write().unwrap();
            {
                let mut tb = tx.open_table(table).unwrap();
                for j in 0..batch {
                    tb.insert(names[(i + j) % devices].as_str(), body.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
            i += batch;
        }
        let raw = n as f64 / t.elapsed().as_secs_f64();
        println!("| {batch} | {ours:.0} | {raw:.0} | {:.2} |", ours / raw);
    }
}

/// Server-Sent Events fan-out: subscribers × twin updates per second delivered.
fn fanout(full: bool) {
    let subs_list: &[usize] = if full { &[10, 100, 1000] } else { &[2] };
    let updates: usize = if full { 20_000 } else { 100 };
    println!("\n### SSE fan-out (subscribers on /v1/events, in the same process; updates in batches of 100)\n");
    println!("| subscribers | updates/s committed | events delivered/s | delivered ÷ (subscribers × committed) |");
    println!("|---:|---:|---:|---:|");
    for &subs in subs_list {
        let rt = rt();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = cloud_config(dir.path());
            cfg.edge.listener.tcp = None;
            let cloud = start_cloud(cfg).await;
            let received = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            let ready = Arc::new(AtomicU64::new(0));
            for _ in 0..subs {
                let (received, ready, addr) = (received.clone(), ready.clone(), cloud.addr);
                tasks.push(tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let req = format!(
                        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAccept: text/event-stream\r\n\r\n"
                    );
                    s.write_all(req.as_bytes()).await.unwrap();
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut first = true;
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        if first {
                            ready.fetch_add(1, Ordering::Relaxed);
                            first = false;
                        }
                        let events = buf[..k].windows(15).filter(|w| w == b"event: reported").count();
                        received.fetch_add(events as u64, Ordering::Relaxed);
                    }
                }));
            }
            while cloud.state.metrics.subscribers.get() < subs as i64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let twins = cloud.state.twins.clone();
            let t = Instant::now();
            let producer = tokio::task::spawn_blocking(move || {
                let mut i = 0;
                while i < updates {
                    twins
                        .write(|tx| {
                            for j in 0..100 {
                                let k = TwinKey::new(USER, &format!("dev-{}", (i + j) % 1000));
                                tx.report(&k, "temp", json!((i + j) as f64), (i + j) as u64)?;
                            }
                            Ok::<_, twinlake_twin::TwinError>(())
                        })
                        .unwrap();
                    i += 100;
                }
            });
            producer.await.unwrap();
            let committed_s = t.elapsed().as_secs_f64();
            let want = (subs * updates) as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut last = 0;
            while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = received.load(Ordering::Relaxed);
                if now == last && t.elapsed().as_secs_f64() > committed_s + 2.0 {
                    break; // nothing more is coming (a subscriber lagged and skipped)
                }
                last = now;
            }
            let got = received.load(Ordering::Relaxed);
            let total_s = t.elapsed().as_secs_f64();
            println!(
                "| {subs} | {:.0} | {:.0} | {:.3} |",
                updates as f64 / committed_s,
                got as f64 / total_s.max(committed_s),
                got as f64 / want as f64
            );
            for t in tasks {
                t.abort();
            }
            cloud.stop().await;
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let picked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let run = |name: &str| !full || picked.is_empty() || picked.contains(&name);
    if run("rtt") {
        rtt(full);
    }
    if run("twins") {
        twins(full);
    }
    if run("fanout") {
        fanout(full);
    }
    if run("rules") {
        rules::throughput(full);
        rules::latency(full);
    }
}
