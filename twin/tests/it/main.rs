//! The twin store against a real redb file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;

use serde_json::{Map, Value as Json, json};
use twinlake_twin::{EventKind, Limits, TwinError, TwinKey, TwinStore};

fn obj(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(o) => o,
        _ => Map::new(),
    }
}

fn open(path: &std::path::Path, limits: Limits) -> TwinStore {
    let db = redb::Database::create(path).unwrap();
    TwinStore::open(Arc::new(db), limits).unwrap()
}

#[test]
fn twins_survive_a_reopen_with_versions_and_delta() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cloud.redb");
    let key = TwinKey::new("demo", "sensor-1");
    {
        let s = open(&path, Limits::default());
        s.write(|t| t.create(&key, obj(json!({"site": "lab"})))).unwrap();
        s.write(|t| t.report(&key, "temp", json!(21.5), 1000)).unwrap();
        s.write(|t| t.patch_desired(&key, &obj(json!({"led": true})), None))
            .unwrap();
        s.write(|t| t.report(&key, "led", json!(false), 2000)).unwrap();
    }
    let s = open(&path, Limits::default());
    let t = s.get(&key).unwrap().unwrap();
    assert_eq!(t.version, 4);
    assert_eq!(t.reported["temp"], json!(21.5));
    assert_eq!(t.meta_reported["temp"], json!({"timestamp": 1000}));
    assert_eq!(Json::Object(t.delta()), json!({"led": true}));
    assert_eq!(t.tags["site"], json!("lab"));
    assert_eq!(s.list(Some("demo")).unwrap().len(), 1);
    assert!(s.list(Some("other")).unwrap().is_empty());
    assert_eq!(s.count().unwrap(), 1);
}

#[test]
fn a_stale_version_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("t.redb"), Limits::default());
    let key = TwinKey::new("u", "d");
    s.write(|t| t.create(&key, Map::new())).unwrap();
    let v = s.get(&key).unwrap().unwrap().version;
    s.write(|t| t.patch_desired(&key, &obj(json!({"a": 1})), Some(v)))
        .unwrap();
    let err = s
        .write(|t| t.patch_desired(&key, &obj(json!({"a": 2})), Some(v)))
        .unwrap_err();
    assert!(matches!(err, TwinError::VersionConflict { expected, actual, .. } if expected == v && actual == v + 1));
    assert_eq!(s.get(&key).unwrap().unwrap().desired["a"], json!(1));
    let missing = s.write(|t| t.patch_desired(&TwinKey::new("u", "x"), &Map::new(), None));
    assert!(matches!(missing, Err(TwinError::NotFound(_))));
}

#[test]
fn documents_are_bounded_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_doc_bytes: 2048,
        ..Limits::default()
    };
    let s = open(&dir.path().join("t.redb"), limits);
    let key = TwinKey::new("u", "d");
    s.write(|t| t.create(&key, Map::new())).unwrap();
    let big = json!({"blob": "x".repeat(4000)});
    let err = s.write(|t| t.patch_desired(&key, &obj(big), None)).unwrap_err();
    assert!(err.to_string().contains("the limit is 2048"), "{err}");
    let err = s
        .write(|t| t.report(&key, "r", json!("y".repeat(4000)), 1))
        .unwrap_err();
    assert!(matches!(err, TwinError::TooLarge { .. }));
    // Nothing of either landed; small changes still do.
    let t = s.get(&key).unwrap().unwrap();
    assert!(t.desired.is_empty() && t.reported.is_empty());
    s.write(|t| t.report(&key, "r", json!(1), 1)).unwrap();
}

#[test]
fn a_failed_transaction_changes_nothing_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("t.redb"), Limits::default());
    let mut feed = s.subscribe();
    let key = TwinKey::new("u", "d");
    let r: Result<(), TwinError> = s.write(|t| {
        t.report(&key, "temp", json!(1), 1)?;
        Err(TwinError::Storage("caller gave up".into()))
    });
    assert!(r.is_err());
    assert!(s.get(&key).unwrap().is_none());
    assert!(feed.try_recv().is_err());
}

#[test]
fn the_change_feed_carries_each_committed_change() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("t.redb"), Limits::default());
    let mut feed = s.subscribe();
    let key = TwinKey::new("u", "d");
    s.write(|t| {
        t.set_connection(&key, 5, |c| {
            c.online = true;
            c.gateway = Some("gw".into());
        })?;
        t.describe(&key, 5, json!({"led": {"fn": 2}}))?;
        t.report(&key, "temp", json!({"out": 1}), 6)?;
        t.report(&key, "temp", json!(2), 7)
    })
    .unwrap();
    s.write(|t| t.patch_desired(&key, &obj(json!({"led": true})), None))
        .unwrap();
    let kinds: Vec<EventKind> = std::iter::from_fn(|| feed.try_recv().ok()).map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Connection,
            EventKind::Described,
            EventKind::Reported,
            EventKind::Reported,
            EventKind::Desired
        ]
    );
    s.write(|t| t.report(&key, "led", json!(true), 8)).unwrap();
    let e = feed.try_recv().unwrap();
    let j: Json = serde_json::from_str(&e.json).unwrap();
    assert_eq!(j["event"], "reported");
    assert_eq!(j["state"]["reported"]["led"], json!(true));
    assert_eq!(j["delta"], json!({}), "the delta cleared: {j}");
    assert_eq!(j["version"], json!(6));
    assert_eq!(e.reported, Some(("led".into(), json!(true))));
}
