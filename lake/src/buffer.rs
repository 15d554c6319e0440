//! The in-memory Arrow buffer: one set of column builders per table, with the schema rules
//! of the data model (ARCHITECTURE.md): columns are only added, an integer column widens to
//! float when a float arrives, and any other type clash drops that one value (counted).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, DictionaryArray, Float64Builder, Int64Array, Int64Builder,
    RecordBatch, StringArray, StringBuilder, StringDictionaryBuilder, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{SortColumn, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{Field, Int32Type, Schema, SchemaRef};

use crate::columns::{OWNER, dictionary_type, field_data_type as data_type, time_type};
use crate::model::{FieldType, FieldValue};
use crate::path::HOUR_US;

/// The column types of every table, in column order: what the schema has grown to.
pub type Schemas = BTreeMap<String, Vec<(String, FieldType)>>;

/// Why a value was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub table: String,
    pub column: String,
    pub have: FieldType,
    pub got: FieldType,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{} is {:?}; a {:?} value cannot be stored there",
            self.table, self.column, self.have, self.got
        )
    }
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
}

impl Builder {
    fn new(t: FieldType, nulls: usize) -> Self {
        let mut b = match t {
            FieldType::Bool => Builder::Bool(BooleanBuilder::new()),
            FieldType::Int => Builder::Int(Int64Builder::new()),
            FieldType::Float => Builder::Float(Float64Builder::new()),
            FieldType::Str => Builder::Str(StringBuilder::new()),
            FieldType::Bytes => Builder::Bytes(BinaryBuilder::new()),
        };
        b.append_nulls(nulls);
        b
    }

    fn len(&self) -> usize {
        use arrow::array::ArrayBuilder;
        match self {
            Builder::Bool(b) => b.len(),
            Builder::Int(b) => b.len(),
            Builder::Float(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::Bytes(b) => b.len(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Builder::Bool(b) => b.append_nulls(n),
            Builder::Int(b) => b.append_nulls(n),
            Builder::Float(b) => b.append_nulls(n),
            Builder::Str(b) => (0..n).for_each(|_| b.append_null()),
            Builder::Bytes(b) => (0..n).for_each(|_| b.append_null()),
        }
    }

    /// Appends `v` if the types fit (an int into a float column is cast). Returns the bytes
    /// it took, or `None` on a clash.
    fn append(&mut self, v: &FieldValue<'_>) -> Option<usize> {
        match (self, v) {
            (Builder::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
            (Builder::Int(b), FieldValue::Int(x)) => b.append_value(*x),
            (Builder::Float(b), FieldValue::Float(x)) => b.append_value(*x),
            (Builder::Float(b), FieldValue::Int(x)) => b.append_value(*x as f64),
            (Builder::Str(b), FieldValue::Str(x)) => {
                b.append_value(x);
                return Some(x.len() + 4);
            }
            (Builder::Bytes(b), FieldValue::Bytes(x)) => {
                b.append_value(x);
                return Some(x.len() + 4);
            }
            _ => return None,
        }
        Some(8)
    }

    /// An int column as floats, for widening.
    fn widen(&mut self) {
        if let Builder::Int(b) = self {
            let ints = b.finish();
            let mut f = Float64Builder::with_capacity(ints.len());
            for v in ints.iter() {
                f.append_option(v.map(|x| x as f64));
            }
            *self = Builder::Float(f);
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
        }
    }
}

struct Column {
    name: String,
    ty: FieldType,
    builder: Builder,
}

/// One table's buffered rows.
struct Table {
    time: Vec<i64>,
    device: StringDictionaryBuilder<Int32Type>,
    owner: StringDictionaryBuilder<Int32Type>,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    /// The columns of the last row's fields, in their order: rows of one payload shape find
    /// their columns by comparing names, without hashing (at most one entry per field).
    shape: Vec<usize>,
}

impl Table {
    fn new(schema: &[(String, FieldType)]) -> Self {
        let mut t = Self {
            time: Vec::new(),
            device: StringDictionaryBuilder::new(),
            owner: StringDictionaryBuilder::new(),
            columns: Vec::new(),
            index: HashMap::new(),
            shape: Vec::new(),
        };
        for (name, ty) in schema {
            t.add_column(name, *ty);
        }
        t
    }

    /// The column of the field at `pos` of a row named `name`: where the last row had it,
    /// if the name is the same, else by its name (and remembered for the next row).
    fn column_at(&mut self, pos: usize, name: &str) -> Option<usize> {
        if let Some(&idx) = self.shape.get(pos)
            && self.columns.get(idx).is_some_and(|c| c.name == name)
        {
            return Some(idx);
        }
        let idx = *self.index.get(name)?;
        let len = self.shape.len();
        match self.shape.get_mut(pos) {
            Some(slot) => *slot = idx,
            None if len == pos && pos < MAX_COLUMNS => self.shape.push(idx),
            None => {}
        }
        Some(idx)
    }

    fn add_column(&mut self, name: &str, ty: FieldType) -> usize {
        let idx = self.columns.len();
        self.columns.push(Column {
            name: name.to_owned(),
            ty,
            builder: Builder::new(ty, self.time.len()),
        });
        self.index.insert(name.to_owned(), idx);
        idx
    }
}

/// The most columns a table may grow to; values for more are dropped and counted.
pub const MAX_COLUMNS: usize = 1024;
/// The longest column name, in bytes (a payload key, joined with `.` when nested).
pub const MAX_COLUMN_NAME: usize = 256;
/// What one null costs in a column's buffers, at most (an 8-byte value slot; validity bits
/// and offsets are less): back-filled nulls count toward `buffer.max_bytes`.
const NULL_BYTES: usize = 8;

/// All tables' buffered rows, and the schemas they have grown to.
pub struct Buffer {
    gateway: String,
    schemas: Schemas,
    tables: BTreeMap<String, Table>,
    rows: usize,
    bytes: usize,
    oldest: Option<std::time::Instant>,
    /// Values dropped since the last [`Buffer::take_dropped`]: past [`MAX_COLUMNS`] or with
    /// a name over [`MAX_COLUMN_NAME`].
    dropped: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .field("tables", &self.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A sealed table: one batch per hour partition, each sorted by (owner, device, time).
#[derive(Debug)]
pub struct SealedTable {
    pub table: String,
    /// `(hour start in µs since the epoch, rows)`.
    pub hours: Vec<(i64, RecordBatch)>,
}

impl Buffer {
    /// An empty buffer whose tables start from `schemas`.
    pub fn new(gateway: &str, schemas: Schemas) -> Self {
        Self {
            gateway: gateway.to_owned(),
            schemas,
            tables: BTreeMap::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
            dropped: 0,
        }
    }

    /// Whether `table` has a schema (has ever had rows).
    pub fn knows(&self, table: &str) -> bool {
        self.schemas.contains_key(table)
    }

    /// Values dropped by the column rules since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate Arrow memory of the buffered rows.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest buffered row arrived.
    pub fn oldest(&self) -> Option<std::time::Instant> {
        self.oldest
    }

    /// The schemas so far.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    /// Appends one row of `device`, of the user `owner` (none: not known, as in a log
    /// written before rows carried it). Values that clash with their column's type are left
    /// out (null) and reported; the rest of the row is kept.
    pub fn append(
        &mut self,
        table: &str,
        time_us: i64,
        owner: Option<&str>,
        device: &str,
        fields: &[(Cow<'_, str>, FieldValue<'_>)],
        conflicts: &mut Vec<Conflict>,
    ) {
        if !self.tables.contains_key(table) {
            let schema = self.schemas.entry(table.to_owned()).or_default();
            self.tables.insert(table.to_owned(), Table::new(schema));
        }
        let (Some(schema), Some(t)) = (self.schemas.get_mut(table), self.tables.get_mut(table)) else {
            return;
        };
        let row = t.time.len();
        let mut bytes = 16 + device.len().min(4);
        for (pos, (name, value)) in fields.iter().enumerate() {
            let got = value.field_type();
            let idx = match t.column_at(pos, name) {
                Some(i) => i,
                None if t.columns.len() >= MAX_COLUMNS || name.len() > MAX_COLUMN_NAME => {
                    self.dropped += 1;
                    continue;
                }
                None => {
                    schema.push((name.to_string(), got));
                    // The new column is back-filled with a null for every buffered row.
                    bytes += row * NULL_BYTES;
                    t.add_column(name, got)
                }
            };
            let Some(col) = t.columns.get_mut(idx) else { continue };
            if col.builder.len() > row {
                // The key came twice in one payload: the first one wins.
                continue;
            }
            if col.ty == FieldType::Int && got == FieldType::Float {
                col.builder.widen();
                col.ty = FieldType::Float;
                if let Some(s) = schema.iter_mut().find(|(n, _)| n == &col.name) {
                    s.1 = FieldType::Float;
                }
            }
            match col.builder.append(value) {
                Some(n) => bytes += n,
                None => conflicts.push(Conflict {
                    table: table.to_owned(),
                    column: col.name.clone(),
                    have: col.ty,
                    got,
                }),
            }
        }
        for col in &mut t.columns {
            if col.builder.len() == row {
                col.builder.append_nulls(1);
                bytes += NULL_BYTES;
            }
        }
        t.time.push(time_us);
        t.device.append_value(device);
        t.owner.append_option(owner);
        self.rows += 1;
        self.bytes += bytes;
        self.oldest.get_or_insert_with(std::time::Instant::now);
    }

    /// Takes every buffered row out, sorted and split into hour partitions. The schemas stay.
    pub fn seal(&mut self) -> Result<Vec<SealedTable>, arrow::error::ArrowError> {
        self.take().seal()
    }

    /// Takes every buffered row out as it is, cheaply; [`Unsealed::seal`] does the work
    /// (the Arrow arrays, the sort, the hour split), off the caller's task if it likes.
    pub fn take(&mut self) -> Unsealed {
        self.rows = 0;
        self.bytes = 0;
        self.oldest = None;
        Unsealed {
            gateway: self.gateway.clone(),
            tables: std::mem::take(&mut self.tables),
        }
    }
}

/// Rows taken out of a [`Buffer`], not yet sorted.
pub struct Unsealed {
    gateway: String,
    tables: BTreeMap<String, Table>,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealed").field("tables", &self.tables.len()).finish()
    }
}

impl Unsealed {
    /// The rows, sorted by (owner, device, time) and split into hour partitions.
    pub fn seal(self) -> Result<Vec<SealedTable>, arrow::error::ArrowError> {
        let tables = self.tables;
        let mut out = Vec::with_capacity(tables.len());
        for (name, mut t) in tables {
            if t.time.is_empty() {
                continue;
            }
            let rows = t.time.len();
            let mut fields = vec![
                Field::new("time", time_type(), false),
                Field::new("device", dictionary_type(), false),
                Field::new("gateway", dictionary_type(), false),
                Field::new(OWNER, dictionary_type(), true),
            ];
            let time: ArrayRef =
                Arc::new(TimestampMicrosecondArray::from(std::mem::take(&mut t.time)).with_timezone("UTC"));
            let device: ArrayRef = Arc::new(t.device.finish());
            let gateway: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(
                arrow::array::Int32Array::from(vec![0; rows]),
                Arc::new(arrow::array::StringArray::from(vec![self.gateway.as_str()])),
            ));
            let owner: ArrayRef = Arc::new(t.owner.finish());
            let mut arrays = vec![time.clone(), device.clone(), gateway, owner.clone()];
            for col in &mut t.columns {
                fields.push(Field::new(&col.name, data_type(col.ty), true));
                arrays.push(col.builder.finish());
            }
            let schema: SchemaRef = Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(schema, arrays)?;
            out.push(SealedTable {
                table: name,
                hours: split_hours(batch, &time, &[owner, device])?,
            });
        }
        Ok(out)
    }
}

/// Sorts by (hour, keys…, time) and cuts the batch at hour boundaries.
fn split_hours(
    batch: RecordBatch,
    time: &ArrayRef,
    keys: &[ArrayRef],
) -> Result<Vec<(i64, RecordBatch)>, arrow::error::ArrowError> {
    let times = time
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .map(|a| a.values().to_vec())
        .unwrap_or_default();
    let indices = match dictionary_ranks(keys, times.len()) {
        Some(ranks) => sort_by_ranks(&times, &ranks),
        None => {
            let hour: ArrayRef = Arc::new(Int64Array::from_iter_values(
                times.iter().map(|t| t.div_euclid(HOUR_US)),
            ));
            let sort: Vec<SortColumn> = std::iter::once(&hour)
                .chain(keys)
                .chain(std::iter::once(time))
                .map(|values| SortColumn {
                    values: values.clone(),
                    options: None,
                })
                .collect();
            lexsort_to_indices(&sort, None)?
        }
    };
    let sorted = take_record_batch(&batch, &indices)?;
    let hours: Vec<i64> = indices
        .values()
        .iter()
        .map(|&i| times.get(i as usize).copied().unwrap_or_default().div_euclid(HOUR_US))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < hours.len() {
        let h = hours.get(start).copied().unwrap_or_default();
        let end = hours
            .iter()
            .skip(start)
            .position(|x| *x != h)
            .map_or(hours.len(), |p| start + p);
        out.push((h * HOUR_US, sorted.slice(start, end - start)));
        start = end;
    }
    Ok(out)
}

/// Each row's place in the order of the key columns' values (strings in dictionaries, nulls
/// first), all keys packed in one number: sorting by it sorts as comparing the strings would,
/// with the strings compared once per distinct value rather than per row. `None` if a key is
/// not such a dictionary or the ranks do not fit in 64 bits.
fn dictionary_ranks(keys: &[ArrayRef], rows: usize) -> Option<Vec<u64>> {
    let mut packed = vec![0u64; rows];
    let mut bits = 0;
    for key in keys {
        let dict = key.as_any().downcast_ref::<DictionaryArray<Int32Type>>()?;
        let values = dict.values().as_any().downcast_ref::<StringArray>()?;
        let mut order: Vec<usize> = (0..values.len()).collect();
        let value = |i: usize| values.is_valid(i).then(|| values.value(i));
        order.sort_unstable_by(|a, b| value(*a).cmp(&value(*b)));
        // Rank 0 is null; equal values share a rank.
        let mut rank_of = vec![0u64; values.len()];
        let (mut rank, mut last) = (0u64, None);
        for &i in &order {
            let v = value(i);
            if v.is_some() && (rank == 0 || v != last) {
                rank += 1;
            }
            last = v;
            if let Some(r) = rank_of.get_mut(i) {
                *r = if v.is_some() { rank } else { 0 };
            }
        }
        let width = 64 - rank.leading_zeros();
        bits += width;
        if bits > 64 || dict.len() != rows {
            return None;
        }
        for (p, k) in packed.iter_mut().zip(dict.keys().iter()) {
            let r = k
                .and_then(|k| rank_of.get(usize::try_from(k).ok()?).copied())
                .unwrap_or(0);
            *p = p.checked_shl(width).unwrap_or(0) | r;
        }
    }
    Some(packed)
}

/// Row indices in (hour, ranks, time) order; rows equal in all three keep their order.
fn sort_by_ranks(times: &[i64], ranks: &[u64]) -> UInt32Array {
    let mut idx: Vec<u32> = (0..u32::try_from(times.len()).unwrap_or(u32::MAX)).collect();
    let key = |i: u32| {
        let t = times.get(i as usize).copied().unwrap_or_default();
        (
            t.div_euclid(HOUR_US),
            ranks.get(i as usize).copied().unwrap_or_default(),
            t,
        )
    };
    idx.sort_by_key(|&i| key(i));
    UInt32Array::from(idx)
}

#[cfg(test)]
mod tests {
    use arrow::array::Float64Array;

    use super::*;

    /// A float or int column as f64 values.
    fn column_f64(batch: &RecordBatch, name: &str) -> Option<Vec<Option<f64>>> {
        let col = batch.column_by_name(name)?;
        if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
            return Some(a.iter().collect());
        }
        col.as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.iter().map(|v| v.map(|x| x as f64)).collect())
    }

    fn fv(pairs: &[(&'static str, FieldValue<'static>)]) -> Vec<(Cow<'static, str>, FieldValue<'static>)> {
        pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), v.clone())).collect()
    }

    #[test]
    fn columns_grow_widen_and_clashes_are_reported() {
        let mut b = Buffer::new("gw", Schemas::new());
        let mut conflicts = Vec::new();
        b.append(
            "t",
            2,
            Some("u"),
            "d2",
            &fv(&[("a", FieldValue::Int(1))]),
            &mut conflicts,
        );
        b.append(
            "t",
            1,
            Some("u"),
            "d1",
            &fv(&[("a", FieldValue::Float(2.5)), ("b", FieldValue::Bool(true))]),
            &mut conflicts,
        );
        b.append(
            "t",
            3,
            Some("u"),
            "d1",
            &fv(&[("a", FieldValue::Str("x".into())), ("b", FieldValue::Bool(false))]),
            &mut conflicts,
        );
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].column, "a");
        assert_eq!(
            b.schemas()["t"],
            vec![("a".into(), FieldType::Float), ("b".into(), FieldType::Bool)]
        );
        let sealed = b.seal().unwrap();
        assert_eq!(sealed.len(), 1);
        let (hour, batch) = &sealed[0].hours[0];
        assert_eq!(*hour, 0);
        assert_eq!(batch.num_rows(), 3);
        // Sorted by (device, time): d1@1, d1@3, d2@2.
        assert_eq!(column_f64(batch, "a").unwrap(), vec![Some(2.5), None, Some(1.0)]);
        assert_eq!(batch.schema().field(0).name(), "time");
        assert_eq!(b.rows(), 0);
    }

    #[test]
    fn rows_of_two_users_stay_apart_and_sort_by_owner_first() {
        let mut b = Buffer::new("gw", Schemas::new());
        let mut conflicts = Vec::new();
        for (time, owner, v) in [
            (1, Some("globex"), 1),
            (2, Some("acme"), 2),
            (3, None, 3),
            (4, Some("globex"), 4),
        ] {
            b.append(
                "t",
                time,
                owner,
                "d1",
                &fv(&[("v", FieldValue::Int(v))]),
                &mut conflicts,
            );
        }
        let sealed = b.seal().unwrap();
        let batch = &sealed[0].hours[0].1;
        let owner =
            arrow::compute::cast(batch.column_by_name(OWNER).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        let owner = owner.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
        let owners: Vec<Option<&str>> = owner.iter().collect();
        // Nulls (owner unknown) sort first, then by owner, then by time.
        assert_eq!(owners, [None, Some("acme"), Some("globex"), Some("globex")]);
        assert_eq!(
            column_f64(batch, "v").unwrap(),
            vec![Some(3.0), Some(2.0), Some(1.0), Some(4.0)]
        );
        assert_eq!(batch.schema().field(3).name(), OWNER);
    }

    #[test]
    fn rows_split_at_hour_boundaries() {
        let mut b = Buffer::new("gw", Schemas::new());
        let mut c = Vec::new();
        for t in [HOUR_US + 5, 10, HOUR_US - 1, 2 * HOUR_US] {
            b.append("t", t, Some("u"), "d", &fv(&[("v", FieldValue::Int(t))]), &mut c);
        }
        let sealed = b.seal().unwrap();
        let hours: Vec<(i64, usize)> = sealed[0].hours.iter().map(|(h, b)| (*h, b.num_rows())).collect();
        assert_eq!(hours, vec![(0, 2), (HOUR_US, 1), (2 * HOUR_US, 1)]);
    }

    /// A wide payload after many narrow rows (#13, finding 8): the nulls it back-fills count
    /// toward the buffer's bytes, so a seal comes when memory says so; columns stop at
    /// MAX_COLUMNS and over-long names are dropped, both counted.
    #[test]
    fn wide_payloads_are_counted_and_capped() {
        let mut b = Buffer::new("gw", Schemas::default());
        let mut conflicts = Vec::new();
        for i in 0..1000 {
            b.append(
                "t",
                i,
                Some("u"),
                "d",
                &fv(&[("v", FieldValue::Int(i))]),
                &mut conflicts,
            );
        }
        let narrow = b.bytes();
        let names: Vec<String> = (0..2000).map(|k| format!("k{k}")).collect();
        let mut wide: Vec<(Cow<'_, str>, FieldValue<'_>)> = names
            .iter()
            .map(|n| (Cow::Borrowed(n.as_str()), FieldValue::Int(1)))
            .collect();
        let long = "x".repeat(MAX_COLUMN_NAME + 1);
        wide.push((Cow::Borrowed(long.as_str()), FieldValue::Int(1)));
        b.append("t", 1000, Some("u"), "d", &wide, &mut conflicts);
        // 1,023 new columns, each back-filled for 1,000 rows.
        assert!(
            b.bytes() - narrow >= 1023 * 1000 * NULL_BYTES,
            "{} -> {}",
            narrow,
            b.bytes()
        );
        assert_eq!(b.schemas()["t"].len(), MAX_COLUMNS);
        assert_eq!(b.take_dropped(), 2000 - 1023 + 1);
        assert_eq!(b.take_dropped(), 0);
        // A narrow row after it pays for the nulls it leaves.
        let before = b.bytes();
        b.append(
            "t",
            1001,
            Some("u"),
            "d",
            &fv(&[("v", FieldValue::Int(1))]),
            &mut conflicts,
        );
        assert!(b.bytes() - before >= 1023 * NULL_BYTES);
    }

    /// Rows whose fields change order or names between them still land in their columns
    /// (the shape of the last row is only a hint).
    #[test]
    fn fields_find_their_columns_whatever_the_shape() {
        let mut b = Buffer::new("gw", Schemas::new());
        let mut conflicts = Vec::new();
        let rows: [&[(&'static str, i64)]; 5] = [
            &[("a", 1), ("b", 2)],
            &[("b", 3), ("a", 4)],
            &[("a", 5), ("c", 6)],
            &[("a", 7), ("b", 8)],
            &[("c", 9)],
        ];
        for (t, row) in rows.iter().enumerate() {
            let fields: Vec<_> = row
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), FieldValue::Int(*v)))
                .collect();
            b.append("t", t as i64, Some("u"), "d", &fields, &mut conflicts);
        }
        let sealed = b.seal().unwrap();
        let batch = &sealed[0].hours[0].1;
        let f = |x: Option<f64>| x;
        assert_eq!(
            column_f64(batch, "a").unwrap(),
            [Some(1.0), Some(4.0), Some(5.0), Some(7.0), None].map(f)
        );
        assert_eq!(
            column_f64(batch, "b").unwrap(),
            [Some(2.0), Some(3.0), None, Some(8.0), None].map(f)
        );
        assert_eq!(
            column_f64(batch, "c").unwrap(),
            [None, None, Some(6.0), None, Some(9.0)].map(f)
        );
        assert!(conflicts.is_empty());
    }

    proptest::proptest! {
        /// The seal's sort by dictionary ranks orders rows exactly as Arrow's lexsort over the
        /// strings does (nulls first), and keeps the arrival order of rows equal in every key.
        #[test]
        fn rank_sort_orders_as_the_strings_do(rows in proptest::collection::vec(
            (proptest::option::of(0u8..3), proptest::option::of(0u8..5), -3i64..3), 1..60)
        ) {
            use arrow::compute::take;
            let owner: DictionaryArray<Int32Type> = rows.iter().map(|r| r.0.map(|o| ["u0", "u1", "u10"][o as usize])).collect();
            let device: DictionaryArray<Int32Type> = rows.iter().map(|r| r.1.map(|d| ["d", "d1", "d10", "d2", "e"][d as usize])).collect();
            let times: Vec<i64> = rows.iter().map(|r| r.2 * HOUR_US / 2).collect();
            let keys: [ArrayRef; 2] = [Arc::new(owner), Arc::new(device)];
            let ranks = dictionary_ranks(&keys, rows.len()).expect("dictionaries of strings");
            let ours = sort_by_ranks(&times, &ranks);
            let time: ArrayRef = Arc::new(Int64Array::from(times.clone()));
            let hour: ArrayRef = Arc::new(Int64Array::from_iter_values(times.iter().map(|t| t.div_euclid(HOUR_US))));
            let sort: Vec<SortColumn> = [&hour, &keys[0], &keys[1], &time]
                .into_iter()
                .map(|values| SortColumn { values: values.clone(), options: None })
                .collect();
            let theirs = lexsort_to_indices(&sort, None).unwrap();
            for col in [&hour, &keys[0], &keys[1], &time] {
                let a = arrow::compute::cast(&take(col, &ours, None).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
                let b = arrow::compute::cast(&take(col, &theirs, None).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
                proptest::prop_assert_eq!(a.to_data(), b.to_data());
            }
            // Ties keep arrival order.
            for w in ours.values().windows(2) {
                let (i, j) = (w[0] as usize, w[1] as usize);
                if (times[i], ranks[i]) == (times[j], ranks[j]) {
                    proptest::prop_assert!(i < j);
                }
            }
        }
    }
}
