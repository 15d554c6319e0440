//! Rules: evaluation throughput on the link's apply path, and alarm latency end to end.
//! Included by `cloud.rs` (`cargo bench -p twinlake-cloud --bench cloud -- rules`).

use std::time::{Duration, Instant};

use serde_json::json;
use twinlake_cloud::AppState;
use twinlake_cloud::store::RULES;
use twinlake_query::FreshRow;
use twinlake_rules::Rule;
use twinlake_sdk::pson::ValueRef;

use super::{USER, cloud_config, register, rt, start_cloud, summary, us};

/// Stores `rules` for `USER` and makes them current.
fn install(state: &AppState, rules: &[Rule]) {
    let tx = state.db.0.begin_write().unwrap();
    {
        let mut t = tx.open_table(RULES).unwrap();
        for r in rules {
            t.insert(
                format!("{}/{}", r.owner, r.id).as_str(),
                serde_json::to_vec(r).unwrap().as_slice(),
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    state.rules.reload(&state.db).unwrap();
}

fn threshold(id: &str, devices: Vec<String>, over: f64, for_: &str) -> Rule {
    let mut r: Rule = serde_json::from_value(json!({
        "when": {"type": "threshold", "table": "telemetry", "field": "temp", "devices": {"devices": devices},
                 "raise": {"op": ">", "value": over}, "clear": {"op": "<", "value": over - 2.0}, "for": for_}
    }))
    .unwrap();
    r.id = id.into();
    r.owner = USER.into();
    r
}

/// Values per second through the apply path's per-batch work (fresh rows for SQL), with no
/// rules and with 1,000 threshold rules (one per device, and 10 on every device).
pub fn throughput(full: bool) {
    let devices = 1000;
    let rows_total: usize = if full { 400_000 } else { 2_000 };
    let batch = 1000;
    println!("\n### Rule evaluation on the ingest path (values per second, one core)\n");
    println!("| rules | min | median | max | ratio to no rules (median) |");
    println!("|---|---:|---:|---:|---:|");
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cloud = rt.block_on(start_cloud(cloud_config(dir.path())));
    let state = cloud.state.clone();
    let names: Vec<String> = (0..devices).map(|i| format!("dev-{i}")).collect();
    let payloads: Vec<Vec<u8>> = (0..rows_total)
        .map(|i| {
            twinlake_sdk::json::from_json(&json!({"temp": 20.0 + (i % 100) as f64 / 10.0, "hum": 40 + i % 7}))
                .to_bytes()
        })
        .collect();
    let decoded: Vec<ValueRef<'_>> = payloads.iter().map(|p| ValueRef::decode(p).unwrap()).collect();
    let run = |with_rules: bool| -> f64 {
        let t = Instant::now();
        for (b, chunk) in decoded.chunks(batch).enumerate() {
            let rows: Vec<FreshRow<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| FreshRow {
                    time_us: ((b * batch + i) as i64) * 1000,
                    owner: Some(USER),
                    device: &names[i % devices],
                    payload: *p,
                })
                .collect();
            state.sql.lake().add_fresh("bench", "telemetry", b as u64, false, &rows);
            if with_rules {
                twinlake_cloud::rules::observe(&state, "telemetry", false, &rows);
            }
        }
        rows_total as f64 / t.elapsed().as_secs_f64()
    };
    let reps = if full { 5 } else { 1 };
    let mut rows = Vec::new();
    let configs: [(&str, Vec<Rule>); 3] = [
        ("none", Vec::new()),
        (
            "1,000 (one per device)",
            (0..devices)
                .map(|i| threshold(&format!("r{i}"), vec![names[i].clone()], 1e9, "0s"))
                .collect(),
        ),
        (
            "1,000 + 10 on every device",
            (0..devices)
                .map(|i| threshold(&format!("r{i}"), vec![names[i].clone()], 1e9, "0s"))
                .chain((0..10).map(|i| threshold(&format!("all{i}"), Vec::new(), 1e9, "30s")))
                .collect(),
        ),
    ];
    let mut base = 0.0;
    for (label, rules) in configs {
        install(&state, &rules);
        let with = !rules.is_empty();
        let mut v: Vec<f64> = (0..reps).map(|_| run(with)).collect();
        v.sort_by(f64::total_cmp);
        let med = v[v.len() / 2];
        if !with {
            base = med;
        }
        rows.push((label, v[0], med, v[v.len() - 1]));
    }
    for (label, min, med, max) in rows {
        println!("| {label} | {min:.0} | {med:.0} | {max:.0} | {:.2} |", med / base);
    }
    rt.block_on(cloud.stop());
}

/// From a value arriving at the HTTP device API to its alarm's webhook request, with the
/// device request's own round trip (acknowledged once durable in the WAL) as the floor.
pub fn latency(full: bool) {
    let n = if full { 300 } else { 4 };
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path());
    cfg.edge.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.webhooks.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let cloud = rt.block_on(start_cloud(cfg));
    let state = cloud.state.clone();
    register(&state, &["lat".into()], None, "secret-1");
    let (tx, mut calls) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let hook = rt.block_on(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let _ = tx.send(Instant::now());
                async { "ok" }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    });
    state
        .db
        .put(
            twinlake_cloud::store::ENDPOINTS,
            &format!("{USER}/hook"),
            &serde_json::from_value::<twinlake_cloud::store::EndpointDef>(json!({"name": "hook", "url": hook}))
                .unwrap(),
        )
        .unwrap();
    let mut rule = threshold("hot", vec!["lat".into()], 35.0, "0s");
    rule.actions = serde_json::from_value(json!([{"webhook": "hook"}])).unwrap();
    install(&state, &[rule]);
    let device_http = cloud.device_http.expect("the cloud's HTTP device API");
    let url = format!("http://{device_http}/api/v1/{USER}:lat:secret-1/telemetry");
    let client = reqwest::Client::new();
    let (alarm, request) = rt.block_on(async {
        let mut alarm = Vec::new();
        let mut request = Vec::new();
        for i in 0..n * 2 {
            let temp = if i % 2 == 0 { 40.0 } else { 20.0 };
            let t0 = Instant::now();
            let r = client
                .post(&url)
                .body(json!({"temp": temp}).to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            request.push(t0.elapsed());
            let at = tokio::time::timeout(Duration::from_secs(10), calls.recv())
                .await
                .unwrap()
                .unwrap();
            alarm.push(at - t0);
        }
        (alarm, request)
    });
    let (a50, a99) = summary(alarm);
    let (r50, r99) = summary(request);
    println!(
        "\n### Alarm latency: a value in, its alarm's webhook out ({} raises and clears)\n",
        n * 2
    );
    println!("| path | p50 | p99 |");
    println!("|---|---:|---:|");
    println!(
        "| HTTP device POST → WAL → link → cloud apply → rule → alarm commit → webhook request | {} | {} |",
        us(a50),
        us(a99)
    );
    println!(
        "| floor: the device's POST alone (answered once durable in the WAL) | {} | {} |",
        us(r50),
        us(r99)
    );
    rt.block_on(cloud.stop());
}
