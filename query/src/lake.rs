//! The lake as DataFusion sees it: committed files from the catalog plus fresh rows that
//! edges sent but have not committed yet, one table per resource or bucket.
//!
//! **Exactly once.** An edge sends each row it made durable together with its WAL segment
//! number, and later announces the Parquet file that holds it, named
//! `<table>/date=…/hour=…/<gateway>-<seal>.parquet`. A seal takes every WAL segment up to its
//! number, so when the file for `(gateway, seal, table, hour)` is catalogued, the fresh rows
//! of that gateway, table and hour from segments `<= seal` are dropped, under the same lock
//! that query snapshots take. A query therefore sees a row either fresh or in its file,
//! never both and never neither (while the link is up).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use twinlake_lake::buffer::{Buffer, Schemas};
use twinlake_lake::columns::{ColumnType, merge_schema};
use twinlake_sdk::pson::ValueRef;

use crate::QueryError;
use crate::catalog::{self, Catalog, FileMeta};

mod table;
pub use table::{LakeTable, Pruning};

/// One fresh row as an edge sent it.
#[derive(Debug, Clone)]
pub struct FreshRow<'a> {
    pub time_us: i64,
    /// The user the device belongs to; none from a gateway older than the `owner` column.
    pub owner: Option<&'a str>,
    pub device: &'a str,
    /// The PSON payload.
    pub payload: ValueRef<'a>,
}

/// Bounds on fresh rows.
#[derive(Debug, Clone, Copy)]
pub struct FreshLimits {
    /// Rows held at most; past it the oldest chunks go (counted).
    pub max_rows: usize,
    /// Arrow memory held at most (a few wide rows weigh more than many narrow ones); past it
    /// the oldest chunks go (counted).
    pub max_bytes: usize,
    /// Fresh rows whose file never came (a seal the edge dropped) go after this long.
    pub max_age: std::time::Duration,
}

impl Default for FreshLimits {
    fn default() -> Self {
        Self {
            max_rows: 5_000_000,
            max_bytes: 512 << 20,
            max_age: std::time::Duration::from_secs(3 * 3600),
        }
    }
}

/// Fresh rows of one table from one gateway's WAL segment and hour.
#[derive(Debug, Clone)]
struct Chunk {
    gateway: Arc<str>,
    segment: u64,
    hour_us: i64,
    min_us: i64,
    max_us: i64,
    batch: RecordBatch,
    at: Instant,
}

#[derive(Debug, Default)]
struct TableState {
    files: BTreeMap<String, Arc<FileMeta>>,
    /// Rows still arriving, per (gateway, segment): sealed into chunks when a query looks.
    open: HashMap<(Arc<str>, u64), (Buffer, Instant)>,
    chunks: Vec<Chunk>,
    fresh_rows: usize,
    /// Columns of fresh rows, in arrival order.
    fresh_columns: Vec<(String, ColumnType)>,
    schema: Option<SchemaRef>,
}

impl TableState {
    fn schema(&mut self) -> SchemaRef {
        if let Some(s) = &self.schema {
            return s.clone();
        }
        let s = merge_schema(
            self.files
                .values()
                .map(|f| f.columns.as_slice())
                .chain(std::iter::once(self.fresh_columns.as_slice())),
        );
        self.schema = Some(s.clone());
        s
    }

    /// Seals rows still open into chunks.
    fn seal_open(&mut self) {
        for ((gateway, segment), (mut buf, at)) in self.open.drain() {
            let Ok(tables) = buf.seal() else { continue };
            for t in tables {
                for (hour_us, batch) in t.hours {
                    let (min_us, max_us) = time_range(&batch);
                    self.chunks.push(Chunk {
                        gateway: gateway.clone(),
                        segment,
                        hour_us,
                        min_us,
                        max_us,
                        batch,
                        at,
                    });
                }
            }
        }
    }

    /// The Arrow memory of its fresh rows, open and sealed.
    fn fresh_bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.batch.get_array_memory_size())
            .sum::<usize>()
            + self.open.values().map(|(b, _)| b.bytes()).sum::<usize>()
    }

    fn drop_chunks(&mut self, keep: impl Fn(&Chunk) -> bool) -> usize {
        let before = self.fresh_rows;
        self.chunks.retain(|c| keep(c));
        self.fresh_rows = self.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>()
            + self.open.values().map(|(b, _)| b.rows()).sum::<usize>();
        before.saturating_sub(self.fresh_rows)
    }
}

fn time_range(batch: &RecordBatch) -> (i64, i64) {
    use arrow::array::TimestampMicrosecondArray;
    let Some(t) = batch.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>() else {
        return (i64::MIN, i64::MAX);
    };
    (
        arrow::compute::min(t).unwrap_or(i64::MIN),
        arrow::compute::max(t).unwrap_or(i64::MAX),
    )
}

/// Counters the lake keeps.
#[derive(Debug, Default)]
pub struct LakeCounters {
    pub fresh_rows_in: std::sync::atomic::AtomicU64,
    pub fresh_rows_dropped: std::sync::atomic::AtomicU64,
    pub files_committed: std::sync::atomic::AtomicU64,
    pub files_ignored: std::sync::atomic::AtomicU64,
}

/// The lake: its catalog, its object store and the fresh rows.
#[derive(Debug)]
pub struct Lake {
    catalog: Catalog,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: ObjectStoreUrl,
    tables: Mutex<BTreeMap<String, TableState>>,
    limits: FreshLimits,
    pub counters: LakeCounters,
}

/// What a query reads of one table: files and fresh batches, under one snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub files: Vec<Arc<FileMeta>>,
    pub fresh: Vec<RecordBatch>,
}

impl Lake {
    /// The lake at `prefix` in `store`, with the catalog in `db`. Loads the catalog.
    pub fn open(
        db: Arc<redb::Database>,
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        limits: FreshLimits,
    ) -> Result<Arc<Self>, QueryError> {
        let catalog = Catalog::open(db)?;
        let files = catalog.load()?;
        let url = ObjectStoreUrl::parse("lake://twinlake").map_err(QueryError::from)?;
        let lake = Self {
            catalog,
            store,
            prefix,
            url,
            tables: Mutex::default(),
            limits,
            counters: LakeCounters::default(),
        };
        {
            let mut tables = lake.lock();
            for f in files {
                let t = tables.entry(f.table.clone()).or_default();
                t.files.insert(f.path.clone(), Arc::new(f));
            }
        }
        Ok(Arc::new(lake))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TableState>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object store and the lake's prefix in it.
    pub fn store(&self) -> (&Arc<dyn ObjectStore>, &ObjectPath) {
        (&self.store, &self.prefix)
    }

    /// The URL the store is registered under in DataFusion.
    pub fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// The durable catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Table names (with committed files or fresh rows).
    pub fn table_names(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, t)| !t.files.is_empty() || t.fresh_rows > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A table's schema, if it exists.
    pub fn schema(&self, table: &str) -> Option<SchemaRef> {
        let mut tables = self.lock();
        let t = tables.get_mut(table)?;
        if t.files.is_empty() && t.fresh_rows == 0 {
            return None;
        }
        Some(t.schema())
    }

    /// Every catalogued file of a table.
    pub fn files(&self, table: &str) -> Vec<Arc<FileMeta>> {
        self.lock()
            .get(table)
            .map(|t| t.files.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The hours a table's fresh rows fall in.
    pub fn fresh_hours(&self, table: &str) -> Vec<i64> {
        let mut tables = self.lock();
        let Some(t) = tables.get_mut(table) else {
            return Vec::new();
        };
        t.seal_open();
        t.chunks.iter().map(|c| c.hour_us).collect()
    }

    /// Takes a whole partition out (retention): an hour, or with `span_us` a day the day
    /// file of the day starting at `hour_us`. Out of the catalog durably, and out of every
    /// later snapshot together with its fresh rows, in one step under the tables' lock.
    /// Returns its files, for the caller to delete once running queries are done.
    pub fn drop_partition(&self, table: &str, hour_us: i64, span_us: i64) -> Result<Vec<Arc<FileMeta>>, QueryError> {
        let mut tables = self.lock();
        let Some(t) = tables.get_mut(table) else {
            return Ok(Vec::new());
        };
        let files: Vec<Arc<FileMeta>> = t
            .files
            .values()
            .filter(|f| f.hour_us == hour_us && f.span_us() == span_us)
            .cloned()
            .collect();
        let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        // Remembered as replaced: a late announcement of the same file is not taken back.
        self.catalog.swap(&[], &paths, Some("retention"))?;
        for p in &paths {
            t.files.remove(p);
        }
        t.schema = None;
        t.seal_open();
        let dropped = t.drop_chunks(|c| c.hour_us < hour_us || c.hour_us >= hour_us + span_us);
        self.counters
            .fresh_rows_dropped
            .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(files)
    }

    /// Rows of fresh data held, over all tables.
    pub fn fresh_rows(&self) -> usize {
        self.lock().values().map(|t| t.fresh_rows).sum()
    }

    /// Takes fresh rows a gateway sent: `stream` says whether the payloads carry the
    /// in/out wrapper of a resource stream.
    pub fn add_fresh(&self, gateway: &str, table: &str, segment: u64, stream: bool, rows: &[FreshRow<'_>]) {
        if rows.is_empty() {
            return;
        }
        let mut tables = self.lock();
        let t = tables.entry(table.to_owned()).or_default();
        let gw: Arc<str> = Arc::from(gateway);
        // A new segment's buffer starts from the columns seen so far (built only then).
        let columns = &t.fresh_columns;
        let (buf, _) = t.open.entry((gw, segment)).or_insert_with(|| {
            let schemas: Schemas = BTreeMap::from([(
                table.to_owned(),
                columns
                    .iter()
                    .filter_map(|(n, c)| Some((n.clone(), c.field_type()?)))
                    .collect(),
            )]);
            (Buffer::new(gateway, schemas), Instant::now())
        });
        let mut conflicts = Vec::new();
        for r in rows {
            buf.append_payload(
                table,
                r.time_us,
                (r.owner, r.device),
                (r.payload, stream),
                &mut conflicts,
            );
        }
        let cols: Vec<(String, ColumnType)> = buf
            .schemas()
            .get(table)
            .map(|s| s.iter().map(|(n, f)| (n.clone(), ColumnType::from(*f))).collect())
            .unwrap_or_default();
        let mut changed = false;
        for (n, c) in cols {
            match t.fresh_columns.iter_mut().find(|(m, _)| *m == n) {
                Some((_, have)) if *have != c => {
                    *have = have.merge(c);
                    changed = true;
                }
                Some(_) => {}
                None => {
                    t.fresh_columns.push((n, c));
                    changed = true;
                }
            }
        }
        if changed {
            t.schema = None;
        }
        t.fresh_rows += rows.len();
        self.counters
            .fresh_rows_in
            .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
        drop(tables);
        self.enforce_limits();
    }

    /// Drops the oldest fresh chunks past the row bound, and chunks past their age.
    fn enforce_limits(&self) {
        let mut tables = self.lock();
        let total: usize = tables.values().map(|t| t.fresh_rows).sum();
        let max_age = self.limits.max_age;
        let mut dropped = 0;
        for t in tables.values_mut() {
            if t.chunks.iter().any(|c| c.at.elapsed() > max_age) {
                dropped += t.drop_chunks(|c| c.at.elapsed() <= max_age);
            }
        }
        let mut over = total.saturating_sub(dropped).saturating_sub(self.limits.max_rows);
        let mut bytes: usize = tables.values().map(TableState::fresh_bytes).sum();
        if over > 0 || bytes > self.limits.max_bytes {
            for t in tables.values_mut() {
                t.seal_open();
            }
            bytes = tables.values().map(TableState::fresh_bytes).sum();
            while over > 0 || bytes > self.limits.max_bytes {
                // The oldest chunk of all tables.
                let oldest = tables
                    .iter()
                    .flat_map(|(name, t)| t.chunks.iter().enumerate().map(move |(i, c)| (c.at, name.clone(), i)))
                    .min_by_key(|(at, _, _)| *at);
                let Some((_, name, i)) = oldest else { break };
                let Some(t) = tables.get_mut(&name) else { break };
                let rows = if i < t.chunks.len() {
                    let gone = t.chunks.remove(i).batch;
                    bytes = bytes.saturating_sub(gone.get_array_memory_size());
                    gone.num_rows()
                } else {
                    break;
                };
                t.fresh_rows = t.fresh_rows.saturating_sub(rows);
                over = over.saturating_sub(rows);
                dropped += rows;
            }
        }
        if dropped > 0 {
            self.counters
                .fresh_rows_dropped
                .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                rows = dropped,
                "fresh rows dropped (bound or age); their files have not come"
            );
        }
    }

    /// Catalogues a file an edge announced (its path relative to the lake root): reads its
    /// footer, records it, and drops the fresh rows it holds. A path compaction already
    /// replaced is a re-upload: it is deleted instead. Returns whether it was added.
    pub async fn commit(&self, path: &str, size: Option<u64>) -> Result<bool, QueryError> {
        if self.catalog.replaced(path)? {
            let _ = self.store.delete(&catalog::full_path(&self.prefix, path)).await;
            self.counters
                .files_ignored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(false);
        }
        let meta = catalog::describe(&self.store, &self.prefix, path, size).await?;
        self.commit_described(meta)
    }

    /// Catalogues a file already described (its footer read) that compaction has not
    /// replaced.
    pub(crate) fn commit_described(&self, meta: FileMeta) -> Result<bool, QueryError> {
        self.catalog.swap(std::slice::from_ref(&meta), &[], None)?;
        self.insert_file(meta);
        self.counters
            .files_committed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }

    fn insert_file(&self, meta: FileMeta) {
        let mut tables = self.lock();
        let t = tables.entry(meta.table.clone()).or_default();
        if let (Some(gw), Some(seal)) = (meta.gateway.as_deref(), meta.seal) {
            t.seal_open();
            let hour = meta.hour_us;
            t.drop_chunks(|c| !(&*c.gateway == gw && c.segment <= seal && c.hour_us == hour));
        }
        t.schema = None;
        t.files.insert(meta.path.clone(), Arc::new(meta));
    }

    /// Swaps `remove` for `add` (compaction), durably and then in one step for queries.
    pub fn swap(&self, table: &str, add: FileMeta, remove: &[String]) -> Result<(), QueryError> {
        self.catalog.swap(std::slice::from_ref(&add), remove, Some(&add.path))?;
        let mut tables = self.lock();
        let t = tables.entry(table.to_owned()).or_default();
        for p in remove {
            t.files.remove(p);
        }
        t.schema = None;
        t.files.insert(add.path.clone(), Arc::new(add));
        Ok(())
    }

    /// Lists the object store and catalogues every file the catalog lacks: recovery
    /// after the catalog was lost, or files whose announcement never came.
    pub async fn rebuild(&self) -> Result<usize, QueryError> {
        let new = self.unknown_files().await?;
        let n = new.len();
        self.add_files(new)?;
        Ok(n)
    }

    /// Deletes the files the catalog remembers as replaced (by compaction, the day tier or
    /// retention) that are still in the object store: a cloud that stopped during their
    /// grace never deleted them. For a start, before any query could have planned them (no
    /// catalogued file is ever a replaced one). Returns how many went.
    pub async fn sweep_replaced(&self) -> Result<usize, QueryError> {
        use futures::TryStreamExt;
        let listed: Vec<_> = self.store.list(Some(&self.prefix)).try_collect().await?;
        let mut n = 0;
        for obj in listed {
            let full = obj.location.as_ref();
            let rel = full
                .strip_prefix(self.prefix.as_ref())
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(full);
            if !rel.ends_with(".parquet") || !self.catalog.replaced(rel)? {
                continue;
            }
            let live = self.lock().values().any(|t| t.files.contains_key(rel));
            if !live {
                match self.store.delete(&obj.location).await {
                    Ok(()) => n += 1,
                    // Gone since the listing (a grace period's deletion ended meanwhile).
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                // A merged file left before its swap: gone, its mark has nothing to guard.
                self.catalog.unpend(rel)?;
            }
        }
        Ok(n)
    }

    /// The files a listing finds that the catalog lacks (and compaction did not replace).
    pub(crate) async fn unknown_files(&self) -> Result<Vec<FileMeta>, QueryError> {
        let known: std::collections::HashSet<String> =
            self.lock().values().flat_map(|t| t.files.keys().cloned()).collect();
        let catalog = self.catalog.clone();
        catalog::list_new(&self.store, &self.prefix, &|p| {
            known.contains(p) || catalog.replaced(p).unwrap_or(false)
        })
        .await
    }

    /// Catalogues described files, durably and then for queries.
    pub(crate) fn add_files(&self, new: Vec<FileMeta>) -> Result<(), QueryError> {
        self.catalog.swap(&new, &[], None)?;
        for m in new {
            self.insert_file(m);
        }
        Ok(())
    }

    /// The files and fresh batches a query of `table` reads, pruned.
    pub fn snapshot(&self, table: &str, pruning: &Pruning) -> Snapshot {
        let mut tables = self.lock();
        let Some(t) = tables.get_mut(table) else {
            return Snapshot {
                files: Vec::new(),
                fresh: Vec::new(),
            };
        };
        t.seal_open();
        let in_range =
            |lo: i64, hi: i64| pruning.min_us.is_none_or(|m| hi >= m) && pruning.max_us.is_none_or(|m| lo <= m);
        let files = t
            .files
            .values()
            .filter(|f| in_range(f.min_time_us, f.max_time_us))
            .filter(|f| match (&pruning.devices, &f.device_min, &f.device_max) {
                (Some(ds), Some(lo), Some(hi)) => ds.iter().any(|d| d >= lo && d <= hi),
                _ => true,
            })
            .cloned()
            .collect();
        let fresh = t
            .chunks
            .iter()
            .filter(|c| in_range(c.min_us, c.max_us))
            .map(|c| c.batch.clone())
            .collect();
        Snapshot { files, fresh }
    }
}

/// A batch with exactly `schema`'s columns: missing ones null, others cast.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, QueryError> {
    let rows = batch.num_rows();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => c.clone(),
            Some(c) => arrow::compute::cast(c, f.data_type())?,
            None => new_null_array(f.data_type(), rows),
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
