//! Integration tests of the edge agent over real sockets (one test binary per crate).
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod adversarial;
mod coap_device;
mod config;
mod exchange;
mod gwmp_props;
mod http_device;
mod ingest;
mod lake;
mod link_props;
mod mosquitto;
mod net;
mod s3;
mod sdk_device;
mod sources;
mod support;
mod wal_props;
