//! CoAP: Confirmable POSTs per second into the lake (each ACK sent only once its row is
//! fsynced in the WAL), against a UDP echo server answering the same datagrams from the
//! same clients in the same run (the floor: a datagram there and back). Clients send one
//! message at a time each, as devices do; `BENCH_CLIENTS` (64) and `BENCH_N` (40,000
//! messages per run) set the load.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
use tokio::net::UdpSocket;
use twinlake_edge::EdgeAgent;

use crate::http_device::{env, reading, stats};
use crate::{edge_config, read_dir_batches};

fn con_post(client: usize, mid: u16, body: &str) -> Vec<u8> {
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    let token = format!("bench:dev-{client}:k");
    for seg in ["api", "v1", token.as_str(), "telemetry", "readings"] {
        p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
    }
    p.payload = body.as_bytes().to_vec();
    p.to_bytes().unwrap()
}

/// One device: `n` messages, each sent again every second until its answer comes.
async fn device(addr: SocketAddr, client: usize, first: usize, n: usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 1500];
    for i in 0..n {
        let mid = (first + i) as u16;
        let msg = con_post(client, mid, &reading(first + i));
        loop {
            sock.send_to(&msg, addr).await.unwrap();
            if let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
                && len >= 4
                && buf[2..4] == mid.to_be_bytes()
            {
                break;
            }
        }
    }
}

async fn round(addr: SocketAddr, clients: usize, n: usize, first: usize) -> f64 {
    let per = n / clients;
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        tasks.spawn(device(addr, c, first + c * per, per));
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    t.elapsed().as_secs_f64()
}

/// The floor: every datagram sent straight back.
async fn echo() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

pub fn coap(full: bool) {
    let (clients, n, runs) = if full {
        (env("BENCH_CLIENTS", 64), env("BENCH_N", 40_000), 5)
    } else {
        (4, 200, 1)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = edge_config(dir.path(), clients);
    c.listener.tcp = None;
    c.coap.udp = Some("127.0.0.1:0".parse().unwrap());
    c.coap.max_exchanges = 1 << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stored, floor) = rt.block_on(async {
        let agent = EdgeAgent::start(c).await.unwrap();
        let addr = agent.coap_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        let echo = echo().await;
        // Warm: every device's credential checked once (the slow hash).
        round(addr, clients, clients * 4, 60_000).await;
        let (mut stored, mut floor) = (Vec::new(), Vec::new());
        for r in 0..runs {
            floor.push(n as f64 / round(echo, clients, n, 0).await);
            // Message ids differ between runs: none is taken for a retransmission.
            stored.push(n as f64 / round(addr, clients, n, (r * n) % 50_000).await);
        }
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        (stored, floor)
    });
    let lake_rows: usize = read_dir_batches(&dir.path().join("lake"))
        .iter()
        .flat_map(|(_, b)| b)
        .map(|b| b.num_rows())
        .sum();
    assert!(
        lake_rows >= n / clients * clients * runs,
        "every acknowledged message's row is in the lake"
    );
    let ratios: Vec<f64> = stored.iter().zip(&floor).map(|(s, f)| s / f).collect();
    let ((smin, smed, smax), (fmin, fmed, fmax), (rmin, rmed, rmax)) = (stats(&stored), stats(&floor), stats(&ratios));
    println!("\n### CoAP: Confirmable POSTs into the lake\n");
    println!(
        "{clients} devices, {n} messages per run, {runs} runs interleaved; one reading (7 fields) per message, the ACK only after the WAL fsync.\n"
    );
    println!("| | messages/s min | median | max |");
    println!("|---|---:|---:|---:|");
    println!("| CON POST, ACK when durable | {smin:.0} | {smed:.0} | {smax:.0} |");
    println!("| UDP echo floor (same clients) | {fmin:.0} | {fmed:.0} | {fmax:.0} |");
    println!("| ratio stored / echo | {rmin:.2} | {rmed:.2} | {rmax:.2} |");
}
