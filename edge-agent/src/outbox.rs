//! Sealed Parquet files waiting for upload, and the agent's checkpoint.
//!
//! A seal of WAL segments up to `seq` becomes the directory `outbox/<seq>/`, holding the
//! files at their object-store paths (`<table>/date=YYYY-MM-DD/hour=HH/<gateway>-<seq>.parquet`)
//! and a `MANIFEST.json`. It is written as `outbox/.tmp-<seq>/`, every file fsynced, and
//! renamed into place: a seal is there whole or not at all. Then `state.json` records
//! `sealed_through = seq` with the schemas, and only then are the WAL segments deleted.
//! On start, temporary directories and seals past the checkpoint are removed (their rows
//! are still in the WAL and will be sealed again under a new number).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::Error;
use twinlake_lake::buffer::{Schemas, SealedTable};
use twinlake_lake::file::{self, Writer, WriterSettings};
use twinlake_lake::{Hour, LakePath};

use crate::config::ParquetSection;
use crate::wal::sync_dir;

/// What the agent has made durable in Parquet: the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Every WAL segment at or before this is in the outbox or uploaded.
    pub sealed_through: u64,
    /// Every table's columns so far.
    pub schemas: Schemas,
}

impl State {
    /// Reads `state.json`, or the empty state if there is none.
    pub fn load(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::ReadFile { path, source }),
        }
    }

    /// Writes `state.json` atomically and durably.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::wal::write_file_atomic(&data_dir.join("state.json"), &bytes, 0o666)
    }
}

/// The manifest of one seal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub sealed_at_ms: u64,
    pub files: Vec<FileEntry>,
    /// Rows of tables that could not be written, kept in `quarantine/`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quarantined_rows: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Encodes `batch` as a Parquet file at `path`, fsynced, straight into the file (a file of
/// a large seal is tens of MiB, not held whole in memory); returns its bytes. A file cut
/// short by an error is removed.
fn encode_synced(path: &Path, batch: &RecordBatch, props: &WriterProperties) -> Result<u64, Error> {
    let written = File::create(path).map_err(Error::from).and_then(|mut f| {
        let n = file::encode_into(std::slice::from_ref(batch), props, &mut f)?;
        f.sync_all()?;
        Ok(n)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// One Parquet file of a seal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The object-store path, relative to the lake's root.
    pub path: String,
    pub table: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_time_us: i64,
    pub max_time_us: i64,
}

/// The outbox directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    gateway: String,
    props: WriterProperties,
}

const MANIFEST: &str = "MANIFEST.json";

fn seq_name(seq: u64) -> String {
    format!("{seq:020}")
}

/// The Parquet writer settings of `[parquet]` (the lake format's, `twinlake_lake::file`).
pub fn writer_properties(cfg: &ParquetSection) -> Result<WriterProperties, Error> {
    let settings = WriterSettings {
        zstd_level: cfg.zstd_level,
        row_group_rows: cfg.row_group_rows,
    };
    Ok(file::writer_properties(settings, Writer::Edge)?)
}

/// Milliseconds since the epoch: a manifest's `sealed_at_ms` and the TTL clock.
pub(crate) fn now_ms() -> u64 {
    ms_since_epoch(std::time::SystemTime::now())
}

/// Milliseconds since the epoch (0 before it).
pub fn ms_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Outbox {
    /// The outbox under `data_dir`.
    pub fn new(data_dir: &Path, gateway: &str, props: WriterProperties) -> std::io::Result<Self> {
        let dir = data_dir.join("outbox");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            gateway: gateway.to_owned(),
            props,
        })
    }

    /// Removes half-written seals and seals past `sealed_through`.
    pub fn recover(&self, sealed_through: u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = name.starts_with(".tmp-") || name.parse::<u64>().is_ok_and(|s| s > sealed_through);
            // `damaged-*` seals stay for an operator.
            if stale {
                tracing::info!(seal = %name, "removing an unfinished seal; its rows are still in the WAL");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Writes a seal: every table's hours as Parquet files, then the manifest, then the
    /// rename that commits it. A table whose files cannot be written (a name the disk
    /// refuses, from a WAL older than the naming rules) never holds the others back and
    /// never loses its rows: they go to `quarantine/` instead (see [`Outbox::quarantine_table`]).
    pub fn write_seal(&self, seq: u64, tables: &[SealedTable]) -> Result<Manifest, Error> {
        let tmp = self.dir.join(format!(".tmp-{}", seq_name(seq)));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let mut manifest = Manifest {
            seq,
            sealed_at_ms: now_ms(),
            files: Vec::new(),
            quarantined_rows: 0,
        };
        let mut dirs = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let written = if twinlake_lake::model::is_table_name(&t.table) {
                self.write_table(&tmp, seq, t, &mut dirs)
            } else {
                Err(Error::Config(format!(
                    "table name {:?} breaks the naming rules",
                    t.table
                )))
            };
            match written {
                Ok(files) => manifest.files.extend(files),
                Err(e) => {
                    tracing::error!(seq, table = %t.table, error = %e, "cannot write a table's files; its rows go to quarantine/");
                    manifest.quarantined_rows += self.quarantine_table(seq, i, t)?;
                }
            }
        }
        let mut f = File::create(tmp.join(MANIFEST))?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            sync_dir(d)?;
        }
        sync_dir(&tmp)?;
        std::fs::rename(&tmp, self.dir.join(seq_name(seq)))?;
        sync_dir(&self.dir)?;
        Ok(manifest)
    }

    /// One table's hour files in the seal being written; on an error, the files it wrote
    /// are removed again.
    fn write_table(
        &self,
        tmp: &Path,
        seq: u64,
        t: &SealedTable,
        dirs: &mut Vec<PathBuf>,
    ) -> Result<Vec<FileEntry>, Error> {
        let mut files = Vec::new();
        let mut write = || -> Result<(), Error> {
            for (hour, batch) in &t.hours {
                let hour =
                    Hour::of(*hour).ok_or_else(|| Error::Corrupt(format!("hour {hour} outside the lake's years")))?;
                let rel = LakePath::seal(&t.table, hour, &self.gateway, seq)
                    .map_err(|e| Error::Config(e.to_string()))?
                    .to_string();
                let path = tmp.join(&rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                    dirs.push(parent.to_owned());
                }
                let bytes = encode_synced(&path, batch, &self.props)?;
                let (min, max) = time_range(batch);
                files.push(FileEntry {
                    path: rel,
                    table: t.table.clone(),
                    rows: batch.num_rows() as u64,
                    bytes,
                    min_time_us: min,
                    max_time_us: max,
                });
            }
            Ok(())
        };
        match write() {
            Ok(()) => Ok(files),
            Err(e) => {
                for f in &files {
                    let _ = std::fs::remove_file(tmp.join(&f.path));
                }
                Err(e)
            }
        }
    }

    /// Keeps a table that could not be sealed: its rows as Parquet files in
    /// `quarantine/<seq>-<n>-<hour>.parquet` beside the outbox, with the table's name in the
    /// file's metadata (`twinlake.table`), fsynced before the seal commits. An operator
    /// renames the table and moves the files into the lake; nothing uploads them.
    fn quarantine_table(&self, seq: u64, n: usize, t: &SealedTable) -> Result<u64, Error> {
        let dir = self.quarantine_dir();
        std::fs::create_dir_all(&dir)?;
        let mut rows = 0;
        for (hour, batch) in &t.hours {
            let meta = std::collections::HashMap::from([("twinlake.table".to_owned(), t.table.clone())]);
            let schema = std::sync::Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
            let batch = batch.clone().with_schema(schema)?;
            encode_synced(
                &dir.join(format!("{}-{n}-{hour}.parquet", seq_name(seq))),
                &batch,
                &self.props,
            )?;
            rows += batch.num_rows() as u64;
        }
        sync_dir(&dir)?;
        Ok(rows)
    }

    /// Where tables that could not be sealed are kept.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.dir.with_file_name("quarantine")
    }

    /// Committed seals, oldest first.
    pub fn seals(&self) -> std::io::Result<Vec<u64>> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// A seal's manifest, with only the files still waiting. A committed seal always has
    /// its manifest, which [`remove_seal`](Self::remove_seal) deletes last; a seal
    /// directory without one is the rest of an interrupted removal, with nothing waiting.
    pub fn pending(&self, seq: u64) -> Result<Manifest, Error> {
        let dir = self.dir.join(seq_name(seq));
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Manifest {
                    seq,
                    ..Manifest::default()
                });
            }
            Err(source) => return Err(Error::ReadFile { path, source }),
        };
        let mut m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
        m.files.retain(|f| dir.join(&f.path).exists());
        Ok(m)
    }

    /// The local path of a seal's file.
    pub fn local_path(&self, seq: u64, rel: &str) -> PathBuf {
        self.dir.join(seq_name(seq)).join(rel)
    }

    /// Deletes a seal's directory: its files first and the manifest last, so a crash in
    /// between never leaves files without their manifest.
    pub fn remove_seal(&self, seq: u64) -> std::io::Result<()> {
        let dir = self.dir.join(seq_name(seq));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name() == MANIFEST {
                continue;
            }
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        sync_dir(&dir)?;
        std::fs::remove_dir_all(&dir)?;
        sync_dir(&self.dir)
    }

    /// Moves a seal that cannot be read aside (`outbox/damaged-<seq>`), so it does not block
    /// the ones after it; it is kept for an operator to look at.
    pub fn quarantine(&self, seq: u64) -> std::io::Result<()> {
        let name = seq_name(seq);
        std::fs::rename(self.dir.join(&name), self.dir.join(format!("damaged-{name}")))?;
        sync_dir(&self.dir)
    }

    /// Bytes of Parquet waiting, per seal.
    pub fn sizes(&self) -> Result<BTreeMap<u64, u64>, Error> {
        let mut out = BTreeMap::new();
        for seq in self.seals()? {
            let m = self.pending(seq)?;
            out.insert(seq, m.files.iter().map(|f| f.bytes).sum());
        }
        Ok(out)
    }
}

fn time_range(batch: &RecordBatch) -> (i64, i64) {
    use arrow::array::TimestampMicrosecondArray;
    let Some(t) = batch
        .column_by_name("time")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
    else {
        return (0, 0);
    };
    let min = arrow::compute::min(t).unwrap_or_default();
    let max = arrow::compute::max(t).unwrap_or_default();
    (min, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_hive_style() {
        // 2024-02-29 13:xx UTC
        let path = |table, hour, gw, seq| {
            LakePath::seal(table, Hour::of(hour).unwrap(), gw, seq)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            path("temp", 1_709_211_600_000_000, "gw-1", 42),
            "temp/date=2024-02-29/hour=13/gw-1-00000000000000000042.parquet"
        );
        assert_eq!(
            path("t", 0, "g", 1),
            "t/date=1970-01-01/hour=00/g-00000000000000000001.parquet"
        );
        assert_eq!(
            path("t", -3_600_000_000, "g", 1),
            "t/date=1969-12-31/hour=23/g-00000000000000000001.parquet"
        );
    }

    #[test]
    fn a_seal_without_its_manifest_has_nothing_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path(), "gw", writer_properties(&ParquetSection::default()).unwrap()).unwrap();
        std::fs::create_dir_all(dir.path().join("outbox/00000000000000000007/t/date=2024-01-01")).unwrap();
        assert_eq!(outbox.seals().unwrap(), vec![7]);
        assert!(outbox.pending(7).unwrap().files.is_empty());
        outbox.remove_seal(7).unwrap();
        assert!(outbox.seals().unwrap().is_empty());
    }
}

#[cfg(test)]
mod quarantine_tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn table(name: &str, rows: i64) -> SealedTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMicrosecondArray::from_iter_values(0..rows).with_timezone("UTC")),
                Arc::new(Int64Array::from_iter_values(0..rows)),
            ],
        )
        .unwrap();
        SealedTable {
            table: name.to_owned(),
            hours: vec![(0, batch)],
        }
    }

    /// A WAL from before the naming rules may hold a name no file can have: that table goes
    /// to quarantine/ with its rows, and the rest of the seal is written as usual.
    #[test]
    fn a_table_that_cannot_be_written_is_quarantined_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path(), "gw", writer_properties(&ParquetSection::default()).unwrap()).unwrap();
        let m = outbox
            .write_seal(3, &[table(&"x".repeat(300), 5), table("ok", 2), table("a.b", 1)])
            .unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.files[0].table, "ok");
        assert_eq!(m.quarantined_rows, 6);
        let kept: Vec<_> = std::fs::read_dir(outbox.quarantine_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(kept.len(), 2);
        let mut rows = 0;
        for p in kept {
            let r =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(p).unwrap()).unwrap();
            let name = r.schema().metadata().get("twinlake.table").cloned().unwrap();
            assert!(name == "a.b" || name.len() == 300, "{name}");
            rows += r.build().unwrap().map(|b| b.unwrap().num_rows()).sum::<usize>();
        }
        assert_eq!(rows, 6);
    }

    /// Files are encoded straight into their place: the manifest's byte count is each file's
    /// size (readers take it as the file's length), and every row reads back.
    #[test]
    fn a_sealed_file_is_as_long_as_its_manifest_says() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path(), "gw", writer_properties(&ParquetSection::default()).unwrap()).unwrap();
        let m = outbox.write_seal(4, &[table("a", 10_000), table("b", 3)]).unwrap();
        assert_eq!(m.files.len(), 2);
        let sealed = dir.path().join("outbox").join(seq_name(4));
        for f in &m.files {
            let path = sealed.join(&f.path);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), f.bytes, "{}", f.path);
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let rows: usize = r.map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rows as u64, f.rows);
        }
    }
}
