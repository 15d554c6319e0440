//! What goes over the link: JSON text frames, and batches as binary frames to a cloud whose
//! welcome lists [`super::FEATURE_BINARY_BATCHES`].
//!
//! A binary batch carries its fresh-row blocks ([`super::Item::PsonRows`]) as raw bytes
//! after a JSON header, where a text batch carries them as base64 strings inside the JSON.
//! That saves the base64 coding at both ends, the JSON escaping scan over it, and a third of
//! the bytes on the wire.
//!
//! ```text
//! frame  := "TLB" 0x01 · header length u32 LE · header · block count u32 LE · block*
//! header := the batch as JSON (`{"type":"batch",...}`), every pson_rows' "rows" as ""
//! block  := length u32 LE · the bytes of the next pson_rows item's block, in item order
//! ```
//!
//! The block count must equal the header's pson_rows items, and nothing may follow the
//! last block. The fourth magic byte is the format's version: a new layout takes a new
//! byte and a new feature name, so a cloud never guesses at one it does not know.

use super::rows::RowBlock;
use super::{Item, Up};
use crate::Error;

/// One message of the link, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMsg {
    /// A JSON message ([`Up`] or [`super::Down`]).
    Text(String),
    /// A batch in the binary layout above (edge → cloud only); shared, so the copy kept
    /// for a resend costs no copy of the bytes.
    Binary(bytes::Bytes),
}

impl LinkMsg {
    /// Its size on the wire, before the WebSocket's own framing.
    pub fn len(&self) -> usize {
        match self {
            LinkMsg::Text(t) => t.len(),
            LinkMsg::Binary(b) => b.len(),
        }
    }

    /// Whether it is empty (never, for a message this crate encodes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The edge → cloud message it holds; an error says what is wrong with it.
    pub fn to_up(&self) -> Result<Up, Error> {
        match self {
            LinkMsg::Text(t) => serde_json::from_str(t).map_err(|e| Error::Link(format!("a bad message: {e}"))),
            LinkMsg::Binary(b) => decode_batch(b),
        }
    }
}

impl From<String> for LinkMsg {
    fn from(text: String) -> Self {
        LinkMsg::Text(text)
    }
}

/// The first four bytes of a binary batch: "TLB" and the layout's version.
pub const BATCH_MAGIC: [u8; 4] = *b"TLB\x01";

/// `Up::Batch { seq, items }`, borrowed, for encoding: the same JSON as the enum's.
#[derive(serde::Serialize)]
pub(super) struct BatchRef<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub seq: u64,
    pub items: &'a [Item],
}

impl<'a> BatchRef<'a> {
    pub fn new(seq: u64, items: &'a [Item]) -> Self {
        Self {
            kind: "batch",
            seq,
            items,
        }
    }
}

/// `Up::Batch { seq, items }` as a binary frame. The blocks are moved out of `items` while
/// the header is written and put back after, so the items are as they were.
pub fn encode_batch(seq: u64, items: &mut [Item]) -> Vec<u8> {
    let blocks: Vec<RowBlock> = items.iter_mut().filter_map(take_block).collect();
    // Our own enums of strings, numbers and JSON values always serialize.
    let header = serde_json::to_vec(&BatchRef::new(seq, items)).unwrap_or_default();
    let body: usize = blocks.iter().map(|b| 4 + b.as_bytes().len()).sum();
    let mut out = Vec::with_capacity(12 + header.len() + body);
    out.extend_from_slice(&BATCH_MAGIC);
    push_len(&mut out, header.len());
    out.extend_from_slice(&header);
    push_len(&mut out, blocks.len());
    for b in &blocks {
        push_len(&mut out, b.as_bytes().len());
        out.extend_from_slice(b.as_bytes());
    }
    let mut blocks = blocks.into_iter();
    for item in items {
        if let Item::PsonRows { rows, .. } = item {
            *rows = blocks.next().unwrap_or_default();
        }
    }
    out
}

/// A frame is at most the cloud's 64 MiB, so every length fits a u32.
fn push_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn take_block(item: &mut Item) -> Option<RowBlock> {
    match item {
        Item::PsonRows { rows, .. } => Some(std::mem::take(rows)),
        _ => None,
    }
}

/// Reads a binary batch. Every length is checked against what is left, so a frame cut
/// short, padded, or with blocks and items that do not match is refused whole.
pub fn decode_batch(bytes: &[u8]) -> Result<Up, Error> {
    let bad = |what: &str| Error::Link(format!("a bad binary batch: {what}"));
    let rest = bytes.strip_prefix(&BATCH_MAGIC).ok_or_else(|| {
        if bytes.starts_with(b"TLB") {
            bad("a layout version this cloud does not know")
        } else {
            bad("no TLB magic")
        }
    })?;
    let (header, mut rest) = split_len(rest).ok_or_else(|| bad("cut short in the header"))?;
    let up: Up = serde_json::from_slice(header).map_err(|e| bad(&format!("the header: {e}")))?;
    let Up::Batch { seq, mut items } = up else {
        return Err(bad("the header is not a batch"));
    };
    let (count, after) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("cut short in the block count"))?;
    rest = after;
    let slots = items.iter().filter(|i| matches!(i, Item::PsonRows { .. })).count();
    if usize::try_from(u32::from_le_bytes(*count)).ok() != Some(slots) {
        return Err(bad("the block count does not match the pson_rows items"));
    }
    for item in &mut items {
        let Item::PsonRows { rows, .. } = item else { continue };
        if !rows.is_empty() {
            return Err(bad("a pson_rows item with rows in the header"));
        }
        let (block, after) = split_len(rest).ok_or_else(|| bad("cut short in a block"))?;
        *rows = RowBlock::from_bytes(block.to_vec());
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad("bytes after the last block"));
    }
    Ok(Up::Batch { seq, items })
}

/// A u32 LE length and that many bytes, and what follows; `None` if cut short.
fn split_len(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    rest.split_at_checked(usize::try_from(u32::from_le_bytes(*len)).ok()?)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rows_item(table: &str, rows: &[(i64, &str, &[u8])]) -> Item {
        let mut block = RowBlock::default();
        for (t, d, p) in rows {
            block.push(*t, d, p);
        }
        Item::PsonRows {
            table: table.into(),
            segment: 4,
            stream: false,
            owner: Some("u".into()),
            rows: block,
        }
    }

    fn sample() -> Vec<Item> {
        vec![
            rows_item("a", &[(1, "d1", &[0x12]), (2, "d2", b"xyz")]),
            Item::Presence {
                user: "u".into(),
                device: "d1".into(),
                online: true,
                at: 9,
                ip: None,
                rx_bytes: 0,
                tx_bytes: 0,
                reason: None,
                protocol: None,
            },
            rows_item("b", &[]),
            rows_item("c", &[(3, "d3", &[0x40])]),
        ]
    }

    /// The layout, byte for byte, for one small batch: a second implementation (or a
    /// change here) must produce exactly this.
    #[test]
    fn a_binary_batch_has_a_stable_layout() {
        let mut items = vec![rows_item("t", &[(1, "d", &[0x12])])];
        let bytes = encode_batch(7, &mut items);
        assert_eq!(
            items,
            vec![rows_item("t", &[(1, "d", &[0x12])])],
            "the items come back whole"
        );
        let header = br#"{"type":"batch","seq":7,"items":[{"kind":"pson_rows","table":"t","segment":4,"stream":false,"owner":"u","rows":""}]}"#;
        let mut want = b"TLB\x01".to_vec();
        want.extend_from_slice(&(header.len() as u32).to_le_bytes());
        want.extend_from_slice(header);
        want.extend_from_slice(&[1, 0, 0, 0, 16, 0, 0, 0]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, b'd', 1, 0, 0, 0, 0x12]);
        assert_eq!(bytes, want);
        assert_eq!(
            decode_batch(&bytes).unwrap(),
            Up::Batch {
                seq: 7,
                items: vec![rows_item("t", &[(1, "d", &[0x12])])]
            }
        );
    }

    /// What the cloud refuses, each with its reason; none of it panics.
    #[test]
    fn bad_binary_batches_are_refused_with_a_reason() {
        let good = encode_batch(1, &mut sample());
        let reason = |b: &[u8]| match decode_batch(b) {
            Err(Error::Link(m)) => m,
            other => panic!("refused, not {other:?}"),
        };
        assert!(reason(b"TLB\x02....").contains("version"));
        assert!(reason(b"{\"type\":\"batch\"}").contains("magic"));
        assert!(reason(&good[..good.len() - 1]).contains("cut short"));
        let mut padded = good.clone();
        padded.push(0);
        assert!(reason(&padded).contains("after the last block"));
        // One block fewer than the header's pson_rows items.
        let header_len = u32::from_le_bytes(good[4..8].try_into().unwrap()) as usize;
        let mut short = good.clone();
        short[8 + header_len] = 2;
        assert!(reason(&short).contains("block count"));
        let hello = serde_json::to_vec(&Up::Hello {
            gateway: "g".into(),
            session: "s".into(),
            protocol: 1,
        })
        .unwrap();
        let mut frame = BATCH_MAGIC.to_vec();
        frame.extend_from_slice(&(hello.len() as u32).to_le_bytes());
        frame.extend_from_slice(&hello);
        frame.extend_from_slice(&[0; 4]);
        assert!(reason(&frame).contains("not a batch"));
        let mut dup = encode_batch(1, &mut []);
        let text = serde_json::to_vec(&Up::Batch {
            seq: 1,
            items: vec![rows_item("t", &[(1, "d", &[1])])],
        })
        .unwrap();
        dup.truncate(4);
        dup.extend_from_slice(&(text.len() as u32).to_le_bytes());
        dup.extend_from_slice(&text);
        dup.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(reason(&dup).contains("rows in the header"));
    }

    /// A binary batch and its text form carry the same batch.
    #[test]
    fn text_and_binary_batches_read_the_same() {
        let mut items = sample();
        let bytes = encode_batch(3, &mut items);
        let text = serde_json::to_string(&Up::Batch { seq: 3, items }).unwrap();
        assert_eq!(text, serde_json::to_string(&BatchRef::new(3, &sample())).unwrap());
        let binary = LinkMsg::Binary(bytes.into()).to_up().unwrap();
        assert_eq!(binary, LinkMsg::Text(text.clone()).to_up().unwrap());
        assert!(LinkMsg::Binary(bytes::Bytes::new()).to_up().is_err());
        // A hundred rows of 60-byte payloads: a fifth smaller than base64 in JSON (8,332
        // bytes against 11,052).
        let payload = [0x5a_u8; 60];
        let rows: Vec<(i64, &str, &[u8])> = (0..100).map(|t| (t, "device-1", &payload[..])).collect();
        let mut items = vec![rows_item("t", &rows)];
        let bytes = encode_batch(3, &mut items);
        let text = serde_json::to_string(&BatchRef::new(3, &items)).unwrap();
        assert!(
            bytes.len() * 5 < text.len() * 4,
            "{} binary bytes, {} text",
            bytes.len(),
            text.len()
        );
    }

    fn arb_rows() -> impl Strategy<Value = Vec<(i64, String, Vec<u8>)>> {
        prop::collection::vec(
            (any::<i64>(), ".{0,12}", prop::collection::vec(any::<u8>(), 0..24)),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn batches_come_back_as_they_went_in(seq in any::<u64>(), blocks in prop::collection::vec(arb_rows(), 0..5)) {
            let items: Vec<Item> = blocks
                .iter()
                .map(|rows| {
                    let rows: Vec<(i64, &str, &[u8])> = rows.iter().map(|(t, d, p)| (*t, d.as_str(), p.as_slice())).collect();
                    rows_item("t", &rows)
                })
                .collect();
            let mut back = items.clone();
            let bytes = encode_batch(seq, &mut back);
            prop_assert_eq!(&back, &items);
            prop_assert_eq!(decode_batch(&bytes).unwrap(), Up::Batch { seq, items });
        }

        #[test]
        fn any_bytes_after_the_magic_decode_without_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = BATCH_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_batch(&bytes);
        }

        #[test]
        fn a_cut_or_flipped_batch_is_refused_or_read_whole(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let mut bytes = encode_batch(1, &mut sample());
            if flip < bytes.len() {
                bytes[flip] ^= 1 << bit;
            }
            bytes.truncate(cut.max(1).min(bytes.len()));
            if let Ok(Up::Batch { seq, items }) = decode_batch(&bytes) {
                let mut items = items;
                let again = encode_batch(seq, &mut items);
                prop_assert_eq!(decode_batch(&again).unwrap(), Up::Batch { seq, items });
            }
        }
    }
}
