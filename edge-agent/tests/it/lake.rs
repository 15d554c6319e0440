//! Helpers for tests of the whole agent: configs, SDK devices that write numbered records,
//! and reading the lake back with the parquet crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use tokio::sync::oneshot;
use twinlake_edge::arrow::array::{Array, AsArray, RecordBatch};
use twinlake_edge::arrow::datatypes::Int32Type;
use twinlake_edge::config::DeviceEntry;
use twinlake_edge::object_store;
use twinlake_edge::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use twinlake_edge::registry::CredentialHash;
use twinlake_edge::{EdgeAgent, EdgeConfig, Error};
use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::{Event, Thing};
use twinlake_sdk::pson::Value;

pub const USER: &str = "fleet";
pub const CREDENTIAL: &str = "fleet-secret";

/// A config for a test agent: loopback ports, `n` registered devices `dev-0..n`.
pub fn config(data_dir: &Path, lake_url: &str, n: usize) -> EdgeConfig {
    let hash = CredentialHash::new(CREDENTIAL, 1000).to_string();
    let mut c = EdgeConfig {
        gateway: "gw-test".into(),
        data_dir: data_dir.to_owned(),
        ..EdgeConfig::default()
    };
    c.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.metrics.addr = Some("127.0.0.1:0".parse().unwrap());
    c.upload.url = lake_url.into();
    c.upload.retry_min = Duration::from_millis(50);
    c.upload.retry_max = Duration::from_millis(400);
    c.buffer.max_age = Duration::from_millis(400);
    c.streams.default_interval = Duration::from_millis(100);
    c.devices = (0..n)
        .map(|i| DeviceEntry {
            user: USER.into(),
            device: format!("dev-{i}"),
            credential_hash: hash.clone(),
            properties: Default::default(),
        })
        .collect();
    c
}

/// A running agent.
pub struct Running {
    pub tcp: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub store: (Arc<dyn object_store::ObjectStore>, object_store::path::Path),
    pub endpoints: twinlake_edge::ingest::EndpointQueue,
    pub metrics: Arc<twinlake_edge::metrics::Metrics>,
    pub lorawan: Option<SocketAddr>,
    /// The HTTP device API.
    pub device_http: Option<SocketAddr>,
    /// The CoAP source.
    pub coap: Option<SocketAddr>,
    /// The embedded MQTT broker's device listeners (MQTT 3.1.1, MQTT 5).
    pub mqtt_broker: Option<(SocketAddr, Option<SocketAddr>)>,
    pub southbound: Arc<twinlake_edge::sources::Southbound>,
    /// Every device event from the start.
    pub watch: tokio::sync::broadcast::Receiver<twinlake_edge::listener::DeviceEvent>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

pub async fn start(config: EdgeConfig) -> Running {
    let agent = EdgeAgent::start(config).await.expect("agent starts");
    let (stop, stopped) = oneshot::channel::<()>();
    Running {
        tcp: agent.tcp_addr().unwrap(),
        metrics_addr: agent.metrics_addr().unwrap(),
        store: agent.store(),
        endpoints: agent.endpoint_calls(),
        metrics: agent.metrics(),
        lorawan: agent.lorawan_addr(),
        device_http: agent.device_http_addr(),
        coap: agent.coap_addr(),
        mqtt_broker: agent.mqtt_broker_addrs(),
        southbound: agent.southbound(),
        watch: agent.watch(),
        stop,
        task: tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        })),
    }
}

impl Running {
    /// Graceful shutdown; returns the agent's result.
    pub async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("agent stops in time")
            .expect("join")
    }

    /// GET /metrics.
    pub async fn scrape(&self) -> String {
        http_get(self.metrics_addr, "/metrics").await
    }
}

/// A minimal HTTP/1.0 GET.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of a metric line such as `twinlake_edge_rows_in_total 5`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A sensor with `temp` (output) and `led` (input) on an SDK client.
pub fn sensor() -> Thing {
    let mut thing = Thing::default();
    thing
        .resource("temp")
        .output(|out| *out = Value::object().with("c", 21.5).with("ok", true));
    thing.resource("level").output(|out| *out = 7.into());
    let led = Arc::new(std::sync::atomic::AtomicBool::new(false));
    thing.resource("led").input_bool(led);
    thing
}

/// Connects device `dev-i` and writes records `{"seq": first..first+count, ...}` to bucket
/// `readings`, each confirmed; returns the sequence numbers the agent confirmed. Stops at
/// the first error (the agent went away).
pub fn write_records(addr: SocketAddr, i: usize, first: u64, count: u64, then_linger: Duration) -> Vec<u64> {
    let mut cfg = ClientConfig::new("127.0.0.1", addr.port(), USER, &format!("dev-{i}"), CREDENTIAL);
    cfg.poll_interval = Duration::from_millis(5);
    let mut client = Client::new(cfg, sensor());
    let mut acked = Vec::new();
    if client.wait_connected(Duration::from_secs(10)).is_err() {
        return acked;
    }
    for seq in first..first + count {
        let rec = Value::object()
            .with("seq", seq as i64)
            .with("temp", 20.0 + (seq % 10) as f64 / 4.0)
            .with("label", format!("r{seq}"));
        let Some(id) = client.thing().write_bucket("readings", rec, true) else {
            break;
        };
        match client.wait_for(
            Duration::from_secs(10),
            |e| matches!(e, Event::Ack { request, .. } if *request == id),
        ) {
            Ok(Event::Ack { ok: true, .. }) => acked.push(seq),
            _ => break,
        }
    }
    let end = std::time::Instant::now() + then_linger;
    while std::time::Instant::now() < end {
        if client.handle().is_err() {
            break;
        }
    }
    acked
}

/// Every Parquet file under a local directory, relative path → batches.
pub fn read_dir_lake(root: &Path) -> BTreeMap<String, Vec<RecordBatch>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let bytes = bytes::Bytes::from(std::fs::read(&p).unwrap());
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, read_parquet(bytes));
            }
        }
    }
    out
}

/// Every Parquet file in an object store under `prefix`.
pub async fn read_store_lake(
    store: &dyn object_store::ObjectStore,
    prefix: &object_store::path::Path,
) -> BTreeMap<String, Vec<RecordBatch>> {
    use futures::TryStreamExt;
    let metas: Vec<_> = store.list(Some(prefix)).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for m in metas {
        let bytes = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(m.location.to_string(), read_parquet(bytes));
    }
    out
}

pub fn read_parquet(bytes: bytes::Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// `(device, seq)` of every row of the `readings` table.
pub fn readings(lake: &BTreeMap<String, Vec<RecordBatch>>) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for (path, batches) in lake {
        if !path.contains("readings/") {
            continue;
        }
        for b in batches {
            let dev = b.column_by_name("device").unwrap().as_dictionary::<Int32Type>();
            let names = dev.values().as_string::<i32>();
            let seq = b.column_by_name("seq").unwrap();
            let seq = seq.as_primitive::<twinlake_edge::arrow::datatypes::Int64Type>();
            for r in 0..b.num_rows() {
                let d = names.value(dev.keys().value(r) as usize).to_owned();
                assert!(!seq.is_null(r));
                rows.push((d, seq.value(r)));
            }
        }
    }
    rows.sort();
    rows
}
