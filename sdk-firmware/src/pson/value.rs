//! The owned PSON value, for building payloads and holding decoded ones.

use alloc::string::String;
use alloc::vec::Vec;

use super::{
    DecodeError, Head, Limits, ValueRef, delimited_len, read_head, read_key, tag, write_bytes, write_double,
    write_float, write_int, write_key, write_str, write_uint,
};
use crate::varint;
use crate::{BufferFull, Sink};

/// An owned PSON value. Objects keep their pairs in insertion order.
///
/// Numbers built with `From<f64>`/`From<f32>` follow the device's rules (§1.2): an integral
/// value becomes an integer, a double within 1e-5 of its `f32` becomes a float, anything
/// else stays a double. The explicit variants encode exactly as written, so decoded values
/// re-encode byte for byte.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    Null,
    /// The "empty" PSON value: never set. The default, like an empty `pson` on the device.
    #[default]
    Unset,
    Bool(bool),
    Int(i64),
    /// Only for integers above `i64::MAX`.
    UInt(u64),
    Float(f32),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
    Object(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    /// An empty object.
    pub const fn object() -> Self {
        Value::Object(Vec::new())
    }

    /// The device's number rule for a double (`pson::operator=(double)`).
    pub fn number(v: f64) -> Self {
        // Integral values within the integer range become integers (22.0 → `08 16`).
        // The casts stand in for `fract()`, which `core` lacks; NaN fails every comparison.
        if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v) && (v as i64) as f64 == v {
            return Value::Int(v as i64);
        }
        if (0.0..18_446_744_073_709_551_616.0).contains(&v) && (v as u64) as f64 == v {
            return Value::UInt(v as u64);
        }
        let diff = v - f64::from(v as f32);
        if (-1e-5..=1e-5).contains(&diff) {
            Value::Float(v as f32)
        } else {
            Value::Double(v)
        }
    }

    /// Builds an object from pairs, keeping their order.
    pub fn from_pairs<K: Into<String>, I: IntoIterator<Item = (K, Value)>>(pairs: I) -> Self {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// Whether this is the unset ("empty") value.
    pub fn is_unset(&self) -> bool {
        matches!(self, Value::Unset)
    }

    /// Truthiness as the device reads a bool: `true`, or a non-zero number.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            Value::Int(i) => Some(*i != 0),
            Value::UInt(u) => Some(*u != 0),
            Value::Float(f) => Some(*f != 0.0),
            Value::Double(d) => Some(*d != 0.0),
            _ => None,
        }
    }

    /// The number as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(f64::from(*f)),
            Value::Double(d) => Some(*d),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }

    /// The number as `i64`, truncating a fractional one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            Value::Float(_) | Value::Double(_) | Value::Bool(_) => self.as_f64().map(|f| f as i64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The object's pairs, if this is one.
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The first value under `key`, if this is an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value under `key`, inserting [`Value::Unset`] if missing. Turns a non-object
    /// (such as an unset value) into an empty object first, as the device's `pson["k"]` does.
    pub fn entry(&mut self, key: &str) -> &mut Value {
        if !matches!(self, Value::Object(_)) {
            *self = Value::object();
        }
        let Value::Object(pairs) = self else {
            unreachable!("just made an object")
        };
        let idx = match pairs.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                pairs.push((String::from(key), Value::Unset));
                pairs.len() - 1
            }
        };
        #[allow(clippy::indexing_slicing)] // idx was found or pushed just above
        &mut pairs[idx].1
    }

    /// Fills an unset value with `default` and returns it: reading an empty `pson` on the
    /// device does the same, which is how templates show an input's shape.
    pub fn or_insert(&mut self, default: impl Into<Value>) -> &mut Value {
        if self.is_unset() {
            *self = default.into();
        }
        self
    }

    /// Sets `key` to `v` (replacing the first match, else appending). Builder style.
    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Self {
        *self.entry(key) = v.into();
        self
    }

    /// Decodes `buf`, which must hold exactly one value, under the default [`Limits`].
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_with(buf, &Limits::DEFAULT)
    }

    /// Decodes `buf`, which must hold exactly one value.
    pub fn decode_with(buf: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        if buf.len() > limits.max_size {
            return Err(DecodeError::TooLarge { limit: limits.max_size });
        }
        let (v, rest) = decode_value(buf, 0, limits)?;
        match rest.len() {
            0 => Ok(v),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }

    /// Converts a borrowed value into an owned one.
    pub fn from_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Unset => Value::Unset,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::UInt(u) => Value::UInt(u),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Double(d) => Value::Double(d),
            ValueRef::Str(s) => Value::Str(s.into()),
            ValueRef::Bytes(b) => Value::Bytes(b.into()),
            ValueRef::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.into(), Value::from_ref(v))).collect()),
            ValueRef::Array(a) => Value::Array(a.iter().map(Value::from_ref).collect()),
        }
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Object(_) | Value::Array(_) => {
                let body = self.body_len();
                1 + varint::len_u64(body as u64) + body
            }
            Value::Str(s) => delimited_len(s.len()),
            Value::Bytes(b) => delimited_len(b.len()),
            other => other.scalar_ref().map_or(1, |r| r.encoded_len()),
        }
    }

    /// The body size of a container (0 for anything else).
    fn body_len(&self) -> usize {
        match self {
            Value::Object(pairs) => pairs
                .iter()
                .map(|(k, v)| varint::len_u64(k.len() as u64) + k.len() + v.encoded_len())
                .sum(),
            Value::Array(items) => items.iter().map(Value::encoded_len).sum(),
            _ => 0,
        }
    }

    /// The scalar as a [`ValueRef`] (None for strings, bytes and containers).
    fn scalar_ref(&self) -> Option<ValueRef<'_>> {
        Some(match *self {
            Value::Null => ValueRef::Null,
            Value::Unset => ValueRef::Unset,
            Value::Bool(b) => ValueRef::Bool(b),
            Value::Int(i) => ValueRef::Int(i),
            Value::UInt(u) => ValueRef::UInt(u),
            Value::Float(f) => ValueRef::Float(f),
            Value::Double(d) => ValueRef::Double(d),
            _ => return None,
        })
    }

    /// Appends the encoding to `out`.
    ///
    /// Container lengths are back-patched: one byte is reserved, and the body is shifted only
    /// when its length needs a longer varint (bodies of 128 bytes or more).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Object(pairs) => {
                let start = begin_container(out, tag::OBJECT);
                for (k, v) in pairs {
                    varint_vec(out, k.len() as u64);
                    out.extend_from_slice(k.as_bytes());
                    v.encode_into(out);
                }
                end_container(out, start);
            }
            Value::Array(items) => {
                let start = begin_container(out, tag::ARRAY);
                for v in items {
                    v.encode_into(out);
                }
                end_container(out, start);
            }
            // Writing to a Vec cannot fail.
            other => {
                let _ = other.encode_scalar(out);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Writes the encoding to any sink (a fixed slice, say). Computes container lengths first.
    pub fn encode<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<(), BufferFull> {
        match self {
            Value::Object(pairs) => {
                sink.put_u8(tag::OBJECT)?;
                varint::write_u64(sink, self.body_len() as u64)?;
                for (k, v) in pairs {
                    write_key(sink, k)?;
                    v.encode(sink)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                sink.put_u8(tag::ARRAY)?;
                varint::write_u64(sink, self.body_len() as u64)?;
                items.iter().try_for_each(|v| v.encode(sink))
            }
            other => other.encode_scalar(sink),
        }
    }

    fn encode_scalar<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<(), BufferFull> {
        match self {
            Value::Str(s) => write_str(sink, s),
            Value::Bytes(b) => write_bytes(sink, b),
            Value::Int(i) => write_int(sink, *i),
            Value::UInt(u) => write_uint(sink, *u),
            Value::Float(f) => write_float(sink, *f),
            Value::Double(d) => write_double(sink, *d),
            other => match other.scalar_ref() {
                Some(r) => r.encode(sink),
                None => Ok(()),
            },
        }
    }
}

#[inline]
fn varint_vec(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        let _ = varint::write_u64(out, v);
    }
}

/// Writes the tag and a one-byte length placeholder; returns the placeholder's index.
#[inline]
pub(crate) fn begin_container(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    out.push(0);
    out.len() - 1
}

/// Fills in the length reserved at `at`, shifting the body if the varint needs more bytes.
#[inline]
#[allow(clippy::indexing_slicing)] // `at` came from begin_container on this same vector
pub(crate) fn end_container(out: &mut Vec<u8>, at: usize) {
    let body_len = out.len() - at - 1;
    if body_len < 0x80 {
        out[at] = body_len as u8;
        return;
    }
    let mut buf = [0u8; varint::MAX_LEN_64];
    let n = varint::encode_u64(body_len as u64, &mut buf);
    // Make room for the extra n-1 bytes, then move the body right.
    out.resize(out.len() + n - 1, 0);
    out.copy_within(at + 1..at + 1 + body_len, at + n);
    out[at..at + n].copy_from_slice(&buf[..n]);
}

/// Decodes one owned value directly (no separate validation pass).
fn decode_value<'a>(buf: &'a [u8], depth: usize, limits: &Limits) -> Result<(Value, &'a [u8]), DecodeError> {
    let (head, rest) = read_head(buf)?;
    let v = match head {
        Head::Scalar(v) => Value::from_ref(v),
        Head::Object(mut body) => {
            check_depth(depth, limits)?;
            // Count first so the vector is allocated once: allocation dominates decoding.
            let mut pairs = Vec::with_capacity(count_children(body, true));
            while !body.is_empty() {
                let (k, after_key) = read_key(body).map_err(inner)?;
                let (v, after) = decode_value(after_key, depth + 1, limits).map_err(inner)?;
                pairs.push((String::from(k), v));
                body = after;
            }
            Value::Object(pairs)
        }
        Head::Array(mut body) => {
            check_depth(depth, limits)?;
            let mut items = Vec::with_capacity(count_children(body, false));
            while !body.is_empty() {
                let (v, after) = decode_value(body, depth + 1, limits).map_err(inner)?;
                items.push(v);
                body = after;
            }
            Value::Array(items)
        }
    };
    Ok((v, rest))
}

/// How many children a container body holds, skipping over each without decoding it.
/// Stops at the first malformed child; the decode that follows reports the error.
fn count_children(body: &[u8], is_object: bool) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < body.len() {
        if is_object {
            match super::delimited_at(body, i) {
                Ok((_, next)) => i = next,
                Err(_) => break,
            }
        }
        match super::skip_value(body, i, None) {
            Ok(next) => i = next,
            Err(_) => break,
        }
        n += 1;
    }
    n
}

fn check_depth(depth: usize, limits: &Limits) -> Result<(), DecodeError> {
    if depth >= limits.max_depth {
        Err(DecodeError::TooDeep {
            limit: limits.max_depth,
        })
    } else {
        Ok(())
    }
}

fn inner(e: DecodeError) -> DecodeError {
    super::inner_error(e)
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Value::UInt(v), Value::Int)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::number(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::number(f64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.into())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

impl<'a> From<ValueRef<'a>> for Value {
    fn from(v: ValueRef<'a>) -> Self {
        Value::from_ref(v)
    }
}
