//! A lake file's Parquet settings and the file-level metadata the catalog reads.
//!
//! Every file carries `twinlake.format` (the format version, [`FORMAT_VERSION`]):
//! * 1: `time`, `device`, `gateway`, then fields, sorted by (device, time). Files without
//!   the key were written before it existed and are version 1.
//! * 2: `owner` (the row's user) after `gateway`, sorted by (owner, device, time).
//!
//! * 3: a day file ([`crate::dense`]): as 2, and columns may be stored in a narrower exact
//!   type that `twinlake.stored` names. Only day files are written as 3, so a cloud of the
//!   previous version still reads every gateway's files.
//!
//! A compacted file also carries `twinlake.compacted` (how many files it replaced); a day
//! file carries `twinlake.day` (the same).

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::LakeError;

/// The newest format version this build reads and writes (day files).
pub const FORMAT_VERSION: u32 = 3;
/// The format version of hour files (a gateway's and compaction's).
pub const HOUR_FORMAT_VERSION: u32 = 2;
/// The metadata key of the format version.
pub const FORMAT_KEY: &str = "twinlake.format";
/// The metadata key that marks a compacted file; its value counts the files it replaced.
pub const COMPACTED_KEY: &str = "twinlake.compacted";
/// The metadata key that marks a day file; its value counts the files it replaced.
pub const DAY_KEY: &str = "twinlake.day";
/// The metadata key of a rollup file: what it covers (JSON; the cloud's `rollup` module).
pub const ROLLUP_KEY: &str = "twinlake.rollup";

/// What a writer may tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterSettings {
    pub zstd_level: i32,
    pub row_group_rows: usize,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            row_group_rows: 1 << 20,
        }
    }
}

/// What a writer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A gateway's seal.
    Edge,
    /// The cloud's compaction of this many files.
    Compaction { replaced: usize },
    /// The cloud's day tier, replacing this many files.
    Day { replaced: usize },
}

/// Writer settings: zstd, page statistics, sorted by (owner, device, time), delta-encoded time, and
/// a 64 KiB dictionary limit: low-cardinality columns keep their dictionary, while
/// high-cardinality floats (coordinates) fall back to plain early instead of carrying a
/// 1 MiB dictionary page per file (2.43 → 2.16 bytes/value on TSBS readings; BENCHMARKS.md).
/// PLAIN, not BYTE_STREAM_SPLIT, is the fallback: measured on the same readings, it is
/// smaller under zstd (latitude 4.8 against 5.7 bytes per row).
pub fn writer_properties(cfg: WriterSettings, writer: Writer) -> Result<WriterProperties, LakeError> {
    let level = ZstdLevel::try_new(cfg.zstd_level).map_err(|e| LakeError::Settings(format!("zstd_level: {e}")))?;
    let sorted = |column_idx| SortingColumn {
        column_idx,
        descending: false,
        nulls_first: false,
    };
    let (format, mark) = match writer {
        Writer::Edge => (HOUR_FORMAT_VERSION, None),
        Writer::Compaction { replaced } => (HOUR_FORMAT_VERSION, Some((COMPACTED_KEY, replaced))),
        Writer::Day { replaced } => (FORMAT_VERSION, Some((DAY_KEY, replaced))),
    };
    let mut metadata = vec![KeyValue::new(FORMAT_KEY.into(), format.to_string())];
    if let Some((key, replaced)) = mark {
        metadata.push(KeyValue::new(key.into(), replaced.to_string()));
    }
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(cfg.row_group_rows.max(1)))
        .set_dictionary_page_size_limit(64 << 10)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_sorting_columns(Some(vec![sorted(3), sorted(1), sorted(0)]))
        .set_column_dictionary_enabled(ColumnPath::from("time"), false)
        .set_column_encoding(ColumnPath::from("time"), Encoding::DELTA_BINARY_PACKED)
        .set_key_value_metadata(Some(metadata))
        .set_created_by(format!("twinlake {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Encodes batches as one Parquet file in memory (empty for no batches).
pub fn encode(batches: &[RecordBatch], props: &WriterProperties) -> Result<Vec<u8>, LakeError> {
    let mut out = Vec::new();
    encode_into(batches, props, &mut out)?;
    Ok(out)
}

/// Encodes batches as one Parquet file into `out` (nothing for no batches), with no copy of
/// the whole file in memory; returns the bytes written.
pub fn encode_into<W: std::io::Write + Send>(
    batches: &[RecordBatch],
    props: &WriterProperties,
    out: W,
) -> Result<u64, LakeError> {
    let Some(first) = batches.first() else {
        return Ok(0);
    };
    let mut w = ArrowWriter::try_new(out, first.schema(), Some(props.clone()))?;
    for b in batches {
        w.write(b)?;
    }
    // Writes the footer and flushes; the count then covers the whole file.
    w.finish()?;
    Ok(w.bytes_written() as u64)
}

/// What a file's key-value metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub format: u32,
    /// Whether it says it was compacted (into an hour or a day file).
    pub compacted: bool,
    /// Whether it is a day file (whose narrower columns `dense::read_stored` reads).
    pub day: bool,
}

impl FileInfo {
    /// Reads the key-value metadata of a file's footer. A format this build does not know
    /// is an error: the catalog leaves such a file alone rather than misreading it.
    pub fn read(kv: Option<&Vec<KeyValue>>) -> Result<Self, LakeError> {
        let find = |key: &str| kv.and_then(|kv| kv.iter().find(|k| k.key == key));
        let format = match find(FORMAT_KEY).map(|k| k.value.as_deref().unwrap_or_default()) {
            None => 1,
            Some(v) => v
                .parse()
                .ok()
                .filter(|v| (1..=FORMAT_VERSION).contains(v))
                .ok_or_else(|| {
                    LakeError::Format(format!("format version {v:?}; this build reads 1 to {FORMAT_VERSION}"))
                })?,
        };
        let day = find(DAY_KEY).is_some();
        Ok(Self {
            format,
            compacted: day || find(COMPACTED_KEY).is_some(),
            day,
        })
    }
}
