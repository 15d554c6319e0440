//! `[mqtt]`: the MQTT source's section of the agent's configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::values::Hidden;

/// `[mqtt]`: subscribe to a broker (the gateway's Mosquitto, or any broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// `mqtt://host:1883` or `mqtts://host:8883`; empty for no MQTT source (or for the
    /// embedded broker, with `[mqtt.embedded]`).
    pub url: String,
    /// The client id; the broker keeps this session (and the QoS 1 messages it holds) while
    /// the agent is away. Default `twinlake-<gateway>`.
    pub client_id: String,
    pub username: String,
    pub password: Hidden,
    /// PEM certificates to trust for `mqtts://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for brokers that want one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The account MQTT devices belong to (their twins' user).
    pub user: String,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// How long the broker keeps the session (and queues QoS 1 messages) while the agent is away.
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// QoS 1 messages the broker may have sent and not had acknowledged (MQTT 5 Receive
    /// Maximum). A crash can store at most this many of them twice, and as many may wait in
    /// memory; smaller windows cost rate (BENCHMARKS.md).
    pub max_inflight: u16,
    /// Where resource writes and desired values for MQTT devices are published: a template
    /// with `{device}` and `{resource}`; the payload is the value as JSON. Empty: no control.
    pub command_topic: String,
    /// A device not heard from for this long shows offline in its twin ("0s": never). A
    /// Sparkplug NDEATH or DDEATH takes its node or device offline at once.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Devices online at once (device ids come from topics, so from what clients publish).
    /// A message from a new device past this is acknowledged, counted as
    /// `outcome="device_cap"` and not stored, until a device goes offline.
    pub max_devices: usize,
    pub subscriptions: Vec<MqttSubscription>,
    /// An MQTT broker inside the agent (rumqttd), for gateways that have none. The source
    /// then subscribes to it (leave `url` empty).
    pub embedded: Option<EmbeddedBroker>,
}

/// `[mqtt.embedded]`: the broker devices publish to when the gateway has no broker of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBroker {
    /// Where devices connect with MQTT 3.1.1 (the protocol's port is 1883).
    pub listen: SocketAddr,
    /// Where devices connect with MQTT 5; `"off"` by default.
    #[serde(with = "crate::values::addr_or_off")]
    pub listen_v5: Option<SocketAddr>,
    /// Device accounts (username = password). Required unless `allow_anonymous`.
    pub users: BTreeMap<String, Hidden>,
    /// Lets any client connect without an account (a closed network only).
    pub allow_anonymous: bool,
    /// The largest message a device may publish.
    pub max_payload_bytes: usize,
    /// Devices connected at once.
    pub max_connections: usize,
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            listen_v5: None,
            users: Default::default(),
            allow_anonymous: false,
            max_payload_bytes: 256 * 1024,
            max_connections: 10_000,
        }
    }
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            username: String::new(),
            password: Hidden::default(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            user: "mqtt".into(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_inflight: 4096,
            command_topic: "twinlake/{device}/{resource}/set".into(),
            offline_after: Duration::from_secs(600),
            max_devices: 10_000,
            subscriptions: Vec::new(),
            embedded: None,
        }
    }
}

/// `[[mqtt.subscriptions]]`: a topic template and how its payloads are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscription {
    /// `sensors/{device}/{resource}`; `+` ignores a level, a final `#` takes the rest.
    pub topic: String,
    #[serde(default)]
    pub format: crate::sources::mqtt::payload::Format,
    /// The resource (table) when the topic has no `{resource}`; default per format.
    #[serde(default)]
    pub resource: Option<String>,
    /// 1 (at least once, the default) or 0 (at most once).
    #[serde(default = "one")]
    pub qos: u8,
}

fn one() -> u8 {
    1
}

impl MqttSection {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(format!("mqtt: {msg}")));
        if self.max_devices == 0 {
            return bad("max_devices must be at least 1".into());
        }
        if let Some(b) = &self.embedded {
            if !self.url.is_empty() {
                return bad(format!(
                    "url {:?} and [mqtt.embedded] exclude each other: the source subscribes to the embedded broker",
                    self.url
                ));
            }
            if b.listen_v5.is_some_and(|v5| v5.port() != 0 && v5 == b.listen) {
                return bad(format!("embedded.listen and embedded.listen_v5 are both {}", b.listen));
            }
            if b.max_payload_bytes < 64 || b.max_connections == 0 {
                return bad("embedded.max_payload_bytes must be at least 64 and max_connections at least 1".into());
            }
            if b.users.is_empty() && !b.allow_anonymous {
                return bad(
                    "embedded.users is empty: give devices accounts (users = { name = \"password\" }), or set allow_anonymous = true on a closed network"
                        .into(),
                );
            }
            if let Some(u) = b.users.keys().find(|u| u.is_empty() || u.starts_with("twinlake-")) {
                return bad(format!(
                    "embedded.users: {u:?} is empty or in the agent's own 'twinlake-' namespace"
                ));
            }
        } else if self.url.is_empty() {
            return Ok(());
        } else {
            let url = url::Url::parse(&self.url).map_err(|e| Error::Config(format!("mqtt.url {:?}: {e}", self.url)))?;
            if !matches!(url.scheme(), "mqtt" | "mqtts" | "tcp" | "ssl") || url.host_str().is_none() {
                return bad(format!("url {:?}: use mqtt://host:port or mqtts://host:port", self.url));
            }
        }
        if self.subscriptions.is_empty() {
            return bad("a broker without [[mqtt.subscriptions]] gives nothing".into());
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return bad("client_cert and client_key go together".into());
        }
        if self.user.is_empty() {
            return bad("user must not be empty".into());
        }
        for s in &self.subscriptions {
            let t = crate::sources::mqtt::topic::TopicTemplate::parse(&s.topic)
                .map_err(|e| Error::Config(format!("mqtt.subscriptions: {e}")))?;
            if !t.has_device() && !s.format.names_devices() {
                return bad(format!(
                    "topic {:?}: format {:?} needs {{device}} in the topic",
                    s.topic, s.format
                ));
            }
            if s.qos > 1 {
                return bad(format!("topic {:?}: qos {} (use 0 or 1)", s.topic, s.qos));
            }
        }
        if !self.command_topic.is_empty() {
            let t = crate::sources::mqtt::topic::TopicTemplate::parse(&self.command_topic)
                .map_err(|e| Error::Config(format!("mqtt.command_topic: {e}")))?;
            if !t.is_concrete() {
                return bad(format!("command_topic {:?} may not hold + or #", self.command_topic));
            }
        }
        Ok(())
    }
}
