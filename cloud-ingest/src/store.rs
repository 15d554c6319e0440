//! The cloud's own tables, in the same redb file as the twins (`cloud.redb`).
//!
//! | table | key | value |
//! |---|---|---|
//! | `devices` | `user/device` | [`DeviceRecord`] JSON (credential only as a hash) |
//! | `properties` | `user/device/property` | JSON value |
//! | `endpoints` | `user/name` | [`EndpointDef`] JSON |
//! | `tokens` | hex SHA-256 of the token | [`TokenRecord`] JSON |
//! | `gateways` | gateway id | [`GatewayRecord`] JSON |
//! | `link_seq` | gateway id | [`LinkSeq`] JSON: the session and the last batch applied |
//! | `webhooks` | u64 sequence | [`WebhookJob`] JSON: endpoint calls waiting for delivery |
//! | `files` | object path | committed Parquet files, as gateways announced them |
//! | `users` | user id | [`UserRecord`] JSON |
//! | `rules` | `user/rule` | [`twinlake_rules::Rule`] JSON |
//! | `alarms` | u64 id | [`twinlake_rules::Alarm`] JSON, open and cleared (history) |
//! | `emails` | u64 sequence | [`crate::rules::email::EmailJob`] JSON: alarm emails waiting |
//! | `mqtt_out` | u64 sequence | [`crate::rules::mqtt::MqttJob`] JSON: alarm publishes waiting |
//! | `open_alarms` | `user/rule/key` | the id of the open alarm for that (rule, key) |

use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::Error;

pub const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
pub const PROPERTIES: TableDefinition<&str, &[u8]> = TableDefinition::new("properties");
pub const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub const GATEWAYS: TableDefinition<&str, &[u8]> = TableDefinition::new("gateways");
pub const LINK_SEQ: TableDefinition<&str, &[u8]> = TableDefinition::new("link_seq");
pub const WEBHOOKS: TableDefinition<u64, &[u8]> = TableDefinition::new("webhooks");
pub const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub const RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("rules");
pub const ALARMS: TableDefinition<u64, &[u8]> = TableDefinition::new("alarms");
pub const EMAILS: TableDefinition<u64, &[u8]> = TableDefinition::new("emails");
pub const MQTT_OUT: TableDefinition<u64, &[u8]> = TableDefinition::new("mqtt_out");
pub const OPEN_ALARMS: TableDefinition<&str, u64> = TableDefinition::new("open_alarms");
/// Gateway alarm transitions taken (`gateway/owner/rule/device/change/at` → when taken,
/// ms): each is applied once, from the link's fresh rows or from its file.
pub const GATEWAY_ALARM_KEYS: TableDefinition<&str, u64> = TableDefinition::new("gateway_alarm_keys");

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub user: String,
    pub device: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The gateway it connects through; `None` for the cloud's own listener.
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub tags: Map<String, Json>,
    #[serde(default)]
    pub attributes: Map<String, Json>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `pbkdf2-sha256$…`; never served.
    pub credential_hash: String,
    pub created: u64,
}

fn yes() -> bool {
    true
}

/// An endpoint: an HTTP webhook devices trigger with CALL_ENDPOINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointDef {
    pub name: String,
    pub url: String,
    #[serde(default = "post")]
    pub method: String,
    #[serde(default)]
    pub headers: Map<String, Json>,
    /// The body, with `{{payload}}`, `{{device}}`, `{{user}}`, `{{endpoint}}` and
    /// `{{timestamp}}` replaced; without one the body is the payload's JSON.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

fn post() -> String {
    "POST".into()
}

pub use crate::tokens::TokenRecord;

/// A user account: the `{u}` of `/v1/users/{u}/…`, made by a platform admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user: String,
    pub created: u64,
}

/// A gateway allowed to link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub id: String,
    pub token_sha256: String,
    pub created: u64,
    /// Users whose unregistered (MQTT, LoRaWAN) devices the gateway may speak for; its
    /// registered devices it may always speak for. Set in the cloud, never by the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// Where a gateway's batches stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSeq {
    pub session: String,
    pub acked: u64,
}

/// An endpoint call waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookJob {
    pub user: String,
    pub device: String,
    pub endpoint: String,
    pub at: u64,
    pub payload: Option<Json>,
    #[serde(default)]
    pub attempts: u32,
}

/// The database handle with typed access to the cloud's tables.
#[derive(Debug, Clone)]
pub struct Db(pub Arc<Database>);

pub(crate) fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("{table}[{key}] is unreadable: {e}")))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Db {
    /// Opens or creates `path`, with every table and a page cache of at most `cache_bytes`
    /// (redb's own default is 1 GiB).
    pub fn open(path: &std::path::Path, cache_bytes: usize) -> Result<Self, Error> {
        let db = Database::builder().set_cache_size(cache_bytes).create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(DEVICES)?;
        tx.open_table(PROPERTIES)?;
        tx.open_table(ENDPOINTS)?;
        tx.open_table(TOKENS)?;
        tx.open_table(GATEWAYS)?;
        tx.open_table(LINK_SEQ)?;
        tx.open_table(WEBHOOKS)?;
        tx.open_table(FILES)?;
        tx.open_table(USERS)?;
        tx.open_table(RULES)?;
        tx.open_table(ALARMS)?;
        tx.open_table(OPEN_ALARMS)?;
        tx.open_table(GATEWAY_ALARM_KEYS)?;
        tx.open_table(EMAILS)?;
        tx.open_table(MQTT_OUT)?;
        tx.commit()?;
        Ok(Self(Arc::new(db)))
    }

    /// One value of a string-keyed table.
    pub fn get<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<T>, Error> {
        let tx = self.0.begin_read()?;
        let t = tx.open_table(table)?;
        let v = t.get(key)?;
        v.map(|v| decode(table_name(&table), key, v.value())).transpose()
    }

    /// The values of a string-keyed table whose keys start with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, Error> {
        let tx = self.0.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = Vec::new();
        for entry in t.range(prefix..)? {
            let (k, v) = entry?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_owned(), decode(table_name(&table), k, v.value())?));
        }
        Ok(out)
    }

    /// Writes one value (durably).
    pub fn put<T: Serialize>(&self, table: TableDefinition<&str, &[u8]>, key: &str, v: &T) -> Result<(), Error> {
        let tx = self.0.begin_write()?;
        tx.open_table(table)?.insert(key, encode(v).as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes one value; returns whether it was there.
    pub fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool, Error> {
        let tx = self.0.begin_write()?;
        let existed = tx.open_table(table)?.remove(key)?.is_some();
        tx.commit()?;
        Ok(existed)
    }
}

fn table_name<'a>(t: &'a TableDefinition<&str, &[u8]>) -> &'a str {
    redb::TableHandle::name(t)
}
