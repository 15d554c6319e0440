//! Ships sealed Parquet files from the outbox to the object store.
//!
//! The queue is the outbox directory itself, so it survives restarts. Seals go oldest
//! first; a local file is deleted only after the store confirmed its upload, and a seal's
//! directory once all its files are gone. A failed upload is retried with exponential
//! back-off. Re-uploading a file after a crash writes the same bytes to the same path, so
//! nothing is duplicated. While the store is away, a disk cap drops the oldest seals and a
//! TTL the stale ones; every drop is counted and logged.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::Error;
use crate::config::UploadSection;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// Opens the object store a URL names; returns it with the path prefix inside it.
/// An empty URL means `<data_dir>/lake` on the local disk.
pub fn open_store(
    cfg: &UploadSection,
    data_dir: &std::path::Path,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), Error> {
    let url = if cfg.url.is_empty() {
        let dir = data_dir.join("lake");
        std::fs::create_dir_all(&dir)?;
        let abs = std::fs::canonicalize(&dir)?;
        url::Url::from_directory_path(&abs).map_err(|_| Error::Config(format!("bad lake path {}", abs.display())))?
    } else {
        url::Url::parse(&cfg.url).map_err(|e| Error::Config(format!("upload.url {:?}: {e}", cfg.url)))?
    };
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|_| Error::Config(format!("upload.url {url}: not a local path")))?;
        std::fs::create_dir_all(&path)?;
    }
    let (store, prefix) = object_store::parse_url_opts(&url, cfg.options.iter())
        .map_err(|e| Error::Config(format!("upload.url {url}: {e}")))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    // A local lake is durable only with fsyncs, which object_store's local store skips.
    if url.scheme() == "file" {
        return Ok((Arc::new(crate::durable::Durable::new(store)), prefix));
    }
    Ok((store, prefix))
}

/// Why the uploader stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Upload what is there until this instant, then stop.
    DrainUntil(Instant),
}

/// The upload loop.
#[derive(Debug)]
pub struct Uploader {
    pub outbox: Outbox,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
    pub cfg: UploadSection,
    pub metrics: Arc<Metrics>,
    /// Where landed files are announced to the cloud: the gateway id and the uplink.
    pub announce: Option<(String, crate::link::Uplink)>,
}

impl Uploader {
    /// Runs until stopped; `sealed` says which seals are committed.
    pub async fn run(self, mut sealed: watch::Receiver<u64>, mut stop: watch::Receiver<Stop>) {
        let mut backoff = self.cfg.retry_min;
        loop {
            let through = *sealed.borrow_and_update();
            let deadline = match *stop.borrow_and_update() {
                Stop::Running => None,
                Stop::DrainUntil(d) => Some(d),
            };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                self.report_left(through);
                return;
            }
            if let Err(e) = self.enforce_limits(through) {
                error!(error = %e, "cannot check the outbox");
            }
            match self.upload_next(through).await {
                Ok(true) => {
                    backoff = self.cfg.retry_min;
                    continue;
                }
                Ok(false) => {
                    // Nothing waiting.
                    if deadline.is_some() {
                        return;
                    }
                    tokio::select! {
                        _ = sealed.changed() => {}
                        _ = stop.changed() => {}
                        // Keep the TTL and gauges fresh while idle.
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
                Err(e) => {
                    self.metrics.upload_failures.inc();
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "upload failed; will retry");
                    let wake = Instant::now() + backoff;
                    let wake = deadline.map_or(wake, |d| wake.min(d));
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(self.cfg.retry_max);
                }
            }
        }
    }

    fn report_left(&self, through: u64) {
        if let Ok(sizes) = self.outbox.sizes() {
            let left: u64 = sizes.range(..=through).map(|(_, b)| b).sum();
            if left > 0 {
                warn!(bytes = left, "upload deadline reached; the rest goes at the next start");
            }
        }
    }

    /// Uploads one file of the oldest committed seal. `Ok(false)` when there is none.
    async fn upload_next(&self, through: u64) -> Result<bool, Error> {
        let seals = self.outbox.seals()?;
        let Some(&seq) = seals.iter().find(|s| **s <= through) else {
            self.metrics.upload_queue_files.set(0);
            self.metrics.upload_queue_bytes.set(0);
            return Ok(false);
        };
        let m = match self.outbox.pending(seq) {
            Ok(m) => m,
            Err(Error::Corrupt(why)) => {
                // Not retryable: set it aside so the seals after it still go up.
                error!(seq, %why, "a sealed batch is unreadable; moved aside as outbox/damaged-<seq>");
                self.metrics.dropped("damaged", 1, 0);
                self.outbox.quarantine(seq)?;
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let Some(file) = m.files.first() else {
            self.outbox.remove_seal(seq)?;
            debug!(seq, "seal uploaded");
            return Ok(true);
        };
        let local = self.outbox.local_path(seq, &file.path);
        let bytes = tokio::fs::read(&local).await?;
        let len = bytes.len() as u64;
        let dest = ObjectPath::from(format!("{}/{}", self.prefix, file.path).trim_start_matches('/'));
        self.store.put(&dest, bytes::Bytes::from(bytes).into()).await?;
        tokio::fs::remove_file(&local).await?;
        if let Some((gateway, uplink)) = &self.announce {
            uplink.file(gateway, file.clone());
        }
        self.metrics.files_uploaded.inc();
        self.metrics.bytes_uploaded.inc_by(len);
        debug!(path = %dest, bytes = len, "uploaded");
        Ok(true)
    }

    /// Applies the TTL and the disk cap to committed seals, oldest first, and updates the
    /// queue gauges.
    fn enforce_limits(&self, through: u64) -> Result<(), Error> {
        let now_ms = crate::outbox::now_ms();
        let mut total: u64 = 0;
        let mut files: i64 = 0;
        let mut seals = Vec::new();
        for seq in self.outbox.seals()?.into_iter().filter(|s| *s <= through) {
            // An unreadable manifest is dealt with by the upload step.
            let Ok(m) = self.outbox.pending(seq) else { continue };
            let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
            total += bytes;
            files += m.files.len() as i64;
            seals.push((seq, m, bytes));
        }
        for (seq, m, bytes) in &seals {
            let expired = self
                .cfg
                .ttl
                .is_some_and(|ttl| now_ms.saturating_sub(m.sealed_at_ms) > ttl.as_millis() as u64);
            let over_cap = self.cfg.disk_cap_bytes > 0 && total > self.cfg.disk_cap_bytes;
            if !expired && !over_cap {
                break;
            }
            let reason = if expired { "ttl" } else { "disk_cap" };
            let rows: u64 = m.files.iter().map(|f| f.rows).sum();
            self.outbox.remove_seal(*seq)?;
            self.metrics.dropped(reason, m.files.len() as u64, rows);
            total -= bytes;
            files -= m.files.len() as i64;
            warn!(
                seq,
                files = m.files.len(),
                rows,
                bytes,
                reason,
                "dropped sealed files that could not be uploaded"
            );
        }
        self.metrics.upload_queue_files.set(files);
        self.metrics.upload_queue_bytes.set(total as i64);
        if files > 0 {
            debug!(files, bytes = total, "files waiting for upload");
        }
        Ok(())
    }
}
