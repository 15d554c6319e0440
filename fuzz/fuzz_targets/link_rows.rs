//! What a gateway sends the cloud: arbitrary bytes as a fresh-row block (`link::rows`) and
//! as a link message. No panic; a block's good rows re-encode to the same bytes; their
//! payloads decode within the PSON limits or are dropped; a PsonRows item turns into JSON
//! rows (for an older cloud) without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_edge::link::rows::RowBlock;
use twinlake_edge::link::{Item, Up};
use twinlake_sdk::pson::ValueRef;

fn check(block: &RowBlock) {
    let mut again = RowBlock::default();
    let mut used = 0;
    for r in block.iter() {
        let Ok(r) = r else { break };
        assert!(again.push(r.time_us, r.device, r.payload));
        used += 14 + r.device.len() + r.payload.len();
        let _ = ValueRef::decode(r.payload);
    }
    assert_eq!(again.as_bytes(), &block.as_bytes()[..used]);
}

fuzz_target!(|data: &[u8]| {
    check(&RowBlock::from_bytes(data.to_vec()));
    if let Ok(Up::Batch { items, .. }) = serde_json::from_slice::<Up>(data) {
        for item in items {
            if let Item::PsonRows { rows, .. } = &item {
                check(rows);
            }
            let _ = item.without_pson();
        }
    }
});
