//! Day files: the cold tier's dense encodings (format 3).
//!
//! A day file holds a table's rows of one UTC day, sorted by (owner, device, time). Two
//! columns kinds are stored in a narrower type when, and only when, that is exact:
//!
//! * `time` as `Timestamp(ms)` when every value is a whole millisecond (device clocks and
//!   networks make millisecond arrival times, which delta-encode in about half the bits);
//! * a `Float64` field as `Decimal128(18, s)` with the smallest scale `s` ≤ [`MAX_SCALE`]
//!   at which every value casts back to the very same bits (sensor readings are rounded
//!   decimals; as scaled integers they delta-encode, as floats they do not).
//!
//! The file's `twinlake.stored` metadata names each such column and how it is stored
//! ([`STORED_KEY`]); readers cast back ([`logical_type`], [`restore`]) and see the same
//! values as in the hour files the day replaced. Integer columns (and decimal-stored floats)
//! fall back from a 64 KiB dictionary to DELTA_BINARY_PACKED, other floats to PLAIN.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use parquet::basic::Encoding;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::LakeError;
use crate::file::{Writer, WriterSettings, writer_properties};

/// The metadata key listing the columns stored in a narrower type.
pub const STORED_KEY: &str = "twinlake.stored";
/// The largest decimal scale tried for a float column.
pub const MAX_SCALE: i8 = 9;
/// Decimal precision that Parquet stores as INT64.
const PRECISION: u8 = 18;

/// How a column is stored in a day file, when not in its lake type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// `time` in whole milliseconds.
    Millis,
    /// A float field as a decimal of this scale.
    Decimal(i8),
}

impl Stored {
    fn render(self) -> String {
        match self {
            Self::Millis => "ms".into(),
            Self::Decimal(s) => format!("decimal:{s}"),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ms" => Some(Self::Millis),
            _ => {
                let scale: i8 = s.strip_prefix("decimal:")?.parse().ok()?;
                (0..=MAX_SCALE).contains(&scale).then_some(Self::Decimal(scale))
            }
        }
    }

    /// The type the column has in the file, for a column of the lake's type `logical`.
    pub fn stored_type(self, logical: &DataType) -> DataType {
        match (self, logical) {
            (Self::Millis, DataType::Timestamp(_, tz)) => DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
            (Self::Millis, _) => DataType::Timestamp(TimeUnit::Millisecond, None),
            (Self::Decimal(s), _) => DataType::Decimal128(PRECISION, s),
        }
    }

    /// The type the lake gives a column stored as `stored`.
    pub fn logical_type(self, stored: &DataType) -> DataType {
        match (self, stored) {
            (Self::Millis, DataType::Timestamp(_, tz)) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            (Self::Millis, _) => DataType::Timestamp(TimeUnit::Microsecond, None),
            (Self::Decimal(_), _) => DataType::Float64,
        }
    }
}

/// Column name → how it is stored.
pub type StoredColumns = BTreeMap<String, Stored>;

/// The `twinlake.stored` value of a file's metadata (empty when absent). A value this build
/// cannot read is an error, not a guess.
pub fn read_stored(kv: Option<&Vec<KeyValue>>) -> Result<StoredColumns, LakeError> {
    let Some(v) = kv.and_then(|kv| kv.iter().find(|k| k.key == STORED_KEY)) else {
        return Ok(StoredColumns::new());
    };
    let mut out = StoredColumns::new();
    for item in v
        .value
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let parsed = item
            .split_once('=')
            .and_then(|(name, how)| Some((name.to_owned(), Stored::parse(how)?)));
        let (name, how) = parsed.ok_or_else(|| LakeError::Format(format!("{STORED_KEY}: {item:?}")))?;
        out.insert(name, how);
    }
    Ok(out)
}

fn render_stored(stored: &StoredColumns) -> String {
    stored
        .iter()
        .map(|(n, s)| format!("{n}={}", s.render()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lake type of a file column: its stored type mapped back.
pub fn logical_type(stored: &StoredColumns, name: &str, file_type: &DataType) -> DataType {
    match stored.get(name) {
        Some(s) => s.logical_type(file_type),
        None => file_type.clone(),
    }
}

/// A batch read from a day file, in the lake's types.
pub fn restore(batch: &RecordBatch, stored: &StoredColumns) -> Result<RecordBatch, LakeError> {
    if stored.is_empty() {
        return Ok(batch.clone());
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        let t = logical_type(stored, f.name(), f.data_type());
        cols.push(if &t == f.data_type() { c.clone() } else { cast(c, &t)? });
        fields.push(Field::new(f.name(), t, f.is_nullable()));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// `a` as a decimal of the smallest scale that casts back to the same bits, if any.
fn as_decimal(a: &dyn Array) -> Option<(ArrayRef, i8)> {
    let floats = a.as_primitive_opt::<Float64Type>()?;
    let limit = 10f64.powi(i32::from(PRECISION)) / 2.0;
    'scale: for scale in 0..=MAX_SCALE {
        let p = 10f64.powi(i32::from(scale));
        let mut ints = Vec::with_capacity(floats.len());
        for v in floats.iter() {
            match v {
                None => ints.push(None),
                Some(v) => {
                    let n = (v * p).round();
                    // Cheap first test; the cast below is the proof.
                    if !n.is_finite() || n.abs() >= limit || (n / p).to_bits() != v.to_bits() {
                        continue 'scale;
                    }
                    ints.push(Some(n as i128));
                }
            }
        }
        let dec = Decimal128Array::from(ints)
            .with_precision_and_scale(PRECISION, scale)
            .ok()?;
        let back = cast(&dec, &DataType::Float64).ok()?;
        let same = back
            .as_primitive::<Float64Type>()
            .iter()
            .zip(floats.iter())
            .all(|(x, y)| match (x, y) {
                (Some(x), Some(y)) => x.to_bits() == y.to_bits(),
                (x, y) => x.is_none() && y.is_none(),
            });
        return same.then(|| (Arc::new(dec) as ArrayRef, scale));
    }
    None
}

/// `a` (µs timestamps) in milliseconds, when every value is a whole millisecond.
fn as_millis(a: &dyn Array) -> Option<ArrayRef> {
    let us = a.as_primitive_opt::<TimestampMicrosecondType>()?;
    if us.iter().flatten().any(|v| v % 1000 != 0) {
        return None;
    }
    cast(a, &Stored::Millis.stored_type(a.data_type())).ok()
}

/// The batch with every column that can be stored narrower, exactly, so stored.
pub fn densify(batch: &RecordBatch) -> Result<(RecordBatch, StoredColumns), LakeError> {
    let schema = batch.schema();
    let mut stored = StoredColumns::new();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut cols = Vec::with_capacity(schema.fields().len());
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        let dense = match f.data_type() {
            DataType::Float64 => as_decimal(c).map(|(a, s)| (a, Stored::Decimal(s))),
            DataType::Timestamp(TimeUnit::Microsecond, _) if f.name() == "time" => {
                as_millis(c).map(|a| (a, Stored::Millis))
            }
            _ => None,
        };
        match dense {
            Some((a, how)) => {
                stored.insert(f.name().clone(), how);
                fields.push(Field::new(f.name(), how.stored_type(f.data_type()), f.is_nullable()));
                cols.push(a);
            }
            None => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    Ok((RecordBatch::try_new(schema, cols)?, stored))
}

/// Writer settings of a day file of `batch` (already densified, with `stored`).
pub fn day_properties(
    batch: &RecordBatch,
    stored: &StoredColumns,
    settings: WriterSettings,
    replaced: usize,
) -> Result<WriterProperties, LakeError> {
    let base = writer_properties(settings, Writer::Day { replaced })?;
    let mut metadata = base.key_value_metadata().cloned().unwrap_or_default();
    if !stored.is_empty() {
        metadata.push(KeyValue::new(STORED_KEY.into(), render_stored(stored)));
    }
    let mut b = base.into_builder().set_key_value_metadata(Some(metadata));
    for f in batch.schema().fields() {
        let integer = matches!(
            f.data_type(),
            DataType::Int64 | DataType::Int32 | DataType::Decimal128(..) | DataType::Timestamp(..)
        );
        if integer && f.name() != "time" {
            b = b.set_column_encoding(ColumnPath::from(f.name().as_str()), Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(b.build())
}

/// One day file of `batch` (sorted by owner, device, time), replacing `replaced` files.
pub fn encode_day(batch: &RecordBatch, settings: WriterSettings, replaced: usize) -> Result<Vec<u8>, LakeError> {
    encode_day_with(batch, settings, replaced, &[])
}

/// [`encode_day`] with `extra` key-value metadata.
pub fn encode_day_with(
    batch: &RecordBatch,
    settings: WriterSettings,
    replaced: usize,
    extra: &[KeyValue],
) -> Result<Vec<u8>, LakeError> {
    let (dense, stored) = densify(batch)?;
    let mut props = day_properties(&dense, &stored, settings, replaced)?;
    if !extra.is_empty() {
        let mut kv = props.key_value_metadata().cloned().unwrap_or_default();
        kv.extend_from_slice(extra);
        props = props.into_builder().set_key_value_metadata(Some(kv)).build();
    }
    crate::file::encode(std::slice::from_ref(&dense), &props)
}

#[cfg(test)]
mod tests;
