//! Live resources: reads, writes, calls and runs through the device's gateway, on our paths
//! and the Thinger-compatible `/v2`, `/v3` ones.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};
use twinlake_edge::link::{ErrorKind, Op};
use twinlake_twin::TwinKey;

use super::{ApiResult, Paths, St, body_json};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::gateway::ControlError;
use crate::state::AppState;
use crate::store::{DEVICES, DeviceRecord};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route(
            "/v3/users/{u}/devices/{d}/resources/{*path}",
            get(v3_read).post(v3_post),
        )
        .route("/v2/users/{u}/devices/{d}/{*path}", get(v2_get).post(v2_post))
}

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
    Ok(raw_reply(call(&s, &u, &d, path, input).await?))
}

/// Calls resource `path` of `u/d` with `input` (writes an input, runs a run resource).
async fn call(
    s: &Arc<AppState>,
    u: &str,
    d: &str,
    path: String,
    input: Option<Json>,
) -> Result<Option<Json>, ApiError> {
    let key = live_key(u, d);
    let op = Op::Call {
        path: path.clone(),
        input,
    };
    live(s, &key, op, &path).await
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
    Ok(out_reply(call(&s, &u, &d, path, input).await?))
}
