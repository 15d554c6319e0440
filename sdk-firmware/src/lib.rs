//! # twinlake-sdk: the device end of the data path
//!
//! Devices speak the Thinger.io classic protocol with PSON-encoded values over TCP or TLS
//! (`shared/specs/device-protocol.md`). This crate is that wire, byte for byte, and the
//! device runtime on top of it. The edge agent's listener uses the same codec, so the two
//! ends can never disagree about a byte.
//!
//! Layers, from the bytes up:
//!
//! | module | needs | what it is |
//! |---|---|---|
//! | [`varint`] | core | base-128 varints with the device's 5/10-byte limits |
//! | [`pson`] | core (+ `alloc` for [`pson::Value`]) | PSON values: zero-copy [`pson::ValueRef`] and owned [`pson::Value`] |
//! | [`frame`] | core (+ `alloc` for owned messages) | frames, message fields, signal flags; a sans-IO incremental decoder |
//! | [`device`] | `alloc` | the sans-IO device runtime: resource tree, `api` describe, streams, requests |
//! | [`json`] | `std` | JSON ⇄ PSON transcoding |
//! | [`client`] | `std` | a blocking TCP/TLS transport with reconnect back-off that drives [`device::Thing`] |
//!
//! Without any feature the crate is `#![no_std]` and allocation-free: a device can decode
//! frames and values straight out of its receive buffer and encode replies into a slice.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

pub mod frame;
pub mod pson;
pub mod varint;

#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "alloc")]
pub mod device;
#[cfg(feature = "std")]
pub mod json;

mod sink;
pub use sink::{BufferFull, Sink, SliceSink};
