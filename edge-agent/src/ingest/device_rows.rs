//! Rows a device connection sent (bucket writes, stream values, endpoint calls): each is
//! checked (table name, retention), appended, and confirmed after its fsync, or refused
//! at once with an error to the device.

use tracing::warn;

use super::{Ingest, micros};
use crate::event::{Acker, BucketRows, DeviceKey};
use crate::wal::RecordKind;
use twinlake_lake::model::{NameError, table_name};

impl Ingest {
    /// A read's bucket writes, in order. Writes to the same bucket as the one before (the
    /// usual case) share its table name.
    pub(super) fn handle_buckets(&mut self, device: &DeviceKey, mut rows: BucketRows) {
        // The bucket borrowed from the rows' buffer, with its table name.
        let mut last: Option<(&str, Result<String, NameError>)> = None;
        for (w, ack) in rows.drain() {
            let table = match last.take() {
                Some((b, t)) if b == w.bucket => (b, t),
                _ => (w.bucket, table_name(&[w.bucket])),
            };
            let name = table.1.as_deref().map_err(|e| *e);
            // Decoded where it entered, under the limits the WAL's replay reads with.
            let payload = w.payload.map(Payload::Checked);
            self.device_row(RecordKind::Record, device, micros(w.at), name, payload, ack);
            last = Some(table);
        }
    }

    /// One row of a device: stored and confirmed after its fsync; refused (and the device
    /// told) for a table name the lake cannot hold, a row past retention, or a WAL that
    /// would not take it; confirmed at once when there is nothing to store.
    pub(super) fn device_row(
        &mut self,
        kind: RecordKind,
        device: &DeviceKey,
        time_us: i64,
        table: Result<&str, NameError>,
        payload: Option<Payload<'_>>,
        ack: Option<Acker>,
    ) {
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                // A name the lake cannot hold: refused and counted; the device hears an error.
                self.metrics.refused("name", 1);
                warn!(device = %device.device, error = %e, "refused a row: its table name breaks the naming rules");
                if let Some(a) = ack {
                    a.ack(false);
                }
                return;
            }
        };
        let Some(payload) = payload.filter(|p| p.bytes() != [twinlake_sdk::pson::tag::UNSET]) else {
            if let Some(a) = ack {
                a.ack(true);
            }
            return;
        };
        let stored = !self.past_retention(table, time_us)
            && self.append_row(kind, table, (&device.user, &device.device), time_us, payload);
        match ack {
            Some(a) if stored => self.unsynced.acks.push(a),
            Some(a) => a.ack(false),
            None => {}
        }
    }
}

/// A row's PSON payload, and whether it was decoded where it entered.
#[derive(Debug, Clone, Copy)]
pub(super) enum Payload<'a> {
    /// Decoded already, under limits within those the WAL's replay reads with (a device's
    /// bucket write: the listener sees to it): not walked again.
    Checked(&'a [u8]),
    /// From a path that did not check it so: checked before it is written.
    Unchecked(&'a [u8]),
}

impl<'a> Payload<'a> {
    pub(super) fn bytes(self) -> &'a [u8] {
        match self {
            Payload::Checked(b) | Payload::Unchecked(b) => b,
        }
    }
}
