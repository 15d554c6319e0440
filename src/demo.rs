//! `twinlake demo`: the edge agent (device listener on TCP and TLS, WAL, Parquet lake) with a
//! simulated fleet, live streams and control, all on embedded defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use twinlake_edge::config::DeviceEntry;
use twinlake_edge::listener::{DeviceEventKind, DeviceHandle, Devices};
use twinlake_edge::registry::CredentialHash;
use twinlake_edge::{EdgeAgent, EdgeConfig};
use twinlake_sdk::json::to_json;

use crate::sim;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address for the plain TCP device listener (the Thinger port).
    #[arg(long, default_value = "127.0.0.1:25200")]
    pub tcp: SocketAddr,
    /// Address for the TLS device listener.
    #[arg(long, default_value = "127.0.0.1:25202")]
    pub tls: SocketAddr,
    /// Address for Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9600")]
    pub metrics: SocketAddr,
    /// Simulated devices.
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
}

const USER: &str = "demo";
const CREDENTIAL: &str = "twinlake";

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // A self-signed certificate for the TLS port, written where a client can pick it up.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), args.tls.ip().to_string()])?;
    let dir = std::env::temp_dir().join("twinlake-demo");
    std::fs::create_dir_all(&dir)?;
    let ca_path = dir.join("device-listener.pem");
    let key_path = dir.join("device-listener.key");
    std::fs::write(&ca_path, cert.cert.pem())?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;

    // The edge agent on embedded defaults: the WAL and outbox under the demo directory, the
    // lake beside them.
    let lake = dir.join("lake");
    let mut config = EdgeConfig {
        gateway: "demo-gw".into(),
        data_dir: dir.join("edge"),
        ..EdgeConfig::default()
    };
    config.listener.tcp = Some(args.tcp);
    config.listener.tls = Some(args.tls);
    config.listener.tls_cert = Some(ca_path.clone());
    config.listener.tls_key = Some(key_path);
    config.metrics.addr = Some(args.metrics);
    config.streams.default_interval = Duration::from_secs(1);
    config.buffer.max_age = Duration::from_secs(10);
    config.upload.url = format!("file://{}", lake.display());
    let hash = CredentialHash::new(CREDENTIAL, 1_000).to_string();
    // The fleet, and a slot for a real device: the stock Thinger client or our SDK example.
    let names = (1..=args.devices.max(1))
        .map(|i| format!("sensor-{i}"))
        .chain(["my-device".to_string()]);
    config.devices = names
        .map(|device| DeviceEntry {
            user: USER.into(),
            device,
            credential_hash: hash.clone(),
            properties: Default::default(),
        })
        .collect();
    let agent = EdgeAgent::start(config).await?;
    let devices = agent.devices();
    let mut events = agent.watch();
    let (tcp, tls, metrics) = (agent.tcp_addr(), agent.tls_addr(), agent.metrics_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agent.run(async move {
        let _ = stop_rx.await;
    }));

    println!("Twinlake demo");
    println!("  device listener   tcp://{}  tls://{}", fmt_addr(tcp), fmt_addr(tls));
    println!("  TLS certificate   {}", ca_path.display());
    println!(
        "  credentials       user {USER:?}, devices sensor-1..sensor-{} and my-device, credential {CREDENTIAL:?}",
        args.devices
    );
    println!(
        "  your own device   cargo run -p twinlake-sdk --example sensor -- {} {USER} my-device {CREDENTIAL}",
        fmt_addr(tcp)
    );
    if let Some(tcp) = tcp {
        println!(
            "  stock Thinger client  host {}, port {}, user {USER}, device my-device, credential {CREDENTIAL}",
            tcp.ip(),
            tcp.port()
        );
    }
    println!("  metrics           http://{}/metrics", fmt_addr(metrics));
    println!("  Parquet lake      {} (sealed every 10 s)", lake.display());
    println!(
        "  query it          duckdb -c \"SELECT device, count(*), avg(value) FROM read_parquet('{}/temp/**/*.parquet', hive_partitioning = true) GROUP BY device\"",
        lake.display()
    );
    println!("  Ctrl-C stops.\n");

    let stop = Arc::new(AtomicBool::new(false));
    let sim_args = sim::SimArgs {
        connect: fmt_addr(tcp),
        devices: args.devices,
        user: USER.into(),
        prefix: "sensor".into(),
        credential: CREDENTIAL.into(),
        insecure_tls: false,
    };
    let threads = sim::spawn(&sim_args, stop.clone())?;

    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let period = Duration::from_secs(5);
    let mut control = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut led_on = true;
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("(skipped {n} events)");
                        continue;
                    }
                    Err(_) => break,
                };
                let device = ev.device.device.clone();
                match ev.kind {
                    DeviceEventKind::Connected { peer, tls } => {
                        println!("{device:<12} connected from {peer}{}", if tls { " over TLS" } else { "" });
                        tokio::spawn(describe_and_light(devices.clone(), device));
                    }
                    DeviceEventKind::Disconnected { reason, .. } => println!("{device:<12} disconnected: {reason}"),
                    DeviceEventKind::Stream { path, payload, .. } => {
                        println!("{device:<12} {:<8} {}", path.join("/"), payload.as_ref().map(to_json).unwrap_or_default());
                    }
                    other => println!("{device:<12} {other:?}"),
                }
            }
            _ = control.tick() => {
                led_on = !led_on;
                for key in devices.list() {
                    if let Some(h) = devices.get(&key.user, &key.device) {
                        let device = key.device.clone();
                        tokio::spawn(async move { write_led(&h, &device, led_on).await });
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = until => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = server.await {
        println!("the agent stopped with an error: {e}");
    }
    for t in threads {
        let _ = t.join();
    }
    println!("stopped");
    Ok(())
}

/// On connect (the agent has started its streams): show what the device offers, then switch
/// its LED on from the platform.
async fn describe_and_light(devices: Devices, device: String) {
    let Some(h) = devices.get(USER, &device) else { return };
    match h.describe().await {
        Ok(api) => println!("{device:<12} resources {}", to_json(&api)),
        Err(e) => return println!("{device:<12} describe failed: {e}"),
    }
    write_led(&h, &device, true).await;
}

async fn write_led(h: &DeviceHandle, device: &str, on: bool) {
    match h.write(&["led"], on.into()).await {
        Ok(()) => println!("{device:<12} led      ← {on} (written from the platform)"),
        Err(e) => println!("{device:<12} led write failed: {e}"),
    }
}

fn fmt_addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".into(), |a| a.to_string())
}
