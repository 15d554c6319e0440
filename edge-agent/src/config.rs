//! The agent's configuration file (`twinlake edge --config edge.toml`).
//!
//! Every section and every key has a default, so an empty file is a valid configuration
//! for a development box; `deploy/edge-agent.example.toml` shows them all. Durations are
//! written like `"250ms"`, `"10s"` or `"7days"`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
pub use crate::rate_limit::AuthSection;
pub use crate::sources::coap::config::CoapSection;
pub use crate::sources::http::config::DeviceHttpSection;
pub use crate::sources::lorawan::config::{CodecKind, LoraDevice, LoraProfile, LorawanSection};
pub use crate::sources::mqtt::config::{EmbeddedBroker, MqttSection, MqttSubscription};
pub use crate::values::{Hidden, addr_or_off};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// This gateway's id: a column of every row and part of every file name.
    pub gateway: String,
    /// Where the WAL, the outbox of sealed Parquet files and the schemas live.
    pub data_dir: PathBuf,
    pub listener: ListenerSection,
    pub auth: AuthSection,
    /// Devices configured here. With a cloud link, the cloud's registry is added to these.
    pub devices: Vec<DeviceEntry>,
    pub streams: StreamsSection,
    pub wal: WalSection,
    pub buffer: BufferSection,
    pub parquet: ParquetSection,
    pub upload: UploadSection,
    pub metrics: MetricsSection,
    pub shutdown: ShutdownSection,
    pub link: LinkSection,
    /// An MQTT broker to subscribe to (off unless `mqtt.url` is set).
    pub mqtt: MqttSection,
    /// LoRaWAN gateways' Semtech UDP packet forwarders (off unless `lorawan.udp` is set).
    pub lorawan: LorawanSection,
    /// The HTTP device API (off unless `device_http.addr` is set).
    pub device_http: DeviceHttpSection,
    /// CoAP devices (off unless `coap.udp` is set).
    pub coap: CoapSection,
    /// How long the lake keeps each table: rows already past it are refused where they
    /// enter. A cloud link replaces it with the cloud's `[sql.retention]`.
    pub retention: crate::retention::RetentionConfig,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            gateway: "gateway".into(),
            data_dir: PathBuf::from("twinlake-edge-data"),
            listener: ListenerSection::default(),
            auth: AuthSection::default(),
            devices: Vec::new(),
            streams: StreamsSection::default(),
            wal: WalSection::default(),
            buffer: BufferSection::default(),
            parquet: ParquetSection::default(),
            upload: UploadSection::default(),
            metrics: MetricsSection::default(),
            shutdown: ShutdownSection::default(),
            link: LinkSection::default(),
            mqtt: MqttSection::default(),
            lorawan: LorawanSection::default(),
            device_http: DeviceHttpSection::default(),
            coap: CoapSection::default(),
            retention: Default::default(),
        }
    }
}

impl EdgeConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if !twinlake_lake::path::is_gateway_name(&self.gateway) {
            return bad(format!(
                "gateway {:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '_' or '.', and not 'compacted' (it is part of file names)",
                self.gateway
            ));
        }
        if self.listener.tls.is_some() && (self.listener.tls_cert.is_none() || self.listener.tls_key.is_none()) {
            return bad("listener.tls needs listener.tls_cert and listener.tls_key".into());
        }
        if self.listener.max_frame_bytes < 64 {
            return bad("listener.max_frame_bytes must be at least 64".into());
        }
        // The WAL reads back no larger payload, so no bucket write could use such a frame;
        // and within it, a bucket write's payload is checked once, as the frame is read.
        let wal_max = twinlake_sdk::pson::Limits::DEFAULT.max_size;
        if self.listener.max_frame_bytes > wal_max {
            return bad(format!(
                "listener.max_frame_bytes must be at most {wal_max} (the largest payload the WAL reads back)"
            ));
        }
        if self.parquet.row_group_rows == 0 {
            return bad("parquet.row_group_rows must be at least 1".into());
        }
        if !(1..=22).contains(&self.parquet.zstd_level) {
            return bad(format!(
                "parquet.zstd_level {} is outside 1..=22",
                self.parquet.zstd_level
            ));
        }
        if !self.link.url.is_empty() {
            let url = url::Url::parse(&self.link.url)
                .map_err(|e| Error::Config(format!("link.url {:?}: {e}", self.link.url)))?;
            if !matches!(url.scheme(), "ws" | "wss") {
                return bad(format!("link.url {:?}: use ws:// or wss://", self.link.url));
            }
            if self.link.token.is_empty() {
                return bad("link.url needs link.token (the gateway token the cloud issued)".into());
            }
        }
        if self.link.max_unacked == 0 {
            return bad("link.max_unacked must be at least 1".into());
        }
        self.mqtt.validate()?;
        self.lorawan.validate()?;
        self.device_http.validate()?;
        self.coap.validate()?;
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            crate::registry::CredentialHash::parse(&d.credential_hash)
                .map_err(|e| Error::Config(format!("device {}/{}: {e}", d.user, d.device)))?;
            if !seen.insert((&d.user, &d.device)) {
                return bad(format!("device {}/{} is listed twice", d.user, d.device));
            }
        }
        Ok(())
    }
}

/// `[listener]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSection {
    /// Plain TCP; the protocol's port is 25200. `"off"` turns it off.
    #[serde(with = "addr_or_off")]
    pub tcp: Option<SocketAddr>,
    /// TLS (the protocol's port is 25202), with `tls_cert` and `tls_key` (PEM files).
    /// Off unless set.
    #[serde(with = "addr_or_off")]
    pub tls: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest frame a device may send; a bigger one closes its connection.
    pub max_frame_bytes: usize,
    /// A connection that has not logged in after this long is closed.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// A device that takes longer than this to take one write is disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open connections, in all (TCP and TLS together)...
    pub max_connections: usize,
    /// ...and from one address (a fleet behind NAT shares one).
    pub max_connections_per_ip: usize,
}

impl Default for ListenerSection {
    fn default() -> Self {
        Self {
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 25200))),
            tls: None,
            tls_cert: None,
            tls_key: None,
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            max_frame_bytes: 64 * 1024,
            login_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
        }
    }
}

/// `[[devices]]`: one registered device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    pub user: String,
    pub device: String,
    /// From `twinlake hash-credential`: `pbkdf2-sha256$<iterations>$<salt>$<hash>`.
    pub credential_hash: String,
    /// Properties the device reads with GET_PROPERTY.
    #[serde(default)]
    pub properties: BTreeMap<String, toml::Value>,
}

/// `[streams]`: what the agent streams from each device after it connects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Output resources are sampled at this interval...
    #[serde(with = "humantime_serde")]
    pub default_interval: Duration,
    /// ...or at the interval given here for the resource path (`"cfg/level" = "1s"`).
    /// `"0s"` turns a resource off.
    #[serde(with = "humantime_map")]
    pub intervals: BTreeMap<String, Duration>,
    /// Whether inputs are streamed on change (event streams).
    pub inputs: bool,
}

impl StreamsSection {
    /// The stream the agent keeps on a resource of kind `io` (the `api` `fn` code):
    /// `Some(Some(interval))` sampled (outputs), `Some(None)` on change (inputs), `None` none.
    pub fn own_stream(&self, path: &str, io: i64) -> Option<Option<Duration>> {
        match io {
            3 => {
                let iv = self.intervals.get(path).copied().unwrap_or(self.default_interval);
                (!iv.is_zero()).then_some(Some(iv))
            }
            2 if self.inputs && self.intervals.get(path).is_none_or(|iv| !iv.is_zero()) => Some(None),
            _ => None,
        }
    }
}

impl Default for StreamsSection {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(10),
            intervals: BTreeMap::new(),
            inputs: true,
        }
    }
}

/// `[wal]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalSection {
    /// Group commit: rows that arrive within this window share one fsync. `"0s"` syncs
    /// after every batch the agent takes off its queue.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// A segment file is closed at this size.
    pub segment_bytes: u64,
}

impl Default for WalSection {
    fn default() -> Self {
        Self {
            fsync_interval: Duration::from_millis(10),
            segment_bytes: 64 << 20,
        }
    }
}

/// `[buffer]`: when the Arrow buffer is sealed into Parquet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferSection {
    /// At this many buffered bytes (Arrow memory)...
    pub max_bytes: usize,
    /// ...or rows...
    pub max_rows: usize,
    /// ...or when the oldest buffered row is this old.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The most tables this gateway keeps; rows for a new table past it are refused.
    pub max_tables: usize,
}

impl Default for BufferSection {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_rows: 2_000_000,
            max_age: Duration::from_secs(60),
            max_tables: 1_000,
        }
    }
}

/// `[parquet]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetSection {
    pub zstd_level: i32,
    pub row_group_rows: usize,
}

impl Default for ParquetSection {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            row_group_rows: 1 << 20,
        }
    }
}

/// `[upload]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    /// Where the lake is: `file:///path`, `s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `memory://`. An empty string means `<data_dir>/lake`.
    pub url: String,
    /// Store options, as object_store names them (`aws_endpoint`, `aws_access_key_id`,
    /// `aws_allow_http`, `google_service_account`, …). Environment variables such as
    /// `AWS_ACCESS_KEY_ID` are read too.
    pub options: BTreeMap<String, String>,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// The outbox may hold this many bytes; past it the oldest files are dropped (and
    /// counted). 0 means no cap.
    pub disk_cap_bytes: u64,
    /// Files waiting longer than this are dropped (and counted). Leave out for no limit.
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl Default for UploadSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            options: BTreeMap::new(),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            disk_cap_bytes: 10 << 30,
            ttl: Some(Duration::from_secs(30 * 24 * 3600)),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Serves `/metrics` (Prometheus) and `/healthz`; `"off"` turns it off.
    #[serde(with = "addr_or_off")]
    pub addr: Option<SocketAddr>,
    /// A scrape's request headers must arrive within this (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections at most...
    pub max_connections: usize,
    /// ...and from one address.
    pub max_connections_per_ip: usize,
    /// The SHA-256 (hex) of a token `/metrics` requires as `Authorization: Bearer`; none
    /// by default (keep the address private then).
    pub token_sha256: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_ip: 32,
            token_sha256: None,
        }
    }
}

impl MetricsSection {
    /// The HTTP server's caps.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_timeout: self.header_timeout,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// How long uploads may go on after the buffers are flushed; what is left is uploaded
    /// at the next start.
    #[serde(with = "humantime_serde")]
    pub upload_deadline: Duration,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            upload_deadline: Duration::from_secs(10),
        }
    }
}

/// `[link]`: the connection out to the cloud.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// The cloud's gateway endpoint, `wss://host:port/v1/gateway/link`; empty for no link.
    pub url: String,
    /// The gateway token the cloud issued for this gateway.
    pub token: String,
    /// A PEM file of certificates to trust for `wss://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (a self-signed test cloud). Never in production.
    pub insecure: bool,
    /// Batches sent and not yet acknowledged, at most; past it, what waits coalesces.
    pub max_unacked: usize,
    /// File commits waiting for the cloud, at most (the oldest are dropped past it).
    pub max_waiting_files: usize,
    /// Fresh rows (durable here, not yet in a file) waiting for the cloud, at most; past it
    /// the oldest are dropped (the cloud sees them once their file lands). 0: send none.
    pub max_waiting_rows: usize,
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl Default for LinkSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: String::new(),
            ca_file: None,
            insecure: false,
            max_unacked: 32,
            max_waiting_files: 100_000,
            max_waiting_rows: 200_000,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// `humantime_serde` for a map of durations.
pub(crate) mod humantime_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                humantime_serde::re::humantime::parse_duration(&v)
                    .map(|d| (k, d))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}
