//! PSON codec throughput against serde_json on the same documents, in the same run.
//!
//! `cargo bench -p twinlake-sdk --bench codec` prints a Markdown table for BENCHMARKS.md.
//! Each cell is the median of 7 timed rounds of at least 100 ms each. Both sides work on
//! dynamic values (our `pson::Value`, serde_json's `Value`), which is what a gateway handles:
//! documents whose shape is not known at compile time.

// A measurement harness, not a path for untrusted input.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use twinlake_sdk::json::{from_json, to_json};
use twinlake_sdk::pson::{Value, ValueRef};

/// Seconds per operation: the median of 7 rounds of at least 100 ms.
fn time<F: FnMut()>(mut f: F) -> f64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() >= Duration::from_millis(100) {
            break;
        }
        iters *= 2;
    }
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn leaves(v: &Value) -> usize {
    match v {
        Value::Object(p) => p.iter().map(|(_, v)| leaves(v)).sum(),
        Value::Array(a) => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

fn truck(i: u64) -> serde_json::Value {
    json!({
        "name": format!("truck_{i}"), "fleet": "South", "driver": "Trish", "model": "H-2",
        "device_version": "v1.0", "load_capacity": 1500, "fuel_capacity": 150,
        "nominal_fuel_consumption": 12, "latitude": 52.31 + i as f64 * 0.001,
        "longitude": 4.76 - i as f64 * 0.002, "elevation": 124 + i, "velocity": 61.25,
        "heading": 183.5, "grade": 3.5, "fuel_consumption": 14.125
    })
}

fn documents() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "sensor reading (3 fields)",
            json!({"temp": 21.5, "hum": 40, "on": true}),
        ),
        ("TSBS truck reading (15 fields)", truck(1)),
        (
            "batch of 100 truck readings",
            serde_json::Value::Array((0..100).map(truck).collect()),
        ),
        (
            "device description (nested)",
            json!({"temp": {"al": 0, "fn": 3}, "led": {"al": 0, "fn": 2}, "sum": {"al": 0, "fn": 4},
                   "reboot": {"al": 0, "fn": 1}, "cfg": {"/": {"level": {"al": 0, "fn": 3}}}}),
        ),
    ]
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this only checks the documents.
    if !std::env::args().any(|a| a == "--bench") {
        for (_, doc) in documents() {
            let v = from_json(&doc);
            assert_eq!(Value::decode(&v.to_bytes()).ok(), Some(v));
        }
        return;
    }
    println!(
        "| document | bytes PSON / JSON | op | PSON MB/s | PSON Mvalues/s | serde_json MB/s | serde_json Mvalues/s | PSON ÷ serde_json speed |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for (name, doc) in documents() {
        // Both sides get the same content: the document as the device's number rule leaves it.
        let v = from_json(&doc);
        let doc = to_json(&v);
        assert!(from_json(&doc) == v, "{name}: same content on both sides");
        let pson = v.to_bytes();
        let json = serde_json::to_vec(&doc).expect("json");
        let n = leaves(&v) as f64;
        let mut buf = Vec::with_capacity(pson.len());
        let enc_p = time(|| {
            buf.clear();
            black_box(&v).encode_into(&mut buf);
            black_box(&buf);
        });
        let mut jbuf = Vec::with_capacity(json.len());
        let enc_j = time(|| {
            jbuf.clear();
            serde_json::to_writer(&mut jbuf, black_box(&doc)).expect("json");
            black_box(&jbuf);
        });
        let dec_p = time(|| {
            black_box(Value::decode(black_box(&pson)).expect("pson"));
        });
        let dec_r = time(|| {
            black_box(ValueRef::decode(black_box(&pson)).expect("pson"));
        });
        let dec_j = time(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&json)).expect("json"));
        });
        // serde_json's own zero-copy path: parse and validate, build nothing.
        let val_j = time(|| {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&json)).expect("json"));
        });
        let sizes = format!("{} / {}", pson.len(), json.len());
        for (op, p, j) in [
            ("encode", enc_p, enc_j),
            ("decode to owned value", dec_p, dec_j),
            ("validate, zero-copy (ValueRef vs IgnoredAny)", dec_r, val_j),
            ("zero-copy ValueRef vs serde_json owned Value", dec_r, dec_j),
        ] {
            let mbps = |bytes: usize, secs: f64| bytes as f64 / secs / 1e6;
            println!(
                "| {name} | {sizes} | {op} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1}× |",
                mbps(pson.len(), p),
                n / p / 1e6,
                mbps(json.len(), j),
                n / j / 1e6,
                j / p
            );
            if !op.starts_with("zero-copy ValueRef vs") {
                ratios.push(j / p);
            }
        }
    }
    let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    println!("\nGeometric mean of PSON ÷ serde_json speed over encode, owned decode and zero-copy validate: {geo:.1}×");
}
