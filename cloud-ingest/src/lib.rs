//! # twinlake-cloud: registry, twins, the gateway link and the API
//!
//! The cloud end of the data path. Edge agents link in over WebSocket ([`gateway`]) and
//! send presence, reported values, endpoint calls and file commits; devices without a
//! gateway connect to the cloud's own device listener, which is the edge pipeline running
//! in-process and linked the same way. What arrives updates the twins (`twinlake-twin`) and
//! the cloud's tables ([`store`]); the change feed drives the desired-state applier
//! ([`control`]) and the streams ([`streams`]). People and programs use the REST API
//! ([`api`]) with scoped tokens ([`auth`]).
//!
//! ```text
//! edge agents ──wss /v1/gateway/link──▶ gateway ──▶ twins + tables (redb) ──change feed──▶ SSE / WebSocket
//! devices ──▶ in-process edge ──link──▶ gateway                              └──▶ desired applier ──▶ devices
//! REST ──▶ api ──requests──▶ gateway ──▶ edge ──▶ device
//! ```

pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod hub;
pub mod input;
pub mod jobs;
pub mod links;
pub mod metrics;
pub mod provenance;
pub mod quota;
pub mod rules;
pub mod ruleset;
pub mod server;
pub mod sql;
pub mod state;
pub mod store;
pub mod tokens;
pub mod webhook;

pub use config::CloudConfig;
pub use error::Error;
pub use server::{AppState, Cloud};
