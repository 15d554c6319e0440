//! `twinlake demo`: the cloud, one edge agent linked to it over WebSocket/TLS, and a
//! simulated fleet on the agent, all on loopback with embedded defaults (a local-directory
//! lake, redb). Prints the URLs and curl lines to try.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use serde_json::json;
use twinlake_cloud::api::{NewDevice, register_device};
use twinlake_cloud::auth::{Scope, sha256_hex};
use twinlake_cloud::config::{GatewayEntry, TokenEntry};
use twinlake_cloud::{Cloud, CloudConfig};
use twinlake_edge::{EdgeAgent, EdgeConfig};
use twinlake_twin::{EventKind, TwinKey};

use crate::{fleet, sim};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The cloud API (HTTPS, WebSocket, and the gateway link).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api: SocketAddr,
    /// The edge agent's device listener (the Thinger port), where the fleet connects.
    #[arg(long, default_value = "127.0.0.1:25200")]
    pub tcp: SocketAddr,
    /// The edge agent's TLS device listener.
    #[arg(long, default_value = "127.0.0.1:25202")]
    pub tls: SocketAddr,
    /// The cloud's own device listener, for devices without a gateway.
    #[arg(long, default_value = "127.0.0.1:25300")]
    pub cloud_devices: SocketAddr,
    /// Prometheus metrics of the edge agent.
    #[arg(long, default_value = "127.0.0.1:9600")]
    pub metrics: SocketAddr,
    /// Prometheus metrics of the cloud.
    #[arg(long, default_value = "127.0.0.1:9601")]
    pub cloud_metrics: SocketAddr,
    /// Simulated devices.
    /// The Postgres wire (psql, Grafana, JDBC); 5433 so a local PostgreSQL keeps 5432.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pub postgres: SocketAddr,
    /// Arrow Flight SQL (ADBC, notebooks).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub flight: SocketAddr,
    /// The agent's embedded MQTT broker, where the simulated trucks publish.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: SocketAddr,
    /// The agent's LoRaWAN packet-forwarder port, where a simulated gateway sends.
    #[arg(long, default_value = "127.0.0.1:1700")]
    pub lorawan: SocketAddr,
    /// The agent's HTTP device API (ThingsBoard's paths).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub device_http: SocketAddr,
    /// The agent's CoAP port.
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub coap: SocketAddr,
    #[arg(long, default_value_t = 3)]
    pub devices: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Where everything is kept.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("twinlake-demo"))]
    pub dir: std::path::PathBuf,
}

const USER: &str = "demo";
const CREDENTIAL: &str = "twinlake";
/// The demo's API token. A real cloud makes a random one at first start.
const TOKEN: &str = "twinlake-demo-token";
const GATEWAY: &str = "demo-gw";
const GATEWAY_TOKEN: &str = "twinlake-demo-gateway-token";

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args))
}

fn self_signed(
    dir: &Path,
    name: &str,
    ip: std::net::IpAddr,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), ip.to_string()])?;
    let crt = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&crt, cert.cert.pem())?;
    // The private key: readable by its owner only.
    twinlake_edge::wal::write_file_atomic(&key, cert.signing_key.serialize_pem().as_bytes(), 0o600)?;
    Ok((crt, key))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let lake = dir.join("lake");
    std::fs::create_dir_all(&lake)?;
    let lake_url = format!("file://{}", lake.display());
    let (cloud_crt, cloud_key) = self_signed(&dir, "cloud", args.api.ip())?;
    let (dev_crt, dev_key) = self_signed(&dir, "device-listener", args.tls.ip())?;

    // The cloud: HTTPS API and link, its own device listener, twins in redb.
    let mut cc = CloudConfig {
        data_dir: dir.join("cloud"),
        ..CloudConfig::default()
    };
    cc.http.addr = args.api;
    cc.http.tls_cert = Some(cloud_crt.clone());
    cc.http.tls_key = Some(cloud_key);
    cc.metrics.addr = Some(args.cloud_metrics);
    cc.tokens = vec![TokenEntry {
        name: "demo".into(),
        sha256: sha256_hex(TOKEN),
        scopes: vec![Scope::Admin],
        user: None,
    }];
    // The demo's credential is printed for all to see: a low cost keeps its start quick.
    cc.registry.credential_iterations = 10_000;
    cc.gateways = vec![GatewayEntry {
        id: GATEWAY.into(),
        token_sha256: sha256_hex(GATEWAY_TOKEN),
        users: vec![USER.into()],
    }];
    cc.edge.listener.tcp = Some(args.cloud_devices);
    cc.lake.url = lake_url.clone();
    cc.sql.postgres_addr = Some(args.postgres);
    cc.sql.flight_addr = Some(args.flight);
    cc.edge.buffer.max_age = Duration::from_secs(10);
    // sensor-2's temperature spikes now and then: an alarm each time (GET
    // /v1/users/demo/alarms, `SELECT * FROM alarms`, the console's Alarms page).
    cc.rules.fixed = serde_json::from_value(serde_json::json!([{
        "id": "sensor-2-hot", "owner": USER, "severity": "major",
        "description": "sensor-2's temperature over 30 °C (its fault: every 30th reading)",
        "when": {"type": "threshold", "table": "temp", "field": "value", "devices": {"devices": ["sensor-2"]},
                 "raise": {"op": ">", "value": 30.0}, "clear": {"op": "<", "value": 28.0}}
    }]))?;
    let cloud = Cloud::start(cc).await?;
    let state = cloud.state();
    let api = cloud.http_addr().unwrap_or(args.api);
    let cloud_metrics = cloud.metrics_addr();
    let (pg, flight) = (
        cloud.postgres_addr().unwrap_or(args.postgres),
        cloud.flight_addr().unwrap_or(args.flight),
    );
    let (stop_cloud_tx, stop_cloud_rx) = tokio::sync::oneshot::channel::<()>();
    let cloud_task = tokio::spawn(cloud.run(async move {
        let _ = stop_cloud_rx.await;
    }));

    // The registry: the fleet and a slot for your own device behind the gateway, and one
    // device that connects straight to the cloud.
    let names: Vec<String> = (1..=args.devices.max(1))
        .map(|i| format!("sensor-{i}"))
        .chain(["my-device".to_string()])
        .collect();
    let st = state.clone();
    let fleet = names.clone();
    tokio::task::spawn_blocking(move || {
        for (device, gateway) in fleet
            .into_iter()
            .map(|d| (d, Some(GATEWAY.to_string())))
            .chain([("direct-device".to_string(), None)])
        {
            let req = NewDevice {
                device,
                gateway,
                credential: Some(CREDENTIAL.into()),
                tags: json!({"site": "demo-lab"}).as_object().cloned().unwrap_or_default(),
                ..NewDevice::default()
            };
            // Already there from an earlier run: fine.
            let _ = register_device(&st, USER, req);
        }
    })
    .await?;

    // The edge agent, linked to the cloud over wss:// with the gateway token. Its registry
    // comes from the cloud.
    let mut ec = EdgeConfig {
        gateway: GATEWAY.into(),
        data_dir: dir.join("edge"),
        ..EdgeConfig::default()
    };
    ec.listener.tcp = Some(args.tcp);
    ec.listener.tls = Some(args.tls);
    ec.listener.tls_cert = Some(dev_crt.clone());
    ec.listener.tls_key = Some(dev_key);
    ec.metrics.addr = Some(args.metrics);
    ec.streams.default_interval = Duration::from_secs(1);
    ec.buffer.max_age = Duration::from_secs(10);
    ec.upload.url = lake_url;
    ec.link.url = format!("wss://{api}/v1/gateway/link");
    ec.link.token = GATEWAY_TOKEN.into();
    ec.link.ca_file = Some(cloud_crt.clone());
    // Trucks over MQTT (the embedded broker) and LoRaWAN sensors, unregistered devices of the
    // demo user the gateway is bound to.
    ec.mqtt.embedded = Some(twinlake_edge::config::EmbeddedBroker {
        listen: args.mqtt,
        users: [(
            fleet::TRUCK_USER.to_owned(),
            twinlake_edge::config::Hidden(fleet::TRUCK_PASSWORD.into()),
        )]
        .into(),
        ..Default::default()
    });
    ec.mqtt.user = USER.into();
    ec.mqtt.subscriptions = vec![fleet::truck_subscription()?];
    ec.lorawan.udp = Some(args.lorawan);
    ec.lorawan.user = USER.into();
    ec.lorawan.devices = fleet::lora_devices()?;
    // Registered devices may also POST over HTTP or CoAP.
    ec.device_http.addr = Some(args.device_http);
    ec.coap.udp = Some(args.coap);
    let agent = EdgeAgent::start(ec).await?;
    let (mqtt, lora) = (agent.mqtt_broker_addrs().map(|a| a.0), agent.lorawan_addr());
    let (device_http, coap) = (agent.device_http_addr(), agent.coap_addr());
    let (tcp, tls, metrics) = (agent.tcp_addr(), agent.tls_addr(), agent.metrics_addr());
    let registry = agent.registry();
    let (stop_edge_tx, stop_edge_rx) = tokio::sync::oneshot::channel::<()>();
    let edge_task = tokio::spawn(agent.run(async move {
        let _ = stop_edge_rx.await;
    }));

    let base = format!("https://{api}");
    let curl = format!(
        "curl -s --cacert {} -H 'Authorization: Bearer {TOKEN}'",
        cloud_crt.display()
    );
    println!("Twinlake demo");
    println!("  cloud API          {base}   (token {TOKEN}, OpenAPI at {base}/v1/openapi.json)");
    println!("  web console        {base}/   (sign in with the token {TOKEN})");
    println!("  gateway link       wss://{api}/v1/gateway/link  ← edge agent {GATEWAY}");
    println!(
        "  device listeners   edge tcp://{}  tls://{}   cloud (no gateway) tcp://{}",
        fmt_addr(tcp),
        fmt_addr(tls),
        args.cloud_devices
    );
    println!(
        "  credentials        user {USER:?}, devices sensor-1..sensor-{} and my-device (edge), direct-device (cloud), credential {CREDENTIAL:?}",
        args.devices
    );
    println!(
        "  other devices      trucks truck-1..3 over MQTT mqtt://{} (user {}), LoRaWAN field-1, field-2 through a packet forwarder on udp://{}",
        fmt_addr(mqtt),
        fleet::TRUCK_USER,
        fmt_addr(lora)
    );
    println!(
        "  HTTP and CoAP      curl -d '{{\"temperature\":21.5}}' http://{}/api/v1/{USER}:my-device:{CREDENTIAL}/telemetry",
        fmt_addr(device_http)
    );
    println!(
        "                     coap-client-notls -m post -t json -e '{{\"temperature\":21.5}}' coap://{}/api/v1/{USER}:my-device:{CREDENTIAL}/telemetry",
        fmt_addr(coap)
    );
    println!(
        "  your own device    cargo run -p twinlake-sdk --example sensor -- {} {USER} my-device {CREDENTIAL}",
        fmt_addr(tcp)
    );
    println!(
        "  metrics            http://{}/metrics (edge)  http://{}/metrics (cloud)",
        fmt_addr(metrics),
        fmt_addr(cloud_metrics)
    );
    println!("  Parquet lake       {} (sealed every 10 s)", lake.display());
    println!(
        "  SQL                psql \"host={} port={} dbname=twinlake user={USER} password={TOKEN} sslmode=require\"",
        pg.ip(),
        pg.port()
    );
    println!(
        "                     Flight SQL grpc+tls://{flight} (ADBC: adbc.flight.sql.authorization_header = \"Bearer {TOKEN}\")"
    );
    println!(
        "  Grafana            PostgreSQL data source: Host {pg}, Database twinlake, User {USER}, Password {TOKEN},"
    );
    println!("                     TLS/SSL Mode require, Version 15, TimescaleDB off; a panel:");
    println!(
        "                     SELECT $__timeGroupAlias(time, '10s'), device AS metric, avg(value) AS temp FROM temp WHERE $__timeFilter(time) GROUP BY 1, 2 ORDER BY 1"
    );
    println!("                     provisioning and dashboards: dashboards/grafana (dashboards/README.md)");
    println!(
        "  notebooks          TWINLAKE_DIR={} TWINLAKE_API={base} TWINLAKE_FLIGHT=grpc+tls://{flight} .venv/bin/python notebooks/run.py --out /tmp/notebooks notebooks/*.ipynb",
        dir.display()
    );
    println!();
    println!("Try:");
    println!("  {curl} {base}/v1/users/{USER}/devices/sensor-1/twin");
    println!(
        "  {curl} -X PATCH {base}/v1/users/{USER}/devices/sensor-1/twin -d '{{\"desired\":{{\"led\":true}}}}'   # the LED follows"
    );
    println!("  {curl} -X POST {base}/v3/users/{USER}/devices/sensor-1/resources/led -d false   # live write");
    println!("  {curl} {base}/v3/users/{USER}/devices/sensor-1/resources/temp   # live read");
    println!(
        "  {curl} -X POST {base}/v2/users/{USER}/devices/sensor-1/in_out -d '{{\"in\":{{\"value1\":2,\"value2\":3}}}}'"
    );
    println!("  {curl} -N {base}/v1/events   # every twin change, as Server-Sent Events");
    println!(
        "  {curl} {base}/v1/sql -d \"SELECT device, count(*), round(avg(value), 2) AS avg FROM temp WHERE time > now() - interval '1 minute' GROUP BY device\""
    );
    println!(
        "  {curl} {base}/v1/sql -d \"SELECT t.device, t.in_sync, last(h.value, h.time) AS temp FROM twins t JOIN temp h ON h.device = t.device GROUP BY 1, 2\""
    );
    println!(
        "  duckdb -c \"SELECT device, count(*), avg(value) FROM read_parquet('{}/temp/**/*.parquet', hive_partitioning = true) GROUP BY device\"",
        lake.display()
    );
    println!("  Ctrl-C stops.\n");

    // The fleet logs in once the gateway has its registry from the cloud.
    let wait = tokio::time::Instant::now() + Duration::from_secs(10);
    while registry.is_empty() && tokio::time::Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    if let Some(broker) = mqtt {
        tokio::spawn(fleet::trucks(broker, stop.clone()));
    }
    if let Some(udp) = lora {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = fleet::lora_gateway(udp, stop).await {
                println!("the simulated LoRaWAN gateway stopped: {e}");
            }
        });
    }

    let deadline = args
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let period = Duration::from_secs(10);
    let mut toggle = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(3), period);
    let mut led_on = true;
    let mut feed = state.twins.subscribe();
    loop {
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = feed.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        println!("(skipped {n} events)");
                        continue;
                    }
                    Err(_) => break,
                };
                let device = &ev.key.device;
                match ev.kind {
                    EventKind::Reported => {
                        if let Some((path, value)) = &ev.reported {
                            println!("{device:<14} reported {path:<7} {value}   (twin v{})", ev.version);
                        }
                    }
                    EventKind::Connection => match ev.online {
                        Some(true) => println!("{device:<14} online"),
                        Some(false) => println!("{device:<14} offline"),
                        None => {}
                    },
                    EventKind::Desired => println!("{device:<14} desired  {}", ev.json),
                    _ => {}
                }
            }
            _ = toggle.tick() => {
                // Desired state from the platform: the applier writes it to the device.
                let key = TwinKey::new(USER, "sensor-1");
                let patch = json!({"led": led_on}).as_object().cloned().unwrap_or_default();
                let twins = state.twins.clone();
                let r = tokio::task::spawn_blocking(move || twins.write(|t| t.patch_desired(&key, &patch, None))).await;
                if let Ok(Err(e)) = r {
                    println!("cannot set the desired LED: {e}");
                }
                led_on = !led_on;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = until => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = stop_edge_tx.send(());
    if let Ok(Err(e)) = edge_task.await {
        println!("the edge agent stopped with an error: {e}");
    }
    let _ = stop_cloud_tx.send(());
    if let Ok(Err(e)) = cloud_task.await {
        println!("the cloud stopped with an error: {e}");
    }
    for t in threads {
        let _ = t.join();
    }
    println!("stopped");
    Ok(())
}

fn fmt_addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "-".into(), |a| a.to_string())
}
