//! API tokens: made for a user (or the platform) with scopes, stored hashed.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get};
use serde::Deserialize;

use super::{ApiResult, Paths, St, body_as, check_id, json_response, now, ok};
use crate::auth::{Principal, Scope, new_token, sha256_hex};
use crate::error::ApiError;
use crate::store::{TOKENS, TokenRecord};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{name}", delete(delete_token))
        .route("/v1/whoami", get(whoami))
}

/// Who the token is: its name, user (none: a platform token) and scopes, so a client (the
/// console) offers only what the token may do. Any valid token may ask.
async fn whoami(p: Principal) -> ApiResult {
    ok(serde_json::json!({ "name": p.name, "user": p.user, "scopes": p.scopes }))
}

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
        && !crate::api::users::user_exists(&s, u)?
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
