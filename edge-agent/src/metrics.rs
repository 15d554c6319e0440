//! Prometheus metrics, served at `/metrics` with `/healthz` beside it.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why files or rows were dropped.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
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
    pub auth_failures: Counter,
    pub auth_rate_limited: Counter,
    pub devices_connected: Gauge,
    pub endpoint_calls: Counter,
    pub endpoint_queue_dropped: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered under the `twinlake_edge_` prefix.
    pub fn new() -> Self {
        let mut m = Self {
            rows_in: Counter::default(),
            values_in: Counter::default(),
            bytes_in: Counter::default(),
            rejected_payloads: Counter::default(),
            schema_conflicts: Counter::default(),
            wal_bytes: Counter::default(),
            wal_fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            buffer_rows: Gauge::default(),
            files_written: Counter::default(),
            bytes_written: Counter::default(),
            files_uploaded: Counter::default(),
            bytes_uploaded: Counter::default(),
            upload_failures: Counter::default(),
            upload_queue_files: Gauge::default(),
            upload_queue_bytes: Gauge::default(),
            dropped_files: Family::default(),
            dropped_rows: Family::default(),
            auth_failures: Counter::default(),
            auth_rate_limited: Counter::default(),
            devices_connected: Gauge::default(),
            endpoint_calls: Counter::default(),
            endpoint_queue_dropped: Counter::default(),
            registry: Registry::with_prefix("twinlake_edge"),
        };
        let r = &mut m.registry;
        r.register("rows_in", "Rows accepted (durable in the WAL)", m.rows_in.clone());
        r.register("values_in", "Field values accepted", m.values_in.clone());
        r.register("payload_bytes_in", "PSON payload bytes accepted", m.bytes_in.clone());
        r.register(
            "rejected_payloads",
            "Payloads that could not be decoded",
            m.rejected_payloads.clone(),
        );
        r.register(
            "schema_conflicts",
            "Values dropped for clashing with their column's type",
            m.schema_conflicts.clone(),
        );
        r.register("wal_bytes", "Bytes written to the WAL", m.wal_bytes.clone());
        r.register("wal_fsync_seconds", "WAL fsync latency", m.wal_fsync_seconds.clone());
        r.register("buffer_rows", "Rows in the Arrow buffer", m.buffer_rows.clone());
        r.register("files_written", "Parquet files sealed", m.files_written.clone());
        r.register("parquet_bytes_written", "Parquet bytes sealed", m.bytes_written.clone());
        r.register("files_uploaded", "Parquet files uploaded", m.files_uploaded.clone());
        r.register("bytes_uploaded", "Parquet bytes uploaded", m.bytes_uploaded.clone());
        r.register("upload_failures", "Failed upload attempts", m.upload_failures.clone());
        r.register(
            "upload_queue_files",
            "Files waiting for upload",
            m.upload_queue_files.clone(),
        );
        r.register(
            "upload_queue_bytes",
            "Bytes waiting for upload",
            m.upload_queue_bytes.clone(),
        );
        r.register("dropped_files", "Files dropped before upload", m.dropped_files.clone());
        r.register("dropped_rows", "Rows dropped before upload", m.dropped_rows.clone());
        r.register("auth_failures", "Refused device logins", m.auth_failures.clone());
        r.register(
            "auth_rate_limited",
            "Logins refused unchecked during a lockout",
            m.auth_rate_limited.clone(),
        );
        r.register(
            "devices_connected",
            "Devices connected now",
            m.devices_connected.clone(),
        );
        r.register(
            "endpoint_calls",
            "Endpoint calls from devices",
            m.endpoint_calls.clone(),
        );
        r.register(
            "endpoint_queue_dropped",
            "Endpoint calls dropped from the full cloud queue",
            m.endpoint_queue_dropped.clone(),
        );
        m
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// Counts a drop.
    pub fn dropped(&self, reason: &'static str, files: u64, rows: u64) {
        self.dropped_files.get_or_create(&DropLabels { reason }).inc_by(files);
        self.dropped_rows.get_or_create(&DropLabels { reason }).inc_by(rows);
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Bind { addr, source })
}
