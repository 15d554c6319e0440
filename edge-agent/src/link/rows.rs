//! Fresh rows as one binary block: their payloads go up as the WAL holds them (PSON), so the
//! agent converts nothing and the cloud decodes each payload once, in place.
//!
//! ```text
//! block := row*
//! row   := time_us i64 LE · device length u16 LE · device UTF-8 · payload length u32 LE · payload
//! ```
//!
//! In a JSON batch the block is a base64 string ([`super::Item::PsonRows`]). Sent only to a
//! cloud whose welcome lists [`super::FEATURE_PSON_ROWS`]; the payloads are not checked here
//! (the cloud decodes them with its limits and drops a row whose payload is not PSON).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Fresh rows, encoded back to back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowBlock {
    bytes: Vec<u8>,
}

/// One row of a [`RowBlock`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRow<'a> {
    pub time_us: i64,
    pub device: &'a str,
    /// The PSON payload, unchecked.
    pub payload: &'a [u8],
}

impl RowBlock {
    /// A block of these bytes, as a batch carried them.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// Its encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Appends one row; false (and nothing appended) for a device name over 65,535 bytes or
    /// a payload over 4 GiB, which no WAL record holds.
    pub fn push(&mut self, time_us: i64, device: &str, payload: &[u8]) -> bool {
        let (Ok(dlen), Ok(plen)) = (u16::try_from(device.len()), u32::try_from(payload.len())) else {
            return false;
        };
        self.bytes.reserve(14 + device.len() + payload.len());
        self.bytes.extend_from_slice(&time_us.to_le_bytes());
        self.bytes.extend_from_slice(&dlen.to_le_bytes());
        self.bytes.extend_from_slice(device.as_bytes());
        self.bytes.extend_from_slice(&plen.to_le_bytes());
        self.bytes.extend_from_slice(payload);
        true
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Its rows in order; a malformed row ends the iteration with one error.
    pub fn iter(&self) -> Rows<'_> {
        Rows { rest: &self.bytes }
    }
}

/// The rows of a [`RowBlock`].
#[derive(Debug)]
pub struct Rows<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Rows<'a> {
    type Item = Result<BlockRow<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let row = parse_row(self.rest);
        match row {
            Ok((row, rest)) => {
                self.rest = rest;
                Some(Ok(row))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_row(buf: &[u8]) -> Result<(BlockRow<'_>, &[u8]), Error> {
    let bad = |what: &str| Error::Link(format!("a bad row block: {what}"));
    let (time, rest) = buf.split_first_chunk::<8>().ok_or_else(|| bad("cut short in a time"))?;
    let (dlen, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| bad("cut short in a device length"))?;
    let (device, rest) = rest
        .split_at_checked(usize::from(u16::from_le_bytes(*dlen)))
        .ok_or_else(|| bad("cut short in a device"))?;
    let device = std::str::from_utf8(device).map_err(|_| bad("a device name that is not UTF-8"))?;
    let (plen, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("cut short in a payload length"))?;
    let plen = usize::try_from(u32::from_le_bytes(*plen)).map_err(|_| bad("a payload too long"))?;
    let (payload, rest) = rest
        .split_at_checked(plen)
        .ok_or_else(|| bad("cut short in a payload"))?;
    let row = BlockRow {
        time_us: i64::from_le_bytes(*time),
        device,
        payload,
    };
    Ok((row, rest))
}

impl super::Item {
    /// This item with [`super::Item::PsonRows`] as [`super::Item::Rows`], for a cloud that does
    /// not take them; a payload that is not PSON is dropped (the agent wrote it, so never).
    pub fn without_pson(self) -> Self {
        let super::Item::PsonRows {
            table,
            segment,
            stream,
            owner,
            rows,
        } = self
        else {
            return self;
        };
        let rows = rows
            .iter()
            .map_while(Result::ok)
            .filter_map(|r| {
                let v = twinlake_sdk::pson::ValueRef::decode(r.payload).ok()?;
                Some((r.time_us, r.device.to_owned(), twinlake_sdk::json::ref_to_json(v)))
            })
            .collect();
        super::Item::Rows {
            table,
            segment,
            stream,
            owner,
            rows,
        }
    }
}

impl Serialize for RowBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.bytes))
    }
}

impl<'de> Deserialize<'de> for RowBlock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Self::from_bytes)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_block_has_a_stable_encoding() {
        let mut b = RowBlock::default();
        assert!(b.push(1, "d", &[0x12]));
        assert_eq!(b.as_bytes(), [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, b'd', 1, 0, 0, 0, 0x12]);
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"AQAAAAAAAAABAGQBAAAAEg==\"");
        let long = "x".repeat(65_536);
        assert!(!b.push(2, &long, &[]), "a device name past u16 is refused");
        assert_eq!(b.iter().count(), 1, "and nothing of it appended");
    }

    #[test]
    fn a_bad_block_ends_in_one_error() {
        let mut b = RowBlock::default();
        b.push(7, "dev", b"ok");
        let mut bytes = b.as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 9]);
        let block = RowBlock::from_bytes(bytes);
        let rows: Vec<_> = block.iter().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].is_ok() && rows[1].is_err());
        assert!(serde_json::from_str::<RowBlock>("\"not base64!\"").is_err());
    }

    proptest! {
        #[test]
        fn rows_come_back_as_they_went_in(rows in prop::collection::vec((any::<i64>(), ".{0,40}", prop::collection::vec(any::<u8>(), 0..64)), 0..20)) {
            let mut b = RowBlock::default();
            for (t, d, p) in &rows {
                prop_assert!(b.push(*t, d, p));
            }
            let json = serde_json::to_string(&b).unwrap();
            let back: RowBlock = serde_json::from_str(&json).unwrap();
            let got: Vec<_> = back.iter().map(|r| r.map(|r| (r.time_us, r.device.to_owned(), r.payload.to_vec()))).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got, rows);
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let b = RowBlock::from_bytes(bytes.clone());
            let mut used = 0;
            for r in b.iter() {
                match r {
                    Ok(r) => used += 14 + r.device.len() + r.payload.len(),
                    Err(_) => break,
                }
            }
            prop_assert!(used <= bytes.len());
        }
    }
}
