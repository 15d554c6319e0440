//! The lake's upkeep task: every `compaction.interval` it rolls up what rollups lack,
//! expires what retention says, compacts due hour partitions and merges due days, until
//! stopped. One task, so a partition is never rolled, compacted and expired at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::compact::{CompactionConfig, compact_partition};
use crate::lake::Lake;

/// What the compactor's task does besides compacting: rollups, retention, and whom to tell.
#[derive(Clone)]
pub struct Expiry {
    pub retention: crate::retention::RetentionConfig,
    /// Rollups to maintain (checked with `rollup::check_all`).
    pub rollups: Vec<crate::rollup::RollupDef>,
    /// How long expired files stay for running queries.
    pub grace: Duration,
    /// Told of each partition retention took.
    pub on_expired: Arc<dyn Fn(&crate::retention::Expired) + Send + Sync>,
}

impl std::fmt::Debug for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiry")
            .field("retention", &self.retention)
            .field("rollups", &self.rollups)
            .finish_non_exhaustive()
    }
}

/// Every `cfg.interval`: rolls up what rollups lack, expires what retention says, then
/// compacts due partitions and days, until `stop` turns true.
pub async fn run(lake: Arc<Lake>, cfg: CompactionConfig, expiry: Option<Expiry>, mut stop: watch::Receiver<bool>) {
    let expiring = expiry.as_ref().is_some_and(|e| !e.retention.is_empty());
    let rolling = expiry.as_ref().is_some_and(|e| !e.rollups.is_empty());
    if !cfg.enabled && !expiring && !rolling {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = crate::now_us();
        if let Some(e) = expiry.as_ref().filter(|_| rolling) {
            crate::rollup::pass(&lake, &e.rollups, cfg.grace, now).await;
        }
        if let Some(e) = expiry.as_ref().filter(|_| expiring) {
            for x in crate::retention::pass(&lake, &e.retention, &e.rollups, e.grace, now) {
                (e.on_expired)(&x);
            }
        }
        if cfg.enabled {
            for (table, hour) in crate::compact::due(&lake, &cfg, now) {
                if *stop.borrow() {
                    return;
                }
                if let Err(e) = compact_partition(&lake, &table, hour, &cfg).await {
                    warn!(%table, hour, error = %e, "compaction failed; will retry");
                }
            }
            for (table, day) in crate::days::due(&lake, &cfg, now) {
                if *stop.borrow() {
                    return;
                }
                if let Err(e) = crate::days::compact_day(&lake, &table, day, &cfg).await {
                    warn!(%table, day, error = %e, "day compaction failed; will retry");
                }
            }
        }
    }
}
