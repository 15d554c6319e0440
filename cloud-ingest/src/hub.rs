//! The shared state of resource streams and live reads: who subscribes to what, and the
//! values read live that wait to be recorded. The behaviour is in [`crate::control`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::mpsc;
use twinlake_twin::TwinKey;

/// The subscribers of one device resource: (subscription id, the interval it asked for).
type Subscribers = Vec<(u64, Option<Duration>)>;

/// What a device was last asked of one stream: nothing (not streaming), or to stream at an
/// interval (`None`: on change).
pub(crate) type Asked = Option<Option<Duration>>;

/// One device resource's stream: its subscribers, and the lock that orders the requests
/// starting, changing and stopping it (holding what the device was last asked).
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub(crate) subscribers: Subscribers,
    pub(crate) control: Arc<tokio::sync::Mutex<Asked>>,
}

/// Subscribers per device resource, sharing one device stream.
#[derive(Debug, Default)]
pub struct StreamHub {
    pub(crate) subs: Mutex<HashMap<(TwinKey, String), Stream>>,
    pub(crate) next: std::sync::atomic::AtomicU64,
}

/// One value read live from a device, to record as reported.
#[derive(Debug)]
pub(crate) struct ReadValue {
    pub(crate) key: TwinKey,
    pub(crate) path: String,
    pub(crate) value: Json,
    pub(crate) at: u64,
    /// Record it only if the device described the resource as an output.
    pub(crate) only_outputs: bool,
}

/// Values read live from devices, recorded as reported off the request path, many per commit.
/// Bounded: when full, a read value is not recorded (streams report the resource anyway).
#[derive(Debug)]
pub struct ReadReports {
    pub(crate) tx: mpsc::Sender<ReadValue>,
    pub(crate) rx: Mutex<Option<mpsc::Receiver<ReadValue>>>,
}

impl Default for ReadReports {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(4096);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl ReadReports {
    /// Queues a value read from `key`'s `path`.
    pub fn push(&self, key: &TwinKey, path: &str, value: Json, only_outputs: bool) {
        let _ = self.tx.try_send(ReadValue {
            key: key.clone(),
            path: path.to_owned(),
            value: twinlake_twin::unwrap_io(value),
            at: twinlake_twin::now_ms(),
            only_outputs,
        });
    }
}
