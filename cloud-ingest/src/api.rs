//! The REST API: devices, twins, live resources (ours and the Thinger-compatible aliases),
//! properties, endpoints, tokens and gateways. Streams are in [`crate::streams`].
//!
//! Every route needs a token (see [`crate::auth`]); the scope each needs is in the OpenAPI
//! document served at `/v1/openapi.json`. Errors are `{"error": {"status", "message"}}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use twinlake_edge::link::{ErrorKind, LINK_PATH, Op};
use twinlake_edge::registry::CredentialHash;
use twinlake_twin::{TwinError, TwinKey};

use crate::auth::{Principal, Scope, new_token, sha256_hex};
use crate::error::ApiError;
use crate::gateway::ControlError;
use crate::server::AppState;
use crate::store::{
    DEVICES, DeviceRecord, ENDPOINTS, EndpointDef, GATEWAYS, GatewayRecord, PROPERTIES, TOKENS, TokenRecord, WebhookJob,
};

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.http.max_body_bytes;
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sql", axum::routing::post(crate::sql::post_sql))
        .route("/v1/devices", get(list_all_devices))
        .route("/v1/users/{u}/devices", get(list_devices).post(create_device))
        .route(
            "/v1/users/{u}/devices/{d}",
            get(get_device)
                .patch(update_device)
                .put(update_device)
                .delete(delete_device),
        )
        .route("/v1/users/{u}/devices/{d}/stats", get(stats))
        .route("/v1/users/{u}/devices/{d}/twin", get(get_twin).patch(patch_twin))
        .route(
            "/v1/users/{u}/devices/{d}/twin/events",
            get(crate::streams::twin_events),
        )
        .route(
            "/v1/users/{u}/devices/{d}/streams/{*path}",
            get(crate::streams::resource_sse),
        )
        .route("/v1/twins", get(list_twins))
        .route("/v1/events", get(crate::streams::all_events))
        .route("/v3/users/{u}/devices/{d}/resources", get(crate::streams::v3_resources))
        .route(
            "/v3/users/{u}/devices/{d}/resources/{*path}",
            get(v3_read).post(v3_post),
        )
        .route("/v2/users/{u}/devices/{d}/{*path}", get(v2_get).post(v2_post))
        .route("/v3/users/{u}/devices/{d}/properties", get(list_properties))
        .route(
            "/v3/users/{u}/devices/{d}/properties/{p}",
            get(get_property)
                .put(put_property)
                .post(put_property)
                .delete(delete_property),
        )
        .route("/v1/users/{u}/endpoints", get(list_endpoints))
        .route(
            "/v1/users/{u}/endpoints/{e}",
            get(get_endpoint)
                .put(put_endpoint)
                .post(put_endpoint)
                .delete(delete_endpoint),
        )
        .route("/v1/users/{u}/endpoints/{e}/call", post(call_endpoint))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(delete_token))
        .route("/v1/gateways", get(list_gateways).post(create_gateway))
        .route("/v1/gateways/{id}", delete(delete_gateway))
        .route(LINK_PATH, get(gateway_link))
        .merge(crate::tenancy::router())
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::tenancy::guard,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `/metrics` and `/healthz` for the metrics address (no token: keep it private).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): St| async move {
                let mut text = s.metrics.encode();
                if let Some(e) = &s.edge_metrics {
                    text.push_str(&e.encode());
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn fallback(p: Result<Principal, ApiError>) -> ApiError {
    match p {
        Err(e) => e,
        Ok(_) => ApiError::not_found("no such route; see /v1/openapi.json"),
    }
}

fn json_response(status: StatusCode, v: &Json) -> Response {
    (status, axum::Json(v)).into_response()
}

fn ok(v: Json) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

/// Parses a JSON body with a clear error; an empty body is `None`.
fn body_json(body: &Bytes) -> Result<Option<Json>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn body_as<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad request body: {e}")))
}

/// Ids: 1 to 64 of letters, digits, `-`, `_`, `.`.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn now() -> u64 {
    twinlake_twin::now_ms()
}

/// Runs blocking storage work off the async runtime.
async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R, ApiError> + Send + 'static) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(crate::Error::Storage(e.to_string())))?
}

// ---- OpenAPI ----

async fn openapi(p: Principal) -> ApiResult {
    p.require(Scope::Read)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response())
}

// ---- devices ----

fn device_json(d: &DeviceRecord, twin: Option<&twinlake_twin::Twin>) -> Json {
    let conn = twin.map(|t| &t.connection);
    json!({
        "user": d.user,
        "device": d.device,
        "name": d.name,
        "description": d.description,
        "type": "Generic",
        "gateway": d.gateway,
        "enabled": d.enabled,
        "tags": d.tags,
        "attributes": d.attributes,
        "created": d.created,
        "connection": {
            "active": conn.is_some_and(|c| c.online),
            "ts": conn.and_then(|c| c.last_seen),
            "gateway": conn.and_then(|c| c.gateway.clone()),
        },
    })
}

fn devices_json(state: &AppState, prefix: &str) -> Result<Json, ApiError> {
    let devices: Vec<(String, DeviceRecord)> = state.db.scan(DEVICES, prefix)?;
    let out: Vec<Json> = devices
        .iter()
        .map(|(_, d)| {
            let twin = state.twins.get(&TwinKey::new(&d.user, &d.device)).ok().flatten();
            device_json(d, twin.as_ref())
        })
        .collect();
    Ok(Json::Array(out))
}

async fn list_all_devices(p: Principal, State(s): St) -> ApiResult {
    p.require(Scope::Read)?;
    let prefix = p.user.map(|u| format!("{u}/")).unwrap_or_default();
    ok(blocking(move || devices_json(&s, &prefix)).await?)
}

async fn list_devices(p: Principal, State(s): St, Path(u): Path<String>) -> ApiResult {
    p.require(Scope::Read)?;
    ok(blocking(move || devices_json(&s, &format!("{u}/"))).await?)
}

/// A device to register.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub device: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// A credential to use; one is made when left out.
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub tags: Map<String, Json>,
    #[serde(default)]
    pub attributes: Map<String, Json>,
    /// Thinger clients send these; `type` is ignored, `credentials` is `credential`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub credentials: Option<String>,
}

/// Registers a device (blocking: call it off the runtime). Returns the record and the
/// credential, which is stored only hashed. Gateways hear of it at once.
/// A device credential's stored hash: a salted HMAC for one the platform made (144 random
/// bits), PBKDF2 at `registry.credential_iterations` for one a person chose.
fn hash_credential(s: &AppState, credential: &str, generated: bool) -> String {
    if generated {
        CredentialHash::fast(credential).to_string()
    } else {
        CredentialHash::new(credential, s.cfg.registry.credential_iterations).to_string()
    }
}

pub fn register_device(s: &AppState, user: &str, req: NewDevice) -> Result<(DeviceRecord, String), ApiError> {
    check_id("user", user)?;
    check_id("device", &req.device)?;
    crate::tenancy::ensure_user(s, user)?;
    let credential = req.credential.or(req.credentials);
    let generated = credential.is_none();
    let credential = credential.unwrap_or_else(|| new_token("").chars().take(24).collect());
    if credential.len() < 8 {
        return Err(ApiError::bad_request("a credential needs at least 8 characters"));
    }
    let rec = DeviceRecord {
        user: user.to_owned(),
        device: req.device.clone(),
        name: req.name,
        description: req.description,
        gateway: req.gateway.filter(|g| !g.is_empty()),
        tags: req.tags,
        attributes: req.attributes,
        enabled: true,
        credential_hash: hash_credential(s, &credential, generated),
        created: now(),
    };
    let key = TwinKey::new(&rec.user, &rec.device);
    let k = key.to_string();
    s.twins.write(|t| -> Result<(), ApiError> {
        let mut devices = t.transaction().open_table(DEVICES).map_err(crate::Error::from)?;
        if redb::ReadableTable::get(&devices, k.as_str())
            .map_err(crate::Error::from)?
            .is_some()
        {
            return Err(ApiError::conflict(format!("device {k} exists")));
        }
        devices
            .insert(k.as_str(), crate::store::encode(&rec).as_slice())
            .map_err(crate::Error::from)?;
        drop(devices);
        t.create(&key, rec.tags.clone())?;
        Ok(())
    })?;
    s.gateways.registry_changed();
    Ok((rec, credential))
}

async fn create_device(p: Principal, State(s): St, Path(u): Path<String>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    let req: NewDevice = body_as(&body)?;
    let st = s.clone();
    let (rec, credential) = blocking(move || register_device(&st, &u, req)).await?;
    let mut body = device_json(&rec, None);
    if let Some(o) = body.as_object_mut() {
        o.insert("credential".into(), credential.into());
        o.insert(
            "note".into(),
            "the credential is shown only now; it is stored hashed".into(),
        );
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

fn load_device(s: &AppState, u: &str, d: &str) -> Result<DeviceRecord, ApiError> {
    s.db.get(DEVICES, &format!("{u}/{d}"))?
        .ok_or_else(|| ApiError::not_found(format!("no device {u}/{d}")))
}

async fn get_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let rec = load_device(&s, &u, &d)?;
    let twin = s.twins.get(&TwinKey::new(&u, &d))?;
    ok(device_json(&rec, twin.as_ref()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceChange {
    name: Option<String>,
    description: Option<String>,
    /// `""` or `null` moves the device to the cloud's own listener.
    #[serde(default, deserialize_with = "some_or_null")]
    gateway: Option<Option<String>>,
    tags: Option<Map<String, Json>>,
    attributes: Option<Map<String, Json>>,
    enabled: Option<bool>,
    /// A new credential, or `"rotate"` to have one made.
    credential: Option<String>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

async fn update_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    let change: DeviceChange = body_as(&body)?;
    let st = s.clone();
    let (rec, credential) = blocking(move || {
        let mut rec = load_device(&st, &u, &d)?;
        if let Some(v) = change.name {
            rec.name = v;
        }
        if let Some(v) = change.description {
            rec.description = v;
        }
        if let Some(g) = change.gateway {
            rec.gateway = g.filter(|g| !g.is_empty());
        }
        if let Some(v) = change.attributes {
            rec.attributes = v;
        }
        if let Some(v) = change.enabled {
            rec.enabled = v;
        }
        let credential = match change.credential.as_deref() {
            None => None,
            Some("rotate") => Some((new_token("").chars().take(24).collect::<String>(), true)),
            Some(c) if c.len() >= 8 => Some((c.to_owned(), false)),
            Some(_) => return Err(ApiError::bad_request("a credential needs at least 8 characters")),
        };
        if let Some((c, generated)) = &credential {
            rec.credential_hash = hash_credential(&st, c, *generated);
        }
        let credential = credential.map(|(c, _)| c);
        let key = TwinKey::new(&rec.user, &rec.device);
        let tags = change.tags;
        st.twins.write(|t| -> Result<(), ApiError> {
            if let Some(tags) = tags {
                rec.tags = tags;
            }
            t.create(&key, rec.tags.clone())?;
            t.transaction()
                .open_table(DEVICES)
                .map_err(crate::Error::from)?
                .insert(key.to_string().as_str(), crate::store::encode(&rec).as_slice())
                .map_err(crate::Error::from)?;
            Ok(())
        })?;
        Ok((rec, credential))
    })
    .await?;
    s.gateways.registry_changed();
    let twin = s.twins.get(&TwinKey::new(&rec.user, &rec.device))?;
    let mut body = device_json(&rec, twin.as_ref());
    if let (Some(c), Some(o)) = (credential, body.as_object_mut()) {
        o.insert("credential".into(), c.into());
    }
    ok(body)
}

async fn delete_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Admin)?;
    let st = s.clone();
    blocking(move || {
        let key = TwinKey::new(&u, &d);
        let k = key.to_string();
        st.twins.write(|t| -> Result<(), ApiError> {
            let existed = t
                .transaction()
                .open_table(DEVICES)
                .map_err(crate::Error::from)?
                .remove(k.as_str())
                .map_err(crate::Error::from)?
                .is_some();
            if !existed {
                return Err(ApiError::not_found(format!("no device {k}")));
            }
            let mut props = t.transaction().open_table(PROPERTIES).map_err(crate::Error::from)?;
            let prefix = format!("{k}/");
            let _ = props
                .extract_if(|key, _| key.starts_with(&prefix))
                .map_err(crate::Error::from)?
                .count();
            drop(props);
            t.delete(&key)?;
            Ok(())
        })
    })
    .await?;
    s.gateways.registry_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn stats(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let twin = s
        .twins
        .get(&TwinKey::new(&u, &d))?
        .ok_or_else(|| ApiError::not_found(format!("no device {u}/{d}")))?;
    let c = &twin.connection;
    ok(json!({
        "connected": c.online,
        "connected_ts": c.connected_at,
        "last_seen": c.last_seen,
        "ip_address": c.ip,
        "gateway": c.gateway,
        "rx_bytes": c.rx_bytes,
        "tx_bytes": c.tx_bytes,
    }))
}

// ---- twins ----

async fn list_twins(p: Principal, State(s): St, q: axum::extract::RawQuery) -> ApiResult {
    p.require(Scope::Read)?;
    let user = p.listing_user(q.0.as_deref().and_then(|q| crate::auth::url_query(q, "user")))?;
    let twins = blocking(move || Ok(s.twins.list(user.as_deref())?)).await?;
    ok(Json::Array(twins.iter().map(twinlake_twin::Twin::to_json).collect()))
}

async fn get_twin(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let twin = s
        .twins
        .get(&TwinKey::new(&u, &d))?
        .ok_or_else(|| ApiError::not_found(format!("no twin for device {u}/{d}")))?;
    let etag = format!("\"{}\"", twin.version);
    Ok(([(header::ETAG, etag)], axum::Json(twin.to_json())).into_response())
}

async fn patch_twin(
    p: Principal,
    State(s): St,
    Path((u, d)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    p.require(Scope::WriteDesired)?;
    let body = body_json(&body)?.ok_or_else(|| ApiError::bad_request("send {\"desired\": {...}}"))?;
    let desired = body
        .get("desired")
        .or_else(|| body.pointer("/state/desired"))
        .ok_or_else(|| ApiError::bad_request("the body needs \"desired\" (or \"state\": {\"desired\": …})"))?;
    let Json::Object(patch) = desired.clone() else {
        return Err(ApiError::bad_request("\"desired\" must be an object"));
    };
    let body_version = match body.get("version") {
        None | Some(Json::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ApiError::bad_request("\"version\" must be a whole number"))?,
        ),
    };
    let if_match = match headers.get(header::IF_MATCH) {
        None => None,
        Some(h) => {
            let t = h
                .to_str()
                .unwrap_or("")
                .trim()
                .trim_start_matches("W/")
                .trim_matches('"');
            if t == "*" {
                None
            } else {
                Some(t.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        "If-Match must be a twin version (its ETag)",
                    )
                })?)
            }
        }
    };
    let key = TwinKey::new(&u, &d);
    let st = s.clone();
    let result = blocking(move || {
        Ok(st
            .twins
            .write(|t| t.patch_desired(&key, &patch, if_match.or(body_version))))
    })
    .await?;
    match result {
        Ok(twin) => {
            let etag = format!("\"{}\"", twin.version);
            Ok(([(header::ETAG, etag)], axum::Json(twin.to_json())).into_response())
        }
        Err(TwinError::VersionConflict { .. }) if if_match.is_some() => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "the twin changed since the version in If-Match",
        )),
        Err(e) => Err(e.into()),
    }
}

// ---- live resources ----

/// Sends a live request and maps its failures to HTTP.
async fn live(s: &Arc<AppState>, key: &TwinKey, op: Op, path: &str) -> Result<Option<Json>, ApiError> {
    s.metrics.live_requests.inc();
    match s.gateways.request(key, op, s.cfg.http.request_timeout).await {
        Ok(v) => Ok(v),
        Err(e) => Err(control_error(s, key, path, e)),
    }
}

/// How a failed live request shows in HTTP.
pub(crate) fn control_error(s: &AppState, key: &TwinKey, path: &str, e: ControlError) -> ApiError {
    let known = || s.twins.get(key).ok().flatten();
    match e {
        ControlError::Offline(m) => match known() {
            None if s
                .db
                .get::<DeviceRecord>(DEVICES, &key.to_string())
                .ok()
                .flatten()
                .is_none() =>
            {
                ApiError::not_found(format!("no device {key}"))
            }
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        },
        ControlError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
        ControlError::Remote(r) => match r.kind {
            ErrorKind::Offline => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.message),
            ErrorKind::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, r.message),
            ErrorKind::BadRequest => ApiError::bad_request(r.message),
            ErrorKind::DeviceError => {
                let described = known().and_then(|t| t.resources.is_some().then(|| t.resource_kind(path)));
                match described {
                    // The device described itself and has no such resource.
                    Some(None) => ApiError::not_found(format!("device {key} has no resource {path:?}")),
                    _ if path.is_empty() => ApiError::new(StatusCode::BAD_GATEWAY, r.message),
                    None => ApiError::not_found(format!(
                        "device {key} refused {path:?}: no such resource, or its handler failed"
                    )),
                    Some(Some(_)) => ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("device {key} answered {path:?} with an error"),
                    ),
                }
            }
        },
    }
}

fn live_key(u: &str, d: &str) -> TwinKey {
    TwinKey::new(u, d)
}

/// A raw JSON reply, or 200 with an empty body when the device sent nothing.
fn raw_reply(v: Option<Json>) -> Response {
    match v {
        Some(v) => axum::Json(v).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// The Thinger v2 reply: `{"out": value}`, or 200 with an empty body.
fn out_reply(v: Option<Json>) -> Response {
    raw_reply(v.map(|v| json!({ "out": v })))
}

/// Reads a value; records it in the twin when the resource is an output.
/// A GET of a resource runs it on the device: reading an output (it samples a sensor) or
/// an input needs `read`; a run resource or an input/output needs `control`, as a POST does.
/// A device not described yet is asked for its description first.
async fn require_for_get(p: &Principal, s: &Arc<AppState>, key: &TwinKey, path: &str) -> Result<(), ApiError> {
    // A token that could do neither learns nothing about the device.
    if p.require(Scope::Control).is_err() {
        p.require(Scope::Read)?;
    }
    let described = s.twins.get(key)?.and_then(|t| t.resources);
    let resources = match described {
        Some(r) => r,
        None => live(s, key, Op::Describe, "").await?.unwrap_or_default(),
    };
    match twinlake_twin::resource_kind(&resources, path) {
        Some(1 | 4) => p.require(Scope::Control),
        // Outputs, inputs, and what the device does not have (it answers 404).
        _ => p.require(Scope::Read),
    }
}

async fn read_value(p: &Principal, s: &Arc<AppState>, key: &TwinKey, path: &str) -> Result<Option<Json>, ApiError> {
    require_for_get(p, s, key, path).await?;
    let v = live(s, key, Op::Read { path: path.to_owned() }, path).await?;
    if let Some(v) = &v {
        s.read_reports.push(key, path, v.clone(), true);
    }
    Ok(v)
}

/// GET `/v3/…/resources/{path}`: an output's raw value (or a template with a trailing `api`).
async fn v3_read(p: Principal, State(s): St, Path((u, d, path)): Path<(String, String, String)>) -> ApiResult {
    let key = live_key(&u, &d);
    if let Some(res) = path.strip_suffix("/api") {
        p.require(Scope::Read)?;
        let v = live(&s, &key, Op::Template { path: res.to_owned() }, res).await?;
        return Ok(raw_reply(v));
    }
    Ok(raw_reply(read_value(&p, &s, &key, &path).await?))
}

/// POST `/v3/…/resources/{path}` with a raw JSON body: writes an input, calls an in/out,
/// runs a run resource (empty body). Answers with the raw output, if any.
async fn v3_post(
    p: Principal,
    State(s): St,
    Path((u, d, path)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    p.require(Scope::Control)?;
    let input = if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/octet-stream"))
    {
        let v = twinlake_sdk::pson::Value::decode(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not PSON: {e}")))?;
        Some(twinlake_sdk::json::to_json(&v))
    } else {
        body_json(&body)?
    };
    let key = live_key(&u, &d);
    let v = live(
        &s,
        &key,
        Op::Call {
            path: path.clone(),
            input,
        },
        &path,
    )
    .await?;
    Ok(raw_reply(v))
}

/// GET `/v2/…/{d}/api` describes; `/{res…}/api` gives the template; `/{res…}` reads an
/// output as `{"out": v}` (and runs a run resource).
async fn v2_get(p: Principal, State(s): St, Path((u, d, path)): Path<(String, String, String)>) -> ApiResult {
    let key = live_key(&u, &d);
    if path == "api" || path.ends_with("/api") {
        p.require(Scope::Read)?;
    }
    if path == "api" {
        let v = live(&s, &key, Op::Describe, "").await?;
        return Ok(raw_reply(v));
    }
    if let Some(res) = path.strip_suffix("/api") {
        let v = live(&s, &key, Op::Template { path: res.to_owned() }, res).await?;
        return Ok(raw_reply(v));
    }
    let v = read_value(&p, &s, &key, &path).await?;
    Ok(out_reply(v))
}

/// POST `/v2/…/{res…}` with `{"in": value}` (a bare value is accepted too): writes or calls;
/// answers `{"out": …}` when the resource has an output.
async fn v2_post(
    p: Principal,
    State(s): St,
    Path((u, d, path)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    p.require(Scope::Control)?;
    let input = body_json(&body)?.map(|b| match b {
        Json::Object(mut o) if o.len() == 1 && o.contains_key("in") => o.remove("in").unwrap_or(Json::Null),
        other => other,
    });
    let key = live_key(&u, &d);
    let v = live(
        &s,
        &key,
        Op::Call {
            path: path.clone(),
            input,
        },
        &path,
    )
    .await?;
    Ok(out_reply(v))
}

// ---- properties ----

async fn list_properties(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let props: Vec<(String, Json)> = s.db.scan(PROPERTIES, &format!("{u}/{d}/"))?;
    ok(Json::Array(
        props
            .into_iter()
            .filter_map(|(k, v)| Some(json!({ "property": k.rsplit_once('/')?.1, "value": v })))
            .collect(),
    ))
}

async fn get_property(p: Principal, State(s): St, Path((u, d, prop)): Path<(String, String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let v: Json =
        s.db.get(PROPERTIES, &format!("{u}/{d}/{prop}"))?
            .ok_or_else(|| ApiError::not_found(format!("device {u}/{d} has no property {prop:?}")))?;
    ok(json!({ "property": prop, "value": v }))
}

async fn put_property(
    p: Principal,
    State(s): St,
    Path((u, d, prop)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    p.require(Scope::Control)?;
    check_id("property", &prop)?;
    load_device(&s, &u, &d)?;
    let v = body_json(&body)?.ok_or_else(|| ApiError::bad_request("send the value, or {\"value\": …}"))?;
    let v = match v {
        Json::Object(mut o) if o.len() == 1 && o.contains_key("value") => o.remove("value").unwrap_or(Json::Null),
        other => other,
    };
    s.db.put(PROPERTIES, &format!("{u}/{d}/{prop}"), &v)?;
    // The device's gateway gets it with the registry (it serves GET_PROPERTY itself).
    s.gateways.registry_changed();
    ok(json!({ "property": prop, "value": v }))
}

async fn delete_property(p: Principal, State(s): St, Path((u, d, prop)): Path<(String, String, String)>) -> ApiResult {
    p.require(Scope::Control)?;
    if !s.db.delete(PROPERTIES, &format!("{u}/{d}/{prop}"))? {
        return Err(ApiError::not_found(format!("device {u}/{d} has no property {prop:?}")));
    }
    s.gateways.registry_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- endpoints ----

async fn list_endpoints(p: Principal, State(s): St, Path(u): Path<String>) -> ApiResult {
    p.require(Scope::Read)?;
    let eps: Vec<(String, EndpointDef)> = s.db.scan(ENDPOINTS, &format!("{u}/"))?;
    ok(Json::Array(
        eps.into_iter()
            .map(|(_, e)| serde_json::to_value(e).unwrap_or_default())
            .collect(),
    ))
}

async fn get_endpoint(p: Principal, State(s): St, Path((u, e)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let def: EndpointDef =
        s.db.get(ENDPOINTS, &format!("{u}/{e}"))?
            .ok_or_else(|| ApiError::not_found(format!("no endpoint {e}")))?;
    ok(serde_json::to_value(def).unwrap_or_default())
}

async fn put_endpoint(p: Principal, State(s): St, Path((u, e)): Path<(String, String)>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    check_id("endpoint", &e)?;
    let mut v = body_json(&body)?.ok_or_else(|| ApiError::bad_request("send the endpoint: {\"url\": …}"))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), e.clone().into());
    }
    let def: EndpointDef =
        serde_json::from_value(v).map_err(|err| ApiError::bad_request(format!("bad endpoint: {err}")))?;
    let url = reqwest::Url::parse(&def.url).map_err(|err| ApiError::bad_request(format!("url: {err}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::bad_request("url: use http or https"));
    }
    reqwest::Method::from_bytes(def.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ApiError::bad_request(format!("method {:?}", def.method)))?;
    s.db.put(ENDPOINTS, &format!("{u}/{e}"), &def)?;
    ok(serde_json::to_value(def).unwrap_or_default())
}

async fn delete_endpoint(p: Principal, State(s): St, Path((u, e)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Admin)?;
    if !s.db.delete(ENDPOINTS, &format!("{u}/{e}"))? {
        return Err(ApiError::not_found(format!("no endpoint {e}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// POST `/v1/users/{u}/endpoints/{e}/call`: what a device's CALL_ENDPOINT does.
async fn call_endpoint(p: Principal, State(s): St, Path((u, e)): Path<(String, String)>, body: Bytes) -> ApiResult {
    p.require(Scope::Control)?;
    let _: EndpointDef =
        s.db.get(ENDPOINTS, &format!("{u}/{e}"))?
            .ok_or_else(|| ApiError::not_found(format!("no endpoint {e}")))?;
    let job = WebhookJob {
        user: u,
        device: String::new(),
        endpoint: e,
        at: now(),
        payload: body_json(&body)?,
        attempts: 0,
    };
    let st = s.clone();
    blocking(move || {
        let tx = st.db.0.begin_write().map_err(crate::Error::from)?;
        crate::webhook::enqueue(&st, &tx, &job)?;
        tx.commit().map_err(crate::Error::from)?;
        Ok(())
    })
    .await?;
    s.webhook_wake.notify_one();
    Ok(json_response(StatusCode::ACCEPTED, &json!({ "queued": true })))
}

// ---- tokens and gateways ----

async fn list_tokens(p: Principal, State(s): St) -> ApiResult {
    p.require_platform()?;
    ok(serde_json::to_value(s.tokens.list()).unwrap_or_default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<Scope>,
    /// The user the token belongs to (it must exist); left out: a platform token.
    #[serde(default)]
    user: Option<String>,
}

async fn create_token(p: Principal, State(s): St, body: Bytes) -> ApiResult {
    p.require_platform()?;
    let req: NewToken = body_as(&body)?;
    check_id("token name", &req.name)?;
    if req.scopes.is_empty() {
        return Err(ApiError::bad_request("give the token at least one scope"));
    }
    if let Some(u) = &req.user
        && !crate::tenancy::user_exists(&s, u)?
    {
        return Err(ApiError::not_found(format!(
            "no user {u:?}: create it with POST /v1/users"
        )));
    }
    let token = new_token("tl_");
    let sha = sha256_hex(&token);
    let rec = TokenRecord {
        name: req.name,
        scopes: req.scopes,
        created: now(),
        user: req.user,
    };
    s.db.put(TOKENS, &sha, &rec)?;
    s.tokens.insert(sha, rec.clone());
    let mut body = serde_json::to_value(&rec).unwrap_or_default();
    if let Some(o) = body.as_object_mut() {
        o.insert("token".into(), token.into());
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

async fn delete_token(p: Principal, State(s): St, Path(name): Path<String>) -> ApiResult {
    p.require_platform()?;
    let shas = s.tokens.remove_named(&name);
    if shas.is_empty() {
        return Err(ApiError::not_found(format!("no token {name:?}")));
    }
    for sha in shas {
        s.db.delete(TOKENS, &sha)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_gateways(p: Principal, State(s): St) -> ApiResult {
    p.require_platform()?;
    let linked = s.gateways.linked();
    let gws: Vec<(String, GatewayRecord)> = s.db.scan(GATEWAYS, "")?;
    let mut out: Vec<Json> = gws
        .into_iter()
        .map(|(_, g)| json!({ "id": g.id, "created": g.created, "linked": linked.contains(&g.id) }))
        .collect();
    out.push(json!({ "id": s.local_gateway, "linked": linked.contains(&s.local_gateway), "in_process": true }));
    ok(Json::Array(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGateway {
    id: String,
    /// Users whose unregistered (MQTT, LoRaWAN) devices it may speak for.
    #[serde(default)]
    users: Vec<String>,
}

async fn create_gateway(p: Principal, State(s): St, body: Bytes) -> ApiResult {
    p.require_platform()?;
    let req: NewGateway = body_as(&body)?;
    check_id("gateway", &req.id)?;
    if req.id == s.local_gateway {
        return Err(ApiError::conflict(format!("{:?} is the cloud's own pipeline", req.id)));
    }
    let token = new_token("tlg_");
    let rec = GatewayRecord {
        id: req.id.clone(),
        token_sha256: sha256_hex(&token),
        created: now(),
        users: req.users,
    };
    s.db.put(GATEWAYS, &req.id, &rec)?;
    s.gateways.registry_changed();
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "id": req.id, "token": token, "note": "the token is shown only now" }),
    ))
}

async fn delete_gateway(p: Principal, State(s): St, Path(id): Path<String>) -> ApiResult {
    p.require_platform()?;
    if !s.db.delete(GATEWAYS, &id)? {
        return Err(ApiError::not_found(format!("no gateway {id}")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The gateway link: a WebSocket authenticated by a gateway token.
async fn gateway_link(State(s): St, req: axum::extract::Request) -> ApiResult {
    let (mut parts, _) = req.into_parts();
    let token = crate::auth::bearer(&parts).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a gateway token is needed (Authorization: Bearer)",
        )
    })?;
    let sha = sha256_hex(&token);
    let gws: Vec<(String, GatewayRecord)> = s.db.scan(GATEWAYS, "")?;
    let gateway = gws
        .into_iter()
        .find(|(_, g)| g.token_sha256 == sha)
        .map(|(id, _)| id)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the gateway token is not valid"))?;
    let ws = crate::streams::ws_upgrade(&mut parts, &s).await?;
    Ok(ws
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| crate::streams::pump_link(s, gateway, socket)))
}
