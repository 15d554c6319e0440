//! A rule placed on the gateway, with the cloud away: from a value arriving at the agent's
//! HTTP device API to the action's input write reaching another device (an SDK client on
//! the agent's TCP listener), against the value's own POST (answered once durable in the
//! WAL) in the same run. The link points at a closed port all along, as when the cloud is
//! down; the rule is the one the cloud saved at the last link (`rules.json`).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use twinlake_edge::EdgeAgent;
use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::Thing;

use crate::edge_config;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `n` raises and `n` clears.
pub fn latency(full: bool) {
    let n = if full { 200 } else { 3 };
    let dir = tempfile::tempdir().unwrap();
    let mut c = edge_config(dir.path(), 2);
    c.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    c.link.url = "ws://127.0.0.1:9/link".into();
    c.link.token = "unused".into();
    std::fs::create_dir_all(&c.data_dir).unwrap();
    let rule = serde_json::json!([{
        "id": "fan", "owner": "bench", "gateway": "gw-bench",
        "when": {"type": "threshold", "table": "telemetry", "field": "temp",
                 "devices": {"devices": ["dev-1"]},
                 "raise": {"op": ">", "value": 35.0}, "clear": {"op": "<", "value": 33.0}},
        "actions": [{"on": "raised", "desired": {"fan": true}, "device": "dev-0"},
                    {"on": "cleared", "desired": {"fan": false}, "device": "dev-0"}]
    }]);
    std::fs::write(c.data_dir.join("rules.json"), rule.to_string()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (action, request) = rt.block_on(async {
        let agent = EdgeAgent::start(c).await.unwrap();
        let tcp = agent.tcp_addr().unwrap();
        let http = agent.device_http_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        // The fan: an SDK device whose `fan` input reports each write's arrival.
        let (tx, rx) = std::sync::mpsc::channel::<(bool, Instant)>();
        let halt = Arc::new(AtomicBool::new(false));
        let halt2 = halt.clone();
        let fan = std::thread::spawn(move || {
            let mut thing = Thing::default();
            let mut state = false;
            thing.resource("fan").input(move |v| match v.as_bool() {
                Some(on) => {
                    state = on;
                    let _ = tx.send((on, Instant::now()));
                }
                None => *v = state.into(),
            });
            let mut cfg = ClientConfig::new("127.0.0.1", tcp.port(), "bench", "dev-0", "k");
            cfg.poll_interval = Duration::from_millis(1);
            Client::new(cfg, thing).run(&halt2, |_| {});
        });
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut conn = tokio::io::BufReader::new(tokio::net::TcpStream::connect(http).await.unwrap());
        conn.get_ref().set_nodelay(true).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut action = Vec::new();
        let mut request = Vec::new();
        for i in 0..n * 2 {
            let on = i % 2 == 0;
            let temp = if on { 40.0 } else { 20.0 };
            let t0 = Instant::now();
            let body = format!(r#"{{"temp":{temp}}}"#);
            let req = format!(
                "POST /api/v1/bench:dev-1:k/telemetry HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let status = crate::http_device::exchange(&mut conn, &req).await;
            assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
            request.push(t0.elapsed());
            let rx = rx.clone();
            let (got, at) = tokio::task::spawn_blocking(move || {
                rx.lock().unwrap().recv_timeout(Duration::from_secs(10)).expect("the fan was switched")
            })
            .await
            .unwrap();
            assert_eq!(got, on);
            action.push(at - t0);
        }
        halt.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        fan.join().unwrap();
        (action, request)
    });
    let summary = |mut v: Vec<Duration>| {
        v.sort();
        (
            percentile(&v, 0.0),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            percentile(&v, 1.0),
        )
    };
    let (a0, a50, a99, a100) = summary(action);
    let (r0, r50, r99, r100) = summary(request);
    println!(
        "\n### A gateway rule with the cloud away: a value in, the action at the device ({} raises and clears)\n",
        n * 2
    );
    println!("| path | min | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| HTTP device POST → rule → WAL fsync (the row and its alarm) → action queue → input write over TCP → device | {} | {} | {} | {} |",
        us(a0),
        us(a50),
        us(a99),
        us(a100)
    );
    println!(
        "| floor: the value's POST alone (answered once durable in the WAL) | {} | {} | {} | {} |",
        us(r0),
        us(r50),
        us(r99),
        us(r100)
    );
}
