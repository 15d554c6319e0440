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

/// Rows per block at most: a block goes up as one batch item.
pub(super) const ROWS_PER_BLOCK: usize = 512;
/// A block's cost (below) past which the next row starts a new block, so a batch overshoots
/// its row budget by one block at most.
const BLOCK_COST: usize = 256 << 10;

/// What a row is charged against a batch's row budget: an estimate of its bytes in a JSON
/// batch (three times its WAL payload, and an envelope).
fn row_cost(device: &str, payload: &[u8]) -> usize {
    payload.len().saturating_mul(3).saturating_add(device.len() + 64)
}

/// Where a fresh row goes: its table, its WAL segment, whether it is a stream's, its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshGroup<'a> {
    pub table: &'a str,
    pub segment: u64,
    pub stream: bool,
    pub owner: &'a str,
}

/// Fresh rows of one [`FreshGroup`], encoded as they go up: the names once, each row's time,
/// device and payload appended to one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreshBlock {
    pub(super) table: String,
    pub(super) segment: u64,
    pub(super) stream: bool,
    pub(super) owner: String,
    pub(super) rows: usize,
    /// The sum of its rows' [`row_cost`].
    pub(super) cost: usize,
    pub(super) block: RowBlock,
}

impl FreshBlock {
    fn takes(&self, g: FreshGroup<'_>) -> bool {
        self.rows < ROWS_PER_BLOCK
            && self.cost < BLOCK_COST
            && self.segment == g.segment
            && self.stream == g.stream
            && self.table == g.table
            && self.owner == g.owner
    }

    /// Drops its first `n` rows (all of them if it holds fewer).
    pub(super) fn drop_front(&mut self, n: usize) {
        let (mut cost, mut dropped) = (0, 0);
        let mut rows = self.block.iter();
        for r in rows.by_ref().take(n).map_while(Result::ok) {
            cost += row_cost(r.device, r.payload);
            dropped += 1;
        }
        // Where the parser stopped: the bytes of the rows it read go.
        let used = self.block.bytes.len() - rows.rest.len();
        self.block.bytes.drain(..used);
        self.rows -= dropped.min(self.rows);
        self.cost -= cost.min(self.cost);
    }

    /// As a batch item, in the format the cloud takes.
    pub(super) fn into_item(self, pson: bool) -> super::Item {
        let item = super::Item::PsonRows {
            table: self.table,
            segment: self.segment,
            stream: self.stream,
            owner: (!self.owner.is_empty()).then_some(self.owner),
            rows: self.block,
        };
        if pson { item } else { item.without_pson() }
    }
}

/// Fresh rows in arrival order, in blocks: what an fsync makes durable, for the link. A row
/// costs a copy of its bytes into its block; no allocation or shared name of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreshRows {
    pub(super) blocks: Vec<FreshBlock>,
    rows: usize,
}

impl FreshRows {
    /// Appends a row of `group`: to the last block when it is the same group and has room.
    /// A device name over 65,535 bytes or a payload over 4 GiB, which no WAL record holds, is
    /// not appended.
    pub fn push(&mut self, group: FreshGroup<'_>, time_us: i64, device: &str, payload: &[u8]) {
        if row_lens(device, payload).is_none() {
            return;
        }
        if !self.blocks.last().is_some_and(|b| b.takes(group)) {
            self.blocks.push(FreshBlock {
                table: group.table.to_owned(),
                segment: group.segment,
                stream: group.stream,
                owner: group.owner.to_owned(),
                rows: 0,
                cost: 0,
                block: RowBlock::default(),
            });
        }
        if let Some(b) = self.blocks.last_mut()
            && b.block.push(time_us, device, payload)
        {
            b.rows += 1;
            b.cost += row_cost(device, payload);
            self.rows += 1;
        }
    }

    /// How many rows it holds.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Room for `blocks` blocks more.
    pub fn reserve(&mut self, blocks: usize) {
        self.blocks.reserve(blocks);
    }

    /// How many blocks it holds.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// A row's device and payload lengths as a block encodes them; `None` for a device name over
/// 65,535 bytes or a payload over 4 GiB, which no WAL record holds.
fn row_lens(device: &str, payload: &[u8]) -> Option<(u16, u32)> {
    Some((u16::try_from(device.len()).ok()?, u32::try_from(payload.len()).ok()?))
}

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
        let Some((dlen, plen)) = row_lens(device, payload) else {
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

    /// A row with its group: table, segment, stream, owner, time, device, payload.
    type Flat = (String, u64, bool, String, i64, String, Vec<u8>);

    /// The rows of `fresh` in order, each with its group.
    fn flatten(fresh: &FreshRows) -> Vec<Flat> {
        let mut out = Vec::new();
        for b in &fresh.blocks {
            let rows: Vec<_> = b.block.iter().map(Result::unwrap).collect();
            assert_eq!(rows.len(), b.rows, "a block counts its rows");
            let cost: usize = rows.iter().map(|r| row_cost(r.device, r.payload)).sum();
            assert_eq!(cost, b.cost, "and their cost");
            for r in rows {
                let g = (b.table.clone(), b.segment, b.stream, b.owner.clone());
                out.push((g.0, g.1, g.2, g.3, r.time_us, r.device.to_owned(), r.payload.to_vec()));
            }
        }
        out
    }

    #[test]
    fn a_block_holds_one_group_and_at_most_its_rows() {
        let mut fresh = FreshRows::default();
        let g = |table, segment| FreshGroup {
            table,
            segment,
            stream: false,
            owner: "u",
        };
        for i in 0..(ROWS_PER_BLOCK + 3) {
            fresh.push(g("a", 1), i as i64, "d", &[0x12]);
        }
        fresh.push(g("a", 2), 0, "d", &[0x12]);
        fresh.push(g("b", 2), 0, "d", &[0x12]);
        let sizes: Vec<usize> = fresh.blocks.iter().map(|b| b.rows).collect();
        assert_eq!(sizes, [ROWS_PER_BLOCK, 3, 1, 1]);
        assert_eq!(fresh.len(), ROWS_PER_BLOCK + 5);
        fresh.push(g("a", 2), 0, &"x".repeat(65_536), &[]);
        assert_eq!(
            fresh.len(),
            ROWS_PER_BLOCK + 5,
            "a device name past u16 is not appended"
        );
    }

    proptest! {
        #[test]
        fn fresh_rows_keep_their_order_and_groups(
            rows in prop::collection::vec(
                (0..3usize, 0..2u64, any::<bool>(), 0..2usize, any::<i64>(), "[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..40)),
                0..1200,
            ),
            drop in 0..1300usize,
        ) {
            let (tables, owners) = (["t0", "t1", "t2"], ["", "u"]);
            let mut fresh = FreshRows::default();
            let mut want = Vec::new();
            for (t, seg, stream, o, time, dev, payload) in &rows {
                let g = FreshGroup { table: tables[*t], segment: *seg, stream: *stream, owner: owners[*o] };
                fresh.push(g, *time, dev, payload);
                want.push((tables[*t].to_owned(), *seg, *stream, owners[*o].to_owned(), *time, dev.clone(), payload.clone()));
            }
            prop_assert_eq!(fresh.len(), want.len());
            prop_assert!(fresh.blocks.iter().all(|b| b.rows > 0 && b.rows <= ROWS_PER_BLOCK));
            prop_assert_eq!(flatten(&fresh), want.clone());
            // Dropping rows from the front of the first block leaves the others as they were.
            if let Some(first) = fresh.blocks.first_mut() {
                let n = drop.min(first.rows);
                first.drop_front(drop);
                let mut rest = want.split_off(n.min(want.len()));
                let got = flatten(&fresh);
                prop_assert_eq!(got, std::mem::take(&mut rest));
            }
        }

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
