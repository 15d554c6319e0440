//! The frame decoder on arbitrary bytes, fed whole and in two pieces: no panic, the same
//! frames either way, and every decoded message re-encodes to bytes that decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinlake_sdk::frame::{Frame, FrameDecoder, FrameLimits};

fn frames(chunks: &[&[u8]]) -> (Vec<Frame>, bool) {
    let mut dec = FrameDecoder::new(FrameLimits {
        max_body: 4096,
        max_depth: 16,
    });
    let mut out = Vec::new();
    for c in chunks {
        dec.push(c);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let (whole, err_whole) = frames(&[data]);
    let (pieces, err_pieces) = frames(&[&data[..split], &data[split..]]);
    assert_eq!(err_whole, err_pieces);
    assert_eq!(whole.len(), pieces.len());
    for f in &whole {
        let bytes = f.to_bytes();
        let (again, err) = frames(&[&bytes]);
        assert!(!err, "re-encoded frame decodes");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to_bytes(), bytes);
    }
});
