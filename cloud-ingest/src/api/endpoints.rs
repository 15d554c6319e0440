//! Endpoints: webhooks a device's CALL_ENDPOINT (or a user) triggers.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use super::{ApiResult, Paths, St, blocking, body_json, check_id, json_response, now, ok};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::store::{ENDPOINTS, EndpointDef, WebhookJob};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/users/{u}/endpoints", get(list_endpoints))
        .route(
            "/v1/users/{u}/endpoints/{e}",
            get(get_endpoint)
                .put(put_endpoint)
                .post(put_endpoint)
                .delete(delete_endpoint),
        )
        .route("/v1/users/{u}/endpoints/{e}/call", post(call_endpoint))
}

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
    s.webhook_policy
        .check_url(&url)
        .map_err(|why| ApiError::bad_request(format!("url: {why}")))?;
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
