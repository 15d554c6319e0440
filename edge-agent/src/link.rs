//! The gateway link: the edge agent's connection out to the cloud.
//!
//! The agent dials the cloud (WebSocket, normally over TLS, `Authorization: Bearer
//! <gateway token>`), so gateways behind NAT work. Every message is one JSON text frame,
//! but for batches to a cloud that takes them as binary frames ([`wire`]).
//!
//! ```text
//! edge → cloud   hello {gateway, session, protocol}
//! cloud → edge   welcome {acked}                    the last batch seq it applied for this session
//! edge → cloud   batch {seq, items[]}               presence, described, reported, endpoint, property, rows, file
//! cloud → edge   ack {through}                      cumulative
//! cloud → edge   registry {devices[]}               the full set of this gateway's devices
//! cloud → edge   request {id, user, device, op}     describe/read/write/call/run/stream/property
//! edge → cloud   reply {id, ok, value | error}
//! ```
//!
//! **Delivery.** Batches are at-least-once: each has a sequence number, the edge keeps it until
//! the cloud acknowledges it, and after a reconnect it sends again every batch past the
//! `welcome`'s `acked`. The cloud applies a batch and records its seq in one transaction, so a
//! batch that arrives twice is applied once. A `session` is one run of the agent; a restarted
//! agent starts a new one at seq 1.
//!
//! **Bounds.** At most `link.max_unacked` batches are in flight; past that the agent stops
//! sending and what waits coalesces ([`Uplink`]): the newest reported value per device and
//! resource, the newest presence per device. Endpoint calls wait in their own bounded queue
//! (oldest dropped, counted) and file commits in [`Uplink`]'s (likewise).
//!
//! **Cloud to edge** is state, not a log: the registry is sent whole on every connect, and
//! the cloud re-derives desired-state writes whenever a device comes online. Requests are
//! answered once or fail with the link; the cloud's caller sees an error, never a stale answer.

pub mod client;
pub mod direct;
pub mod feed;
mod frames;
mod requests;
pub mod rows;
pub mod wire;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::Notify;

use crate::event::DeviceKey;
use crate::metrics::Metrics;
use crate::outbox::FileEntry;

pub use client::{Connector, LinkClient, LinkIo};
pub use direct::{Direct, DirectWrite, LinkTx, SharedSink, write_queued};
pub use requests::Requests;
pub use rows::{FreshGroup, FreshRows};
pub use wire::LinkMsg;
pub use ws::WsConnector;

/// The link's version; both ends refuse another.
pub const PROTOCOL: u32 = 1;
/// Where the cloud serves the link.
pub const LINK_PATH: &str = "/v1/gateway/link";
/// Items per batch at most.
pub const MAX_BATCH_ITEMS: usize = 2048;
/// A batch frame's size at most; a larger one is split (the cloud takes up to 64 MiB). A
/// backlog of fresh rows once made one batch of a million rows, over the cloud's limit: the
/// link dropped, reconnected and sent it again, for ever, and nothing went up.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// A batch's fresh rows at most, by an estimate of their JSON (three times the WAL record
/// and an envelope per row), so a batch is rarely split after encoding.
const BATCH_ROW_BYTES: usize = 4 << 20;

/// Edge → cloud.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    Hello {
        gateway: String,
        session: String,
        protocol: u32,
    },
    Batch {
        seq: u64,
        items: Vec<Item>,
    },
    Reply(Reply),
    /// The gateway's queues, every few seconds, to a cloud whose welcome listed
    /// [`FEATURE_STATUS`] (a cloud before it never gets one).
    Status(GatewayStatus),
}

/// What a welcome's `features` may list: the cloud takes [`Up::Status`].
pub const FEATURE_STATUS: &str = "status";
/// What a welcome's `features` may list: the cloud takes [`Item::PsonRows`] (a cloud before
/// it gets fresh rows as [`Item::Rows`]).
pub const FEATURE_PSON_ROWS: &str = "pson_rows";
/// What a welcome's `features` may list: the cloud takes batches as binary frames
/// ([`wire`]); a cloud before it gets them as JSON text. Sent only with [`FEATURE_PSON_ROWS`].
pub const FEATURE_BINARY_BATCHES: &str = "binary_batches";

/// A gateway's queue depths, as its metrics have them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Parquet files sealed and not yet uploaded, and their bytes.
    pub upload_files: i64,
    pub upload_bytes: i64,
    /// Rows in the Arrow buffer, not yet sealed.
    pub buffer_rows: i64,
    /// Link batches sent and not yet acknowledged.
    pub unacked_batches: i64,
    pub devices_connected: i64,
}

/// Cloud → edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    Welcome {
        acked: u64,
        /// What this cloud takes beyond the protocol ([`FEATURE_STATUS`]); an agent
        /// before it ignores the field.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// The cloud will not take this link (another link protocol, or a hello for another
    /// gateway), and says why before it closes.
    Refused {
        reason: String,
        /// The link protocol the cloud speaks.
        protocol: u32,
    },
    Ack {
        through: u64,
    },
    Registry {
        devices: Vec<RegistryEntry>,
        /// The PBKDF2 iterations the cloud hashes chosen credentials with: a device whose
        /// hash is weaker is rehashed at its next login ([`Item::Rehash`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential_iterations: Option<u32>,
    },
    Request {
        id: u64,
        user: String,
        device: String,
        #[serde(flatten)]
        op: Op,
    },
    /// The rules the cloud placed on this gateway (all of them, each time they change).
    Rules {
        rules: Vec<twinlake_rules::Rule>,
        /// The cloud's retention (`[sql.retention]`): the gateway refuses rows already past
        /// it. Absent from clouds before it (the gateway keeps its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention: Option<twinlake_lake::retention::RetentionConfig>,
    },
}

/// One thing that happened at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// A device connected or disconnected.
    Presence {
        user: String,
        device: String,
        online: bool,
        at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
        #[serde(default)]
        rx_bytes: u64,
        #[serde(default)]
        tx_bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// How it connected (`thinger`, `mqtt`, `lorawan`); on a connect only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<String>,
    },
    /// A device's resource description (`api`), read after it connected.
    Described {
        user: String,
        device: String,
        resources: Json,
    },
    /// A resource value from a stream (the newest, if several waited).
    Reported {
        user: String,
        device: String,
        path: String,
        at: u64,
        value: Json,
    },
    /// A device's CALL_ENDPOINT.
    Endpoint {
        user: String,
        device: String,
        endpoint: String,
        at: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Json>,
    },
    /// A device's SET_PROPERTY.
    Property {
        user: String,
        device: String,
        property: String,
        value: Json,
    },
    /// Rows made durable in the WAL, for the cloud to query before their file lands.
    /// `segment` is their WAL segment: they are in the first seal numbered at or above it.
    Rows {
        table: String,
        segment: u64,
        /// Payloads of a resource stream (with the in/out wrapper).
        #[serde(default)]
        stream: bool,
        /// The user whose devices these are; none from a gateway older than the `owner`
        /// column (the cloud then goes by the gateway's registered devices).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// `[time µs, device, payload]`.
        rows: Vec<(i64, String, Json)>,
    },
    /// [`Item::Rows`] with the payloads as the WAL holds them (PSON), in one block.
    PsonRows {
        table: String,
        segment: u64,
        #[serde(default)]
        stream: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        rows: rows::RowBlock,
    },
    /// A device's credential hash, made stronger at a login: `new` replaces `old` in the
    /// cloud's record if that still holds `old`.
    Rehash {
        user: String,
        device: String,
        old: String,
        new: String,
    },
    /// A Parquet file that landed in the object store.
    File {
        gateway: String,
        #[serde(flatten)]
        file: FileEntry,
    },
}

/// What the cloud asks of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Describe,
    Template {
        path: String,
    },
    Read {
        path: String,
    },
    Write {
        path: String,
        value: Json,
    },
    Call {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Json>,
    },
    Run {
        path: String,
    },
    /// Streams at `interval_ms` (or on change with none) at least as often as the edge's own
    /// ingest stream for that resource.
    StartStream {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_ms: Option<u64>,
    },
    /// Back to the edge's own ingest stream for that resource.
    StopStream {
        path: String,
    },
    SetProperty {
        property: String,
        value: Json,
    },
}

/// The answer to a [`Down::Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RemoteError>,
}

/// Why a request failed at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The classes of [`RemoteError`], which the cloud maps to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The device is not connected (503).
    Offline,
    /// The device did not answer in time (504).
    Timeout,
    /// The device answered with an error: an unknown resource, or its handler failed.
    DeviceError,
    /// The request makes no sense (400).
    BadRequest,
}

/// A device the cloud lets this gateway accept; `credential_hash: None` removes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub user: String,
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_hash: Option<String>,
    /// Properties the device can read with GET_PROPERTY.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, Json>,
}

/// What waits to go up, coalesced where only the newest matters.
///
/// Bounded: reported values by (device, resource), presence and descriptions by device,
/// properties by (device, property); file commits in a queue of `max_files` that drops the
/// oldest (counted in `link_files_dropped`; the cloud's catalog can be rebuilt from a listing);
/// fresh rows in a queue of `max_rows` that drops the oldest (counted in `link_rows_dropped`;
/// the cloud sees those rows when their file lands).
///
/// Rows go before files: a file's rows always reach the cloud before the file does, so the
/// cloud never keeps a fresh row its file already holds.
#[derive(Debug, Clone)]
pub struct Uplink {
    inner: Arc<(Mutex<Waiting>, Notify)>,
    max_files: usize,
    max_rows: usize,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct Waiting {
    presence: HashMap<DeviceKey, Item>,
    described: HashMap<DeviceKey, Json>,
    reported: HashMap<(DeviceKey, String), (u64, Json)>,
    properties: HashMap<(DeviceKey, String), Json>,
    /// Fresh rows in blocks, and how many rows they hold.
    rows: VecDeque<rows::FreshBlock>,
    row_count: usize,
    files: VecDeque<Item>,
}

impl Waiting {
    fn len(&self) -> usize {
        self.presence.len()
            + self.described.len()
            + self.reported.len()
            + self.properties.len()
            + self.rows.len()
            + self.files.len()
    }
}

impl Uplink {
    /// An empty uplink queue holding at most `max_files` file commits and `max_rows` rows.
    pub fn new(max_files: usize, max_rows: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::default(),
            max_files: max_files.max(1),
            max_rows,
            metrics,
        }
    }

    /// Whether fresh rows are sent at all.
    pub fn sends_rows(&self) -> bool {
        self.max_rows > 0
    }

    /// Rows made durable, for the cloud to query before their file lands.
    pub fn rows(&self, fresh: rows::FreshRows) {
        if self.max_rows == 0 || fresh.is_empty() {
            return;
        }
        let max = self.max_rows;
        let mut dropped = 0;
        self.with(|w| {
            for b in fresh.blocks {
                w.row_count += b.rows;
                w.rows.push_back(b);
            }
            // The oldest rows go first, whole blocks while they fit in what is over.
            while w.row_count > max {
                let over = w.row_count - max;
                let Some(front) = w.rows.front_mut() else { break };
                let n = front.rows.min(over);
                if n == front.rows {
                    w.rows.pop_front();
                } else {
                    front.drop_front(n);
                }
                w.row_count -= n;
                dropped += n;
            }
        });
        self.metrics.link_rows_dropped.inc_by(dropped as u64);
    }

    fn with(&self, f: impl FnOnce(&mut Waiting)) {
        if let Ok(mut w) = self.inner.0.lock() {
            f(&mut w);
        }
        self.inner.1.notify_one();
    }

    /// A device connected or disconnected. A presence change replaces any that waits, and a
    /// disconnect clears the device's waiting description.
    pub fn presence(&self, key: &DeviceKey, item: Item) {
        self.with(|w| {
            if matches!(item, Item::Presence { online: false, .. }) {
                w.described.remove(key);
            }
            w.presence.insert(key.clone(), item);
        });
    }

    /// A device's description.
    pub fn described(&self, key: &DeviceKey, resources: Json) {
        self.with(|w| {
            w.described.insert(key.clone(), resources);
        });
    }

    /// A resource value; a newer one replaces an older one still waiting.
    pub fn reported(&self, key: &DeviceKey, path: String, at: u64, value: Json) {
        self.with(|w| {
            let slot = w.reported.entry((key.clone(), path)).or_insert((at, Json::Null));
            if at >= slot.0 {
                *slot = (at, value);
            }
        });
    }

    /// A property the device set.
    pub fn property(&self, key: &DeviceKey, property: String, value: Json) {
        self.with(|w| {
            w.properties.insert((key.clone(), property), value);
        });
    }

    /// A file that landed in the store.
    pub fn file(&self, gateway: &str, file: FileEntry) {
        let metrics = self.metrics.clone();
        let max = self.max_files;
        self.with(|w| {
            if w.files.len() >= max {
                w.files.pop_front();
                metrics.link_files_dropped.inc();
            }
            w.files.push_back(Item::File {
                gateway: gateway.to_owned(),
                file,
            });
        });
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.inner.0.lock().map(|w| w.len()).unwrap_or_default()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something may be waiting.
    pub async fn notified(&self) {
        self.inner.1.notified().await;
    }

    /// Takes up to `max` items: presence first (a device's connect comes before its values),
    /// then descriptions, values, properties, fresh rows (as [`Item::PsonRows`] if `pson`,
    /// else [`Item::Rows`]) and files.
    pub fn take(&self, max: usize, pson: bool, out: &mut Vec<Item>) {
        let Ok(mut w) = self.inner.0.lock() else { return };
        let room = |out: &Vec<Item>| out.len() < max;
        take_map(&mut w.presence, out, max, |_, item| item);
        take_map(&mut w.described, out, max, |key, resources| Item::Described {
            user: key.user,
            device: key.device,
            resources,
        });
        take_map(&mut w.reported, out, max, |(key, path), (at, value)| Item::Reported {
            user: key.user,
            device: key.device,
            path,
            at,
            value,
        });
        take_map(&mut w.properties, out, max, |(key, property), value| Item::Property {
            user: key.user,
            device: key.device,
            property,
            value,
        });
        let mut budget = BATCH_ROW_BYTES;
        while room(out) && budget > 0 {
            let Some(block) = w.rows.pop_front() else { break };
            w.row_count -= block.rows;
            budget = budget.saturating_sub(block.cost);
            out.push(block.into_item(pson));
        }
        // Files only once every row before them is out.
        while room(out) && w.rows.is_empty() {
            let Some(f) = w.files.pop_front() else { break };
            out.push(f);
        }
    }
}

fn take_map<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    out: &mut Vec<Item>,
    max: usize,
    make: impl Fn(K, V) -> Item,
) {
    if map.len() <= max.saturating_sub(out.len()) {
        out.extend(map.drain().map(|(k, v)| make(k, v)));
        return;
    }
    let keys: Vec<K> = map.keys().take(max.saturating_sub(out.len())).cloned().collect();
    for k in keys {
        if let Some(v) = map.remove(&k) {
            out.push(make(k, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_have_a_stable_json_shape() {
        let up = Up::Batch {
            seq: 7,
            items: vec![Item::Reported {
                user: "u".into(),
                device: "d".into(),
                path: "temp".into(),
                at: 5,
                value: json!(21.5),
            }],
        };
        let s = serde_json::to_string(&up).unwrap();
        assert_eq!(
            s,
            r#"{"type":"batch","seq":7,"items":[{"kind":"reported","user":"u","device":"d","path":"temp","at":5,"value":21.5}]}"#
        );
        assert_eq!(serde_json::from_str::<Up>(&s).unwrap(), up);
        let down: Down = serde_json::from_str(
            r#"{"type":"request","id":1,"user":"u","device":"d","op":"write","path":"led","value":true}"#,
        )
        .unwrap();
        assert_eq!(
            down,
            Down::Request {
                id: 1,
                user: "u".into(),
                device: "d".into(),
                op: Op::Write {
                    path: "led".into(),
                    value: json!(true)
                }
            }
        );
        assert!(serde_json::from_str::<Down>(r#"{"type":"request","id":1}"#).is_err());
    }

    #[test]
    fn the_uplink_keeps_the_newest_value_and_bounds_files() {
        let u = Uplink::new(2, 10, Arc::default());
        let k = DeviceKey::new("u", "d");
        u.reported(&k, "temp".into(), 2, json!(2));
        u.reported(&k, "temp".into(), 1, json!(1));
        u.reported(&k, "hum".into(), 1, json!(40));
        for i in 0..3 {
            u.file(
                "gw",
                FileEntry {
                    path: format!("f{i}"),
                    table: "t".into(),
                    rows: 1,
                    bytes: 1,
                    min_time_us: 0,
                    max_time_us: 0,
                },
            );
        }
        u.presence(
            &k,
            Item::Presence {
                user: "u".into(),
                device: "d".into(),
                online: true,
                at: 1,
                ip: None,
                rx_bytes: 0,
                tx_bytes: 0,
                reason: None,
                protocol: None,
            },
        );
        assert_eq!(u.len(), 5);
        let mut out = Vec::new();
        u.take(100, true, &mut out);
        assert!(matches!(out.first(), Some(Item::Presence { .. })));
        let temp = out.iter().find_map(|i| match i {
            Item::Reported { path, value, .. } if path == "temp" => Some(value.clone()),
            _ => None,
        });
        assert_eq!(temp, Some(json!(2)));
        let files: Vec<&str> = out
            .iter()
            .filter_map(|i| match i {
                Item::File { file, .. } => Some(file.path.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(files, ["f1", "f2"]);
        assert!(u.is_empty());
    }

    /// The queue keeps the newest `max_rows` rows exactly, dropping the oldest (whole blocks,
    /// then rows from the front of one) and counting what it drops.
    #[test]
    fn a_full_row_queue_drops_the_oldest_rows_exactly() {
        let metrics = Arc::new(Metrics::default());
        let u = Uplink::new(16, 700, metrics.clone());
        let group = FreshGroup {
            table: "t",
            segment: 1,
            stream: false,
            owner: "u",
        };
        let mut time = 0;
        for batch in [600, 300, 250] {
            let mut fresh = FreshRows::default();
            for _ in 0..batch {
                fresh.push(group, time, "d", &[0x12]);
                time += 1;
            }
            u.rows(fresh);
        }
        assert_eq!(metrics.link_rows_dropped.get(), 1150 - 700);
        let mut items = Vec::new();
        u.take(MAX_BATCH_ITEMS, true, &mut items);
        let times: Vec<i64> = items
            .iter()
            .flat_map(|i| match i {
                Item::PsonRows { rows, .. } => rows.iter().map(|r| r.unwrap().time_us).collect::<Vec<_>>(),
                other => panic!("only rows wait: {other:?}"),
            })
            .collect();
        assert_eq!(times, (450..1150).collect::<Vec<i64>>(), "the newest 700, in order");
        assert!(u.is_empty());
    }

    /// A backlog of fresh rows (an agent that took bucket writes faster than the link sent
    /// them) goes up in batches far below the cloud's message limit, in order, in either row
    /// format: one batch of a million rows once exceeded it, and the link looped on it for ever.
    #[test]
    fn a_backlog_of_rows_goes_up_in_bounded_batches() {
        for pson in [true, false] {
            let n = 400_000;
            let u = Uplink::new(16, n, Arc::default());
            let payload = json!({"latitude": 52.1, "longitude": 4.3, "elevation": 12.0, "velocity": 80.5,
                "heading": 270.0, "grade": 1.5, "fuel_consumption": 25.4});
            let payload = twinlake_sdk::json::from_json(&payload).to_bytes();
            let mut fresh = FreshRows::default();
            let group = FreshGroup {
                table: "readings",
                segment: 1,
                stream: false,
                owner: "u",
            };
            for i in 0..n {
                fresh.push(group, i as i64, &format!("truck-{}", i % 50), &payload);
            }
            u.rows(fresh);
            let (mut next, mut batches) = (0i64, 0);
            loop {
                let mut items = Vec::new();
                u.take(MAX_BATCH_ITEMS, pson, &mut items);
                if items.is_empty() {
                    break;
                }
                batches += 1;
                let frame = serde_json::to_string(&Up::Batch {
                    seq: 1,
                    items: items.clone(),
                })
                .unwrap();
                assert!(frame.len() <= MAX_FRAME_BYTES, "a batch of {} bytes", frame.len());
                for item in items {
                    let times: Vec<i64> = match item {
                        Item::Rows { rows, .. } if !pson => rows.iter().map(|r| r.0).collect(),
                        Item::PsonRows { rows, .. } if pson => rows.iter().map(|r| r.unwrap().time_us).collect(),
                        other => panic!("only rows wait, in the format asked for: {other:?}"),
                    };
                    for t in times {
                        assert_eq!(t, next, "rows go up in order");
                        next += 1;
                    }
                }
            }
            assert_eq!(next, n as i64, "every row went up");
            assert!(batches > 10, "{batches} batches");
        }
    }
}
