//! Rules and alarms: `/v1/users/{u}/rules` (define), `/v1/users/{u}/alarms` (see,
//! acknowledge, clear).

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use redb::{ReadableDatabase, ReadableTable};
use serde::Deserialize;
use serde_json::Value as Json;
use twinlake_rules::{AlarmState, Rule};

use super::{ApiResult, Paths, St, blocking, body_json, check_id, now, ok};
use crate::auth::{Principal, Scope};
use crate::error::ApiError;
use crate::rules::alarms::{self, OpError, Operation};
use crate::store::{ENDPOINTS, EndpointDef, OPEN_ALARMS, RULES, encode};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/users/{u}/rules", get(list_rules))
        .route(
            "/v1/users/{u}/rules/{r}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route("/v1/users/{u}/alarms", get(list_alarms))
        .route("/v1/users/{u}/alarms/{id}", get(get_alarm))
        .route("/v1/users/{u}/alarms/{id}/ack", post(ack_alarm))
        .route("/v1/users/{u}/alarms/{id}/clear", post(clear_alarm))
}

fn rule_json(r: &Rule, fixed: bool) -> Json {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("fixed".into(), fixed.into());
    }
    v
}

async fn list_rules(p: Principal, State(s): St, Path(u): Path<String>) -> ApiResult {
    p.require(Scope::Read)?;
    let stored: Vec<(String, Rule)> = s.db.scan(RULES, &format!("{u}/"))?;
    let mut out: Vec<Json> = s.rules.fixed(Some(&u)).map(|r| rule_json(r, true)).collect();
    out.extend(stored.iter().map(|(_, r)| rule_json(r, false)));
    ok(Json::Array(out))
}

async fn get_rule(p: Principal, State(s): St, Path((u, r)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    if let Some(f) = s.rules.fixed(Some(&u)).find(|f| f.id == r) {
        return ok(rule_json(f, true));
    }
    let rule = crate::rules::stored(&s.db, &u, &r)?.ok_or_else(|| ApiError::not_found(format!("no rule {r}")))?;
    ok(rule_json(&rule, false))
}

/// PUT `/v1/users/{u}/rules/{r}`: creates or replaces a rule. A replaced rule starts over
/// (its open alarms stay open, and it clears them when its condition ends).
async fn put_rule(p: Principal, State(s): St, Path((u, r)): Path<(String, String)>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    check_id("rule", &r)?;
    if s.rules.is_fixed(&u, &r) {
        return Err(ApiError::conflict(format!("rule {r} is set in the config file")));
    }
    let v = body_json(&body)?.ok_or_else(|| ApiError::bad_request("send the rule: {\"when\": {…}}"))?;
    let mut rule: Rule = serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("bad rule: {e}")))?;
    rule.id = r.clone();
    rule.owner = u.clone();
    rule.check(s.cfg.rules.min_sql_every)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(g) = &rule.gateway {
        if !matches!(
            rule.when,
            twinlake_rules::RuleKind::Threshold { .. } | twinlake_rules::RuleKind::Deadman { .. }
        ) {
            return Err(ApiError::bad_request(
                "gateway: a gateway evaluates threshold and deadman rules only",
            ));
        }
        if !serves(&s, &u, g)? {
            return Err(ApiError::bad_request(format!(
                "gateway {g:?} serves none of the user's devices"
            )));
        }
    }
    if let twinlake_rules::RuleKind::Gateway { gateway, .. } = &rule.when
        && !serves(&s, &u, gateway)?
    {
        return Err(ApiError::bad_request(format!(
            "gateway {gateway:?} serves none of the user's devices"
        )));
    }
    for a in &rule.actions {
        if a.email.is_some() && s.cfg.email.smtp_url.is_empty() {
            return Err(ApiError::bad_request(
                "email actions need [email] smtp_url in the cloud config",
            ));
        }
        if let Some(w) = &a.webhook
            && s.db.get::<EndpointDef>(ENDPOINTS, &format!("{u}/{w}"))?.is_none()
        {
            return Err(ApiError::bad_request(format!(
                "webhook {w:?}: define the endpoint first"
            )));
        }
    }
    let st = s.clone();
    let saved = blocking(move || {
        let tx = st.db.0.begin_write().map_err(crate::Error::from)?;
        {
            let mut t = tx.open_table(RULES).map_err(crate::Error::from)?;
            let key = format!("{u}/{r}");
            let old = t
                .get(key.as_str())
                .map_err(crate::Error::from)?
                .map(|v| v.value().to_vec());
            rule.created = match old.and_then(|b| serde_json::from_slice::<Rule>(&b).ok()) {
                Some(o) => o.created,
                None => {
                    let prefix = format!("{u}/");
                    let mine = t
                        .range(prefix.as_str()..)
                        .map_err(crate::Error::from)?
                        .take_while(|e| e.as_ref().is_ok_and(|(k, _)| k.value().starts_with(&prefix)))
                        .count();
                    if mine >= st.cfg.rules.max_per_user {
                        return Err(ApiError::conflict(format!(
                            "the user has rules.max_per_user ({}) rules",
                            st.cfg.rules.max_per_user
                        )));
                    }
                    now()
                }
            };
            t.insert(key.as_str(), encode(&rule).as_slice())
                .map_err(crate::Error::from)?;
        }
        tx.commit().map_err(crate::Error::from)?;
        restart(&st, &rule.owner, &rule.id)?;
        if rule.gateway.is_some() {
            // Sent to the gateway with its registry.
            st.gateways.registry_changed();
        }
        Ok(rule)
    })
    .await?;
    ok(rule_json(&saved, false))
}

/// Whether `gateway` serves `user`: bound to the user, or holding one of their registered
/// devices (a user may watch only such gateways).
fn serves(s: &crate::state::AppState, user: &str, gateway: &str) -> Result<bool, ApiError> {
    let bound =
        s.db.get::<crate::store::GatewayRecord>(crate::store::GATEWAYS, gateway)?
            .is_some_and(|g| g.users.iter().any(|x| x == user));
    if bound || gateway == s.local_gateway {
        return Ok(true);
    }
    let devices: Vec<(String, crate::store::DeviceRecord)> = s.db.scan(crate::store::DEVICES, &format!("{user}/"))?;
    Ok(devices.iter().any(|(_, d)| d.gateway.as_deref() == Some(gateway)))
}

/// Reloads the rules, and starts `owner/id` over with its open alarms restored.
fn restart(s: &crate::state::AppState, owner: &str, id: &str) -> Result<(), ApiError> {
    s.rules.reload(&s.db)?;
    let scope = twinlake_rules::scope(owner, id);
    let prefix = format!("{scope}/");
    let tx = s.db.0.begin_read().map_err(crate::Error::from)?;
    let t = tx.open_table(OPEN_ALARMS).map_err(crate::Error::from)?;
    let mut eval = s.rules.evaluator();
    eval.forget(&scope);
    for e in t.range(prefix.as_str()..).map_err(crate::Error::from)? {
        let (k, _) = e.map_err(crate::Error::from)?;
        let Some(key) = k.value().strip_prefix(&prefix) else {
            break;
        };
        eval.restore(&scope, key, now());
    }
    Ok(())
}

async fn delete_rule(p: Principal, State(s): St, Path((u, r)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Admin)?;
    if s.rules.is_fixed(&u, &r) {
        return Err(ApiError::conflict(format!("rule {r} is set in the config file")));
    }
    if !s.db.delete(RULES, &format!("{u}/{r}"))? {
        return Err(ApiError::not_found(format!("no rule {r}")));
    }
    restart(&s, &u, &r)?;
    s.gateways.registry_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmQuery {
    state: Option<AlarmState>,
    limit: Option<usize>,
}

/// GET `/v1/users/{u}/alarms?state=active&limit=100`: newest first.
async fn list_alarms(p: Principal, State(s): St, Path(u): Path<String>, Query(q): Query<AlarmQuery>) -> ApiResult {
    p.require(Scope::Read)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let st = s.clone();
    let list = blocking(move || Ok(alarms::list(&st, Some(&u), q.state, limit)?)).await?;
    ok(Json::Array(list.iter().map(|a| alarms::to_json(a, None)).collect()))
}

fn alarm_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("alarm {id:?}: an alarm id is a number")))
}

async fn get_alarm(p: Principal, State(s): St, Path((u, id)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let id = alarm_id(&id)?;
    let a = alarms::get(&s, &u, id)?.ok_or_else(|| ApiError::not_found(format!("no alarm {id}")))?;
    ok(alarms::to_json(&a, None))
}

async fn operate(p: Principal, s: St, u: String, id: String, op: Operation) -> ApiResult {
    p.require(Scope::Control)?;
    let id = alarm_id(&id)?;
    let State(s) = s;
    let by = p.name.clone();
    let a = blocking(move || {
        alarms::operate(&s, &u, id, op, &by).map_err(|e| match e {
            OpError::NotFound => ApiError::not_found(format!("no alarm {id}")),
            OpError::State(e) => ApiError::conflict(e.to_string()),
            OpError::Storage(e) => ApiError::from(e),
        })
    })
    .await?;
    ok(alarms::to_json(&a, None))
}

async fn ack_alarm(p: Principal, s: St, Path((u, id)): Path<(String, String)>) -> ApiResult {
    operate(p, s, u, id, Operation::Acknowledge).await
}

async fn clear_alarm(p: Principal, s: St, Path((u, id)): Path<(String, String)>) -> ApiResult {
    operate(p, s, u, id, Operation::Clear).await
}
