//! Twins: reported, desired and delta, and the desired writes that reach devices.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value as Json;
use twinlake_twin::{TwinError, TwinKey};

use super::{ApiResult, Paths, St, blocking, body_json, ok};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/users/{u}/devices/{d}/twin", get(get_twin).patch(patch_twin))
        .route("/v1/twins", get(list_twins))
}

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
