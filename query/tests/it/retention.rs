//! Retention (#17): only whole hour partitions past their table's retention go, out of the
//! catalog and every new query at once, their files after the grace; a query that planned
//! before still reads all of them; a file of an expired partition announced again is not
//! taken back; other tables and partitions keep every row.

use std::collections::BTreeMap;
use std::time::Duration;

use twinlake_query::lake::Pruning;
use twinlake_query::retention::{RetentionConfig, due, pass};

use crate::support::{Fixture, MIN, Row, T0};

const HOUR: i64 = 60 * MIN;

fn rows(device: &'static str, from_min: i64, n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| (T0 + (from_min + i) * MIN, device, vec![("v", 1.0)]))
        .collect()
}

#[tokio::test]
async fn retention_takes_whole_expired_partitions_and_running_queries_finish() {
    let f = Fixture::empty();
    for h in 0..3 {
        f.commit("t", "gw", h as u64 + 1, &rows("d1", h * 60, 3)).await;
        f.commit("t", "gw2", h as u64 + 1, &rows("d2", h * 60 + 10, 2)).await;
    }
    // Fresh rows of an expired hour (a late backlog) and of a kept one.
    f.fresh("t", "gw3", 7, &rows("d3", 30, 4));
    f.fresh("t", "gw3", 8, &rows("d3", 3 * 60, 2));
    f.commit("keep", "gw", 1, &rows("d1", 0, 2)).await;
    let per_hour =
        "SELECT CAST(date_bin(INTERVAL '1 hour', time) AS VARCHAR) AS h, count(*) AS n FROM t GROUP BY 1 ORDER BY 1";
    let before = f.query(per_hour).await;
    assert!(before.contains("| 2024-01-01T00:00:00Z | 9 |"), "{before}");

    // Kept 2 h, at 04:01: hours 00 and 01 ended before 02:01 and go; hour 02 ends at 03:00,
    // after the cutoff, and stays whole.
    let cfg = RetentionConfig {
        tables: BTreeMap::from([("t".to_owned(), Duration::from_secs(7200).into())]),
        ..Default::default()
    };
    let now = T0 + 4 * HOUR + MIN;
    assert_eq!(
        due(&f.lake, &cfg, &[], now),
        vec![("t".to_owned(), T0, HOUR), ("t".to_owned(), T0 + HOUR, HOUR)]
    );

    // A query that planned before the deletion: its snapshot of hour 00.
    let planned = f.lake.snapshot("t", &Pruning::default());
    let old_files: Vec<_> = planned.files.iter().filter(|m| m.hour_us == T0).cloned().collect();
    assert_eq!(old_files.len(), 2);

    let grace = Duration::from_millis(300);
    let expired = pass(&f.lake, &cfg, &[], grace, now);
    assert_eq!(expired.len(), 2);
    assert_eq!((expired[0].files, expired[0].rows), (2, 5));
    let after = f.query(per_hour).await;
    assert!(!after.contains("T00:00") && !after.contains("T01:00"), "{after}");
    assert!(
        after.contains("| 2024-01-01T02:00:00Z | 5 |") && after.contains("| 2024-01-01T03:00:00Z | 2 |"),
        "{after}"
    );
    assert!(
        f.query("SELECT count(*) AS n FROM keep").await.contains("| 2 |"),
        "other tables keep everything"
    );

    // During the grace the planned query still reads every file of its snapshot; after it
    // they are gone from the object store.
    let lake_dir = f.dir.path().join("lake");
    for m in &old_files {
        assert!(lake_dir.join(&m.path).exists(), "{} deleted during the grace", m.path);
    }
    tokio::time::sleep(grace * 3).await;
    for m in &old_files {
        assert!(!lake_dir.join(&m.path).exists(), "{} kept after the grace", m.path);
    }
    // An edge uploading one of them again (after a crash) does not bring it back.
    let again = f.commit_raw("t", "gw", 1, &rows("d1", 0, 3)).await;
    assert!(!f.lake.commit(&again[0], None).await.unwrap());
    assert_eq!(f.query(per_hour).await, after);
    // Nothing else is due; a table kept forever ("0s") never is.
    assert!(due(&f.lake, &cfg, &[], now).is_empty());
    let forever = RetentionConfig {
        default: Some(Duration::from_secs(60)),
        tables: BTreeMap::from([
            ("t".to_owned(), Duration::ZERO.into()),
            ("keep".to_owned(), Duration::ZERO.into()),
        ]),
        ..Default::default()
    };
    assert!(due(&f.lake, &forever, &[], now + 1000 * HOUR).is_empty());
}

/// Files whose deletion a stop cut short (retention's or compaction's grace) are swept at
/// the next start; catalogued files are not.
#[tokio::test]
async fn replaced_files_a_stop_left_are_swept() {
    let f = Fixture::empty();
    let gone = f.commit("t", "gw", 1, &rows("d1", 0, 3)).await;
    let kept = f.commit("t", "gw", 2, &rows("d1", 2 * 60, 3)).await;
    let cfg = RetentionConfig {
        tables: BTreeMap::from([("t".to_owned(), Duration::from_secs(3600).into())]),
        ..Default::default()
    };
    // A grace no test waits for: the files stay, as after a stop during it.
    let expired = pass(&f.lake, &cfg, &[], Duration::from_secs(3600), T0 + 2 * HOUR);
    assert_eq!(expired.len(), 1);
    let lake_dir = f.dir.path().join("lake");
    assert!(lake_dir.join(&gone[0]).exists());
    assert_eq!(f.lake.sweep_replaced().await.unwrap(), 1);
    assert!(!lake_dir.join(&gone[0]).exists());
    assert!(lake_dir.join(&kept[0]).exists(), "catalogued files stay");
    assert_eq!(f.lake.sweep_replaced().await.unwrap(), 0);
}
