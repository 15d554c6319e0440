//! PSON ("protoson"), the value encoding of the Thinger.io classic protocol.
//!
//! ## Format (device-protocol.md §1)
//! Every value starts with a varint tag `(type << 3) | wire`, then a payload that depends on
//! the type:
//!
//! | type | tag | payload |
//! |---|---|---|
//! | 0 null | `00` | — |
//! | 1 positive int | `08` | varint |
//! | 2 negative int | `10` | varint magnitude |
//! | 3 float | `1D` | 4 bytes LE binary32 |
//! | 4 double | `21` | 8 bytes LE binary64 |
//! | 5 true / 6 false | `28` / `30` | — |
//! | 7 zero / 8 one | `38` / `40` | — |
//! | 9 string | `4A` | varint length + UTF-8 |
//! | 10 empty string | `50` | — |
//! | 11 bytes | `5A` | varint length + bytes |
//! | 12 empty bytes | `60` | — |
//! | 13 object | `6A` | varint body length + pairs (bare key: varint length + bytes, then a value) |
//! | 14 array | `72` | varint body length + values |
//! | 15 unset | `78` | — |
//!
//! ## Invariants of this implementation
//! * Decoding is strict: a declared length must match its content exactly, the tag's wire
//!   type must fit its type, strings and keys are UTF-8, and nesting depth and input size are
//!   bounded by [`Limits`]. Every failure is a [`DecodeError`]; nothing panics.
//! * Encoding is canonical as the device writes it: 0 and 1 use their own types, empty
//!   strings and bytes use types 10 and 12, keys keep insertion order (duplicates allowed).
//! * Integers are [`ValueRef::Int`] unless above `i64::MAX`, then [`ValueRef::UInt`]. A
//!   negative magnitude above 2⁶³ cannot come from a device (it holds `int64`) and is
//!   rejected as [`DecodeError::IntegerRange`].

use crate::varint::{self, VarintError};
use crate::{BufferFull, Sink};

mod container;
#[cfg(feature = "alloc")]
mod value;
pub use container::{ArrayIter, ObjectIter};
#[cfg(feature = "alloc")]
pub use value::Value;
#[cfg(feature = "alloc")]
pub(crate) use value::end_container as end_container_at;

/// Wire-type tags, one per PSON type.
pub mod tag {
    pub const NULL: u8 = 0x00;
    pub const POS_INT: u8 = 0x08;
    pub const NEG_INT: u8 = 0x10;
    pub const FLOAT: u8 = 0x1D;
    pub const DOUBLE: u8 = 0x21;
    pub const TRUE: u8 = 0x28;
    pub const FALSE: u8 = 0x30;
    pub const ZERO: u8 = 0x38;
    pub const ONE: u8 = 0x40;
    pub const STRING: u8 = 0x4A;
    pub const EMPTY_STRING: u8 = 0x50;
    pub const BYTES: u8 = 0x5A;
    pub const EMPTY_BYTES: u8 = 0x60;
    pub const OBJECT: u8 = 0x6A;
    pub const ARRAY: u8 = 0x72;
    pub const UNSET: u8 = 0x78;
}

/// Bounds applied while decoding untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest container nesting accepted; a scalar at the top is depth 0.
    pub max_depth: usize,
    /// Largest encoded value accepted, in bytes.
    pub max_size: usize,
}

impl Limits {
    /// 32 levels and 1 MiB: far beyond any device payload, small enough to be harmless.
    pub const DEFAULT: Limits = Limits {
        max_depth: 32,
        max_size: 1 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why PSON bytes were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a value.
    Truncated,
    /// A varint was longer than allowed or overflowed its integer.
    VarintOverflow,
    /// The tag names no PSON type, or its wire type does not fit the type.
    UnknownType { tag: u64 },
    /// A container's content did not end exactly at its declared length.
    LengthMismatch,
    /// A string or key is not UTF-8.
    InvalidUtf8,
    /// A negative integer below `i64::MIN`.
    IntegerRange,
    /// Containers nested deeper than [`Limits::max_depth`].
    TooDeep { limit: usize },
    /// The input is larger than [`Limits::max_size`].
    TooLarge { limit: usize },
    /// Bytes were left after the value where the whole input should have been one value.
    TrailingBytes { count: usize },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("PSON truncated"),
            Self::VarintOverflow => f.write_str("PSON varint overflow"),
            Self::UnknownType { tag } => write!(f, "PSON tag 0x{tag:02X} is not a known type"),
            Self::LengthMismatch => f.write_str("PSON container length does not match content"),
            Self::InvalidUtf8 => f.write_str("PSON string is not UTF-8"),
            Self::IntegerRange => f.write_str("PSON negative integer below i64::MIN"),
            Self::TooDeep { limit } => write!(f, "PSON nested deeper than {limit}"),
            Self::TooLarge { limit } => write!(f, "PSON value larger than {limit} bytes"),
            Self::TrailingBytes { count } => write!(f, "{count} bytes after the PSON value"),
        }
    }
}

impl core::error::Error for DecodeError {}

impl From<VarintError> for DecodeError {
    fn from(e: VarintError) -> Self {
        match e {
            VarintError::Truncated => Self::Truncated,
            VarintError::Overflow => Self::VarintOverflow,
        }
    }
}

/// A decoded PSON value that borrows strings, bytes and container bodies from the input.
///
/// Containers are validated when decoded, so iterating them cannot fail (but for
/// [`ValueRef::decode_trusted`], which leaves that to an earlier decode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    /// The "empty" PSON value (type 15): a value that was never set.
    Unset,
    Bool(bool),
    Int(i64),
    /// Only for integers above `i64::MAX`.
    UInt(u64),
    Float(f32),
    Double(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Object(ObjectRef<'a>),
    Array(ArrayRef<'a>),
}

/// A validated object body: key/value pairs in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    body: &'a [u8],
}

/// A validated array body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrayRef<'a> {
    body: &'a [u8],
}

/// One value's header: a scalar, or a container with its (not yet validated) body.
pub(crate) enum Head<'a> {
    Scalar(ValueRef<'a>),
    Object(&'a [u8]),
    Array(&'a [u8]),
}

fn take(buf: &[u8], n: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    if n <= buf.len() {
        Ok(buf.split_at(n))
    } else {
        Err(DecodeError::Truncated)
    }
}

fn take_array<const N: usize>(buf: &[u8]) -> Result<([u8; N], &[u8]), DecodeError> {
    let (head, rest) = take(buf, N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

/// A varint length followed by that many bytes.
fn length_delimited(buf: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let (len, n) = varint::decode_u32(buf)?;
    let rest = buf.get(n..).unwrap_or_default();
    take(rest, len as usize)
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    core::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

/// Reads one value's header from the start of `buf`; returns it and the rest of the input.
#[inline]
pub(crate) fn read_head(buf: &[u8]) -> Result<(Head<'_>, &[u8]), DecodeError> {
    let (t, n) = varint::decode_u64(buf)?;
    let rest = buf.get(n..).unwrap_or_default();
    let scalar = |v| Ok((Head::Scalar(v), rest));
    match t {
        0x00 => scalar(ValueRef::Null),
        0x08 => {
            let (v, n) = varint::decode_u64(rest)?;
            let rest = rest.get(n..).unwrap_or_default();
            let v = i64::try_from(v).map_or(ValueRef::UInt(v), ValueRef::Int);
            Ok((Head::Scalar(v), rest))
        }
        0x10 => {
            let (m, n) = varint::decode_u64(rest)?;
            let rest = rest.get(n..).unwrap_or_default();
            let v = 0i64.checked_sub_unsigned(m).ok_or(DecodeError::IntegerRange)?;
            Ok((Head::Scalar(ValueRef::Int(v)), rest))
        }
        0x1D => {
            let (b, rest) = take_array::<4>(rest)?;
            Ok((Head::Scalar(ValueRef::Float(f32::from_le_bytes(b))), rest))
        }
        0x21 => {
            let (b, rest) = take_array::<8>(rest)?;
            Ok((Head::Scalar(ValueRef::Double(f64::from_le_bytes(b))), rest))
        }
        0x28 => scalar(ValueRef::Bool(true)),
        0x30 => scalar(ValueRef::Bool(false)),
        0x38 => scalar(ValueRef::Int(0)),
        0x40 => scalar(ValueRef::Int(1)),
        0x4A => {
            let (s, rest) = length_delimited(rest)?;
            Ok((Head::Scalar(ValueRef::Str(utf8(s)?)), rest))
        }
        0x50 => scalar(ValueRef::Str("")),
        0x5A => {
            let (b, rest) = length_delimited(rest)?;
            Ok((Head::Scalar(ValueRef::Bytes(b)), rest))
        }
        0x60 => scalar(ValueRef::Bytes(&[])),
        0x6A => {
            let (body, rest) = length_delimited(rest)?;
            Ok((Head::Object(body), rest))
        }
        0x72 => {
            let (body, rest) = length_delimited(rest)?;
            Ok((Head::Array(body), rest))
        }
        0x78 => scalar(ValueRef::Unset),
        tag => Err(DecodeError::UnknownType { tag }),
    }
}

/// Reads one object key (a bare varint length and UTF-8 bytes).
#[inline]
pub(crate) fn read_key(buf: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let (k, rest) = length_delimited(buf)?;
    Ok((utf8(k)?, rest))
}

/// Validates a container body and everything inside it.
///
/// This is the hot path of decoding, so it works on indices and tag bytes rather than
/// building values. Every PSON type has a one-byte tag; an over-long tag varint is read as
/// the device reads it (see [`skip_value`]).
fn validate_body(body: &[u8], is_object: bool, depth: usize, limits: &Limits) -> Result<(), DecodeError> {
    if depth > limits.max_depth {
        return Err(DecodeError::TooDeep {
            limit: limits.max_depth,
        });
    }
    let mut i = 0;
    while i < body.len() {
        if is_object {
            let (key, next) = delimited_at(body, i)?;
            check_utf8(key)?;
            i = next;
        }
        i = skip_value(body, i, Some((depth, limits)))?;
    }
    Ok(())
}

/// The bytes of a varint-length-delimited item at `i`, and the index after it. Running out
/// of bytes here means a container's declared length was wrong.
#[inline]
pub(crate) fn delimited_at(body: &[u8], i: usize) -> Result<(&[u8], usize), DecodeError> {
    let rest = body.get(i..).unwrap_or_default();
    let (len, n) = match rest.first() {
        Some(&b) if b < 0x80 => (usize::from(b), 1),
        _ => {
            let (len, n) = varint::decode_u32(rest).map_err(|e| inner_error(e.into()))?;
            (len as usize, n)
        }
    };
    let start = i + n;
    let end = start.checked_add(len).ok_or(DecodeError::LengthMismatch)?;
    body.get(start..end)
        .map(|b| (b, end))
        .ok_or(DecodeError::LengthMismatch)
}

#[inline]
fn check_utf8(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.is_ascii() || core::str::from_utf8(bytes).is_ok() {
        Ok(())
    } else {
        Err(DecodeError::InvalidUtf8)
    }
}

/// Skips the value at `i` in a container body, returning the index after it. With
/// `validate`, strings are checked and nested containers are validated at `depth + 1`;
/// without, the body is already known to be valid and containers are skipped whole.
#[inline]
pub(crate) fn skip_value(body: &[u8], i: usize, validate: Option<(usize, &Limits)>) -> Result<usize, DecodeError> {
    let (tag, i) = match body.get(i) {
        Some(&t) if t < 0x80 => (t, i + 1),
        Some(_) => {
            // A tag in a longer varint than needed (`80 00` is null): the device reads tags
            // as varints and accepts it, and so does `read_head`, so accept it here too.
            let rest = body.get(i..).unwrap_or_default();
            let (t, n) = varint::decode_u64(rest).map_err(|e| inner_error(e.into()))?;
            (u8::try_from(t).map_err(|_| DecodeError::UnknownType { tag: t })?, i + n)
        }
        None => return Err(DecodeError::LengthMismatch),
    };
    let fixed = |n: usize| {
        let end = i + n;
        if end <= body.len() {
            Ok(end)
        } else {
            Err(DecodeError::LengthMismatch)
        }
    };
    match tag {
        tag::NULL
        | tag::TRUE
        | tag::FALSE
        | tag::ZERO
        | tag::ONE
        | tag::EMPTY_STRING
        | tag::EMPTY_BYTES
        | tag::UNSET => Ok(i),
        tag::POS_INT | tag::NEG_INT => {
            let rest = body.get(i..).unwrap_or_default();
            let (m, n) = varint::decode_u64(rest).map_err(|e| inner_error(e.into()))?;
            if tag == tag::NEG_INT && m > 1 << 63 {
                return Err(DecodeError::IntegerRange);
            }
            Ok(i + n)
        }
        tag::FLOAT => fixed(4),
        tag::DOUBLE => fixed(8),
        tag::STRING => {
            let (s, next) = delimited_at(body, i)?;
            if validate.is_some() {
                check_utf8(s)?;
            }
            Ok(next)
        }
        tag::BYTES => Ok(delimited_at(body, i)?.1),
        tag::OBJECT | tag::ARRAY => {
            let (inner, next) = delimited_at(body, i)?;
            if let Some((depth, limits)) = validate {
                validate_body(inner, tag == tag::OBJECT, depth + 1, limits)?;
            }
            Ok(next)
        }
        t => Err(DecodeError::UnknownType { tag: u64::from(t) }),
    }
}

/// Inside a container, running out of bytes means the declared length was wrong.
fn inner_error(e: DecodeError) -> DecodeError {
    match e {
        DecodeError::Truncated => DecodeError::LengthMismatch,
        e => e,
    }
}

impl<'a> ValueRef<'a> {
    /// Decodes one value from the start of `buf`; returns it and the bytes it used.
    pub fn decode_prefix(buf: &'a [u8], limits: &Limits) -> Result<(Self, usize), DecodeError> {
        let (head, rest) = read_head(buf)?;
        let used = buf.len() - rest.len();
        if used > limits.max_size {
            return Err(DecodeError::TooLarge { limit: limits.max_size });
        }
        let v = match head {
            Head::Scalar(v) => v,
            Head::Object(body) => {
                validate_body(body, true, 1, limits)?;
                ValueRef::Object(ObjectRef { body })
            }
            Head::Array(body) => {
                validate_body(body, false, 1, limits)?;
                ValueRef::Array(ArrayRef { body })
            }
        };
        Ok((v, used))
    }

    /// Decodes `buf`, which must hold exactly one value, under the default [`Limits`].
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(buf, &Limits::DEFAULT)
    }

    /// Decodes `buf`, which must hold exactly one value.
    pub fn decode_with(buf: &'a [u8], limits: &Limits) -> Result<Self, DecodeError> {
        let (v, used) = Self::decode_prefix(buf, limits)?;
        match buf.len() - used {
            0 => Ok(v),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }

    /// Reads `buf` as exactly one value without walking a container's body: for bytes
    /// this process already decoded under the limits that apply (such as those a decoded
    /// value encoded), so a hot path checks them once. On any other bytes nothing panics
    /// (a malformed container's pairs or elements end early), but nothing bounds their
    /// nesting either: code that recurses into the value must be given checked bytes only.
    pub fn decode_trusted(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let (head, rest) = read_head(buf)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        Ok(match head {
            Head::Scalar(v) => v,
            Head::Object(body) => ValueRef::Object(ObjectRef { body }),
            Head::Array(body) => ValueRef::Array(ArrayRef { body }),
        })
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            ValueRef::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            ValueRef::Int(i) => Some(i as f64),
            ValueRef::UInt(u) => Some(u as f64),
            ValueRef::Float(f) => Some(f64::from(f)),
            ValueRef::Double(d) => Some(d),
            _ => None,
        }
    }

    /// The object, if this is one.
    pub fn as_object(&self) -> Option<ObjectRef<'a>> {
        match *self {
            ValueRef::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<ArrayRef<'a>> {
        match *self {
            ValueRef::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Looks `key` up if this is an object (the first match, as the device does).
    pub fn get(&self, key: &str) -> Option<ValueRef<'a>> {
        self.as_object()?.get(key)
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match *self {
            ValueRef::Null | ValueRef::Unset | ValueRef::Bool(_) | ValueRef::Int(0 | 1) => 1,
            ValueRef::Int(i) => 1 + varint::len_u64(i.unsigned_abs()),
            ValueRef::UInt(u) => 1 + varint::len_u64(u),
            ValueRef::Float(_) => 5,
            ValueRef::Double(_) => 9,
            ValueRef::Str(s) => delimited_len(s.len()),
            ValueRef::Bytes(b) => delimited_len(b.len()),
            ValueRef::Object(ObjectRef { body }) | ValueRef::Array(ArrayRef { body }) => {
                1 + varint::len_u64(body.len() as u64) + body.len()
            }
        }
    }

    /// Writes this value to `sink` (byte-identical to its input for containers).
    pub fn encode<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<(), BufferFull> {
        match *self {
            ValueRef::Null => sink.put_u8(tag::NULL),
            ValueRef::Unset => sink.put_u8(tag::UNSET),
            ValueRef::Bool(b) => sink.put_u8(if b { tag::TRUE } else { tag::FALSE }),
            ValueRef::Int(i) => write_int(sink, i),
            ValueRef::UInt(u) => write_uint(sink, u),
            ValueRef::Float(f) => write_float(sink, f),
            ValueRef::Double(d) => write_double(sink, d),
            ValueRef::Str(s) => write_str(sink, s),
            ValueRef::Bytes(b) => write_bytes(sink, b),
            ValueRef::Object(ObjectRef { body }) => write_container(sink, tag::OBJECT, body),
            ValueRef::Array(ArrayRef { body }) => write_container(sink, tag::ARRAY, body),
        }
    }
}

/// Size of an empty-able string or bytes value of `len` bytes.
pub(crate) const fn delimited_len(len: usize) -> usize {
    if len == 0 {
        1
    } else {
        1 + varint::len_u64(len as u64) + len
    }
}

#[inline]
pub(crate) fn write_uint<S: Sink + ?Sized>(sink: &mut S, u: u64) -> Result<(), BufferFull> {
    match u {
        0 => sink.put_u8(tag::ZERO),
        1 => sink.put_u8(tag::ONE),
        u => {
            sink.put_u8(tag::POS_INT)?;
            varint::write_u64(sink, u)
        }
    }
}

#[inline]
pub(crate) fn write_int<S: Sink + ?Sized>(sink: &mut S, i: i64) -> Result<(), BufferFull> {
    if i >= 0 {
        write_uint(sink, i.unsigned_abs())
    } else {
        sink.put_u8(tag::NEG_INT)?;
        varint::write_u64(sink, i.unsigned_abs())
    }
}

#[inline]
pub(crate) fn write_float<S: Sink + ?Sized>(sink: &mut S, f: f32) -> Result<(), BufferFull> {
    let b = f.to_le_bytes();
    sink.put(&[tag::FLOAT, b[0], b[1], b[2], b[3]])
}

#[inline]
pub(crate) fn write_double<S: Sink + ?Sized>(sink: &mut S, d: f64) -> Result<(), BufferFull> {
    sink.put_u8(tag::DOUBLE)?;
    sink.put(&d.to_le_bytes())
}

#[inline]
pub(crate) fn write_str<S: Sink + ?Sized>(sink: &mut S, s: &str) -> Result<(), BufferFull> {
    if s.is_empty() {
        return sink.put_u8(tag::EMPTY_STRING);
    }
    sink.put_u8(tag::STRING)?;
    write_key(sink, s)
}

#[inline]
pub(crate) fn write_bytes<S: Sink + ?Sized>(sink: &mut S, b: &[u8]) -> Result<(), BufferFull> {
    if b.is_empty() {
        return sink.put_u8(tag::EMPTY_BYTES);
    }
    sink.put_u8(tag::BYTES)?;
    varint::write_u64(sink, b.len() as u64)?;
    sink.put(b)
}

/// An object key: varint length and bytes, no tag.
#[inline]
pub(crate) fn write_key<S: Sink + ?Sized>(sink: &mut S, k: &str) -> Result<(), BufferFull> {
    varint::write_u64(sink, k.len() as u64)?;
    sink.put(k.as_bytes())
}

fn write_container<S: Sink + ?Sized>(sink: &mut S, tag: u8, body: &[u8]) -> Result<(), BufferFull> {
    sink.put_u8(tag)?;
    varint::write_u64(sink, body.len() as u64)?;
    sink.put(body)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::hex;
}
