//! Group commit and sealing for the ingest loop: fsyncs of the WAL on a blocking thread
//! (rows are confirmed only after theirs), and seals of the buffer into Parquet, one at a
//! time, in order, retried until they land.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info};

use twinlake_lake::buffer::{Schemas, SealedTable, Unsealed};

use super::{Inflight, Ingest};
use crate::Error;
use crate::outbox::State;
use crate::wal::RecordKind;

/// A seal being written, kept whole so a failed write can be tried again.
pub(super) struct SealJob {
    seq: u64,
    rows: Arc<std::sync::Mutex<SealRows>>,
    schemas: Schemas,
}

/// A seal's rows: taken from the buffer on the ingest task, sorted once on the seal's
/// blocking thread (the sort is the costly part), and kept sorted for a retry.
enum SealRows {
    Unsorted(Unsealed),
    Sorted(Arc<Vec<SealedTable>>),
    /// Sorting failed: every try fails the same way, and the rows stay in the WAL.
    Failed(String),
}

impl SealRows {
    /// The sorted tables, sorting them first if need be.
    fn sorted(&mut self) -> Result<Arc<Vec<SealedTable>>, Error> {
        match std::mem::replace(self, SealRows::Failed(String::new())) {
            SealRows::Sorted(t) => {
                *self = SealRows::Sorted(t.clone());
                Ok(t)
            }
            SealRows::Unsorted(u) => match u.seal() {
                Ok(t) => {
                    let t = Arc::new(t);
                    *self = SealRows::Sorted(t.clone());
                    Ok(t)
                }
                Err(e) => {
                    *self = SealRows::Failed(e.to_string());
                    Err(Error::Corrupt(format!("sorting a seal: {e}")))
                }
            },
            SealRows::Failed(why) => {
                *self = SealRows::Failed(why.clone());
                Err(Error::Corrupt(format!("sorting a seal: {why}")))
            }
        }
    }
}

impl Ingest {
    /// Starts an fsync of everything appended so far, unless one is running. Ingest goes on
    /// meanwhile; what arrives during this fsync goes into the next one.
    pub(super) fn start_sync(&mut self) {
        self.sync_at = None;
        if self.inflight.is_some() || self.unsynced.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.unsynced);
        // The next fsync's batch is likely as big: room for it at once, not step by step.
        self.unsynced.acks.reserve(batch.acks.len());
        self.unsynced.fresh.reserve(batch.fresh.blocks());
        let handle = match self.wal.flush().and_then(|_| self.wal.sync_handle()) {
            Ok(file) => tokio::task::spawn_blocking(move || file.sync_data()),
            Err(e) => tokio::task::spawn_blocking(move || Err(e)),
        };
        self.inflight = Some((handle, batch, std::time::Instant::now()));
    }

    /// Counts and confirms the rows of a finished fsync.
    pub(super) fn finish_sync(&mut self, res: std::io::Result<()>) {
        let Some((_, batch, started)) = self.inflight.take() else {
            return;
        };
        self.metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        let ok = match res {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "WAL fsync failed; unconfirmed rows may be lost in a crash");
                false
            }
        };
        if ok && let Some(up) = &self.fresh {
            up.rows(batch.fresh);
        }
        if ok {
            self.metrics.rows_in.inc_by(batch.rows);
            self.metrics.values_in.inc_by(batch.values);
            self.metrics.bytes_in.inc_by(batch.bytes);
            self.metrics.wal_bytes.inc_by(batch.bytes);
        }
        for a in batch.acks {
            a.ack(ok);
        }
        if let Some(rules) = &self.rules {
            if ok {
                rules.dispatch(batch.actions);
            } else if !batch.actions.is_empty() {
                error!(
                    actions = batch.actions.len(),
                    "rule actions not run: their alarms are not durable"
                );
            }
        }
        // Delivered messages: their acked record goes into the next fsync, and only then is
        // the confirmation sent. After a failed fsync nothing is confirmed; the broker sends
        // those messages again when the session resumes.
        for (source, id, ack) in batch.delivered {
            if !ok {
                ack.ack(false);
                continue;
            }
            if self.append_mark(RecordKind::Acked, &source, id, None) {
                self.unsynced.confirming.push((source, id, ack));
            } else {
                ack.ack(false);
            }
        }
        for (source, id, ack) in batch.confirming {
            if ok {
                self.unconfirmed.remove(&(source, id));
            }
            ack.ack(ok);
        }
        self.metrics.buffer_rows.set(self.buffer.rows() as i64);
    }

    /// Makes everything appended so far durable: waits for the fsync in flight, then runs
    /// one more for what came after it.
    pub(super) async fn sync(&mut self) {
        self.wait_inflight().await;
        // Twice more: source messages need their rows' fsync and then their acked record's.
        for _ in 0..2 {
            self.start_sync();
            self.wait_inflight().await;
        }
    }

    pub(super) async fn wait_inflight(&mut self) {
        if self.inflight.is_some() {
            let res = wait_sync(&mut self.inflight).await;
            self.finish_sync(res);
        }
    }

    pub(super) async fn maybe_seal(&mut self) {
        if let Some((at, _)) = &self.retry
            && Instant::now() >= *at
            && self.sealing.is_none()
            && let Some((_, job)) = self.retry.take()
        {
            self.spawn_seal(job);
        }
        let due = self.buffer.rows() >= self.buffer_cfg.max_rows
            || self.buffer.bytes() >= self.buffer_cfg.max_bytes
            || self
                .buffer
                .oldest()
                .is_some_and(|t| t.elapsed() >= self.buffer_cfg.max_age);
        if due && self.sealing.is_none() && self.retry.is_none() {
            self.sync().await;
            if let Err(e) = self.start_seal() {
                error!(error = %e, "cannot start a seal");
            }
        } else if self.wal.segment_full() && self.sync_at.is_none() {
            // Rows stay in the buffer; the next seal covers every finished segment.
            if let Err(e) = self.wal.rotate() {
                error!(error = %e, "cannot start a new WAL segment");
            }
        }
    }

    /// Seals the buffer: everything is durable in segments up to the one just finished.
    /// Seals commit in order: while an earlier one is in flight or waits for a retry, a
    /// later one would delete the earlier one's WAL segments with its own.
    pub(super) fn start_seal(&mut self) -> Result<(), Error> {
        if self.sealing.is_some() || self.retry.is_some() {
            return Err(Error::Corrupt(
                "a seal started while an earlier one was unfinished".into(),
            ));
        }
        let seq = self.wal.rotate()?;
        // The sealed segments go once the seal is written; the unconfirmed messages'
        // delivery records must outlive them, so they are copied into the new segment, durably.
        if !self.unconfirmed.is_empty() {
            let marks: Vec<_> = self
                .unconfirmed
                .iter()
                .map(|((s, id), h)| (s.clone(), *id, *h))
                .collect();
            for (source, id, hash) in marks {
                self.append_mark(RecordKind::Delivery, &source, id, Some(hash));
            }
            self.wal.sync()?;
        }
        let rows = self.buffer.take();
        self.metrics.buffer_rows.set(0);
        let job = SealJob {
            seq,
            rows: Arc::new(std::sync::Mutex::new(SealRows::Unsorted(rows))),
            schemas: self.buffer.schemas().clone(),
        };
        self.spawn_seal(job);
        Ok(())
    }

    pub(super) fn spawn_seal(&mut self, job: SealJob) {
        let outbox = self.outbox.clone();
        let data_dir = self.data_dir.clone();
        let wal_dir = data_dir.join("wal");
        let rows = job.rows.clone();
        let schemas = job.schemas.clone();
        let seq = job.seq;
        let metrics = self.metrics.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let tables = rows
                .lock()
                .map_err(|_| Error::Corrupt("a seal's rows were poisoned".into()))?
                .sorted()?;
            let m = outbox.write_seal(seq, &tables)?;
            State {
                sealed_through: seq,
                schemas,
            }
            .save(&data_dir)?;
            crate::wal::remove_segments_through(&wal_dir, seq)?;
            metrics.files_written.inc_by(m.files.len() as u64);
            metrics.quarantined_rows.inc_by(m.quarantined_rows);
            metrics.bytes_written.inc_by(m.files.iter().map(|f| f.bytes).sum());
            info!(
                seq,
                files = m.files.len(),
                rows = m.files.iter().map(|f| f.rows).sum::<u64>(),
                "sealed"
            );
            Ok(())
        });
        self.sealing = Some(handle);
        self.sealing_job = Some(job);
    }

    pub(super) fn seal_finished(&mut self, res: Result<(), Error>) {
        self.sealing = None;
        let Some(job) = self.sealing_job.take() else { return };
        match res {
            Ok(()) => {
                let _ = self.sealed_tx.send(job.seq);
            }
            Err(e) => {
                error!(seq = job.seq, error = %e, "writing a seal failed; retrying in 5 s (its rows stay in the WAL)");
                self.retry = Some((Instant::now() + Duration::from_secs(5), job));
            }
        }
    }
}

/// The outcome of the fsync in flight; never ready when there is none.
pub(super) async fn wait_sync(inflight: &mut Option<Inflight>) -> std::io::Result<()> {
    match inflight {
        Some((h, _, _)) => h.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        None => std::future::pending().await,
    }
}

/// The outcome of the seal in flight; never ready when there is none.
pub(super) async fn wait_seal(handle: &mut Option<JoinHandle<Result<(), Error>>>) -> Result<(), Error> {
    match handle {
        Some(h) => h
            .await
            .unwrap_or_else(|e| Err(Error::Corrupt(format!("the seal task failed: {e}")))),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use twinlake_lake::buffer::{Buffer, Schemas};
    use twinlake_lake::model::FieldValue;

    use super::*;

    /// A seal's rows are sorted once, on the seal's thread; a retry writes the very same
    /// sorted tables.
    #[test]
    fn a_seal_sorts_once_and_a_retry_reuses_it() {
        let mut buffer = Buffer::new("gw", Schemas::new());
        let mut conflicts = Vec::new();
        for (t, device) in [(3, "b"), (1, "a"), (2, "b")] {
            let fields = [(Cow::Borrowed("v"), FieldValue::Int(t))];
            buffer.append("t", t, Some("u"), device, &fields, &mut conflicts);
        }
        let mut rows = SealRows::Unsorted(buffer.take());
        assert_eq!(buffer.rows(), 0, "taken out at once");
        let first = rows.sorted().unwrap();
        let again = rows.sorted().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let (_, batch) = &first[0].hours[0];
        let devices = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
        let devices = devices.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
        assert_eq!(devices.iter().flatten().collect::<Vec<_>>(), ["a", "b", "b"]);
        let mut failed = SealRows::Failed("bad".into());
        assert!(failed.sorted().is_err() && failed.sorted().is_err());
    }
}
