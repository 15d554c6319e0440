//! Walking a validated object's pairs and an array's elements, without copying.

use super::{ArrayRef, Head, ObjectRef, ValueRef, read_head, read_key};

impl<'a> ObjectRef<'a> {
    /// Pairs in wire order.
    pub fn iter(&self) -> ObjectIter<'a> {
        ObjectIter { body: self.body }
    }

    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<ValueRef<'a>> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether the object has no pairs.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The raw encoded body (pairs only, no tag or length).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

impl<'a> ArrayRef<'a> {
    /// Elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter { body: self.body }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// The raw encoded body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// A value inside an already validated container; `None` cannot happen after validation
/// but ends the iteration rather than panicking.
fn next_in_body<'a>(body: &mut &'a [u8]) -> Option<ValueRef<'a>> {
    let (head, rest) = read_head(body).ok()?;
    *body = rest;
    Some(match head {
        Head::Scalar(v) => v,
        Head::Object(b) => ValueRef::Object(ObjectRef { body: b }),
        Head::Array(b) => ValueRef::Array(ArrayRef { body: b }),
    })
}

/// Iterator over an object's pairs.
#[derive(Debug, Clone)]
pub struct ObjectIter<'a> {
    body: &'a [u8],
}

impl<'a> Iterator for ObjectIter<'a> {
    type Item = (&'a str, ValueRef<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.body.is_empty() {
            return None;
        }
        let Ok((k, rest)) = read_key(self.body) else {
            self.body = &[];
            return None;
        };
        self.body = rest;
        let v = next_in_body(&mut self.body);
        if v.is_none() {
            self.body = &[];
        }
        Some((k, v?))
    }
}

/// Iterator over an array's elements.
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    body: &'a [u8],
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.body.is_empty() {
            return None;
        }
        let v = next_in_body(&mut self.body);
        if v.is_none() {
            self.body = &[];
        }
        v
    }
}
