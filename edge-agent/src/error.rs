//! The edge agent's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the edge agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("device {0} is not connected")]
    DeviceOffline(String),
    #[error("device {device} did not answer within {timeout_ms} ms")]
    DeviceTimeout { device: String, timeout_ms: u64 },
    #[error("device {device} answered the request on {path} with an error")]
    DeviceError { device: String, path: String },
    #[error("device {0} disconnected before answering")]
    Disconnected(String),
    #[error("cloud link: {0}")]
    Link(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("damaged state: {0}")]
    Corrupt(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Lake(#[from] twinlake_lake::LakeError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
}

/// Reads a whole file; the error names it.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

impl Error {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::DeviceOffline(_)
                | Error::DeviceTimeout { .. }
                | Error::Disconnected(_)
                | Error::Link(_)
                | Error::ObjectStore(_)
                | Error::Io(_)
        )
    }
}
