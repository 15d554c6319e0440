//! The edge end of the link: dial, resend what the cloud has not acknowledged, send what
//! waits, answer requests, apply registry updates. See the parent module for the protocol.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
use twinlake_sdk::json::{from_json, to_json};

use super::frames::{Takes, Unacked, encode, encode_batches};
use super::requests::Requests;
use super::wire::LinkMsg;
use super::{Down, Item, MAX_BATCH_ITEMS, PROTOCOL, RegistryEntry, Up, Uplink};
use crate::Error;
use crate::config::LinkSection;
use crate::endpoints::EndpointQueue;
use crate::event::DeviceKey;
use crate::listener::Devices;
use crate::metrics::Metrics;
use crate::own_streams::OwnStreams;
use crate::registry::{CredentialHash, DeviceRegistry};

/// One established link: messages in and out. Dropping `tx` closes it.
#[derive(Debug)]
pub struct LinkIo {
    pub tx: mpsc::Sender<LinkMsg>,
    pub rx: mpsc::Receiver<LinkMsg>,
}

/// How often a gateway reports its queues to a cloud that takes them.
const STATUS_EVERY: Duration = Duration::from_secs(5);

impl LinkIo {
    /// Two connected ends, for a cloud running in the same process.
    pub fn pair(capacity: usize) -> (LinkIo, LinkIo) {
        let (a_tx, a_rx) = mpsc::channel(capacity);
        let (b_tx, b_rx) = mpsc::channel(capacity);
        (LinkIo { tx: a_tx, rx: b_rx }, LinkIo { tx: b_tx, rx: a_rx })
    }
}

/// A way to reach the cloud.
pub trait Connector: Send + Sync + 'static {
    /// Opens one link. Its reader may carry out the cloud's requests as it reads them
    /// (with `requests`), or leave them to the session as any other message.
    fn connect(&self, requests: Requests) -> Pin<Box<dyn Future<Output = Result<LinkIo, Error>> + Send + '_>>;
    /// Where it goes, for logs.
    fn target(&self) -> String;
}

/// What a link's session works with besides the client.
#[derive(Clone, Copy)]
struct Link<'a> {
    /// This run of the agent's session id.
    session: &'a str,
    requests: &'a Requests,
}

/// The link task's parts.
pub struct LinkClient {
    pub gateway: String,
    pub connector: Arc<dyn Connector>,
    pub cfg: LinkSection,
    pub uplink: Uplink,
    pub endpoints: EndpointQueue,
    pub devices: Devices,
    pub registry: Arc<DeviceRegistry>,
    /// Where the registry the cloud sent is kept, so devices can log in before the next link.
    pub registry_file: PathBuf,
    /// The streams the agent keeps on its devices, which user stream requests leave alone.
    pub own_streams: Arc<OwnStreams>,
    pub metrics: Arc<Metrics>,
    /// Devices of the MQTT source, reachable through their command topic.
    pub southbound: Arc<crate::sources::Southbound>,
    /// The rules placed on this gateway; their device actions run on a task of this client.
    pub rules: Arc<crate::rules::EdgeRules>,
    /// The retention rows are judged by where they enter; the cloud's replaces it.
    pub retention: Arc<crate::retention::Retention>,
}

impl std::fmt::Debug for LinkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkClient")
            .field("gateway", &self.gateway)
            .field("target", &self.connector.target())
            .finish_non_exhaustive()
    }
}

impl LinkClient {
    /// Loads the registry the cloud sent last time, if any.
    pub fn load_registry(&self) {
        let Ok(bytes) = std::fs::read(&self.registry_file) else {
            return;
        };
        match serde_json::from_slice::<Vec<RegistryEntry>>(&bytes) {
            Ok(entries) => {
                self.apply_registry(&entries);
                info!(devices = entries.len(), "loaded the registry the cloud sent last");
            }
            Err(e) => warn!(path = %self.registry_file.display(), error = %e, "cannot read the saved registry"),
        }
    }

    /// Keeps the link up until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let requests = Requests {
            devices: self.devices.clone(),
            own_streams: self.own_streams.clone(),
            southbound: self.southbound.clone(),
            metrics: self.metrics.clone(),
        };
        if let Some(rx) = self.rules.take_actions() {
            tokio::spawn(requests.clone().rule_actions(rx));
        }
        let session = crate::hex::random_hex(8);
        let mut next_seq: u64 = 1;
        let mut unacked = Unacked::default();
        let mut backoff = self.cfg.reconnect_min;
        let target = self.connector.target();
        loop {
            if *stop.borrow() {
                return;
            }
            let io = tokio::select! {
                r = self.connector.connect(requests.clone()) => r,
                _ = stop.changed() => return,
            };
            let io = match io {
                Ok(io) => io,
                Err(e) => {
                    warn!(%target, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the cloud");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(self.cfg.reconnect_max);
                    continue;
                }
            };
            let link = Link {
                session: &session,
                requests: &requests,
            };
            match self.session(io, link, &mut next_seq, &mut unacked, &mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.link_connected.set(0);
                    warn!(%target, error = %e, "the cloud link dropped; reconnecting");
                    backoff = self.cfg.reconnect_min;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// One connection: hello/welcome, resend, then serve until it drops (`Err`) or the agent
    /// stops (`Ok`).
    async fn session(
        &self,
        mut io: LinkIo,
        link: Link<'_>,
        next_seq: &mut u64,
        unacked: &mut Unacked,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let hello = Up::Hello {
            gateway: self.gateway.clone(),
            session: link.session.to_owned(),
            protocol: PROTOCOL,
        };
        send(&io, &hello).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), io.rx.recv())
            .await
            .map_err(|_| Error::Link("no welcome from the cloud within 10 s".into()))?
            .ok_or_else(|| Error::Link("the cloud closed the link during the handshake".into()))?;
        let LinkMsg::Text(first) = first else {
            return Err(Error::Link("a binary frame where the welcome belongs".into()));
        };
        let (acked, features) = match serde_json::from_str::<Down>(&first) {
            Ok(Down::Welcome { acked, features }) => (acked, features),
            Ok(Down::Refused { reason, protocol }) => {
                error!(cloud_protocol = protocol, agent_protocol = PROTOCOL, %reason, "the cloud refused the link");
                return Err(Error::Link(format!("the cloud refused the link: {reason}")));
            }
            Ok(other) => return Err(Error::Link(format!("expected a welcome, got {other:?}"))),
            Err(e) => return Err(Error::Link(format!("a bad welcome: {e}"))),
        };
        unacked.acked(acked);
        if *next_seq <= acked {
            // The cloud saw more of this session than we sent: a bug on one side; carry on
            // past it rather than have every new batch ignored.
            warn!(acked, next_seq, "the cloud acknowledged batches this agent never sent");
            *next_seq = acked + 1;
        }
        // Fresh rows go up as PSON to a cloud that takes them, else as JSON; batches as
        // binary frames to a cloud that takes them, else as text.
        let takes = Takes::from_features(&features);
        let (pson, binary) = (takes.pson, takes.binary);
        for frame in unacked.resend(takes) {
            self.send_frame(&io, frame.clone()).await?;
        }
        self.metrics.link_connected.set(1);
        self.metrics.link_connects.inc();
        info!(target = %self.connector.target(), resent = unacked.len(), pson, binary, "cloud link up");

        // The queues, to a cloud that takes them: at once, then every few seconds.
        let reports = features.iter().any(|f| f == crate::link::FEATURE_STATUS);
        let mut report = tokio::time::interval(STATUS_EVERY);
        let mut items = Vec::with_capacity(MAX_BATCH_ITEMS);
        loop {
            // Send while there is room and something waits.
            while unacked.len() < self.cfg.max_unacked
                && (!self.uplink.is_empty() || !self.endpoints.is_empty() || self.registry.has_upgrades())
            {
                items.clear();
                for u in self.registry.take_upgrades(MAX_BATCH_ITEMS / 2) {
                    items.push(Item::Rehash {
                        user: u.key.user,
                        device: u.key.device,
                        old: u.old,
                        new: u.new,
                    });
                }
                while items.len() < MAX_BATCH_ITEMS {
                    let Some(call) = self.endpoints.try_pop() else { break };
                    items.push(Item::Endpoint {
                        user: call.device.user,
                        device: call.device.device,
                        endpoint: call.endpoint,
                        at: crate::outbox::ms_since_epoch(call.at),
                        payload: call.payload.as_ref().map(to_json),
                    });
                }
                self.uplink.take(MAX_BATCH_ITEMS, pson, &mut items);
                if items.is_empty() {
                    break;
                }
                let mut frames = Vec::new();
                encode_batches(std::mem::take(&mut items), next_seq, binary, &mut frames);
                for (seq, frame) in frames {
                    self.send_frame(&io, frame.clone()).await?;
                    unacked.push(seq, frame, pson);
                }
                self.metrics.link_unacked_frames.set(unacked.len() as i64);
            }
            let room = unacked.len() < self.cfg.max_unacked;
            tokio::select! {
                msg = io.rx.recv() => match msg {
                    Some(LinkMsg::Text(text)) => self.handle_down(&text, unacked, link.requests, &io.tx),
                    Some(LinkMsg::Binary(_)) => warn!("ignored a binary frame from the cloud"),
                    None => return Err(closed()),
                },
                _ = self.uplink.notified(), if room => {}
                _ = self.endpoints.notified(), if room => {}
                _ = report.tick(), if reports => {
                    io.tx.send(encode(&Up::Status(self.status())).into()).await.map_err(|_| closed())?;
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Sends one batch frame (new or resent), counted.
    async fn send_frame(&self, io: &LinkIo, frame: LinkMsg) -> Result<(), Error> {
        let len = frame.len() as u64;
        io.tx.send(frame).await.map_err(|_| closed())?;
        self.metrics.link_frames_sent.inc();
        self.metrics.link_bytes_sent.inc_by(len);
        Ok(())
    }

    /// The queue depths the metrics hold.
    fn status(&self) -> crate::link::GatewayStatus {
        let m = &self.metrics;
        crate::link::GatewayStatus {
            upload_files: m.upload_queue_files.get(),
            upload_bytes: m.upload_queue_bytes.get(),
            buffer_rows: m.buffer_rows.get(),
            unacked_batches: m.link_unacked_frames.get(),
            devices_connected: m.devices_connected.get(),
        }
    }

    /// Answers go straight to the link's writer from the task that ran the request.
    fn handle_down(&self, text: &str, unacked: &mut Unacked, requests: &Requests, replies: &mpsc::Sender<LinkMsg>) {
        let msg = match serde_json::from_str::<Down>(text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "ignored a message from the cloud that is not the link protocol");
                return;
            }
        };
        match msg {
            Down::Ack { through } => {
                unacked.acked(through);
                self.metrics.link_unacked_frames.set(unacked.len() as i64);
            }
            Down::Registry {
                devices,
                credential_iterations,
            } => {
                self.registry.set_policy(credential_iterations);
                self.apply_registry(&devices);
                let path = self.registry_file.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = save_json(&path, &devices) {
                        warn!(path = %path.display(), error = %e, "cannot save the registry");
                    }
                });
            }
            Down::Rules { rules, retention } => {
                self.rules.replace(rules);
                if let Some(r) = retention {
                    self.retention.replace(r);
                }
            }
            // From a link whose reader does not take requests (the in-process one).
            Down::Request { id, user, device, op } => {
                requests.handle(id, &user, &device, op, &super::LinkTx::queued(replies.clone()))
            }
            Down::Welcome { .. } | Down::Refused { .. } => debug!("a second hello answer; ignored"),
        }
    }

    /// Replaces the cloud-managed devices with `entries`; devices whose credential changed
    /// or that were removed are disconnected.
    fn apply_registry(&self, entries: &[RegistryEntry]) {
        let mut parsed = Vec::with_capacity(entries.len());
        for e in entries {
            let Some(h) = &e.credential_hash else { continue };
            match CredentialHash::parse(h) {
                Ok(hash) => parsed.push((DeviceKey::new(&e.user, &e.device), hash)),
                Err(why) => {
                    warn!(device = %format!("{}/{}", e.user, e.device), %why, "the cloud sent a bad credential hash")
                }
            }
            for (name, v) in &e.properties {
                self.devices.set_property(&e.user, &e.device, name, from_json(v));
            }
        }
        for key in self.registry.sync_cloud(parsed) {
            if let Some(h) = self.devices.get(&key.user, &key.device) {
                info!(device = %key, "credential changed or device removed; disconnecting it");
                h.close();
            }
        }
    }
}

fn closed() -> Error {
    Error::Link("the link closed".into())
}

async fn send(io: &LinkIo, msg: &Up) -> Result<(), Error> {
    io.tx.send(encode(msg).into()).await.map_err(|_| closed())
}

/// The saved registry holds credential hashes: readable by the agent's user only.
fn save_json<T: serde::Serialize>(path: &std::path::Path, v: &T) -> std::io::Result<()> {
    crate::wal::write_file_atomic(path, &serde_json::to_vec(v).map_err(std::io::Error::other)?, 0o600)
}
