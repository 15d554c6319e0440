//! # twinlake-twin: the digital twin of every device
//!
//! The cloud keeps one twin per device, fed by the gateway link (presence and reported
//! values) and by API users (desired state). A twin holds:
//!
//! - `reported`: resource path → the last value the device sent for it (a stream sample, an
//!   event, or the answer to a read), with the `{"in"|"out": …}` wrapper taken off;
//! - `desired`: resource path → the value an API user wants, changed by RFC 7386 merge
//!   patches (`null` deletes);
//! - `delta`: the desired fields that reported does not match, computed on the server the
//!   way AWS IoT shadows do (objects field by field, everything else as a whole);
//! - `version`, bumped by every change, for optimistic concurrency;
//! - per-field metadata: `{"timestamp": ms}` at every leaf of reported and desired;
//! - connection state (online, gateway, IP, connected at, last seen, rx/tx bytes), the
//!   device's resource description, and tags.
//!
//! Twins are stored as JSON in one redb table keyed `user/device`; documents are bounded
//! ([`Limits::max_doc_bytes`]) and a change that would pass the bound is refused with
//! [`TwinError::TooLarge`]. Changes happen in [`TwinStore::write`] transactions, which the
//! caller can share with its own tables (the cloud records gateway sequence numbers in the
//! same commit, which makes replayed link messages harmless). After a commit, every change
//! goes out on the change feed ([`TwinStore::subscribe`]) as a [`TwinEvent`] whose JSON is
//! rendered once for all subscribers.

pub mod doc;
pub mod store;

pub use doc::{Connection, Twin, resource_kind, unwrap_io};
pub use store::{EventKind, Limits, TwinEvent, TwinStore, TwinTxn};

/// A device's identity: its account and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TwinKey {
    pub user: String,
    pub device: String,
}

impl TwinKey {
    /// The key of `device` in `user`'s account.
    pub fn new(user: &str, device: &str) -> Self {
        Self {
            user: user.into(),
            device: device.into(),
        }
    }

    /// Parses `user/device`.
    pub fn parse(s: &str) -> Option<Self> {
        let (u, d) = s.split_once('/')?;
        (!u.is_empty() && !d.is_empty()).then(|| Self::new(u, d))
    }
}

impl std::fmt::Display for TwinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// Everything that can go wrong with twins.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TwinError {
    #[error("no twin for device {0}")]
    NotFound(String),
    #[error("twin {key} is at version {actual}, not {expected}")]
    VersionConflict { key: String, expected: u64, actual: u64 },
    #[error("twin {key} would be {bytes} bytes; the limit is {limit}")]
    TooLarge { key: String, bytes: usize, limit: usize },
    #[error("twin storage: {0}")]
    Storage(String),
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
