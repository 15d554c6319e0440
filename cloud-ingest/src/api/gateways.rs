//! Gateways: their records, the users an admin bound them to, and the link they dial.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use twinlake_edge::link::LINK_PATH;

use super::{ApiResult, Paths, St, body_as, check_id, json_response, now, ok};
use crate::auth::{Principal, new_token, sha256_hex};
use crate::error::ApiError;
use crate::store::{GATEWAYS, GatewayRecord};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/gateways", get(list_gateways).post(create_gateway))
        .route("/v1/gateways/{id}", delete(delete_gateway))
        .route(LINK_PATH, get(gateway_link))
}

async fn list_gateways(p: Principal, State(s): St) -> ApiResult {
    p.require_platform()?;
    let linked = s.gateways.linked();
    let gws: Vec<(String, GatewayRecord)> = s.db.scan(GATEWAYS, "")?;
    // Its last queue report (`Up::Status`, every few seconds while linked) and when it came.
    let report = |id: &str, mut v: Json| {
        if let (Some((at, status)), Some(o)) = (s.gateways.last_report(id), v.as_object_mut()) {
            o.insert("reported_at".into(), at.into());
            o.insert("queues".into(), serde_json::to_value(status).unwrap_or_default());
        }
        v
    };
    let mut out: Vec<Json> = gws
        .into_iter()
        .map(|(_, g)| {
            report(
                &g.id,
                json!({ "id": g.id, "created": g.created, "linked": linked.contains(&g.id) }),
            )
        })
        .collect();
    out.push(report(
        &s.local_gateway,
        json!({ "id": s.local_gateway, "linked": linked.contains(&s.local_gateway), "in_process": true }),
    ));
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
    if !twinlake_lake::path::is_gateway_name(&req.id) {
        return Err(ApiError::bad_request(format!(
            "gateway {:?}: not starting with '_' or '.', and not 'compacted' (the lake's own file names)",
            req.id
        )));
    }
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
    let ws = crate::api::streams::ws_upgrade(&mut parts, &s).await?;
    Ok(ws
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| crate::api::streams::pump_link(s, gateway, socket)))
}
