//! The cloud end of the gateway link (protocol: `twinlake_edge::link`), and routing live
//! requests to devices through the gateway they are connected to.
//!
//! Each linked gateway has one session task. It applies batches in arrival order: the
//! batches waiting are taken together and applied in one redb transaction with the
//! gateway's new sequence number, so a batch is applied exactly once however often it is
//! sent. Replies to requests are matched by id; a request whose gateway or device is gone
//! fails at once (offline), one that gets no answer fails at its deadline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use twinlake_edge::link::{Down, ErrorKind, Item, LinkIo, Op, PROTOCOL, RegistryEntry, RemoteError, Reply, Up};
use twinlake_edge::registry::CredentialHash;
use twinlake_twin::{TwinError, TwinKey, unwrap_io};

use crate::Error;
use crate::server::AppState;
use crate::store::{
    self, DEVICES, DeviceRecord, FILES, GATEWAYS, GatewayRecord, LINK_SEQ, LinkSeq, PROPERTIES, WebhookJob,
};
use redb::ReadableTable;

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
struct Session {
    tx: mpsc::Sender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    epoch: u64,
    /// Requests in flight at most (`link.max_inflight`): more wait, within their timeout.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Session {
    /// Stops waiting for request `id`; returns its waiter if it was still waiting.
    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.pending.lock().ok().and_then(|mut p| p.remove(&id))
    }

    /// Hands a reply to the request waiting for it. Returns whether one was.
    fn complete(&self, reply: Reply) -> bool {
        match self.take(reply.id) {
            Some(w) => w.send(reply).is_ok(),
            None => false,
        }
    }
}

/// The linked gateways and where each device is.
#[derive(Debug)]
pub struct Gateways {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    located: Mutex<HashMap<TwinKey, String>>,
    next_id: AtomicU64,
    next_epoch: AtomicU64,
    /// Bumped when the registry changes, so every session resends its gateway's devices.
    pub registry_version: watch::Sender<u64>,
    /// What each gateway may write rows for (see [`crate::provenance`]).
    pub allowed: crate::provenance::AllowedCache,
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
        }
    }
}

impl Gateways {
    /// The gateway a device is online at.
    pub fn location(&self, key: &TwinKey) -> Option<String> {
        self.located.lock().ok()?.get(key).cloned()
    }

    /// Where devices are, as the twins say after a restart (until gateways report again).
    pub fn locate(&self, key: TwinKey, gateway: Option<String>) {
        if let Ok(mut l) = self.located.lock() {
            match gateway {
                Some(g) => {
                    l.insert(key, g);
                }
                None => {
                    l.remove(&key);
                }
            }
        }
    }

    /// The linked gateways' ids.
    pub fn linked(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Hands a reply to the request waiting for it. Returns whether one was.
    pub fn complete(&self, gateway: &str, reply: Reply) -> bool {
        let session = self.sessions.lock().ok().and_then(|s| s.get(gateway).cloned());
        session.is_some_and(|s| s.complete(reply))
    }

    /// Tells every session the registry changed.
    pub fn registry_changed(&self) {
        self.registry_version.send_modify(|v| *v += 1);
    }

    /// Sends `op` to a device through its gateway and waits up to `timeout` for the answer.
    pub async fn request(&self, key: &TwinKey, op: Op, timeout: Duration) -> Result<Option<Json>, ControlError> {
        let gateway = self
            .location(key)
            .ok_or_else(|| ControlError::Offline(format!("device {key} is not connected")))?;
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&gateway).cloned())
            .ok_or_else(|| ControlError::Offline(format!("device {key}'s gateway {gateway} is not linked")))?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Held until the answer (or the timeout): the gateway's waiting map stays bounded.
        let _slot = match tokio::time::timeout_at(deadline, session.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ControlError::Offline(format!("gateway {gateway}'s link closed"))),
            Err(_) => return Err(ControlError::Timeout(timeout)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = session.pending.lock() {
            p.insert(id, tx);
        }
        let msg = Down::Request {
            id,
            user: key.user.clone(),
            device: key.device.clone(),
            op,
        };
        let forget = || {
            session.take(id);
        };
        let sent = tokio::time::timeout_at(deadline, session.tx.send(encode(&msg))).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(ControlError::Offline(format!("gateway {gateway}'s link closed")));
            }
            Err(_) => {
                forget();
                return Err(ControlError::Timeout(timeout));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) if r.ok => Ok(r.value),
            Ok(Ok(r)) => Err(ControlError::Remote(r.error.unwrap_or(RemoteError {
                kind: ErrorKind::DeviceError,
                message: "the request failed".into(),
            }))),
            Ok(Err(_)) => Err(ControlError::Offline(format!("gateway {gateway}'s link closed"))),
            Err(_) => {
                forget();
                Err(ControlError::Timeout(timeout))
            }
        }
    }
}

fn encode(msg: &Down) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

/// The devices a gateway may accept, with their properties.
pub fn registry_for(state: &AppState, gateway: &str) -> Result<Vec<RegistryEntry>, Error> {
    let devices: Vec<(String, DeviceRecord)> = state.db.scan(store::DEVICES, "")?;
    let mut out = Vec::new();
    for (_, d) in devices {
        let mine = match &d.gateway {
            Some(g) => g == gateway,
            None => gateway == state.local_gateway,
        };
        if !mine || !d.enabled {
            continue;
        }
        let props: Vec<(String, Json)> = state.db.scan(PROPERTIES, &format!("{}/{}/", d.user, d.device))?;
        let properties = props
            .into_iter()
            .filter_map(|(k, v)| Some((k.rsplit_once('/')?.1.to_owned(), v)))
            .collect();
        out.push(RegistryEntry {
            user: d.user,
            device: d.device,
            credential_hash: Some(d.credential_hash),
            properties,
        });
    }
    Ok(out)
}

/// Serves one gateway's link until it closes. `gateway` is the id its token proved.
pub async fn serve(state: Arc<AppState>, gateway: String, mut io: LinkIo) {
    let hello = match tokio::time::timeout(Duration::from_secs(10), io.rx.recv()).await {
        Ok(Some(text)) => serde_json::from_str::<Up>(&text),
        _ => {
            warn!(%gateway, "no hello on the link");
            return;
        }
    };
    let session_id = match hello {
        Ok(Up::Hello {
            gateway: g,
            session,
            protocol,
        }) if g == gateway && protocol == PROTOCOL => session,
        Ok(Up::Hello {
            gateway: g, protocol, ..
        }) => {
            warn!(%gateway, claimed = %g, protocol, "a hello for another gateway or protocol; closing");
            return;
        }
        other => {
            warn!(%gateway, ?other, "expected a hello; closing");
            return;
        }
    };
    let stored: LinkSeq = match state.db.get(LINK_SEQ, &gateway) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            warn!(%gateway, error = %e, "cannot read the link state; closing");
            return;
        }
    };
    let mut acked = if stored.session == session_id { stored.acked } else { 0 };
    if io.tx.send(encode(&Down::Welcome { acked })).await.is_err() {
        return;
    }
    let session = Arc::new(Session {
        tx: io.tx.clone(),
        pending: Mutex::default(),
        epoch: state.gateways.next_epoch.fetch_add(1, Ordering::Relaxed),
        slots: Arc::new(tokio::sync::Semaphore::new(state.cfg.link.max_inflight.max(1))),
    });
    if let Ok(mut s) = state.gateways.sessions.lock() {
        s.insert(gateway.clone(), session.clone());
    }
    state.metrics.gateways_linked.inc();
    info!(%gateway, session = %session_id, acked, "gateway linked");

    let mut registry = state.gateways.registry_version.subscribe();
    registry.mark_changed();
    let mut stop = state.stop.subscribe();
    // The in-process pipeline flushes after the cloud stops; its session ends with it.
    let remote = gateway != state.local_gateway;
    loop {
        tokio::select! {
            _ = stop.changed(), if remote => break,
            msg = io.rx.recv() => {
                let Some(text) = msg else { break };
                let mut batches = Vec::new();
                handle(&state, &session, &text, &mut batches);
                // Whatever else has arrived joins the same transaction.
                while batches.len() < 64 {
                    let Ok(text) = io.rx.try_recv() else { break };
                    handle(&state, &session, &text, &mut batches);
                }
                if batches.is_empty() {
                    continue;
                }
                let st = state.clone();
                let (gw, sid) = (gateway.clone(), session_id.clone());
                let applied = tokio::task::spawn_blocking(move || apply(&st, &gw, &sid, acked, batches)).await;
                match applied {
                    Ok(Ok(through)) => {
                        acked = through;
                        if io.tx.send(encode(&Down::Ack { through })).await.is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        // Not acknowledged: the gateway sends it again after a reconnect.
                        warn!(%gateway, error = %e, "cannot apply a batch; dropping the link");
                        break;
                    }
                    Err(e) => {
                        warn!(%gateway, error = %e, "the apply task failed; dropping the link");
                        break;
                    }
                }
            }
            changed = registry.changed() => {
                if changed.is_err() {
                    break;
                }
                match registry_for(&state, &gateway) {
                    Ok(devices) => {
                        if io.tx.send(encode(&Down::Registry {
                            devices,
                            credential_iterations: Some(state.cfg.registry.credential_iterations),
                        })).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => warn!(%gateway, error = %e, "cannot read the registry"),
                }
            }
        }
    }
    if let Ok(mut s) = state.gateways.sessions.lock()
        && s.get(&gateway).is_some_and(|cur| cur.epoch == session.epoch)
    {
        s.remove(&gateway);
    }
    state.metrics.gateways_linked.dec();
    info!(%gateway, "gateway link closed");
}

/// A message from the gateway: replies are handed over at once, batches collected.
fn handle(state: &AppState, session: &Session, text: &str, batches: &mut Vec<(u64, Vec<Item>)>) {
    match serde_json::from_str::<Up>(text) {
        Ok(Up::Batch { seq, items }) => batches.push((seq, items)),
        Ok(Up::Reply(r)) => {
            session.complete(r);
        }
        Ok(Up::Hello { .. }) => debug!("a second hello; ignored"),
        Err(e) => {
            state.metrics.link_bad_messages.inc();
            warn!(error = %e, "ignored a message that is not the link protocol");
        }
    }
}

/// Applies the batches past `acked` in one transaction; returns the new `acked`.
fn apply(
    state: &AppState,
    gateway: &str,
    session: &str,
    acked: u64,
    batches: Vec<(u64, Vec<Item>)>,
) -> Result<u64, Error> {
    let mut through = acked;
    let mut after = After::default();
    let mut items_applied = 0u64;
    state.twins.write(|t| -> Result<(), Error> {
        for (seq, items) in batches {
            if seq <= through {
                state.metrics.link_duplicate_batches.inc();
                continue;
            }
            for item in items {
                items_applied += 1;
                apply_item(state, t, gateway, item, &mut after)?;
            }
            through = seq;
        }
        let rec = LinkSeq {
            session: session.to_owned(),
            acked: through,
        };
        t.transaction()
            .open_table(LINK_SEQ)?
            .insert(gateway, store::encode(&rec).as_slice())?;
        Ok(())
    })?;
    state.metrics.link_items.inc_by(items_applied);
    if after.webhooks > 0 {
        state.webhook_wake.notify_one();
    }
    if after.registry {
        state.gateways.registry_changed();
    }
    // Fresh rows are for queries only (in memory): taken once their batch is committed, so
    // a batch sent again after a reconnect brings none twice.
    for (table, segment, stream, rows) in after.rows {
        add_fresh(state, gateway, &table, segment, stream, &rows);
    }
    if after.files > 0 {
        state.catalog_wake.notify_one();
    }
    Ok(through)
}

/// What a committed batch still has to do outside the transaction.
#[derive(Default)]
struct After {
    webhooks: u64,
    registry: bool,
    files: u64,
    rows: Vec<FreshRows>,
}

/// Fresh rows of one table and WAL segment: (table, segment, stream, `[time µs, device, payload]`).
type FreshRows = (String, u64, bool, Vec<(i64, String, serde_json::Value)>);

fn add_fresh(
    state: &AppState,
    gateway: &str,
    table: &str,
    segment: u64,
    stream: bool,
    rows: &[(i64, String, serde_json::Value)],
) {
    let encoded: Vec<Vec<u8>> = rows
        .iter()
        .map(|(_, _, v)| twinlake_sdk::json::from_json(v).to_bytes())
        .collect();
    let fresh: Vec<twinlake_query::FreshRow<'_>> = rows
        .iter()
        .zip(&encoded)
        .filter_map(|((at, device, _), bytes)| {
            Some(twinlake_query::FreshRow {
                time_us: *at,
                device,
                payload: twinlake_sdk::pson::ValueRef::decode(bytes).ok()?,
            })
        })
        .collect();
    let Ok(table) = twinlake_edge::model::table_name(&[table]) else {
        tracing::warn!(%gateway, "fresh rows for a table name that breaks the naming rules were ignored");
        return;
    };
    state.metrics.fresh_rows.inc_by(fresh.len() as u64);
    state.sql.lake().add_fresh(gateway, &table, segment, stream, &fresh);
}

/// The device an item speaks for, if it names one.
fn speaks_for(item: &Item) -> Option<(&str, &str)> {
    match item {
        Item::Presence { user, device, .. }
        | Item::Described { user, device, .. }
        | Item::Reported { user, device, .. }
        | Item::Endpoint { user, device, .. }
        | Item::Property { user, device, .. }
        | Item::Rehash { user, device, .. } => Some((user, device)),
        Item::Rows { .. } | Item::File { .. } => None,
    }
}

/// Whether `gateway` may speak for `user/device`: the cloud's own pipeline always; a linked
/// gateway for the devices registered to it, and for the unregistered (MQTT, LoRaWAN)
/// devices of the users an admin bound it to.
pub fn may_speak(state: &AppState, tx: &redb::WriteTransaction, gateway: &str, user: &str, device: &str) -> bool {
    if gateway == state.local_gateway {
        return true;
    }
    let lookup = |table: redb::TableDefinition<&str, &[u8]>, key: &str| -> Option<Vec<u8>> {
        let t = tx.open_table(table).ok()?;
        let v = t.get(key).ok()??;
        Some(v.value().to_vec())
    };
    if let Some(bytes) = lookup(DEVICES, &format!("{user}/{device}")) {
        return serde_json::from_slice::<DeviceRecord>(&bytes)
            .is_ok_and(|d| d.gateway.as_deref().unwrap_or(&state.local_gateway) == gateway);
    }
    lookup(GATEWAYS, gateway)
        .and_then(|b| serde_json::from_slice::<GatewayRecord>(&b).ok())
        .is_some_and(|g| g.users.iter().any(|u| u == user))
}

/// A credential hash a gateway made stronger at a login replaces the device's record if
/// that still holds `old` and `new` is PBKDF2 at exactly the configured iterations (a
/// gateway may neither weaken a hash nor make one too costly to check). Whether it did.
fn rehash(
    state: &AppState,
    tx: &redb::WriteTransaction,
    gateway: &str,
    key: &str,
    old: &str,
    new: String,
) -> Result<bool, Error> {
    let mut table = tx.open_table(DEVICES)?;
    let bytes = table.get(key)?.map(|v| v.value().to_vec());
    let rec = bytes.and_then(|b| serde_json::from_slice::<DeviceRecord>(&b).ok());
    let target = state.cfg.registry.credential_iterations;
    let strong = CredentialHash::parse(&new).is_ok_and(|h| h.iterations() == Some(target));
    match rec {
        Some(mut rec) if strong && rec.credential_hash == old => {
            rec.credential_hash = new;
            table.insert(key, store::encode(&rec).as_slice())?;
            state.metrics.credential_rehashes.inc();
            info!(%gateway, device = key, iterations = target, "a credential hash was made stronger at a login");
            Ok(true)
        }
        _ => {
            state.metrics.gateway_refusals.inc();
            warn!(%gateway, device = key, "refused a credential rehash (stale, or not at the configured cost)");
            Ok(false)
        }
    }
}

fn apply_item(
    state: &AppState,
    t: &mut twinlake_twin::TwinTxn<'_>,
    gateway: &str,
    item: Item,
    after: &mut After,
) -> Result<(), Error> {
    let refused = match (&item, speaks_for(&item)) {
        (_, Some((user, device))) => !may_speak(state, t.transaction(), gateway, user, device),
        (Item::File { gateway: g, file }, None) => {
            g != gateway
                || !file
                    .path
                    .rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with(&format!("{gateway}-")))
        }
        _ => false,
    };
    if refused {
        state.metrics.gateway_refusals.inc();
        warn!(%gateway, item = ?speaks_for(&item), "refused an item for a device or file that is not the gateway's");
        return Ok(());
    }
    match item {
        Item::Presence {
            user,
            device,
            online,
            at,
            ip,
            rx_bytes,
            tx_bytes,
            ..
        } => {
            let key = TwinKey::new(&user, &device);
            let (was_online, was_here) = match t.get(&key)? {
                Some(tw) => (tw.connection.online, tw.connection.gateway.as_deref() == Some(gateway)),
                None => (false, false),
            };
            if !online && !was_here {
                // A late goodbye from a gateway the device has left.
                return Ok(());
            }
            if online && was_online && was_here {
                // A gateway repeating what it said (after a reconnect): nothing changed.
                state.gateways.locate(key, Some(gateway.to_owned()));
                return Ok(());
            }
            let gw = gateway.to_owned();
            t.set_connection(&key, at, |c| {
                c.online = online;
                c.gateway = Some(gw);
                if online {
                    c.connected_at = Some(at);
                    if ip.is_some() {
                        c.ip = ip;
                    }
                } else {
                    c.rx_bytes = rx_bytes;
                    c.tx_bytes = tx_bytes;
                }
            })?;
            // Located before the commit publishes the change: whoever acts on "online" (the
            // desired-state applier) must find the device's gateway.
            state.gateways.locate(key, online.then(|| gateway.to_owned()));
        }
        Item::Described {
            user,
            device,
            resources,
        } => {
            let key = TwinKey::new(&user, &device);
            t.describe(&key, twinlake_twin::now_ms(), resources)?;
        }
        Item::Reported {
            user,
            device,
            path,
            at,
            value,
        } => {
            let key = TwinKey::new(&user, &device);
            match t.report(&key, &path, unwrap_io(value), at) {
                Ok(_) => {
                    state.metrics.twin_updates.inc();
                }
                Err(TwinError::TooLarge { key, bytes, limit }) => {
                    state.metrics.twin_rejected.inc();
                    warn!(%key, %path, bytes, limit, "reported value dropped: the twin would be too large");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Item::Endpoint {
            user,
            device,
            endpoint,
            at,
            payload,
        } => {
            let job = WebhookJob {
                user,
                device,
                endpoint,
                at,
                payload,
                attempts: 0,
            };
            crate::webhook::enqueue(state, t.transaction(), &job)?;
            after.webhooks += 1;
        }
        Item::Property {
            user,
            device,
            property,
            value,
        } => {
            let key = format!("{user}/{device}/{property}");
            t.transaction()
                .open_table(PROPERTIES)?
                .insert(key.as_str(), store::encode(&value).as_slice())?;
        }
        Item::Rehash { user, device, old, new } => {
            after.registry |= rehash(state, t.transaction(), gateway, &format!("{user}/{device}"), &old, new)?;
        }
        Item::File { gateway: g, file } => {
            let rec = serde_json::json!({ "gateway": g, "file": file });
            t.transaction()
                .open_table(FILES)?
                .insert(file.path.as_str(), store::encode(&rec).as_slice())?;
            state.metrics.files_committed.inc();
            after.files += 1;
        }
        Item::Rows {
            table,
            segment,
            stream,
            mut rows,
        } => {
            // Fresh rows count only for devices the gateway may write rows for.
            if gateway != state.local_gateway {
                let allowed = crate::provenance::allowed_now(state, gateway);
                let before = rows.len();
                rows.retain(|(_, device, _)| allowed.allows(device));
                if rows.len() < before {
                    state.metrics.gateway_refusals.inc_by((before - rows.len()) as u64);
                }
            }
            after.rows.push((table, segment, stream, rows));
        }
    }
    Ok(())
}
