//! The cloud's configuration file (`twinlake cloud --config cloud.toml`).
//!
//! Every key has a default, so an empty file runs a development cloud;
//! `deploy/cloud.example.toml` shows them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use twinlake_edge::EdgeConfig;

mod rules;

pub use rules::{EmailSection, MqttActionsSection, RulesSection};

use crate::Error;
use crate::tokens::Scope;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Where the database (`cloud.redb`: registry, twins, tokens) and the in-process edge
    /// pipeline's files live.
    pub data_dir: PathBuf,
    /// The database's page cache, at most (redb's default would be 1 GiB).
    pub db_cache_bytes: usize,
    pub http: HttpSection,
    pub twins: TwinsSection,
    pub registry: RegistrySection,
    pub link: LinkServerSection,
    pub webhooks: WebhookSection,
    /// API tokens to create at start (stored hashed; the file holds only their SHA-256).
    pub tokens: Vec<TokenEntry>,
    /// Gateways allowed to link, with the SHA-256 of their tokens.
    pub gateways: Vec<GatewayEntry>,
    /// The cloud's own device listener for devices without a gateway: the edge pipeline,
    /// in-process, under the gateway id `edge.gateway` (default `cloud`). `listener.tcp =
    /// "off"` (and no TLS, and no `device_http.addr`) turns it off.
    pub edge: EdgeConfig,
    pub metrics: MetricsSection,
    pub lake: LakeSection,
    pub sql: SqlSection,
    pub rules: RulesSection,
    pub email: EmailSection,
    pub mqtt_actions: MqttActionsSection,
}

impl Default for CloudConfig {
    fn default() -> Self {
        let data_dir = PathBuf::from("twinlake-cloud-data");
        let mut edge = EdgeConfig {
            gateway: "cloud".into(),
            // Empty: `<data_dir>/edge`, whatever `data_dir` is set to (see `edge_config`).
            data_dir: PathBuf::new(),
            ..EdgeConfig::default()
        };
        edge.metrics.addr = None;
        Self {
            data_dir,
            db_cache_bytes: 64 << 20,
            http: HttpSection::default(),
            twins: TwinsSection::default(),
            registry: RegistrySection::default(),
            link: LinkServerSection::default(),
            webhooks: WebhookSection::default(),
            tokens: Vec::new(),
            gateways: Vec::new(),
            edge,
            metrics: MetricsSection::default(),
            lake: LakeSection::default(),
            sql: SqlSection::default(),
            rules: Default::default(),
            email: Default::default(),
            mqtt_actions: Default::default(),
        }
    }
}

impl CloudConfig {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The in-process pipeline's configuration, its directory resolved: an empty
    /// `edge.data_dir` means `<data_dir>/edge`, so a cloud given only a `data_dir` (in a file
    /// or in code) never shares its pipeline's WAL with another cloud.
    pub fn edge_config(&self) -> EdgeConfig {
        let mut edge = self.edge.clone();
        if edge.retention.is_empty() {
            // The in-process pipeline refuses rows the lake would delete at once.
            edge.retention = self.sql.retention.clone();
        }
        if edge.data_dir.as_os_str().is_empty() {
            edge.data_dir = self.data_dir.join("edge");
        }
        if edge.upload.url.is_empty() {
            // The in-process pipeline writes where SQL reads.
            edge.upload.url = self.lake.url.clone();
            edge.upload.options = self.lake.options.clone();
            if edge.upload.url.is_empty() {
                edge.upload.url = self.lake_dir_url();
            }
        }
        edge
    }

    /// `<data_dir>/lake` as a `file://` URL (the lake when `lake.url` is empty).
    pub fn lake_dir_url(&self) -> String {
        let dir = self.data_dir.join("lake");
        let abs = if dir.is_absolute() {
            dir
        } else {
            std::env::current_dir().unwrap_or_default().join(dir)
        };
        url::Url::from_directory_path(&abs).map_or_else(|_| format!("file://{}/", abs.display()), |u| u.to_string())
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut config: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        // The in-process pipeline's metrics are served with the cloud's; where `[edge]`
        // leaves them out, its id and directory follow the cloud's.
        config.edge.metrics.addr = None;
        let stock = EdgeConfig::default();
        if config.edge.gateway == stock.gateway {
            config.edge.gateway = "cloud".into();
        }
        if config.edge.data_dir == stock.data_dir {
            config.edge.data_dir = PathBuf::new();
        }
        if !config.edge.link.url.is_empty() {
            return Err(Error::Config(
                "edge.link: the in-process edge is linked in-process".into(),
            ));
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.http.tls_cert.is_some() != self.http.tls_key.is_some() {
            return bad("http.tls_cert and http.tls_key go together".into());
        }
        if self.db_cache_bytes < 1 << 20 {
            return bad("db_cache_bytes must be at least 1 MiB".into());
        }
        if self.twins.max_doc_bytes < 1024 {
            return bad("twins.max_doc_bytes must be at least 1024".into());
        }
        if self.sql.retention.grace.is_some_and(|g| g < self.sql.timeout) {
            return bad(
                "sql.retention.grace must be at least sql.timeout: running queries must finish before their files go"
                    .into(),
            );
        }
        twinlake_query::rollup::check_all(&self.sql.rollups).map_err(|e| Error::Config(format!("sql.rollups: {e}")))?;
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "tokens {:?}: sha256 must be 64 hex digits (twinlake hash-token)",
                    t.name
                ));
            }
            if t.scopes.is_empty() {
                return bad(format!("tokens {:?}: give it at least one scope", t.name));
            }
        }
        for g in &self.gateways {
            if !twinlake_lake::path::is_gateway_name(&g.id) || g.token_sha256.len() != 64 {
                return bad(format!(
                    "gateways {:?}: needs an id that can name lake files (1 to 64 letters, digits, '-', '_' or '.', not 'compacted') and token_sha256 (64 hex digits)",
                    g.id
                ));
            }
        }
        Ok(())
    }
}

/// `[http]`: the API (REST, SSE, WebSocket) and the gateway link endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub addr: SocketAddr,
    /// PEM files; with both, the API serves HTTPS (and the link `wss://`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long a live resource call may take before 504.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The largest request body.
    pub max_body_bytes: usize,
    /// The fastest a stream subscriber with only the `read` scope may make a device sample
    /// (a `control` token may ask for faster).
    #[serde(with = "humantime_serde")]
    pub stream_min_interval: Duration,
    /// A request's headers must arrive within this (slow-header attacks)...
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// ...and its body within this.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections, in all...
    pub max_connections: usize,
    /// ...and from one address.
    pub max_connections_per_ip: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_cert: None,
            tls_key: None,
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            stream_min_interval: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
        }
    }
}

/// `[lake]`: the object store SQL reads, which gateways upload to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeSection {
    /// `s3://bucket/prefix`, `gs://…`, `az://…` or `file:///…`; empty: `<data_dir>/lake`.
    pub url: String,
    /// object_store options for the URL (credentials, endpoint, region).
    pub options: std::collections::BTreeMap<String, String>,
}

/// `[sql]`: the query surfaces and their limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSection {
    /// The Postgres wire listener (psql, Grafana, JDBC); "off" for none. TLS when `[http]`
    /// has a certificate.
    #[serde(deserialize_with = "optional_addr")]
    pub postgres_addr: Option<SocketAddr>,
    /// The Arrow Flight SQL listener (ADBC, notebooks); "off" for none.
    #[serde(deserialize_with = "optional_addr")]
    pub flight_addr: Option<SocketAddr>,
    /// Rows one query may return, on every surface; more is an error asking for a LIMIT.
    pub max_rows: usize,
    /// How long one query may run, on every surface; a client's `statement_timeout` can
    /// only shorten it.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory one query may hold in sorts, joins and aggregates (bytes).
    pub memory_per_query: usize,
    /// Memory all queries together may hold (bytes).
    pub memory_limit: usize,
    /// Queries running at once; more wait for a slot until their timeout.
    pub max_concurrent: usize,
    /// Fresh rows (sent by gateways, not yet in files) held for queries, at most...
    pub fresh_max_rows: usize,
    /// ...and their Arrow memory, at most (bytes).
    pub fresh_max_bytes: usize,
    /// How long a fresh row whose file never came is kept.
    #[serde(with = "humantime_serde")]
    pub fresh_max_age: Duration,
    /// List the lake at start to catalog files whose announcement was lost.
    pub rebuild_on_start: bool,
    pub compaction: twinlake_query::compact::CompactionConfig,
    /// How long each table is kept (none: forever); whole hour partitions past it are
    /// deleted, their files after `grace` (at least `timeout`; default: `timeout`).
    pub retention: twinlake_query::retention::RetentionConfig,
    /// Rollup tables (`[[sql.rollups]]`), maintained as source partitions close.
    pub rollups: Vec<twinlake_query::rollup::RollupDef>,
}

impl SqlSection {
    /// How long expired files stay for queries already running.
    pub fn retention_grace(&self) -> Duration {
        self.retention.grace.unwrap_or(self.timeout).max(self.timeout)
    }
}

impl Default for SqlSection {
    fn default() -> Self {
        let fresh = twinlake_query::FreshLimits::default();
        let limits = twinlake_query::session::SqlLimits::default();
        Self {
            postgres_addr: Some(SocketAddr::from(([127, 0, 0, 1], 5432))),
            flight_addr: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            max_rows: limits.max_rows as usize,
            timeout: limits.timeout,
            memory_per_query: limits.memory_per_query,
            memory_limit: limits.memory_total,
            max_concurrent: limits.max_concurrent,
            fresh_max_rows: fresh.max_rows,
            fresh_max_bytes: fresh.max_bytes,
            fresh_max_age: fresh.max_age,
            rebuild_on_start: true,
            compaction: Default::default(),
            retention: Default::default(),
            rollups: Vec::new(),
        }
    }
}

fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" || s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `[registry]`: device credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// PBKDF2 iterations for a credential a person chose (credentials the platform makes
    /// take a salted HMAC). Lower it only for tests.
    pub credential_iterations: u32,
    /// Devices one user may register; past it registration answers 403.
    pub max_devices_per_user: usize,
}

impl Default for RegistrySection {
    fn default() -> Self {
        Self {
            credential_iterations: twinlake_edge::registry::DEFAULT_ITERATIONS,
            max_devices_per_user: 100_000,
        }
    }
}

/// `[twins]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwinsSection {
    /// The largest twin document, in bytes.
    pub max_doc_bytes: usize,
}

impl Default for TwinsSection {
    fn default() -> Self {
        Self {
            max_doc_bytes: 64 * 1024,
        }
    }
}

/// `[link]`: the server end of the gateway link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkServerSection {
    /// Live requests (reads, writes, calls, stream changes) to one gateway in flight at
    /// most; more wait for a place within their own timeout.
    pub max_inflight: usize,
    /// Unregistered devices (MQTT, LoRaWAN devices of the users a gateway is bound to) that
    /// one gateway may bring, each with a twin: a new one past it is refused and counted
    /// (`device_quota_refusals`). Deleting such a device's twin makes room.
    pub max_unregistered_devices: usize,
    /// Whether gateways may send batches as binary WebSocket frames (raw fresh-row blocks,
    /// no base64). Off, they send JSON text, as agents before it do: for a proxy on the way
    /// that passes only text frames.
    pub binary_batches: bool,
}

impl Default for LinkServerSection {
    fn default() -> Self {
        Self {
            max_inflight: 1024,
            max_unregistered_devices: 10_000,
            binary_batches: true,
        }
    }
}

/// `[webhooks]`: how endpoint calls are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per call before it is dropped (counted).
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Calls waiting for delivery, at most (the oldest are dropped past it, counted).
    pub max_queued: u64,
    /// Networks (CIDR) that endpoints may reach although they are loopback, private,
    /// link-local or otherwise not public (refused by default: SSRF), e.g. `["10.1.0.0/16"]`.
    pub allow_networks: Vec<ipnet::IpNet>,
}

impl Default for WebhookSection {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempts: 5,
            retry_min: Duration::from_millis(500),
            max_queued: 100_000,
            allow_networks: Vec::new(),
        }
    }
}

/// One `[[tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// Hex SHA-256 of the token (`twinlake hash-token TOKEN`).
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// The user the token belongs to; left out: a platform token.
    #[serde(default)]
    pub user: Option<String>,
}

/// One `[[gateways]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEntry {
    pub id: String,
    /// Hex SHA-256 of the gateway's token.
    pub token_sha256: String,
    /// Users whose unregistered (MQTT, LoRaWAN) devices the gateway may speak for.
    #[serde(default)]
    pub users: Vec<String>,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `/metrics` and `/healthz` (without a token unless `token_sha256`; keep it private).
    pub addr: Option<SocketAddr>,
    /// A scrape's request headers must arrive within this (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections at most, in all and from one address.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// The SHA-256 (hex) of a token `/metrics` requires as `Authorization: Bearer`.
    pub token_sha256: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        let edge = twinlake_edge::config::MetricsSection::default();
        Self {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9601))),
            header_timeout: edge.header_timeout,
            max_connections: edge.max_connections,
            max_connections_per_ip: edge.max_connections_per_ip,
            token_sha256: None,
        }
    }
}

impl MetricsSection {
    /// The metrics server's caps.
    pub fn limits(&self) -> twinlake_edge::http::HttpLimits {
        twinlake_edge::http::HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_timeout: self.header_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let c = CloudConfig::parse(include_str!("../../deploy/cloud.example.toml")).unwrap();
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.gateways.first().map(|g| g.id.as_str()), Some("gw-1"));
        assert_eq!(c.edge.gateway, "cloud");
        assert!(c.edge.metrics.addr.is_none(), "served with the cloud's");
        assert_eq!(c.lake.url, "s3://twinlake-lake/prod");
        assert_eq!(
            c.edge_config().upload.url,
            "s3://twinlake-lake/prod",
            "the pipeline writes where SQL reads"
        );
        assert_eq!(c.sql.postgres_addr, Some("0.0.0.0:5432".parse().unwrap()));
        assert!(c.sql.compaction.enabled);
        assert_eq!(c.sql.rollups.first().map(|r| r.name()).as_deref(), Some("telemetry_1h"));
        assert!(c.sql.retention.of("telemetry_1h").is_some());
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, want) in [
            ("[http]\nport = 1", "unknown field `port`"),
            (
                "[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\nscopes = [\"read\"]",
                "64 hex digits",
            ),
            (
                "[[tokens]]\nname = \"x\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nscopes = [\"root\"]",
                "unknown variant `root`",
            ),
            ("[http]\ntls_cert = \"/x\"", "go together"),
            ("[edge.link]\nurl = \"ws://x\"\ntoken = \"t\"", "in-process"),
            ("[sql]\npostgres_addr = \"nowhere\"", "invalid socket address"),
            ("[sql.compaction]\nevery = \"1s\"", "unknown field `every`"),
            ("[twins]\nmax_doc_bytes = 10", "at least 1024"),
            (
                "[sql]\ntimeout = \"60s\"\n[sql.retention]\ngrace = \"10s\"",
                "at least sql.timeout",
            ),
            ("[sql.retention]\ntables = { t = \"soon\" }", "expected a duration"),
            ("[webhooks]\nallow_networks = [\"10.0.0.0/33\"]", "invalid IP address"),
            ("[[sql.rollups]]\ntable = \"t\"\nevery = \"7s\"", "dividing an hour"),
            (
                "[[sql.rollups]]\ntable = \"t\"\nevery = \"1m\"\nfields = { v = [\"median\"] }",
                "unknown variant",
            ),
        ] {
            let e = CloudConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let defaults = CloudConfig::parse("").unwrap();
        assert_eq!(defaults.edge_config().data_dir, defaults.data_dir.join("edge"));
        // Set in code, not a file: the pipeline follows the cloud's directory too.
        let in_code = CloudConfig {
            data_dir: "/srv/a".into(),
            ..CloudConfig::default()
        };
        assert_eq!(in_code.edge_config().data_dir, PathBuf::from("/srv/a/edge"));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example configurations operators copy hold only keys the code knows, with
    /// values that pass its checks.
    #[test]
    fn the_example_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cloud = std::fs::read_to_string(root.join("deploy/cloud.example.toml")).unwrap();
        let c = CloudConfig::parse(&cloud).unwrap_or_else(|e| panic!("cloud.example.toml: {e}"));
        assert_eq!(c.db_cache_bytes, 64 << 20);
        assert_eq!(c.link.max_unregistered_devices, 10_000);
        let edge = std::fs::read_to_string(root.join("deploy/edge-agent.example.toml")).unwrap();
        let e = EdgeConfig::parse(&edge).unwrap_or_else(|e| panic!("edge-agent.example.toml: {e}"));
        assert_eq!(e.mqtt.max_devices, 10_000);
    }
}
