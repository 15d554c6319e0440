//! `twinlake demo`: the device listener on TCP and TLS, a simulated fleet, live streams and
//! control, all on embedded defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use twinlake_edge::listener::{DeviceEventKind, DeviceHandle, DeviceListener, Devices, ListenerConfig, tls_acceptor};
use twinlake_edge::registry::DeviceRegistry;
use twinlake_sdk::json::to_json;
use twinlake_sdk::pson::Value;

use crate::sim;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address for the plain TCP device listener (the Thinger port).
    #[arg(long, default_value = "127.0.0.1:25200")]
    pub tcp: SocketAddr,
    /// Address for the TLS device listener.
    #[arg(long, default_value = "127.0.0.1:25202")]
    pub tls: SocketAddr,
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
    std::fs::write(&ca_path, cert.cert.pem())?;
    let acceptor = tls_acceptor(cert.cert.pem().as_bytes(), cert.signing_key.serialize_pem().as_bytes())?;

    let mut registry = DeviceRegistry::new();
    for i in 1..=args.devices.max(1) {
        registry = registry.with(USER, &format!("sensor-{i}"), CREDENTIAL);
    }
    // A slot for a real device: the stock Thinger client or our SDK example.
    registry = registry.with(USER, "my-device", CREDENTIAL);
    let config = ListenerConfig {
        tcp: Some(args.tcp),
        tls: Some((args.tls, acceptor)),
        ..ListenerConfig::default()
    };
    let (listener, mut events) = DeviceListener::bind(config, Arc::new(registry)).await?;
    let devices = listener.devices();
    let (tcp, tls) = (listener.tcp_addr(), listener.tls_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.run(async move {
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
            Some(ev) = events.recv() => {
                let device = ev.device.device.clone();
                match ev.kind {
                    DeviceEventKind::Connected { peer, tls } => {
                        println!("{device:<12} connected from {peer}{}", if tls { " over TLS" } else { "" });
                        tokio::spawn(subscribe(devices.clone(), device));
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
    let _ = server.await;
    for t in threads {
        let _ = t.join();
    }
    println!("stopped");
    Ok(())
}

/// On connect: describe the device, stream every output each second and every input on
/// change, then switch its LED on from the platform.
async fn subscribe(devices: Devices, device: String) {
    let Some(h) = devices.get(USER, &device) else { return };
    let api = match h.describe().await {
        Ok(api) => api,
        Err(e) => return println!("{device:<12} describe failed: {e}"),
    };
    println!("{device:<12} resources {}", to_json(&api));
    let Some(resources) = api.as_object() else { return };
    for (name, entry) in resources {
        let result = match entry.get("fn").and_then(Value::as_i64) {
            Some(3) => h.start_stream(&[name], Some(Duration::from_secs(1))).await,
            Some(2) => h.start_stream(&[name], None).await,
            _ => Ok(()),
        };
        if let Err(e) = result {
            println!("{device:<12} cannot stream {name}: {e}");
        }
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
