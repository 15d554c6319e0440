//! Applying what a gateway sends: each batch in one transaction, each item only if the
//! gateway may speak for its device ([`may_speak`]), with what a commit still has to do
//! afterwards (webhooks, fresh rows, the catalog, registry pushes).

use redb::ReadableTable;
use tracing::{info, warn};
use twinlake_edge::link::Item;
use twinlake_edge::link::rows::RowBlock;
use twinlake_edge::registry::CredentialHash;
use twinlake_twin::{TwinError, TwinKey, unwrap_io};

use crate::Error;
use crate::state::AppState;
use crate::store::{
    self, DEVICES, DeviceRecord, FILES, GATEWAYS, GatewayRecord, LINK_SEQ, LinkSeq, PROPERTIES, WebhookJob,
};

/// Applies the batches past `acked` in one transaction; returns the new `acked`.
pub(super) fn apply(
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
    for rows in after.rows {
        add_fresh(state, gateway, &rows);
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

/// Fresh rows of one table, WAL segment and user, as an `Item::PsonRows` holds them (an
/// `Item::Rows` from an older agent is turned into one).
#[derive(Debug)]
struct FreshRows {
    table: String,
    segment: u64,
    stream: bool,
    owner: Option<String>,
    rows: RowBlock,
}

/// JSON rows (an agent before pson rows) as a block of PSON payloads.
fn json_block(rows: Vec<(i64, String, serde_json::Value)>) -> RowBlock {
    let mut block = RowBlock::default();
    for (at, device, v) in rows {
        block.push(at, &device, &twinlake_sdk::json::from_json(&v).to_bytes());
    }
    block
}

/// The rows of `block` whose device the gateway may write rows for; a malformed block ends
/// where it goes bad (counted).
fn allowed_rows(state: &AppState, gateway: &str, owner: Option<&str>, block: RowBlock) -> RowBlock {
    let allowed = (gateway != state.local_gateway).then(|| crate::provenance::allowed_now(state, gateway));
    let may = |device: &str| allowed.as_ref().is_none_or(|a| a.allows(owner, device));
    if block.iter().all(|r| r.is_ok_and(|r| may(r.device))) {
        return block;
    }
    let (mut kept, mut refused) = (RowBlock::default(), 0u64);
    for r in block.iter() {
        match r {
            Ok(r) if may(r.device) => {
                kept.push(r.time_us, r.device, r.payload);
            }
            Ok(_) => refused += 1,
            Err(e) => {
                state.metrics.link_bad_messages.inc();
                warn!(%gateway, error = %e, "fresh rows cut short");
            }
        }
    }
    state.metrics.gateway_refusals.inc_by(refused);
    kept
}

fn add_fresh(state: &AppState, gateway: &str, fresh: &FreshRows) {
    let FreshRows {
        table,
        segment,
        stream,
        owner,
        rows,
    } = fresh;
    // Each payload decoded once, in place; one that is not PSON is dropped.
    let fresh: Vec<twinlake_query::FreshRow<'_>> = rows
        .iter()
        .map_while(Result::ok)
        .filter_map(|r| {
            Some(twinlake_query::FreshRow {
                time_us: r.time_us,
                owner: owner.as_deref(),
                device: r.device,
                payload: twinlake_sdk::pson::ValueRef::decode(r.payload).ok()?,
            })
        })
        .collect();
    let Ok(table) = twinlake_lake::model::table_name(&[table]) else {
        tracing::warn!(%gateway, "fresh rows for a table name that breaks the naming rules were ignored");
        return;
    };
    state.metrics.fresh_rows.inc_by(fresh.len() as u64);
    state.sql.lake().add_fresh(gateway, &table, *segment, *stream, &fresh);
    crate::rules::observe(state, table.as_str(), *stream, &fresh);
    if table == twinlake_edge::rules::ALARMS_TABLE {
        let rows: Vec<_> = fresh
            .iter()
            .map(|r| {
                (
                    r.time_us,
                    r.device.to_owned(),
                    twinlake_sdk::json::ref_to_json(r.payload),
                )
            })
            .collect();
        crate::rules::gateway::from_gateway(state, gateway, owner.as_deref(), &rows);
    }
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
        Item::Rows { .. } | Item::PsonRows { .. } | Item::File { .. } => None,
    }
}

/// Whether `gateway` may speak for `user/device`: the cloud's own pipeline always; a linked
/// gateway for the devices registered to it, and for the unregistered (MQTT, LoRaWAN)
/// devices of the users an admin bound it to.
pub fn may_speak(state: &AppState, tx: &redb::WriteTransaction, gateway: &str, user: &str, device: &str) -> bool {
    speaker(state, tx, gateway, user, device) != Speaker::Refused
}

/// How a gateway speaks for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaker {
    /// For a device registered to it (or, the cloud's own pipeline, to anyone).
    Registered,
    /// For an unregistered device of a user it may bring devices for: counts against
    /// `link.max_unregistered_devices` when its twin is new.
    Unregistered,
    Refused,
}

fn speaker(state: &AppState, tx: &redb::WriteTransaction, gateway: &str, user: &str, device: &str) -> Speaker {
    let local = gateway == state.local_gateway;
    let lookup = |table: redb::TableDefinition<&str, &[u8]>, key: &str| -> Option<Vec<u8>> {
        let t = tx.open_table(table).ok()?;
        let v = t.get(key).ok()??;
        Some(v.value().to_vec())
    };
    if let Some(bytes) = lookup(DEVICES, &format!("{user}/{device}")) {
        let ours = serde_json::from_slice::<DeviceRecord>(&bytes)
            .is_ok_and(|d| d.gateway.as_deref().unwrap_or(&state.local_gateway) == gateway);
        return if ours || local {
            Speaker::Registered
        } else {
            Speaker::Refused
        };
    }
    let bound = local
        || lookup(GATEWAYS, gateway)
            .and_then(|b| serde_json::from_slice::<GatewayRecord>(&b).ok())
            .is_some_and(|g| g.users.iter().any(|u| u == user));
    if bound { Speaker::Unregistered } else { Speaker::Refused }
}

/// Whether an item for an unregistered device fits `gateway`'s quota: a device with a twin
/// does; a new one is counted if there is room. Items that make no twin themselves
/// (properties, endpoint calls) make it here, so every device they name is counted.
fn within_quota(
    state: &AppState,
    t: &mut twinlake_twin::TwinTxn<'_>,
    gateway: &str,
    item: &Item,
    (user, device): (&str, &str),
) -> Result<bool, Error> {
    let key = TwinKey::new(user, device);
    if matches!(item, Item::Presence { online: false, .. }) || t.get(&key)?.is_some() {
        return Ok(true);
    }
    if !state.unregistered.admit(gateway, &key) {
        return Ok(false);
    }
    if matches!(item, Item::Property { .. } | Item::Endpoint { .. }) {
        t.create(&key, Default::default())?;
    }
    Ok(true)
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
        (_, Some(who)) => match speaker(state, t.transaction(), gateway, who.0, who.1) {
            Speaker::Registered => false,
            Speaker::Refused => true,
            Speaker::Unregistered => {
                if !within_quota(state, t, gateway, &item, who)? {
                    state.metrics.device_quota_refusals.inc();
                    warn!(%gateway, item = ?who, max = state.cfg.link.max_unregistered_devices, "refused a new unregistered device: the gateway has link.max_unregistered_devices");
                    return Ok(());
                }
                false
            }
        },
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
            protocol,
            ..
        } => {
            let key = TwinKey::new(&user, &device);
            let (was_online, was_here) = match t.get(&key)? {
                Some(tw) => (
                    tw.connection.online,
                    tw.connection.gateway.as_deref() == Some(gateway)
                        && (protocol.is_none() || tw.connection.protocol == protocol),
                ),
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
                    if protocol.is_some() {
                        c.protocol = protocol;
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
            owner,
            rows,
        } => {
            // From an agent before pson rows: the same rows as a block.
            let rows = json_block(rows);
            let item = Item::PsonRows {
                table,
                segment,
                stream,
                owner,
                rows,
            };
            apply_item(state, t, gateway, item, after)?;
        }
        Item::PsonRows {
            table,
            segment,
            stream,
            owner,
            rows,
        } => {
            // Fresh rows count only for devices the gateway may write rows for.
            let rows = allowed_rows(state, gateway, owner.as_deref(), rows);
            after.rows.push(FreshRows {
                table,
                segment,
                stream,
                owner,
                rows,
            });
        }
    }
    Ok(())
}
