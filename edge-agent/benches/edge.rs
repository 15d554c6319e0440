//! Edge agent benchmarks, each against a peer measured in the same run on the same data.
//!
//! `cargo bench -p twinlake-edge --bench edge [storage|ingest|memory]` prints Markdown for
//! BENCHMARKS.md. Without `--bench` (as in `cargo test --all-targets`) every section runs
//! on tiny inputs as a smoke test. The Python peers (pyarrow) and the idle-client load run
//! with `TWINLAKE_PYTHON` (scripts/test makes `.venv`), default `.venv/bin/python`.
//!
//! * storage: bytes per value of the TSBS-iot truck readings as the agent writes them,
//!   against pyarrow (zstd-3, sorted by series then time) over the same rows.
//! * ingest: simulated devices over TCP → agent → Parquet in a `file://` store, rows/s and
//!   field values/s, against the Arrow→Parquet encode of the same rows.
//! * memory: agent RSS with 1,000 and 10,000 idle connected devices (clients in another
//!   process).

// A measurement harness, not a path for untrusted input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "common.rs"]
mod common;
mod tsbs;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twinlake_edge::arrow::array::RecordBatch;
use twinlake_edge::buffer::{Buffer, Schemas};
use twinlake_edge::config::{DeviceEntry, ParquetSection};
use twinlake_edge::model::{FieldValue, flatten};
use twinlake_edge::outbox::{encode_parquet, writer_properties};
use twinlake_edge::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use twinlake_edge::parquet::basic::Encoding;
use twinlake_edge::parquet::file::properties::WriterProperties;
use twinlake_edge::registry::CredentialHash;
use twinlake_edge::{EdgeAgent, EdgeConfig};
use twinlake_sdk::frame::{Message, Signal};
use twinlake_sdk::pson::{Value, ValueRef};

const START_US: i64 = 1_451_606_400_000_000; // 2016-01-01T00:00:00Z, as TSBS

fn reading_payload(v: &[f64; 7]) -> Vec<u8> {
    Value::Object(
        tsbs::FIELD_NAMES
            .iter()
            .zip(v)
            .map(|(k, x)| ((*k).to_owned(), Value::Double(*x)))
            .collect(),
    )
    .to_bytes()
}

fn read_dir_batches(root: &Path) -> Vec<(PathBuf, Vec<RecordBatch>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let r = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap()).unwrap();
                out.push((p, r.build().unwrap().map(|b| b.unwrap()).collect()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

// ---------------------------------------------------------------- storage

fn storage(full: bool) {
    let (trucks, ticks) = if full { (500, 8640) } else { (5, 60) };
    let mut rng = tsbs::Rng::new(123);
    let mut fleet: Vec<tsbs::Truck> = (0..trucks).map(|_| tsbs::Truck::new(&mut rng)).collect();
    let names: Vec<String> = (0..trucks).map(|i| format!("truck_{i}")).collect();
    let mut buffer = Buffer::new("gw", Schemas::new());
    let mut conflicts = Vec::new();
    for t in 0..ticks {
        for (i, truck) in fleet.iter_mut().enumerate() {
            let payload = reading_payload(&truck.tick(&mut rng));
            let mut fields: Vec<(Cow<'_, str>, FieldValue<'_>)> = Vec::new();
            flatten(ValueRef::decode(&payload).unwrap(), false, &mut fields);
            buffer.append(
                "readings",
                START_US + t as i64 * 10_000_000,
                &names[i],
                &fields,
                &mut conflicts,
            );
        }
    }
    let values = (trucks * ticks * 7) as f64;
    let sealed = buffer.seal().unwrap();
    let hours: Vec<&RecordBatch> = sealed[0].hours.iter().map(|(_, b)| b).collect();

    let dir = tempfile::tempdir().unwrap();
    let ours = writer_properties(&ParquetSection::default()).unwrap();
    let variants: Vec<(&str, WriterProperties)> = vec![
        ("twinlake (zstd-3, 64 KiB dictionary limit, delta time)", ours.clone()),
        (
            "twinlake, zstd-9",
            writer_properties(&ParquetSection {
                zstd_level: 9,
                ..ParquetSection::default()
            })
            .unwrap(),
        ),
        (
            "twinlake, parquet's 1 MiB dictionary limit",
            WriterProperties::into_builder(ours.clone())
                .set_dictionary_page_size_limit(1 << 20)
                .build(),
        ),
        ("twinlake, BYTE_STREAM_SPLIT floats", {
            let mut b = WriterProperties::into_builder(ours.clone());
            for f in tsbs::FIELD_NAMES {
                b = b
                    .set_column_dictionary_enabled(f.into(), false)
                    .set_column_encoding(f.into(), Encoding::BYTE_STREAM_SPLIT);
            }
            b.build()
        }),
    ];
    println!("\n### Bytes per value: TSBS-iot readings, {trucks} trucks × {ticks} ticks of 10 s, 7 float fields\n");
    println!("| writer | layout | bytes | B/value |");
    println!("|---|---|---:|---:|");
    for (name, props) in &variants {
        let mut total = 0usize;
        for (h, b) in hours.iter().enumerate() {
            let bytes = encode_parquet(std::slice::from_ref(*b), props).unwrap();
            total += bytes.len();
            if std::ptr::eq(props, &variants[0].1) {
                let p = dir.path().join(format!("readings/hour={h:02}/part.parquet"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, bytes).unwrap();
            }
        }
        println!(
            "| {name} | {} hourly files | {total} | {:.3} |",
            hours.len(),
            total as f64 / values
        );
    }
    // The peer, over the very same rows.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pyarrow_storage.py");
    match Command::new(common::python())
        .arg(script)
        .arg(dir.path().join("readings"))
        .output()
    {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut parts = line.split('\t');
                let (Some(name), Some(layout), Some(bytes)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let bytes: f64 = bytes.parse().unwrap();
                println!("| {name} | {layout} | {bytes} | {:.3} |", bytes / values);
            }
        }
        Ok(out) => println!("\n(pyarrow peer failed: {})", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("\n(pyarrow peer not run: {e}; run scripts/test once to make .venv)"),
    }
}

// ---------------------------------------------------------------- ingest

/// One AUTH plus `n` BUCKET_DATA frames of TSBS readings, pre-encoded.
fn device_stream(user: &str, device: &str, n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let auth = Message::auth(user, device, "k").to_frame();
    let mut rng = tsbs::Rng::new(seed);
    let mut truck = tsbs::Truck::new(&mut rng);
    let mut out = Vec::with_capacity(n * 140);
    for _ in 0..n {
        let v = truck.tick(&mut rng);
        let payload = Value::Object(
            tsbs::FIELD_NAMES
                .iter()
                .zip(v)
                .map(|(k, x)| ((*k).to_owned(), Value::Double(x)))
                .collect(),
        );
        out.extend_from_slice(
            &Message::new(0, Signal::BucketData)
                .with_identifier("readings")
                .with_payload(payload)
                .to_frame(),
        );
    }
    (auth, out)
}

fn edge_config(dir: &Path, devices: usize) -> EdgeConfig {
    let hash = CredentialHash::new("k", 1000).to_string();
    let mut c = EdgeConfig {
        gateway: "gw-bench".into(),
        data_dir: dir.join("data"),
        ..EdgeConfig::default()
    };
    c.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.listener.request_timeout = Duration::from_secs(1);
    c.metrics.addr = None;
    c.upload.url = format!("file://{}", dir.join("lake").display());
    c.streams.default_interval = Duration::from_secs(3600);
    c.streams.inputs = false;
    c.devices = (0..devices)
        .map(|i| DeviceEntry {
            user: "bench".into(),
            device: format!("dev-{i}"),
            credential_hash: hash.clone(),
            properties: Default::default(),
        })
        .collect();
    c
}

fn ingest(full: bool) {
    let (devices, per_device) = if full { (50, 20_000) } else { (2, 100) };
    let rows = devices * per_device;
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<(Vec<u8>, Vec<u8>)> = (0..devices)
        .map(|i| device_stream("bench", &format!("dev-{i}"), per_device, i as u64 + 1))
        .collect();
    let wire_bytes: usize = streams.iter().map(|s| s.1.len()).sum();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (accepted, total, lake_rows) = rt.block_on(async {
        let agent = EdgeAgent::start(edge_config(dir.path(), devices)).await.unwrap();
        let addr = agent.tcp_addr().unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        let mut senders = Vec::new();
        for (auth, frames) in streams {
            senders.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(&auth).await.unwrap();
                let mut ok = [0u8; 4];
                s.read_exact(&mut ok).await.unwrap();
                for chunk in frames.chunks(64 << 10) {
                    s.write_all(chunk).await.unwrap();
                }
                // Stay connected until the agent has everything.
                s
            }));
        }
        let mut socks = Vec::new();
        for s in senders {
            socks.push(s.await.unwrap());
        }
        while metrics.rows_in.get() < rows as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let accepted = started.elapsed();
        drop(socks);
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        let total = started.elapsed();
        let lake = read_dir_batches(&dir.path().join("lake"));
        let lake_rows: usize = lake.iter().flat_map(|(_, b)| b).map(|b| b.num_rows()).sum();
        (accepted, total, (lake_rows, lake))
    });
    let (lake_rows, lake) = lake_rows;
    assert_eq!(lake_rows, rows, "every row reached the lake");
    let values = rows * 7;

    // The encode limit: the same rows, Arrow → Parquet with the same settings, nothing else.
    let props = writer_properties(&ParquetSection::default()).unwrap();
    let batches: Vec<Vec<RecordBatch>> = lake.into_iter().map(|(_, b)| b).collect();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for b in &batches {
            std::hint::black_box(encode_parquet(b, &props).unwrap());
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let e2e = total.as_secs_f64();
    println!(
        "\n### End-to-end ingest: {devices} devices over TCP, {per_device} BUCKET_DATA each (TSBS readings, 7 floats), {:.1} MB on the wire\n",
        wire_bytes as f64 / 1e6
    );
    println!("| measure | seconds | rows/s | field values/s |");
    println!("|---|---:|---:|---:|");
    let line = |name: &str, s: f64| {
        println!(
            "| {name} | {s:.3} | {:.0} | {:.0} |",
            rows as f64 / s,
            values as f64 / s
        )
    };
    line("accepted (durable in the WAL)", accepted.as_secs_f64());
    line("end to end (sealed, uploaded, agent stopped)", e2e);
    line("Arrow→Parquet encode limit, same rows and settings", best);
    println!("\nratio end-to-end ÷ encode limit: {:.2}", best / e2e);
}

// ---------------------------------------------------------------- memory

fn memory(full: bool) {
    let counts: &[usize] = if full { &[1000, 10_000] } else { &[20] };
    println!("\n### Agent memory with idle connected devices (clients in another process)\n");
    println!("| devices | RSS before | RSS connected | per device |");
    println!("|---:|---:|---:|---:|");
    for &n in counts {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..n).map(|i| format!("dev-{i}")).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (before, after) = rt.block_on(async {
            let mut cfg = edge_config(dir.path(), n);
            cfg.listener.idle_timeout = Duration::from_secs(600);
            let agent = EdgeAgent::start(cfg).await.unwrap();
            let addr = agent.tcp_addr().unwrap();
            let metrics = agent.metrics();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let run = tokio::spawn(agent.run(async move {
                let _ = stopped.await;
            }));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = common::rss_bytes();
            let mut child = common::idle_clients(dir.path(), &addr.to_string(), "bench", &names, "k");
            while metrics.devices_connected.get() < n as i64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Let the on-connect describe requests time out (the clients never answer).
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let after = common::rss_bytes();
            drop(child.stdin.take());
            let _ = child.wait();
            let _ = stop.send(());
            let _ = run.await;
            (before, after)
        });
        common::memory_row(n, before, after);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    if !full {
        // Under `cargo test --all-targets`: the Rust side on tiny inputs, as a smoke test.
        storage(false);
        ingest(false);
        return;
    }
    let picked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let run = |name: &str| picked.is_empty() || picked.contains(&name);
    if run("storage") {
        storage(true);
    }
    if run("ingest") {
        ingest(true);
    }
    if run("memory") {
        memory(true);
    }
}
