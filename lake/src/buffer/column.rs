//! A table's column builders: the payload fields' typed builders, and the dictionary
//! columns (device, owner) that take a run of rows of one key at a time.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, DictionaryArray, Float64Builder, Int64Builder, StringBuilder,
    StringDictionaryBuilder,
};
use arrow::datatypes::Int32Type;

use crate::model::{FieldType, FieldValue};

pub(super) enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
}

impl Builder {
    pub(super) fn new(t: FieldType, nulls: usize) -> Self {
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

    pub(super) fn len(&self) -> usize {
        use arrow::array::ArrayBuilder;
        match self {
            Builder::Bool(b) => b.len(),
            Builder::Int(b) => b.len(),
            Builder::Float(b) => b.len(),
            Builder::Str(b) => b.len(),
            Builder::Bytes(b) => b.len(),
        }
    }

    pub(super) fn append_nulls(&mut self, n: usize) {
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
    pub(super) fn append(&mut self, v: &FieldValue<'_>) -> Option<usize> {
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
    pub(super) fn widen(&mut self) {
        if let Builder::Int(b) = self {
            let ints = b.finish();
            let mut f = Float64Builder::with_capacity(ints.len());
            for v in ints.iter() {
                f.append_option(v.map(|x| x as f64));
            }
            *self = Builder::Float(f);
        }
    }

    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
        }
    }
}

pub(super) struct Column {
    pub(super) name: String,
    pub(super) ty: FieldType,
    pub(super) builder: Builder,
}

/// A dictionary column that counts runs of one value before it appends them: rows arrive in
/// runs of one device (a socket read's rows), so most rows cost a comparison, not a hash.
#[derive(Default)]
pub(super) struct KeyColumn {
    builder: StringDictionaryBuilder<Int32Type>,
    /// The open run, not yet in `builder`: its value (kept, with its memory, through a run
    /// of nulls), whether it is a run of nulls, and its rows.
    run: String,
    run_null: bool,
    run_len: usize,
}

impl KeyColumn {
    pub(super) fn append(&mut self, v: Option<&str>) {
        let same = match v {
            Some(v) => !self.run_null && self.run == v,
            None => self.run_null,
        };
        if same && self.run_len > 0 {
            self.run_len += 1;
            return;
        }
        self.flush();
        self.run_len = 1;
        self.run_null = v.is_none();
        if let Some(v) = v {
            self.run.clear();
            self.run.push_str(v);
        }
    }

    fn flush(&mut self) {
        if self.run_len == 0 {
            return;
        }
        if self.run_null {
            self.builder.append_nulls(self.run_len);
        } else {
            self.builder.append_values(&self.run, self.run_len);
        }
        self.run_len = 0;
    }

    pub(super) fn finish(&mut self) -> DictionaryArray<Int32Type> {
        self.flush();
        self.builder.finish()
    }
}
