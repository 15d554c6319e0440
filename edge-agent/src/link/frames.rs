//! Batches as frames: numbering, splitting to the frame limit, and the frames the cloud has
//! not acknowledged, kept for a resend.

use std::collections::VecDeque;

use tracing::warn;

use super::{Item, MAX_FRAME_BYTES, Up};

/// One batch as sent.
#[derive(Debug)]
struct Frame {
    seq: u64,
    text: String,
    /// Whether it holds [`Item::PsonRows`], which a cloud without the feature cannot read.
    pson: bool,
}

/// Batches sent and not yet acknowledged, oldest first.
#[derive(Debug, Default)]
pub(super) struct Unacked {
    frames: VecDeque<Frame>,
}

impl Unacked {
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Drops what the cloud acknowledged, through `seq`.
    pub fn acked(&mut self, through: u64) {
        while self.frames.front().is_some_and(|f| f.seq <= through) {
            self.frames.pop_front();
        }
    }

    /// Keeps a frame sent.
    pub fn push(&mut self, seq: u64, text: String, pson: bool) {
        self.frames.push_back(Frame { seq, text, pson });
    }

    /// The frames to send again on a new link, oldest first. A cloud that does not take
    /// [`Item::PsonRows`] (one older than this agent, or rolled back) gets their rows as
    /// [`Item::Rows`], under the same sequence numbers.
    pub fn resend(&mut self, pson: bool) -> impl Iterator<Item = &String> {
        if !pson {
            for f in self.frames.iter_mut().filter(|f| f.pson) {
                match downgrade(&f.text) {
                    Some(text) => f.text = text,
                    None => warn!(seq = f.seq, "cannot rewrite a batch for a cloud without pson rows"),
                }
                f.pson = false;
            }
        }
        self.frames.iter().map(|f| &f.text)
    }
}

/// A batch frame with its [`Item::PsonRows`] as [`Item::Rows`].
fn downgrade(text: &str) -> Option<String> {
    let Ok(Up::Batch { seq, items }) = serde_json::from_str::<Up>(text) else {
        return None;
    };
    let items = items.into_iter().map(Item::without_pson).collect();
    Some(encode(&Up::Batch { seq, items }))
}

/// Encodes `items` as batches numbered from `*next_seq`, halving any batch whose frame would
/// pass [`MAX_FRAME_BYTES`] (one item goes alone, whatever its size). Order is kept.
pub(super) fn encode_batches(items: Vec<Item>, next_seq: &mut u64, out: &mut Vec<(u64, String)>) {
    let up = Up::Batch { seq: *next_seq, items };
    let frame = encode(&up);
    let Up::Batch { mut items, .. } = up else { return };
    if frame.len() > MAX_FRAME_BYTES && items.len() > 1 {
        let rest = items.split_off(items.len() / 2);
        encode_batches(items, next_seq, out);
        encode_batches(rest, next_seq, out);
    } else {
        out.push((*next_seq, frame));
        *next_seq += 1;
    }
}

pub(super) fn encode(msg: &Up) -> String {
    // Our own enums of strings, numbers and JSON values always serialize.
    serde_json::to_string(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::rows::RowBlock;

    /// Items that would make a frame over the limit are split into several batches, numbered
    /// in turn, each under it, with the items in their order; a lone large item still goes.
    #[test]
    fn batches_over_the_frame_limit_are_split_in_order() {
        let big = "x".repeat(1 << 20);
        let items: Vec<Item> = (0..40u64)
            .map(|i| Item::Reported {
                user: "u".into(),
                device: "d".into(),
                path: format!("p{i}"),
                at: i,
                value: serde_json::Value::String(big.clone()),
            })
            .collect();
        let (mut seq, mut frames) = (5, Vec::new());
        encode_batches(items, &mut seq, &mut frames);
        assert!(frames.len() >= 3, "{} frames", frames.len());
        assert_eq!(seq, 5 + frames.len() as u64);
        let mut at = 0;
        for (i, (s, f)) in frames.iter().enumerate() {
            assert_eq!(*s, 5 + i as u64);
            assert!(f.len() <= MAX_FRAME_BYTES);
            let Ok(Up::Batch { seq, items }) = serde_json::from_str::<Up>(f) else {
                panic!("a batch")
            };
            assert_eq!(seq, *s);
            for item in items {
                let Item::Reported { at: a, .. } = item else {
                    panic!("reported")
                };
                assert_eq!(a, at);
                at += 1;
            }
        }
        assert_eq!(at, 40);
        let lone = vec![Item::Reported {
            user: "u".into(),
            device: "d".into(),
            path: "p".into(),
            at: 0,
            value: serde_json::Value::String("y".repeat(MAX_FRAME_BYTES + 1)),
        }];
        let mut frames = Vec::new();
        encode_batches(lone, &mut seq, &mut frames);
        assert_eq!(frames.len(), 1);
    }

    /// Frames sent with pson rows to a cloud that took them go to a cloud that does not (a
    /// rollback between two links) as JSON rows, same seq, same rows; other frames unchanged.
    #[test]
    fn unacked_pson_rows_are_resent_as_json_to_a_cloud_without_them() {
        let mut block = RowBlock::default();
        let payload = twinlake_sdk::json::from_json(&serde_json::json!({"t": 21.5, "ok": true})).to_bytes();
        block.push(7, "d1", &payload);
        block.push(8, "d2", &[0xff]);
        let rows = Item::PsonRows {
            table: "readings".into(),
            segment: 3,
            stream: false,
            owner: Some("u".into()),
            rows: block,
        };
        let mut unacked = Unacked::default();
        for (seq, items, pson) in [(1, vec![rows], true), (2, vec![], false), (3, vec![], false)] {
            unacked.push(seq, encode(&Up::Batch { seq, items }), pson);
        }
        unacked.acked(2);
        assert_eq!(unacked.len(), 1);
        let mut unacked = Unacked::default();
        let rows = serde_json::from_str::<Up>(&encode(&Up::Batch {
            seq: 1,
            items: vec![Item::Rows {
                table: "t".into(),
                segment: 1,
                stream: false,
                owner: None,
                rows: vec![],
            }],
        }))
        .unwrap();
        unacked.push(1, encode(&rows), false);
        let mut block = RowBlock::default();
        block.push(7, "d1", &payload);
        block.push(8, "d2", &[0xff]);
        let up = Up::Batch {
            seq: 2,
            items: vec![Item::PsonRows {
                table: "readings".into(),
                segment: 3,
                stream: true,
                owner: Some("u".into()),
                rows: block,
            }],
        };
        unacked.push(2, encode(&up), true);
        let same: Vec<String> = unacked.resend(true).cloned().collect();
        assert!(same[1].contains("pson_rows"), "kept for a cloud that takes them");
        let sent: Vec<Up> = unacked
            .resend(false)
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        assert_eq!(sent[0], rows);
        let Up::Batch { seq: 2, items } = &sent[1] else {
            panic!("batch 2")
        };
        let [
            Item::Rows {
                table,
                segment: 3,
                stream: true,
                owner: Some(owner),
                rows,
            },
        ] = items.as_slice()
        else {
            panic!("json rows: {items:?}")
        };
        assert_eq!((table.as_str(), owner.as_str()), ("readings", "u"));
        assert_eq!(rows.len(), 1, "a payload that is not PSON is dropped: {rows:?}");
        assert_eq!(rows[0], (7, "d1".into(), serde_json::json!({"t": 21.5, "ok": true})));
    }
}
