//! A gateway's binary batch frame (`link::wire`), as the cloud reads it: arbitrary bytes,
//! and the same bytes behind the layout's magic so the fuzzer starts past it. No panic;
//! whatever is read encodes again into a frame that reads back the same; its blocks' rows
//! re-encode to their bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_edge::link::rows::RowBlock;
use twinlake_edge::link::wire::{BATCH_MAGIC, decode_batch, encode_batch};
use twinlake_edge::link::{Item, Up};

fn check(bytes: &[u8]) {
    let Ok(Up::Batch { seq, mut items }) = decode_batch(bytes) else { return };
    let before = items.clone();
    let again = encode_batch(seq, &mut items);
    assert_eq!(items, before, "encoding gives the items back whole");
    assert_eq!(decode_batch(&again).ok(), Some(Up::Batch { seq, items }));
    for item in &before {
        if let Item::PsonRows { rows, .. } = item {
            let mut copy = RowBlock::default();
            for r in rows.iter().map_while(Result::ok) {
                assert!(copy.push(r.time_us, r.device, r.payload));
            }
            assert!(rows.as_bytes().starts_with(copy.as_bytes()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = BATCH_MAGIC.to_vec();
    framed.extend_from_slice(data);
    check(&framed);
});
