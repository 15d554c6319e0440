//! Compaction: the many small files edges write per hour partition are merged into one
//! file sorted by (device, time), and the catalog swaps to it in one transaction. Queries
//! planned before the swap keep reading the old files, which are deleted after a grace
//! period. Query time stays flat as files accumulate (BENCHMARKS.md, "Query time against
//! file count").

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::AsyncArrowWriter;
use tracing::{info, warn};

use crate::QueryError;
use twinlake_lake::columns::{OWNER, merge_schema};
use twinlake_lake::file::{Writer, WriterSettings};
use twinlake_lake::{Hour, LakePath};

use crate::catalog::{self, FileMeta};
use crate::lake::{Lake, conform};

/// When partitions are compacted.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// How often the compactor looks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A partition with this many edge files is compacted even while its hour is current.
    pub min_files: usize,
    /// An hour partition this long past its end is compacted once it has two files.
    #[serde(with = "humantime_serde")]
    pub cold_after: Duration,
    /// How long replaced files stay for queries already running.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// zstd level of compacted files.
    pub zstd_level: i32,
    /// A UTC day this long past its end merges into one day file (`days`); none: never.
    #[serde(with = "humantime_serde")]
    pub day_after: Option<Duration>,
    /// zstd level of day files.
    pub day_zstd_level: i32,
    /// A day holding more rows stays in hour files (a day file is built in memory).
    pub day_max_rows: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            min_files: 8,
            cold_after: Duration::from_secs(600),
            grace: Duration::from_secs(120),
            zstd_level: 3,
            day_after: Some(Duration::from_secs(24 * 3600)),
            day_zstd_level: 3,
            day_max_rows: 20_000_000,
        }
    }
}

/// The partitions due: `(table, hour)`.
pub fn due(lake: &Lake, cfg: &CompactionConfig, now_us: i64) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in lake.table_names() {
        let mut by_hour: std::collections::BTreeMap<i64, (usize, usize)> = Default::default();
        for f in lake.files(&table).iter().filter(|f| !f.is_day() && f.covers.is_none()) {
            let e = by_hour.entry(f.hour_us).or_default();
            e.0 += 1;
            if f.level == 0 {
                e.1 += 1;
            }
        }
        for (hour, (all, edge)) in by_hour {
            let ended_ago = now_us - (hour + 3_600_000_000);
            let cold = ended_ago > cfg.cold_after.as_micros() as i64;
            if all > 1 && (edge >= cfg.min_files || (cold && edge > 0)) {
                out.push((table.clone(), hour));
            }
        }
    }
    out
}

async fn read(lake: &Lake, f: &FileMeta) -> Result<Vec<RecordBatch>, QueryError> {
    let (store, prefix) = lake.store();
    let stream = catalog::open_file(store, prefix, &f.path, f.bytes)
        .await?
        .with_batch_size(64 * 1024)
        .build()?;
    Ok(stream.try_collect().await?)
}

/// Every row of `files`, in their merged schema, sorted by (owner, device, time).
pub(crate) async fn merge(lake: &Lake, files: &[Arc<FileMeta>]) -> Result<RecordBatch, QueryError> {
    let schema = merge_schema(files.iter().map(|f| f.columns.as_slice()));
    let mut batches = Vec::new();
    for f in files {
        for b in read(lake, f).await? {
            batches.push(conform(&b, &schema)?);
        }
    }
    let all = concat_batches(&schema, &batches)?;
    drop(batches);
    if all.num_rows() == 0 {
        return Ok(all);
    }
    let sort: Vec<SortColumn> = [OWNER, "device", "time"]
        .iter()
        .filter_map(|c| all.column_by_name(c))
        .map(|c| SortColumn {
            values: c.clone(),
            options: None,
        })
        .collect();
    let idx = lexsort_to_indices(&sort, None)?;
    Ok(take_record_batch(&all, &idx)?)
}

/// µs since the epoch now, as a file name's stamp.
pub(crate) fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Stores `bytes` at `rel`, describes it from its footer and swaps it for `files` in the
/// catalog in one step; the replaced files are deleted once running queries are done.
pub(crate) async fn replace(
    lake: &Arc<Lake>,
    rel: &str,
    bytes: Vec<u8>,
    files: &[Arc<FileMeta>],
    grace: Duration,
) -> Result<FileMeta, QueryError> {
    let (store, prefix) = lake.store();
    let size = bytes.len() as u64;
    lake.catalog().pending(rel)?;
    if let Err(e) = store
        .put(&catalog::full_path(prefix, rel), bytes::Bytes::from(bytes).into())
        .await
    {
        // Nothing written (a failed put stores no object): the mark has nothing to guard.
        let _ = lake.catalog().unpend(rel);
        return Err(e.into());
    }
    let removed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let swapped = async {
        let meta = catalog::describe(store, prefix, rel, Some(size)).await?;
        lake.swap(&meta.table, meta.clone(), &removed)?;
        Ok::<_, QueryError>(meta)
    };
    let meta = match swapped.await {
        Ok(meta) => meta,
        Err(e) => {
            // The new file is in no catalog and its rows are still in the files it was to
            // replace: it goes, so that no listing takes it for new rows.
            match store.delete(&catalog::full_path(prefix, rel)).await {
                Ok(()) => {
                    let _ = lake.catalog().unpend(rel);
                }
                // The mark stays: the start's sweep deletes the file, and then drops it.
                Err(d) => warn!(path = %rel, error = %d, "cannot delete a merged file that was not catalogued"),
            }
            return Err(e);
        }
    };
    info!(
        table = meta.table,
        files = files.len(),
        rows = meta.rows,
        bytes = meta.bytes,
        path = %rel,
        "compacted"
    );
    let store = store.clone();
    let prefix = prefix.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        for p in removed {
            if let Err(e) = store.delete(&catalog::full_path(&prefix, &p)).await {
                warn!(path = %p, error = %e, "cannot delete a compacted file");
            }
        }
    });
    Ok(meta)
}

/// Merges every file of `table`'s `hour` partition (not its day file, nor rollup files,
/// which their rollup replaces) into one. Returns
/// the new file, or `None` when there was nothing to merge.
pub async fn compact_partition(
    lake: &Arc<Lake>,
    table: &str,
    hour_us: i64,
    cfg: &CompactionConfig,
) -> Result<Option<FileMeta>, QueryError> {
    let files: Vec<_> = lake
        .files(table)
        .into_iter()
        .filter(|f| f.hour_us == hour_us && !f.is_day() && f.covers.is_none())
        .collect();
    if files.len() < 2 {
        return Ok(None);
    }
    let sorted = merge(lake, &files).await?;
    let settings = WriterSettings {
        zstd_level: cfg.zstd_level,
        ..Default::default()
    };
    let props = twinlake_lake::file::writer_properties(settings, Writer::Compaction { replaced: files.len() })?;
    let mut bytes = Vec::new();
    {
        let mut w = AsyncArrowWriter::try_new(&mut bytes, sorted.schema(), Some(props))?;
        w.write(&sorted).await?;
        w.close().await?;
    }
    let hour =
        Hour::of(hour_us).ok_or_else(|| QueryError::Catalog(format!("hour {hour_us} outside the lake's years")))?;
    let rel = LakePath::compacted(table, hour, stamp())
        .map_err(|e| QueryError::Catalog(e.to_string()))?
        .to_string();
    Ok(Some(replace(lake, &rel, bytes, &files, cfg.grace).await?))
}
