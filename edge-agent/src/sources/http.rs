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

pub mod commands;
pub mod config;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::{debug, warn};
use twinlake_sdk::json::from_json;

use self::commands::Commands;
use self::config::DeviceHttpSection;
use super::{Control, Heard, Presence, Southbound, connected, disconnected};
use crate::Error;
use crate::event::{Acker, DeviceEvent, DeviceEventKind, DeviceKey, SourceRow};
use crate::listener::Authenticator;
use crate::listener::session::Credentials;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::registry::DeviceRegistry;

/// How long a request waits for its rows to be durable before it answers 503.
const DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// What the agent hands the source.
#[derive(Debug)]
pub struct Parts {
    pub registry: Arc<DeviceRegistry>,
    pub limiter: Arc<RateLimiter>,
    pub events: mpsc::Sender<DeviceEvent>,
    pub metrics: Arc<Metrics>,
    pub southbound: Arc<Southbound>,
}

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
    parts: Parts,
    tls: bool,
    slow_auth: Semaphore,
    presence: Mutex<Presence>,
    commands: Arc<Commands>,
    draining: AtomicBool,
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
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            tls: tls.is_some(),
            slow_auth: Semaphore::new(cores),
            presence: Mutex::new(Presence::new(cfg.offline_after, cfg.max_devices)),
            commands: Arc::new(Commands::new(cfg.max_commands_per_device)),
            draining: AtomicBool::new(false),
            parts,
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
                _ = tick.tick() => expire(&self.shared).await,
                r = phase.changed() => {
                    let now = *phase.borrow();
                    if r.is_err() || now == Phase::Done {
                        break;
                    }
                    if now == Phase::Draining {
                        self.shared.draining.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let _ = stop.send(true);
        let _ = server.await;
    }
}

/// How far along a shutdown the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    Draining,
    Done,
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
            s.parts.metrics.source("http", "unauthorized");
            refuse(
                StatusCode::UNAUTHORIZED,
                "no Authorization: Bearer user:device:credential",
            )
        })
}

/// A token's parts: `user:device:credential`.
pub fn parse_token(token: &str) -> Option<Credentials> {
    let mut it = token.splitn(3, ':');
    let (user, device, credential) = (it.next()?, it.next()?, it.next()?);
    let id_ok =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (id_ok(user) && id_ok(device) && !credential.is_empty() && credential.len() <= 256).then(|| Credentials {
        user: user.to_owned(),
        device: device.to_owned(),
        credential: credential.to_owned(),
    })
}

/// Checks the token; marks the device online (counted against `max_devices`).
async fn authenticate(s: &Shared, peer: SocketAddr, token: &str) -> Result<DeviceKey, Refusal> {
    let metrics = &s.parts.metrics;
    if s.draining.load(Ordering::Relaxed) {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down"));
    }
    let Some(creds) = parse_token(token) else {
        metrics.auth_failures.inc();
        metrics.source("http", "unauthorized");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a device token is user:device:credential",
        ));
    };
    let key = DeviceKey::new(&creds.user, &creds.device);
    if s.parts.limiter.is_locked(peer.ip(), &key) {
        metrics.auth_failures.inc();
        metrics.auth_rate_limited.inc();
        metrics.source("http", "rate_limited");
        return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts; wait"));
    }
    let ok = match s.parts.registry.quick_check(&creds) {
        Some(ok) => ok,
        None => {
            let _permit = s.slow_auth.acquire().await;
            let registry = s.parts.registry.clone();
            tokio::task::spawn_blocking(move || registry.authenticate(&creds))
                .await
                .unwrap_or(false)
        }
    };
    if !ok {
        metrics.auth_failures.inc();
        metrics.source("http", "unauthorized");
        let locked = s.parts.limiter.failure(peer.ip(), &key);
        warn!(device = %key, %peer, locked_out = locked, "HTTP device authentication failed");
        return Err(refuse(StatusCode::UNAUTHORIZED, "unknown device or wrong credential"));
    }
    s.parts.limiter.success(&key);
    online(s, &key, peer).await?;
    Ok(key)
}

async fn online(s: &Shared, key: &DeviceKey, peer: SocketAddr) -> Result<(), Refusal> {
    let heard = s
        .presence
        .lock()
        .map_or(Heard::Refused, |mut p| p.heard(&key.to_string(), Instant::now()));
    match heard {
        Heard::Again => Ok(()),
        Heard::Refused => {
            s.parts.metrics.source("http", "device_cap");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many devices online through this API",
            ))
        }
        Heard::Online => {
            let control = Arc::new(HttpControl {
                commands: s.commands.clone(),
                user: key.user.clone(),
            });
            s.parts.southbound.insert(key.clone(), control);
            if !connected(&s.parts.events, key.clone(), SystemTime::now(), peer, s.tls, "http").await {
                return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down"));
            }
            Ok(())
        }
    }
}

/// Marks the devices silent for `offline_after` offline.
async fn expire(s: &Shared) {
    let gone = s
        .presence
        .lock()
        .map(|mut p| p.expire(Instant::now()))
        .unwrap_or_default();
    for name in gone {
        let Some((user, device)) = name.split_once('/') else {
            continue;
        };
        let key = DeviceKey::new(user, device);
        s.parts.southbound.remove(&key);
        s.commands.forget(&key);
        debug!(device = %key, "HTTP device silent; offline");
        disconnected(&s.parts.events, key, SystemTime::now(), "silent").await;
    }
}

fn bad_body(s: &Shared, why: String) -> Refusal {
    s.parts.metrics.source("http", "bad_request");
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

/// The rows a telemetry body (ThingsBoard's shapes) makes for `device` in `table`; an
/// error for a body or table wrong anywhere, so a bad request stores nothing.
pub fn telemetry_rows(device: &str, table: &str, body: &[u8], now: SystemTime) -> Result<Vec<SourceRow>, String> {
    twinlake_lake::model::table_name(&[table]).map_err(|e| format!("table {table:?}: {e}"))?;
    let values = super::telemetry::decode_thingsboard(body, now)?;
    Ok(values
        .into_iter()
        .map(|(at, payload)| SourceRow {
            device: device.to_owned(),
            resource: table.to_owned(),
            at,
            payload,
        })
        .collect())
}

/// An attributes body: its row in `table` and each attribute as a property.
pub fn attribute_rows(
    device: &str,
    table: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(SourceRow, Vec<(String, twinlake_sdk::pson::Value)>), String> {
    let j: Json = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Json::Object(o) = &j else {
        return Err("attributes are a JSON object".into());
    };
    let props = o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect();
    let row = SourceRow {
        device: device.to_owned(),
        resource: table.to_owned(),
        at: now,
        payload: from_json(&j),
    };
    Ok((row, props))
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
    let Some(resource) = s.commands.replied(&key, id) else {
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
        payload: from_json(&j),
    };
    store(s, key, vec![row], Vec::new()).await
}

/// Hands the rows (and properties) to ingest; answers 200 once the rows are durable.
async fn store(
    s: &Shared,
    key: DeviceKey,
    rows: Vec<SourceRow>,
    props: Vec<(String, twinlake_sdk::pson::Value)>,
) -> Result<Response, Refusal> {
    let gone = || refuse(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down");
    let now = SystemTime::now();
    for (property, v) in props {
        let kind = DeviceEventKind::PropertySet {
            property,
            payload: Some(v),
        };
        let ev = DeviceEvent {
            device: key.clone(),
            at: now,
            kind,
        };
        s.parts.events.send(ev).await.map_err(|_| gone())?;
    }
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let ack = Acker::from_fn(move |ok| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(ok);
        }
    });
    let kind = DeviceEventKind::Message {
        rows,
        delivery: None,
        ack: Some(ack),
    };
    s.parts
        .events
        .send(DeviceEvent {
            device: key,
            at: now,
            kind,
        })
        .await
        .map_err(|_| gone())?;
    match tokio::time::timeout(DURABLE_WITHIN, rx).await {
        Ok(Ok(true)) => {
            s.parts.metrics.source("http", "stored");
            Ok(StatusCode::OK.into_response())
        }
        Ok(Ok(false)) => {
            s.parts.metrics.source("http", "unavailable");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the rows could not be stored; send again",
            ))
        }
        Ok(Err(_)) | Err(_) => {
            s.parts.metrics.source("http", "unavailable");
            Err(gone())
        }
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
        match s.commands.take(&key) {
            Ok(cmd) => {
                s.parts.metrics.source("http", "command_sent");
                return Ok(axum::Json(cmd).into_response());
            }
            Err(ready) => {
                if s.draining.load(Ordering::Relaxed)
                    || tokio::time::timeout_at(deadline, ready.notified()).await.is_err()
                {
                    return Err(refuse(StatusCode::REQUEST_TIMEOUT, "no command within the timeout"));
                }
            }
        }
    }
}

/// Carries writes to an HTTP device: they wait for its next poll.
#[derive(Debug)]
struct HttpControl {
    commands: Arc<Commands>,
    user: String,
}

impl Control for HttpControl {
    fn write(&self, device: &str, path: &str, value: &Json) -> Result<(), String> {
        self.commands
            .push(&DeviceKey::new(&self.user, device), path, value.clone())
            .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_a_login() {
        let c = parse_token("acme:dev-1:s3cr:et").unwrap();
        assert_eq!(
            (c.user.as_str(), c.device.as_str(), c.credential.as_str()),
            ("acme", "dev-1", "s3cr:et")
        );
        for bad in ["", "acme", "acme:dev", "acme:dev:", ":dev:x", "a/b:dev:x", "acme:d v:x"] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
        assert!(parse_token(&format!("a:b:{}", "x".repeat(257))).is_none());
    }
}
