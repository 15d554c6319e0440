//! The in-memory Arrow buffer: one set of column builders per table, with the schema rules
//! of the data model (ARCHITECTURE.md): columns are only added, an integer column widens to
//! float when a float arrives, and any other type clash drops that one value (counted).
//!
//! A payload takes one of two paths. The general one flattens it into fields and finds each
//! field's column by name. A payload shaped like one stored before takes its table's
//! [`template`] instead: its values are read at known places in its bytes and go to known
//! columns.

mod column;
mod seal;
mod template;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use twinlake_sdk::pson::ValueRef;

use self::column::{Builder, Column, KeyColumn};
pub use self::seal::Unsealed;
use self::template::Template;
use crate::model::{FieldType, FieldValue, flatten};

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

/// The most payload shapes a table remembers; a new one replaces the oldest.
const MAX_TEMPLATES: usize = 4;

/// One table's buffered rows.
struct Table {
    name: String,
    time: Vec<i64>,
    device: KeyColumn,
    owner: KeyColumn,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    /// The columns of the last row's fields, in their order: rows of one payload shape find
    /// their columns by comparing names, without hashing (at most one entry per field).
    shape: Vec<usize>,
    /// Payload shapes seen, newest replacing the oldest.
    templates: Vec<Template>,
    templates_built: usize,
}

impl Table {
    fn new(name: &str, schema: &[(String, FieldType)]) -> Self {
        let mut t = Self {
            name: name.to_owned(),
            time: Vec::new(),
            device: KeyColumn::default(),
            owner: KeyColumn::default(),
            columns: Vec::new(),
            index: HashMap::new(),
            shape: Vec::new(),
            templates: Vec::new(),
            templates_built: 0,
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

    /// Remembers the shape of a row just stored, whose fields went to `landed` (all of them,
    /// else no template).
    fn learn(&mut self, body: &[u8], stream: bool, landed: &[Option<usize>]) {
        let Some(t) = Template::build(body, stream, landed, &self.columns) else {
            return;
        };
        let at = self.templates_built % MAX_TEMPLATES;
        self.templates_built += 1;
        match self.templates.get_mut(at) {
            Some(slot) => *slot = t,
            None => self.templates.push(t),
        }
    }

    /// Appends a null to every column the row at `row` left out; returns the bytes they take.
    fn fill_nulls(&mut self, row: usize) -> usize {
        let mut bytes = 0;
        for col in &mut self.columns {
            if col.builder.len() == row {
                col.builder.append_nulls(1);
                bytes += NULL_BYTES;
            }
        }
        bytes
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
    tables: Vec<Table>,
    by_name: HashMap<String, usize>,
    /// The table of the last row: rows come in runs of one table.
    last: usize,
    rows: usize,
    bytes: usize,
    oldest: Option<std::time::Instant>,
    /// Values dropped since the last [`Buffer::take_dropped`]: past [`MAX_COLUMNS`] or with
    /// a name over [`MAX_COLUMN_NAME`].
    dropped: u64,
    /// Where the last row's fields went (`None`: not stored), reused from row to row.
    landed: Vec<Option<usize>>,
    /// Rows stored through a template.
    templated: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("rows", &self.rows)
            .field("bytes", &self.bytes)
            .field("tables", &self.tables.iter().map(|t| &t.name).collect::<Vec<_>>())
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

/// Who a row is from: its user (none: not known, as in a log written before rows carried
/// it) and its device.
type Who<'a> = (Option<&'a str>, &'a str);

impl Buffer {
    /// An empty buffer whose tables start from `schemas`.
    pub fn new(gateway: &str, schemas: Schemas) -> Self {
        Self {
            gateway: gateway.to_owned(),
            schemas,
            tables: Vec::new(),
            by_name: HashMap::new(),
            last: 0,
            rows: 0,
            bytes: 0,
            oldest: None,
            dropped: 0,
            landed: Vec::new(),
            templated: 0,
        }
    }

    /// Whether `table` has a schema (has ever had rows).
    pub fn knows(&self, table: &str) -> bool {
        self.tables.get(self.last).is_some_and(|t| t.name == table) || self.schemas.contains_key(table)
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

    /// Rows stored through a template of their payload's shape (not flattened), ever.
    pub fn templated_rows(&self) -> u64 {
        self.templated
    }

    /// The schemas so far.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }

    /// The index of `table`'s buffer, made if it has none.
    fn table(&mut self, table: &str) -> usize {
        if self.tables.get(self.last).is_some_and(|t| t.name == table) {
            return self.last;
        }
        let idx = match self.by_name.get(table) {
            Some(&i) => i,
            None => {
                let schema = self.schemas.entry(table.to_owned()).or_default();
                self.tables.push(Table::new(table, schema));
                self.by_name.insert(table.to_owned(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        self.last = idx;
        idx
    }

    /// Appends one row of `owner`'s `device` whose payload is `payload` (a resource stream's,
    /// with its in/out wrapper, if `stream`), flattened by the data model's rules. Values
    /// that clash with their column's type are left out (null) and reported; the rest of
    /// the row is kept. Returns the values stored.
    pub fn append_payload(
        &mut self,
        table: &str,
        time_us: i64,
        (owner, device): Who<'_>,
        (payload, stream): (ValueRef<'_>, bool),
        conflicts: &mut Vec<Conflict>,
    ) -> u64 {
        let ti = self.table(table);
        let body = match payload {
            ValueRef::Object(o) => Some(o.body()),
            _ => None,
        };
        if let Some(body) = body
            && let Some(t) = self.tables.get_mut(ti)
            && let Some(tp) = t
                .templates
                .iter_mut()
                .find_map(|tp| tp.matches(body, stream, &t.columns).then_some(tp))
        {
            let row = t.time.len();
            let mut bytes = tp.append(body, &mut t.columns);
            let values = tp.values();
            if values != t.columns.len() {
                bytes += t.fill_nulls(row);
            }
            self.end_row(ti, time_us, (owner, device), bytes);
            self.templated += 1;
            return values as u64;
        }
        let mut fields: Vec<(Cow<'_, str>, FieldValue<'_>)> = Vec::with_capacity(16);
        flatten(payload, stream, &mut fields);
        self.append_at(ti, time_us, (owner, device), &fields, conflicts);
        if let Some(body) = body
            && let Some(t) = self.tables.get_mut(ti)
        {
            t.learn(body, stream, &self.landed);
        }
        fields.len() as u64
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
        let ti = self.table(table);
        self.append_at(ti, time_us, (owner, device), fields, conflicts);
    }

    /// The general path: each field to its column by name, new columns added, an int column
    /// widened by a float. Records in `landed` where each field went.
    fn append_at(
        &mut self,
        ti: usize,
        time_us: i64,
        who: Who<'_>,
        fields: &[(Cow<'_, str>, FieldValue<'_>)],
        conflicts: &mut Vec<Conflict>,
    ) {
        self.landed.clear();
        let Some(t) = self.tables.get_mut(ti) else { return };
        let row = t.time.len();
        let mut bytes = 0;
        for (pos, (name, value)) in fields.iter().enumerate() {
            let got = value.field_type();
            let idx = match t.column_at(pos, name) {
                Some(i) => i,
                None if t.columns.len() >= MAX_COLUMNS || name.len() > MAX_COLUMN_NAME => {
                    self.dropped += 1;
                    self.landed.push(None);
                    continue;
                }
                None => {
                    if let Some(schema) = self.schemas.get_mut(&t.name) {
                        schema.push((name.to_string(), got));
                    }
                    // The new column is back-filled with a null for every buffered row.
                    bytes += row * NULL_BYTES;
                    t.add_column(name, got)
                }
            };
            let Some(col) = t.columns.get_mut(idx) else { continue };
            if col.builder.len() > row {
                // The key came twice in one payload: the first one wins.
                self.landed.push(None);
                continue;
            }
            if col.ty == FieldType::Int && got == FieldType::Float {
                col.builder.widen();
                col.ty = FieldType::Float;
                let schema = self.schemas.get_mut(&t.name).into_iter().flatten();
                if let Some(s) = schema.into_iter().find(|(n, _)| n == &col.name) {
                    s.1 = FieldType::Float;
                }
            }
            match col.builder.append(value) {
                Some(n) => {
                    bytes += n;
                    self.landed.push(Some(idx));
                }
                None => {
                    self.landed.push(None);
                    conflicts.push(Conflict {
                        table: t.name.clone(),
                        column: col.name.clone(),
                        have: col.ty,
                        got,
                    });
                }
            }
        }
        bytes += t.fill_nulls(row);
        self.end_row(ti, time_us, who, bytes);
    }

    /// The row's time, device and owner, and the buffer's counts.
    fn end_row(&mut self, ti: usize, time_us: i64, (owner, device): Who<'_>, bytes: usize) {
        let Some(t) = self.tables.get_mut(ti) else { return };
        t.time.push(time_us);
        t.device.append(Some(device));
        t.owner.append(owner);
        self.rows += 1;
        self.bytes += bytes + 16 + device.len().min(4);
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
        self.by_name.clear();
        self.last = 0;
        let mut tables = std::mem::take(&mut self.tables);
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Unsealed {
            gateway: self.gateway.clone(),
            tables,
        }
    }
}

#[cfg(test)]
mod tests;
