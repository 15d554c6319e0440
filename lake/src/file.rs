//! A lake file's Parquet settings and the file-level metadata the catalog reads.
//!
//! Every file carries `twinlake.format` (the format version, [`FORMAT_VERSION`]):
//! * 1: `time`, `device`, `gateway`, then fields, sorted by (device, time). Files without
//!   the key were written before it existed and are version 1.
//! * 2: `owner` (the row's user) after `gateway`, sorted by (owner, device, time).
//!
//! A compacted file also carries `twinlake.compacted` (how many files it replaced).

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::LakeError;

/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// The metadata key of the format version.
pub const FORMAT_KEY: &str = "twinlake.format";
/// The metadata key that marks a compacted file; its value counts the files it replaced.
pub const COMPACTED_KEY: &str = "twinlake.compacted";

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
}

/// Writer settings: zstd, page statistics, sorted by (owner, device, time), delta-encoded time, and
/// a 64 KiB dictionary limit: low-cardinality columns keep their dictionary, while
/// high-cardinality floats (coordinates) fall back to plain early instead of carrying a
/// 1 MiB dictionary page per file (2.43 → 2.16 bytes/value on TSBS readings; BENCHMARKS.md).
pub fn writer_properties(cfg: WriterSettings, writer: Writer) -> Result<WriterProperties, LakeError> {
    let level = ZstdLevel::try_new(cfg.zstd_level).map_err(|e| LakeError::Settings(format!("zstd_level: {e}")))?;
    let sorted = |column_idx| SortingColumn {
        column_idx,
        descending: false,
        nulls_first: false,
    };
    let mut metadata = vec![KeyValue::new(FORMAT_KEY.into(), FORMAT_VERSION.to_string())];
    if let Writer::Compaction { replaced } = writer {
        metadata.push(KeyValue::new(COMPACTED_KEY.into(), replaced.to_string()));
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

/// `props` for a file of `schema`: float columns keep their dictionary while it stays under
/// the limit, and fall back to BYTE_STREAM_SPLIT (not PLAIN) past it, which zstd packs
/// tighter (coordinates; BENCHMARKS.md, "Bytes per value").
pub fn for_schema(props: &WriterProperties, schema: &Schema) -> WriterProperties {
    let mut b = props.clone().into_builder();
    for f in schema.fields() {
        if matches!(f.data_type(), DataType::Float64 | DataType::Float32) {
            b = b.set_column_encoding(ColumnPath::from(f.name().as_str()), Encoding::BYTE_STREAM_SPLIT);
        }
    }
    b.build()
}

/// Encodes batches as one Parquet file in memory (empty for no batches), with
/// [`for_schema`]'s encodings.
pub fn encode(batches: &[RecordBatch], props: &WriterProperties) -> Result<Vec<u8>, LakeError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let props = for_schema(props, &first.schema());
    let mut w = ArrowWriter::try_new(&mut out, first.schema(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(out)
}

/// What a file's key-value metadata says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub format: u32,
    /// Whether it says it was compacted.
    pub compacted: bool,
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
        Ok(Self {
            format,
            compacted: find(COMPACTED_KEY).is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::Field;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// Floats keep their dictionary while it is small, and past the limit fall back to
    /// BYTE_STREAM_SPLIT; other columns are left as they were.
    #[test]
    fn floats_fall_back_to_byte_stream_split() {
        let n = 50_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("few", DataType::Float64, false),
            Field::new("many", DataType::Float64, false),
            Field::new("count", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| f64::from(i % 4)))),
                Arc::new(Float64Array::from_iter_values((0..n).map(|i| f64::from(i) * 1.000_1))),
                Arc::new(Int64Array::from_iter_values((0..n).map(i64::from))),
            ],
        )
        .unwrap();
        let props = writer_properties(WriterSettings::default(), Writer::Edge).unwrap();
        let file = encode(&[batch], &props).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let rg = reader.metadata().row_group(0);
        let encodings = |i: usize| rg.column(i).encodings().collect::<Vec<_>>();
        assert!(encodings(0).contains(&Encoding::RLE_DICTIONARY), "{:?}", encodings(0));
        assert!(
            !encodings(0).contains(&Encoding::BYTE_STREAM_SPLIT),
            "{:?}",
            encodings(0)
        );
        assert!(
            encodings(1).contains(&Encoding::BYTE_STREAM_SPLIT),
            "{:?}",
            encodings(1)
        );
        assert!(
            !encodings(2).contains(&Encoding::BYTE_STREAM_SPLIT),
            "{:?}",
            encodings(2)
        );
    }
}
