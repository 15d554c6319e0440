//! The WAL under damage: truncated or corrupted at every position, replay never panics and
//! keeps every record before the damage.

use proptest::prelude::*;
use twinlake_edge::wal::{RecordKind, Wal, WalRecord, scan_segment};

/// Writes `records` through the real WAL and returns the segment's bytes and each record's
/// end offset.
fn segment(records: &[(i64, String, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 1 << 30, 0, |_, _| {}).unwrap();
    let mut ends = Vec::new();
    let mut pos = 8;
    for (t, dev, payload) in records {
        let rec = WalRecord {
            kind: RecordKind::Record,
            time_us: *t,
            table: "tbl",
            device: dev,
            owner: "acme",
            payload,
        };
        let mut enc = Vec::new();
        rec.encode(&mut enc);
        pos += enc.len();
        ends.push(pos);
        wal.append(&rec).unwrap();
    }
    wal.sync().unwrap();
    let path = dir.path().join(format!("{:020}.wal", wal.current_segment()));
    (std::fs::read(path).unwrap(), ends)
}

fn scan(bytes: &[u8]) -> Vec<(i64, String, Vec<u8>)> {
    let mut got = Vec::new();
    scan_segment(bytes, |r| {
        got.push((r.time_us, r.device.to_owned(), r.payload.to_vec()))
    });
    got
}

fn records() -> impl Strategy<Value = Vec<(i64, String, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<i64>(),
            "[a-z0-9-]{0,12}",
            prop::collection::vec(any::<u8>(), 0..40),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn truncation_at_every_position_keeps_every_whole_record(recs in records()) {
        let (bytes, ends) = segment(&recs);
        for cut in 0..=bytes.len() {
            let got = scan(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&got[..], &recs[..whole]);
        }
    }

    #[test]
    fn corruption_at_every_position_keeps_every_record_before_it(recs in records(), flip in 1u8..=255) {
        let (bytes, ends) = segment(&recs);
        for pos in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[pos] ^= flip;
            let got = scan(&damaged);
            // Records that end at or before the damaged byte are all there, in order.
            let before = ends.iter().filter(|&&e| e <= pos).count();
            prop_assert!(got.len() >= before, "lost a record before the damage at {}", pos);
            prop_assert_eq!(&got[..before], &recs[..before]);
            // Nothing is invented: what comes back is a prefix of what was written
            // (a flip inside a record is caught by its checksum).
            prop_assert!(got.len() <= recs.len());
            prop_assert_eq!(&got[..], &recs[..got.len()]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = scan(&bytes);
        for magic in [b"TLWAL\x01\r\n", b"TLWAL\x02\r\n"] {
            let mut with_magic = magic.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = scan(&with_magic);
        }
    }
}

/// Replay through `Wal::open` on a damaged file cuts the tail durably and keeps the rest.
#[test]
fn open_cuts_a_damaged_tail_and_keeps_the_records_before_it() {
    let recs: Vec<_> = (0..20)
        .map(|i| (i, format!("d{i}"), vec![0x08, i as u8 & 0x7f]))
        .collect();
    let (bytes, ends) = segment(&recs);
    let dir = tempfile::tempdir().unwrap();
    let mut damaged = bytes.clone();
    damaged[ends[9] + 3] ^= 0x40; // inside record 10
    std::fs::write(dir.path().join(format!("{:020}.wal", 1)), &damaged).unwrap();
    let mut got = Vec::new();
    let (_wal, replay) = Wal::open(dir.path(), 1 << 20, 0, |_, r| got.push(r.time_us)).unwrap();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(replay.truncated_bytes as usize, damaged.len() - ends[9]);
    assert_eq!(
        std::fs::metadata(dir.path().join(format!("{:020}.wal", 1)))
            .unwrap()
            .len() as usize,
        ends[9]
    );
}
