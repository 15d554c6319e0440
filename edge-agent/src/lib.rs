//! # twinlake-edge: the gateway end of the data path
//!
//! Devices connect here first. The [`listener`] speaks the Thinger.io classic protocol over
//! TCP (default port 25200) and TLS (25202) on the `twinlake-sdk` codec: it authenticates
//! each device, keeps its connection alive, lets the platform describe, read, write, call
//! and stream its resources through a [`listener::DeviceHandle`], and hands everything the
//! device sends on as [`listener::DeviceEvent`]s over a bounded channel.
//!
//! Later stages of the agent (WAL, Arrow buffer, Parquet, upload) consume those events.

pub mod error;
pub mod listener;

pub use error::Error;
