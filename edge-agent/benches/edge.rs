//! Edge agent benchmarks, each against a peer measured in the same run on the same data.
//!
//! `cargo bench -p twinlake-edge --bench edge [storage|ingest|mqtt|lorawan|http|coap|rules]` prints Markdown for
//! BENCHMARKS.md. Without `--bench` (as in `cargo test --all-targets`) every section runs
//! on tiny inputs as a smoke test. The Python peers (pyarrow) and the idle-client load run
//! with `TWINLAKE_PYTHON` (scripts/test makes `.venv`), default `.venv/bin/python`.
//!
//! * storage: bytes per value of the TSBS-iot truck readings as the agent writes them,
//!   against pyarrow (zstd-3, sorted by series then time) over the same rows.
//! * ingest: simulated devices over TCP → agent → Parquet in a `file://` store, rows/s and
//!   field values/s, against the Arrow→Parquet encode of the same rows.
//! * memory per idle device: its own harness, `--bench idle` (benches/idle.rs).
//! * mqtt: a backlog of QoS 1 JSON readings queued in a real Mosquitto for a persistent
//!   session, drained by the agent into Parquet, against the same backlog drained by
//!   `mosquitto_sub` (QoS 1, output discarded): Mosquitto's own delivery rate.
//!   `BENCH_N` sets the backlog (200,000), `BENCH_WINDOW` the agent's `mqtt.max_inflight`.
//! * lorawan: ABP uplinks (Cayenne LPP) as GWMP datagrams over UDP, checked, decrypted,
//!   decoded and persisted, against the raw decode limit (MIC check, decryption and Cayenne
//!   decode of the same frames in a loop).
//! * http: HTTP device API telemetry requests/s into the lake against its no-op
//!   authenticated route, in the same run ([`http_device`]).
//! * coap: Confirmable POSTs/s into the lake against a UDP echo floor, in the same run
//!   ([`coap_device`]).

// A measurement harness, not a path for untrusted input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod coap_device;
#[allow(dead_code)]
#[path = "common.rs"]
mod common;
mod config;
mod gateway_rule;
mod http_device;
#[allow(dead_code)]
#[path = "../tests/it/mosquitto.rs"]
mod mosquitto;
mod tsbs;

pub use config::edge_config;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twinlake_edge::EdgeAgent;
use twinlake_edge::arrow::array::RecordBatch;
use twinlake_edge::config::ParquetSection;
use twinlake_edge::lake::buffer::{Buffer, Schemas};
use twinlake_edge::lake::file::encode as encode_parquet;
use twinlake_edge::lake::model::{FieldValue, flatten};
use twinlake_edge::outbox::writer_properties;
use twinlake_edge::parquet::arrow::ArrowWriter;
use twinlake_edge::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use twinlake_edge::parquet::basic::Encoding;
use twinlake_edge::parquet::file::metadata::ParquetMetaDataReader;
use twinlake_edge::parquet::file::properties::WriterProperties;
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

/// The readings of `trucks` trucks over `ticks` ticks of 10 s, through the agent's path
/// (PSON payload → flatten → Arrow buffer → seal): one batch per hour. With `jitter`, each
/// reading's time is its tick plus up to ±200 ms, in whole milliseconds, as devices' clocks
/// and networks make them.
fn sealed_readings(trucks: usize, ticks: usize, jitter: bool) -> Vec<RecordBatch> {
    let mut rng = tsbs::Rng::new(123);
    let mut fleet: Vec<tsbs::Truck> = (0..trucks).map(|_| tsbs::Truck::new(&mut rng)).collect();
    let names: Vec<String> = (0..trucks).map(|i| format!("truck_{i}")).collect();
    let mut jitter_rng = tsbs::Rng::new(7);
    let mut buffer = Buffer::new("gw", Schemas::new());
    let mut conflicts = Vec::new();
    for t in 0..ticks {
        for (i, truck) in fleet.iter_mut().enumerate() {
            let payload = reading_payload(&truck.tick(&mut rng));
            let mut fields: Vec<(Cow<'_, str>, FieldValue<'_>)> = Vec::new();
            flatten(ValueRef::decode(&payload).unwrap(), false, &mut fields);
            let off_ms = if jitter {
                (jitter_rng.unit() * 400.0).round() as i64 - 200
            } else {
                0
            };
            buffer.append(
                "readings",
                START_US + t as i64 * 10_000_000 + off_ms * 1000,
                Some("fleet"),
                &names[i],
                &fields,
                &mut conflicts,
            );
        }
    }
    let mut sealed = buffer.seal().unwrap();
    sealed.remove(0).hours.into_iter().map(|(_, b)| b).collect()
}

/// A file whose float columns fall back to `fallback` past the dictionary limit (the
/// agent's writer falls back to PLAIN).
fn encode_with_fallback(batch: &RecordBatch, props: &WriterProperties, fallback: Encoding) -> Vec<u8> {
    let mut b = WriterProperties::into_builder(props.clone());
    for f in tsbs::FIELD_NAMES {
        b = b.set_column_encoding(f.into(), fallback);
    }
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(b.build())).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    out
}

/// Compressed bytes per column of `file`, added to `into` (in schema order).
fn column_bytes(file: Vec<u8>, into: &mut Vec<(String, i64)>) {
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(file))
        .unwrap();
    for rg in meta.row_groups() {
        for c in rg.columns() {
            let name = c.column_path().string();
            match into.iter_mut().find(|(n, _)| *n == name) {
                Some((_, n)) => *n += c.compressed_size(),
                None => into.push((name, c.compressed_size())),
            }
        }
    }
}

/// The hours as one day file (the cloud's day tier: sorted by owner, device, time, exact
/// narrower types), at `zstd_level`: its bytes and bytes per column.
fn day_file(hours: &[RecordBatch], zstd_level: i32) -> (usize, Vec<(String, i64)>) {
    use twinlake_edge::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
    let all = concat_batches(&hours[0].schema(), hours).unwrap();
    let sort: Vec<SortColumn> = ["owner", "device", "time"]
        .iter()
        .map(|c| SortColumn {
            values: all.column_by_name(c).unwrap().clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(&all, &lexsort_to_indices(&sort, None).unwrap()).unwrap();
    let settings = twinlake_edge::lake::file::WriterSettings {
        zstd_level,
        ..Default::default()
    };
    let bytes = twinlake_edge::lake::dense::encode_day(&sorted, settings, hours.len()).unwrap();
    let mut cols = Vec::new();
    let n = bytes.len();
    column_bytes(bytes, &mut cols);
    (n, cols)
}

fn storage(full: bool) {
    let (trucks, ticks) = if full { (500, 8640) } else { (5, 60) };
    let values = (trucks * ticks * 7) as f64;
    let ours = writer_properties(&ParquetSection::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut per_column: Vec<(&str, Vec<(String, i64)>)> = Vec::new();
    for (data, jitter) in [("10 s ticks", false), ("arrival times (ms, ±200 ms jitter)", true)] {
        let hours = sealed_readings(trucks, ticks, jitter);
        let variants: Vec<(&str, WriterProperties)> = vec![
            (
                "twinlake (zstd-3, 64 KiB dictionaries, PLAIN fallback, delta time)",
                ours.clone(),
            ),
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
            ("twinlake, BYTE_STREAM_SPLIT floats without dictionaries", {
                let mut b = WriterProperties::into_builder(ours.clone());
                for f in tsbs::FIELD_NAMES {
                    b = b.set_column_dictionary_enabled(f.into(), false);
                }
                b.build()
            }),
        ];
        println!(
            "\n### Bytes per value: TSBS-iot readings, {trucks} trucks × {ticks} ticks of 10 s, 7 float fields, {data}\n"
        );
        println!("| writer | layout | bytes | B/value |");
        println!("|---|---|---:|---:|");
        let row = |name: &str, total: usize| {
            println!(
                "| {name} | {} hourly files | {total} | {:.3} |",
                hours.len(),
                total as f64 / values
            );
        };
        let mut bss = Vec::new();
        let total: usize = hours
            .iter()
            .map(|b| {
                let f = encode_with_fallback(b, &ours, Encoding::BYTE_STREAM_SPLIT);
                let n = f.len();
                column_bytes(f, &mut bss);
                n
            })
            .sum();
        let total_bss = total;
        for (i, (name, props)) in variants.iter().enumerate() {
            let mut after = Vec::new();
            let mut total = 0usize;
            for (h, b) in hours.iter().enumerate() {
                let bytes = encode_parquet(std::slice::from_ref(b), props).unwrap();
                total += bytes.len();
                if i == 0 && jitter {
                    let p = dir.path().join(format!("readings/hour={h:02}/part.parquet"));
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, &bytes).unwrap();
                }
                if i == 0 {
                    column_bytes(bytes, &mut after);
                }
            }
            row(name, total);
            if i == 0 {
                row("twinlake, BYTE_STREAM_SPLIT fallback for floats", total_bss);
            }
            if i == 0 && jitter {
                per_column.push(("hour files (the agent's)", after));
                per_column.push(("BYTE_STREAM_SPLIT fallback", std::mem::take(&mut bss)));
            }
        }
        for level in [3, 9] {
            let (total, cols) = day_file(&hours, level);
            println!(
                "| twinlake day tier (zstd-{level}, exact decimals and ms times, delta) | one day file | {total} | {:.3} |",
                total as f64 / values
            );
            if level == 3 && jitter {
                per_column.push(("day file (zstd-3)", cols));
            }
        }
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
    if let [(b_name, b), (a_name, a), (d_name, d)] = per_column.as_slice() {
        println!("\n#### Bytes per column, arrival times\n");
        println!("| column | {b_name} | B/row | {a_name} | B/row | {d_name} | B/row |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let rows = (trucks * ticks) as f64;
        for (((name, x), (_, y)), (_, z)) in b.iter().zip(a).zip(d) {
            println!(
                "| {name} | {x} | {:.3} | {y} | {:.3} | {z} | {:.3} |",
                *x as f64 / rows,
                *y as f64 / rows,
                *z as f64 / rows
            );
        }
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
        let payload = tsbs::pson(v);
        out.extend_from_slice(
            &Message::new(0, Signal::BucketData)
                .with_identifier("readings")
                .with_payload(payload)
                .to_frame(),
        );
    }
    (auth, out)
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

// ---------------------------------------------------------------- mqtt

/// Runs `mosquitto_sub` on the session `id`; with `count`, until that many messages came.
fn mosquitto_sub(port: u16, id: &str, count: Option<usize>) -> std::process::ExitStatus {
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-c",
        "-i",
        id,
        "-t",
        "trucks/#",
    ]);
    c.args(["-x", "604800"]);
    match count {
        Some(n) => c.args(["-C", &n.to_string()]),
        None => c.args(["-W", "1"]),
    };
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
}

fn mqtt(full: bool) {
    use twinlake_edge::config::MqttSubscription;
    let n: usize = if full {
        std::env::var("BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000)
    } else {
        300
    };
    let broker = mosquitto::Mosquitto::start(0);
    let lines: Vec<String> = (0..n).map(http_device::reading).collect();
    let publish = |lines: &[String]| {
        // One publisher per truck topic group, so topics carry the device.
        let per = lines.len().div_ceil(10);
        for (t, chunk) in lines.chunks(per).enumerate() {
            mosquitto::publish_lines(broker.port, &format!("trucks/truck-{t}/readings"), 1, chunk);
        }
    };

    // The peer: Mosquitto delivering the backlog to mosquitto_sub.
    let _ = mosquitto_sub(broker.port, "bench-sub", None);
    publish(&lines);
    let t = Instant::now();
    assert!(mosquitto_sub(broker.port, "bench-sub", Some(n)).success());
    let peer = t.elapsed().as_secs_f64();

    // The agent on the same backlog.
    let dir = tempfile::tempdir().unwrap();
    let mut c = edge_config(dir.path(), 0);
    c.listener.tcp = None;
    c.mqtt.url = format!("mqtt://127.0.0.1:{}", broker.port);
    c.mqtt.client_id = "bench-edge".into();
    if let Ok(v) = std::env::var("BENCH_WINDOW") {
        c.mqtt.max_inflight = v.parse().unwrap();
    }
    c.mqtt.subscriptions = vec![toml::from_str::<MqttSubscription>("topic = \"trucks/{device}/{resource}\"").unwrap()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (accepted, total) = rt.block_on(async {
        // A first run makes the session at the broker; then the backlog is queued.
        let agent = EdgeAgent::start(c.clone()).await.unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        while metrics.rows_in.get() == 0 {
            mosquitto::publish_lines(broker.port, "trucks/probe/probe", 1, &lines[..1]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        tokio::task::block_in_place(|| publish(&lines));

        let agent = EdgeAgent::start(c).await.unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t = Instant::now();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        while metrics.rows_in.get() < n as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let accepted = t.elapsed().as_secs_f64();
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        (accepted, t.elapsed().as_secs_f64())
    });
    let lake = read_dir_batches(&dir.path().join("lake"));
    let lake_rows: usize = lake.iter().flat_map(|(_, b)| b).map(|b| b.num_rows()).sum();
    // The probe rows of the first run are there too.
    let probes = lake
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("probe"))
        .flat_map(|(_, b)| b)
        .map(|b| b.num_rows())
        .sum::<usize>();
    assert_eq!(lake_rows - probes, n, "every message reached the lake once");
    println!("\n### MQTT ingest: a backlog of {n} QoS 1 JSON readings (7 numbers) in Mosquitto, drained\n");
    println!("| consumer | seconds | messages/s | ratio to Mosquitto → mosquitto_sub |");
    println!("|---|---:|---:|---:|");
    println!(
        "| mosquitto_sub (QoS 1, output discarded) | {peer:.3} | {:.0} | 1.00 |",
        n as f64 / peer
    );
    println!(
        "| agent, durable in the WAL (acked after two fsyncs) | {accepted:.3} | {:.0} | {:.2} |",
        n as f64 / accepted,
        peer / accepted
    );
    println!(
        "| agent, end to end (sealed, in the lake, stopped) | {total:.3} | {:.0} | {:.2} |",
        n as f64 / total,
        peer / total
    );
}

// ---------------------------------------------------------------- lorawan

fn lorawan(full: bool) {
    use base64::Engine as _;
    use lorawan::creator::DataPayloadCreator;
    use lorawan::keys::{AppSKey, NewSKey};
    use lorawan::parser::{DataHeader as _, DataPayload, FCtrl, FRMPayload, PhyPayload, parse};
    use twinlake_edge::config::LoraDevice;
    use twinlake_edge::sources::codec::Codec;

    let (devices, per_device) = if full { (200u32, 250u32) } else { (4, 5) };
    let total = (devices * per_device) as usize;
    let nwk = [0x2bu8; 16];
    let app = [0x01u8; 16];
    // Frames in arrival order: every device's uplink k, then k+1.
    let mut frames = Vec::with_capacity(total);
    for k in 1..=per_device {
        for d in 0..devices {
            let addr = 0x2600_0000u32 + d;
            let mut c = DataPayloadCreator::new();
            c.set_uplink(true)
                .set_confirmed(false)
                .set_dev_addr(&addr.to_le_bytes())
                .set_fctrl(&FCtrl::new(0, true))
                .set_fcnt(k)
                .set_f_port(2);
            let t = 200 + (k % 100) as i16;
            let payload = [1, 0x67, (t >> 8) as u8, t as u8, 2, 0x68, 90, 3, 0x02, 0x01, 0x2c];
            frames.push(
                c.build(&payload, &[], &NewSKey::from(nwk), &AppSKey::from(app))
                    .unwrap()
                    .to_vec(),
            );
        }
    }
    // The decode limit: MIC, decryption and Cayenne of the same frames, nothing else.
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for (i, f) in frames.iter().enumerate() {
            let Ok(PhyPayload::Data(DataPayload::Encrypted(e))) = parse(f.clone()) else {
                panic!()
            };
            let fcnt = u32::from(e.fhdr().fcnt());
            assert!(e.validate_mic(&lorawan::keys::AES128(nwk), fcnt), "{i}");
            let d = e.decrypt(None, Some(&lorawan::keys::AES128(app)), fcnt).unwrap();
            let FRMPayload::Data(b) = d.frm_payload() else { panic!() };
            std::hint::black_box(Codec::Cayenne.decode(b).unwrap());
        }
        best = best.min(t.elapsed().as_secs_f64());
    }

    let dir = tempfile::tempdir().unwrap();
    let mut c = edge_config(dir.path(), 0);
    c.listener.tcp = None;
    c.lorawan.udp = Some("127.0.0.1:0".parse().unwrap());
    use twinlake_edge::sources::hex;
    c.lorawan.devices = (0..devices)
        .map(|d| {
            toml::from_str::<LoraDevice>(&format!(
                "dev_eui = \"{:016x}\"\ndev_addr = \"{:08x}\"\nnwk_skey = \"{}\"\napp_skey = \"{}\"",
                0x70b3_d500_0000_0000u64 + u64::from(d),
                0x2600_0000u32 + d,
                hex(&nwk),
                hex(&app)
            ))
            .unwrap()
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (accepted, e2e) = rt.block_on(async {
        let agent = EdgeAgent::start(c).await.unwrap();
        let server = agent.lorawan_addr().unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let eui = [0xaa, 0x55, 0x5a, 0, 0, 0, 1, 1];
        let t = Instant::now();
        // A forwarder's pace is set by its radio; here at most 32 datagrams wait for their
        // PUSH_ACK, so the socket buffer never overflows.
        let mut waiting = 0usize;
        let mut buf = [0u8; 64];
        for (i, f) in frames.iter().enumerate() {
            let rx = serde_json::json!({"rxpk": [{"tmst": i as u32 * 1000, "freq": 868.1, "stat": 1, "modu": "LORA",
                "datr": "SF7BW125", "codr": "4/5", "rssi": -60, "lsnr": 7.5, "size": f.len(),
                "data": base64::engine::general_purpose::STANDARD.encode(f)}]});
            let tok = (i as u16).to_be_bytes();
            let mut d = vec![2, tok[0], tok[1], 0];
            d.extend_from_slice(&eui);
            d.extend_from_slice(rx.to_string().as_bytes());
            sock.send_to(&d, server).await.unwrap();
            waiting += 1;
            while waiting >= 32 {
                sock.recv(&mut buf).await.unwrap();
                waiting -= 1;
            }
        }
        while metrics.rows_in.get() < total as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let accepted = t.elapsed().as_secs_f64();
        let _ = stop.send(());
        run.await.unwrap().unwrap();
        assert_eq!(metrics.source_count("lorawan", "accepted"), total as u64);
        (accepted, t.elapsed().as_secs_f64())
    });
    let lake = read_dir_batches(&dir.path().join("lake"));
    let lake_rows: usize = lake.iter().flat_map(|(_, b)| b).map(|b| b.num_rows()).sum();
    assert_eq!(lake_rows, total, "every uplink reached the lake");
    println!(
        "\n### LoRaWAN uplinks: {devices} ABP devices × {per_device} unconfirmed uplinks (Cayenne LPP, 3 values), one GWMP datagram each over UDP\n"
    );
    println!("| measure | seconds | uplinks/s |");
    println!("|---|---:|---:|");
    println!(
        "| accepted: MIC, FCnt, decrypt, decode, durable in the WAL | {accepted:.3} | {:.0} |",
        total as f64 / accepted
    );
    println!(
        "| end to end (sealed, in the lake, stopped) | {e2e:.3} | {:.0} |",
        total as f64 / e2e
    );
    println!(
        "| decode limit: MIC + decrypt + Cayenne of the same frames, best of 3 | {best:.3} | {:.0} |",
        total as f64 / best
    );
    println!("\nratio accepted ÷ decode limit: {:.2}", best / accepted);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    if !full {
        // Under `cargo test --all-targets`: the Rust side on tiny inputs, as a smoke test.
        storage(false);
        ingest(false);
        mqtt(false);
        lorawan(false);
        http_device::http(false);
        coap_device::coap(false);
        gateway_rule::latency(false);
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
    if run("mqtt") {
        mqtt(true);
    }
    if run("lorawan") {
        lorawan(true);
    }
    if run("http") {
        http_device::http(true);
    }
    if run("rules") {
        gateway_rule::latency(true);
    }
    if run("coap") {
        coap_device::coap(true);
    }
}
