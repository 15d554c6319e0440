//! The catalog of committed Parquet files: what each holds (table, partition, gateway and
//! seal, time and device range, rows, bytes, columns), durable in redb.
//!
//! Files arrive from the gateway link (the edge announces each upload), from compaction
//! (which swaps many files for one in a single transaction) or from a listing of the object
//! store ([`rebuild`]), which recovers a lost catalog. Every entry is read from the file's
//! own footer, so the catalog never trusts a description it was merely sent. A path that
//! compaction replaced stays remembered ([`REPLACED`]): an edge that uploads it again after a
//! crash does not bring its rows back twice.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};

/// A reader of the lake file at `path` (relative to `prefix`) of `size` bytes: its footer
/// read, its rows ready to stream.
#[allow(deprecated)]
pub async fn open_file(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    path: &str,
    size: u64,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, QueryError> {
    // The object_store reader is deprecated upstream in favour of hand-written readers;
    // it is still the plain way to read one file.
    let reader = ParquetObjectReader::new(store.clone(), full_path(prefix, path)).with_file_size(size);
    Ok(ParquetRecordBatchStreamBuilder::new(reader).await?)
}
use parquet::file::statistics::Statistics;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use twinlake_lake::LakePath;
use twinlake_lake::columns::ColumnType;
use twinlake_lake::file::FileInfo;

use crate::QueryError;

/// Object path (relative to the lake root) → [`FileMeta`] as JSON.
pub const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("lake_files");
/// Object path → the compacted file that replaced it.
pub const REPLACED: TableDefinition<&str, &str> = TableDefinition::new("lake_replaced");
/// The [`REPLACED`] value of a merged file being written, not yet swapped in.
const PENDING: &str = "pending";

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Relative to the lake root: `<table>/date=YYYY-MM-DD/hour=HH/<gateway>-<seal>.parquet`.
    pub path: String,
    pub table: String,
    /// The hour partition's start, µs since the epoch.
    pub hour_us: i64,
    /// The gateway that wrote it and its seal number (`None` for compacted or foreign files).
    pub gateway: Option<String>,
    pub seal: Option<u64>,
    pub min_time_us: i64,
    pub max_time_us: i64,
    pub device_min: Option<String>,
    pub device_max: Option<String>,
    pub rows: u64,
    pub bytes: u64,
    /// Column names and types, in file order.
    pub columns: Vec<(String, ColumnType)>,
    /// 0 for an edge file, 1 for a compacted hour, [`LEVEL_DAY`] for a day file.
    #[serde(default)]
    pub level: u8,
    /// What a rollup file covers (`crate::rollup`), from its footer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers: Option<Covers>,
}

/// What a rollup file covers: a span of its source table's committed rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covers {
    pub source: String,
    /// The rollup's interval, µs.
    pub every_us: i64,
    /// The span: its start and length (an hour or a day), µs.
    pub start_us: i64,
    pub span_us: i64,
    /// The source rows the span held when rolled.
    pub rows: u64,
}

/// The level of a day file.
pub const LEVEL_DAY: u8 = 2;

impl FileMeta {
    /// Whether it is a day file (which holds its whole UTC day).
    pub fn is_day(&self) -> bool {
        self.level == LEVEL_DAY
    }

    /// How long a time its partition spans: an hour, or a day for a day file.
    pub fn span_us(&self) -> i64 {
        if self.is_day() {
            twinlake_lake::path::DAY_US
        } else {
            twinlake_lake::path::HOUR_US
        }
    }
}

/// Reads a file's footer and describes it. `path` is relative to the lake root `prefix`.
pub async fn describe(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    path: &str,
    size: Option<u64>,
) -> Result<FileMeta, QueryError> {
    let lake_path = LakePath::parse(path).ok_or_else(|| QueryError::Catalog(format!("{path}: not a lake path")))?;
    let hour_us = lake_path.hour().start_us();
    let size = match size {
        Some(s) => s,
        None => store.head(&full_path(prefix, path)).await?.size,
    };
    let builder = open_file(store, prefix, path, size).await?;
    let schema = builder.schema().clone();
    let meta = builder.metadata().clone();
    let info = FileInfo::read(meta.file_metadata().key_value_metadata())?;
    let stored = twinlake_lake::dense::read_stored(meta.file_metadata().key_value_metadata())?;
    let mut columns = Vec::new();
    for f in schema.fields() {
        let logical = twinlake_lake::dense::logical_type(&stored, f.name(), f.data_type());
        if let Some(t) = ColumnType::of(&logical) {
            columns.push((f.name().clone(), t));
        }
    }
    // A day file may keep `time` in milliseconds.
    let time_scale = match stored.get("time") {
        Some(twinlake_lake::dense::Stored::Millis) => 1000,
        _ => 1,
    };
    let parquet_schema = meta.file_metadata().schema_descr();
    let leaf = |name: &str| (0..parquet_schema.num_columns()).find(|i| parquet_schema.column(*i).name() == name);
    let (time_idx, device_idx) = (leaf("time"), leaf("device"));
    let (mut tmin, mut tmax) = (i64::MAX, i64::MIN);
    let (mut dmin, mut dmax): (Option<String>, Option<String>) = (None, None);
    let mut rows = 0u64;
    for rg in meta.row_groups() {
        rows += rg.num_rows().max(0) as u64;
        if let Some(Statistics::Int64(s)) = time_idx.and_then(|i| rg.column(i).statistics()) {
            if let (Some(a), Some(b)) = (s.min_opt(), s.max_opt()) {
                tmin = tmin.min(a.saturating_mul(time_scale));
                tmax = tmax.max(b.saturating_mul(time_scale));
            }
        } else if rg.num_rows() > 0 {
            // Without statistics nothing can be pruned: the whole hour.
            tmin = tmin.min(hour_us);
            tmax = tmax.max(hour_us + 3_599_999_999);
        }
        if let Some(Statistics::ByteArray(s)) = device_idx.and_then(|i| rg.column(i).statistics()) {
            if let (Some(a), Some(b)) = (s.min_opt(), s.max_opt()) {
                let (a, b) = (String::from_utf8_lossy(a.data()), String::from_utf8_lossy(b.data()));
                if dmin.as_deref().is_none_or(|m| *a < *m) {
                    dmin = Some(a.into_owned());
                }
                if dmax.as_deref().is_none_or(|m| *b > *m) {
                    dmax = Some(b.into_owned());
                }
            }
        } else if rg.num_rows() > 0 {
            dmin = Some(String::new());
            dmax = Some("\u{10FFFF}".into());
        }
    }
    if rows == 0 {
        (tmin, tmax) = (hour_us, hour_us);
    }
    // Only the cloud writes `compacted-…` and `day-…` names (no gateway may be called so),
    // and a gateway's file stays its own whatever its metadata claims.
    let origin = lake_path.gateway_seal();
    let compacted = origin.is_none();
    if (compacted && !info.compacted) || lake_path.is_day() != info.day {
        return Err(QueryError::Catalog(format!(
            "{path}: its name and its metadata disagree on who wrote it"
        )));
    }
    if origin.is_some() && !stored.is_empty() {
        return Err(QueryError::Catalog(format!(
            "{path}: a gateway's file with stored types"
        )));
    }
    Ok(FileMeta {
        path: path.to_owned(),
        table: lake_path.table().to_owned(),
        hour_us,
        gateway: origin.map(|o| o.0.to_owned()),
        seal: origin.map(|o| o.1),
        min_time_us: tmin,
        max_time_us: tmax,
        device_min: dmin,
        device_max: dmax,
        rows,
        bytes: size,
        columns,
        level: if lake_path.is_day() {
            LEVEL_DAY
        } else {
            u8::from(compacted)
        },
        covers: match (compacted, find_kv(&meta, twinlake_lake::file::ROLLUP_KEY)) {
            (true, Some(v)) => Some(serde_json::from_str(&v).map_err(|e| QueryError::Catalog(format!("{path}: {e}")))?),
            _ => None,
        },
    })
}

/// A key's value in a file's key-value metadata.
fn find_kv(meta: &parquet::file::metadata::ParquetMetaData, key: &str) -> Option<String> {
    meta.file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|k| k.key == key)
        .and_then(|k| k.value.clone())
}

/// `prefix/path` as an object path.
pub fn full_path(prefix: &ObjectPath, path: &str) -> ObjectPath {
    let p = prefix.as_ref();
    if p.is_empty() {
        ObjectPath::from(path)
    } else {
        ObjectPath::from(format!("{p}/{path}"))
    }
}

/// The durable half of the catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Arc<Database>,
}

impl Catalog {
    /// Opens (creating) the catalog's tables in `db`.
    pub fn open(db: Arc<Database>) -> Result<Self, QueryError> {
        let tx = db.begin_write()?;
        tx.open_table(FILES)?;
        tx.open_table(REPLACED)?;
        tx.commit()?;
        Ok(Self { db })
    }

    /// Every file, and the set of replaced paths.
    pub fn load(&self) -> Result<Vec<FileMeta>, QueryError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FILES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            match serde_json::from_slice::<FileMeta>(v.value()) {
                Ok(m) => out.push(m),
                Err(e) => tracing::error!(path = k.value(), error = %e, "unreadable catalog entry; skipped"),
            }
        }
        Ok(out)
    }

    /// Whether compaction replaced `path`.
    pub fn replaced(&self, path: &str) -> Result<bool, QueryError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(REPLACED)?.get(path)?.is_some())
    }

    /// Marks `path`, about to be written by the cloud (a merged file), as replaced until a
    /// [`Catalog::swap`] adds it: a cloud stopped between the write and the swap leaves a
    /// file whose rows are still in the files it was to replace, and this mark keeps the
    /// start's listing from cataloguing it beside them (its sweep deletes it instead).
    pub fn pending(&self, path: &str) -> Result<(), QueryError> {
        let tx = self.db.begin_write()?;
        tx.open_table(REPLACED)?.insert(path, PENDING)?;
        tx.commit()?;
        Ok(())
    }

    /// Drops `path`'s pending mark ([`Catalog::pending`]): its file was never written, or
    /// is deleted. A path marked as replaced by a merge keeps its mark.
    pub fn unpend(&self, path: &str) -> Result<(), QueryError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(REPLACED)?;
            let pending = t.get(path)?.is_some_and(|v| v.value() == PENDING);
            if pending {
                t.remove(path)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The paths marked pending: merged files being written, or left by a stop or a
    /// failure before their swap.
    pub fn pending_marks(&self) -> Result<Vec<String>, QueryError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REPLACED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if v.value() == PENDING {
                out.push(k.value().to_owned());
            }
        }
        Ok(out)
    }

    /// Records files and removes others, in one transaction; removed paths are remembered
    /// as replaced by `replaced_by` when given. An added path is no longer pending.
    pub fn swap(&self, add: &[FileMeta], remove: &[String], replaced_by: Option<&str>) -> Result<(), QueryError> {
        let tx = self.db.begin_write()?;
        {
            let mut files = tx.open_table(FILES)?;
            let mut replaced = tx.open_table(REPLACED)?;
            for path in remove {
                files.remove(path.as_str())?;
                if let Some(by) = replaced_by {
                    replaced.insert(path.as_str(), by)?;
                }
            }
            for m in add {
                let bytes = serde_json::to_vec(m).map_err(|e| QueryError::Catalog(e.to_string()))?;
                files.insert(m.path.as_str(), bytes.as_slice())?;
                replaced.remove(m.path.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Lists the lake under `prefix` and describes every Parquet file not yet in `known`.
pub async fn list_new(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
    known: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<FileMeta>, QueryError> {
    let listed: Vec<_> = store.list(Some(prefix)).try_collect().await?;
    let mut out = Vec::new();
    for obj in listed {
        let full = obj.location.as_ref();
        let rel = full
            .strip_prefix(prefix.as_ref())
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(full);
        if !rel.ends_with(".parquet") || known(rel) || LakePath::parse(rel).is_none() {
            continue;
        }
        match describe(store, prefix, rel, Some(obj.size)).await {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(path = rel, error = %e, "unreadable Parquet file in the lake; skipped"),
        }
    }
    Ok(out)
}
