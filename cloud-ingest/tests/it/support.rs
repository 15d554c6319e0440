//! The cloud, an edge agent linked to it, SDK devices and an HTTP client, all on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};
use tokio::sync::oneshot;
use twinlake_cloud::auth::{Scope, sha256_hex};
use twinlake_cloud::config::{GatewayEntry, TokenEntry};
use twinlake_cloud::{AppState, Cloud, CloudConfig};
use twinlake_edge::{EdgeAgent, EdgeConfig};
use twinlake_sdk::client::{Client, ClientConfig};
use twinlake_sdk::device::Thing;
use twinlake_sdk::pson::Value;

pub const ADMIN: &str = "test-admin-token";
pub const READ: &str = "test-read-token";
pub const DESIRED: &str = "test-desired-token";
pub const CONTROL: &str = "test-control-token";
pub const GATEWAY: &str = "gw1";
pub const GATEWAY_TOKEN: &str = "test-gateway-token";
pub const USER: &str = "acme";
pub const CREDENTIAL: &str = "device-secret";

pub fn cloud_config(dir: &Path, addr: SocketAddr) -> CloudConfig {
    let mut c = CloudConfig {
        data_dir: dir.join("cloud"),
        ..CloudConfig::default()
    };
    c.http.addr = addr;
    c.http.request_timeout = Duration::from_secs(2);
    c.metrics.addr = None;
    // Debug builds: a low PBKDF2 cost for the credentials the tests choose.
    c.registry.credential_iterations = 1_000;
    c.webhooks.retry_min = Duration::from_millis(100);
    // The tests' webhook receivers listen on loopback, which endpoints may not reach by
    // default (SSRF); `rules::webhooks_to_private_addresses_are_refused` runs without this.
    c.webhooks.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let token = |name: &str, t: &str, s: Scope| TokenEntry {
        name: name.into(),
        sha256: sha256_hex(t),
        scopes: vec![s],
        user: None,
    };
    c.tokens = vec![
        token("admin", ADMIN, Scope::Admin),
        token("reader", READ, Scope::Read),
        token("desired", DESIRED, Scope::WriteDesired),
        token("control", CONTROL, Scope::Control),
    ];
    c.gateways = vec![GatewayEntry {
        id: GATEWAY.into(),
        token_sha256: sha256_hex(GATEWAY_TOKEN),
        users: vec![USER.into()],
    }];
    c.edge.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.lake.url = format!("file://{}", dir.join("lake").display());
    c.sql.postgres_addr = Some("127.0.0.1:0".parse().unwrap());
    c.sql.flight_addr = Some("127.0.0.1:0".parse().unwrap());
    c.edge.streams.default_interval = Duration::from_millis(300);
    c.edge.streams.intervals.insert("slow".into(), Duration::ZERO);
    c.edge.buffer.max_age = Duration::from_millis(500);
    c
}

/// A running cloud.
pub struct TestCloud {
    pub addr: SocketAddr,
    pub postgres: Option<SocketAddr>,
    #[allow(dead_code)]
    pub flight: Option<SocketAddr>,
    pub devices: Option<SocketAddr>,
    /// The HTTP device API, when `edge.device_http` is on.
    #[allow(dead_code)]
    pub device_http: Option<SocketAddr>,
    /// The CoAP source, when `edge.coap` is on.
    #[allow(dead_code)]
    pub coap: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), twinlake_cloud::Error>>>,
}

impl TestCloud {
    pub async fn start(cfg: CloudConfig) -> Self {
        let cloud = Cloud::start(cfg).await.expect("cloud starts");
        let addr = cloud.http_addr().unwrap();
        let devices = cloud.device_addrs().0;
        let device_http = cloud.device_http_addr();
        let coap = cloud.coap_addr();
        let (postgres, flight) = (cloud.postgres_addr(), cloud.flight_addr());
        let state = cloud.state();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cloud.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            postgres,
            flight,
            devices,
            device_http,
            coap,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn api(&self) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: format!("http://{}", self.addr),
        }
    }

    /// Stops it and waits until its database is closed.
    pub async fn stop(mut self) {
        drop(self.state);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// A running edge agent linked to the cloud.
pub struct TestEdge {
    pub tcp: SocketAddr,
    pub metrics: Arc<twinlake_edge::metrics::Metrics>,
    pub lake: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), twinlake_edge::Error>>>,
}

pub fn edge_config(dir: &Path, cloud: SocketAddr) -> EdgeConfig {
    let mut c = EdgeConfig {
        gateway: GATEWAY.into(),
        data_dir: dir.join("edge"),
        ..EdgeConfig::default()
    };
    c.listener.tcp = Some("127.0.0.1:0".parse().unwrap());
    c.listener.request_timeout = Duration::from_millis(800);
    c.metrics.addr = None;
    c.streams.default_interval = Duration::from_millis(300);
    // The test device's `slow` output takes 2 s: the agent must not sample it.
    c.streams.intervals.insert("slow".into(), Duration::ZERO);
    c.buffer.max_age = Duration::from_millis(500);
    c.upload.url = format!("file://{}", dir.join("lake").display());
    c.link.url = format!("ws://{cloud}/v1/gateway/link");
    c.link.token = GATEWAY_TOKEN.into();
    c.link.reconnect_min = Duration::from_millis(100);
    c.link.reconnect_max = Duration::from_millis(300);
    c
}

impl TestEdge {
    pub async fn start(cfg: EdgeConfig) -> Self {
        let lake = PathBuf::from(cfg.upload.url.trim_start_matches("file://"));
        let agent = EdgeAgent::start(cfg).await.expect("edge starts");
        let tcp = agent.tcp_addr().unwrap();
        let metrics = agent.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        Self {
            tcp,
            metrics,
            lake,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// The HTTP API.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Json>,
    ) -> (StatusCode, Json) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Json::Null
        } else {
            Json::String(text)
        });
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Json) {
        self.call(Method::GET, path, Some(ADMIN), None).await
    }

    pub async fn post(&self, path: &str, body: Json) -> (StatusCode, Json) {
        self.call(Method::POST, path, Some(ADMIN), Some(body)).await
    }

    pub async fn twin(&self, device: &str) -> Json {
        let (s, j) = self.get(&format!("/v1/users/{USER}/devices/{device}/twin")).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        j
    }

    /// PATCHes `desired` into a device's twin with a token that may write desired state;
    /// asserts that it was taken and returns the twin it answered with.
    pub async fn set_desired(&self, device: &str, desired: Json) -> Json {
        let (s, j) = self
            .call(
                Method::PATCH,
                &format!("/v1/users/{USER}/devices/{device}/twin"),
                Some(DESIRED),
                Some(serde_json::json!({ "desired": desired })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{j}");
        j
    }

    /// Defines `USER`'s endpoint `name` as `def` (`{"url": …}`); asserts it was taken.
    pub async fn put_endpoint(&self, name: &str, def: Json) {
        let (s, j) = self
            .call(
                Method::PUT,
                &format!("/v1/users/{USER}/endpoints/{name}"),
                Some(ADMIN),
                Some(def),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{j}");
    }

    /// Registers a device behind `gateway` (None: the cloud's own listener).
    pub async fn register(&self, device: &str, gateway: Option<&str>) {
        let (s, j) = self
            .post(
                &format!("/v1/users/{USER}/devices"),
                json!({"device": device, "gateway": gateway, "credential": CREDENTIAL, "tags": {"site": "lab"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{j}");
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for up to `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Command = Box<dyn FnOnce(&mut Thing) + Send>;

/// An SDK device on its own thread: `temp` (output, counts up), `led` (input), `in_out`
/// (sum and product), `reboot` (run, counted) and `slow` (an output that takes 2 s).
pub struct TestDevice {
    pub led: Arc<AtomicBool>,
    /// Every `temp` value the device produced, and when.
    pub produced: Arc<std::sync::Mutex<Vec<(f64, std::time::Instant)>>>,
    pub reboots: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    commands: std_mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDevice {
    pub fn start(addr: SocketAddr, device: &str) -> Self {
        Self::start_as(addr, USER, device)
    }

    /// The device `user/device`.
    pub fn start_as(addr: SocketAddr, user: &str, device: &str) -> Self {
        let led = Arc::new(AtomicBool::new(false));
        let reboots = Arc::new(AtomicU64::new(0));
        let mut thing = Thing::default();
        let n = Arc::new(AtomicU64::new(0));
        let produced = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = produced.clone();
        thing.resource("temp").output(move |out| {
            let v = 20.0 + n.fetch_add(1, Ordering::Relaxed) as f64 / 10.0;
            if let Ok(mut l) = log.lock() {
                l.push((v, std::time::Instant::now()));
            }
            *out = v.into();
        });
        thing.resource("led").input_bool(led.clone());
        thing.resource("in_out").input_output(|input, out| {
            let a = input.entry("value1").or_insert(0).as_i64().unwrap_or(0);
            let b = input.entry("value2").or_insert(0).as_i64().unwrap_or(0);
            *out.entry("sum") = (a + b).into();
            *out.entry("mult") = (a * b).into();
        });
        let r = reboots.clone();
        thing.resource("reboot").run(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        thing.resource("slow").output(|out| {
            std::thread::sleep(Duration::from_secs(2));
            *out = Value::from(1);
        });
        let mut cfg = ClientConfig::new(&addr.ip().to_string(), addr.port(), user, device, CREDENTIAL);
        cfg.reconnect_min = Duration::from_millis(100);
        cfg.reconnect_max = Duration::from_millis(300);
        cfg.poll_interval = Duration::from_millis(10);
        let stop = Arc::new(AtomicBool::new(false));
        let (commands, rx) = std_mpsc::channel::<Command>();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut client = Client::new(cfg, thing);
            while !s.load(Ordering::Relaxed) {
                let _ = client.handle();
                while let Ok(cmd) = rx.try_recv() {
                    cmd(client.thing());
                }
            }
        });
        Self {
            led,
            produced,
            reboots,
            stop,
            commands,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the device's thread.
    pub fn with(&self, f: impl FnOnce(&mut Thing) + Send + 'static) {
        let _ = self.commands.send(Box::new(f));
    }

    /// Disconnects (the thread ends and the socket closes).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a cloud and an edge agent linked to it; registers `devices` behind the edge.
pub async fn cloud_and_edge(dir: &Path, devices: &[&str]) -> (TestCloud, TestEdge, Api) {
    let cloud = TestCloud::start(cloud_config(dir, "127.0.0.1:0".parse().unwrap())).await;
    let api = cloud.api();
    for d in devices {
        api.register(d, Some(GATEWAY)).await;
    }
    let edge = TestEdge::start(edge_config(dir, cloud.addr)).await;
    // The gateway is linked and has the registry once its devices can log in.
    let state = cloud.state.clone();
    eventually(10, "the gateway links", || {
        let linked = state.gateways.linked().contains(&GATEWAY.to_string());
        async move { linked.then_some(()) }
    })
    .await;
    (cloud, edge, api)
}

/// Waits until a device's twin shows it online and with a described `led` input.
pub async fn wait_online(api: &Api, device: &str) {
    eventually(10, &format!("{device} online and described"), || async {
        let t = api.twin(device).await;
        (t["connection"]["online"] == json!(true) && t["resources"]["led"]["fn"] == json!(2)).then_some(())
    })
    .await;
}

/// Logs to the test output when RUST_LOG is set.
pub fn logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    }
}

/// A local webhook receiver: each request's `x-twinlake-device` header and body.
pub async fn receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let dev = headers
                    .get("x-twinlake-device")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send((dev, body));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, rx)
}

/// A Postgres-wire client of the cloud with `token` as the password.
pub async fn pg_connect(addr: SocketAddr, token: &str) -> tokio_postgres::Client {
    let cfg = format!(
        "host={} port={} user=client password={token} dbname=twinlake sslmode=disable",
        addr.ip(),
        addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&cfg, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// The Python with the test clients: `TWINLAKE_PYTHON`, or the `.venv` scripts/test makes.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("TWINLAKE_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the test clients: run scripts/test (it makes .venv) or set TWINLAKE_PYTHON"
    );
    venv
}
