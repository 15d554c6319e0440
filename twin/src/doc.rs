//! The twin document and the rules that change it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::{TwinError, TwinKey};

/// A device's connection state, as the platform last saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub online: bool,
    /// The gateway the device is connected through (or was, last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The device's address as its gateway saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The protocol it last connected with: `thinger`, `mqtt`, `lorawan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// When it connected, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<u64>,
    /// When it was last heard from (connect, value, disconnect), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// Bytes received from and sent to the device on its last connection (known at disconnect).
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
}

/// One device's twin. Stored as this struct's JSON; served by [`Twin::to_json`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Twin {
    pub user: String,
    pub device: String,
    /// Bumped by every change; a writer can make its change conditional on it.
    pub version: u64,
    /// Resource path → last reported value (the `in`/`out` wrapper taken off).
    pub reported: Map<String, Json>,
    /// Resource path → wanted value.
    pub desired: Map<String, Json>,
    /// The same shape as `reported`/`desired`, with `{"timestamp": ms}` at every leaf.
    pub meta_reported: Map<String, Json>,
    pub meta_desired: Map<String, Json>,
    pub connection: Connection,
    pub tags: Map<String, Json>,
    /// The device's resources, as it described them (`api`) when it last connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Json>,
    /// Created and last changed, ms since the epoch.
    pub created: u64,
    pub updated: u64,
}

/// The `fn` code of the resource at `path` in a device's description (`api`): 1 run,
/// 2 input, 3 output, 4 input/output.
pub fn resource_kind(resources: &Json, path: &str) -> Option<i64> {
    let mut node = resources;
    let mut entry = None;
    for seg in path.split('/') {
        let e = node.get(seg)?;
        entry = Some(e);
        node = e.get("/").unwrap_or(&Json::Null);
    }
    entry?.get("fn")?.as_i64()
}

impl Twin {
    /// A new, empty twin.
    pub fn new(key: &TwinKey, now_ms: u64) -> Self {
        Self {
            user: key.user.clone(),
            device: key.device.clone(),
            version: 0,
            created: now_ms,
            updated: now_ms,
            ..Self::default()
        }
    }

    /// Its key.
    pub fn key(&self) -> TwinKey {
        TwinKey::new(&self.user, &self.device)
    }

    /// The desired fields that differ from reported, computed as AWS IoT does: objects are
    /// compared field by field, anything else (arrays included) as a whole.
    pub fn delta(&self) -> Map<String, Json> {
        delta(&self.desired, &self.reported)
    }

    /// The `fn` code of a resource in the device's description (1 run, 2 input, 3 output,
    /// 4 input/output), if the device described it.
    pub fn resource_kind(&self, path: &str) -> Option<i64> {
        resource_kind(self.resources.as_ref()?, path)
    }

    /// The document as the API serves it (the AWS shadow shape, plus connection and tags).
    pub fn to_json(&self) -> Json {
        json!({
            "user": self.user,
            "device": self.device,
            "version": self.version,
            "state": {
                "reported": self.reported,
                "desired": self.desired,
                "delta": self.delta(),
            },
            "metadata": {
                "reported": self.meta_reported,
                "desired": self.meta_desired,
            },
            "connection": self.connection,
            "tags": self.tags,
            "resources": self.resources,
            "created": self.created,
            "timestamp": self.updated,
        })
    }

    /// Sets a reported resource value (the whole value: a reading replaces the last one).
    pub fn report(&mut self, path: &str, value: Json, at_ms: u64) {
        self.meta_reported.insert(path.to_owned(), leaf_meta(&value, at_ms));
        self.reported.insert(path.to_owned(), value);
        let seen = self.connection.last_seen.unwrap_or(0).max(at_ms);
        self.connection.last_seen = Some(seen);
    }

    /// Merges a desired patch (RFC 7386 merge patch: `null` deletes a field).
    pub fn patch_desired(&mut self, patch: &Map<String, Json>, at_ms: u64) {
        merge(&mut self.desired, &mut self.meta_desired, patch, at_ms);
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of maps and strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From the stored bytes.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<Self, TwinError> {
        serde_json::from_slice(bytes).map_err(|e| TwinError::Storage(format!("twin {key} is unreadable: {e}")))
    }
}

/// `{"timestamp": at}` at every leaf of `value`, mirroring its objects.
fn leaf_meta(value: &Json, at_ms: u64) -> Json {
    match value {
        Json::Object(o) if !o.is_empty() => {
            Json::Object(o.iter().map(|(k, v)| (k.clone(), leaf_meta(v, at_ms))).collect())
        }
        _ => json!({ "timestamp": at_ms }),
    }
}

/// RFC 7386 merge of `patch` into `target`, keeping `meta` in step.
fn merge(target: &mut Map<String, Json>, meta: &mut Map<String, Json>, patch: &Map<String, Json>, at_ms: u64) {
    for (k, v) in patch {
        match v {
            Json::Null => {
                target.remove(k);
                meta.remove(k);
            }
            Json::Object(p) => {
                let t = target.entry(k.clone()).or_insert_with(|| Json::Object(Map::new()));
                if !t.is_object() {
                    *t = Json::Object(Map::new());
                }
                let m = meta.entry(k.clone()).or_insert_with(|| Json::Object(Map::new()));
                if !m.is_object() || m.get("timestamp").is_some() {
                    *m = Json::Object(Map::new());
                }
                if let (Json::Object(t), Json::Object(m)) = (t, m) {
                    merge(t, m, p, at_ms);
                }
            }
            _ => {
                target.insert(k.clone(), v.clone());
                meta.insert(k.clone(), json!({ "timestamp": at_ms }));
            }
        }
    }
}

/// The fields of `desired` that `reported` does not match.
pub fn delta(desired: &Map<String, Json>, reported: &Map<String, Json>) -> Map<String, Json> {
    let mut out = Map::new();
    for (k, d) in desired {
        match (d, reported.get(k)) {
            (Json::Object(d), Some(Json::Object(r))) => {
                let sub = delta(d, r);
                if !sub.is_empty() {
                    out.insert(k.clone(), Json::Object(sub));
                }
            }
            (d, Some(r)) if same(d, r) => {}
            (d, _) => {
                out.insert(k.clone(), d.clone());
            }
        }
    }
    out
}

/// Equality where numbers compare by value (`1` and `1.0` are the same reading).
fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// What a device's stream or read payload says about a resource: `{"out": v}` → v,
/// `{"in": v}` → v, both (an input/output) → the object as it is.
pub fn unwrap_io(payload: Json) -> Json {
    match payload {
        Json::Object(mut o) if o.len() == 1 && (o.contains_key("out") || o.contains_key("in")) => {
            o.remove("out").or_else(|| o.remove("in")).unwrap_or(Json::Null)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Json) -> Map<String, Json> {
        match v {
            Json::Object(o) => o,
            _ => Map::new(),
        }
    }

    #[test]
    fn delta_compares_objects_field_by_field() {
        let desired = obj(json!({"led": true, "cfg": {"rate": 5, "mode": "eco"}, "list": [1, 2], "x": 1}));
        let reported = obj(json!({"led": false, "cfg": {"rate": 5, "mode": "max"}, "list": [1, 2], "x": 1.0}));
        assert_eq!(
            Json::Object(delta(&desired, &reported)),
            json!({"led": true, "cfg": {"mode": "eco"}})
        );
        assert!(delta(&desired, &desired).is_empty());
    }

    #[test]
    fn merge_patch_sets_deletes_and_stamps_leaves() {
        let mut t = Twin::new(&TwinKey::new("u", "d"), 1);
        t.patch_desired(&obj(json!({"led": true, "cfg": {"rate": 5, "mode": "eco"}})), 10);
        t.patch_desired(&obj(json!({"cfg": {"mode": null}, "new": 1})), 20);
        assert_eq!(
            Json::Object(t.desired.clone()),
            json!({"led": true, "cfg": {"rate": 5}, "new": 1})
        );
        assert_eq!(
            Json::Object(t.meta_desired.clone()),
            json!({"led": {"timestamp": 10}, "cfg": {"rate": {"timestamp": 10}}, "new": {"timestamp": 20}})
        );
        t.patch_desired(&obj(json!({"cfg": null})), 30);
        assert!(!t.desired.contains_key("cfg") && !t.meta_desired.contains_key("cfg"));
    }

    #[test]
    fn report_replaces_the_value_and_stamps_it() {
        let mut t = Twin::new(&TwinKey::new("u", "d"), 1);
        t.report("loc", json!({"lat": 1.0, "lon": 2.0}), 5);
        t.report("loc", json!({"lat": 3.0}), 7);
        assert_eq!(t.reported["loc"], json!({"lat": 3.0}));
        assert_eq!(t.meta_reported["loc"], json!({"lat": {"timestamp": 7}}));
        assert_eq!(t.connection.last_seen, Some(7));
    }

    #[test]
    fn resource_kinds_come_from_the_description() {
        let mut t = Twin::new(&TwinKey::new("u", "d"), 1);
        t.resources = Some(json!({"led": {"fn": 2}, "temp": {"fn": 3}, "a": {"fn": 1, "/": {"b": {"fn": 4}}}}));
        assert_eq!(t.resource_kind("led"), Some(2));
        assert_eq!(t.resource_kind("a/b"), Some(4));
        assert_eq!(t.resource_kind("nope"), None);
    }

    #[test]
    fn io_wrappers_come_off() {
        assert_eq!(unwrap_io(json!({"out": 21.5})), json!(21.5));
        assert_eq!(unwrap_io(json!({"in": true})), json!(true));
        assert_eq!(unwrap_io(json!({"in": 1, "out": 2})), json!({"in": 1, "out": 2}));
        assert_eq!(unwrap_io(json!(3)), json!(3));
    }
}
