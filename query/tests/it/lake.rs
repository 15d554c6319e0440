//! The lake: exactly-once between fresh rows and files, pruning, rebuild from a listing,
//! compaction.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use twinlake_query::compact::{CompactionConfig, compact_partition};
use twinlake_query::lake::Pruning;
use twinlake_query::{FreshLimits, Lake};

use crate::support::{Fixture, MIN, Row, T0};

fn rows(device: &'static str, from: i64, n: i64) -> Vec<Row> {
    (0..n)
        .map(|i| (T0 + (from + i) * MIN, device, vec![("v", (from + i) as f64)]))
        .collect()
}

async fn count(f: &Fixture, sql: &str) -> String {
    f.query(sql).await
}

#[tokio::test]
async fn fresh_rows_are_seen_once_before_and_after_their_file() {
    let f = Fixture::empty();
    // Segment 4 of gw: two rows, fresh.
    f.fresh("t", "gw", 4, &rows("d1", 0, 2));
    let q = "SELECT count(*) AS n, CAST(sum(v) AS BIGINT) AS s FROM t";
    assert!(count(&f, q).await.contains("| 2 | 1 |"), "{}", count(&f, q).await);
    // Segment 5 arrives before seal 4's file.
    f.fresh("t", "gw", 5, &rows("d1", 2, 1));
    assert!(count(&f, q).await.contains("| 3 | 3 |"));
    // Seal 4 lands (segments up to 4): its rows now come from the file, seen once.
    f.commit("t", "gw", 4, &rows("d1", 0, 2)).await;
    assert!(count(&f, q).await.contains("| 3 | 3 |"), "{}", count(&f, q).await);
    // Another gateway's file for the same hour drops nothing of gw.
    f.commit("t", "other", 9, &rows("d9", 0, 1)).await;
    assert!(count(&f, q).await.contains("| 4 | 3 |"), "{}", count(&f, q).await);
    // Seal 5 lands.
    f.commit("t", "gw", 5, &rows("d1", 2, 1)).await;
    assert!(count(&f, q).await.contains("| 4 | 3 |"));
    assert_eq!(f.lake.fresh_rows(), 0);

    // Compaction: the same rows, once, from one file.
    let hour = f.lake.files("t")[0].hour_us;
    let cfg = CompactionConfig {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let merged = compact_partition(&f.lake, "t", hour, &cfg).await.unwrap().unwrap();
    assert_eq!(merged.rows, 4);
    assert_eq!(f.lake.files("t").len(), 1);
    assert!(count(&f, q).await.contains("| 4 | 3 |"));
    // An edge that uploads a replaced file again (after a crash) does not bring it back.
    let again = f.commit_raw("t", "gw", 4, &rows("d1", 0, 2)).await;
    assert!(!f.lake.commit(&again[0], None).await.unwrap());
    assert!(count(&f, q).await.contains("| 4 | 3 |"));
}

#[tokio::test]
async fn rows_of_a_seal_span_hours_and_each_hour_file_drops_its_own() {
    let f = Fixture::empty();
    // 58..62 minutes: two hours, one segment.
    f.fresh("t", "gw", 1, &rows("d1", 58, 4));
    let q = "SELECT count(*) AS n FROM t";
    assert!(count(&f, q).await.contains("| 4 |"));
    // Only the first hour's file has landed so far.
    f.commit("t", "gw", 1, &rows("d1", 58, 2)).await;
    assert!(count(&f, q).await.contains("| 4 |"), "{}", count(&f, q).await);
    f.commit("t", "gw", 1, &rows("d1", 60, 2)).await;
    assert!(count(&f, q).await.contains("| 4 |"));
    assert_eq!(f.lake.fresh_rows(), 0);
}

#[tokio::test]
async fn pruning_reads_only_the_files_in_range() {
    let f = Fixture::empty();
    for h in 0..4 {
        f.commit("t", "gw", h as u64 + 1, &rows("d1", h * 60, 3)).await;
    }
    let all = f.lake.snapshot("t", &Pruning::default());
    assert_eq!(all.files.len(), 4);
    let one = f.lake.snapshot(
        "t",
        &Pruning {
            min_us: Some(T0 + 60 * MIN),
            max_us: Some(T0 + 61 * MIN),
            devices: None,
        },
    );
    assert_eq!(one.files.len(), 1);
    let none = f.lake.snapshot(
        "t",
        &Pruning {
            devices: Some(vec!["zz".into()]),
            ..Default::default()
        },
    );
    assert_eq!(none.files.len(), 0);
    // The planner derives the same from SQL.
    let plan = f
        .query("EXPLAIN SELECT count(*) FROM t WHERE time >= '2024-01-01T01:00:00Z' AND time < '2024-01-01T01:01:00Z'")
        .await;
    assert_eq!(plan.matches("date=2024-01-01/hour=").count(), 1, "{plan}");
}

#[tokio::test]
async fn the_catalog_is_rebuilt_from_a_listing() {
    let f = Fixture::empty();
    f.commit("t", "gw", 1, &rows("d1", 0, 3)).await;
    f.commit("u", "gw", 1, &rows("d2", 0, 2)).await;
    // A new catalog over the same store knows nothing until it lists.
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(f.dir.path().join("lake")).unwrap());
    let db = Arc::new(redb::Database::create(f.dir.path().join("other.redb")).unwrap());
    let lake = Lake::open(db.clone(), store.clone(), ObjectPath::from(""), FreshLimits::default()).unwrap();
    assert!(lake.table_names().is_empty());
    assert_eq!(lake.rebuild().await.unwrap(), 2);
    assert_eq!(lake.table_names(), ["t", "u"]);
    assert_eq!(lake.files("t")[0], f.lake.files("t")[0]);
    // Durable: reopened, it has them without listing; listing again adds nothing.
    drop(lake);
    let lake = Lake::open(db, store, ObjectPath::from(""), FreshLimits::default()).unwrap();
    assert_eq!(lake.files("t").len(), 1);
    assert_eq!(lake.rebuild().await.unwrap(), 0);
}

#[tokio::test]
async fn fresh_rows_are_bounded() {
    let f = Fixture::empty();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let db = Arc::new(redb::Database::create(dir.path().join("c.redb")).unwrap());
    let lake = Lake::open(
        db,
        store,
        ObjectPath::from(""),
        FreshLimits {
            max_rows: 5,
            ..Default::default()
        },
    )
    .unwrap();
    drop(f);
    let payload = twinlake_sdk::pson::Value::object().with("v", 1.0).to_bytes();
    let row = twinlake_query::FreshRow {
        time_us: T0,
        device: "d",
        payload: twinlake_sdk::pson::ValueRef::decode(&payload).unwrap(),
    };
    for seg in 0..4 {
        lake.add_fresh("gw", "t", seg, false, &[row.clone(), row.clone()]);
    }
    assert!(lake.fresh_rows() <= 5, "{}", lake.fresh_rows());
    assert!(
        lake.counters
            .fresh_rows_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

/// A few wide rows weigh more than many narrow ones (#13, finding 8): the fresh rows are
/// bounded in bytes as well as in rows.
#[tokio::test]
async fn fresh_rows_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let db = Arc::new(redb::Database::create(dir.path().join("c.redb")).unwrap());
    let limit = 1 << 20;
    let lake = Lake::open(
        db,
        store,
        ObjectPath::from(""),
        FreshLimits {
            max_bytes: limit,
            ..Default::default()
        },
    )
    .unwrap();
    // 1,000 text fields a row: tens of KB of Arrow each.
    let mut wide = twinlake_sdk::pson::Value::object();
    for k in 0..1000 {
        wide = wide.with(&format!("k{k}"), "some text value");
    }
    let payload = wide.to_bytes();
    let row = twinlake_query::FreshRow {
        time_us: T0,
        device: "d",
        payload: twinlake_sdk::pson::ValueRef::decode(&payload).unwrap(),
    };
    for seg in 0..200 {
        lake.add_fresh("gw", "t", seg, false, &[row.clone(), row.clone(), row.clone()]);
    }
    assert!(lake.fresh_rows() < 600, "{} rows held", lake.fresh_rows());
    assert!(
        lake.counters
            .fresh_rows_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}
