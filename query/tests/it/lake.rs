//! The lake: exactly-once between fresh rows and files, pruning, rebuild from a listing,
//! compaction.

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use twinlake_query::compact::{CompactionConfig, compact_partition};
use twinlake_query::lake::Pruning;
use twinlake_query::{FreshLimits, Lake};

use crate::support::{Fixture, MIN, Row, T0, standard};

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

/// The catalog's row counts reach the planner (#19, SQL): a join of a big table with a small
/// one builds its hash table on the small one, whichever side the query names it on.
#[tokio::test]
async fn a_join_builds_on_the_smaller_table() {
    let f = Fixture::empty();
    f.commit("readings", "gw", 1, &rows("d1", 0, 50)).await;
    f.commit("readings", "gw", 2, &rows("d2", 0, 50)).await;
    f.commit("tags", "gw", 3, &rows("d1", 0, 1)).await;
    let q = "SELECT count(*) AS n FROM readings r JOIN tags g ON r.device = g.device";
    assert!(f.query(q).await.contains("| 50 |"), "{}", f.query(q).await);
    let plan = f.query(&format!("EXPLAIN {q}")).await;
    let physical = &plan[plan.find("physical_plan").expect("a physical plan")..];
    let join = physical.find("HashJoinExec").expect("a hash join");
    let (tags, readings) = (physical[join..].find("[tags/"), physical[join..].find("[readings/"));
    assert!(
        tags.is_some() && tags < readings,
        "the join builds on readings:\n{plan}"
    );
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
        owner: Some("u"),
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
        owner: Some("u"),
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

/// A file today's gateways write (`lake/tests/data/v1`, made by the edge agent of
/// commit 1905883, before files carried a format version) is catalogued and read as it was.
#[tokio::test]
async fn files_from_before_the_format_version_stay_readable() {
    let f = Fixture::empty();
    let rel = "climate/date=2025-11-28/hour=03/edge-1-00000000000000000007.parquet";
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lake/tests/data/v1")
        .join(rel);
    let dst = f.dir.path().join("lake").join(rel);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(src, &dst).unwrap();
    assert!(f.lake.commit(rel, None).await.unwrap());
    let meta = &f.lake.files("climate")[0];
    assert_eq!(
        (meta.gateway.as_deref(), meta.seal, meta.rows, meta.level),
        (Some("edge-1"), Some(7), 6, 0)
    );
    let out = f
        .query(
            "SELECT device, count(*) AS n, sum(count) AS c, max(celsius) AS hi, \
             sum(CASE WHEN ok THEN 1 ELSE 0 END) AS oks, min(note) AS note, min(raw) AS raw \
             FROM climate GROUP BY device ORDER BY device",
        )
        .await;
    let want = "\
+----------+---+---+------+-----+------+------+
| device   | n | c | hi   | oks | note | raw  |
+----------+---+---+------+-----+------+------+
| thermo-a | 3 | 6 | 24.5 | 2   | n0   | 0001 |
| thermo-b | 3 | 9 | 25.5 | 2   | n1   | 0001 |
+----------+---+---+------+-----+------+------+";
    assert_eq!(out, want);
}

/// Only compaction's own files may be named `compacted-…`: such a name without
/// compaction's mark is not catalogued, and a gateway's file that claims the mark stays
/// that gateway's (so the provenance check still applies to it).
#[tokio::test]
async fn a_compacted_name_or_mark_is_not_taken_on_trust() {
    let f = Fixture::empty();
    let paths = f.commit_raw("t", "gw", 1, &rows("d1", 0, 3)).await;
    let forged = paths[0].replace("gw-00000000000000000001", "compacted-1");
    let lake = f.dir.path().join("lake");
    std::fs::rename(lake.join(&paths[0]), lake.join(&forged)).unwrap();
    assert!(f.lake.commit(&forged, None).await.is_err());
    assert_eq!(f.lake.rebuild().await.unwrap(), 0);
    assert!(f.lake.files("t").is_empty());
    // A compacted file copied under a gateway's name is that gateway's seal.
    f.commit("t", "gw", 2, &rows("d1", 0, 2)).await;
    f.commit("t", "gw", 3, &rows("d1", 2, 2)).await;
    let cfg = CompactionConfig {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    let merged = compact_partition(&f.lake, "t", T0, &cfg).await.unwrap().unwrap();
    assert_eq!((merged.gateway, merged.level), (None, 1));
    let claimed = merged.path.replace(
        merged.path.rsplit('/').next().unwrap(),
        "gw-00000000000000000009.parquet",
    );
    std::fs::copy(lake.join(&merged.path), lake.join(&claimed)).unwrap();
    assert!(f.lake.commit(&claimed, None).await.unwrap());
    let meta = f.lake.files("t").into_iter().find(|m| m.path == claimed).unwrap();
    assert_eq!(
        (meta.gateway.as_deref(), meta.seal, meta.level),
        (Some("gw"), Some(9), 0)
    );
}

/// A user's SQL sees the rows whose `owner` is the user, and rows of no known owner
/// (written before the column) by the registry's (gateway, device) record; never another
/// user's rows of a device of the same name, nor rows that only claim the user.
#[tokio::test]
async fn a_users_rows_are_those_it_owns_by_column_and_by_registry() {
    use twinlake_lake::buffer::Buffer;
    use twinlake_lake::file::{self, Writer, WriterSettings};
    use twinlake_lake::model::FieldValue;
    use twinlake_lake::{Hour, LakePath};

    let f = Fixture::empty();
    let mut buf = Buffer::new("gw-a", Default::default());
    let mut conflicts = Vec::new();
    // d1 and d2 on gw-a are u's (support.rs), d2 is w's as well; d9 is nobody's.
    for (i, (owner, device, v)) in [
        (Some("u"), "d1", 1),
        (Some("other"), "d1", 2),
        (None, "d1", 4),
        (Some("u"), "d9", 8),
        (None, "d9", 16),
        (Some("u"), "d2", 32),
        (Some("w"), "d2", 64),
        (None, "d2", 128),
    ]
    .into_iter()
    .enumerate()
    {
        let fields = [(std::borrow::Cow::Borrowed("v"), FieldValue::Int(v))];
        buf.append("t", T0 + i as i64, owner, device, &fields, &mut conflicts);
    }
    let props = file::writer_properties(WriterSettings::default(), Writer::Edge).unwrap();
    for sealed in buf.seal().unwrap() {
        for (hour, batch) in sealed.hours {
            let path = LakePath::seal("t", Hour::of(hour).unwrap(), "gw-a", 1)
                .unwrap()
                .to_string();
            let full = f.dir.path().join("lake").join(&path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, file::encode(&[batch], &props).unwrap()).unwrap();
            assert!(f.lake.commit(&path, None).await.unwrap());
        }
    }
    let sum_as = |user: Option<&'static str>| as_user(&f, user, "SELECT sum(v) AS s, count(*) AS n FROM t");
    assert!(sum_as(None).await.contains("| 255 | 8 |"), "{}", sum_as(None).await);
    // u: its own d1 and d2 rows and the old d1 row; the old d2 row could be u's or w's.
    assert!(
        sum_as(Some("u")).await.contains("| 37 | 3 |"),
        "{}",
        sum_as(Some("u")).await
    );
    assert!(
        sum_as(Some("w")).await.contains("| 64 | 1 |"),
        "{}",
        sum_as(Some("w")).await
    );
    // "other" has no device on record: none of the rows, not even the one naming it.
    let other = sum_as(Some("other")).await;
    assert!(other.contains(" | 0 |"), "{other}");
    // The long `fields` table keeps each user to the same rows.
    let long = |user: Option<&'static str>| {
        as_user(
            &f,
            user,
            "SELECT sum(value) AS s, count(*) AS n FROM fields WHERE \"table\" = 't' AND field = 'v'",
        )
    };
    for (user, want) in [
        (None, "| 255.0 | 8 |"),
        (Some("u"), "| 37.0 | 3 |"),
        (Some("w"), "| 64.0 | 1 |"),
    ] {
        let got = long(user).await;
        assert!(got.contains(want), "{user:?}: {got}");
    }
    assert!(long(Some("other")).await.contains(" | 0 |"));
}

/// `sql` as `user` (none: the platform), as pretty text.
async fn as_user(f: &Fixture, user: Option<&str>, sql: &str) -> String {
    use futures::TryStreamExt;
    let batches: Vec<_> = f
        .engine
        .query_as(user.map(str::to_owned), sql, None)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// `fields`: every numeric field of every table in one long table, equal to the tables
/// themselves; a filter on table and field plans only that branch.
#[tokio::test]
async fn the_fields_table_holds_every_numeric_field_in_long_form() {
    let f = standard().await;
    let long = f
        .query("SELECT \"table\", field, count(*) AS n, sum(value) AS s FROM fields GROUP BY 1, 2 ORDER BY 1, 2")
        .await;
    let wide = f
        .query(
            "SELECT 'climate' AS \"table\", 'hum' AS field, count(hum) AS n, sum(hum) AS s FROM climate \
             UNION ALL SELECT 'climate', 'temp', count(temp), sum(temp) FROM climate ORDER BY 1, 2",
        )
        .await;
    // The climate rows, cells trimmed (the two tables pad their columns differently).
    let rows = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("| climate"))
            .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&wide).len(), 2, "{wide}");
    assert_eq!(rows(&long), rows(&wide), "{long}\n{wide}");
    let one = f
        .query("SELECT time, value FROM fields WHERE \"table\" = 'climate' AND field = 'temp' AND device = 'd1' ORDER BY time")
        .await;
    let direct = f
        .query("SELECT time, CAST(temp AS DOUBLE) AS value FROM climate WHERE device = 'd1' ORDER BY time")
        .await;
    assert_eq!(one, direct);
    let plan = f
        .query("EXPLAIN SELECT value FROM fields WHERE \"table\" = 'climate' AND field = 'temp'")
        .await;
    assert!(!plan.contains("hum"), "only the temp branch is planned:\n{plan}");
    // A table the filters rule out: no rows, not an error.
    let none = f
        .query("SELECT count(*) AS n FROM fields WHERE \"table\" = 'nowhere'")
        .await;
    assert!(none.contains("| 0 |"), "{none}");
}
