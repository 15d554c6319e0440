//! Twins in redb, changed in transactions that publish a change feed after they commit.

use std::collections::HashMap;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde_json::{Map, Value as Json, json};
use tokio::sync::broadcast;

use crate::doc::{Connection, Twin};
use crate::{TwinError, TwinKey, now_ms};

/// `user/device` → the twin's JSON.
pub const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");

/// Limits on twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest stored document, in bytes.
    pub max_doc_bytes: usize,
    /// Events the change feed holds for a slow subscriber before it misses some.
    pub feed_capacity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_doc_bytes: 64 * 1024,
            feed_capacity: 16 * 1024,
        }
    }
}

/// What changed in a twin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Reported,
    Desired,
    Connection,
    /// The device described its resources (after it connected).
    Described,
    Tags,
    Deleted,
    /// An alarm about the device was raised, repeated, acknowledged or cleared (published
    /// with [`TwinTxn::announce`]; the twin itself does not change).
    Alarm,
}

impl EventKind {
    /// The name subscribers see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Reported => "reported",
            Self::Desired => "desired",
            Self::Connection => "connection",
            Self::Described => "described",
            Self::Tags => "tags",
            Self::Deleted => "deleted",
            Self::Alarm => "alarm",
        }
    }
}

/// One committed change, with its JSON rendered once for every subscriber.
#[derive(Debug, Clone)]
pub struct TwinEvent {
    pub key: TwinKey,
    pub version: u64,
    pub kind: EventKind,
    /// When it happened (the reading's time for `Reported`), ms since the epoch.
    pub at: u64,
    /// For `Reported`: the resource path and its new value.
    pub reported: Option<(String, Json)>,
    /// For `Connection`: whether the device is now online.
    pub online: Option<bool>,
    /// The event as subscribers receive it.
    pub json: Arc<str>,
}

/// The twin table and its change feed.
#[derive(Debug, Clone)]
pub struct TwinStore {
    db: Arc<Database>,
    limits: Limits,
    feed: broadcast::Sender<TwinEvent>,
}

fn storage(e: impl Into<redb::Error>) -> TwinError {
    TwinError::Storage(e.into().to_string())
}

impl TwinStore {
    /// Opens (and creates if needed) the twin table in `db`.
    pub fn open(db: Arc<Database>, limits: Limits) -> Result<Self, TwinError> {
        let tx = db.begin_write().map_err(storage)?;
        tx.open_table(TWINS).map_err(storage)?;
        tx.commit().map_err(storage)?;
        let (feed, _) = broadcast::channel(limits.feed_capacity.max(16));
        Ok(Self { db, limits, feed })
    }

    /// The database the twins live in (other tables can share its transactions).
    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// One twin.
    pub fn get(&self, key: &TwinKey) -> Result<Option<Twin>, TwinError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(TWINS).map_err(storage)?;
        let k = key.to_string();
        match table.get(k.as_str()).map_err(storage)? {
            Some(v) => Ok(Some(Twin::decode(&k, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every twin, or one user's, sorted by key.
    pub fn list(&self, user: Option<&str>) -> Result<Vec<Twin>, TwinError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(TWINS).map_err(storage)?;
        let mut out = Vec::new();
        let prefix = user.map(|u| format!("{u}/"));
        let iter = match &prefix {
            Some(p) => table.range(p.as_str()..).map_err(storage)?,
            None => table.iter().map_err(storage)?,
        };
        for entry in iter {
            let (k, v) = entry.map_err(storage)?;
            if prefix.as_deref().is_some_and(|p| !k.value().starts_with(p)) {
                break;
            }
            out.push(Twin::decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// How many twins there are.
    pub fn count(&self) -> Result<u64, TwinError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let table = tx.open_table(TWINS).map_err(storage)?;
        redb::ReadableTableMetadata::len(&table).map_err(storage)
    }

    /// Every committed change from now on. A subscriber that falls more than the feed's
    /// capacity behind gets `Lagged` and misses the oldest; writers never wait for it.
    pub fn subscribe(&self) -> broadcast::Receiver<TwinEvent> {
        self.feed.subscribe()
    }

    /// Runs `f` in one write transaction (it blocks: call it off the async runtime). On
    /// success the transaction commits durably and its events go out; on error nothing
    /// changes.
    pub fn write<R, E: From<TwinError>>(&self, f: impl FnOnce(&mut TwinTxn<'_>) -> Result<R, E>) -> Result<R, E> {
        let tx = self.db.begin_write().map_err(storage)?;
        let mut t = TwinTxn {
            tx: &tx,
            cache: HashMap::new(),
            events: Vec::new(),
            limits: self.limits,
        };
        let r = f(&mut t)?;
        let events = t.flush()?;
        tx.commit().map_err(storage)?;
        if self.feed.receiver_count() > 0 {
            for e in events {
                let _ = self.feed.send(e);
            }
        }
        Ok(r)
    }
}

struct Cached {
    twin: Option<Twin>,
    dirty: bool,
    /// The stored size, and what changes since added (an estimate until flushed).
    bytes: usize,
}

/// Twin changes inside one transaction. Twins are read once and written back at commit.
pub struct TwinTxn<'a> {
    tx: &'a WriteTransaction,
    cache: HashMap<String, Cached>,
    events: Vec<TwinEvent>,
    limits: Limits,
}

impl std::fmt::Debug for TwinTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinTxn").field("twins", &self.cache.len()).finish()
    }
}

impl TwinTxn<'_> {
    /// The redb transaction, for the caller's own tables.
    pub fn transaction(&self) -> &WriteTransaction {
        self.tx
    }

    fn load(&mut self, key: &TwinKey) -> Result<&mut Cached, TwinError> {
        let k = key.to_string();
        if !self.cache.contains_key(&k) {
            let table = self.tx.open_table(TWINS).map_err(storage)?;
            let loaded = match table.get(k.as_str()).map_err(storage)? {
                Some(v) => {
                    let bytes = v.value().len();
                    Cached {
                        twin: Some(Twin::decode(&k, v.value())?),
                        dirty: false,
                        bytes,
                    }
                }
                None => Cached {
                    twin: None,
                    dirty: false,
                    bytes: 0,
                },
            };
            self.cache.insert(k.clone(), loaded);
        }
        self.cache
            .get_mut(&k)
            .ok_or_else(|| TwinError::Storage("twin cache lost an entry".into()))
    }

    /// A twin as this transaction sees it.
    pub fn get(&mut self, key: &TwinKey) -> Result<Option<&Twin>, TwinError> {
        Ok(self.load(key)?.twin.as_ref())
    }

    /// Creates the twin if there is none; sets its tags either way. Returns whether it is new.
    pub fn create(&mut self, key: &TwinKey, tags: Map<String, Json>) -> Result<bool, TwinError> {
        let now = now_ms();
        let c = self.load(key)?;
        let created = c.twin.is_none();
        let twin = c.twin.get_or_insert_with(|| Twin::new(key, now));
        if !created && twin.tags == tags {
            return Ok(false);
        }
        twin.tags = tags;
        twin.version += 1;
        twin.updated = now;
        c.dirty = true;
        let (version, kind) = (twin.version, if created { EventKind::Created } else { EventKind::Tags });
        let body = json!({ "tags": twin.tags });
        self.event(key, version, kind, now, body, None, None);
        Ok(created)
    }

    /// Deletes a twin. Returns whether there was one.
    pub fn delete(&mut self, key: &TwinKey) -> Result<bool, TwinError> {
        let c = self.load(key)?;
        let Some(old) = c.twin.take() else { return Ok(false) };
        c.dirty = true;
        self.event(
            key,
            old.version + 1,
            EventKind::Deleted,
            now_ms(),
            json!({}),
            None,
            None,
        );
        Ok(true)
    }

    /// Records a reported resource value (creating the twin of a device seen for the first
    /// time). Refused with `TooLarge` if the document would pass the size limit.
    pub fn report(&mut self, key: &TwinKey, path: &str, value: Json, at_ms: u64) -> Result<u64, TwinError> {
        let limit = self.limits.max_doc_bytes;
        let c = self.load(key)?;
        let created = c.twin.is_none();
        let twin = c.twin.get_or_insert_with(|| Twin::new(key, at_ms));
        let added = estimate(&value);
        let old = twin.reported.get(path).map_or(0, estimate);
        let estimated = (c.bytes + added).saturating_sub(old) + 2 * path.len() + 40;
        if estimated > limit {
            if created {
                c.twin = None;
            }
            return Err(TwinError::TooLarge {
                key: key.to_string(),
                bytes: estimated,
                limit,
            });
        }
        c.bytes = estimated;
        twin.report(path, value.clone(), at_ms);
        twin.version += 1;
        twin.updated = at_ms.max(twin.updated);
        c.dirty = true;
        let version = twin.version;
        let delta = (!twin.desired.is_empty()).then(|| twin.delta());
        let mut body = json!({ "state": { "reported": { path: value.clone() } } });
        if let (Some(d), Some(o)) = (delta, body.as_object_mut()) {
            o.insert("delta".into(), Json::Object(d));
        }
        self.event(
            key,
            version,
            EventKind::Reported,
            at_ms,
            body,
            Some((path.to_owned(), value)),
            None,
        );
        Ok(version)
    }

    /// Merges a desired patch. With `expected_version`, refuses (`VersionConflict`) unless
    /// the twin is at exactly that version. Returns the twin after the change.
    pub fn patch_desired(
        &mut self,
        key: &TwinKey,
        patch: &Map<String, Json>,
        expected_version: Option<u64>,
    ) -> Result<Twin, TwinError> {
        let limit = self.limits.max_doc_bytes;
        let now = now_ms();
        let c = self.load(key)?;
        let Some(twin) = c.twin.as_mut() else {
            return Err(TwinError::NotFound(key.to_string()));
        };
        if let Some(expected) = expected_version
            && expected != twin.version
        {
            return Err(TwinError::VersionConflict {
                key: key.to_string(),
                expected,
                actual: twin.version,
            });
        }
        let mut next = twin.clone();
        next.patch_desired(patch, now);
        next.version += 1;
        next.updated = now;
        let bytes = next.encode().len();
        if bytes > limit {
            return Err(TwinError::TooLarge {
                key: key.to_string(),
                bytes,
                limit,
            });
        }
        *twin = next.clone();
        c.bytes = bytes;
        c.dirty = true;
        let body = json!({ "state": { "desired": patch, "delta": next.delta() } });
        self.event(key, next.version, EventKind::Desired, now, body, None, None);
        Ok(next)
    }

    /// Changes the connection state (creating the twin of a device seen for the first time).
    pub fn set_connection(
        &mut self,
        key: &TwinKey,
        at_ms: u64,
        f: impl FnOnce(&mut Connection),
    ) -> Result<u64, TwinError> {
        let c = self.load(key)?;
        let twin = c.twin.get_or_insert_with(|| Twin::new(key, at_ms));
        f(&mut twin.connection);
        let seen = twin.connection.last_seen.unwrap_or(0).max(at_ms);
        twin.connection.last_seen = Some(seen);
        twin.version += 1;
        twin.updated = at_ms.max(twin.updated);
        c.dirty = true;
        let (version, online) = (twin.version, twin.connection.online);
        let body = json!({ "connection": twin.connection });
        self.event(key, version, EventKind::Connection, at_ms, body, None, Some(online));
        Ok(version)
    }

    /// Records the device's description of its resources.
    pub fn describe(&mut self, key: &TwinKey, at_ms: u64, resources: Json) -> Result<u64, TwinError> {
        let c = self.load(key)?;
        let twin = c.twin.get_or_insert_with(|| Twin::new(key, at_ms));
        c.bytes += estimate(&resources);
        twin.resources = Some(resources.clone());
        twin.version += 1;
        twin.updated = at_ms.max(twin.updated);
        c.dirty = true;
        let (version, online) = (twin.version, twin.connection.online);
        let body = json!({ "resources": resources });
        self.event(key, version, EventKind::Described, at_ms, body, None, Some(online));
        Ok(version)
    }

    /// Publishes `body` as a `kind` event about `key` when the transaction commits, beside
    /// the twins' own (for what other tables in the same transaction changed: alarms).
    pub fn announce(&mut self, key: &TwinKey, kind: EventKind, at_ms: u64, body: Json) {
        let version = self
            .cache
            .get(&key.to_string())
            .and_then(|c| c.twin.as_ref())
            .map_or(0, |t| t.version);
        self.event(key, version, kind, at_ms, body, None, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        key: &TwinKey,
        version: u64,
        kind: EventKind,
        at_ms: u64,
        mut body: Json,
        reported: Option<(String, Json)>,
        online: Option<bool>,
    ) {
        if let Some(o) = body.as_object_mut() {
            o.insert("event".into(), kind.as_str().into());
            o.insert("user".into(), key.user.clone().into());
            o.insert("device".into(), key.device.clone().into());
            o.insert("version".into(), version.into());
            o.insert("timestamp".into(), at_ms.into());
        }
        self.events.push(TwinEvent {
            key: key.clone(),
            version,
            kind,
            at: at_ms,
            reported,
            online,
            json: Arc::from(body.to_string()),
        });
    }

    /// Writes the changed twins back; returns the events to publish after the commit.
    fn flush(self) -> Result<Vec<TwinEvent>, TwinError> {
        let mut table = self.tx.open_table(TWINS).map_err(storage)?;
        for (k, c) in &self.cache {
            if !c.dirty {
                continue;
            }
            match &c.twin {
                Some(t) => {
                    table.insert(k.as_str(), t.encode().as_slice()).map_err(storage)?;
                }
                None => {
                    table.remove(k.as_str()).map_err(storage)?;
                }
            }
        }
        Ok(self.events)
    }
}

/// About how many bytes a value and its metadata add to a document.
fn estimate(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) => 5 + 24,
        Json::Number(_) => 20 + 24,
        Json::String(s) => s.len() + 2 + 24,
        Json::Array(a) => 2 + a.iter().map(estimate).sum::<usize>(),
        Json::Object(o) => 2 + o.iter().map(|(k, v)| 2 * k.len() + 6 + estimate(v)).sum::<usize>(),
    }
}
