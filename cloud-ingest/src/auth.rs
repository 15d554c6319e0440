//! API tokens and scopes.
//!
//! A token is `tl_` + 43 characters of base64url (32 random bytes); only its SHA-256 is
//! stored. Every route needs one, as `Authorization: Bearer <token>` or `?authorization=`
//! (the Thinger convention, for WebSockets and EventSource, which cannot set headers). A
//! missing or unknown token gets 401; a token without the route's scope gets 403. `admin`
//! holds every scope.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::AppState;

pub use crate::tokens::{Scope, Tokens, new_token, sha256_hex};

/// Who is calling: a checked token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The user the token belongs to; none: a platform token.
    pub user: Option<String>,
}

impl Principal {
    /// Whether the token may see `user`'s devices.
    pub fn sees(&self, user: &str) -> bool {
        self.user.as_deref().is_none_or(|u| u == user)
    }

    /// 403 unless the token may see `user`'s devices.
    pub fn require_user(&self, user: &str) -> Result<(), ApiError> {
        if self.sees(user) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("token {:?} belongs to another user", self.name),
            ))
        }
    }

    /// The user a listing is limited to: the token's own, or (platform tokens) `asked`.
    pub fn listing_user(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (&self.user, asked) {
            (None, asked) => Ok(asked),
            (Some(own), None) => Ok(Some(own.clone())),
            (Some(_), Some(asked)) => self.require_user(&asked).map(|()| Some(asked)),
        }
    }

    /// 403 unless this is a platform admin token (tokens, gateways, users).
    pub fn require_platform(&self) -> Result<(), ApiError> {
        self.require(Scope::Admin)?;
        match &self.user {
            None => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} belongs to a user; this needs a platform admin token",
                    self.name
                ),
            )),
        }
    }

    /// 403 unless the token holds `scope` (or admin).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} lacks the {} scope",
                    self.name,
                    serde_json::to_value(scope)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default()
                ),
            ))
        }
    }
}

/// The token a request carries: the Bearer header, else `?authorization=`.
pub fn bearer(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let s = h.to_str().ok()?;
        let t = s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer "))?;
        return Some(t.trim().to_owned());
    }
    let q = parts.uri.query()?;
    url_query(q, "authorization")
}

/// One query parameter, percent-decoded.
pub fn url_query(q: &str, name: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v, true))
    })
}

/// `%XX` decoded; `+` is a space in a query string (`plus_space`), itself in a path. Bytes
/// that do not make UTF-8 are replaced.
pub(crate) fn percent_decode(s: &str, plus_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) if plus_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let token = bearer(parts).ok_or_else(|| {
            unauthorized("a token is needed: Authorization: Bearer <token>, or ?authorization=<token>")
        })?;
        let rec = state
            .tokens
            .lookup(&token)
            .ok_or_else(|| unauthorized("the token is not valid"))?;
        Ok(Principal {
            name: rec.name,
            scopes: rec.scopes,
            user: rec.user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_tokens_hash() {
        assert_eq!(Scope::parse("write-desired"), Some(Scope::WriteDesired));
        assert_eq!(Scope::parse("root"), None);
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let t = new_token("tl_");
        assert!(t.starts_with("tl_") && t.len() == 46, "{t}");
        assert_eq!(
            url_query("a=1&authorization=x%2By+z", "authorization").as_deref(),
            Some("x+y z")
        );
    }
}
