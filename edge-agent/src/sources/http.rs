//! The HTTP device API: devices that POST JSON (scripts, PLC gateways, firmware with an
//! HTTP client) send telemetry and attributes and long-poll for commands, with their
//! registry credential.
//!
//! **Routes.** ThingsBoard's device API, with the token in the path, and the same with the
//! token as a Bearer header (and the table named in the path):
//!
//! | ThingsBoard form                  | Bearer form                      |
//! |-----------------------------------|----------------------------------|
//! | `POST /api/v1/{token}/telemetry`  | `POST /v1/telemetry[/{table}]`   |
//! | `POST /api/v1/{token}/attributes` | `POST /v1/attributes`            |
//! | `GET /api/v1/{token}/rpc?timeout=`| `GET /v1/rpc?timeout=`           |
//! | `POST /api/v1/{token}/rpc/{id}`   | `POST /v1/rpc/{id}`              |
//! | `GET /api/v1/{token}/whoami`      | `GET /v1/whoami`                 |
//!
//! A device's token is `user:device:credential` (ids hold no `:`), checked against the
//! registry like a Thinger login, with the same lockouts. It is never logged.
//!
//! **At least once.** A 200 means the rows are fsynced in the WAL; a client that sees
//! anything else (or nothing) sends again, and may store a row twice, never lose one. A
//! request wrong anywhere (bad JSON, a bad time, a bad table name, a body over
//! `max_body_bytes`: 413) stores nothing.
//!
//! **Commands.** A write to a device (a desired value, a live write) waits in a bounded
//! queue until the device polls; it gets `{"id", "method": resource, "params": value}`.
//! Its reply (`POST …/rpc/{id}`) is stored as the resource's value, which is the twin's
//! reported value: the loop closes.

pub mod config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::watch;
use twinlake_sdk::json::from_json;

use self::config::DeviceHttpSection;
pub use super::gate::Phase;
use super::gate::{Denied, Gate, GateLimits, NotStored, Parts};
use super::telemetry::storable;
pub use super::telemetry::{attribute_rows, telemetry_rows};
use crate::Error;
use crate::event::SourceRow;

/// A bound, not yet serving HTTP device API.
pub struct HttpSource {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

struct Shared {
    cfg: DeviceHttpSection,
    gate: Gate,
}

impl HttpSource {
    /// Binds `cfg.addr` (which must be set) and reads the TLS files.
    pub async fn bind(cfg: &DeviceHttpSection, parts: Parts) -> Result<Self, Error> {
        let addr = cfg
            .addr
            .ok_or_else(|| Error::Config("device_http.addr is off".into()))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => {
                let read = crate::error::read_file;
                Some(crate::listener::tls_acceptor(&read(c)?, &read(k)?)?.0)
            }
            _ => None,
        };
        let limits = GateLimits {
            offline_after: cfg.offline_after,
            max_devices: cfg.max_devices,
            max_commands_per_device: cfg.max_commands_per_device,
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            gate: Gate::new("http", parts, tls.is_some(), limits),
        });
        Ok(Self { listener, tls, shared })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `phase` is [`Phase::Done`]; from [`Phase::Draining`] new requests get
    /// 503 while those already taken wait for their rows to be durable.
    pub async fn run(self, mut phase: watch::Receiver<Phase>) {
        let limits = self.shared.cfg.limits();
        let app = router(self.shared.clone());
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(crate::http::serve(self.listener, self.tls, app, limits, stop_rx));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => drop(self.shared.gate.expire().await),
                r = phase.changed() => {
                    let now = *phase.borrow();
                    if r.is_err() || now == Phase::Done {
                        break;
                    }
                    if now == Phase::Draining {
                        self.shared.gate.drain();
                    }
                }
            }
        }
        let _ = stop.send(true);
        let _ = server.await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.cfg.max_body_bytes;
    Router::new()
        .route("/api/v1/{token}/telemetry", post(tb_telemetry))
        .route("/api/v1/{token}/attributes", post(tb_attributes))
        .route("/api/v1/{token}/rpc", get(tb_poll))
        .route("/api/v1/{token}/rpc/{id}", post(tb_reply))
        .route("/v1/telemetry", post(bearer_telemetry))
        .route("/v1/telemetry/{table}", post(bearer_telemetry_to))
        .route("/v1/attributes", post(bearer_attributes))
        .route("/v1/rpc", get(bearer_poll))
        .route("/v1/rpc/{id}", post(bearer_reply))
        .route("/api/v1/{token}/whoami", get(tb_whoami))
        .route("/v1/whoami", get(bearer_whoami))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

type S = State<Arc<Shared>>;
type Peer = ConnectInfo<SocketAddr>;

#[derive(Debug, Deserialize)]
struct PollQuery {
    /// Milliseconds.
    timeout: Option<u64>,
}

async fn tb_telemetry(State(s): S, ConnectInfo(p): Peer, Path(token): Path<String>, body: Bytes) -> Response {
    answer(telemetry(&s, p, &token, None, &body).await)
}
async fn tb_attributes(State(s): S, ConnectInfo(p): Peer, Path(token): Path<String>, body: Bytes) -> Response {
    answer(attributes(&s, p, &token, &body).await)
}
async fn tb_poll(State(s): S, ConnectInfo(p): Peer, Path(token): Path<String>, Query(q): Query<PollQuery>) -> Response {
    answer(poll(&s, p, &token, q.timeout).await)
}
async fn tb_reply(State(s): S, ConnectInfo(p): Peer, Path((token, id)): Path<(String, u32)>, body: Bytes) -> Response {
    answer(reply(&s, p, &token, id, &body).await)
}
async fn tb_whoami(State(s): S, ConnectInfo(p): Peer, Path(token): Path<String>) -> Response {
    answer(whoami(&s, p, &token).await)
}
async fn bearer_whoami(State(s): S, ConnectInfo(p): Peer, h: HeaderMap) -> Response {
    answer(async { whoami(&s, p, bearer(&s, &h)?).await }.await)
}
async fn bearer_telemetry(State(s): S, ConnectInfo(p): Peer, h: HeaderMap, body: Bytes) -> Response {
    answer(async { telemetry(&s, p, bearer(&s, &h)?, None, &body).await }.await)
}
async fn bearer_telemetry_to(
    State(s): S,
    ConnectInfo(p): Peer,
    Path(table): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    answer(async { telemetry(&s, p, bearer(&s, &h)?, Some(&table), &body).await }.await)
}
async fn bearer_attributes(State(s): S, ConnectInfo(p): Peer, h: HeaderMap, body: Bytes) -> Response {
    answer(async { attributes(&s, p, bearer(&s, &h)?, &body).await }.await)
}
async fn bearer_poll(State(s): S, ConnectInfo(p): Peer, h: HeaderMap, Query(q): Query<PollQuery>) -> Response {
    answer(async { poll(&s, p, bearer(&s, &h)?, q.timeout).await }.await)
}
async fn bearer_reply(State(s): S, ConnectInfo(p): Peer, Path(id): Path<u32>, h: HeaderMap, body: Bytes) -> Response {
    answer(async { reply(&s, p, bearer(&s, &h)?, id, &body).await }.await)
}

/// A refusal: its status, and why (as `{"error": …}`).
#[derive(Debug)]
struct Refusal(StatusCode, String);

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal(status, why.into())
}

fn answer(r: Result<Response, Refusal>) -> Response {
    match r {
        Ok(r) => r,
        Err(Refusal(status, why)) => {
            let mut r = (status, axum::Json(json!({ "error": why }))).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            r
        }
    }
}

fn bearer<'a>(s: &Shared, h: &'a HeaderMap) -> Result<&'a str, Refusal> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            s.gate.count("unauthorized");
            refuse(
                StatusCode::UNAUTHORIZED,
                "no Authorization: Bearer user:device:credential",
            )
        })
}

/// Checks the token; the device is online from here.
async fn authenticate(s: &Shared, peer: SocketAddr, token: &str) -> Result<crate::event::DeviceKey, Refusal> {
    s.gate.authenticate(peer, token).await.map_err(|d| match d {
        Denied::Unauthorized => refuse(
            StatusCode::UNAUTHORIZED,
            "unknown device or wrong credential (a token is user:device:credential)",
        ),
        Denied::RateLimited => refuse(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts; wait"),
        Denied::DeviceCap => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many devices online through this API",
        ),
        Denied::ShuttingDown => refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down"),
    })
}

fn bad_body(s: &Shared, why: String) -> Refusal {
    s.gate.count("bad_request");
    refuse(StatusCode::BAD_REQUEST, why)
}

async fn telemetry(
    s: &Shared,
    peer: SocketAddr,
    token: &str,
    table: Option<&str>,
    body: &[u8],
) -> Result<Response, Refusal> {
    let key = authenticate(s, peer, token).await?;
    let table = table.unwrap_or(&s.cfg.resource);
    let rows = telemetry_rows(&key.device, table, body, SystemTime::now()).map_err(|e| bad_body(s, e))?;
    store(s, key, rows, Vec::new()).await
}

async fn attributes(s: &Shared, peer: SocketAddr, token: &str, body: &[u8]) -> Result<Response, Refusal> {
    let key = authenticate(s, peer, token).await?;
    let (row, props) =
        attribute_rows(&key.device, &s.cfg.attributes_resource, body, SystemTime::now()).map_err(|e| bad_body(s, e))?;
    store(s, key, vec![row], props).await
}

async fn reply(s: &Shared, peer: SocketAddr, token: &str, id: u32, body: &[u8]) -> Result<Response, Refusal> {
    let key = authenticate(s, peer, token).await?;
    let j: Json = serde_json::from_slice(body).map_err(|e| bad_body(s, format!("the body is not JSON: {e}")))?;
    let payload = storable(from_json(&j)).map_err(|e| bad_body(s, e))?;
    let Some(resource) = s.gate.commands().replied(&key, id) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no command {id} waits for a reply"),
        ));
    };
    if twinlake_lake::model::table_name(&[resource.as_str()]).is_err() {
        // A resource path (a/b) is no table: the reply is taken, nothing stored.
        return Ok(StatusCode::OK.into_response());
    }
    let row = SourceRow {
        device: key.device.clone(),
        resource,
        at: SystemTime::now(),
        payload,
    };
    store(s, key, vec![row], Vec::new()).await
}

/// Hands the rows (and properties) to ingest; answers 200 once the rows are durable.
async fn store(
    s: &Shared,
    key: crate::event::DeviceKey,
    rows: Vec<SourceRow>,
    props: Vec<(String, twinlake_sdk::pson::Value)>,
) -> Result<Response, Refusal> {
    match s.gate.store(key, rows, props).await {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(NotStored::Failed) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the rows could not be stored; send again",
        )),
        Err(NotStored::ShuttingDown) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down")),
    }
}

/// Who the token says the caller is (a device checking its token; nothing is stored).
async fn whoami(s: &Shared, peer: SocketAddr, token: &str) -> Result<Response, Refusal> {
    let key = authenticate(s, peer, token).await?;
    Ok(axum::Json(json!({ "user": key.user, "device": key.device })).into_response())
}

/// A long-poll: the oldest waiting command, or 408 after the timeout.
async fn poll(s: &Shared, peer: SocketAddr, token: &str, timeout_ms: Option<u64>) -> Result<Response, Refusal> {
    let key = authenticate(s, peer, token).await?;
    let wait = timeout_ms
        .map_or(s.cfg.poll_timeout, Duration::from_millis)
        .min(s.cfg.max_poll_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match s.gate.commands().take(&key) {
            Ok(cmd) => {
                s.gate.count("command_sent");
                return Ok(axum::Json(cmd).into_response());
            }
            Err(ready) => {
                if s.gate.draining() || tokio::time::timeout_at(deadline, ready.notified()).await.is_err() {
                    return Err(refuse(StatusCode::REQUEST_TIMEOUT, "no command within the timeout"));
                }
            }
        }
    }
}
