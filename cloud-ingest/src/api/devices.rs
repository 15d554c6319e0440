//! Devices: the registry's records, with their connection as the twins see it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use twinlake_edge::registry::CredentialHash;
use twinlake_twin::TwinKey;

use super::{ApiResult, Paths, St, blocking, body_as, check_id, json_response, now, ok};
use crate::auth::{Principal, Scope, new_token};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{DEVICES, DeviceRecord, PROPERTIES};

/// The routes of this resource.
pub(super) fn routes() -> Paths {
    Paths::default()
        .route("/v1/devices", get(list_all_devices))
        .route("/v1/users/{u}/devices", get(list_devices).post(create_device))
        .route(
            "/v1/users/{u}/devices/{d}",
            get(get_device)
                .patch(update_device)
                .put(update_device)
                .delete(delete_device),
        )
        .route("/v1/users/{u}/devices/{d}/stats", get(stats))
}

fn device_json(d: &DeviceRecord, twin: Option<&twinlake_twin::Twin>) -> Json {
    let conn = twin.map(|t| &t.connection);
    json!({
        "user": d.user,
        "device": d.device,
        "name": d.name,
        "description": d.description,
        "type": "Generic",
        "gateway": d.gateway,
        "enabled": d.enabled,
        "tags": d.tags,
        "attributes": d.attributes,
        "created": d.created,
        "connection": {
            "active": conn.is_some_and(|c| c.online),
            "ts": conn.and_then(|c| c.last_seen),
            "gateway": conn.and_then(|c| c.gateway.clone()),
        },
    })
}

fn devices_json(state: &AppState, prefix: &str) -> Result<Json, ApiError> {
    let devices: Vec<(String, DeviceRecord)> = state.db.scan(DEVICES, prefix)?;
    let out: Vec<Json> = devices
        .iter()
        .map(|(_, d)| {
            let twin = state.twins.get(&TwinKey::new(&d.user, &d.device)).ok().flatten();
            device_json(d, twin.as_ref())
        })
        .collect();
    Ok(Json::Array(out))
}

async fn list_all_devices(p: Principal, State(s): St) -> ApiResult {
    p.require(Scope::Read)?;
    let prefix = p.user.map(|u| format!("{u}/")).unwrap_or_default();
    ok(blocking(move || devices_json(&s, &prefix)).await?)
}

async fn list_devices(p: Principal, State(s): St, Path(u): Path<String>) -> ApiResult {
    p.require(Scope::Read)?;
    ok(blocking(move || devices_json(&s, &format!("{u}/"))).await?)
}

/// A device to register.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub device: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub gateway: Option<String>,
    /// A credential to use; one is made when left out.
    #[serde(default)]
    pub credential: Option<String>,
    #[serde(default)]
    pub tags: Map<String, Json>,
    #[serde(default)]
    pub attributes: Map<String, Json>,
    /// Thinger clients send these; `type` is ignored, `credentials` is `credential`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub credentials: Option<String>,
}

/// Registers a device (blocking: call it off the runtime). Returns the record and the
/// credential, which is stored only hashed. Gateways hear of it at once.
/// A device credential's stored hash: a salted HMAC for one the platform made (144 random
/// bits), PBKDF2 at `registry.credential_iterations` for one a person chose.
fn hash_credential(s: &AppState, credential: &str, generated: bool) -> String {
    if generated {
        CredentialHash::fast(credential).to_string()
    } else {
        CredentialHash::new(credential, s.cfg.registry.credential_iterations).to_string()
    }
}

pub fn register_device(s: &AppState, user: &str, req: NewDevice) -> Result<(DeviceRecord, String), ApiError> {
    check_id("user", user)?;
    check_id("device", &req.device)?;
    crate::api::users::ensure_user(s, user)?;
    let credential = req.credential.or(req.credentials);
    let generated = credential.is_none();
    let credential = credential.unwrap_or_else(|| new_token("").chars().take(24).collect());
    if credential.len() < 8 {
        return Err(ApiError::bad_request("a credential needs at least 8 characters"));
    }
    let rec = DeviceRecord {
        user: user.to_owned(),
        device: req.device.clone(),
        name: req.name,
        description: req.description,
        gateway: req.gateway.filter(|g| !g.is_empty()),
        tags: req.tags,
        attributes: req.attributes,
        enabled: true,
        credential_hash: hash_credential(s, &credential, generated),
        created: now(),
    };
    let key = TwinKey::new(&rec.user, &rec.device);
    let k = key.to_string();
    s.twins.write(|t| -> Result<(), ApiError> {
        let max = s.cfg.registry.max_devices_per_user;
        if crate::quota::registered(t.transaction(), user)? >= max {
            s.metrics.device_quota_refusals.inc();
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("user {user} has registry.max_devices_per_user ({max}) devices"),
            ));
        }
        let mut devices = t.transaction().open_table(DEVICES).map_err(crate::Error::from)?;
        if redb::ReadableTable::get(&devices, k.as_str())
            .map_err(crate::Error::from)?
            .is_some()
        {
            return Err(ApiError::conflict(format!("device {k} exists")));
        }
        devices
            .insert(k.as_str(), crate::store::encode(&rec).as_slice())
            .map_err(crate::Error::from)?;
        drop(devices);
        t.create(&key, rec.tags.clone())?;
        Ok(())
    })?;
    s.gateways.registry_changed();
    Ok((rec, credential))
}

async fn create_device(p: Principal, State(s): St, Path(u): Path<String>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    let req: NewDevice = body_as(&body)?;
    let st = s.clone();
    let (rec, credential) = blocking(move || register_device(&st, &u, req)).await?;
    let mut body = device_json(&rec, None);
    if let Some(o) = body.as_object_mut() {
        o.insert("credential".into(), credential.into());
        o.insert(
            "note".into(),
            "the credential is shown only now; it is stored hashed".into(),
        );
    }
    Ok(json_response(StatusCode::CREATED, &body))
}

pub(super) fn load_device(s: &AppState, u: &str, d: &str) -> Result<DeviceRecord, ApiError> {
    s.db.get(DEVICES, &format!("{u}/{d}"))?
        .ok_or_else(|| ApiError::not_found(format!("no device {u}/{d}")))
}

async fn get_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let rec = load_device(&s, &u, &d)?;
    let twin = s.twins.get(&TwinKey::new(&u, &d))?;
    ok(device_json(&rec, twin.as_ref()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceChange {
    name: Option<String>,
    description: Option<String>,
    /// `""` or `null` moves the device to the cloud's own listener.
    #[serde(default, deserialize_with = "some_or_null")]
    gateway: Option<Option<String>>,
    tags: Option<Map<String, Json>>,
    attributes: Option<Map<String, Json>>,
    enabled: Option<bool>,
    /// A new credential, or `"rotate"` to have one made.
    credential: Option<String>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

async fn update_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>, body: Bytes) -> ApiResult {
    p.require(Scope::Admin)?;
    let change: DeviceChange = body_as(&body)?;
    let st = s.clone();
    let (rec, credential) = blocking(move || {
        let mut rec = load_device(&st, &u, &d)?;
        if let Some(v) = change.name {
            rec.name = v;
        }
        if let Some(v) = change.description {
            rec.description = v;
        }
        if let Some(g) = change.gateway {
            rec.gateway = g.filter(|g| !g.is_empty());
        }
        if let Some(v) = change.attributes {
            rec.attributes = v;
        }
        if let Some(v) = change.enabled {
            rec.enabled = v;
        }
        let credential = match change.credential.as_deref() {
            None => None,
            Some("rotate") => Some((new_token("").chars().take(24).collect::<String>(), true)),
            Some(c) if c.len() >= 8 => Some((c.to_owned(), false)),
            Some(_) => return Err(ApiError::bad_request("a credential needs at least 8 characters")),
        };
        if let Some((c, generated)) = &credential {
            rec.credential_hash = hash_credential(&st, c, *generated);
        }
        let credential = credential.map(|(c, _)| c);
        let key = TwinKey::new(&rec.user, &rec.device);
        let tags = change.tags;
        st.twins.write(|t| -> Result<(), ApiError> {
            if let Some(tags) = tags {
                rec.tags = tags;
            }
            t.create(&key, rec.tags.clone())?;
            t.transaction()
                .open_table(DEVICES)
                .map_err(crate::Error::from)?
                .insert(key.to_string().as_str(), crate::store::encode(&rec).as_slice())
                .map_err(crate::Error::from)?;
            Ok(())
        })?;
        Ok((rec, credential))
    })
    .await?;
    s.gateways.registry_changed();
    let twin = s.twins.get(&TwinKey::new(&rec.user, &rec.device))?;
    let mut body = device_json(&rec, twin.as_ref());
    if let (Some(c), Some(o)) = (credential, body.as_object_mut()) {
        o.insert("credential".into(), c.into());
    }
    ok(body)
}

async fn delete_device(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Admin)?;
    let st = s.clone();
    blocking(move || {
        let key = TwinKey::new(&u, &d);
        let k = key.to_string();
        st.twins.write(|t| -> Result<(), ApiError> {
            let registered = t
                .transaction()
                .open_table(DEVICES)
                .map_err(crate::Error::from)?
                .remove(k.as_str())
                .map_err(crate::Error::from)?
                .is_some();
            // An unregistered (MQTT, LoRaWAN) device has a twin only.
            if !registered && t.get(&key)?.is_none() {
                return Err(ApiError::not_found(format!("no device {k}")));
            }
            let mut props = t.transaction().open_table(PROPERTIES).map_err(crate::Error::from)?;
            let prefix = format!("{k}/");
            let _ = props
                .extract_if(|key, _| key.starts_with(&prefix))
                .map_err(crate::Error::from)?
                .count();
            drop(props);
            t.delete(&key)?;
            st.unregistered.forget(&key);
            Ok(())
        })
    })
    .await?;
    s.gateways.registry_changed();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn stats(p: Principal, State(s): St, Path((u, d)): Path<(String, String)>) -> ApiResult {
    p.require(Scope::Read)?;
    let twin = s
        .twins
        .get(&TwinKey::new(&u, &d))?
        .ok_or_else(|| ApiError::not_found(format!("no device {u}/{d}")))?;
    let c = &twin.connection;
    ok(json!({
        "connected": c.online,
        "connected_ts": c.connected_at,
        "last_seen": c.last_seen,
        "ip_address": c.ip,
        "gateway": c.gateway,
        "rx_bytes": c.rx_bytes,
        "tx_bytes": c.tx_bytes,
    }))
}
