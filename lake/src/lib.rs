//! # twinlake-lake: the lake format, in one place
//!
//! What a row of the lake is and how it is stored, shared by the gateway that writes files
//! and the cloud that reads them:
//!
//! * [`model`]: how a PSON payload becomes a row's fields (the flattening rules) and the
//!   rules for table names;
//! * [`columns`]: the fixed columns, the column types and how files' schemas merge;
//! * [`buffer`]: rows in Arrow, by table, sorted and split into hours when sealed;
//! * [`path`]: a file's place in the lake, typed, built and parsed in one place;
//! * [`file`]: the Parquet writer settings and the metadata (format version) the catalog
//!   reads;
//! * [`dense`]: the day tier's exact narrower encodings (format 3);
//! * [`retention`]: how long each table is kept.
//!
//! It depends on arrow, parquet and the SDK's PSON codec only, so a gateway build carries
//! none of the cloud.

pub mod buffer;
pub mod columns;
pub mod dense;
pub mod file;
pub mod model;
pub mod path;
pub mod retention;

pub use path::{Hour, LakePath};

/// What can go wrong with the lake format.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("writer settings: {0}")]
    Settings(String),
    #[error("lake format: {0}")]
    Format(String),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}
