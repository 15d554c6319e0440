//! Rollups (#17): a rollup table equals the same aggregates computed over the raw rows,
//! whatever the data, the interval, how the rows came in files, late rows, and the day tier
//! (a property test); retention of a source partition waits for its rollups, and a span
//! that lost rows to retention keeps its rollup.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::util::display::array_value_to_string;
use proptest::prelude::*;
use twinlake_query::compact::CompactionConfig;
use twinlake_query::retention::{self, RetentionConfig};
use twinlake_query::rollup::{self, Aggregate, RollupDef};

use crate::support::{Fixture, MIN, Row, T0};

const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const DEVICES: [&str; 3] = ["d1", "d2", "d3"];

fn def(every_s: u64) -> RollupDef {
    RollupDef {
        table: "t".into(),
        every: Duration::from_secs(every_s),
        name: Some("t_roll".into()),
        fields: BTreeMap::new(),
    }
}

/// Every rollup row as text: device|bucket (s)|end (s)|rows|min|max|sum|count|last.
async fn rolled(f: &Fixture) -> Vec<String> {
    let sql = "SELECT device, to_unixtime(time) AS t, to_unixtime(\"end\") AS e, rows, \
               v_min, v_max, v_sum, v_count, v_last FROM t_roll ORDER BY device, time";
    let batches = f.engine.collect(sql).await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

/// The same aggregates, computed here over the raw rows.
fn expected(rows: &[Row], every_s: i64) -> Vec<String> {
    let every = every_s * 1_000_000;
    // (device, bucket) → (rows, min, max, sum, count, (time, last))
    type Acc = (u64, f64, f64, f64, u64, (i64, f64));
    let mut acc: BTreeMap<(&str, i64), Acc> = BTreeMap::new();
    for (t, d, fields) in rows {
        let v = fields[0].1;
        let bucket = t - t.rem_euclid(every);
        let e = acc
            .entry((d, bucket))
            .or_insert((0, f64::INFINITY, f64::NEG_INFINITY, 0.0, 0, (i64::MIN, 0.0)));
        e.0 += 1;
        e.1 = e.1.min(v);
        e.2 = e.2.max(v);
        e.3 += v;
        e.4 += 1;
        if *t > e.5.0 {
            e.5 = (*t, v);
        }
    }
    acc.into_iter()
        .map(|((d, b), (n, lo, hi, sum, count, (_, last)))| {
            let s = |us: i64| us / 1_000_000;
            format!(
                "{d}|{}|{}|{n}|{lo:?}|{hi:?}|{sum:?}|{count}|{last:?}",
                s(b),
                s(b + every)
            )
        })
        .collect()
}

/// Random readings over the first `hours` hours of the day of T0 and the next day's first
/// hour: whole numbers (sums are exact), at most one per device and millisecond.
fn readings() -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::btree_map((0usize..3, 0i64..(25 * 3600 * 1000)), -500i32..500, 1..120).prop_map(|m| {
        m.into_iter()
            .map(|((d, ms), v)| (T0 + ms * 1000, DEVICES[d], vec![("v", f64::from(v))]))
            .collect()
    })
}

fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn a_rollup_equals_the_aggregates_of_the_raw_rows(
        rows in readings(),
        every_s in prop::sample::select(vec![60u64, 300, 900, 3600, 7200, 86_400]),
        files in 1usize..4,
        late in 0usize..3,
        day_tier in any::<bool>(),
    ) {
        run(async {
            let f = Fixture::empty();
            let d = def(every_s);
            // Some rows arrive after the first roll (late); the rest in `files` seals.
            let split = rows.len() * (3 - late) / 3;
            let (first, later) = rows.split_at(split.max(1).min(rows.len()));
            for (i, chunk) in first.chunks(first.len().div_ceil(files)).enumerate() {
                f.commit("t", "gw", i as u64 + 1, chunk).await;
            }
            let now = T0 + 3 * DAY;
            rollup::pass(&f.lake, std::slice::from_ref(&d), Duration::ZERO, now).await;
            if !later.is_empty() {
                f.commit("t", "gw-late", 1, later).await;
            }
            if day_tier {
                let cfg = CompactionConfig { day_after: Some(Duration::ZERO), ..Default::default() };
                for (table, day) in twinlake_query::days::due(&f.lake, &cfg, now) {
                    twinlake_query::days::compact_day(&f.lake, &table, day, &cfg).await.unwrap();
                }
            }
            rollup::pass(&f.lake, std::slice::from_ref(&d), Duration::ZERO, now).await;
            assert!(rollup::due(&f.lake, &d, now).is_empty(), "a second pass has nothing to do");
            assert_eq!(rolled(&f).await, expected(&rows, every_s as i64));
        });
    }
}

#[tokio::test]
async fn retention_waits_for_rollups_and_a_trimmed_span_keeps_its_rollup() {
    let f = Fixture::empty();
    let rows: Vec<Row> = (0..6)
        .map(|i| (T0 + i * 20 * MIN, "d1", vec![("v", i as f64)]))
        .collect();
    f.commit("t", "gw", 1, &rows).await;
    let d = RollupDef {
        fields: BTreeMap::from([("v".to_owned(), vec![Aggregate::Max, Aggregate::Avg])]),
        ..def(3600)
    };
    rollup::check_all(std::slice::from_ref(&d)).unwrap();
    let keep = RetentionConfig {
        tables: BTreeMap::from([("t".to_owned(), Duration::from_secs(3600).into())]),
        ..Default::default()
    };
    let now = T0 + 4 * HOUR;
    // Hours 00 and 01 are past retention, but no rollup covers them yet.
    assert!(retention::due(&f.lake, &keep, std::slice::from_ref(&d), now).is_empty());
    assert_eq!(rollup::due(&f.lake, &d, now), vec![T0, T0 + HOUR]);
    assert_eq!(
        rollup::pass(&f.lake, std::slice::from_ref(&d), Duration::ZERO, now).await,
        2
    );
    let gone = retention::pass(&f.lake, &keep, std::slice::from_ref(&d), Duration::ZERO, now);
    assert_eq!(gone.len(), 2);
    assert!(f.lake.files("t").is_empty(), "the source's hours are gone");
    // The rollup keeps both hours, with only the aggregates asked for, and is not redone.
    let kept = f
        .query("SELECT CAST(time AS VARCHAR) AS h, rows, v_max, v_sum, v_count FROM t_roll ORDER BY time")
        .await;
    assert!(
        kept.contains("| 2024-01-01T00:00:00Z | 3    | 2.0   | 3.0   | 3       |"),
        "{kept}"
    );
    assert!(
        kept.contains("| 2024-01-01T01:00:00Z | 3    | 5.0   | 12.0  | 3       |"),
        "{kept}"
    );
    assert!(!kept.contains("v_min"), "{kept}");
    assert!(rollup::due(&f.lake, &d, now).is_empty());
}

#[test]
fn bad_definitions_are_refused() {
    let bad = [
        def(7),
        def(5400),
        RollupDef {
            name: Some("t".into()),
            ..def(60)
        },
        RollupDef {
            name: Some("bad name".into()),
            ..def(60)
        },
        RollupDef {
            fields: BTreeMap::from([("v".to_owned(), vec![])]),
            ..def(60)
        },
    ];
    for d in bad {
        assert!(rollup::check_all(std::slice::from_ref(&d)).is_err(), "{d:?}");
    }
    let chained = [
        def(60),
        RollupDef {
            table: "t_roll".into(),
            name: Some("t_roll_h".into()),
            ..def(3600)
        },
    ];
    assert!(rollup::check_all(&chained).is_err());
    let twice = [def(60), def(300)];
    assert!(rollup::check_all(&twice).is_err());
    assert_eq!(
        RollupDef {
            name: None,
            ..def(3600)
        }
        .name(),
        "t_1h"
    );
    assert_eq!(RollupDef { name: None, ..def(30) }.name(), "t_30s");
}
