//! The ingest loop: device data → WAL → Arrow buffer → sealed Parquet in the outbox.
//!
//! One task owns the WAL and the buffer. It takes whatever events are queued (up to a
//! batch) and appends each row to the WAL and to the buffer. An fsync runs on a blocking
//! thread while ingest goes on; everything appended meanwhile shares the next fsync (group
//! commit; `wal.fsync_interval` bounds how long a row waits for one). Only after its fsync is a
//! row counted and a bucket write or endpoint call confirmed to its device. Sealing (Parquet encoding and writing) runs on a blocking thread while ingest
//! goes on into a fresh buffer and WAL segment; one seal is in flight at a time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};
use twinlake_sdk::pson::{Value, ValueRef};

use self::commit::{SealJob, wait_seal, wait_sync};
use self::device_rows::Payload;
use crate::Error;
use crate::config::{BufferSection, WalSection};
use crate::event::{Acker, Delivery, DeviceEvent, DeviceEventKind, DeviceKey, RawValue, SourceRow};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, State};
use crate::wal::{RecordKind, Wal, WalRecord};
use twinlake_lake::buffer::{Buffer, Conflict};
use twinlake_lake::model::table_name;

mod commit;
mod device_rows;
mod judge;

/// Rows (or other events) taken off the queue per batch, at most about.
const MAX_BATCH: usize = 8192;
/// The table endpoint calls are recorded in.
pub const ENDPOINT_TABLE: &str = "endpoint_calls";

pub use crate::endpoints::{EndpointCall, EndpointQueue};

/// Rows appended to the WAL and waiting for an fsync, with the confirmations they owe and
/// the rows for the cloud link.
#[derive(Default)]
struct Pending {
    acks: Vec<Acker>,
    rows: u64,
    values: u64,
    bytes: u64,
    fresh: crate::link::FreshRows,
    /// Source messages whose rows and delivery record this fsync makes durable; their
    /// acked record goes into the next one.
    delivered: Vec<(Arc<str>, u16, Acker)>,
    /// Source messages whose acked record this fsync makes durable: confirmed after it.
    confirming: Vec<(Arc<str>, u16, Acker)>,
    /// Device actions of the gateway's rules whose alarm rows this fsync makes durable.
    actions: Vec<crate::rules::DeviceAction>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.rows == 0 && self.acks.is_empty() && self.delivered.is_empty() && self.confirming.is_empty()
    }
}

/// Source messages (MQTT QoS 1) that are durable and whose confirmation has not been sent:
/// (source, packet id) → hash. A broker that lost the confirmation in a crash sends the
/// message again with DUP set and the same packet id; if it is here with the same hash, its
/// rows are already stored and it is only confirmed.
///
/// Rebuilt on start from the WAL's delivery and acked records. The acked record is durable
/// before the confirmation is sent, so what is here was certainly never confirmed; a crash
/// between the acked record's fsync and the PUBACK leaves a duplicate, never a loss.
pub type Unconfirmed = std::collections::HashMap<(Arc<str>, u16), u64>;

/// Applies a bookkeeping record (delivery, acked) to the set of unconfirmed messages.
pub fn track(unconfirmed: &mut Unconfirmed, rec: &WalRecord<'_>) {
    let Some((id, rest)) = rec.payload.split_first_chunk::<2>() else {
        return;
    };
    let key = (Arc::from(rec.table), u16::from_le_bytes(*id));
    match rec.kind {
        RecordKind::Delivery => {
            if let Some(h) = rest.first_chunk::<8>() {
                unconfirmed.insert(key, u64::from_le_bytes(*h));
            }
        }
        RecordKind::Acked => {
            unconfirmed.remove(&key);
        }
        RecordKind::Stream | RecordKind::Record => {}
    }
}

/// An fsync running on a blocking thread, the rows it makes durable, and when it began.
type Inflight = (JoinHandle<std::io::Result<()>>, Pending, std::time::Instant);

/// The ingest loop's state.
pub struct Ingest {
    pub(crate) data_dir: PathBuf,
    pub(crate) wal: Wal,
    pub(crate) buffer: Buffer,
    pub(crate) outbox: Outbox,
    pub(crate) wal_cfg: WalSection,
    pub(crate) buffer_cfg: BufferSection,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sealed_tx: watch::Sender<u64>,
    pub(crate) endpoints: EndpointQueue,
    pub(crate) tap: tokio::sync::broadcast::Sender<DeviceEvent>,
    /// Where durable rows go for the cloud to query before their file lands.
    pub(crate) fresh: Option<crate::link::Uplink>,
    /// The cloud link's queue: every event's presence and values go to it first.
    pub(crate) link: Option<crate::link::Uplink>,
    /// Rules the cloud placed on this gateway, judged on every durable row.
    pub(crate) rules: Option<Arc<crate::rules::EdgeRules>>,
    /// Rows already past their table's retention are refused before any ack.
    pub(crate) retention: Arc<crate::retention::Retention>,
    unsynced: Pending,
    sync_at: Option<Instant>,
    /// When the gateway's deadman rules are next asked.
    silences_at: Option<Instant>,
    inflight: Option<Inflight>,
    sealing: Option<JoinHandle<Result<(), Error>>>,
    sealing_job: Option<SealJob>,
    retry: Option<(Instant, SealJob)>,
    scratch: Vec<u8>,
    conflicts: Vec<Conflict>,
    unconfirmed: Unconfirmed,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

fn micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Applies one WAL record to the buffer; returns the values stored.
fn apply(buffer: &mut Buffer, rec: &WalRecord<'_>, conflicts: &mut Vec<Conflict>, metrics: &Metrics) -> u64 {
    let value = match ValueRef::decode(rec.payload) {
        Ok(v) => v,
        Err(e) => {
            metrics.rejected_payloads.inc();
            warn!(table = rec.table, device = rec.device, error = %e, "undecodable payload in the WAL; skipped");
            return 0;
        }
    };
    apply_value(buffer, rec, value, conflicts)
}

/// Applies one WAL record whose payload is decoded already.
fn apply_value(buffer: &mut Buffer, rec: &WalRecord<'_>, value: ValueRef<'_>, conflicts: &mut Vec<Conflict>) -> u64 {
    let owner = (!rec.owner.is_empty()).then_some(rec.owner);
    let stream = rec.kind == RecordKind::Stream;
    buffer.append_payload(rec.table, rec.time_us, (owner, rec.device), (value, stream), conflicts)
}

impl Ingest {
    /// Recovers from `data_dir`: drops unfinished seals, replays the WAL into a fresh buffer.
    pub fn open(
        gateway: &str,
        data_dir: PathBuf,
        outbox: Outbox,
        wal_cfg: WalSection,
        buffer_cfg: BufferSection,
        metrics: Arc<Metrics>,
        endpoints: EndpointQueue,
    ) -> Result<(Self, watch::Receiver<u64>), Error> {
        let state = State::load(&data_dir)?;
        outbox.recover(state.sealed_through)?;
        let mut buffer = Buffer::new(gateway, state.schemas.clone());
        let mut conflicts = Vec::new();
        let mut unconfirmed = Unconfirmed::new();
        let (wal, replay) = Wal::open(
            &data_dir.join("wal"),
            wal_cfg.segment_bytes,
            state.sealed_through,
            |_, rec| {
                if rec.kind.is_row() {
                    apply(&mut buffer, &rec, &mut conflicts, &metrics);
                } else {
                    track(&mut unconfirmed, &rec);
                }
            },
        )?;
        if replay.records > 0 || replay.truncated_bytes > 0 {
            info!(
                records = replay.records,
                segments = replay.segments,
                truncated_bytes = replay.truncated_bytes,
                "recovered rows from the WAL"
            );
        }
        metrics.buffer_rows.set(buffer.rows() as i64);
        let (sealed_tx, sealed_rx) = watch::channel(state.sealed_through);
        Ok((
            Self {
                data_dir,
                wal,
                buffer,
                outbox,
                wal_cfg,
                buffer_cfg,
                sealed_tx,
                endpoints,
                tap: tokio::sync::broadcast::channel(1024).0,
                fresh: None,
                link: None,
                rules: None,
                retention: Default::default(),
                unsynced: Pending::default(),
                sync_at: None,
                silences_at: None,
                inflight: None,
                sealing: None,
                sealing_job: None,
                retry: None,
                scratch: Vec::new(),
                conflicts,
                unconfirmed,
                metrics,
            },
            sealed_rx,
        ))
    }

    /// Runs until `stop` turns true; then takes what is still queued, syncs and seals it all.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<DeviceEvent>,
        mut on_connect: impl FnMut(&DeviceKey),
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else { break };
                    let mut n = ev.kind.rows();
                    self.handle(ev, &mut on_connect);
                    // Bounded by rows, not events (one event holds a read's bucket writes), so
                    // fsyncs, seals and the link get their turn while devices keep writing.
                    while n < MAX_BATCH {
                        let Ok(ev) = events.try_recv() else { break };
                        n += ev.kind.rows();
                        self.handle(ev, &mut on_connect);
                    }
                    if self.unsynced.rows > 0 && self.sync_at.is_none() {
                        self.sync_at = Some(Instant::now() + self.wal_cfg.fsync_interval);
                    }
                    // Messages a source waits on (a broker holding back the next ones until
                    // they are acknowledged) go to disk at once; there is nothing to gather.
                    if self.wal_cfg.fsync_interval.is_zero() || !self.unsynced.delivered.is_empty() {
                        self.start_sync();
                    }
                }
                _ = tokio::time::sleep_until(self.sync_at.unwrap_or_else(Instant::now)),
                    if self.sync_at.is_some() && self.inflight.is_none() => self.start_sync(),
                res = wait_sync(&mut self.inflight), if self.inflight.is_some() => {
                    self.finish_sync(res);
                    // Whatever arrived during that fsync goes into the next one at once.
                    self.start_sync();
                }
                res = wait_seal(&mut self.sealing), if self.sealing.is_some() => self.seal_finished(res),
                _ = tick.tick() => self.check_silences(),
                _ = stop.changed() => break,
            }
            self.maybe_seal().await;
        }
        // Shutdown: the listener has stopped, so what is queued is all there is.
        while let Ok(ev) = events.try_recv() {
            self.handle(ev, &mut on_connect);
        }
        self.sync().await;
        self.finish_sealing().await;
        // A seal that still fails keeps its WAL segments, and a later seal would delete them
        // with its own: the rest stays in the WAL too, for the next start to seal.
        if self.retry.is_none() && self.buffer.rows() > 0 {
            self.start_seal()?;
            self.finish_sealing().await;
        }
        if self.retry.is_some() {
            return Err(Error::Corrupt(
                "the last seal could not be written; its rows stay in the WAL".into(),
            ));
        }
        Ok(())
    }

    /// Waits for the seal in flight and up to five retries; a seal that still fails is left
    /// in `retry`, never in flight.
    async fn finish_sealing(&mut self) {
        let mut tries = 0;
        loop {
            if self.sealing.is_some() {
                let res = wait_seal(&mut self.sealing).await;
                self.seal_finished(res);
            }
            if tries == 5 {
                return;
            }
            tries += 1;
            match self.retry.take() {
                Some((_, job)) => self.spawn_seal(job),
                None => return,
            }
        }
    }

    fn handle(&mut self, ev: DeviceEvent, on_connect: &mut impl FnMut(&DeviceKey)) {
        if let Some(link) = &self.link {
            crate::link::feed::forward(link, &ev);
        }
        // Watchers (the demo) see every event; it costs a clone only while someone
        // watches. A slow watcher misses events, it never slows ingest.
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(ev.clone());
        }
        let time_us = micros(ev.at);
        let (kind, table, payload, ack) = match ev.kind {
            DeviceEventKind::Stream { path, payload, .. } => (
                RecordKind::Stream,
                table_name(&path),
                payload.as_ref().map(RawValue::from_value),
                None,
            ),
            DeviceEventKind::Buckets(rows) => return self.handle_buckets(&ev.device, rows),
            DeviceEventKind::Endpoint { endpoint, payload, ack } => {
                self.metrics.endpoint_calls.inc();
                let json = payload.as_ref().map(|p| twinlake_sdk::json::to_json(p).to_string());
                let row = Value::object()
                    .with("endpoint", endpoint.as_str())
                    .with("payload", json.map(Value::Str).unwrap_or(Value::Null));
                self.endpoints.push(EndpointCall {
                    device: ev.device.clone(),
                    endpoint,
                    payload,
                    at: ev.at,
                });
                (
                    RecordKind::Record,
                    Ok(ENDPOINT_TABLE.to_owned()),
                    Some(RawValue::from_value(&row)),
                    ack,
                )
            }
            DeviceEventKind::Message { rows, delivery, ack } => {
                return self.handle_message(&ev.device.user, rows, delivery, ack);
            }
            DeviceEventKind::Connected { .. } => {
                on_connect(&ev.device);
                return;
            }
            _ => return,
        };
        let payload = payload.as_ref().map(|p| Payload::Unchecked(p.as_bytes()));
        self.device_row(
            kind,
            &ev.device,
            time_us,
            table.as_deref().map_err(|e| *e),
            payload,
            ack,
        );
    }

    /// A source's message: its rows, then (for a message to confirm) a delivery record, all
    /// in this fsync. A redelivery of a message that is durable and unconfirmed stores
    /// nothing and is only confirmed.
    fn handle_message(&mut self, user: &str, rows: Vec<SourceRow>, delivery: Option<Delivery>, ack: Option<Acker>) {
        if let Some(d) = &delivery
            && d.redelivered
            && self.unconfirmed.get(&(d.source.clone(), d.id)) == Some(&d.hash)
        {
            self.metrics.source("mqtt", "duplicate");
            if let Some(d) = delivery {
                self.unsynced.delivered.push((d.source, d.id, d.ack));
            }
            return;
        }
        let mut ok = true;
        let mut appended = false;
        for r in rows {
            if r.payload.is_unset() {
                continue;
            }
            let Ok(table) = table_name(&[r.resource.as_str()]) else {
                // Refused by the naming rules: counted, and the message is still confirmed
                // (sending it again could not change the name).
                self.metrics.refused("name", 1);
                continue;
            };
            if self.past_retention(&table, micros(r.at)) {
                // Confirmed all the same: sending it again could not make it younger.
                continue;
            }
            if crate::sources::telemetry::depth(&r.payload) > twinlake_sdk::pson::Limits::DEFAULT.max_depth {
                // The WAL could not read it back: refused where it would be lost (sources
                // refuse it first and say so).
                self.metrics.refused("depth", 1);
                continue;
            }
            // Encoded into the reused scratch buffer, not a new one per row.
            let mut payload = std::mem::take(&mut self.scratch);
            payload.clear();
            r.payload.encode_into(&mut payload);
            let row = Payload::Unchecked(&payload);
            let stored = self.append_row(RecordKind::Record, &table, (user, &r.device), micros(r.at), row);
            self.scratch = payload;
            if !stored {
                ok = false;
                break;
            }
            appended = true;
        }
        let Some(d) = delivery else {
            // Nothing appended: nothing to wait for.
            match ack {
                Some(a) if ok && appended => self.unsynced.acks.push(a),
                Some(a) => a.ack(ok),
                None => {}
            }
            return;
        };
        if ok {
            ok = self.append_mark(RecordKind::Delivery, &d.source, d.id, Some(d.hash));
        }
        if !ok {
            // Not confirmed: the broker sends it again once the session resumes.
            d.ack.ack(false);
            return;
        }
        self.unconfirmed.insert((d.source.clone(), d.id), d.hash);
        self.unsynced.delivered.push((d.source, d.id, d.ack));
    }

    /// Appends a bookkeeping record: a message id (u16 LE) and, for a delivery, its hash
    /// (u64 LE), as [`track`] reads them back.
    fn append_mark(&mut self, kind: RecordKind, source: &str, id: u16, hash: Option<u64>) -> bool {
        self.scratch.clear();
        self.scratch.extend_from_slice(&id.to_le_bytes());
        if let Some(h) = hash {
            self.scratch.extend_from_slice(&h.to_le_bytes());
        }
        let rec = WalRecord {
            kind,
            time_us: 0,
            table: source,
            device: "",
            owner: "",
            payload: &self.scratch,
        };
        match self.wal.append(&rec) {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "cannot write the WAL; the message is not confirmed");
                false
            }
        }
    }

    /// Appends one row of `(user, device)` to the WAL and the buffer; false if the WAL
    /// refused it, or its payload (PSON) would not read back from the WAL.
    fn append_row(
        &mut self,
        kind: RecordKind,
        table: &str,
        (user, device): (&str, &str),
        time_us: i64,
        payload: Payload<'_>,
    ) -> bool {
        if !self.buffer.knows(table) && self.buffer.schemas().len() >= self.buffer_cfg.max_tables {
            self.metrics.refused("tables", 1);
            warn!(
                device,
                table,
                max = self.buffer_cfg.max_tables,
                "refused a row: buffer.max_tables reached"
            );
            return false;
        }
        // Checked as the WAL's replay will read it, before it is written (once).
        let (payload, value) = match payload {
            Payload::Checked(p) => (p, ValueRef::decode_trusted(p)),
            Payload::Unchecked(p) => (p, ValueRef::decode(p)),
        };
        let Ok(value) = value else {
            self.metrics.refused("payload", 1);
            warn!(
                device,
                table, "refused a row: its payload would not read back from the WAL"
            );
            return false;
        };
        let rec = WalRecord {
            kind,
            time_us,
            table,
            device,
            owner: user,
            payload,
        };
        if let Err(e) = self.wal.append(&rec) {
            error!(error = %e, "cannot write the WAL; the row is refused");
            return false;
        }
        let values = apply_value(&mut self.buffer, &rec, value, &mut self.conflicts);
        for c in self.conflicts.drain(..) {
            self.metrics.schema_conflicts.inc();
            warn!(device, conflict = %c, "schema conflict; value dropped");
        }
        let dropped = self.buffer.take_dropped();
        if dropped > 0 {
            self.metrics.refused("columns", dropped);
            warn!(
                device,
                table, dropped, "values dropped: past 1,024 columns or a column name over 256 bytes"
            );
        }
        self.unsynced.rows += 1;
        self.unsynced.values += values;
        self.unsynced.bytes += payload.len() as u64;
        if self.fresh.is_some() {
            let group = crate::link::FreshGroup {
                table,
                segment: self.wal.current_segment(),
                stream: kind == RecordKind::Stream,
                owner: user,
            };
            self.unsynced.fresh.push(group, time_us, device, payload);
        }
        self.judge(&rec);
        true
    }
}
