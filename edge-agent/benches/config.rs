//! The agent the edge benchmarks run (edge.rs and idle.rs include this file).

use std::path::Path;
use std::time::Duration;

use twinlake_edge::EdgeConfig;
use twinlake_edge::config::DeviceEntry;
use twinlake_edge::registry::CredentialHash;

/// An agent on a free TCP port for `devices` devices `dev-<i>` of user `bench` with
/// credential `k`, uploading to a `file://` lake in `dir`, no metrics listener.
pub fn edge_config(dir: &Path, devices: usize) -> EdgeConfig {
    let hash = CredentialHash::new("k", 1000).to_string();
    let mut c = EdgeConfig {
        gateway: "gw-bench".into(),
        data_dir: dir.join("data"),
        ..EdgeConfig::default()
    };
    c.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.listener.request_timeout = Duration::from_secs(1);
    c.metrics.addr = None;
    c.upload.url = format!("file://{}", dir.join("lake").display());
    c.streams.default_interval = Duration::from_secs(3600);
    c.streams.inputs = false;
    c.devices = (0..devices)
        .map(|i| DeviceEntry {
            user: "bench".into(),
            device: format!("dev-{i}"),
            credential_hash: hash.clone(),
            properties: Default::default(),
        })
        .collect();
    c
}
