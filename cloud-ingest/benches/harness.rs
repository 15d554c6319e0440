//! What the cloud benchmarks share: a cloud on a temporary directory, its configuration,
//! and devices registered without the API.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use twinlake_cloud::auth::{Scope, sha256_hex};
use twinlake_cloud::config::{GatewayEntry, TokenEntry};
use twinlake_cloud::store::{DEVICES, DeviceRecord};
use twinlake_cloud::{AppState, Cloud, CloudConfig};
use twinlake_edge::registry::CredentialHash;

pub const TOKEN: &str = "bench-token";
pub const GW_TOKEN: &str = "bench-gw-token";
pub const USER: &str = "bench";

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn cloud_config(dir: &Path) -> CloudConfig {
    let mut c = CloudConfig {
        data_dir: dir.join("cloud"),
        ..CloudConfig::default()
    };
    c.http.addr = "127.0.0.1:0".parse().unwrap();
    c.metrics.addr = None;
    c.tokens = vec![TokenEntry {
        name: "bench".into(),
        sha256: sha256_hex(TOKEN),
        scopes: vec![Scope::Admin],
        user: None,
    }];
    c.gateways = vec![GatewayEntry {
        id: "gw".into(),
        token_sha256: sha256_hex(GW_TOKEN),
        users: vec![USER.into()],
    }];
    c.edge.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.edge.upload.url = format!("file://{}", dir.join("lake").display());
    c.edge.streams.default_interval = Duration::ZERO;
    c.edge.streams.inputs = false;
    // The cheap hashes `register` writes stay as they are: at the default policy every
    // first login would rehash its credential at 600,000 PBKDF2 iterations (about 0.3 s
    // of CPU each), and these benchmarks are not about login cost.
    c.registry.credential_iterations = 1_000;
    c
}

/// Registers devices straight into the registry table (cheap hashes: this is about memory
/// and latency, not login cost).
pub fn register(state: &AppState, names: &[String], gateway: Option<&str>, credential: &str) {
    let hash = CredentialHash::new(credential, 1_000).to_string();
    let tx = state.db.0.begin_write().unwrap();
    {
        let mut t = tx.open_table(DEVICES).unwrap();
        for d in names {
            let rec = DeviceRecord {
                user: USER.into(),
                device: d.clone(),
                name: String::new(),
                description: String::new(),
                gateway: gateway.map(String::from),
                tags: Default::default(),
                attributes: Default::default(),
                enabled: true,
                credential_hash: hash.clone(),
                created: 0,
            };
            t.insert(
                format!("{USER}/{d}").as_str(),
                serde_json::to_vec(&rec).unwrap().as_slice(),
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    state.gateways.registry_changed();
}

pub struct Running {
    pub state: Arc<AppState>,
    pub addr: SocketAddr,
    pub devices: Option<SocketAddr>,
    pub device_http: Option<SocketAddr>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<Result<(), twinlake_cloud::Error>>,
}

pub async fn start_cloud(cfg: CloudConfig) -> Running {
    let cloud = Cloud::start(cfg).await.unwrap();
    let (addr, devices, state) = (cloud.http_addr().unwrap(), cloud.device_addrs().0, cloud.state());
    let device_http = cloud.device_http_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cloud.run(async move {
        let _ = stopped.await;
    }));
    Running {
        state,
        addr,
        devices,
        device_http,
        stop,
        task,
    }
}

impl Running {
    pub async fn stop(self) {
        drop(self.state);
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
