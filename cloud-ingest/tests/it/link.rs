//! The gateway link: replayed batches apply once; the edge rides out a cloud restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use twinlake_edge::link::{Down, Item, LinkIo, LinkMsg, PROTOCOL, Up};
use twinlake_twin::TwinKey;

use crate::support::*;

async fn recv(io: &mut LinkIo) -> Down {
    let t = tokio::time::timeout(Duration::from_secs(5), io.rx.recv())
        .await
        .unwrap()
        .unwrap();
    let LinkMsg::Text(t) = t else {
        panic!("the cloud sends text: {t:?}")
    };
    serde_json::from_str(&t).unwrap()
}

async fn send(io: &LinkIo, m: &Up) {
    io.tx
        .send(LinkMsg::Text(serde_json::to_string(m).unwrap()))
        .await
        .unwrap();
}

fn reported(device: &str, v: f64) -> Item {
    Item::Reported {
        user: USER.into(),
        device: device.into(),
        path: "temp".into(),
        at: 1_000,
        value: json!({"out": v}),
    }
}

/// Opens a scripted link to the cloud's gateway session and says hello as `session`.
async fn link(state: &std::sync::Arc<twinlake_cloud::AppState>, gateway: &str, session: &str) -> LinkIo {
    let (edge, server) = LinkIo::pair(16);
    tokio::spawn(twinlake_cloud::gateway::serve(
        state.clone(),
        GATEWAY.into(),
        server,
        None,
    ));
    let hello = Up::Hello {
        gateway: gateway.into(),
        session: session.into(),
        protocol: PROTOCOL,
    };
    send(&edge, &hello).await;
    edge
}

/// The welcome this cloud sends: where it is, and that it takes queue reports, pson rows
/// and binary batches.
fn welcome(acked: u64) -> Down {
    Down::Welcome {
        acked,
        features: vec![
            twinlake_edge::link::FEATURE_STATUS.into(),
            twinlake_edge::link::FEATURE_PSON_ROWS.into(),
            twinlake_edge::link::FEATURE_BINARY_BATCHES.into(),
        ],
    }
}

/// Fresh rows from an agent before pson rows (JSON), from one after (a PSON block in a text
/// batch) and from one with binary batches all reach SQL; a block that goes bad keeps its
/// rows before the fault, is counted, and the link stays up; a binary frame that does not
/// read is counted and dropped whole, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_rows_in_either_format_reach_sql() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let state = cloud.state.clone();
    let mut edge = link(&state, GATEWAY, "s1").await;
    assert_eq!(recv(&mut edge).await, welcome(0));
    let json_rows = Item::Rows {
        table: "temp".into(),
        segment: 1,
        stream: false,
        owner: Some(USER.into()),
        rows: vec![(1_000, "x".into(), json!({"v": 1.0}))],
    };
    let mut block = twinlake_edge::link::rows::RowBlock::default();
    for (t, v) in [(2_000, 2.0), (3_000, 3.0)] {
        let payload = twinlake_sdk::json::from_json(&json!({"v": v})).to_bytes();
        block.push(t, "x", &payload);
    }
    let mut bytes = block.as_bytes().to_vec();
    bytes.extend_from_slice(&[1, 2, 3]);
    let pson_rows = Item::PsonRows {
        table: "temp".into(),
        segment: 1,
        stream: false,
        owner: Some(USER.into()),
        rows: twinlake_edge::link::rows::RowBlock::from_bytes(bytes),
    };
    for (seq, item) in [(1, json_rows), (2, pson_rows)] {
        send(&edge, &Up::Batch { seq, items: vec![item] }).await;
    }
    let mut block = twinlake_edge::link::rows::RowBlock::default();
    block.push(
        4_000,
        "x",
        &twinlake_sdk::json::from_json(&json!({"v": 4.0})).to_bytes(),
    );
    let mut items = vec![Item::PsonRows {
        table: "temp".into(),
        segment: 1,
        stream: false,
        owner: Some(USER.into()),
        rows: block,
    }];
    let binary = twinlake_edge::link::wire::encode_batch(3, &mut items);
    edge.tx
        .send(LinkMsg::Binary(binary[..binary.len() - 1].to_vec().into()))
        .await
        .unwrap();
    edge.tx.send(LinkMsg::Binary(binary.into())).await.unwrap();
    let mut through = 0;
    while through < 3 {
        if let Down::Ack { through: t } = recv(&mut edge).await {
            through = t;
        }
    }
    assert_eq!(state.sql.lake().fresh_rows(), 4);
    let m = state.metrics.encode();
    assert!(m.contains("twinlake_cloud_link_bad_messages_total 2"), "{m}");
    let (s, j) = cloud
        .api()
        .call(
            Method::POST,
            "/v1/sql",
            Some(READ),
            Some(json!({"sql": "SELECT sum(v) AS s FROM temp WHERE device = 'x'"})),
        )
        .await;
    assert_eq!((s, j[0]["s"].as_f64()), (reqwest::StatusCode::OK, Some(10.0)), "{j}");
    drop((edge, state));
    cloud.stop().await;
}

/// Agents and clouds either side of the `features` field read each other's welcome.
#[test]
fn welcomes_with_and_without_features_parse() {
    let old: Down = serde_json::from_str(r#"{"type":"welcome","acked":3}"#).unwrap();
    assert_eq!(
        old,
        Down::Welcome {
            acked: 3,
            features: vec![]
        }
    );
    let new: Down = serde_json::from_str(r#"{"type":"welcome","acked":3,"features":["status","later"]}"#).unwrap();
    assert!(matches!(new, Down::Welcome { acked: 3, ref features } if features.len() == 2));
    assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"type":"welcome","acked":3}"#);
}

/// Drives `gateway::serve` with scripted link frames: a batch the cloud already applied,
/// sent again after a reconnect, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    let state = cloud.state.clone();
    let mut edge = link(&state, GATEWAY, "s1").await;
    assert_eq!(recv(&mut edge).await, welcome(0));
    send(
        &edge,
        &Up::Batch {
            seq: 1,
            items: vec![reported("x", 1.0)],
        },
    )
    .await;
    loop {
        if let Down::Ack { through } = recv(&mut edge).await {
            assert_eq!(through, 1);
            break;
        }
    }
    drop(edge);
    let key = TwinKey::new(USER, "x");
    let v1 = state.twins.get(&key).unwrap().unwrap().version;

    // Reconnect: the cloud says where it is, and a resent batch 1 is skipped.
    let mut edge = link(&state, GATEWAY, "s1").await;
    assert_eq!(recv(&mut edge).await, welcome(1));
    send(
        &edge,
        &Up::Batch {
            seq: 1,
            items: vec![reported("x", 1.0)],
        },
    )
    .await;
    send(
        &edge,
        &Up::Batch {
            seq: 2,
            items: vec![reported("x", 2.0)],
        },
    )
    .await;
    let mut through = 0;
    while through < 2 {
        if let Down::Ack { through: t } = recv(&mut edge).await {
            through = t;
        }
    }
    let t = state.twins.get(&key).unwrap().unwrap();
    assert_eq!(t.version, v1 + 1, "only batch 2 applied");
    // The gateway's queue report, which the welcome's features invited.
    let queues = twinlake_edge::link::GatewayStatus {
        buffer_rows: 7,
        upload_files: 2,
        ..Default::default()
    };
    send(&edge, &Up::Status(queues.clone())).await;
    for _ in 0..100 {
        if state.gateways.last_report(GATEWAY).is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state.gateways.last_report(GATEWAY).map(|r| r.1), Some(queues));
    assert_eq!(t.reported["temp"], json!(2.0));
    assert!(
        state
            .metrics
            .encode()
            .contains("twinlake_cloud_link_duplicate_batches_total 1")
    );

    // A new session of the agent (a restart) starts again at 1.
    let mut edge = link(&state, GATEWAY, "s2").await;
    assert_eq!(recv(&mut edge).await, welcome(0));
    // A hello for another gateway than the token's is refused (and told why: below).
    let mut edge2 = link(&state, "someone-else", "s3").await;
    assert!(matches!(recv(&mut edge2).await, Down::Refused { .. }));
    drop((edge, edge2, state));
    cloud.stop().await;
}

/// Stop the cloud, keep the edge and its devices working, start the cloud again: the edge
/// reconnects and what happened meanwhile arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_rides_out_a_cloud_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["stay", "leave"]).await;
    let addr = cloud.addr;
    let (url, mut hooks) = receiver().await;
    api.put_endpoint("ping", json!({"url": url})).await;
    let stay = TestDevice::start(edge.tcp, "stay");
    let leave = TestDevice::start(edge.tcp, "leave");
    wait_online(&api, "stay").await;
    wait_online(&api, "leave").await;
    let before = api.twin("stay").await["version"].as_u64().unwrap();
    // Over the WebSocket, this agent sends its batches as binary frames (#19).
    let m = cloud.state.metrics.encode();
    assert!(
        m.contains(r#"twinlake_cloud_link_batches_total{format="text"} 0"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"twinlake_cloud_link_batches_total{format="binary"} 0"#),
        "{m}"
    );

    cloud.stop().await;
    // While the cloud is away: one device leaves, the other streams and calls an endpoint,
    // and the edge seals and uploads files.
    leave.stop();
    stay.with(|t| {
        t.call_endpoint("ping", Some(twinlake_sdk::pson::Value::from(7)), true);
    });
    let files_before = edge.metrics.files_uploaded.get();
    eventually(15, "files uploaded while the cloud is down", || {
        let n = edge.metrics.files_uploaded.get();
        async move { (n > files_before).then_some(()) }
    })
    .await;
    assert_eq!(edge.metrics.link_connected.get(), 0, "the link is down");

    // The cloud comes back on the same address.
    let mut cfg = cfg;
    cfg.http.addr = addr;
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    eventually(15, "the edge relinks", || {
        let up = edge.metrics.link_connected.get() == 1;
        async move { up.then_some(()) }
    })
    .await;
    eventually(10, "queued presence arrives", || async {
        (api.twin("leave").await["connection"]["online"] == json!(false)).then_some(())
    })
    .await;
    eventually(10, "queued values arrive", || async {
        let v = api.twin("stay").await["version"].as_u64()?;
        (v > before).then_some(())
    })
    .await;
    let (who, hook) = tokio::time::timeout(Duration::from_secs(10), hooks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((who.as_str(), hook.as_str()), ("stay", "7"));
    // Delivered once: no second call arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(hooks.try_recv().is_err(), "the endpoint call was delivered once");

    // Every file in the lake is in the cloud's SQL catalog once (paths are unique), and
    // every catalogued file is in the lake.
    let mut lake = BTreeSet::new();
    for e in walk(&edge.lake) {
        if e.extension().is_some_and(|x| x == "parquet") {
            lake.insert(e.strip_prefix(&edge.lake).unwrap().to_string_lossy().into_owned());
        }
    }
    let state = cloud.state.clone();
    let files = eventually(10, "every file catalogued", || {
        let sql = state.sql.lake().clone();
        let files: BTreeSet<String> = sql
            .table_names()
            .iter()
            .flat_map(|t| sql.files(t))
            .map(|f| f.path.clone())
            .collect();
        let lake = lake.clone();
        async move { (files == lake).then_some(files) }
    })
    .await;
    assert!(!files.is_empty());
    drop(state);

    drop(stay);
    edge.stop().await;
    cloud.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A device whose `slow` output takes 300 ms and counts how many such reads run at once
/// across all devices built with the same counters.
fn slow_device(addr: std::net::SocketAddr, device: &str, now: Arc<AtomicU64>, peak: Arc<AtomicU64>) -> Arc<AtomicBool> {
    let mut thing = twinlake_sdk::device::Thing::default();
    thing.resource("slow").output(move |out| {
        peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        now.fetch_sub(1, Ordering::SeqCst);
        *out = 1.into();
    });
    let mut cfg =
        twinlake_sdk::client::ClientConfig::new(&addr.ip().to_string(), addr.port(), USER, device, CREDENTIAL);
    cfg.poll_interval = Duration::from_millis(10);
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let mut client = twinlake_sdk::client::Client::new(cfg, thing);
        while !s.load(Ordering::Relaxed) {
            let _ = client.handle();
        }
    });
    stop
}

/// `link.max_inflight` bounds the requests a gateway has in flight at once (#13, finding
/// 12: it was documented and unused): eight devices behind one gateway are read at once,
/// with two slots; at most two reads ever run on the devices at the same time, and all
/// eight answer (the others waited for a slot within their timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_max_inflight_bounds_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.link.max_inflight = 2;
    cfg.http.request_timeout = Duration::from_secs(60);
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    for n in &names {
        api.register(n, Some(GATEWAY)).await;
    }
    let edge = TestEdge::start(edge_config(dir.path(), cloud.addr)).await;
    let (now, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stops: Vec<_> = names
        .iter()
        .map(|n| slow_device(edge.tcp, n, now.clone(), peak.clone()))
        .collect();
    for n in &names {
        eventually(10, &format!("{n} online"), || async {
            (api.twin(n).await["connection"]["online"] == json!(true)).then_some(())
        })
        .await;
    }
    peak.store(0, Ordering::SeqCst);
    let calls = names.iter().map(|n| {
        let api = api.clone();
        let path = format!("/v3/users/{USER}/devices/{n}/resources/slow");
        tokio::spawn(async move { api.call(Method::GET, &path, Some(READ), None).await.0 })
    });
    let statuses: Vec<_> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(statuses.iter().all(|s| s.as_u16() == 200), "{statuses:?}");
    let most = peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "{most} reads ran at once");
    for s in stops {
        s.store(true, Ordering::Relaxed);
    }
    edge.stop().await;
    cloud.stop().await;
}

/// A gateway that speaks another link protocol, or whose hello names another gateway than
/// its token, is told why before the cloud closes (#19: versions agree or refuse clearly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_of_another_protocol_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap())).await;
    for (gateway, protocol, why) in [
        (GATEWAY, PROTOCOL + 1, "upgrade the agent or the cloud"),
        ("someone-else", PROTOCOL, "names gateway"),
    ] {
        let (mut edge, server) = LinkIo::pair(16);
        tokio::spawn(twinlake_cloud::gateway::serve(
            cloud.state.clone(),
            GATEWAY.into(),
            server,
            None,
        ));
        let hello = Up::Hello {
            gateway: gateway.into(),
            session: "s".into(),
            protocol,
        };
        send(&edge, &hello).await;
        match recv(&mut edge).await {
            Down::Refused { reason, protocol } => {
                assert_eq!(protocol, PROTOCOL);
                assert!(reason.contains(why), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), edge.rx.recv())
            .await
            .unwrap();
        assert!(closed.is_none(), "closed after the refusal");
    }
    cloud.stop().await;
}
