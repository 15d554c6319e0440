//! Upload to a real S3 endpoint (s3s-fs on loopback), through an outage, and the disk cap.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::lake::{self, metric};

const ACCESS: &str = "twinlake";
const SECRET: &str = "twinlake-secret";

/// s3s-fs serving `root` (bucket `lake` = `root/lake`) on `addr`. Dropping it takes the
/// endpoint away: the listener closes and open connections are cut.
struct S3Server {
    tasks: JoinSet<()>,
}

async fn s3_server(root: &Path, addr: SocketAddr) -> (S3Server, SocketAddr) {
    std::fs::create_dir_all(root.join("lake")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(ACCESS, SECRET));
    let service = b.build();
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            conns.spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    });
    (S3Server { tasks }, addr)
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn s3_config(data: &Path, endpoint: SocketAddr) -> twinlake_edge::EdgeConfig {
    let mut cfg = lake::config(data, "s3://lake/fleet", 3);
    for (k, v) in [
        ("aws_endpoint", format!("http://{endpoint}")),
        ("aws_access_key_id", ACCESS.into()),
        ("aws_secret_access_key", SECRET.into()),
        ("aws_region", "us-east-1".into()),
        ("aws_allow_http", "true".into()),
        ("aws_virtual_hosted_style_request", "false".into()),
    ] {
        cfg.upload.options.insert(k.into(), v);
    }
    cfg.upload.options.insert("timeout".into(), "2s".into());
    cfg.upload.options.insert("connect_timeout".into(), "1s".into());
    cfg
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn write(agent: &lake::Running, first: u64, count: u64) -> Vec<u64> {
    let addr = agent.tcp;
    let threads: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || lake::write_records(addr, i, first, count, Duration::ZERO)))
        .collect();
    tokio::task::spawn_blocking(move || threads.into_iter().flat_map(|t| t.join().unwrap()).collect())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_to_s3_and_rides_out_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    let (server, endpoint) = s3_server(&s3_root, "127.0.0.1:0".parse().unwrap()).await;
    let agent = lake::start(s3_config(&dir.path().join("data"), endpoint)).await;

    // Store up: rows land in S3.
    assert_eq!(write(&agent, 0, 40).await.len(), 120);
    wait_until("the first files are uploaded", async || {
        metric(&agent.scrape().await, "twinlake_edge_files_uploaded_total") >= 1.0
    })
    .await;

    // Store down: ingest goes on, seals queue up, uploads fail and retry.
    drop(server);
    assert_eq!(write(&agent, 40, 40).await.len(), 120);
    wait_until("uploads fail while S3 is away", async || {
        let m = agent.scrape().await;
        metric(&m, "twinlake_edge_upload_failures_total") >= 2.0
            && metric(&m, "twinlake_edge_upload_queue_files") >= 1.0
    })
    .await;

    // Store back on the same address: the backlog drains.
    let (_server, _) = s3_server(&s3_root, endpoint).await;
    assert_eq!(write(&agent, 80, 20).await.len(), 60);
    wait_until("the backlog drains", async || {
        let m = agent.scrape().await;
        metric(&m, "twinlake_edge_upload_queue_files") == 0.0
            && metric(&m, "twinlake_edge_files_uploaded_total") >= metric(&m, "twinlake_edge_files_written_total")
            && metric(&m, "twinlake_edge_buffer_rows") == 0.0
    })
    .await;
    let (store, prefix) = agent.store.clone();
    agent.stop().await.unwrap();

    // Read back through the S3 API: every row exactly once.
    let files = lake::read_store_lake(store.as_ref(), &prefix).await;
    assert!(files.keys().all(|k| k.starts_with("fleet/")), "{:?}", files.keys());
    let got = lake::readings(&files);
    let mut want: Vec<(String, i64)> = (0..3)
        .flat_map(|d| (0..100).map(move |s| (format!("dev-{d}"), s)))
        .collect();
    want.sort();
    assert_eq!(got, want);
    // And the same files are on s3s-fs's disk.
    assert!(s3_root.join("lake/fleet/readings").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_disk_cap_drops_the_oldest_files_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: every upload fails.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = s3_config(&dir.path().join("data"), closed);
    cfg.upload.disk_cap_bytes = 1;
    cfg.buffer.max_age = Duration::from_millis(200);
    let agent = lake::start(cfg).await;
    assert_eq!(write(&agent, 0, 30).await.len(), 90);
    wait_until("files are dropped for the cap", async || {
        let m = agent.scrape().await;
        metric(&m, "twinlake_edge_dropped_files_total{reason=\"disk_cap\"}") >= 1.0
            || m.lines()
                .any(|l| l.starts_with("twinlake_edge_dropped_files_total{reason=\"disk_cap\"}"))
    })
    .await;
    let m = agent.scrape().await;
    let line = m
        .lines()
        .find(|l| l.starts_with("twinlake_edge_dropped_rows_total{reason=\"disk_cap\"}"))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0,
        "{line}"
    );
    agent.stop().await.unwrap();
}
