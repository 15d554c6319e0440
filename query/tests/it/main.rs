//! The query crate's tests: one binary (each binary that links DataFusion costs a slow link).
// Test code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod clients;
mod days;
mod lake;
mod props;
mod retention;
mod rollups;
mod slt;
mod support;
