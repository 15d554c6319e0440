//! The day tier: once a UTC day is `day_after` past its end, every file of the day (edge
//! files, compacted hours, an earlier day file) merges into one day file, sorted by
//! (owner, device, time) and written with the dense encodings of
//! [`twinlake_lake::dense`] (exact decimals and millisecond times, delta-encoded; 1.85
//! B/value on TSBS readings, BENCHMARKS.md). Rows that arrive later for a day already merged
//! land in hour files and are merged in at the next pass. The catalog swaps the day's files
//! for the day file in one transaction, as hour compaction does.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;

use crate::QueryError;
use crate::catalog::FileMeta;
use crate::compact::{CompactionConfig, merge, replace, stamp};
use crate::lake::Lake;
use twinlake_lake::file::WriterSettings;
use twinlake_lake::path::{DAY_US, day_start as day_of};
use twinlake_lake::{Hour, LakePath};

/// The days due: `(table, day start)`, for days `day_after` past their end that hold a file
/// other than one day file.
pub fn due(lake: &Lake, cfg: &CompactionConfig, now_us: i64) -> Vec<(String, i64)> {
    let Some(after) = cfg.day_after else {
        return Vec::new();
    };
    let after = after.as_micros().min(i64::MAX as u128) as i64;
    let mut out = Vec::new();
    for table in lake.table_names() {
        // day → (files, day files)
        let mut days: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
        // A rollup's files are its own to replace.
        for f in lake.files(&table).iter().filter(|f| f.covers.is_none()) {
            let e = days.entry(day_of(f.hour_us)).or_default();
            e.0 += 1;
            e.1 += usize::from(f.is_day());
        }
        for (day, (all, day_files)) in days {
            let ended = day.saturating_add(DAY_US).saturating_add(after) <= now_us;
            if ended && all > day_files.min(1) {
                out.push((table.clone(), day));
            }
        }
    }
    out
}

/// Merges every file of `table`'s day starting at `day_us` into one day file. `None` when
/// there was nothing to merge, or when the day holds more than `day_max_rows` rows (its
/// hour files stay; counted in the log).
pub async fn compact_day(
    lake: &Arc<Lake>,
    table: &str,
    day_us: i64,
    cfg: &CompactionConfig,
) -> Result<Option<FileMeta>, QueryError> {
    let files: Vec<_> = lake
        .files(table)
        .into_iter()
        .filter(|f| day_of(f.hour_us) == day_us && f.covers.is_none())
        .collect();
    if files.len() <= 1 && files.iter().all(|f| f.is_day()) {
        return Ok(None);
    }
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    if rows > cfg.day_max_rows {
        warn!(
            table,
            day_us,
            rows,
            limit = cfg.day_max_rows,
            "a day too large for one day file stays in hour files"
        );
        return Ok(None);
    }
    let sorted = merge(lake, &files).await?;
    let settings = WriterSettings {
        zstd_level: cfg.day_zstd_level,
        ..Default::default()
    };
    let replaced = files.len();
    let bytes = tokio::task::spawn_blocking(move || twinlake_lake::dense::encode_day(&sorted, settings, replaced))
        .await
        .map_err(|e| QueryError::Catalog(format!("day file encoder: {e}")))??;
    let hour = Hour::of(day_us).ok_or_else(|| QueryError::Catalog(format!("day {day_us} outside the lake's years")))?;
    let rel = LakePath::day(table, hour, stamp())
        .map_err(|e| QueryError::Catalog(e.to_string()))?
        .to_string();
    Ok(Some(replace(lake, &rel, bytes, &files, cfg.grace).await?))
}
