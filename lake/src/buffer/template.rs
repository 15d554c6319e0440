//! Payload templates: a table remembers the byte layout of payloads it has stored, so a row
//! shaped like an earlier one (the same keys in the same order, values of the same types and
//! encoded sizes) goes from its bytes straight into its columns, without being flattened.
//!
//! A template is one payload's object body with its value bytes marked as slots. A body
//! matches when it has the same length and the same bytes outside the slots. It then parses
//! exactly as the template did, since keys, tags, lengths and nesting all lie outside the
//! slots, so the flattening rules give the same columns in the same order; only the values
//! differ. A template is built from a row the general path has just stored, with the columns
//! its fields went to, so its columns are the flattening's own.

use std::borrow::Cow;

use twinlake_sdk::varint;

use super::column::Column;
use crate::model::{FieldType, FieldValue, widen};

/// The longest body kept as a template.
const MAX_BYTES: usize = 4096;
/// The most values a template reads.
const MAX_SLOTS: usize = 256;
/// The deepest nesting a template follows.
const MAX_DEPTH: usize = 16;

/// How a slot's value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 8 bytes after the tag.
    Double,
    /// 4 bytes after the tag.
    Float,
    /// The tag byte itself: `0x28` true, `0x30` false.
    Bool,
    /// The tag byte itself: `0x38` is 0, `0x40` is 1.
    Bit,
    /// A varint of exactly `len` bytes after the tag (`0x08` positive, `0x10` negative).
    Int {
        negative: bool,
        len: u8,
    },
    /// `len` bytes after the tag and their length.
    Str {
        len: u32,
    },
    Bytes {
        len: u32,
    },
}

impl Kind {
    fn width(self) -> usize {
        match self {
            Kind::Double => 8,
            Kind::Float => 4,
            Kind::Bool | Kind::Bit => 1,
            Kind::Int { len, .. } => usize::from(len),
            Kind::Str { len } | Kind::Bytes { len } => len as usize,
        }
    }

    /// The column type its values have.
    fn field_type(self) -> FieldType {
        match self {
            Kind::Double | Kind::Float => FieldType::Float,
            Kind::Bool => FieldType::Bool,
            Kind::Bit | Kind::Int { .. } => FieldType::Int,
            Kind::Str { .. } => FieldType::Str,
            Kind::Bytes { .. } => FieldType::Bytes,
        }
    }

    /// Whether a column of type `ty` takes its values as they are (ints go into float
    /// columns too, as the general path casts them).
    fn fits(self, ty: FieldType) -> bool {
        let mine = self.field_type();
        mine == ty || (mine == FieldType::Int && ty == FieldType::Float)
    }
}

#[derive(Debug)]
struct Slot {
    at: usize,
    kind: Kind,
    column: usize,
    /// The last f32 read here and its widened value (widening formats the number).
    widened: Option<(u32, f64)>,
}

/// One payload shape of a table.
#[derive(Debug)]
pub(super) struct Template {
    stream: bool,
    bytes: Box<[u8]>,
    /// The byte ranges outside the slots, which a body must share.
    fixed: Vec<(usize, usize)>,
    slots: Vec<Slot>,
}

impl Template {
    /// The template of `body` (a stream's payload if `stream`) whose flattened fields went
    /// to the columns `landed` names, in order (`None`: a field not stored); `None` if a
    /// field was not stored, the body holds an array, is too big, or its values do not line
    /// up with those fields.
    pub(super) fn build(body: &[u8], stream: bool, landed: &[Option<usize>], columns: &[Column]) -> Option<Self> {
        if body.len() > MAX_BYTES || landed.len() > MAX_SLOTS || landed.contains(&None) {
            return None;
        }
        let mut found = Vec::with_capacity(landed.len());
        walk(body, 0, 0, &mut found)?;
        if found.len() != landed.len() {
            return None;
        }
        let mut slots = Vec::with_capacity(found.len());
        for (&(at, kind), &column) in found.iter().zip(landed) {
            let column = column?;
            if columns.get(column)?.ty != kind.field_type() || slots.iter().any(|s: &Slot| s.column == column) {
                return None;
            }
            slots.push(Slot {
                at,
                kind,
                column,
                widened: None,
            });
        }
        let mut fixed = Vec::with_capacity(slots.len() + 1);
        let mut from = 0;
        for s in &slots {
            if s.at > from {
                fixed.push((from, s.at));
            }
            from = s.at + s.kind.width();
        }
        if body.len() > from {
            fixed.push((from, body.len()));
        }
        Some(Self {
            stream,
            bytes: body.into(),
            fixed,
            slots,
        })
    }

    /// The number of values a matching row stores.
    pub(super) fn values(&self) -> usize {
        self.slots.len()
    }

    /// Whether `body` has this shape and every value reads into its column.
    pub(super) fn matches(&mut self, body: &[u8], stream: bool, columns: &[Column]) -> bool {
        self.stream == stream
            && body.len() == self.bytes.len()
            && self.fixed.iter().all(|&(a, b)| body.get(a..b) == self.bytes.get(a..b))
            && self
                .slots
                .iter_mut()
                .all(|s| columns.get(s.column).is_some_and(|c| s.kind.fits(c.ty)) && s.value(body).is_some())
    }

    /// Appends `body`'s values to their columns (after [`Template::matches`] said yes);
    /// returns the bytes they took.
    pub(super) fn append(&mut self, body: &[u8], columns: &mut [Column]) -> usize {
        let mut bytes = 0;
        for s in &mut self.slots {
            let Some(col) = columns.get_mut(s.column) else { continue };
            bytes += match s.value(body).and_then(|v| col.builder.append(&v)) {
                Some(n) => n,
                None => {
                    // Cannot happen after `matches`; a null keeps the row's columns aligned.
                    col.builder.append_nulls(1);
                    8
                }
            };
        }
        bytes
    }
}

impl Slot {
    /// The slot's value, if its bytes hold one of its kind. A float is widened as the
    /// general path widens it, once per distinct value.
    fn value<'a>(&mut self, body: &'a [u8]) -> Option<FieldValue<'a>> {
        let b = body.get(self.at..self.at + self.kind.width())?;
        Some(match self.kind {
            Kind::Double => FieldValue::Float(f64::from_le_bytes(b.try_into().ok()?)),
            Kind::Float => {
                let bits = u32::from_le_bytes(b.try_into().ok()?);
                let f = match self.widened {
                    Some((last, f)) if last == bits => f,
                    _ => widen(f32::from_bits(bits)),
                };
                self.widened = Some((bits, f));
                FieldValue::Float(f)
            }
            Kind::Bool => match b.first()? {
                0x28 => FieldValue::Bool(true),
                0x30 => FieldValue::Bool(false),
                _ => return None,
            },
            Kind::Bit => match b.first()? {
                0x38 => FieldValue::Int(0),
                0x40 => FieldValue::Int(1),
                _ => return None,
            },
            Kind::Int { negative, len } => {
                let (m, n) = varint::decode_u64(b).ok()?;
                if n != usize::from(len) {
                    return None;
                }
                FieldValue::Int(if negative {
                    0i64.checked_sub_unsigned(m)?
                } else {
                    // Above i64::MAX the general path stores a float: not this template.
                    i64::try_from(m).ok()?
                })
            }
            Kind::Str { .. } => FieldValue::Str(Cow::Borrowed(std::str::from_utf8(b).ok()?)),
            Kind::Bytes { .. } => FieldValue::Bytes(b),
        })
    }
}

/// Finds the value slots of an object body at `base` in the payload, in the order the
/// flattening visits them (nulls and unset values are no field, and stay fixed bytes).
fn walk(body: &[u8], base: usize, depth: usize, out: &mut Vec<(usize, Kind)>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut i = 0;
    while i < body.len() {
        let (key, n) = varint::decode_u32(body.get(i..)?).ok()?;
        i = i.checked_add(n)?.checked_add(key as usize)?;
        let tag = *body.get(i)?;
        i += 1;
        let mut slot = |at: usize, kind: Kind| {
            out.push((base + at, kind));
            (out.len() <= MAX_SLOTS).then_some(())
        };
        match tag {
            0x00 | 0x78 => {}
            0x21 => {
                slot(i, Kind::Double)?;
                i += 8;
            }
            0x1D => {
                slot(i, Kind::Float)?;
                i += 4;
            }
            0x28 | 0x30 => slot(i - 1, Kind::Bool)?,
            0x38 | 0x40 => slot(i - 1, Kind::Bit)?,
            0x08 | 0x10 => {
                let (_, n) = varint::decode_u64(body.get(i..)?).ok()?;
                let len = u8::try_from(n).ok()?;
                slot(
                    i,
                    Kind::Int {
                        negative: tag == 0x10,
                        len,
                    },
                )?;
                i += n;
            }
            0x4A | 0x5A => {
                let (len, n) = varint::decode_u32(body.get(i..)?).ok()?;
                i += n;
                slot(
                    i,
                    if tag == 0x4A {
                        Kind::Str { len }
                    } else {
                        Kind::Bytes { len }
                    },
                )?;
                i = i.checked_add(len as usize)?;
            }
            0x50 => slot(i, Kind::Str { len: 0 })?,
            0x60 => slot(i, Kind::Bytes { len: 0 })?,
            0x6A => {
                let (len, n) = varint::decode_u32(body.get(i..)?).ok()?;
                i += n;
                let end = i.checked_add(len as usize)?;
                walk(body.get(i..end)?, base + i, depth + 1, out)?;
                i = end;
            }
            // Arrays (kept whole as JSON text) and over-long tags: no template.
            _ => return None,
        }
    }
    (i == body.len()).then_some(())
}
