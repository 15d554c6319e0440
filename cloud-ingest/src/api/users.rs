//! One user per token: user accounts, and the guard that keeps a user's token inside its
//! own `/v{1,2,3}/users/{u}/…`.
//!
//! A token belongs to one user, or to none (a platform token: what every token was before
//! users existed, and what `[[tokens]]` without `user` still makes). The guard runs before
//! every route, so a route added later under `/users/{u}/` is covered without a line of its
//! own; listings (`/v1/devices`, `/v1/twins`, `/v1/events`) and SQL narrow themselves to the
//! token's user.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{USERS, UserRecord};

/// The `{u}` of a user path (`/v1/users/{u}/…`, `/v2/…`, `/v3/…`), percent-decoded.
pub fn path_user(path: &str) -> Option<String> {
    let mut seg = path.trim_start_matches('/').split('/');
    let version = seg.next()?;
    if !matches!(version, "v1" | "v2" | "v3") || seg.next()? != "users" {
        return None;
    }
    let user = seg.next().filter(|u| !u.is_empty())?;
    // As axum's `Path` decodes it: `+` stays `+`.
    Some(crate::auth::percent_decode(user, false))
}

/// Refuses a user's token on another user's paths, before any handler runs.
pub async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(user) = path_user(req.uri().path()) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    // No token, or a bad one: the handler answers 401 as it always has.
    if let Ok(p) = Principal::from_request_parts(&mut parts, &state).await
        && let Err(e) = p.require_user(&user)
    {
        state.metrics.tenant_refusals.inc();
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// `/v1/users`: the accounts.
pub fn routes() -> crate::api::Paths {
    crate::api::Paths::default().route("/v1/users", get(list_users).post(create_user))
}

async fn list_users(p: Principal, State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    p.require(crate::auth::Scope::Read)?;
    let users: Vec<(String, UserRecord)> = s.db.scan(USERS, "")?;
    let users: Vec<_> = users.into_iter().map(|(_, u)| u).filter(|u| p.sees(&u.user)).collect();
    Ok(axum::Json(users).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    user: String,
}

async fn create_user(p: Principal, State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    p.require_platform()?;
    let req: NewUser = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    crate::api::check_id("user", &req.user)?;
    if s.db.get::<UserRecord>(USERS, &req.user)?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("user {:?} exists", req.user),
        ));
    }
    let rec = ensure_user(&s, &req.user)?;
    Ok((StatusCode::CREATED, axum::Json(json!(rec))).into_response())
}

/// The account of `user`, made if there is none (registering a device for a new user
/// makes its account, as it always has).
pub fn ensure_user(s: &AppState, user: &str) -> Result<UserRecord, ApiError> {
    if let Some(u) = s.db.get::<UserRecord>(USERS, user)? {
        return Ok(u);
    }
    let rec = UserRecord {
        user: user.to_owned(),
        created: twinlake_twin::now_ms(),
    };
    s.db.put(USERS, user, &rec)?;
    Ok(rec)
}

/// Whether `user` has an account.
pub fn user_exists(s: &AppState, user: &str) -> Result<bool, ApiError> {
    Ok(s.db.get::<UserRecord>(USERS, user)?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_paths_are_found_on_every_api_version() {
        assert_eq!(path_user("/v1/users/acme/devices/d1/twin").as_deref(), Some("acme"));
        assert_eq!(path_user("/v2/users/acme/devices/d1/led").as_deref(), Some("acme"));
        assert_eq!(path_user("/v3/users/a%63me/devices").as_deref(), Some("acme"));
        assert_eq!(path_user("//v1/users/acme").as_deref(), Some("acme"));
        assert_eq!(path_user("/v1/devices"), None);
        assert_eq!(path_user("/v1/users"), None);
        assert_eq!(path_user("/v1/users/"), None);
        assert_eq!(path_user("/v4/users/acme"), None);
        assert_eq!(path_user("/v1/users/a+b/devices").as_deref(), Some("a+b"));
    }
}
