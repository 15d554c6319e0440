//! Device properties (Thinger's `/v3/…/properties`), which gateways hand to devices.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::devices::load_device;
use super::{ApiResult, Paths, St, body_json, check_id, ok};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::store::PROPERTIES;

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v3/users/{u}/devices/{d}/properties", get(list_properties))
        .route(
            "/v3/users/{u}/devices/{d}/properties/{p}",
            get(get_property)
                .put(put_property)
                .post(put_property)
                .delete(delete_property),
        )
}

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
