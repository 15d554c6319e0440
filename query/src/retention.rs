//! Retention: the one place where data is deleted by the operator's explicit choice
//! (`[sql.retention]`). Only whole hour partitions go, once their hour ended longer ago
//! than the table's retention. A partition leaves the catalog (durably) and every query
//! snapshot in one step, so a query sees all of it or none; its files are deleted after
//! `grace` (at least the SQL timeout), so queries that planned before still finish. Runs in
//! the compactor's task, so a partition is never compacted and expired at once. Fresh rows
//! of expired hours are dropped at the same step. A partition goes only once every rollup of
//! its table covers it ([`crate::rollup::held`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use tracing::{info, warn};

use crate::QueryError;
use crate::catalog;
use crate::lake::Lake;
use twinlake_lake::path::HOUR_US;

pub use twinlake_lake::retention::RetentionConfig;

/// A partition deleted by retention.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub table: String,
    pub hour_us: i64,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// The partitions wholly past their table's retention at `now_us`: `(table, start, span)`,
/// an hour or (a day file) a day.
pub fn due(
    lake: &Lake,
    cfg: &RetentionConfig,
    rollups: &[crate::rollup::RollupDef],
    now_us: i64,
) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for table in lake.table_names() {
        let Some(keep) = cfg.of(&table) else { continue };
        let cutoff = now_us.saturating_sub(keep.as_micros().min(i64::MAX as u128) as i64);
        let held = crate::rollup::held(lake, rollups, &table);
        let parts: BTreeSet<(i64, i64)> = lake
            .files(&table)
            .iter()
            .map(|f| (f.hour_us, f.span_us()))
            .chain(lake.fresh_hours(&table).into_iter().map(|h| (h, HOUR_US)))
            .filter(|(h, span)| h.saturating_add(*span) <= cutoff)
            .filter(|(h, span)| !held.iter().any(|(s, sp)| *s < h + span && *h < s + sp))
            .collect();
        out.extend(parts.into_iter().map(|(h, span)| (table.clone(), h, span)));
    }
    out
}

/// Expires one partition (an hour, or a day file's day): out of the catalog and every new
/// snapshot at once, its files deleted from the object store after `grace`.
pub fn expire_partition(
    lake: &Arc<Lake>,
    table: &str,
    hour_us: i64,
    span_us: i64,
    grace: Duration,
) -> Result<Expired, QueryError> {
    let files = lake.drop_partition(table, hour_us, span_us)?;
    let expired = Expired {
        table: table.to_owned(),
        hour_us,
        files: files.len(),
        rows: files.iter().map(|f| f.rows).sum(),
        bytes: files.iter().map(|f| f.bytes).sum(),
    };
    if !files.is_empty() {
        info!(
            table,
            hour_us,
            files = expired.files,
            rows = expired.rows,
            "retention expired a partition"
        );
    }
    let (store, prefix) = lake.store();
    let (store, prefix) = (store.clone(), prefix.clone());
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        for f in files {
            if let Err(e) = store.delete(&catalog::full_path(&prefix, &f.path)).await {
                warn!(path = %f.path, error = %e, "cannot delete an expired file");
            }
        }
    });
    Ok(expired)
}

/// One pass: every partition due, expired; what went, for the caller to count.
pub fn pass(
    lake: &Arc<Lake>,
    cfg: &RetentionConfig,
    rollups: &[crate::rollup::RollupDef],
    grace: Duration,
    now_us: i64,
) -> Vec<Expired> {
    let mut out = Vec::new();
    for (table, hour, span) in due(lake, cfg, rollups, now_us) {
        match expire_partition(lake, &table, hour, span, grace) {
            Ok(e) => out.push(e),
            Err(e) => warn!(%table, hour, error = %e, "retention could not expire a partition; will retry"),
        }
    }
    out
}
