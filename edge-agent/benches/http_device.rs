//! The HTTP device API: telemetry requests per second into the lake (each answered only
//! once its row is fsynced in the WAL), against the same clients calling the API's no-op
//! authenticated route (`GET /v1/whoami`: HTTP and the token check, nothing stored) in the
//! same run. Clients keep their connections alive, one request at a time each, as
//! firmware does; `BENCH_CLIENTS` (64) and `BENCH_N` (40,000 requests per run) set the load.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use twinlake_edge::EdgeAgent;

use crate::{edge_config, read_dir_batches};

pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends one request on a kept-alive connection and reads its whole answer; its status
/// line.
pub async fn exchange(conn: &mut BufReader<TcpStream>, req: &str) -> String {
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).await.unwrap();
    let mut line = String::new();
    let mut len = 0;
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.unwrap();
    status
}

/// Sends `requests` on one kept-alive connection; each must answer 200.
async fn client(addr: SocketAddr, token: String, requests: Vec<Option<String>>) {
    let mut conn = BufReader::new(TcpStream::connect(addr).await.unwrap());
    conn.get_ref().set_nodelay(true).unwrap();
    for body in requests {
        let req = match body {
            Some(b) => format!(
                "POST /v1/telemetry/readings HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("GET /v1/whoami HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n"),
        };
        let status = exchange(&mut conn, &req).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status:?}");
    }
}

/// A TSBS truck reading (7 fields), as the MQTT bench publishes it too.
pub fn reading(i: usize) -> String {
    format!(
        r#"{{"latitude":{:.5},"longitude":{:.5},"elevation":{},"velocity":{},"heading":{},"grade":{},"fuel_consumption":{:.1}}}"#,
        52.0 + (i % 997) as f64 * 1e-4,
        4.0 + (i % 991) as f64 * 1e-4,
        i % 500,
        i % 120,
        i % 360,
        i % 30,
        (i % 400) as f64 / 10.0
    )
}

/// One round: `n` requests over `clients` connections (devices); the seconds it took.
async fn round(addr: SocketAddr, clients: usize, n: usize, store: bool) -> f64 {
    let per = n / clients;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let bodies = (0..per).map(|i| store.then(|| reading(c * per + i))).collect();
        tasks.spawn(client(addr, format!("bench:dev-{c}:k"), bodies));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    t.elapsed().as_secs_f64()
}

pub fn http(full: bool) {
    let (clients, n, runs) = if full {
        (env("BENCH_CLIENTS", 64), env("BENCH_N", 40_000), 5)
    } else {
        (4, 200, 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = edge_config(dir.path(), clients);
    c.listener.tcp = None;
    c.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    // Every client comes from 127.0.0.1, and a round's connections may still be closing
    // when the next opens.
    c.device_http.max_connections_per_ip = 4 * clients;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stored, noop) = rt.block_on(async {
        let agent = EdgeAgent::start(c).await.unwrap();
        let addr = agent.device_http_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        // Warm: every device's credential checked once (the slow hash), both routes hot.
        round(addr, clients, clients * 4, false).await;
        round(addr, clients, clients * 4, true).await;
        let (mut stored, mut noop) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            noop.push(n as f64 / round(addr, clients, n, false).await);
            stored.push(n as f64 / round(addr, clients, n, true).await);
        }
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        (stored, noop)
    });
    let lake_rows: usize = read_dir_batches(&dir.path().join("lake"))
        .iter()
        .flat_map(|(_, b)| b)
        .map(|b| b.num_rows())
        .sum();
    let want = n / clients * clients * runs + clients * 4;
    assert_eq!(lake_rows, want, "every acknowledged request's row is in the lake");
    report(clients, n, &stored, &noop);
}

/// Min, median, max.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn report(clients: usize, n: usize, stored: &[f64], noop: &[f64]) {
    let ratios: Vec<f64> = stored.iter().zip(noop).map(|(s, o)| s / o).collect();
    let (smin, smed, smax) = stats(stored);
    let (omin, omed, omax) = stats(noop);
    let (rmin, rmed, rmax) = stats(&ratios);
    println!("\n### HTTP device API: telemetry into the lake\n");
    println!(
        "{clients} kept-alive clients, {n} requests per run, {} runs interleaved; one reading (7 fields) per request, 200 only after the WAL fsync.\n",
        stored.len()
    );
    println!("| | requests/s min | median | max |");
    println!("|---|---:|---:|---:|");
    println!("| POST /v1/telemetry (stored) | {smin:.0} | {smed:.0} | {smax:.0} |");
    println!("| GET /v1/whoami (no-op, authenticated) | {omin:.0} | {omed:.0} | {omax:.0} |");
    println!("| ratio stored / no-op | {rmin:.2} | {rmed:.2} | {rmax:.2} |");
}
