//! The MQTT source: subscribes to a broker and feeds what arrives into ingest.
//!
//! **At least once.** MQTT 5 with a persistent session (clean start off, a session expiry,
//! a fixed client id) and manual acks: a QoS 1 message is acknowledged only after its rows
//! and a delivery record are fsynced in the WAL, and after a second record saying the ack is
//! about to go (see [`crate::ingest::Unconfirmed`]). If the agent dies before the ack, the
//! broker sends the message again, flagged DUP, with the same packet id; ingest finds it
//! among the durable, unconfirmed messages and confirms it without storing its rows twice.
//! The one gap is a crash after that second fsync and before the broker has read the PUBACK:
//! then the redelivery is stored again (a duplicate, never a loss). The Receive Maximum and a
//! local window (`mqtt.max_inflight`) bound how many messages can be in that gap. After a
//! lost connection the acks of the old one are dropped, so a late one cannot acknowledge a
//! newer message that reuses its packet id; the resent copies are confirmed instead (stored
//! again if their first copy was already confirmed: a duplicate, never a loss).
//!
//! **Backpressure.** The event queue into ingest is bounded; while it is full this loop
//! waits, stops reading the socket, and the broker holds the messages.
//!
//! **Control.** Devices seen here get a route for resource writes (desired values): the
//! value is published as JSON, QoS 1, to `command_topic` with `{device}` and `{resource}`.

pub mod broker;
pub mod config;
pub mod payload;
pub mod sparkplug;
pub mod topic;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ClientError, ConnectionError, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use self::broker::Embedded;
use self::payload::{Decoder, Format};
use self::sparkplug::Topic as SparkplugTopic;
use self::topic::TopicTemplate;
use super::{Control, Heard, Presence, Southbound, connected, disconnected, fnv1a};
use crate::Error;
use crate::error::read_file;
use crate::event::{Acker, Delivery, DeviceEvent, DeviceEventKind, DeviceKey};
use crate::metrics::Metrics;
use crate::sources::mqtt::config::MqttSection;

/// How far along a shutdown the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Take no more messages (those not taken stay unacknowledged at the broker).
    Draining,
    /// Ingest has confirmed what it took: send the last acks and disconnect.
    Done,
}

/// One subscription, parsed.
#[derive(Debug, Clone)]
struct Sub {
    template: TopicTemplate,
    format: Format,
    resource: String,
    qos: QoS,
}

/// A configured, not yet connected MQTT source.
#[derive(Debug)]
pub struct MqttSource {
    options: MqttOptions,
    subs: Vec<Sub>,
    user: String,
    name: Arc<str>,
    peer: SocketAddr,
    tls: bool,
    command: Option<TopicTemplate>,
    max_inflight: u16,
    offline_after: Duration,
    max_devices: usize,
    events: mpsc::Sender<DeviceEvent>,
    metrics: Arc<Metrics>,
    southbound: Arc<Southbound>,
}

fn tls_config(cfg: &MqttSection) -> Result<rustls::ClientConfig, Error> {
    let roots = crate::listener::client_roots(cfg.ca_file.as_deref())?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_slice_iter(&read_file(c)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Tls(format!("{}: {e}", c.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&read_file(k)?)
                .map_err(|e| Error::Tls(format!("{}: {e}", k.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl MqttSource {
    /// Checks the section and reads its files; connects only in [`MqttSource::run`].
    /// With `embedded`, the source subscribes to that broker instead of `cfg.url`.
    pub async fn new(
        cfg: &MqttSection,
        embedded: Option<&Embedded>,
        gateway: &str,
        events: mpsc::Sender<DeviceEvent>,
        metrics: Arc<Metrics>,
        southbound: Arc<Southbound>,
    ) -> Result<Self, Error> {
        let text = embedded.map_or_else(|| cfg.url.clone(), |e| format!("mqtt://{}", e.internal));
        let url = url::Url::parse(&text).map_err(|e| Error::Config(format!("mqtt.url {text:?}: {e}")))?;
        let tls = matches!(url.scheme(), "mqtts" | "ssl");
        let host = url
            .host_str()
            .ok_or_else(|| Error::Config("mqtt.url has no host".into()))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        let id = if cfg.client_id.is_empty() {
            format!("twinlake-{gateway}")
        } else {
            cfg.client_id.clone()
        };
        let mut options = MqttOptions::new(id, host.clone(), port);
        // MQTT 5: the broker keeps the session (and its QoS 1 messages) while the agent is
        // away, and sends at most `max_inflight` messages the agent has not acknowledged.
        options
            .set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX)))
            .set_receive_maximum(Some(cfg.max_inflight.max(1)))
            .set_manual_acks(true)
            .set_max_packet_size(Some(1 << 20));
        if let Some(e) = embedded {
            options.set_credentials(e.username.clone(), e.password.clone());
        } else if !cfg.username.is_empty() {
            options.set_credentials(cfg.username.clone(), cfg.password.0.clone());
        }
        if tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
                tls_config(cfg)?,
            ))));
        }
        let peer = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
        let mut subs = Vec::new();
        for s in &cfg.subscriptions {
            let template = TopicTemplate::parse(&s.topic).map_err(Error::Config)?;
            subs.push(Sub {
                template,
                format: s.format,
                resource: s
                    .resource
                    .clone()
                    .unwrap_or_else(|| s.format.default_resource().to_owned()),
                qos: if s.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            });
        }
        let command = if cfg.command_topic.is_empty() {
            None
        } else {
            Some(TopicTemplate::parse(&cfg.command_topic).map_err(Error::Config)?)
        };
        Ok(Self {
            options,
            subs,
            user: cfg.user.clone(),
            // The name keys the WAL's delivery records: stable across restarts.
            name: Arc::from(match embedded {
                Some(_) => "mqtt:embedded".to_owned(),
                None => format!("mqtt:{}", url.as_str()),
            }),
            peer,
            tls,
            command,
            max_inflight: cfg.max_inflight,
            offline_after: cfg.offline_after,
            max_devices: cfg.max_devices,
            events,
            metrics,
            southbound,
        })
    }

    /// Serves until `phase` reaches [`Phase::Done`]: reconnects on its own (with backoff)
    /// and subscribes again on every connection.
    pub async fn run(self, mut phase: watch::Receiver<Phase>) {
        // Room for a window of acks plus subscriptions and commands.
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), usize::from(self.max_inflight) + 1024);
        let control: Option<Arc<dyn Control>> = self.command.clone().map(|t| {
            Arc::new(CommandTopic {
                template: t,
                client: client.clone(),
            }) as Arc<dyn Control>
        });
        let mut state = State {
            decoder: Decoder::default(),
            presence: Presence::new(self.offline_after, self.max_devices),
            control,
        };
        let mut backoff = Duration::from_millis(200);
        // Flow control: at most `window` messages passed to ingest whose PUBACK the client
        // has reported written; the others wait in `held`. rumqttc writes one request per
        // poll while it reads up to ten packets, so without this the PUBACKs of a fast stream
        // fall far behind, and every one of those is a message a crash can store twice.
        // `held` itself is bounded by the broker: it sends at most `max_inflight` (the
        // Receive Maximum) messages it has no PUBACK for.
        let window = u64::from(self.max_inflight.max(1));
        let (mut forwarded, mut flushed) = (0u64, 0u64);
        let mut held: VecDeque<Publish> = VecDeque::new();
        // Which connection the acks are for. After a disconnect the broker sends every
        // unacknowledged message again under its packet id; an ack from the old connection
        // arriving late could then acknowledge a newer message that reuses that id before it
        // is durable. So acks of an older connection are dropped (the resent copies carry
        // their own), and rumqttc drops the PUBACKs still queued when the connection went.
        // The check and the ack happen under the lock that the switch to a new connection
        // takes, so no old ack can slip into the request queue after it was emptied.
        let epoch = Arc::new(Mutex::new(0u64));
        loop {
            let current = *phase.borrow();
            if current == Phase::Done {
                break;
            }
            while current == Phase::Running && forwarded - flushed < window {
                let Some(p) = held.pop_front() else { break };
                forwarded += u64::from(p.qos != QoS::AtMostOnce);
                self.message(&client, &mut state, p, &epoch).await;
            }
            // Checked between events (keep-alive pings make one at least every keep_alive):
            // a timer branch here would cancel a poll halfway through a write.
            for device in state.presence.expire(Instant::now()) {
                let key = DeviceKey::new(&self.user, &device);
                self.southbound.remove(&key);
                disconnected(&self.events, key, SystemTime::now(), "silent for mqtt.offline_after").await;
            }
            let polled = tokio::select! {
                p = eventloop.poll() => p,
                _ = phase.changed() => continue,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(200);
                    info!(broker = %self.peer, session_present = ack.session_present, "connected to the MQTT broker");
                    let filters: Vec<_> = self
                        .subs
                        .iter()
                        .map(|s| Filter::new(s.template.filter(), s.qos))
                        .collect();
                    if let Err(e) = client.try_subscribe_many(filters) {
                        warn!(error = %e, "cannot subscribe");
                    }
                }
                Ok(Event::Outgoing(Outgoing::PubAck(_))) => flushed = (flushed + 1).min(forwarded),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if current != Phase::Running {
                        // Left unacknowledged: the broker sends it again next session.
                        continue;
                    }
                    held.push_back(p);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        warn!("the broker refused a subscription");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // The broker sends what was not acknowledged again on the next session.
                    if let Ok(mut e) = epoch.lock() {
                        *e += 1;
                        // rumqttc dropped the queued PUBACKs when it saw the connection go;
                        // this drops any that came in since.
                        eventloop.clean();
                    }
                    held.clear();
                    (forwarded, flushed) = (0, 0);
                    if !matches!(
                        e,
                        ConnectionError::MqttState(rumqttc::v5::StateError::ConnectionAborted)
                    ) || current == Phase::Running
                    {
                        warn!(broker = %self.peer, error = %e, retry_in = ?backoff, "MQTT connection lost");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = phase.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        // Ingest has confirmed everything it took: the acks are queued ahead of this.
        close(&client, &mut eventloop).await;
        debug!("MQTT source stopped");
    }

    async fn message(&self, client: &AsyncClient, state: &mut State, p: Publish, epoch: &Arc<Mutex<u64>>) {
        let now = SystemTime::now();
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            self.metrics.source("mqtt", "undecodable");
            return;
        };
        let matched = self
            .subs
            .iter()
            .find_map(|s| s.template.captures(topic).map(|c| (s, c)));
        if let Some((sub, _)) = matched
            && sub.format == Format::Sparkplug
            && let Some(t) = SparkplugTopic::parse(topic)
            && matches!(t.kind, "NDEATH" | "DDEATH")
        {
            // A death certificate: that node or device is offline now.
            let device = t.device.unwrap_or(t.node);
            if state.presence.gone(device) {
                let key = DeviceKey::new(&self.user, device);
                self.southbound.remove(&key);
                disconnected(&self.events, key, now, t.kind).await;
            }
        }
        let rows = match matched {
            None => {
                self.metrics.source("mqtt", "unmatched");
                Ok(Vec::new())
            }
            Some((sub, caps)) => state
                .decoder
                .decode(sub.format, topic, &caps, &sub.resource, &p.payload, now),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(why) => {
                // Confirmed all the same: a message that cannot be read never will be.
                self.metrics.source("mqtt", "undecodable");
                warn!(%topic, %why, "MQTT payload skipped");
                Vec::new()
            }
        };
        if !rows.is_empty() {
            self.metrics.source("mqtt", "accepted");
        }
        // Devices heard for the first time (or again after going offline): online in their
        // twin, reachable for writes.
        let mut first_device = None;
        let heard = Instant::now();
        let mut rows = rows;
        let mut refused = std::collections::HashSet::new();
        for r in &rows {
            match state.presence.heard(&r.device, heard) {
                Heard::Again => {}
                Heard::Refused => {
                    refused.insert(r.device.clone());
                    continue;
                }
                Heard::Online => {
                    let key = DeviceKey::new(&self.user, &r.device);
                    if let Some(c) = &state.control {
                        self.southbound.insert(key.clone(), c.clone());
                    }
                    if !connected(&self.events, key, now, self.peer, self.tls, "mqtt").await {
                        return;
                    }
                }
            }
            first_device.get_or_insert_with(|| r.device.clone());
        }
        if !refused.is_empty() {
            // Acknowledged all the same, like a payload that cannot be read: resending it
            // would not make room.
            self.metrics.source("mqtt", "device_cap");
            warn!(%topic, devices = refused.len(), max = self.max_devices, "MQTT rows of new devices refused: mqtt.max_devices are online");
            rows.retain(|r| !refused.contains(&r.device));
        }
        let delivery = (p.qos != QoS::AtMostOnce).then(|| {
            let client = client.clone();
            let connection = epoch.lock().map(|e| *e).unwrap_or(u64::MAX);
            let epoch = epoch.clone();
            let mut ackable = p.clone();
            ackable.payload = Default::default();
            ackable.properties = None;
            Delivery {
                source: self.name.clone(),
                id: p.pkid,
                hash: fnv1a(&[&p.topic, &p.payload]),
                redelivered: p.dup,
                ack: Acker::from_fn(move |ok| {
                    let Ok(current) = epoch.lock() else { return };
                    if !ok || *current != connection {
                        return;
                    }
                    // The request queue holds a window of acks and more; should commands
                    // have filled it, try again shortly, under the same check.
                    if let Err(ClientError::TryRequest(_)) = client.try_ack(&ackable) {
                        drop(current);
                        let (client, p, epoch) = (client.clone(), ackable.clone(), epoch.clone());
                        tokio::spawn(async move {
                            loop {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                let Ok(current) = epoch.lock() else { return };
                                if *current != connection
                                    || !matches!(client.try_ack(&p), Err(ClientError::TryRequest(_)))
                                {
                                    return;
                                }
                            }
                        });
                    }
                }),
            }
        });
        let ev = DeviceEvent {
            device: DeviceKey::new(&self.user, first_device.as_deref().unwrap_or("")),
            at: now,
            kind: DeviceEventKind::Message {
                rows,
                delivery,
                ack: None,
            },
        };
        let _ = self.events.send(ev).await;
    }
}

/// Disconnects cleanly: DISCONNECT goes after the PUBACKs already queued, and the socket is
/// read until the broker closes it. Closing with unread data would make the kernel reset
/// the connection, and the broker could lose PUBACKs it had not read yet.
async fn close(client: &AsyncClient, eventloop: &mut rumqttc::v5::EventLoop) {
    let _ = client.try_disconnect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, eventloop.poll()).await {}
}

struct State {
    decoder: Decoder,
    presence: Presence,
    control: Option<Arc<dyn Control>>,
}

/// Writes to MQTT devices: the value as JSON on the command topic.
#[derive(Debug)]
struct CommandTopic {
    template: TopicTemplate,
    client: AsyncClient,
}

impl Control for CommandTopic {
    fn write(&self, device: &str, path: &str, value: &Json) -> Result<(), String> {
        let topic = self.template.render(device, path);
        let payload = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| format!("cannot publish the command: {e}"))
    }
}
