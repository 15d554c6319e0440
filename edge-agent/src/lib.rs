//! # twinlake-edge: the gateway end of the data path
//!
//! Devices connect here first. The [`listener`] speaks the Thinger.io classic protocol over
//! TCP (default port 25200) and TLS (25202) on the `twinlake-sdk` codec and checks devices
//! against the [`registry`] (hashed credentials, rate-limited refusals). What they send is
//! flattened into rows (`twinlake_lake::model`), written to a crash-safe [`wal`] and an Arrow
//! buffer (`twinlake_lake::buffer`),
//! sealed into Parquet in the [`outbox`] and shipped to any object store by the [`upload`]
//! loop. MQTT brokers and LoRaWAN gateways feed the same path through the [`sources`].
//! [`agent::EdgeAgent`] wires it all, with Prometheus [`metrics`].
//!
//! ```text
//! devices ─TCP/TLS─▶ listener ─events─▶ ingest ─┬▶ WAL (fsync, group commit)
//!                                               └▶ Arrow buffer ─seal─▶ outbox/*.parquet ─▶ object store
//! ```

pub mod agent;
pub mod config;
pub mod conn_limit;
pub mod durable;
pub mod endpoints;
pub mod error;
pub mod event;
pub mod hex;
pub mod http;
pub mod ingest;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod own_streams;
pub(crate) mod queue;
pub mod rate_limit;
pub mod registry;
pub mod retention;
pub mod rules;
pub mod sources;
pub mod upload;
pub mod values;
pub mod wal;

pub use agent::EdgeAgent;
pub use config::EdgeConfig;
pub use error::Error;

// The Arrow stack this crate writes with, for tools and tests that read its files.
pub use {arrow, object_store, parquet, twinlake_lake as lake};
