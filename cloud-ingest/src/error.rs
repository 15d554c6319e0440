//! The cloud's errors, and how the API shows them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use twinlake_twin::TwinError;

/// Everything that can go wrong in the cloud.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Twin(#[from] TwinError),
    #[error(transparent)]
    Edge(#[from] twinlake_edge::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(redb::Error::from(e).to_string())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// An API error: a status and a message for the client. Internals are logged, not shown.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "status": self.status.as_u16(), "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Twin(t) => t.into(),
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log")
            }
        }
    }
}

impl From<TwinError> for ApiError {
    fn from(e: TwinError) -> Self {
        let status = match &e {
            TwinError::NotFound(_) => StatusCode::NOT_FOUND,
            TwinError::VersionConflict { .. } => StatusCode::CONFLICT,
            TwinError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TwinError::Storage(_) => {
                tracing::error!(error = %e, "twin storage");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the server log");
            }
        };
        ApiError::new(status, e.to_string())
    }
}
