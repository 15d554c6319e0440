//! The cloud's Prometheus metrics (`twinlake_cloud_*`), served with the in-process edge
//! pipeline's (`twinlake_edge_*`) on the metrics address.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// Every metric the cloud keeps.
#[derive(Debug)]
pub struct CloudMetrics {
    pub gateways_linked: Gauge,
    pub link_items: Counter,
    pub link_duplicate_batches: Counter,
    pub link_bad_messages: Counter,
    pub link_batches: Labelled,
    pub twin_updates: Counter,
    pub twin_rejected: Counter,
    pub files_committed: Counter,
    pub files_catalogued: Counter,
    pub fresh_rows: Counter,
    pub sql_queries: Counter,
    pub sql_errors: Counter,
    pub desired_writes: Counter,
    pub desired_failures: Counter,
    pub live_requests: Counter,
    pub webhooks_delivered: Counter,
    pub webhooks_failed: Counter,
    pub webhooks_dropped: Counter,
    pub subscribers: Gauge,
    /// Requests refused because the token belongs to another user.
    pub tenant_refusals: Counter,
    /// What a gateway sent for a device that is not its own, refused.
    pub gateway_refusals: Counter,
    /// Keys of gateway alarm transitions dropped past their cap (a gateway sent more
    /// than the cap within a week).
    pub gateway_alarm_keys_evicted: Counter,
    pub device_quota_refusals: Counter,
    pub credential_rehashes: Counter,
    /// Announced files given up after failing to be catalogued for long.
    pub files_given_up: Counter,
    /// Files whose rows a gateway may not write, moved to `_quarantine/`.
    pub files_quarantined: Counter,
    /// Values evaluated by threshold rules.
    pub rule_values: Counter,
    /// (rule, device) pairs the evaluator tracks, and those refused past `rules.max_states`.
    pub rule_states: Gauge,
    pub rule_states_refused: Gauge,
    pub rule_sql_errors: Counter,
    pub alarms_raised: Counter,
    pub alarms_cleared: Counter,
    /// Actions queued or done, by `action` (webhook, email, desired, desired_failed).
    pub rule_actions: Labelled,
    /// Alarm emails by `outcome` (sent, failed, dropped, rate_limited).
    pub emails: Labelled,
    /// Alarm MQTT publishes by `outcome` (sent, failed, dropped).
    pub mqtt_actions: Labelled,
    /// Endpoint calls refused because their address is not public (SSRF).
    pub webhooks_refused: Counter,
    /// What retention deleted: hour partitions, their files, rows and bytes.
    pub retention_partitions: Counter,
    pub retention_files: Counter,
    pub retention_rows: Counter,
    pub retention_bytes: Counter,
    registry: Registry,
}

/// A counter family with one label.
pub type Labelled = Family<Vec<(String, String)>, Counter>;

/// The one label of a [`Labelled`] series.
pub fn label(name: &str, value: &str) -> Vec<(String, String)> {
    vec![(name.to_owned(), value.to_owned())]
}

/// A family with each of `values` of `label` declared at zero, so dashboards and alerts see
/// the series before the first event.
fn labelled(r: &mut Registry, name: &str, help: &str, key: &str, values: &[&str]) -> Labelled {
    let f = add(r, name, help, Labelled::default());
    for v in values {
        let _ = f.get_or_create(&label(key, v));
    }
    f
}

fn add<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Default for CloudMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("twinlake_cloud");
        let r = &mut registry;
        Self {
            gateways_linked: add(r, "gateways_linked", "Gateways linked now", Gauge::default()),
            tenant_refusals: add(
                r,
                "tenant_refusals",
                "Requests refused because the token belongs to another user",
                Counter::default(),
            ),
            files_quarantined: add(
                r,
                "files_quarantined",
                "Files holding rows their gateway may not write, moved to _quarantine/",
                Counter::default(),
            ),
            files_given_up: add(
                r,
                "files_given_up",
                "Announced files given up after failing to be catalogued for long",
                Counter::default(),
            ),
            gateway_refusals: add(
                r,
                "gateway_refusals",
                "Items a gateway sent for devices that are not its own, refused",
                Counter::default(),
            ),
            gateway_alarm_keys_evicted: add(
                r,
                "gateway_alarm_keys_evicted",
                "Keys of gateway alarm transitions dropped past their cap of 100,000 within a week",
                Counter::default(),
            ),
            device_quota_refusals: add(
                r,
                "device_quota_refusals",
                "New devices refused past a quota (link.max_unregistered_devices, registry.max_devices_per_user)",
                Counter::default(),
            ),
            credential_rehashes: add(
                r,
                "credential_rehashes",
                "Device credential hashes made stronger at a login",
                Counter::default(),
            ),
            link_items: add(
                r,
                "link_items",
                "Items applied from gateway batches",
                Counter::default(),
            ),
            link_duplicate_batches: add(
                r,
                "link_duplicate_batches",
                "Batches received again and skipped",
                Counter::default(),
            ),
            link_bad_messages: add(
                r,
                "link_bad_messages",
                "Link messages that did not parse",
                Counter::default(),
            ),
            link_batches: labelled(
                r,
                "link_batches",
                "Link batches received, by frame format (text: JSON; binary: agents that take binary_batches)",
                "format",
                &["text", "binary"],
            ),
            files_catalogued: add(
                r,
                "files_catalogued",
                "Parquet files read and added to the SQL catalog",
                Counter::default(),
            ),
            fresh_rows: add(
                r,
                "fresh_rows",
                "Rows from gateways queryable before their file lands",
                Counter::default(),
            ),
            sql_queries: add(r, "sql_queries", "SQL queries over HTTP", Counter::default()),
            sql_errors: add(r, "sql_errors", "SQL queries over HTTP that failed", Counter::default()),
            twin_updates: add(
                r,
                "twin_reported_updates",
                "Reported values applied to twins",
                Counter::default(),
            ),
            twin_rejected: add(
                r,
                "twin_rejected",
                "Reported values refused (document too large)",
                Counter::default(),
            ),
            files_committed: add(
                r,
                "files_committed",
                "Parquet files announced by gateways",
                Counter::default(),
            ),
            desired_writes: add(
                r,
                "desired_writes",
                "Desired values written to devices",
                Counter::default(),
            ),
            desired_failures: add(
                r,
                "desired_failures",
                "Desired values that could not be written",
                Counter::default(),
            ),
            live_requests: add(
                r,
                "live_requests",
                "Live resource requests from the API",
                Counter::default(),
            ),
            webhooks_delivered: add(r, "webhooks_delivered", "Endpoint calls delivered", Counter::default()),
            webhooks_failed: add(r, "webhooks_failed", "Failed webhook attempts", Counter::default()),
            webhooks_dropped: add(r, "webhooks_dropped", "Endpoint calls given up on", Counter::default()),
            subscribers: add(
                r,
                "stream_subscribers",
                "SSE and WebSocket subscribers now",
                Gauge::default(),
            ),
            rule_values: add(
                r,
                "rule_values",
                "Values evaluated by threshold rules",
                Counter::default(),
            ),
            rule_states: add(
                r,
                "rule_states",
                "(rule, device) pairs the rule evaluator tracks",
                Gauge::default(),
            ),
            rule_states_refused: add(
                r,
                "rule_states_refused",
                "(rule, device) pairs not tracked past rules.max_states",
                Gauge::default(),
            ),
            rule_sql_errors: add(
                r,
                "rule_sql_errors",
                "Scheduled SQL rule runs that failed",
                Counter::default(),
            ),
            alarms_raised: add(r, "alarms_raised", "Alarms raised", Counter::default()),
            alarms_cleared: add(
                r,
                "alarms_cleared",
                "Alarms cleared, by their rule or a person",
                Counter::default(),
            ),
            rule_actions: labelled(
                r,
                "rule_actions",
                "Rule actions queued or done",
                "action",
                &["webhook", "email", "mqtt", "desired", "desired_failed"],
            ),
            emails: labelled(
                r,
                "alarm_emails",
                "Alarm emails",
                "outcome",
                &["sent", "failed", "dropped", "rate_limited"],
            ),
            mqtt_actions: labelled(
                r,
                "alarm_mqtt_publishes",
                "Alarm MQTT publishes",
                "outcome",
                &["sent", "failed", "dropped"],
            ),
            webhooks_refused: add(
                r,
                "webhooks_refused",
                "Endpoint calls refused because their address is not public (webhooks.allow_networks)",
                Counter::default(),
            ),
            retention_partitions: add(
                r,
                "retention_partitions",
                "Hour partitions deleted by retention",
                Counter::default(),
            ),
            retention_files: add(r, "retention_files", "Files deleted by retention", Counter::default()),
            retention_rows: add(r, "retention_rows", "Rows deleted by retention", Counter::default()),
            retention_bytes: add(r, "retention_bytes", "Bytes deleted by retention", Counter::default()),
            registry,
        }
    }
}

impl CloudMetrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
