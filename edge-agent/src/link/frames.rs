//! Batches as frames: numbering, splitting to the frame limit, and the frames the cloud has
//! not acknowledged, kept for a resend.

use std::collections::VecDeque;

use tracing::warn;

use super::wire::{BatchRef, LinkMsg, encode_batch};
use super::{FEATURE_BINARY_BATCHES, FEATURE_PSON_ROWS, Item, MAX_FRAME_BYTES, Up};

/// What the cloud's welcome said it takes beyond JSON rows in text frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Takes {
    /// Fresh rows as [`Item::PsonRows`].
    pub pson: bool,
    /// Batches as binary frames (only with `pson`: they exist to carry its blocks raw).
    pub binary: bool,
}

impl Takes {
    pub fn from_features(features: &[String]) -> Self {
        let has = |f: &str| features.iter().any(|g| g == f);
        let pson = has(FEATURE_PSON_ROWS);
        Self {
            pson,
            binary: pson && has(FEATURE_BINARY_BATCHES),
        }
    }
}

/// One batch as sent.
#[derive(Debug)]
struct Frame {
    seq: u64,
    msg: LinkMsg,
    /// Whether it holds [`Item::PsonRows`], which a cloud without the feature cannot read.
    pson: bool,
}

impl Frame {
    /// Whether a cloud that takes `takes` reads it as it is.
    fn fits(&self, takes: Takes) -> bool {
        match self.msg {
            LinkMsg::Binary(_) => takes.binary,
            LinkMsg::Text(_) => takes.pson || !self.pson,
        }
    }
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
    pub fn push(&mut self, seq: u64, msg: LinkMsg, pson: bool) {
        self.frames.push_back(Frame { seq, msg, pson });
    }

    /// The frames to send again on a new link, oldest first. A cloud that does not take
    /// what a frame was sent as (one older than this agent, or rolled back) gets it in a
    /// form it reads, under the same sequence number: a binary batch as text, and
    /// [`Item::PsonRows`] as [`Item::Rows`].
    pub fn resend(&mut self, takes: Takes) -> impl Iterator<Item = &LinkMsg> {
        for f in self.frames.iter_mut().filter(|f| !f.fits(takes)) {
            match rewrite(&f.msg, takes) {
                Some(msg) => f.msg = msg,
                None => warn!(seq = f.seq, "cannot rewrite a batch for an older cloud"),
            }
            f.pson &= takes.pson;
        }
        self.frames.iter().map(|f| &f.msg)
    }
}

/// A batch frame in a form a cloud that takes `takes` reads.
fn rewrite(msg: &LinkMsg, takes: Takes) -> Option<LinkMsg> {
    let Ok(Up::Batch { seq, items }) = msg.to_up() else {
        return None;
    };
    let mut items: Vec<Item> = match takes.pson {
        true => items,
        false => items.into_iter().map(Item::without_pson).collect(),
    };
    Some(encode_msg(seq, &mut items, takes.binary))
}

/// One batch as a message: binary, or JSON text.
fn encode_msg(seq: u64, items: &mut [Item], binary: bool) -> LinkMsg {
    match binary {
        true => LinkMsg::Binary(encode_batch(seq, items).into()),
        false => LinkMsg::Text(serde_json::to_string(&BatchRef::new(seq, items)).unwrap_or_default()),
    }
}

/// Encodes `items` as batches numbered from `*next_seq`, halving any batch whose frame would
/// pass [`MAX_FRAME_BYTES`] (one item goes alone, whatever its size). Order is kept.
pub(super) fn encode_batches(mut items: Vec<Item>, next_seq: &mut u64, binary: bool, out: &mut Vec<(u64, LinkMsg)>) {
    let msg = encode_msg(*next_seq, &mut items, binary);
    if msg.len() > MAX_FRAME_BYTES && items.len() > 1 {
        let rest = items.split_off(items.len() / 2);
        encode_batches(items, next_seq, binary, out);
        encode_batches(rest, next_seq, binary, out);
    } else {
        out.push((*next_seq, msg));
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
        encode_batches(items, &mut seq, false, &mut frames);
        assert!(frames.len() >= 3, "{} frames", frames.len());
        assert_eq!(seq, 5 + frames.len() as u64);
        let mut at = 0;
        for (i, (s, f)) in frames.iter().enumerate() {
            assert_eq!(*s, 5 + i as u64);
            assert!(f.len() <= MAX_FRAME_BYTES);
            let Ok(Up::Batch { seq, items }) = f.to_up() else {
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
        encode_batches(lone, &mut seq, true, &mut frames);
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
            unacked.push(seq, encode(&Up::Batch { seq, items }).into(), pson);
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
        unacked.push(1, encode(&rows).into(), false);
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
        unacked.push(2, encode(&up).into(), true);
        let pson = Takes {
            pson: true,
            binary: false,
        };
        let same: Vec<LinkMsg> = unacked.resend(pson).cloned().collect();
        assert!(
            matches!(&same[1], LinkMsg::Text(t) if t.contains("pson_rows")),
            "kept for a cloud that takes them"
        );
        let sent: Vec<Up> = unacked.resend(Takes::default()).map(|m| m.to_up().unwrap()).collect();
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

    /// A batch sent binary to a cloud that took it goes to one that does not (a rollback
    /// between two links) as a text batch with the same seq and items, and to one without
    /// pson rows as JSON rows; text frames are left as they were.
    #[test]
    fn unacked_binary_batches_are_resent_as_text_to_a_cloud_without_them() {
        let mut block = RowBlock::default();
        let payload = twinlake_sdk::json::from_json(&serde_json::json!({"t": 1.5})).to_bytes();
        block.push(7, "d1", &payload);
        let items = vec![Item::PsonRows {
            table: "readings".into(),
            segment: 3,
            stream: false,
            owner: Some("u".into()),
            rows: block,
        }];
        let all = Takes::from_features(&[FEATURE_PSON_ROWS.into(), FEATURE_BINARY_BATCHES.into()]);
        assert_eq!(
            all,
            Takes {
                pson: true,
                binary: true
            }
        );
        assert!(
            !Takes::from_features(&[FEATURE_BINARY_BATCHES.into()]).binary,
            "binary only with pson rows"
        );
        let (mut seq, mut frames) = (1, Vec::new());
        encode_batches(items.clone(), &mut seq, true, &mut frames);
        let mut unacked = Unacked::default();
        unacked.push(0, LinkMsg::Text("{}".into()), false);
        for (seq, msg) in frames {
            assert!(matches!(msg, LinkMsg::Binary(_)));
            unacked.push(seq, msg, true);
        }
        assert!(
            matches!(unacked.resend(all).nth(1), Some(LinkMsg::Binary(_))),
            "kept for a cloud that takes it"
        );
        let text_only = Takes {
            pson: true,
            binary: false,
        };
        let sent: Vec<LinkMsg> = unacked.resend(text_only).cloned().collect();
        assert_eq!(sent[0], LinkMsg::Text("{}".into()));
        let LinkMsg::Text(t) = &sent[1] else {
            panic!("text: {:?}", sent[1])
        };
        assert_eq!(serde_json::from_str::<Up>(t).unwrap(), Up::Batch { seq: 1, items });
        let oldest: Vec<Up> = unacked
            .resend(Takes::default())
            .skip(1)
            .map(|m| m.to_up().unwrap())
            .collect();
        let [Up::Batch { seq: 1, items }] = oldest.as_slice() else {
            panic!("{oldest:?}")
        };
        assert!(
            matches!(items.as_slice(), [Item::Rows { rows, .. }] if rows.len() == 1),
            "{items:?}"
        );
    }
}
