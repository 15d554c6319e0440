//! End-to-end over real sockets: the cloud, an edge agent linked to it over WebSocket, and
//! SDK devices on TCP.
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod adversarial_gateway;
mod adversarial_http;
mod adversarial_sql;
mod adversarial_tenancy;
mod auth;
mod link;
mod live;
#[allow(dead_code)]
#[path = "../../../edge-agent/tests/it/mosquitto.rs"]
mod mosquitto;
#[path = "../../../edge-agent/tests/it/net.rs"]
mod net;
mod openapi;
mod rules;
mod sql;
mod streams;
mod support;
mod twins;
