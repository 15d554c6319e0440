//! The REST API: devices, twins, live resources (ours and the Thinger-compatible aliases),
//! properties, endpoints, tokens and gateways. Streams are in [`crate::api::streams`].
//!
//! Every route needs a token (see [`crate::auth`]); the scope each needs is in the OpenAPI
//! document served at `/v1/openapi.json`. Errors are `{"error": {"status", "message"}}`.

mod console;
mod devices;
mod endpoints;
mod gateways;
mod live;
mod paths;
mod properties;
mod rules;
pub mod streams;
mod tokens;
mod twins;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value as Json;

pub use devices::{NewDevice, register_device};
pub(crate) use live::control_error;
pub use paths::Paths;

use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::state::AppState;

type St = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// Every route of the API, by resource; streams and SQL live in their own modules.
fn routes() -> Paths {
    Paths::default()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/sql", axum::routing::post(crate::sql::post_sql))
        .route(
            "/v1/users/{u}/devices/{d}/twin/events",
            get(crate::api::streams::twin_events),
        )
        .route(
            "/v1/users/{u}/devices/{d}/streams/{*path}",
            get(crate::api::streams::resource_sse),
        )
        .route("/v1/events", get(crate::api::streams::all_events))
        .route(
            "/v3/users/{u}/devices/{d}/resources",
            get(crate::api::streams::v3_resources),
        )
        .merge(devices::routes())
        .merge(twins::routes())
        .merge(live::routes())
        .merge(properties::routes())
        .merge(endpoints::routes())
        .merge(rules::routes())
        .merge(tokens::routes())
        .merge(gateways::routes())
        .merge(crate::api::users::routes())
}

/// The paths the API routes, as registered (for the test that ties them to the OpenAPI
/// document).
pub fn paths() -> Vec<&'static str> {
    routes().paths().to_vec()
}

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.http.max_body_bytes;
    routes()
        .into_router()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api::users::guard,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// `/metrics` and `/healthz` for the metrics address (no token: keep it private).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): St, headers: axum::http::HeaderMap| async move {
                if !twinlake_edge::http::bearer_matches(&headers, s.cfg.metrics.token_sha256.as_deref()) {
                    return (StatusCode::UNAUTHORIZED, "send Authorization: Bearer <metrics token>\n").into_response();
                }
                let mut text = s.metrics.encode();
                if let Some(e) = &s.edge_metrics {
                    text.push_str(&e.encode());
                }
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

async fn openapi(p: Principal) -> ApiResult {
    p.require(Scope::Read)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response())
}
