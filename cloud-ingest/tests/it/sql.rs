//! SQL over what devices stream: fresh within a second, exactly once before and after the
//! file lands and after compaction; `/v1/sql` formats and limits; the Postgres wire.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::support::*;

async fn sql(api: &Api, q: &str) -> Json {
    let (s, j) = api
        .call(Method::POST, "/v1/sql", Some(READ), Some(json!({ "sql": q })))
        .await;
    assert_eq!(s, StatusCode::OK, "{q}: {j}");
    j
}

/// The result, or `None` while the table does not exist yet.
async fn try_sql(api: &Api, q: &str) -> Option<Json> {
    let (s, j) = api
        .call(Method::POST, "/v1/sql", Some(READ), Some(json!({ "sql": q })))
        .await;
    (s == StatusCode::OK).then_some(j)
}

async fn no_duplicates(api: &Api) {
    let dups = sql(
        api,
        "SELECT value, count(*) AS n FROM temp GROUP BY value HAVING count(*) > 1",
    )
    .await;
    assert_eq!(dups, json!([]), "a row seen twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_values_are_queryable_fresh_and_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["d1"]).await;
    let dev = TestDevice::start(edge.tcp, "d1");
    wait_online(&api, "d1").await;
    let lake = cloud.state.sql.lake().clone();

    // Freshness: each new value SQL shows was produced by the device less than a second
    // before; the first ones are served from the fresh rows (no file yet).
    let mut fresh_seen = false;
    let mut seen = 0;
    let mut last = f64::MIN;
    let mut worst = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen < 5 {
        assert!(Instant::now() < deadline, "SQL showed {seen} new values in 20 s");
        let Some(j) = try_sql(&api, "SELECT max(value) AS v FROM temp WHERE device = 'd1'").await else {
            continue;
        };
        let now = Instant::now();
        let Some(v) = j[0]["v"].as_f64().filter(|v| *v > last) else {
            continue;
        };
        last = v;
        let produced = dev.produced.lock().unwrap().clone();
        let made = produced
            .iter()
            .find(|(x, _)| (x - v).abs() < 1e-9)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("{v} is not a value the device produced: {produced:?}"));
        let took = now.saturating_duration_since(made);
        worst = worst.max(took);
        assert!(took < Duration::from_secs(1), "value {v} took {took:?} to reach SQL");
        fresh_seen |= lake.fresh_rows() > 0;
        no_duplicates(&api).await;
        seen += 1;
    }
    eprintln!("device → SQL, worst of {seen}: {worst:?}");
    assert!(fresh_seen, "rows were served from the fresh buffer");

    // Files land (the edge seals every 0.5 s); no row twice meanwhile.
    eventually(15, "files catalogued", || async {
        no_duplicates(&api).await;
        (cloud.state.metrics.files_catalogued.get() >= 3).then_some(())
    })
    .await;
    dev.stop();
    // Everything committed: nothing fresh, nothing twice, nothing lost (the values count up
    // by 0.1 per sample, so the rows are a gapless run).
    eventually(15, "all rows in files", || async {
        (lake.fresh_rows() == 0 && edge.metrics.files_uploaded.get() > 0).then_some(())
    })
    .await;
    let check = "SELECT count(*) AS n, count(DISTINCT value) AS d, CAST(round((max(value) - min(value)) * 10) AS BIGINT) + 1 AS span FROM temp";
    // Settled: the last rows may still be on their way; wait until the result holds still.
    let mut before = sql(&api, check).await;
    loop {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let now = sql(&api, check).await;
        if now == before && lake.fresh_rows() == 0 {
            break;
        }
        before = now;
    }
    assert_eq!(before[0]["n"], before[0]["d"], "{before}");
    assert_eq!(before[0]["n"], before[0]["span"], "no value lost: {before}");
    assert!(before[0]["n"].as_u64().unwrap() >= 5);

    // Compaction keeps each row once.
    let files_before = lake.files("temp").len();
    let hours: std::collections::BTreeSet<i64> = lake.files("temp").iter().map(|f| f.hour_us).collect();
    let cfg = twinlake_query::compact::CompactionConfig::default();
    for h in hours.iter() {
        twinlake_query::compact::compact_partition(&lake, "temp", *h, &cfg)
            .await
            .unwrap();
    }
    assert!(lake.files("temp").len() < files_before || files_before == 1);
    assert_eq!(lake.files("temp").len(), hours.len());
    assert_eq!(sql(&api, check).await, before);
    no_duplicates(&api).await;

    // The twin joins the history.
    let joined = sql(
        &api,
        "SELECT t.device, t.online, count(*) > 0 AS has_rows FROM twins t JOIN temp h ON h.device = t.device GROUP BY t.device, t.online",
    )
    .await;
    assert_eq!(joined, json!([{"device": "d1", "online": false, "has_rows": true}]));
    edge.stop().await;
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_sql_formats_limits_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.sql.max_rows = 5;
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    let post = |body: &'static str, query: &'static str, token: Option<&'static str>| {
        let api = api.clone();
        async move {
            let mut req = api
                .client
                .post(format!("{}/v1/sql{query}", api.base))
                .header("content-type", "text/plain")
                .body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, ct, resp.bytes().await.unwrap())
        }
    };
    let (s, ct, body) = post("SELECT 1 AS a, 'x' AS b", "", Some(READ)).await;
    assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
    assert_eq!(
        serde_json::from_slice::<Json>(&body).unwrap(),
        json!([{"a": 1, "b": "x"}])
    );
    let (s, _, body) = post(
        "SELECT * FROM (VALUES (1, 'a'), (2, NULL)) t(n, s)",
        "?format=csv",
        Some(READ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(std::str::from_utf8(&body).unwrap(), "n,s\n1,a\n2,\n");
    let (s, _, body) = post("SELECT 1 AS a", "?format=ndjson", Some(READ)).await;
    assert_eq!(
        (s, std::str::from_utf8(&body).unwrap()),
        (StatusCode::OK, "{\"a\":1}\n")
    );
    let (s, ct, body) = post("SELECT 42 AS answer", "?format=arrow", Some(READ)).await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::OK, "application/vnd.apache.arrow.stream")
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body.to_vec()), None).unwrap();
    let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    // Limits and errors are clear.
    let (s, _, body) = post("SELECT * FROM generate_series(1, 100)", "", Some(READ)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(std::str::from_utf8(&body).unwrap().contains("more than 5 rows"));
    let (s, _, body) = post("SELEC 1", "", Some(READ)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", std::str::from_utf8(&body).unwrap());
    let (s, _, _) = post("SELECT * FROM nowhere", "", Some(READ)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = post("SELECT 1", "", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = post("SELECT 1", "?format=xml", Some(READ)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_wire_takes_the_token_as_password() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let pg = cloud.postgres.unwrap();
    let conn = |password: &'static str| async move {
        let cfg = format!(
            "host={} port={} user=grafana password={password} dbname=twinlake sslmode=disable",
            pg.ip(),
            pg.port()
        );
        tokio_postgres::connect(&cfg, tokio_postgres::NoTls).await
    };
    assert!(conn("wrong").await.is_err(), "a wrong token is refused");
    let (client, connection) = conn(READ).await.unwrap();
    tokio::spawn(connection);
    let rows = client.simple_query("SELECT 1 AS one, 'twin' AS s").await.unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!((row.get("one"), row.get("s")), (Some("1"), Some("twin")));
    // The extended protocol (typed results).
    let r = client.query_one("SELECT count(*) FROM twins", &[]).await.unwrap();
    assert_eq!(r.get::<_, i64>(0), 0);
    drop(client);
    cloud.stop().await;
}
