//! What the handlers and tasks share, apart from the wiring that builds it
//! ([`crate::server`]): a handler takes `State<Arc<AppState>>` without importing the server.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use twinlake_twin::TwinStore;

use crate::config::CloudConfig;
use crate::hub::{ReadReports, StreamHub};
use crate::links::Gateways;
use crate::metrics::CloudMetrics;
use crate::store::Db;
use crate::tokens::Tokens;

/// Everything the handlers and tasks share.
#[derive(Debug)]
pub struct AppState {
    pub cfg: CloudConfig,
    pub db: Db,
    pub twins: TwinStore,
    pub gateways: Gateways,
    pub tokens: Tokens,
    pub hub: StreamHub,
    pub read_reports: ReadReports,
    pub webhook_wake: Notify,
    pub metrics: CloudMetrics,
    /// The endpoint (webhook) client: it reaches only what `webhook_policy` allows.
    pub http: reqwest::Client,
    pub webhook_policy: crate::egress::Policy,
    /// Rules in force and the evaluator's state.
    pub rules: crate::ruleset::Rules,
    /// Wakes the alarm email sender.
    pub email_wake: Notify,
    /// Wakes the alarm MQTT publisher.
    pub mqtt_wake: Notify,
    /// The in-process pipeline's gateway id (devices registered without a gateway).
    pub local_gateway: String,
    pub edge_metrics: Option<Arc<twinlake_edge::metrics::Metrics>>,
    /// Turns true when the cloud stops; long-lived tasks (sockets, streams) end on it.
    pub stop: watch::Sender<bool>,
    /// SQL over the lake, twins and registry.
    pub sql: twinlake_query::Engine,
    /// Wakes the cataloguer when file commits arrive.
    pub catalog_wake: Notify,
    /// The unregistered devices each gateway brought (`link.max_unregistered_devices`).
    pub unregistered: crate::quota::Unregistered,
}

/// Resolves once the cloud is stopping (or its state is gone). Unlike `changed()`, it sees
/// a stop sent before the receiver was made, so a task started just as the cloud stops
/// still ends (one that waited for a change kept the database open after shutdown).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
