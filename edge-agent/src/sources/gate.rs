//! What the request-shaped device sources (the HTTP device API, CoAP) share: a device's
//! token checked against the registry with the listener's lockouts, presence (online on a
//! request, offline after silence, at most `max_devices`), a command queue per online
//! device as its southbound route, and rows handed to ingest with an answer only once they
//! are durable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value as Json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};
use twinlake_sdk::pson::Value;

use super::commands::Commands;
use super::{Control, Heard, Presence, Southbound, connected, disconnected};
use crate::event::{Acker, DeviceEvent, DeviceEventKind, DeviceKey, SourceRow};
use crate::listener::Authenticator;
use crate::listener::session::Credentials;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::registry::DeviceRegistry;

/// How long a request waits for its rows to be durable before it is answered "try again".
const DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// What the agent hands a source.
#[derive(Debug)]
pub struct Parts {
    pub registry: Arc<DeviceRegistry>,
    pub limiter: Arc<RateLimiter>,
    pub events: mpsc::Sender<DeviceEvent>,
    pub metrics: Arc<Metrics>,
    pub southbound: Arc<Southbound>,
}

/// How far along a shutdown a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Refuse new requests; those taken wait for their rows to be durable.
    Draining,
    /// Ingest has finished: stop.
    Done,
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, a malformed one, an unknown device or a wrong credential.
    Unauthorized,
    /// The address or the device is locked out after failures.
    RateLimited,
    /// `max_devices` are online and this one is not.
    DeviceCap,
    /// The agent is stopping.
    ShuttingDown,
}

/// Why rows were not confirmed: the client should send them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Failed,
    ShuttingDown,
}

/// A source's admission and hand-off to ingest.
#[derive(Debug)]
pub struct Gate {
    /// The source's name: the metrics label and the twin's `connection.protocol`.
    protocol: &'static str,
    parts: Parts,
    tls: bool,
    slow_auth: Semaphore,
    presence: Mutex<Presence>,
    commands: Arc<Commands>,
    draining: AtomicBool,
}

/// The settings a [`Gate`] takes from its source's section.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub offline_after: Duration,
    pub max_devices: usize,
    pub max_commands_per_device: usize,
}

impl Gate {
    pub fn new(protocol: &'static str, parts: Parts, tls: bool, limits: GateLimits) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            protocol,
            parts,
            tls,
            slow_auth: Semaphore::new(cores),
            presence: Mutex::new(Presence::new(limits.offline_after, limits.max_devices)),
            commands: Arc::new(Commands::new(limits.max_commands_per_device)),
            draining: AtomicBool::new(false),
        }
    }

    /// Counts a request's outcome (`source_messages_total{source, outcome}`).
    pub fn count(&self, outcome: &'static str) {
        self.parts.metrics.source(self.protocol, outcome);
    }

    /// The commands waiting for this source's devices.
    pub fn commands(&self) -> &Arc<Commands> {
        &self.commands
    }

    /// From now on requests are refused ([`Denied::ShuttingDown`]).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Checks a token (`user:device:credential`) from `peer`; marks the device online.
    pub async fn authenticate(&self, peer: SocketAddr, token: &str) -> Result<DeviceKey, Denied> {
        let metrics = &self.parts.metrics;
        if self.draining() {
            return Err(Denied::ShuttingDown);
        }
        let Some(creds) = parse_token(token) else {
            metrics.auth_failures.inc();
            self.count("unauthorized");
            return Err(Denied::Unauthorized);
        };
        let key = DeviceKey::new(&creds.user, &creds.device);
        if self.parts.limiter.is_locked(peer.ip(), &key) {
            metrics.auth_failures.inc();
            metrics.auth_rate_limited.inc();
            self.count("rate_limited");
            return Err(Denied::RateLimited);
        }
        let ok = match self.parts.registry.quick_check(&creds) {
            Some(ok) => ok,
            None => {
                // A hash check takes CPU time: off the async threads, as many at once as
                // there are cores.
                let _permit = self.slow_auth.acquire().await;
                let registry = self.parts.registry.clone();
                tokio::task::spawn_blocking(move || registry.authenticate(&creds))
                    .await
                    .unwrap_or(false)
            }
        };
        if !ok {
            metrics.auth_failures.inc();
            self.count("unauthorized");
            let locked = self.parts.limiter.failure(peer.ip(), &key);
            warn!(device = %key, %peer, source = self.protocol, locked_out = locked, "device authentication failed");
            return Err(Denied::Unauthorized);
        }
        self.parts.limiter.success(&key);
        self.online(&key, peer).await?;
        Ok(key)
    }

    async fn online(&self, key: &DeviceKey, peer: SocketAddr) -> Result<(), Denied> {
        let heard = self
            .presence
            .lock()
            .map_or(Heard::Refused, |mut p| p.heard(&key.to_string(), Instant::now()));
        match heard {
            Heard::Again => Ok(()),
            Heard::Refused => {
                self.count("device_cap");
                Err(Denied::DeviceCap)
            }
            Heard::Online => {
                let control = Arc::new(Queued {
                    commands: self.commands.clone(),
                    user: key.user.clone(),
                });
                self.parts.southbound.insert(key.clone(), control);
                let events = &self.parts.events;
                if !connected(events, key.clone(), SystemTime::now(), peer, self.tls, self.protocol).await {
                    return Err(Denied::ShuttingDown);
                }
                Ok(())
            }
        }
    }

    /// Marks the devices silent for `offline_after` offline (checks once a second); returns
    /// them.
    pub async fn expire(&self) -> Vec<DeviceKey> {
        let gone = self
            .presence
            .lock()
            .map(|mut p| p.expire(Instant::now()))
            .unwrap_or_default();
        let mut keys = Vec::with_capacity(gone.len());
        for name in gone {
            let Some((user, device)) = name.split_once('/') else {
                continue;
            };
            let key = DeviceKey::new(user, device);
            self.parts.southbound.remove(&key);
            self.commands.forget(&key);
            debug!(device = %key, source = self.protocol, "device silent; offline");
            disconnected(&self.parts.events, key.clone(), SystemTime::now(), "silent").await;
            keys.push(key);
        }
        keys
    }

    /// Hands `rows` (and `props`, the device's properties) to ingest; returns once the
    /// rows are durable.
    pub async fn store(
        &self,
        key: DeviceKey,
        rows: Vec<SourceRow>,
        props: Vec<(String, Value)>,
    ) -> Result<(), NotStored> {
        let now = SystemTime::now();
        let events = &self.parts.events;
        for (property, v) in props {
            let kind = DeviceEventKind::PropertySet {
                property,
                payload: Some(v),
            };
            let ev = DeviceEvent {
                device: key.clone(),
                at: now,
                kind,
            };
            events.send(ev).await.map_err(|_| NotStored::ShuttingDown)?;
        }
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let ack = Acker::from_fn(move |ok| {
            if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(ok);
            }
        });
        let kind = DeviceEventKind::Message {
            rows,
            delivery: None,
            ack: Some(ack),
        };
        let ev = DeviceEvent {
            device: key,
            at: now,
            kind,
        };
        events.send(ev).await.map_err(|_| NotStored::ShuttingDown)?;
        let outcome = match tokio::time::timeout(DURABLE_WITHIN, rx).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(NotStored::Failed),
            Ok(Err(_)) | Err(_) => Err(NotStored::ShuttingDown),
        };
        self.count(if outcome.is_ok() { "stored" } else { "unavailable" });
        outcome
    }
}

/// A token's parts: `user:device:credential` (ids hold no `:`; the credential may).
pub fn parse_token(token: &str) -> Option<Credentials> {
    let mut it = token.splitn(3, ':');
    let (user, device, credential) = (it.next()?, it.next()?, it.next()?);
    let id_ok =
        |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (id_ok(user) && id_ok(device) && !credential.is_empty() && credential.len() <= 256).then(|| Credentials {
        user: user.to_owned(),
        device: device.to_owned(),
        credential: credential.to_owned(),
    })
}

/// Carries writes to a device of a request-shaped source: they wait for its next poll
/// (or go out to its observers).
#[derive(Debug)]
struct Queued {
    commands: Arc<Commands>,
    user: String,
}

impl Control for Queued {
    fn write(&self, device: &str, path: &str, value: &Json) -> Result<(), String> {
        self.commands
            .push(&DeviceKey::new(&self.user, device), path, value.clone())
            .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_a_login() {
        let c = parse_token("acme:dev-1:s3cr:et").unwrap();
        assert_eq!(
            (c.user.as_str(), c.device.as_str(), c.credential.as_str()),
            ("acme", "dev-1", "s3cr:et")
        );
        for bad in ["", "acme", "acme:dev", "acme:dev:", ":dev:x", "a/b:dev:x", "acme:d v:x"] {
            assert!(parse_token(bad).is_none(), "{bad:?}");
        }
        assert!(parse_token(&format!("a:b:{}", "x".repeat(257))).is_none());
    }
}
