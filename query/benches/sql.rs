//! SQL benchmarks (BENCHMARKS.md, "SQL"): TSBS-iot queries end to end over the Postgres wire,
//! against DuckDB and chdb (ClickHouse, its own dialect's port of each query) reading the same
//! Parquet files in the same run, runs interleaved, in two layouts: the many small files
//! gateways write, and the same data compacted.
//!
//! The truck data (../shared/specs/tsbs-iot.md) is written by the edge's own buffer and
//! Parquet writer (the code an agent seals with), as several gateways sealing every ten
//! minutes would: many small files per hour partition. The trucks' tags are a lake table of
//! their own (`tags`), which the scanning queries join. The twins hold each truck's last
//! readings, so the last-point queries are answered from them (reported apart: the peers
//! scan for `arg_max` instead).
//!
//! `cargo bench -p twinlake-query --bench sql -- [--trucks N] [--hours H] [--runs R]`
//! Under `cargo test --all-targets` it runs a tiny smoke version that checks the queries.

// Bench code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../edge-agent/benches/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "sql/queries.rs"]
mod queries;
#[path = "../../edge-agent/benches/tsbs.rs"]
#[allow(dead_code)]
mod tsbs;

use std::borrow::Cow;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use twinlake_lake::buffer::Buffer;
use twinlake_lake::file::{self, Writer, WriterSettings};
use twinlake_lake::model::FieldValue;
use twinlake_lake::{Hour, LakePath};
use twinlake_query::compact::{CompactionConfig, compact_partition};
use twinlake_query::system::NoDevices;
use twinlake_query::{Engine, FreshLimits, Lake};
use twinlake_twin::{Limits, TwinKey, TwinStore};

const T0_US: i64 = 1_451_606_400_000_000; // 2016-01-01T00:00:00Z, as TSBS
const TICK_US: i64 = 10_000_000;
const GATEWAYS: usize = 4;
const SEAL_US: i64 = 600_000_000;
const FLEETS: [&str; 4] = ["East", "West", "North", "South"];
const DRIVERS: [&str; 6] = ["Derek", "Rodney", "Albert", "Andy", "Seth", "Trish"];
const MODELS: [(&str, f64, f64, f64); 3] = [
    ("F-150", 2000.0, 200.0, 15.0),
    ("G-2000", 5000.0, 300.0, 19.0),
    ("H-2", 1500.0, 150.0, 12.0),
];
const VERSIONS: [&str; 4] = ["v1.0", "v1.5", "v2.0", "v2.3"];

struct Args {
    trucks: usize,
    hours: i64,
    runs: usize,
    smoke: bool,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let smoke = !argv.iter().any(|a| a == "--bench");
    Args {
        trucks: get("--trucks").unwrap_or(if smoke { 8 } else { 200 }),
        hours: get("--hours")
            .map(|h: usize| h as i64)
            .unwrap_or(if smoke { 2 } else { 24 }),
        runs: get("--runs").unwrap_or(if smoke { 1 } else { 5 }),
        smoke,
    }
}

struct TruckTags {
    name: String,
    fleet: &'static str,
    driver: &'static str,
    model: (&'static str, f64, f64, f64),
    version: &'static str,
}

/// Diagnostics walks: fuel_state, current_load, status.
struct Diag {
    fuel: f64,
    load: f64,
    status: f64,
}

/// Writes the `tags` table: one row per truck, at the start. Returns the files written.
fn write_tags(lake: &Path, tags: &[TruckTags], props: &parquet::file::properties::WriterProperties) -> usize {
    let mut buf = Buffer::new("gw-0", Default::default());
    let mut conflicts = Vec::new();
    for t in tags {
        let s = |v: &'static str| FieldValue::Str(Cow::Borrowed(v));
        let fields = [
            (Cow::Borrowed("fleet"), s(t.fleet)),
            (Cow::Borrowed("driver"), s(t.driver)),
            (Cow::Borrowed("model"), s(t.model.0)),
            (Cow::Borrowed("device_version"), s(t.version)),
            (Cow::Borrowed("load_capacity"), FieldValue::Float(t.model.1)),
            (Cow::Borrowed("fuel_capacity"), FieldValue::Float(t.model.2)),
            (Cow::Borrowed("nominal_fuel_consumption"), FieldValue::Float(t.model.3)),
        ];
        buf.append("tags", T0_US, Some("fleet"), &t.name, &fields, &mut conflicts);
    }
    let mut files = 0;
    for sealed in buf.seal().unwrap() {
        for (hour, batch) in sealed.hours {
            let path = LakePath::seal("tags", Hour::of(hour).unwrap(), "gw-0", 0)
                .unwrap()
                .to_string();
            let full = lake.join(&path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, file::encode(&[batch], props).unwrap()).unwrap();
            files += 1;
        }
    }
    files
}

/// Writes the readings and diagnostics tables; returns the trucks' tags and last values.
fn generate(lake: &Path, trucks: usize, hours: i64) -> (Vec<TruckTags>, Vec<(Json, Json)>, usize) {
    let mut rng = tsbs::Rng::new(123);
    let tags: Vec<TruckTags> = (0..trucks)
        .map(|i| TruckTags {
            name: format!("truck_{i}"),
            fleet: FLEETS[(rng.next_u64() % 4) as usize],
            driver: DRIVERS[(rng.next_u64() % 6) as usize],
            model: MODELS[(rng.next_u64() % 3) as usize],
            version: VERSIONS[(rng.next_u64() % 4) as usize],
        })
        .collect();
    let mut walks: Vec<tsbs::Truck> = (0..trucks).map(|_| tsbs::Truck::new(&mut rng)).collect();
    let mut diags: Vec<Diag> = (0..trucks)
        .map(|_| Diag {
            fuel: 1.0,
            load: (rng.unit() * 5000.0).round(),
            status: 0.0,
        })
        .collect();
    let props = file::writer_properties(WriterSettings::default(), Writer::Edge).unwrap();
    let mut files = write_tags(lake, &tags, &props);
    let mut last: Vec<(Json, Json)> = vec![(Json::Null, Json::Null); trucks];
    let end = T0_US + hours * 3_600_000_000;
    let mut seal = 1u64;
    let mut window = T0_US;
    while window < end {
        // One seal window: every gateway seals its trucks' rows of these ten minutes.
        let mut readings: Vec<Buffer> = (0..GATEWAYS)
            .map(|g| Buffer::new(&format!("gw-{g}"), Default::default()))
            .collect();
        let mut diagnostics: Vec<Buffer> = (0..GATEWAYS)
            .map(|g| Buffer::new(&format!("gw-{g}"), Default::default()))
            .collect();
        let mut conflicts = Vec::new();
        let mut t = window;
        while t < window + SEAL_US && t < end {
            for (i, tag) in tags.iter().enumerate() {
                let g = i % GATEWAYS;
                let r = walks[i].tick(&mut rng);
                let fields: Vec<(Cow<'_, str>, FieldValue<'_>)> = tsbs::FIELD_NAMES
                    .iter()
                    .zip(r)
                    .map(|(n, v)| (Cow::Borrowed(*n), FieldValue::Float(v)))
                    .collect();
                readings[g].append("readings", t, Some("fleet"), &tag.name, &fields, &mut conflicts);
                let d = &mut diags[i];
                d.fuel -= rng.unit() * 0.001;
                if d.fuel <= 0.0 {
                    d.fuel = 1.0;
                }
                if rng.unit() >= 0.95 {
                    d.load = (rng.unit() * 5000.0).round();
                }
                // N(0,1)-ish step from the sum of uniforms, clamped to [0, 5].
                let step = (0..4).map(|_| rng.unit()).sum::<f64>() - 2.0;
                d.status = (d.status + step).clamp(0.0, 5.0);
                let fuel = (d.fuel * 10.0).round() / 10.0;
                let status = d.status.round();
                let dfields = [
                    (Cow::Borrowed("fuel_state"), FieldValue::Float(fuel)),
                    (Cow::Borrowed("current_load"), FieldValue::Float(d.load)),
                    (Cow::Borrowed("status"), FieldValue::Float(status)),
                ];
                diagnostics[g].append("diagnostics", t, Some("fleet"), &tag.name, &dfields, &mut conflicts);
                last[i] = (
                    Json::Object(
                        tsbs::FIELD_NAMES
                            .iter()
                            .zip(r)
                            .map(|(n, v)| ((*n).to_string(), json!(v)))
                            .collect(),
                    ),
                    json!({"fuel_state": fuel, "current_load": d.load, "status": status}),
                );
            }
            t += TICK_US;
        }
        for mut buf in readings.into_iter().chain(diagnostics) {
            for sealed in buf.seal().unwrap() {
                for (hour, batch) in sealed.hours {
                    let gw = batch
                        .column_by_name("gateway")
                        .map(|c| arrow::util::display::array_value_to_string(c, 0).unwrap())
                        .unwrap();
                    let path = LakePath::seal(&sealed.table, Hour::of(hour).unwrap(), &gw, seal)
                        .unwrap()
                        .to_string();
                    let full = lake.join(&path);
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(full, file::encode(&[batch], &props).unwrap()).unwrap();
                    files += 1;
                }
            }
        }
        seal += 1;
        window += SEAL_US;
    }
    (tags, last, files)
}

/// Min, median and max of `v`.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
    (at(0), at(v.len() / 2), at(v.len().saturating_sub(1)))
}

/// The peers' process (`peers.py`): one request per line, one answer per line.
struct Peers {
    child: Option<std::process::Child>,
    out: Option<std::io::BufReader<std::process::ChildStdout>>,
    engines: Vec<String>,
}

impl Peers {
    fn start(lake: &Path) -> Self {
        let py = common::python();
        let none = Self {
            child: None,
            out: None,
            engines: Vec::new(),
        };
        if !py.exists() {
            eprintln!("no Python (.venv): peers skipped");
            return none;
        }
        let mut child = Command::new(py)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers.py"))
            .arg(lake)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let hello: Json = serde_json::from_str(&line).unwrap_or_default();
        let engines = hello["engines"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        eprintln!("peers: {engines:?}");
        Self {
            child: Some(child),
            out: Some(out),
            engines,
        }
    }

    fn has(&self, engine: &str) -> bool {
        self.engines.iter().any(|e| e == engine)
    }

    /// Runs `sql` on `engine`: (ms, rows), or why not.
    fn run(&mut self, engine: &str, sql: &str) -> Result<(f64, u64), String> {
        use std::io::{BufRead, Write};
        let (Some(child), Some(out)) = (self.child.as_mut(), self.out.as_mut()) else {
            return Err("no peers".into());
        };
        let req = json!({"engine": engine, "sql": sql}).to_string();
        writeln!(child.stdin.as_mut().unwrap(), "{req}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let a: Json = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        match (a["ms"].as_f64(), a["rows"].as_u64()) {
            (Some(ms), Some(rows)) => Ok((ms, rows)),
            _ => Err(a["error"].as_str().unwrap_or("no answer").to_owned()),
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// Runs `sql` over the Postgres wire: (ms, rows).
async fn run_pg(client: &tokio_postgres::Client, sql: &str) -> (f64, usize) {
    let t = Instant::now();
    let m = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let n = m
        .iter()
        .filter(|x| matches!(x, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    (ms, n)
}

/// One query's times in one layout: Twinlake's, and each peer's (or why it has none).
struct Timed {
    name: &'static str,
    last_point: bool,
    rows: usize,
    ours: Vec<f64>,
    peers: Vec<Result<Vec<f64>, String>>,
}

const PEERS: [(&str, queries::Dialect); 2] = [
    ("duckdb", queries::Dialect::DuckDb),
    ("chdb", queries::Dialect::ClickHouse),
];

/// Every query, one warm-up run each, then `runs` rounds in which Twinlake and each peer
/// run it in turn. A peer whose row count differs from ours is reported, not timed.
async fn measure(client: &tokio_postgres::Client, peers: &mut Peers, hours: i64, runs: usize) -> Vec<Timed> {
    let ours = queries::queries(hours, queries::Dialect::DataFusion);
    let theirs: Vec<Vec<queries::Query>> = PEERS.iter().map(|(_, d)| queries::queries(hours, *d)).collect();
    let mut out = Vec::new();
    for (i, q) in ours.iter().enumerate() {
        let (_, rows) = run_pg(client, &q.sql).await;
        let mut peer_times: Vec<Result<Vec<f64>, String>> = PEERS
            .iter()
            .zip(&theirs)
            .map(|((engine, _), qs)| {
                if !peers.has(engine) {
                    return Err("not installed".into());
                }
                match peers.run(engine, &qs[i].sql) {
                    Ok((_, n)) if n as usize == rows => Ok(Vec::new()),
                    Ok((_, n)) => Err(format!("{n} rows, ours {rows}")),
                    Err(e) => Err(e),
                }
            })
            .collect();
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(run_pg(client, &q.sql).await.0);
            for (((engine, _), qs), t) in PEERS.iter().zip(&theirs).zip(peer_times.iter_mut()) {
                if let Ok(v) = t {
                    match peers.run(engine, &qs[i].sql) {
                        Ok((ms, _)) => v.push(ms),
                        Err(e) => *t = Err(e),
                    }
                }
            }
        }
        for ((engine, _), t) in PEERS.iter().zip(&peer_times) {
            if let Err(e) = t {
                eprintln!("{}: {engine}: {e}", q.name);
            }
        }
        out.push(Timed {
            name: q.name,
            last_point: q.last_point,
            rows,
            ours: times,
            peers: peer_times,
        });
    }
    out
}

/// Prints one layout's table and the geometric means of the median ratios, scanning and
/// last-point queries apart.
fn report(title: &str, timed: &[Timed]) {
    println!("\n### {title}\n");
    println!("| query | rows | Twinlake ms (min / median / max) | DuckDB ms | ratio | chdb ms | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let cell = |v: &[f64]| {
        let (lo, med, hi) = spread(v);
        format!("{lo:.1} / **{med:.1}** / {hi:.1}")
    };
    for t in timed {
        let ours = spread(&t.ours).1;
        let mut row = format!(
            "| {}{} | {} | {} |",
            t.name,
            if t.last_point { " (twins)" } else { "" },
            t.rows,
            cell(&t.ours)
        );
        for p in &t.peers {
            match p {
                Ok(v) => row.push_str(&format!(" {} | {:.2} |", cell(v), ours / spread(v).1)),
                Err(_) => row.push_str(" - | - |"),
            }
        }
        println!("{row}");
    }
    for (last_point, what) in [(false, "scanning queries"), (true, "last-point queries")] {
        let mut means = Vec::new();
        for (k, (engine, _)) in PEERS.iter().enumerate() {
            let ratios: Vec<f64> = timed
                .iter()
                .filter(|t| t.last_point == last_point)
                .filter_map(|t| Some(spread(&t.ours).1 / spread(t.peers[k].as_ref().ok()?).1))
                .collect();
            if ratios.is_empty() {
                means.push(format!("vs {engine} -"));
            } else {
                let g = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
                means.push(format!("vs {engine} {g:.2} ({} queries)", ratios.len()));
            }
        }
        println!("\ngeometric mean of the median ratios, {what}: {}", means.join(", "));
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    std::fs::create_dir_all(&lake_dir).unwrap();
    let t = Instant::now();
    let (tags, last, files) = generate(&lake_dir, a.trucks, a.hours);
    let rows = a.trucks as i64 * a.hours * 360 * 2;
    eprintln!(
        "generated {rows} rows in {files} files ({} trucks, {} h) in {:?}",
        a.trucks,
        a.hours,
        t.elapsed()
    );
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&lake_dir).unwrap());
    let db = Arc::new(redb::Database::create(dir.path().join("cloud.redb")).unwrap());
    let lake = Lake::open(db.clone(), store, ObjectPath::from(""), FreshLimits::default()).unwrap();
    let t = Instant::now();
    let catalogued = lake.rebuild().await.unwrap();
    eprintln!("catalogued {catalogued} files from a listing in {:?}", t.elapsed());
    let twins = TwinStore::open(db, Limits::default()).unwrap();
    twins
        .write(|w| -> Result<(), twinlake_twin::TwinError> {
            for (tag, (r, d)) in tags.iter().zip(&last) {
                let key = TwinKey::new("fleet", &tag.name);
                let t = json!({"fleet": tag.fleet, "driver": tag.driver, "model": tag.model.0, "device_version": tag.version, "load_capacity": tag.model.1, "fuel_capacity": tag.model.2, "nominal_fuel_consumption": tag.model.3});
                w.create(&key, t.as_object().cloned().unwrap_or_default())?;
                w.report(&key, "readings", r.clone(), 1)?;
                w.report(&key, "diagnostics", d.clone(), 1)?;
            }
            Ok(())
        })
        .unwrap();
    let engine = Engine::new(lake.clone(), twins, Arc::new(NoDevices)).unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let pg = twinlake_query::pg::serve(
        engine.clone(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        None,
        Arc::new(|t: &str| (t == "bench").then_some(twinlake_query::pg::Access { user: None })),
        stop_rx,
    )
    .unwrap();
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=bench password=bench dbname=twinlake",
            pg.addr.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);

    let mut peers = Peers::start(&lake_dir);
    let edge = measure(&client, &mut peers, a.hours, a.runs).await;
    report(
        &format!(
            "TSBS-iot, {} trucks x {} h ({rows} rows), {files} edge files, {} runs",
            a.trucks, a.hours, a.runs
        ),
        &edge,
    );

    // The same data compacted: one file per table and hour.
    let files_before = lake.files("readings").len() + lake.files("diagnostics").len();
    let t = Instant::now();
    let cfg = CompactionConfig {
        grace: Duration::ZERO,
        ..Default::default()
    };
    for table in ["readings", "diagnostics"] {
        let hours: std::collections::BTreeSet<i64> = lake.files(table).iter().map(|f| f.hour_us).collect();
        for h in hours {
            compact_partition(&lake, table, h, &cfg).await.unwrap();
        }
    }
    let took = t.elapsed();
    // Replaced files are deleted after the (zero) grace, by a task of their own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let files_after = lake.files("readings").len() + lake.files("diagnostics").len();
    let bytes = |t: &str| lake.files(t).iter().map(|f| f.bytes).sum::<u64>();
    eprintln!("compacted {files_before} files into {files_after} in {took:.1?}");
    let compacted = measure(&client, &mut peers, a.hours, a.runs).await;
    report(
        &format!(
            "The same, compacted: {files_after} files ({} MB; compaction took {took:.1?}), {} runs",
            (bytes("readings") + bytes("diagnostics")) / 1_000_000,
            a.runs
        ),
        &compacted,
    );
    let _ = stop.send(true);
    if a.smoke {
        for t in edge.iter().chain(&compacted) {
            if let Some(Err(e)) = t.peers.first()
                && e.contains("rows")
            {
                panic!("{}: DuckDB: {e}", t.name);
            }
        }
        eprintln!("smoke run: every query answered, row counts checked against the peers installed");
    }
}
