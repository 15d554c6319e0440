//! Rules and alarms end to end (#17), over real sockets: devices speak the HTTP device API
//! of the cloud's own pipeline, webhooks go to a local receiver, emails to a real SMTP
//! server (Python's aiosmtpd from PyPI).

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};

use crate::support::*;

/// aiosmtpd's debugging server: every message it takes is printed, and kept here.
struct Smtp {
    port: u16,
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Smtp {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python())
            .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (scripts/test installs it into .venv)");
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "aiosmtpd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child, out }
    }

    fn count(&self, needle: &str) -> usize {
        self.out.lock().unwrap().matches(needle).count()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rules_config(dir: &std::path::Path) -> twinlake_cloud::config::CloudConfig {
    let mut cfg = cloud_config(dir, "127.0.0.1:0".parse().unwrap());
    cfg.edge.device_http.addr = Some("127.0.0.1:0".parse().unwrap());
    cfg.rules.tick = Duration::from_millis(200);
    cfg.rules.min_sql_every = Duration::from_secs(1);
    cfg
}

async fn telemetry(cloud: &TestCloud, device: &str, body: Json) {
    let url = format!(
        "http://{}/api/v1/{USER}:{device}:{CREDENTIAL}/telemetry",
        cloud.device_http.unwrap()
    );
    let r = reqwest::Client::new()
        .post(url)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

async fn put_rule(api: &Api, id: &str, rule: Json) {
    let (s, j) = api
        .call(
            Method::PUT,
            &format!("/v1/users/{USER}/rules/{id}"),
            Some(ADMIN),
            Some(rule),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
}

async fn alarms(api: &Api) -> Vec<Json> {
    let (s, j) = api.get(&format!("/v1/users/{USER}/alarms")).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    j.as_array().unwrap().clone()
}

async fn sql(api: &Api, token: &str, q: &str) -> Json {
    let (s, j) = api
        .call(Method::POST, "/v1/sql", Some(token), Some(json!({ "sql": q })))
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    j
}

/// A threshold with `for` and hysteresis, judged at the readings' own times: one alarm,
/// not one per value; it clears once; the webhook fires once for each and the email once.
/// Then a person acknowledges and clears the next one, and the `alarms` table has both;
/// another user sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_threshold_with_for_and_hysteresis_raises_once_clears_once_and_acts_once() {
    let smtp = Smtp::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = rules_config(dir.path());
    cfg.email.smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let cloud = TestCloud::start(cfg).await;
    let api = &cloud.api();
    api.register("t1", None).await;
    let (hook, mut calls) = receiver().await;
    api.put_endpoint("alerts", json!({ "url": hook })).await;
    put_rule(
        api,
        "hot",
        json!({
            "severity": "major",
            "when": {"type": "threshold", "table": "telemetry", "field": "temp",
                     "raise": {"op": ">", "value": 35}, "clear": {"op": "<", "value": 33}, "for": "30s"},
            "actions": [{"webhook": "alerts"}, {"on": "raised", "email": ["ops@example.com"]}]
        }),
    )
    .await;
    // The event stream, from before the first reading.
    let events = Arc::new(Mutex::new(String::new()));
    let sse = {
        let events = events.clone();
        let resp = api
            .client
            .get(format!("{}/v1/events?device=t1", api.base))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            while let Some(Ok(b)) = body.next().await {
                events.lock().unwrap().push_str(&String::from_utf8_lossy(&b));
            }
        })
    };

    // Readings every 10 s of event time, sent at once (a backlog after an outage): over 35
    // from +10 s, so raised at +40 s; 34 does not clear (hysteresis); 32 at +70 s does.
    let t0 = twinlake_twin::now_ms() - 600_000;
    let series = [30.0, 36.0, 37.0, 36.5, 38.0, 34.0, 39.0, 32.0, 33.5];
    let body: Vec<Json> = series
        .iter()
        .enumerate()
        .map(|(i, v)| json!({"ts": t0 + 10_000 * i as u64, "values": {"temp": v}}))
        .collect();
    telemetry(&cloud, "t1", Json::Array(body)).await;
    let a = eventually(20, "the alarm raised and cleared", || async {
        let list = alarms(api).await;
        (list.len() == 1 && list[0]["state"] == "cleared").then(|| list[0].clone())
    })
    .await;
    assert_eq!(a["rule"], "hot");
    assert_eq!(a["device"], "t1");
    assert_eq!(a["severity"], "major");
    assert_eq!(a["count"], 1, "{a}");
    assert_eq!(a["raised_at"], json!(t0 + 40_000), "{a}");
    assert_eq!(a["cleared_at"], json!(t0 + 70_000), "{a}");
    assert_eq!(a["cleared_by"], "rule");

    // The webhook: raised, then cleared, once each.
    let mut got = Vec::new();
    while got.len() < 2 {
        let (dev, body) = tokio::time::timeout(Duration::from_secs(20), calls.recv())
            .await
            .expect("webhook calls")
            .unwrap();
        assert_eq!(dev, "t1");
        got.push(serde_json::from_str::<Json>(&body).unwrap());
    }
    assert_eq!(
        (got[0]["change"].as_str(), got[1]["change"].as_str()),
        (Some("raised"), Some("cleared"))
    );
    assert_eq!(got[0]["value"], json!(38.0));
    eventually(20, "the email", || async {
        (smtp.count("Subject: [Twinlake] major raised: hot on t1") == 1).then_some(())
    })
    .await;

    // The next excursion: raised, then a person acknowledges and clears it.
    let later: Vec<Json> = [(100_000, 40.0), (130_000, 41.0)]
        .iter()
        .map(|(dt, v)| json!({"ts": t0 + dt, "values": {"temp": v}}))
        .collect();
    telemetry(&cloud, "t1", Json::Array(later)).await;
    let id = eventually(20, "the second alarm", || async {
        let list = alarms(api).await;
        list.iter()
            .find(|a| a["state"] == "active")
            .map(|a| a["id"].as_u64().unwrap())
    })
    .await;
    let path = |op: &str| format!("/v1/users/{USER}/alarms/{id}/{op}");
    let (s, _) = api.call(Method::POST, &path("ack"), Some(READ), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "reading is not acknowledging");
    let (s, j) = api.call(Method::POST, &path("ack"), Some(CONTROL), None).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("acknowledged")), "{j}");
    assert_eq!(j["acknowledged_by"], "control");
    let (s, _) = api.call(Method::POST, &path("ack"), Some(CONTROL), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, j) = api.call(Method::POST, &path("clear"), Some(CONTROL), None).await;
    assert_eq!((s, j["state"].as_str()), (StatusCode::OK, Some("cleared")), "{j}");
    let (s, _) = api.call(Method::POST, &path("clear"), Some(CONTROL), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api
        .call(
            Method::POST,
            &format!("/v1/users/{USER}/alarms/999/ack"),
            Some(CONTROL),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Its webhook calls: raised and (by the person) cleared. The email went out on raise only.
    for want in ["raised", "cleared"] {
        let (_, body) = tokio::time::timeout(Duration::from_secs(20), calls.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["change"], want);
    }
    eventually(20, "the second email", || async {
        (smtp.count("Subject: [Twinlake] major raised: hot on t1") == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(calls.try_recv().is_err(), "no more webhook calls");
    assert_eq!(smtp.count("MESSAGE FOLLOWS"), 2, "no more emails");

    // The history in SQL, and on the event stream.
    let rows = sql(
        api,
        READ,
        "SELECT id, rule, state, count, acknowledged_by, cleared_by FROM alarms ORDER BY id",
    )
    .await;
    assert_eq!(
        rows,
        json!([
            {"id": 1, "rule": "hot", "state": "cleared", "count": 1, "acknowledged_by": null, "cleared_by": "rule"},
            {"id": 2, "rule": "hot", "state": "cleared", "count": 1, "acknowledged_by": "control", "cleared_by": "control"}
        ])
    );
    eventually(10, "alarm events", || async {
        let e = events.lock().unwrap().clone();
        (e.matches("event: alarm").count() >= 5).then_some(())
    })
    .await;
    sse.abort();

    // Another user's token sees none of it, on any surface.
    let (s, _) = api.post("/v1/users", json!({"user": "other"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, t) = api
        .post(
            "/v1/tokens",
            json!({"name": "other-read", "scopes": ["read", "control"], "user": "other"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let other = t["token"].as_str().unwrap();
    let (s, _) = api
        .call(Method::GET, &format!("/v1/users/{USER}/alarms"), Some(other), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.call(Method::POST, &path("clear"), Some(other), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        sql(api, other, "SELECT count(*) AS n FROM alarms").await,
        json!([{"n": 0}])
    );
    let (s, j) = api.call(Method::GET, "/v1/users/other/alarms", Some(other), None).await;
    assert_eq!((s, j), (StatusCode::OK, json!([])));
    cloud.stop().await;
}

/// A deadman fires when a device goes quiet and clears when it speaks again; a twin rule
/// fires when a device ignores its desired LED; a scheduled SQL rule raises one alarm per
/// row its query returns, keyed by its columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadman_twin_and_scheduled_sql_rules_raise_their_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(rules_config(dir.path())).await;
    let api = &cloud.api();
    for d in ["q1", "q2"] {
        api.register(d, None).await;
    }
    put_rule(
        api,
        "quiet",
        json!({"when": {"type": "deadman", "after": "2s", "devices": {"devices": ["q1"]}}}),
    )
    .await;
    put_rule(
        api,
        "ignores",
        json!({"severity": "warning", "when": {"type": "twin", "after": "2s", "devices": {"tags": {"site": "lab"}}}}),
    )
    .await;
    put_rule(
        api,
        "hot-sql",
        json!({"when": {"type": "sql", "every": "1s", "key": ["device"],
                        "query": "SELECT device, max(temp) AS value FROM telemetry GROUP BY device HAVING max(temp) > 30"}}),
    )
    .await;
    let now = twinlake_twin::now_ms();
    telemetry(&cloud, "q1", json!({"ts": now, "values": {"temp": 31.5}})).await;
    telemetry(&cloud, "q2", json!({"ts": now, "values": {"temp": 20.0}})).await;
    api.set_desired("q1", json!({"led": true})).await;

    let by_rule =
        |list: &[Json], rule: &str| -> Vec<Json> { list.iter().filter(|a| a["rule"] == rule).cloned().collect() };
    let list = eventually(30, "deadman, twin and SQL alarms", || async {
        let list = alarms(api).await;
        let open = |r: &str| by_rule(&list, r).iter().any(|a| a["state"] == "active");
        (open("quiet") && open("ignores") && open("hot-sql")).then_some(list)
    })
    .await;
    let sql_alarms = by_rule(&list, "hot-sql");
    assert_eq!(sql_alarms.len(), 1, "one row, one alarm: {sql_alarms:?}");
    assert_eq!(
        (sql_alarms[0]["key"].as_str(), sql_alarms[0]["value"].as_f64()),
        (Some("q1"), Some(31.5))
    );
    let twin = by_rule(&list, "ignores");
    assert_eq!(twin.len(), 1, "only q1 has a desired value it ignores: {twin:?}");
    assert_eq!(
        (twin[0]["device"].as_str(), twin[0]["severity"].as_str()),
        (Some("q1"), Some("warning"))
    );
    let quiet = by_rule(&list, "quiet");
    assert_eq!((quiet.len(), quiet[0]["device"].as_str()), (1, Some("q1")));
    assert!(quiet[0]["raised_at"].as_u64().unwrap() >= now + 2_000);

    // q1 speaks again: its deadman clears. q2 goes over 30: the query returns it too.
    let now = twinlake_twin::now_ms();
    telemetry(&cloud, "q1", json!({"ts": now, "values": {"temp": 25.0}})).await;
    telemetry(&cloud, "q2", json!({"ts": now, "values": {"temp": 33.0}})).await;
    eventually(20, "the deadman cleared and q2's SQL alarm", || async {
        let list = alarms(api).await;
        let quiet_cleared = by_rule(&list, "quiet").iter().any(|a| a["state"] == "cleared");
        let q2 = by_rule(&list, "hot-sql")
            .iter()
            .any(|a| a["key"] == "q2" && a["state"] == "active");
        (quiet_cleared && q2).then_some(())
    })
    .await;
    let m = cloud.state.metrics.encode();
    assert!(m.contains("twinlake_cloud_alarms_raised_total"), "{m}");
    cloud.stop().await;
}

/// Endpoints cannot reach loopback, private or link-local addresses unless an admin
/// allows their network (SSRF): a literal address is refused when the endpoint is
/// defined, a name that resolves to one when it is called (and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_to_private_addresses_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cloud_config(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.webhooks.allow_networks.clear();
    let cloud = TestCloud::start(cfg).await;
    let api = &cloud.api();
    let (hook, mut calls) = receiver().await;
    let put = |name: &'static str, url: String| async move {
        api.call(
            Method::PUT,
            &format!("/v1/users/{USER}/endpoints/{name}"),
            Some(ADMIN),
            Some(json!({ "url": url })),
        )
        .await
    };
    for url in [
        hook.clone(),
        "http://10.0.0.1/x".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://[::1]:9/x".into(),
        "http://0x7f000001/x".into(),
    ] {
        let (s, j) = put("bad", url.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {j}");
        assert!(j.to_string().contains("not a public address"), "{j}");
    }
    // A name: taken, and refused when called.
    let port = hook.split(':').nth(2).unwrap().to_owned();
    let (s, j) = put("named", format!("http://localhost:{port}")).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let (s, _) = api
        .post(&format!("/v1/users/{USER}/endpoints/named/call"), json!({"x": 1}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    eventually(20, "the call refused", || async {
        (cloud.state.metrics.webhooks_refused.get() == 1).then_some(())
    })
    .await;
    assert!(calls.try_recv().is_err(), "nothing reached the receiver");
    cloud.stop().await;
}

/// An mqtt action publishes the alarm (QoS 1) to a real Mosquitto, under the configured
/// prefix and the owner's name: raised, then cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mqtt_action_publishes_the_alarm_under_the_owners_topics() {
    let broker = crate::mosquitto::Mosquitto::start(0);
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "twinlake/alarms/#",
            "-v",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = rules_config(dir.path());
    cfg.mqtt_actions.url = format!("mqtt://127.0.0.1:{}", broker.port);
    let cloud = TestCloud::start(cfg).await;
    let api = &cloud.api();
    api.register("m1", None).await;
    put_rule(
        api,
        "hot-mqtt",
        json!({"when": {"type": "threshold", "table": "telemetry", "field": "temp", "raise": {"op": ">", "value": 35}},
               "actions": [{"mqtt": "site/hot"}]}),
    )
    .await;
    let now = twinlake_twin::now_ms();
    let body = json!([{"ts": now, "values": {"temp": 40}}, {"ts": now + 1, "values": {"temp": 20}}]);
    telemetry(&cloud, "m1", body).await;
    let out = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        sub.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        let _ = sub.wait();
        text
    })
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, change) in lines.iter().zip(["raised", "cleared"]) {
        let (topic, payload) = line.split_once(' ').unwrap();
        assert_eq!(topic, format!("twinlake/alarms/{USER}/site/hot"));
        let a: Json = serde_json::from_str(payload).unwrap();
        assert_eq!(
            (a["change"].as_str(), a["device"].as_str()),
            (Some(change), Some("m1")),
            "{a}"
        );
    }
    cloud.stop().await;
}

/// A gateway rule: a gateway of the user's devices that stays away from the cloud raises an
/// alarm (the one deadman rules leave to it), cleared when it links again. A gateway that
/// serves none of the user's devices cannot be watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_away_raises_its_alarm_and_clears_when_it_links_again() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud, edge, api) = cloud_and_edge(dir.path(), &["g1"]).await;
    let (s, j) = api
        .call(
            Method::PUT,
            &format!("/v1/users/{USER}/rules/stranger"),
            Some(ADMIN),
            Some(json!({"when": {"type": "gateway", "gateway": "someone-elses", "after": "1s"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{j}");
    put_rule(
        &api,
        "gw-away",
        json!({"severity": "critical", "when": {"type": "gateway", "gateway": GATEWAY, "after": "1s"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(alarms(&api).await.is_empty(), "linked: no alarm");
    edge.stop().await;
    let a = eventually(20, "the gateway alarm", || async {
        alarms(&api)
            .await
            .into_iter()
            .find(|a| a["rule"] == "gw-away" && a["state"] == "active")
    })
    .await;
    assert_eq!(
        (a["key"].as_str(), a["device"].as_str(), a["kind"].as_str()),
        (Some(GATEWAY), None, Some("gateway"))
    );
    let edge = TestEdge::start(edge_config(dir.path(), cloud.addr)).await;
    eventually(20, "the alarm cleared", || async {
        alarms(&api)
            .await
            .into_iter()
            .find(|a| a["rule"] == "gw-away" && a["state"] == "cleared")
    })
    .await;
    edge.stop().await;
    cloud.stop().await;
}

/// Places `fan-on` on the gateway (g1's `temp` two degrees over its last value switches
/// its LED on) and waits until the gateway saved it; returns the last value.
async fn fan_rule_at_gateway(api: &Api, dev: &TestDevice, edge_dir: &std::path::Path) -> f64 {
    let last = eventually(10, "a temperature", || async {
        dev.produced.lock().unwrap().last().map(|(v, _)| *v)
    })
    .await;
    put_rule(
        api,
        "fan-on",
        json!({"gateway": GATEWAY, "severity": "major",
               "when": {"type": "threshold", "table": "temp", "field": "value", "devices": {"devices": ["g1"]},
                        "raise": {"op": ">", "value": last + 2.0}},
               "actions": [{"on": "raised", "desired": {"led": true}}]}),
    )
    .await;
    saved_at_gateway(&edge_dir.join("rules.json"), "fan-on").await;
    last
}

/// Waits for the gateway's `fan-on` alarm in the cloud: g1's, active, and (two seconds
/// later still) the only one, raised once.
async fn fan_alarm_once(api: &Api) -> Json {
    let a = eventually(60, "the gateway's alarm in the cloud", || async {
        alarms(api).await.into_iter().find(|a| a["rule"] == "fan-on")
    })
    .await;
    assert_eq!(
        (a["device"].as_str(), a["state"].as_str(), a["count"].as_u64()),
        (Some("g1"), Some("active"), Some(1)),
        "{a}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all: Vec<Json> = alarms(api)
        .await
        .into_iter()
        .filter(|a| a["rule"] == "fan-on")
        .collect();
    assert_eq!((all.len(), all[0]["count"].as_u64()), (1, Some(1)), "once: {all:?}");
    a
}

/// Waits until the gateway's file `path` names `what`.
async fn saved_at_gateway(path: &std::path::Path, what: &str) {
    eventually(20, "saved at the gateway", || async {
        std::fs::read_to_string(path)
            .ok()
            .filter(|t| t.contains(what))
            .map(|_| ())
    })
    .await;
}

/// A rule placed on a gateway (#17, item 4): the cloud sends it over the link; with the
/// cloud stopped, a value over the threshold makes the edge agent switch the device's input
/// itself; when the cloud is back, the alarm the gateway stored reaches it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_rule_acts_with_the_cloud_stopped_and_its_alarm_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::mosquitto::free_port();
    let mut cfg = cloud_config(dir.path(), format!("127.0.0.1:{port}").parse().unwrap());
    // The cloud's retention goes to the gateway with its rules (it refuses rows past it).
    cfg.sql
        .retention
        .tables
        .insert("temp".into(), Duration::from_secs(30 * 86_400).into());
    let cloud = TestCloud::start(cfg.clone()).await;
    let api = cloud.api();
    api.register("g1", Some(GATEWAY)).await;
    let edge = TestEdge::start(edge_config(dir.path(), cloud.addr)).await;
    let dev = TestDevice::start(edge.tcp, "g1");
    wait_online(&api, "g1").await;
    let last = fan_rule_at_gateway(&api, &dev, &dir.path().join("edge")).await;
    saved_at_gateway(&dir.path().join("edge").join("retention.json"), "\"temp\"").await;
    // The gateway reports its queues over the link; the API lists them.
    let q = eventually(20, "the gateway's queue report", || async {
        let (_, list) = api.get("/v1/gateways").await;
        list.as_array()?
            .iter()
            .find(|g| g["id"] == GATEWAY && g["queues"]["devices_connected"].as_i64() >= Some(1))
            .cloned()
    })
    .await;
    assert!(
        q["reported_at"].as_u64().is_some() && q["queues"]["buffer_rows"].is_i64(),
        "{q}"
    );
    cloud.stop().await;
    assert!(
        !dev.led.load(std::sync::atomic::Ordering::SeqCst),
        "not yet over the threshold"
    );

    // The cloud is away: the gateway acts on its own.
    eventually(60, "the gateway switched the device's input", || async {
        dev.led.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;

    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    let a = fan_alarm_once(&api).await;
    assert!(a["value"].as_f64().unwrap() > last + 2.0, "{a}");

    // A deadman placed on the gateway: g1 goes quiet and the gateway raises the alarm by its
    // own clock; g1 speaks again and it clears (the cloud judges neither).
    put_rule(
        &api,
        "quiet",
        json!({"gateway": GATEWAY,
               "when": {"type": "deadman", "after": "2s", "devices": {"devices": ["g1"]}}}),
    )
    .await;
    saved_at_gateway(&dir.path().join("edge").join("rules.json"), "quiet").await;
    dev.stop();
    let quiet = |state: &'static str| {
        let api = &api;
        move || async move {
            alarms(api)
                .await
                .into_iter()
                .find(|a| a["rule"] == "quiet" && a["state"] == state)
        }
    };
    let a = eventually(30, "the gateway's deadman alarm", quiet("active")).await;
    assert_eq!(a["device"], "g1", "{a}");
    let dev = TestDevice::start(edge.tcp, "g1");
    eventually(30, "the gateway's deadman cleared", quiet("cleared")).await;
    dev.stop();
    edge.stop().await;
    cloud.stop().await;
}

/// A gateway's alarm reaches the cloud even when the agent restarted during the outage
/// (the fresh rows it held for the link were in memory): from the `gateway_alarms` file it
/// sealed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_alarm_survives_an_agent_restart_during_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::mosquitto::free_port();
    let cfg = cloud_config(dir.path(), format!("127.0.0.1:{port}").parse().unwrap());
    let cloud = TestCloud::start(cfg.clone()).await;
    let addr = cloud.addr;
    let api = cloud.api();
    api.register("g1", Some(GATEWAY)).await;
    let edge = TestEdge::start(edge_config(dir.path(), addr)).await;
    let dev = TestDevice::start(edge.tcp, "g1");
    wait_online(&api, "g1").await;
    fan_rule_at_gateway(&api, &dev, &dir.path().join("edge")).await;
    cloud.stop().await;
    eventually(60, "the gateway switched the device's input", || async {
        dev.led.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;
    // The agent restarts with the cloud still away.
    dev.stop();
    edge.stop().await;
    let edge = TestEdge::start(edge_config(dir.path(), addr)).await;
    let cloud = TestCloud::start(cfg).await;
    let api = cloud.api();
    fan_alarm_once(&api).await;
    edge.stop().await;
    cloud.stop().await;
}
