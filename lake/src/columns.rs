//! The columns of a lake table: the fixed ones every row has, and the types a field column
//! can take, in Arrow and in the catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// The fixed columns every table starts with, in file order. A payload key of one of these
/// names gets a `_` prefix ([`crate::model`]).
///
/// `owner` is the user a row belongs to (null in files of format 1, written before it
/// existed: the reader takes their user from the registry's (gateway, device) record).
pub const FIXED_COLUMNS: [&str; 4] = ["time", "device", "gateway", OWNER];
/// The column of the user a row belongs to.
pub const OWNER: &str = "owner";

/// The type of a field column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Bool,
    Int,
    Float,
    Str,
    Bytes,
}

/// The Arrow type of `device` and `gateway`.
pub fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow type of `time`.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The Arrow type of a field column.
pub fn field_data_type(t: FieldType) -> DataType {
    match t {
        FieldType::Bool => DataType::Boolean,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Str => DataType::Utf8,
        FieldType::Bytes => DataType::Binary,
    }
}

/// The column types of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Time,
    Tag,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
}

impl ColumnType {
    /// The Arrow type a table column of this type has.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Tag => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Int => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Str => DataType::Utf8,
            ColumnType::Bytes => DataType::Binary,
        }
    }

    /// The lake type of an Arrow type; `None` for types the lake does not hold.
    pub fn of(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Timestamp(_, _) => ColumnType::Time,
            DataType::Dictionary(_, v) if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8) => ColumnType::Tag,
            DataType::Boolean => ColumnType::Bool,
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => ColumnType::Int,
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => ColumnType::Int,
            DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::UInt64 => ColumnType::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Str,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Bytes,
            _ => return None,
        })
    }

    /// The type two files' columns of one name share: an int widens to a float, and any
    /// other clash is read as text.
    pub fn merge(self, other: Self) -> Self {
        use ColumnType::*;
        match (self, other) {
            (a, b) if a == b => a,
            (Int, Float) | (Float, Int) => Float,
            (Tag, Str) | (Str, Tag) => Tag,
            _ => Str,
        }
    }
}

impl From<FieldType> for ColumnType {
    fn from(t: FieldType) -> Self {
        match t {
            FieldType::Bool => ColumnType::Bool,
            FieldType::Int => ColumnType::Int,
            FieldType::Float => ColumnType::Float,
            FieldType::Str => ColumnType::Str,
            FieldType::Bytes => ColumnType::Bytes,
        }
    }
}

impl ColumnType {
    /// The field type of a field column's type (none for `time` and tags).
    pub fn field_type(self) -> Option<FieldType> {
        Some(match self {
            ColumnType::Bool => FieldType::Bool,
            ColumnType::Int => FieldType::Int,
            ColumnType::Float => FieldType::Float,
            ColumnType::Str => FieldType::Str,
            ColumnType::Bytes => FieldType::Bytes,
            ColumnType::Time | ColumnType::Tag => return None,
        })
    }
}

/// A table's schema from its files' columns: `time`, `device`, `gateway` first, then the
/// rest in the order they first appear.
pub fn merge_schema<'a>(columns: impl IntoIterator<Item = &'a [(String, ColumnType)]>) -> SchemaRef {
    let mut order: Vec<String> = FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut types: BTreeMap<String, ColumnType> = FIXED_COLUMNS
        .iter()
        .map(|&c| {
            (
                c.to_owned(),
                if c == "time" { ColumnType::Time } else { ColumnType::Tag },
            )
        })
        .collect();
    for cols in columns {
        for (name, ty) in cols {
            match types.get_mut(name) {
                Some(t) => *t = t.merge(*ty),
                None => {
                    order.push(name.clone());
                    types.insert(name.clone(), *ty);
                }
            }
        }
    }
    let fields: Vec<Field> = order
        .iter()
        .map(|n| {
            let ty = types.get(n).copied().unwrap_or(ColumnType::Str);
            Field::new(n, ty.data_type(), !FIXED_COLUMNS.contains(&n.as_str()) || n == OWNER)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_merge_by_widening() {
        let a = vec![("v".to_string(), ColumnType::Int), ("s".to_string(), ColumnType::Str)];
        let b = vec![
            ("v".to_string(), ColumnType::Float),
            ("s".to_string(), ColumnType::Bool),
        ];
        let s = merge_schema([a.as_slice(), b.as_slice()]);
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["time", "device", "gateway", "owner", "v", "s"]);
        assert_eq!(s.field(4).data_type(), &DataType::Float64);
        assert_eq!(s.field(5).data_type(), &DataType::Utf8);
        assert!(s.field(3).is_nullable() && !s.field(1).is_nullable());
    }
}
