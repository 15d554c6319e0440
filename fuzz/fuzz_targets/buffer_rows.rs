//! Device payloads into the lake's Arrow buffer: several payloads an input
//! (`[len: u8][stream: u8 & 1][PSON]…`), so that payload templates are built and matched.
//! Each payload that decodes goes to one buffer through `append_payload` (the template path
//! where a payload's shape was seen) and to another flattened and appended field by field.
//! No panic; both store the same values, schemas, conflicts and byte counts, and seal to
//! the same batches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_edge::lake::buffer::{Buffer, Schemas};
use twinlake_edge::lake::model;
use twinlake_sdk::pson::ValueRef;

fuzz_target!(|data: &[u8]| {
    let (mut fast, mut slow) = (Buffer::new("gw", Schemas::new()), Buffer::new("gw", Schemas::new()));
    let (mut fast_c, mut slow_c) = (Vec::new(), Vec::new());
    let mut rest = data;
    let mut time = 0;
    while let [n, flags, tail @ ..] = rest {
        let n = (*n as usize).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        rest = tail;
        let Ok(v) = ValueRef::decode(payload) else { continue };
        let stream = flags & 1 == 1;
        let device = if flags & 2 == 0 { "d0" } else { "d1" };
        time += 1;
        let stored = fast.append_payload("t", time, (Some("u"), device), (v, stream), &mut fast_c);
        let mut fields = Vec::new();
        model::flatten(v, stream, &mut fields);
        slow.append("t", time, Some("u"), device, &fields, &mut slow_c);
        assert_eq!(stored, fields.len() as u64);
    }
    assert_eq!(fast_c, slow_c);
    assert_eq!(fast.schemas(), slow.schemas());
    assert_eq!(fast.bytes(), slow.bytes());
    assert_eq!(fast.take_dropped(), slow.take_dropped());
    let (a, b) = (fast.seal(), slow.seal());
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len());
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(a.hours, b.hours);
            }
        }
        (a, b) => assert_eq!(a.is_ok(), b.is_ok()),
    }
});
