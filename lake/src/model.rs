//! The data model: how a PSON payload becomes a row of a table.
//!
//! One table per resource or bucket. Every row has `time` (µs, UTC), `device` and
//! `gateway`, then the payload's fields, flattened (ARCHITECTURE.md, "Data model"):
//! * A stream's `{"out": v}` or `{"in": v}` wrapper is taken off; an in/out resource's
//!   `{"in": a, "out": b}` keeps both as prefixes `in.` and `out.`.
//! * An object gives one column per key; nested keys are joined with `.`.
//! * A scalar gives the column `value`.
//! * An array is kept whole, as JSON text in a string column.
//! * Null and unset values are nulls. Integers above `i64::MAX` become floats.
//! * A field named like a fixed column (`time`, `device`, `gateway`, `owner`) gets a `_` prefix.

use std::borrow::Cow;

use twinlake_sdk::pson::{ObjectRef, ValueRef};

use crate::columns::FIXED_COLUMNS;
pub use crate::columns::FieldType;

/// One field value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(&'a [u8]),
}

impl FieldValue<'_> {
    /// Its column type.
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Int(_) => FieldType::Int,
            FieldValue::Float(_) => FieldType::Float,
            FieldValue::Str(_) => FieldType::Str,
            FieldValue::Bytes(_) => FieldType::Bytes,
        }
    }

    /// As a number (what rules compare): ints and floats as they are, booleans as 0 and 1.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Float(f) => Some(*f),
            FieldValue::Int(i) => Some(*i as f64),
            FieldValue::Bool(b) => Some(f64::from(u8::from(*b))),
            FieldValue::Str(_) | FieldValue::Bytes(_) => None,
        }
    }
}

/// Flattens a payload into `(column, value)` pairs, appended to `out` (cleared first).
/// `stream` says whether the payload came from a resource stream (with the in/out wrapper).
pub fn flatten<'a>(payload: ValueRef<'a>, stream: bool, out: &mut Vec<(Cow<'a, str>, FieldValue<'a>)>) {
    out.clear();
    if stream && let ValueRef::Object(o) = payload {
        let mut it = o.iter();
        // {"out": v} or {"in": v}: the value itself.
        if let (Some(("out" | "in", v)), None) = (it.next(), it.next()) {
            return flatten_value(v, out);
        }
    }
    flatten_value(payload, out);
}

/// A top-level value: an object's keys become columns, a scalar becomes `value`.
fn flatten_value<'a>(v: ValueRef<'a>, out: &mut Vec<(Cow<'a, str>, FieldValue<'a>)>) {
    match v {
        ValueRef::Object(o) => flatten_object(o, None, out),
        other => {
            if let Some(fv) = scalar(other) {
                out.push((Cow::Borrowed("value"), fv));
            }
        }
    }
}

fn flatten_object<'a>(o: ObjectRef<'a>, prefix: Option<&str>, out: &mut Vec<(Cow<'a, str>, FieldValue<'a>)>) {
    for (k, v) in o.iter() {
        let name: Cow<'a, str> = match prefix {
            None if FIXED_COLUMNS.contains(&k) => Cow::Owned(format!("_{k}")),
            None => Cow::Borrowed(k),
            Some(p) => Cow::Owned(format!("{p}.{k}")),
        };
        match v {
            ValueRef::Object(inner) => flatten_object(inner, Some(&name), out),
            other => {
                if let Some(fv) = scalar(other) {
                    out.push((name, fv));
                }
            }
        }
    }
}

fn scalar(v: ValueRef<'_>) -> Option<FieldValue<'_>> {
    Some(match v {
        ValueRef::Null | ValueRef::Unset => return None,
        ValueRef::Bool(b) => FieldValue::Bool(b),
        ValueRef::Int(i) => FieldValue::Int(i),
        ValueRef::UInt(u) => FieldValue::Float(u as f64),
        ValueRef::Float(f) => FieldValue::Float(widen(f)),
        ValueRef::Double(d) => FieldValue::Float(d),
        ValueRef::Str(s) => FieldValue::Str(Cow::Borrowed(s)),
        ValueRef::Bytes(b) => FieldValue::Bytes(b),
        ValueRef::Array(_) => FieldValue::Str(Cow::Owned(twinlake_sdk::json::ref_to_json(v).to_string())),
        ValueRef::Object(_) => return None,
    })
}

/// An f32 as the f64 with the same shortest decimal form: PSON sends `20.1` as an f32
/// (the stock clients do for any value within 1e-5 of one), and the reader means 20.1,
/// not 20.100000381469727.
pub fn widen(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    let mut buf = [0u8; 32];
    let mut w = Cursor { buf: &mut buf, len: 0 };
    if std::fmt::Write::write_fmt(&mut w, format_args!("{f:e}")).is_err() {
        return f64::from(f);
    }
    let len = w.len;
    std::str::from_utf8(buf.get(..len).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::from(f))
}

/// A fixed buffer for formatting without allocating.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The longest table name, in bytes (it names a directory and prefixes every file name).
pub const MAX_TABLE_NAME: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong,
    /// A character outside `A-Z a-z 0-9 _ -`.
    Character(char),
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameError::Empty => f.write_str("an empty name"),
            NameError::TooLong => write!(f, "a table name over {MAX_TABLE_NAME} bytes"),
            NameError::Character(c) => write!(f, "{c:?} in a name (use A-Z, a-z, 0-9, _ and -)"),
        }
    }
}

/// A table name from a resource path or bucket id: the segments joined with `_`.
///
/// The rules (ARCHITECTURE.md, "Data model"): every segment is non-empty and made of ASCII
/// letters, digits, `_` and `-`, and the whole name is at most [`MAX_TABLE_NAME`] bytes.
/// Anything else is refused where it enters rather than mapped, so two different names can
/// never share a table and no name can make a file the disk refuses.
pub fn table_name<S: AsRef<str>>(path: &[S]) -> Result<String, NameError> {
    let mut name = String::new();
    for (i, seg) in path.iter().enumerate() {
        let seg = seg.as_ref();
        if seg.is_empty() {
            return Err(NameError::Empty);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(NameError::Character(c));
        }
        if i > 0 {
            name.push('_');
        }
        name.push_str(seg);
        if name.len() > MAX_TABLE_NAME {
            return Err(NameError::TooLong);
        }
    }
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    Ok(name)
}

/// Whether `name` is a table name [`table_name`] could have made: what seals and replays
/// check again, since a WAL written by an older version may hold any name.
pub fn is_table_name(name: &str) -> bool {
    table_name(&[name]).is_ok()
}

#[cfg(test)]
mod tests {
    use twinlake_sdk::pson::Value;

    use super::*;

    fn flat(v: &Value, stream: bool) -> Vec<(String, FieldValue<'static>)> {
        let bytes = v.to_bytes();
        let r = ValueRef::decode(&bytes).unwrap();
        let mut out = Vec::new();
        flatten(r, stream, &mut out);
        out.into_iter()
            .map(|(k, v)| {
                let v = match v {
                    FieldValue::Str(s) => FieldValue::Str(Cow::Owned(s.into_owned())),
                    FieldValue::Bytes(b) => FieldValue::Str(Cow::Owned(format!("{b:?}"))),
                    FieldValue::Bool(b) => FieldValue::Bool(b),
                    FieldValue::Int(i) => FieldValue::Int(i),
                    FieldValue::Float(f) => FieldValue::Float(f),
                };
                (k.into_owned(), v)
            })
            .collect()
    }

    #[test]
    fn object_under_out_gives_one_column_per_key() {
        let v = Value::object().with("out", Value::object().with("temp", 21.5).with("hum", 40));
        assert_eq!(
            flat(&v, true),
            vec![
                ("temp".into(), FieldValue::Float(21.5)),
                ("hum".into(), FieldValue::Int(40))
            ]
        );
    }

    #[test]
    fn scalar_becomes_value_and_nested_keys_join_with_dots() {
        assert_eq!(
            flat(&Value::object().with("out", 7), true),
            vec![("value".into(), FieldValue::Int(7))]
        );
        let v = Value::object().with(
            "gps",
            Value::object()
                .with("lat", 1.5)
                .with("fix", Value::object().with("ok", true)),
        );
        assert_eq!(
            flat(&v, false),
            vec![
                ("gps.lat".into(), FieldValue::Float(1.5)),
                ("gps.fix.ok".into(), FieldValue::Bool(true))
            ]
        );
    }

    #[test]
    fn in_out_keeps_prefixes_and_reserved_names_are_escaped() {
        let v = Value::object().with("in", Value::object().with("a", 1)).with("out", 2);
        assert_eq!(
            flat(&v, true),
            vec![("in.a".into(), FieldValue::Int(1)), ("out".into(), FieldValue::Int(2))]
        );
        let v = Value::object()
            .with("time", 5)
            .with("device", "x")
            .with("n", Value::Null);
        assert_eq!(
            flat(&v, false),
            vec![
                ("_time".into(), FieldValue::Int(5)),
                ("_device".into(), FieldValue::Str("x".into()))
            ]
        );
    }

    #[test]
    fn floats_keep_their_decimal_form() {
        assert_eq!(widen(20.1), 20.1);
        assert_eq!(widen(-0.3), -0.3);
        assert_eq!(widen(1e-30), 1e-30);
        assert!(widen(f32::NAN).is_nan());
        assert_eq!(widen(f32::INFINITY), f64::INFINITY);
        assert_eq!(widen(f32::MAX), 3.4028235e38);
    }

    #[test]
    fn arrays_are_json_text() {
        let v = Value::object().with("xs", Value::Array(vec![Value::Int(1), Value::Int(2)]));
        assert_eq!(flat(&v, false), vec![("xs".into(), FieldValue::Str("[1,2]".into()))]);
    }

    #[test]
    fn table_names_are_checked_not_mapped() {
        assert_eq!(table_name(&["temp"]), Ok("temp".into()));
        assert_eq!(table_name(&["cfg", "level"]), Ok("cfg_level".into()));
        assert_eq!(table_name(&["a-b_C9"]), Ok("a-b_C9".into()));
        // Two names that used to map to one table are both refused.
        assert_eq!(table_name(&["a.b"]), Err(NameError::Character('.')));
        assert_eq!(table_name(&["a/b"]), Err(NameError::Character('/')));
        assert_eq!(table_name(&["..", "x"]), Err(NameError::Character('.')));
        assert_eq!(table_name(&["é"]), Err(NameError::Character('é')));
        assert_eq!(table_name::<&str>(&[]), Err(NameError::Empty));
        assert_eq!(table_name(&["a", ""]), Err(NameError::Empty));
        assert_eq!(
            table_name(&["x".repeat(MAX_TABLE_NAME)]).map(|n| n.len()),
            Ok(MAX_TABLE_NAME)
        );
        assert_eq!(table_name(&["x".repeat(300)]), Err(NameError::TooLong));
        assert_eq!(table_name(&["x".repeat(40), "y".repeat(40)]), Err(NameError::TooLong));
    }
}
