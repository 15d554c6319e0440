//! Prometheus metrics, served at `/metrics` with `/healthz` beside it.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Why files or rows were dropped.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// What became of a message from a source other than the listener.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `mqtt` or `lorawan`.
    pub source: &'static str,
    /// `accepted`, `duplicate`, `undecodable`, `unmatched`, `unknown_device`, `bad_mic`,
    /// `replay`, `join`, `join_refused`, `downlink`.
    pub outcome: &'static str,
}

/// Every metric the agent keeps.
#[derive(Debug)]
pub struct Metrics {
    pub rows_in: Counter,
    pub values_in: Counter,
    pub bytes_in: Counter,
    pub rejected_payloads: Counter,
    pub schema_conflicts: Counter,
    pub wal_bytes: Counter,
    pub wal_fsync_seconds: Histogram,
    pub buffer_rows: Gauge,
    pub files_written: Counter,
    pub bytes_written: Counter,
    pub files_uploaded: Counter,
    pub bytes_uploaded: Counter,
    pub upload_failures: Counter,
    pub upload_queue_files: Gauge,
    pub upload_queue_bytes: Gauge,
    pub dropped_files: Family<DropLabels, Counter>,
    pub dropped_rows: Family<DropLabels, Counter>,
    /// Rows refused where they entered, by rule (`name`, `columns`, `tables`).
    pub refused_rows: Family<DropLabels, Counter>,
    /// Rows of tables a seal could not write into the lake, kept in `quarantine/`.
    pub quarantined_rows: Counter,
    pub auth_failures: Counter,
    pub auth_rate_limited: Counter,
    pub devices_connected: Gauge,
    pub endpoint_calls: Counter,
    pub endpoint_queue_dropped: Counter,
    pub link_connected: Gauge,
    pub link_connects: Counter,
    pub link_frames_sent: Counter,
    pub link_bytes_sent: Counter,
    pub link_items_sent: Counter,
    pub link_unacked_frames: Gauge,
    pub link_files_dropped: Counter,
    pub link_rows_dropped: Counter,
    pub link_requests: Counter,
    pub link_replies_direct: Counter,
    pub source_messages: Family<SourceLabels, Counter>,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a metric and hands it back, so each is named once, where it is made.
fn add<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// A fresh set, registered under the `twinlake_edge_` prefix.
    pub fn new() -> Self {
        let m = Self::registered();
        // The labelled families at zero for every reason and each source's main outcome, so
        // a scrape (and a dashboard, an alert) finds them before the first drop or message.
        for reason in ["ttl", "disk_cap", "damaged"] {
            m.dropped(reason, 0, 0);
        }
        for rule in ["name", "columns", "tables", "depth"] {
            m.refused(rule, 0);
        }
        for (source, outcome) in [
            ("mqtt", "accepted"),
            ("lorawan", "accepted"),
            ("http", "stored"),
            ("coap", "stored"),
        ] {
            let _ = m.source_messages.get_or_create(&SourceLabels { source, outcome });
        }
        m
    }

    fn registered() -> Self {
        let mut registry = Registry::with_prefix("twinlake_edge");
        let r = &mut registry;
        Self {
            rows_in: add(r, "rows_in", "Rows accepted (durable in the WAL)", Counter::default()),
            values_in: add(r, "values_in", "Field values accepted", Counter::default()),
            bytes_in: add(r, "payload_bytes_in", "PSON payload bytes accepted", Counter::default()),
            rejected_payloads: add(
                r,
                "rejected_payloads",
                "Payloads that could not be decoded",
                Counter::default(),
            ),
            schema_conflicts: add(
                r,
                "schema_conflicts",
                "Values dropped for clashing with their column's type",
                Counter::default(),
            ),
            wal_bytes: add(r, "wal_bytes", "Bytes written to the WAL", Counter::default()),
            wal_fsync_seconds: add(
                r,
                "wal_fsync_seconds",
                "WAL fsync latency",
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            ),
            buffer_rows: add(r, "buffer_rows", "Rows in the Arrow buffer", Gauge::default()),
            files_written: add(r, "files_written", "Parquet files sealed", Counter::default()),
            bytes_written: add(r, "parquet_bytes_written", "Parquet bytes sealed", Counter::default()),
            files_uploaded: add(r, "files_uploaded", "Parquet files uploaded", Counter::default()),
            bytes_uploaded: add(r, "bytes_uploaded", "Parquet bytes uploaded", Counter::default()),
            upload_failures: add(r, "upload_failures", "Failed upload attempts", Counter::default()),
            upload_queue_files: add(r, "upload_queue_files", "Files waiting for upload", Gauge::default()),
            upload_queue_bytes: add(r, "upload_queue_bytes", "Bytes waiting for upload", Gauge::default()),
            dropped_files: add(r, "dropped_files", "Files dropped before upload", Family::default()),
            dropped_rows: add(r, "dropped_rows", "Rows dropped before upload", Family::default()),
            refused_rows: add(
                r,
                "refused_rows",
                "Rows refused where they entered, by the rule they broke",
                Family::default(),
            ),
            quarantined_rows: add(
                r,
                "quarantined_rows",
                "Rows a seal could not write as Parquet, kept in quarantine/",
                Counter::default(),
            ),
            auth_failures: add(r, "auth_failures", "Refused device logins", Counter::default()),
            auth_rate_limited: add(
                r,
                "auth_rate_limited",
                "Logins refused unchecked during a lockout",
                Counter::default(),
            ),
            devices_connected: add(r, "devices_connected", "Devices connected now", Gauge::default()),
            endpoint_calls: add(r, "endpoint_calls", "Endpoint calls from devices", Counter::default()),
            endpoint_queue_dropped: add(
                r,
                "endpoint_queue_dropped",
                "Endpoint calls dropped from the full cloud queue",
                Counter::default(),
            ),
            link_connected: add(r, "link_connected", "1 while the cloud link is up", Gauge::default()),
            link_connects: add(
                r,
                "link_connects",
                "Cloud link sessions established",
                Counter::default(),
            ),
            link_frames_sent: add(
                r,
                "link_frames_sent",
                "Batches sent to the cloud (resends included)",
                Counter::default(),
            ),
            link_bytes_sent: add(
                r,
                "link_bytes_sent",
                "Bytes of batches sent to the cloud (resends included), before WebSocket and TLS framing",
                Counter::default(),
            ),
            link_items_sent: add(
                r,
                "link_items_sent",
                "Items sent to the cloud (resends included)",
                Counter::default(),
            ),
            link_unacked_frames: add(
                r,
                "link_unacked_frames",
                "Batches sent and not yet acknowledged",
                Gauge::default(),
            ),
            link_files_dropped: add(
                r,
                "link_files_dropped",
                "File commits dropped from the full queue for the cloud",
                Counter::default(),
            ),
            link_rows_dropped: add(
                r,
                "link_rows_dropped",
                "Fresh rows dropped from the full queue for the cloud (their files still go)",
                Counter::default(),
            ),
            link_requests: add(r, "link_requests", "Requests from the cloud", Counter::default()),
            link_replies_direct: add(
                r,
                "link_replies_direct",
                "Answers to the cloud written onto the link's socket by the task that had them, not the writer task",
                Counter::default(),
            ),
            source_messages: add(
                r,
                "source_messages",
                "Messages from the MQTT, LoRaWAN, HTTP and CoAP sources, by outcome",
                Family::default(),
            ),
            registry,
        }
    }

    /// Counts one message of `source` with `outcome`.
    pub fn source(&self, source: &'static str, outcome: &'static str) {
        self.source_messages
            .get_or_create(&SourceLabels { source, outcome })
            .inc();
    }

    /// How many messages of `source` had `outcome`.
    pub fn source_count(&self, source: &'static str, outcome: &'static str) -> u64 {
        self.source_messages
            .get_or_create(&SourceLabels { source, outcome })
            .get()
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Counts `rows` refused for breaking `rule`.
    pub fn refused(&self, rule: &'static str, rows: u64) {
        self.refused_rows
            .get_or_create(&DropLabels { reason: rule })
            .inc_by(rows);
    }

    /// Rows refused for `reason` so far.
    pub fn refused_count(&self, reason: &'static str) -> u64 {
        self.refused_rows.get_or_create(&DropLabels { reason }).get()
    }

    /// Counts a drop.
    pub fn dropped(&self, reason: &'static str, files: u64, rows: u64) {
        self.dropped_files.get_or_create(&DropLabels { reason }).inc_by(files);
        self.dropped_rows.get_or_create(&DropLabels { reason }).inc_by(rows);
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop` changes, under `limits`.
/// With `token_sha256`, `/metrics` wants `Authorization: Bearer <token>` (401 without).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: crate::http::HttpLimits,
    token_sha256: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let m = metrics.clone();
                let allowed = crate::http::bearer_matches(&headers, token_sha256.as_deref());
                async move {
                    if !allowed {
                        return (StatusCode::UNAUTHORIZED, "send Authorization: Bearer <metrics token>\n")
                            .into_response();
                    }
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    crate::http::serve(listener, None, app, limits, stop).await
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Bind { addr, source })
}
