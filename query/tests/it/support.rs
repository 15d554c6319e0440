//! A small lake for the tests: committed files from one gateway, fresh rows from another,
//! twins, devices.

use std::borrow::Cow;
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use twinlake_lake::buffer::Buffer;
use twinlake_lake::file::{self, Writer, WriterSettings};
use twinlake_lake::model::{FieldValue, table_name};
use twinlake_lake::{Hour, LakePath};
use twinlake_query::system::{DeviceDirectory, DeviceRow};
use twinlake_query::{Engine, FreshLimits, FreshRow, Lake};
use twinlake_sdk::pson::{Value, ValueRef};
use twinlake_twin::{Limits, TwinKey, TwinStore};

/// 2024-01-01T00:00:00Z in µs.
pub const T0: i64 = 1_704_067_200_000_000;
pub const MIN: i64 = 60_000_000;

/// One test row: (µs, device, fields).
pub type Row = (i64, &'static str, Vec<(&'static str, f64)>);

#[derive(Debug)]
pub struct Devices(pub Vec<DeviceRow>);

impl DeviceDirectory for Devices {
    fn devices(&self) -> Vec<DeviceRow> {
        self.0.clone()
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub lake: Arc<Lake>,
    pub twins: TwinStore,
    pub engine: Engine,
}

impl Fixture {
    /// An empty lake, twins and engine in a temp dir.
    pub fn empty() -> Self {
        Self::with_store(|s| s)
    }

    /// As [`Fixture::empty`], the lake's store (a local directory) seen through `wrap`.
    pub fn with_store(
        wrap: impl FnOnce(Arc<dyn object_store::ObjectStore>) -> Arc<dyn object_store::ObjectStore>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lake_dir = dir.path().join("lake");
        std::fs::create_dir_all(&lake_dir).unwrap();
        let store = wrap(Arc::new(LocalFileSystem::new_with_prefix(&lake_dir).unwrap()));
        let db = Arc::new(redb::Database::create(dir.path().join("cloud.redb")).unwrap());
        let lake = Lake::open(db.clone(), store, ObjectPath::from(""), FreshLimits::default()).unwrap();
        let twins = TwinStore::open(db, Limits::default()).unwrap();
        let devices = Devices(
            ["d1", "d2", "d3"]
                .iter()
                .map(|d| DeviceRow {
                    user: "u".into(),
                    device: (*d).into(),
                    name: format!("sensor {d}"),
                    description: String::new(),
                    gateway: Some(if *d == "d3" { "gw-b" } else { "gw-a" }.into()),
                    enabled: true,
                    tags: serde_json::from_str(r#"{"site":"lab"}"#).unwrap(),
                    attributes: Default::default(),
                    created: 1_704_067_200_000,
                })
                // Another user's device of the same name at the same gateway.
                .chain(std::iter::once(DeviceRow {
                    user: "w".into(),
                    device: "d2".into(),
                    name: "w's d2".into(),
                    description: String::new(),
                    gateway: Some("gw-a".into()),
                    enabled: true,
                    tags: Default::default(),
                    attributes: Default::default(),
                    created: 1_704_067_200_000,
                }))
                .collect(),
        );
        let engine = Engine::new(lake.clone(), twins.clone(), Arc::new(devices)).unwrap();
        Self {
            dir,
            lake,
            twins,
            engine,
        }
    }

    /// Writes `rows` of `table` as the edge would (one file per hour) for `gateway`'s
    /// `seal`, and commits the files. Returns their paths.
    pub async fn commit(&self, table: &str, gateway: &str, seal: u64, rows: &[Row]) -> Vec<String> {
        let paths = self.commit_raw(table, gateway, seal, rows).await;
        for p in &paths {
            assert!(self.lake.commit(p, None).await.unwrap());
        }
        paths
    }

    /// Writes the files as [`Fixture::commit`] does without announcing them.
    pub async fn commit_raw(&self, table: &str, gateway: &str, seal: u64, rows: &[Row]) -> Vec<String> {
        let mut buf = Buffer::new(gateway, Default::default());
        let mut conflicts = Vec::new();
        for (t, d, fields) in rows {
            let fv: Vec<(Cow<'_, str>, FieldValue<'_>)> = fields
                .iter()
                .map(|(k, v)| (Cow::Borrowed(*k), FieldValue::Float(*v)))
                .collect();
            buf.append(table, *t, Some("u"), d, &fv, &mut conflicts);
        }
        let props = file::writer_properties(WriterSettings::default(), Writer::Edge).unwrap();
        let mut paths = Vec::new();
        for sealed in buf.seal().unwrap() {
            for (hour, batch) in sealed.hours {
                let path = LakePath::seal(&table_name(&[table]).unwrap(), Hour::of(hour).unwrap(), gateway, seal)
                    .unwrap()
                    .to_string();
                let bytes = file::encode(&[batch], &props).unwrap();
                let full = self.dir.path().join("lake").join(&path);
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, bytes).unwrap();
                paths.push(path);
            }
        }
        paths
    }

    /// Sends `rows` of `table` as fresh rows from `gateway`'s WAL `segment`.
    pub fn fresh(&self, table: &str, gateway: &str, segment: u64, rows: &[Row]) {
        let encoded: Vec<(i64, &str, Vec<u8>)> = rows
            .iter()
            .map(|(t, d, fields)| {
                let mut v = Value::object();
                for (k, x) in fields {
                    v = v.with(k, *x);
                }
                (*t, *d, v.to_bytes())
            })
            .collect();
        let fresh: Vec<FreshRow<'_>> = encoded
            .iter()
            .map(|(t, d, b)| FreshRow {
                time_us: *t,
                owner: Some("u"),
                device: d,
                payload: ValueRef::decode(b).unwrap(),
            })
            .collect();
        self.lake.add_fresh(gateway, table, segment, false, &fresh);
    }

    /// Creates twin `u/<device>` with reported and desired values.
    pub fn twin(&self, device: &str, reported: serde_json::Value, desired: serde_json::Value) {
        let key = TwinKey::new("u", device);
        self.twins
            .write(|t| -> Result<(), twinlake_twin::TwinError> {
                t.create(&key, Default::default())?;
                for (k, v) in reported.as_object().unwrap() {
                    t.report(&key, k, v.clone(), 1_704_067_200_000)?;
                }
                let patch = desired.as_object().unwrap().clone();
                if !patch.is_empty() {
                    t.patch_desired(&key, &patch, None)?;
                }
                Ok(())
            })
            .unwrap();
    }

    /// Runs `sql`; the result as pretty text.
    pub async fn query(&self, sql: &str) -> String {
        let batches = self.engine.collect(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }
}

/// The standard fixture of the golden tests (tests/slt/README.md describes it).
pub async fn standard() -> Fixture {
    let f = Fixture::empty();
    // climate: gw-a committed seal 5, gw-b fresh segment 3.
    f.commit(
        "climate",
        "gw-a",
        5,
        &[
            (T0, "d1", vec![("temp", 20.0), ("hum", 40.0)]),
            (T0 + MIN, "d1", vec![("temp", 21.0), ("hum", 41.0)]),
            (T0 + 3 * MIN, "d1", vec![("temp", 23.0), ("hum", 45.0)]),
            (T0, "d2", vec![("temp", 30.0), ("hum", 50.0)]),
            (T0 + 2 * MIN, "d2", vec![("temp", 32.0), ("hum", 52.0)]),
        ],
    )
    .await;
    f.fresh(
        "climate",
        "gw-b",
        3,
        &[
            (T0, "d3", vec![("temp", 10.0), ("hum", 60.0)]),
            (T0 + 4 * MIN, "d3", vec![("temp", 14.0), ("hum", 64.0)]),
        ],
    );
    // room: the last minutes before now, for "last 10 minutes" queries.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let mut room = Vec::new();
    for (d, base) in [("d1", 30.0), ("d2", 31.0), ("d3", 35.0)] {
        for k in 1..=5 {
            room.push((now - k * MIN, d, vec![("temp", base + k as f64)]));
        }
        // Older than ten minutes: must not count.
        room.push((now - 30 * MIN, d, vec![("temp", 100.0)]));
    }
    let (old, recent): (Vec<Row>, Vec<Row>) = room.into_iter().partition(|r| r.1 == "d2");
    f.commit("room", "gw-a", 6, &old).await;
    f.fresh("room", "gw-a", 7, &recent);
    // Twins: d1 and d3 want a state they have not reported; d2 is in sync.
    f.twin(
        "d1",
        serde_json::json!({"led": false}),
        serde_json::json!({"led": true}),
    );
    f.twin("d2", serde_json::json!({"led": true}), serde_json::json!({"led": true}));
    f.twin(
        "d3",
        serde_json::json!({"led": false, "fw": "1.2"}),
        serde_json::json!({"fw": "1.3"}),
    );
    f
}
