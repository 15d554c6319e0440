//! The linked gateways' shared state: their sessions, where each device is, what each may
//! write rows for, and why a live request failed. The behaviour is in [`crate::gateway`]
//! and [`crate::provenance`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use twinlake_edge::link::{RemoteError, Reply};
use twinlake_twin::TwinKey;

/// Why a live request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlError {
    /// The device (or its gateway) is not connected.
    Offline(String),
    /// No answer within the deadline.
    Timeout(Duration),
    /// The device or the edge refused.
    Remote(RemoteError),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Offline(m) => f.write_str(m),
            Self::Timeout(d) => write!(f, "the device did not answer within {} ms", d.as_millis()),
            Self::Remote(e) => f.write_str(&e.message),
        }
    }
}

/// One linked gateway.
#[derive(Debug)]
pub(crate) struct Session {
    /// The link's writer queue, and its socket for requests written from the requesting
    /// task when it takes them.
    pub(crate) tx: twinlake_edge::link::LinkTx,
    pub(crate) pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    pub(crate) epoch: u64,
    /// Requests in flight at most (`link.max_inflight`): more wait, within their timeout.
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
}

/// The linked gateways and where each device is.
#[derive(Debug)]
pub struct Gateways {
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) located: Mutex<HashMap<TwinKey, String>>,
    pub(crate) next_id: AtomicU64,
    pub(crate) next_epoch: AtomicU64,
    /// Bumped when the registry changes, so every session resends its gateway's devices.
    pub registry_version: watch::Sender<u64>,
    /// What each gateway may write rows for (see [`crate::provenance`]).
    pub allowed: AllowedCache,
    /// When each gateway's last link closed (ms), while it is not linked.
    pub(crate) unlinked_since: Mutex<HashMap<String, u64>>,
    /// Each gateway's last queue report and when it came (ms).
    pub(crate) reports: Mutex<HashMap<String, (u64, twinlake_edge::link::GatewayStatus)>>,
}

impl Default for Gateways {
    fn default() -> Self {
        Self {
            sessions: Mutex::default(),
            located: Mutex::default(),
            next_id: AtomicU64::new(1),
            next_epoch: AtomicU64::new(1),
            registry_version: watch::channel(0).0,
            allowed: Default::default(),
            unlinked_since: Mutex::default(),
            reports: Mutex::default(),
        }
    }
}

impl Gateways {
    /// Whether `gateway` is linked now.
    /// A gateway's queue report (`Up::Status`).
    pub fn report(&self, gateway: &str, status: twinlake_edge::link::GatewayStatus) {
        if let Ok(mut r) = self.reports.lock() {
            r.insert(gateway.to_owned(), (twinlake_twin::now_ms(), status));
        }
    }

    /// A gateway's last queue report and when it came (ms).
    pub fn last_report(&self, gateway: &str) -> Option<(u64, twinlake_edge::link::GatewayStatus)> {
        self.reports.lock().ok()?.get(gateway).cloned()
    }

    pub fn is_linked(&self, gateway: &str) -> bool {
        self.sessions.lock().is_ok_and(|s| s.contains_key(gateway))
    }

    /// Since when `gateway` has not been linked (ms): when its link closed, or `started`
    /// (this process's start) if it has not linked since; none while it is linked.
    pub fn unlinked_since(&self, gateway: &str, started: u64) -> Option<u64> {
        if self.is_linked(gateway) {
            return None;
        }
        let since = self.unlinked_since.lock().ok().and_then(|m| m.get(gateway).copied());
        Some(since.unwrap_or(started))
    }

    /// Notes a link opening (`linked`) or closing.
    pub(crate) fn note_link(&self, gateway: &str, linked: bool) {
        if let Ok(mut m) = self.unlinked_since.lock() {
            if linked {
                m.remove(gateway);
            } else {
                m.insert(gateway.to_owned(), twinlake_twin::now_ms());
            }
        }
    }
}

/// What gateway `g` may write rows for: the `(user, device)` pairs registered to it, and any
/// device of the users an admin bound it to. A row whose user is not known (`owner` null:
/// a file or WAL from before the column) may be of any device registered to `g`, or of any
/// device at all when `g` is bound to users.
#[derive(Debug)]
pub struct Allowed {
    /// The devices registered to the gateway, by user.
    pub(crate) registered: HashMap<String, HashSet<String>>,
    pub(crate) devices: HashSet<String>,
    pub(crate) users: HashSet<String>,
}

/// Each gateway's [`Allowed`], as of a registry version: rebuilt only when the registry
/// changed, so the link's fresh rows are checked without reading the registry each batch.
#[derive(Debug, Default)]
pub struct AllowedCache(pub(crate) std::sync::Mutex<std::collections::HashMap<String, (u64, std::sync::Arc<Allowed>)>>);
