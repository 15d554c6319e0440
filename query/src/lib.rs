//! Twinlake SQL: DataFusion over the Parquet lake, fresh rows from the edges, the twins and
//! the device registry, served over HTTP, the Postgres wire protocol and Flight SQL.
//!
//! * [`catalog`]: the durable catalog of committed files, rebuildable from a listing.
//! * [`lake`]: fresh rows, pruning, and the table provider that reads both exactly once.
//! * [`system`]: the `twins` and `devices` tables.
//! * [`functions`], [`gapfill`]: `time_bucket`, `first`/`last`, JSON access, gap filling.
//! * [`engine`]: the sessions every surface plans in; [`session`]: what a session may do
//!   (read only, the lake's store only) and its limits.
//! * [`pg`]: the Postgres wire listener; [`flight`]: Arrow Flight SQL; [`output`]: HTTP result
//!   encodings.

pub mod catalog;
pub mod compact;
pub mod days;
pub mod engine;
pub mod fields;
pub mod flight;
pub mod functions;
pub mod gapfill;
pub mod lake;
pub mod output;
pub mod pg;
pub mod provenance;
pub mod retention;
pub mod rollup;
pub mod session;
pub mod shape;
pub mod system;
pub mod tenant;
pub mod upkeep;

pub use engine::Engine;

/// Now, µs since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}
pub use lake::{FreshLimits, FreshRow, Lake};

/// What can go wrong in the query crate.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Lake(#[from] twinlake_lake::LakeError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// Refused before it ran: not read-only, not allowed, or not one statement.
    #[error("{0}")]
    Refused(String),
    /// Too big, or a name of too many parts, to be parsed safely ([`shape`]).
    #[error("{0}")]
    TooComplex(String),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for QueryError {
            fn from(e: $t) -> Self {
                QueryError::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
