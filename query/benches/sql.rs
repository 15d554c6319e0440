//! SQL benchmarks (BENCHMARKS.md, "SQL"): TSBS-iot queries end to end over the Postgres wire,
//! against DuckDB (and chdb when installed) reading the same Parquet files in the same run;
//! and query time against file count, before and after compaction.
//!
//! The truck data (../shared/specs/tsbs-iot.md) is written by the edge's own buffer and
//! Parquet writer (the code an agent seals with), as several gateways sealing every ten
//! minutes would: many small files per hour partition. Tags live on the twins, and the
//! twins hold each truck's last readings, so the last-point queries are answered from them.
//!
//! `cargo bench -p twinlake-query --bench sql -- [--trucks N] [--hours H] [--runs R]`
//! Under `cargo test --all-targets` it runs a tiny smoke version that checks the queries.

// Bench code: a failed expectation should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../../edge-agent/benches/common.rs"]
#[allow(dead_code)]
mod common;
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
    let mut last: Vec<(Json, Json)> = vec![(Json::Null, Json::Null); trucks];
    let mut files = 0;
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

/// The queries, ported: (name, ours, peer). Window starts are fixed (seeded, as TSBS picks
/// them) so every engine answers the same question.
fn queries(hours: i64) -> Vec<(&'static str, String, String)> {
    let ts = |us: i64| {
        let secs = us / 1_000_000;
        format!("to_timestamp({secs})")
    };
    let h = |k: i64| T0_US + k * 3_600_000_000;
    let mid = h(hours / 2);
    let w10 = (ts(mid), ts(mid + 600_000_000));
    let w4h = (ts(h((hours - 4).max(0))), ts(h((hours - 4).max(0)) + 4 * 3_600_000_000));
    let day = (ts(h(0)), ts(h(hours.min(24))));
    let names = "'truck_1', 'truck_3', 'truck_5', 'truck_7'";
    // Our tags come from the twins; DuckDB's from a tags file with the same values.
    let ours_tags = "(SELECT device AS name, json_get_str(tags, 'fleet') AS fleet, json_get_str(tags, 'driver') AS driver, json_get_str(tags, 'model') AS model, json_get_float(tags, 'load_capacity') AS load_capacity, json_get_float(tags, 'nominal_fuel_consumption') AS nominal_fuel_consumption FROM twins)";
    let peer_tags = "tags";
    let both = |f: &dyn Fn(&str, &str) -> String| (f(ours_tags, "readings"), f(peer_tags, "readings"));
    let mut q: Vec<(&'static str, String, String)> = Vec::new();
    q.push((
        "single-last-loc",
        format!("SELECT device AS name, json_get_float(reported, 'readings', 'latitude') AS latitude, json_get_float(reported, 'readings', 'longitude') AS longitude FROM twins WHERE device IN ({names}) ORDER BY 1"),
        format!("SELECT device AS name, arg_max(latitude, time) AS latitude, arg_max(longitude, time) AS longitude FROM readings WHERE device IN ({names}) GROUP BY 1 ORDER BY 1"),
    ));
    q.push((
        "last-loc",
        "SELECT device AS name, json_get_float(reported, 'readings', 'latitude') AS latitude, json_get_float(reported, 'readings', 'longitude') AS longitude FROM twins WHERE json_get_str(tags, 'fleet') = 'South' ORDER BY 1".into(),
        "SELECT r.device AS name, arg_max(latitude, time) AS latitude, arg_max(longitude, time) AS longitude FROM readings r JOIN tags t ON t.name = r.device WHERE t.fleet = 'South' GROUP BY 1 ORDER BY 1".into(),
    ));
    q.push((
        "low-fuel",
        "SELECT device AS name, json_get_float(reported, 'diagnostics', 'fuel_state') AS fuel_state FROM twins WHERE json_get_str(tags, 'fleet') = 'South' AND json_get_float(reported, 'diagnostics', 'fuel_state') < 0.1 ORDER BY 1".into(),
        "SELECT * FROM (SELECT d.device AS name, arg_max(fuel_state, time) AS fuel_state FROM diagnostics d JOIN tags t ON t.name = d.device WHERE t.fleet = 'South' GROUP BY 1) WHERE fuel_state < 0.1 ORDER BY 1".into(),
    ));
    q.push((
        "high-load",
        "SELECT device AS name, json_get_float(reported, 'diagnostics', 'current_load') AS current_load FROM twins WHERE json_get_str(tags, 'fleet') = 'South' AND json_get_float(reported, 'diagnostics', 'current_load') / json_get_float(tags, 'load_capacity') > 0.9 ORDER BY 1".into(),
        "SELECT * FROM (SELECT d.device AS name, arg_max(current_load, time) AS current_load, any_value(t.load_capacity) AS cap FROM diagnostics d JOIN tags t ON t.name = d.device WHERE t.fleet = 'South' GROUP BY 1) WHERE current_load / cap > 0.9 ORDER BY 1".into(),
    ));
    let (a, b) = both(&|tags, r| {
        format!(
            "SELECT t.name, t.driver, avg(r.velocity) AS mean_velocity FROM {r} r JOIN {tags} t ON t.name = r.device WHERE t.fleet = 'West' AND r.time >= {} AND r.time < {} GROUP BY 1, 2 HAVING avg(r.velocity) < 1 ORDER BY 1",
            w10.0, w10.1
        )
    });
    q.push(("stationary-trucks", a, b));
    let sessions = |tags: &str, r: &str, w: &(String, String), min: i64| {
        format!(
            "SELECT t.name, t.driver FROM {tags} t JOIN (SELECT device, count(*) AS ten_min FROM (SELECT device, date_bin(interval '10 minutes', time) AS ten_minutes, avg(velocity) AS v FROM {r} WHERE time >= {} AND time < {} GROUP BY 1, 2) x WHERE v > 1 GROUP BY device) s ON s.device = t.name WHERE t.fleet = 'West' AND s.ten_min > {min} ORDER BY 1",
            w.0, w.1
        )
    };
    q.push((
        "long-driving-sessions",
        sessions(ours_tags, "readings", &w4h, 22),
        sessions(peer_tags, "readings", &w4h, 22),
    ));
    q.push((
        "long-daily-sessions",
        sessions(ours_tags, "readings", &day, 60),
        sessions(peer_tags, "readings", &day, 60),
    ));
    let (a, b) = both(&|tags, r| {
        format!(
            "SELECT t.fleet, avg(r.fuel_consumption) AS avg_fuel_consumption, avg(t.nominal_fuel_consumption) AS projected_fuel_consumption FROM {r} r JOIN {tags} t ON t.name = r.device WHERE r.velocity > 1 GROUP BY 1 ORDER BY 1"
        )
    });
    q.push(("avg-vs-projected-fuel-consumption", a, b));
    let (a, b) = both(&|tags, r| {
        format!(
            "SELECT t.fleet, t.name, t.driver, avg(d.hours_driven) AS avg_daily_hours FROM (SELECT device, date_bin(interval '1 day', ten_minutes) AS day, count(*) / 6.0 AS hours_driven FROM (SELECT device, date_bin(interval '10 minutes', time) AS ten_minutes, avg(velocity) AS v FROM {r} GROUP BY 1, 2) x WHERE v > 1 GROUP BY 1, 2) d JOIN {tags} t ON t.name = d.device GROUP BY 1, 2, 3 ORDER BY 1, 2"
        )
    });
    q.push(("avg-daily-driving-duration", a, b));
    let (a, b) = (
        format!(
            "SELECT t.fleet, t.model, t.load_capacity, avg(d.current_load / t.load_capacity) AS avg_load_percentage FROM diagnostics d JOIN {ours_tags} t ON t.name = d.device GROUP BY 1, 2, 3 ORDER BY 1, 2"
        ),
        format!(
            "SELECT t.fleet, t.model, t.load_capacity, avg(d.current_load / t.load_capacity) AS avg_load_percentage FROM diagnostics d JOIN {peer_tags} t ON t.name = d.device GROUP BY 1, 2, 3 ORDER BY 1, 2"
        ),
    );
    q.push(("avg-load", a, b));
    let activity = |tags: &str| {
        format!(
            "SELECT t.fleet, t.model, y.day, sum(y.active) / 144.0 AS daily_activity FROM (SELECT device, date_bin(interval '1 day', ten_minutes) AS day, count(*) AS active FROM (SELECT device, date_bin(interval '10 minutes', time) AS ten_minutes, avg(status) AS s FROM diagnostics GROUP BY 1, 2) x WHERE s < 1 GROUP BY 1, 2) y JOIN {tags} t ON t.name = y.device GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
    };
    q.push(("daily-activity", activity(ours_tags), activity(peer_tags)));
    let breakdown = |tags: &str| {
        format!(
            "SELECT t.model, count(*) AS breakdowns FROM (SELECT device, broken, lead(broken) OVER (PARTITION BY device ORDER BY ten_minutes) AS next FROM (SELECT device, date_bin(interval '10 minutes', time) AS ten_minutes, count(*) FILTER (WHERE status = 0) < 0.5 * count(*) AS broken FROM diagnostics GROUP BY 1, 2) x) z JOIN {tags} t ON t.name = z.device WHERE NOT z.broken AND z.next GROUP BY 1 ORDER BY 1"
        )
    };
    q.push(("breakdown-frequency", breakdown(ours_tags), breakdown(peer_tags)));
    q
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times the peers over the same files: `{engine: {query: ms}}`.
fn peers(lake: &Path, tags_file: &Path, queries: &[(&str, String, String)], runs: usize) -> Json {
    let py = common::python();
    if !py.exists() {
        eprintln!("no Python with duckdb (.venv): peers skipped");
        return json!({});
    }
    // DuckDB's name for date_bin (its buckets also align to the epoch for these intervals).
    let peer_sql = |q: &str| q.replace("date_bin(", "time_bucket(");
    let spec = json!({
        "lake": lake,
        "tags": tags_file,
        "runs": runs,
        "queries": queries.iter().map(|(n, _, p)| json!({"name": n, "sql": peer_sql(p)})).collect::<Vec<_>>(),
    });
    let spec_file = lake.parent().unwrap().join("peers.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers.py"))
        .arg(&spec_file)
        .output()
        .unwrap();
    if !out.status.success() {
        panic!("peers.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Times `sql` over the Postgres wire: median of `runs` (after one warm-up); and the rows.
async fn time_pg(client: &tokio_postgres::Client, sql: &str, runs: usize) -> (f64, usize) {
    let rows = |m: Vec<tokio_postgres::SimpleQueryMessage>| {
        m.iter()
            .filter(|x| matches!(x, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count()
    };
    let n = rows(client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")));
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let _ = client.simple_query(sql).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(ms), n)
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
    // Tags for the peers, as a Parquet-free CSV (DuckDB reads it as a table).
    let tags_file = dir.path().join("tags.csv");
    let mut csv =
        String::from("name,fleet,driver,model,device_version,load_capacity,fuel_capacity,nominal_fuel_consumption\n");
    for t in &tags {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            t.name, t.fleet, t.driver, t.model.0, t.version, t.model.1, t.model.2, t.model.3
        ));
    }
    std::fs::write(&tags_file, csv).unwrap();

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

    let qs = queries(a.hours);
    let peer = peers(&lake_dir, &tags_file, &qs, a.runs);
    println!(
        "\n## TSBS-iot, {} trucks x {} h ({rows} rows, {files} edge files), median of {} runs\n",
        a.trucks, a.hours, a.runs
    );
    println!("| query | rows | Twinlake over pgwire (ms) | DuckDB (ms) | ratio | chdb (ms) | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let (mut log_duck, mut log_ch, mut n_duck, mut n_ch) = (0.0, 0.0, 0, 0);
    for (name, ours, _) in &qs {
        let (ms, n) = time_pg(&client, ours, a.runs).await;
        let d = peer["duckdb"][name]["ms"].as_f64();
        let dn = peer["duckdb"][name]["rows"].as_u64();
        if let Some(dn) = dn {
            assert_eq!(n as u64, dn, "{name}: we return {n} rows, DuckDB {dn}");
        }
        let c = peer["chdb"][name]["ms"].as_f64();
        let fmt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = |x: Option<f64>| x.map_or("-".into(), |v| format!("{:.2}", ms / v));
        if let Some(d) = d {
            log_duck += (ms / d).ln();
            n_duck += 1;
        }
        if let Some(c) = c {
            log_ch += (ms / c).ln();
            n_ch += 1;
        }
        println!(
            "| {name} | {n} | {ms:.1} | {} | {} | {} | {} |",
            fmt(d),
            ratio(d),
            fmt(c),
            ratio(c)
        );
    }
    let geo = |s: f64, n: i32| {
        if n > 0 {
            format!("{:.2}", (s / n as f64).exp())
        } else {
            "-".into()
        }
    };
    println!(
        "\ngeometric mean of the ratios: vs DuckDB {} ({n_duck} queries), vs chdb {} ({n_ch} queries)",
        geo(log_duck, n_duck),
        geo(log_ch, n_ch)
    );

    // Query time against file count: the same queries before and after compaction.
    let probes: Vec<&(&str, String, String)> = qs
        .iter()
        .filter(|(n, _, _)| {
            matches!(
                *n,
                "stationary-trucks" | "avg-vs-projected-fuel-consumption" | "avg-load"
            )
        })
        .collect();
    let mut before = Vec::new();
    for (_, sql, _) in &probes {
        before.push(time_pg(&client, sql, a.runs).await.0);
    }
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
    tokio::time::sleep(Duration::from_millis(50)).await;
    let files_after = lake.files("readings").len() + lake.files("diagnostics").len();
    let bytes = |t: &str| lake.files(t).iter().map(|f| f.bytes).sum::<u64>();
    println!(
        "\n## Query time against file count (compaction of {files_before} → {files_after} files took {took:.1?}; {} MB after)\n",
        (bytes("readings") + bytes("diagnostics")) / 1_000_000
    );
    println!("| query | {files_before} files (ms) | {files_after} files (ms) | DuckDB, {files_before} files (ms) |");
    println!("|---|---:|---:|---:|");
    for ((name, sql, _), b) in probes.iter().zip(before) {
        let (after, _) = time_pg(&client, sql, a.runs).await;
        let d = peer["duckdb"][*name]["ms"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1}"));
        println!("| {name} | {b:.1} | {after:.1} | {d} |");
    }
    let _ = stop.send(true);
    if a.smoke {
        eprintln!("smoke run: every query answered, row counts match DuckDB's");
    }
}
