//! The whole agent: listener → ingest (WAL, buffer, seals) → uploader, plus metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twinlake_sdk::frame::FrameLimits;
use twinlake_sdk::pson::Value;

use crate::Error;
use crate::config::{EdgeConfig, LinkSection, StreamsSection};
use crate::endpoints::EndpointQueue;
use crate::ingest::Ingest;
use crate::link::{Connector, LinkClient, Uplink, WsConnector};
use crate::listener::{DeviceEvent, DeviceKey, DeviceListener, Devices, ListenerConfig, tls_acceptor};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, writer_properties};
use crate::own_streams::OwnStreams;
use crate::rate_limit::RateLimiter;
use crate::registry::{CredentialHash, DeviceRegistry};
use crate::sources::Southbound;
use crate::sources::coap::CoapSource;
use crate::sources::gate::{Parts as GateParts, Phase as GatePhase};
use crate::sources::http::HttpSource;
use crate::sources::lorawan::LoraSource;
use crate::sources::mqtt::broker::Embedded;
use crate::sources::mqtt::{MqttSource, Phase as MqttPhase};
use crate::upload::{Stop, Uploader, open_store};

/// A started agent: sockets bound, WAL replayed. [`EdgeAgent::run`] serves.
pub struct EdgeAgent {
    listener: DeviceListener,
    events: mpsc::Receiver<DeviceEvent>,
    ingest: Ingest,
    sealed: watch::Receiver<u64>,
    uploader: Uploader,
    metrics: Arc<Metrics>,
    metrics_listener: Option<(tokio::net::TcpListener, crate::http::HttpLimits)>,
    metrics_token: Option<String>,
    streams: StreamsSection,
    endpoints: EndpointQueue,
    upload_deadline: Duration,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    gateway: String,
    data_dir: std::path::PathBuf,
    registry: Arc<DeviceRegistry>,
    uplink: Uplink,
    own_streams: Arc<OwnStreams>,
    link: Option<Arc<dyn Connector>>,
    link_cfg: LinkSection,
    mqtt: Option<MqttSource>,
    mqtt_broker: Option<Embedded>,
    lora: Option<LoraSource>,
    device_http: Option<HttpSource>,
    coap: Option<CoapSource>,
    southbound: Arc<Southbound>,
}

impl std::fmt::Debug for EdgeAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeAgent")
            .field("tcp", &self.tcp_addr())
            .field("tls", &self.tls_addr())
            .field("metrics", &self.metrics_addr())
            .finish_non_exhaustive()
    }
}

/// A PSON value from a TOML one (for configured properties).
fn toml_to_pson(v: &toml::Value) -> Value {
    match serde_json::to_value(v) {
        Ok(j) => twinlake_sdk::json::from_json(&j),
        Err(_) => Value::Str(v.to_string()),
    }
}

impl EdgeAgent {
    /// Recovers the data directory, opens the store and binds every socket.
    pub async fn start(config: EdgeConfig) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::new());
        std::fs::create_dir_all(&config.data_dir)?;
        let registry = Arc::new(DeviceRegistry::new());
        for d in &config.devices {
            let hash = CredentialHash::parse(&d.credential_hash)
                .map_err(|e| Error::Config(format!("device {}/{}: {e}", d.user, d.device)))?;
            registry.insert(&d.user, &d.device, hash);
        }
        let limiter = Arc::new(RateLimiter::from_config(&config.auth));
        let l = &config.listener;
        let tls = match (l.tls, &l.tls_cert, &l.tls_key) {
            (Some(addr), Some(cert), Some(key)) => {
                let read = crate::error::read_file;
                Some((addr, tls_acceptor(&read(cert)?, &read(key)?)?))
            }
            _ => None,
        };
        let listener_config = ListenerConfig {
            tcp: l.tcp,
            tls,
            idle_timeout: l.idle_timeout,
            request_timeout: l.request_timeout,
            login_timeout: l.login_timeout,
            write_timeout: l.write_timeout,
            conns: crate::conn_limit::ConnLimiter::new(l.max_connections, l.max_connections_per_ip),
            limits: FrameLimits {
                max_body: l.max_frame_bytes,
                ..FrameLimits::DEFAULT
            },
            auth_limiter: Some(limiter.clone()),
            metrics: metrics.clone(),
            ..ListenerConfig::default()
        };
        let (listener, events) = DeviceListener::bind(listener_config, registry.clone()).await?;
        let devices = listener.devices();
        for d in &config.devices {
            for (name, v) in &d.properties {
                devices.set_property(&d.user, &d.device, name, toml_to_pson(v));
            }
        }

        let outbox = Outbox::new(&config.data_dir, &config.gateway, writer_properties(&config.parquet)?)?;
        let endpoints = EndpointQueue::new(10_000, metrics.clone());
        let (mut ingest, sealed) = Ingest::open(
            &config.gateway,
            config.data_dir.clone(),
            outbox.clone(),
            config.wal.clone(),
            config.buffer.clone(),
            metrics.clone(),
            endpoints.clone(),
        )?;
        ingest.retention = Arc::new(crate::retention::Retention::open(
            config.retention.clone(),
            (!config.link.url.is_empty()).then(|| config.data_dir.join("retention.json")),
        ));
        let (store, prefix) = open_store(&config.upload, &config.data_dir)?;
        let uplink = Uplink::new(
            config.link.max_waiting_files,
            config.link.max_waiting_rows,
            metrics.clone(),
        );
        let link: Option<Arc<dyn Connector>> = if config.link.url.is_empty() {
            None
        } else {
            Some(Arc::new(WsConnector::from_config(&config.link)?))
        };
        let uploader = Uploader {
            outbox,
            store: store.clone(),
            prefix: prefix.clone(),
            cfg: config.upload.clone(),
            metrics: metrics.clone(),
            announce: None,
        };
        let southbound = Arc::new(Southbound::default());
        let mqtt_broker = match &config.mqtt.embedded {
            Some(b) => Some(crate::sources::mqtt::broker::start(b, config.mqtt.max_inflight).await?),
            None => None,
        };
        let mqtt = if config.mqtt.url.is_empty() && mqtt_broker.is_none() {
            None
        } else {
            Some(
                MqttSource::new(
                    &config.mqtt,
                    mqtt_broker.as_ref(),
                    &config.gateway,
                    listener.events(),
                    metrics.clone(),
                    southbound.clone(),
                )
                .await?,
            )
        };
        let lora = match config.lorawan.udp {
            Some(addr) => Some(
                LoraSource::bind(
                    &config.lorawan,
                    addr,
                    &config.data_dir,
                    listener.events(),
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let gate_parts = || GateParts {
            registry: registry.clone(),
            limiter: limiter.clone(),
            events: listener.events(),
            metrics: metrics.clone(),
            southbound: southbound.clone(),
        };
        let device_http = match config.device_http.addr {
            Some(_) => Some(HttpSource::bind(&config.device_http, gate_parts()).await?),
            None => None,
        };
        let coap = match config.coap.udp {
            Some(_) => Some(CoapSource::bind(&config.coap, gate_parts()).await?),
            None => None,
        };
        let metrics_listener = match config.metrics.addr {
            Some(addr) => Some((crate::metrics::bind(addr).await?, config.metrics.limits())),
            None => None,
        };
        Ok(Self {
            listener,
            events,
            ingest,
            sealed,
            uploader,
            metrics,
            metrics_listener,
            metrics_token: config.metrics.token_sha256.clone(),
            streams: config.streams.clone(),
            endpoints,
            upload_deadline: config.shutdown.upload_deadline,
            store,
            prefix,
            gateway: config.gateway.clone(),
            data_dir: config.data_dir.clone(),
            registry,
            uplink,
            own_streams: Arc::default(),
            link,
            link_cfg: config.link.clone(),
            mqtt,
            mqtt_broker,
            lora,
            device_http,
            coap,
            southbound,
        })
    }

    /// Links the agent to a cloud through `connector` instead of `link.url` (a cloud that
    /// runs the agent in its own process).
    pub fn set_link(&mut self, connector: Arc<dyn Connector>) {
        self.link = Some(connector);
    }

    /// The device registry (configured devices plus what the cloud synced).
    pub fn registry(&self) -> Arc<DeviceRegistry> {
        self.registry.clone()
    }

    /// The bound TCP device address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listener.tcp_addr()
    }

    /// The bound TLS device address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listener.tls_addr()
    }

    /// The devices of the MQTT source and how to reach them (resource writes).
    pub fn southbound(&self) -> Arc<Southbound> {
        self.southbound.clone()
    }

    /// Where devices reach the embedded MQTT broker: MQTT 3.1.1, and MQTT 5 if asked for.
    pub fn mqtt_broker_addrs(&self) -> Option<(SocketAddr, Option<SocketAddr>)> {
        self.mqtt_broker.as_ref().map(|b| (b.listen, b.listen_v5))
    }

    /// The bound LoRaWAN (packet forwarder) UDP address.
    pub fn lorawan_addr(&self) -> Option<SocketAddr> {
        self.lora.as_ref().and_then(LoraSource::local_addr)
    }

    /// The address the HTTP device API serves on, if it is on.
    pub fn device_http_addr(&self) -> Option<SocketAddr> {
        self.device_http.as_ref().and_then(HttpSource::local_addr)
    }

    /// The CoAP source's UDP address, if it is on.
    pub fn coap_addr(&self) -> Option<SocketAddr> {
        self.coap.as_ref().and_then(CoapSource::local_addr)
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The connected devices.
    pub fn devices(&self) -> Devices {
        self.listener.devices()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Endpoint calls waiting for the cloud.
    pub fn endpoint_calls(&self) -> EndpointQueue {
        self.endpoints.clone()
    }

    /// Every device event as it arrives: connects, disconnects, stream values, bucket
    /// writes. A receiver that falls behind loses the oldest (`Lagged`); ingest never waits.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<DeviceEvent> {
        self.ingest.tap.subscribe()
    }

    /// The object store and the lake's prefix in it.
    pub fn store(&self) -> (Arc<dyn ObjectStore>, ObjectPath) {
        (self.store.clone(), self.prefix.clone())
    }

    /// Serves until `shutdown` completes. Then: stop accepting and close connections,
    /// sync the WAL and seal the buffer, and upload for up to `shutdown.upload_deadline`.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let (stop_ingest, stop_ingest_rx) = watch::channel(false);
        let (stop_link, stop_link_rx) = watch::channel(false);
        let streams = Arc::new(self.streams);
        let uplink = self.link.is_some().then(|| self.uplink.clone());
        if self.registry.is_empty() && self.link.is_none() {
            warn!("no devices are registered and there is no cloud link: every login will be refused");
        }
        let link_task = self.link.take().map(|connector| {
            self.uploader.announce = Some((self.gateway.clone(), self.uplink.clone()));
            if self.uplink.sends_rows() {
                self.ingest.fresh = Some(self.uplink.clone());
            }
            self.ingest.link = Some(self.uplink.clone());
            let rules = Arc::new(crate::rules::EdgeRules::open(self.data_dir.join("rules.json")));
            self.ingest.rules = Some(rules.clone());
            let client = LinkClient {
                gateway: self.gateway.clone(),
                connector,
                cfg: self.link_cfg.clone(),
                uplink: self.uplink.clone(),
                endpoints: self.endpoints.clone(),
                devices: self.listener.devices(),
                registry: self.registry.clone(),
                registry_file: self.data_dir.join("registry.json"),
                own_streams: self.own_streams.clone(),
                metrics: self.metrics.clone(),
                southbound: self.southbound.clone(),
                rules,
                retention: self.ingest.retention.clone(),
            };
            client.load_registry();
            tokio::spawn(client.run(stop_link_rx))
        });
        let (stop_upload, stop_upload_rx) = watch::channel(Stop::Running);
        let (stop_metrics, stop_metrics_rx) = watch::channel(false);

        let devices = self.listener.devices();
        let own_streams = self.own_streams.clone();
        let on_connect = move |key: &DeviceKey| {
            tokio::spawn(start_streams(
                devices.clone(),
                key.clone(),
                streams.clone(),
                own_streams.clone(),
                uplink.clone(),
            ));
        };
        let ingest = tokio::spawn(self.ingest.run(self.events, on_connect, stop_ingest_rx));
        let uploader = tokio::spawn(self.uploader.run(self.sealed, stop_upload_rx));
        let metrics_task = self.metrics_listener.map(|(l, limits)| {
            let m = self.metrics.clone();
            tokio::spawn(crate::metrics::serve(
                l,
                m,
                limits,
                self.metrics_token.clone(),
                stop_metrics_rx,
            ))
        });

        let (mqtt_phase, mqtt_phase_rx) = watch::channel(MqttPhase::Running);
        let mqtt_task = self.mqtt.take().map(|m| tokio::spawn(m.run(mqtt_phase_rx)));
        let (stop_lora, stop_lora_rx) = watch::channel(false);
        let lora_task = self.lora.take().map(|l| tokio::spawn(l.run(stop_lora_rx)));
        let (gate_phase, gate_phase_rx) = watch::channel(GatePhase::Running);
        let http_task = self
            .device_http
            .take()
            .map(|h| tokio::spawn(h.run(gate_phase_rx.clone())));
        let coap_task = self.coap.take().map(|c| tokio::spawn(c.run(gate_phase_rx)));

        self.listener.run(shutdown).await;
        // The other sources stop taking messages; what ingest took it confirms below.
        let _ = mqtt_phase.send(MqttPhase::Draining);
        let _ = stop_lora.send(true);
        let _ = gate_phase.send(GatePhase::Draining);
        if let Some(t) = lora_task {
            let _ = t.await;
        }
        info!("device connections closed; flushing the buffer");
        let _ = stop_ingest.send(true);
        let ingested = ingest
            .await
            .unwrap_or_else(|e| Err(Error::Corrupt(format!("the ingest task failed: {e}"))));
        let _ = mqtt_phase.send(MqttPhase::Done);
        let _ = gate_phase.send(GatePhase::Done);
        for t in [http_task, coap_task].into_iter().flatten() {
            let _ = t.await;
        }
        if let Some(t) = mqtt_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = stop_upload.send(Stop::DrainUntil(tokio::time::Instant::now() + self.upload_deadline));
        let _ = uploader.await;
        if let Some(t) = link_task {
            // A moment for the last file commits to reach the cloud.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.metrics.link_connected.get() > 0
                && (!self.uplink.is_empty() || self.metrics.link_unacked_frames.get() > 0)
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop_link.send(true);
            let _ = t.await;
        }
        let _ = stop_metrics.send(true);
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        info!("stopped");
        ingested
    }
}

/// After a device connects: describe it, then stream its outputs at their intervals and
/// its inputs on change.
async fn start_streams(
    devices: Devices,
    key: DeviceKey,
    cfg: Arc<StreamsSection>,
    own_streams: Arc<OwnStreams>,
    uplink: Option<Uplink>,
) {
    let Some(handle) = devices.get(&key.user, &key.device) else {
        return;
    };
    let api = match handle.describe().await {
        Ok(api) => api,
        Err(e) => {
            warn!(device = %key, error = %e, "cannot describe the device; no streams started");
            return;
        }
    };
    if let Some(u) = &uplink {
        u.described(&key, twinlake_sdk::json::to_json(&api));
    }
    let mut resources = Vec::new();
    walk_api(&api, &mut Vec::new(), &mut resources);
    let own: Vec<(Vec<String>, String, Option<Duration>)> = resources
        .into_iter()
        .filter_map(|(path, io)| {
            let joined = path.join("/");
            let interval = cfg.own_stream(&joined, io)?;
            Some((path, joined, interval))
        })
        .collect();
    own_streams.set(&key, own.iter().map(|(_, j, i)| (j.as_str(), *i)));
    for (path, joined, interval) in own {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        match handle.start_stream(&p, interval).await {
            Ok(()) => debug!(device = %key, resource = %joined, ?interval, "stream started"),
            Err(e) => warn!(device = %key, resource = %joined, error = %e, "cannot start a stream"),
        }
    }
}

/// The resources of an `api` description with their `fn` codes, depth first.
fn walk_api(api: &Value, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, i64)>) {
    let Some(entries) = api.as_object() else { return };
    for (name, entry) in entries {
        prefix.push(name.clone());
        if let Some(f) = entry.get("fn").and_then(Value::as_i64) {
            out.push((prefix.clone(), f));
        }
        if let Some(children) = entry.get("/") {
            walk_api(children, prefix, out);
        }
        prefix.pop();
    }
}
