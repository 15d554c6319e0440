//! Carrying out the cloud's requests on devices: live reads, writes, calls, runs,
//! descriptions, stream changes and properties, and the gateway rules' device actions.
//!
//! A request that is one device request (describe, template, read, write, call, run) for a
//! device on this agent's listener goes to the device's connection, whose task writes the
//! answer to the link: no task waits for it and none is woken in between. The link's
//! reader hands such requests over as it reads them ([`Requests::try_text`]), so they do
//! not wait behind the session task either. Anything else runs on a task of its own.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use twinlake_sdk::frame::Signal;
use twinlake_sdk::json::{from_json, to_json};
use twinlake_sdk::pson::Value;

use super::direct::LinkTx;
use super::frames::encode;
use super::wire::LinkMsg;
use super::{Down, ErrorKind, Op, RemoteError, Reply, Up};
use crate::Error;
use crate::event::DeviceKey;
use crate::listener::Devices;
use crate::metrics::Metrics;
use crate::own_streams::OwnStreams;
use crate::sources::Southbound;

/// What carries out the cloud's requests, shared by the link's reader and session.
#[derive(Clone)]
pub struct Requests {
    pub devices: Devices,
    /// The streams the agent keeps on its devices, which user stream requests leave alone.
    pub own_streams: Arc<OwnStreams>,
    /// Devices of the MQTT source, reachable through their command topic.
    pub southbound: Arc<Southbound>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests").finish_non_exhaustive()
    }
}

/// How every request message starts, as the cloud encodes it (serde writes the tag first).
const REQUEST_PREFIX: &str = r#"{"type":"request""#;

impl Requests {
    /// Carries out `text` if it is a request, answering on `replies`; false (and nothing
    /// done) for any other message, which is the session's.
    pub fn try_text(&self, text: &str, replies: &LinkTx) -> bool {
        if !text.starts_with(REQUEST_PREFIX) {
            return false;
        }
        match serde_json::from_str::<Down>(text) {
            Ok(Down::Request { id, user, device, op }) => {
                self.handle(id, &user, &device, op, replies);
                true
            }
            Ok(_) => false,
            Err(e) => {
                debug!(error = %e, "a request that does not parse; the session logs it");
                false
            }
        }
    }

    /// Carries out one request and writes its answer to `replies`.
    pub fn handle(&self, id: u64, user: &str, device: &str, op: Op, replies: &LinkTx) {
        self.metrics.link_requests.inc();
        let key = DeviceKey::new(user, device);
        if let Some((signal, path, payload, answer)) = one_request(&op)
            && let Some(h) = self.devices.get(&key.user, &key.device)
        {
            let replies = replies.clone();
            let metrics = self.metrics.clone();
            h.request_then(signal, &refs(&path), payload, move |r| {
                send_reply(&replies, id, r.map(|v| answer.json(v)).map_err(remote), &metrics);
            });
            return;
        }
        let this = self.clone();
        let replies = replies.clone();
        tokio::spawn(async move {
            let result = this.run(&key, op).await;
            send_reply(&replies, id, result, &this.metrics);
        });
    }

    /// Carries out `op` on a device of the listener or of the MQTT source.
    async fn run(&self, key: &DeviceKey, op: Op) -> Result<Option<Json>, RemoteError> {
        match (self.devices.get(&key.user, &key.device), self.southbound.get(key)) {
            (None, Some(control)) => foreign(&*control, key, op),
            _ => execute(&self.devices, &self.own_streams, key, op).await,
        }
    }

    /// Runs the rules' device actions (input writes) until the client stops.
    pub async fn rule_actions(self, mut rx: mpsc::Receiver<crate::rules::DeviceAction>) {
        while let Some(a) = rx.recv().await {
            for (path, value) in a.inputs {
                if let Err(e) = self.run(&a.key, Op::Write { path, value }).await {
                    warn!(device = %a.key.device, error = %e.message, "a gateway rule's action failed");
                }
            }
        }
    }
}

fn remote(e: Error) -> RemoteError {
    let kind = match &e {
        Error::DeviceOffline(_) | Error::Disconnected(_) => ErrorKind::Offline,
        Error::DeviceTimeout { .. } => ErrorKind::Timeout,
        Error::DeviceError { .. } => ErrorKind::DeviceError,
        _ => ErrorKind::BadRequest,
    };
    RemoteError {
        kind,
        message: e.to_string(),
    }
}

/// Carries out one request on a connected device.
async fn execute(devices: &Devices, own: &OwnStreams, key: &DeviceKey, op: Op) -> Result<Option<Json>, RemoteError> {
    if let Op::SetProperty { property, value } = &op {
        devices.set_property(&key.user, &key.device, property, from_json(value));
        return Ok(None);
    }
    let h = devices.get(&key.user, &key.device).ok_or_else(|| RemoteError {
        kind: ErrorKind::Offline,
        message: format!("device {key} is not connected to this gateway"),
    })?;
    if let Some((signal, path, payload, answer)) = one_request(&op) {
        let r = h.request(signal, &refs(&path), payload).await;
        return r.map(|v| answer.json(v)).map_err(remote);
    }
    let r = match op {
        Op::StartStream { path, interval_ms } => {
            let own = own.get(key, &path);
            let wanted = interval_ms.map(Duration::from_millis);
            // The device keeps one stream per resource: the faster of the two wins.
            let interval = match (wanted, own) {
                (Some(w), Some(Some(o))) => Some(w.min(o)),
                (w, _) => w,
            };
            h.start_stream(&refs(&split(&path)), interval).await
        }
        Op::StopStream { path } => {
            let p = split(&path);
            match own.get(key, &path) {
                Some(own) => h.start_stream(&refs(&p), own).await,
                None => h.stop_stream(&refs(&p)).await,
            }
        }
        _ => Ok(()),
    };
    r.map(|()| None).map_err(remote)
}

/// How the answer to a one-request op becomes the reply's value.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A description or template: an object, `{}` if the device sent nothing.
    Value,
    /// A resource's output, if any.
    Output,
    /// A write or a run: no value.
    Nothing,
}

impl Answer {
    fn json(self, v: Option<Value>) -> Option<Json> {
        match self {
            Answer::Value => Some(to_json(&v.unwrap_or_default())),
            Answer::Output => v.as_ref().map(to_json),
            Answer::Nothing => None,
        }
    }
}

/// The device request an op is, for the ops that are one request and nothing else
/// (describe, template, read, write, call, run).
fn one_request(op: &Op) -> Option<(Signal, Vec<String>, Option<Value>, Answer)> {
    Some(match op {
        Op::Describe => (Signal::None, vec!["api".to_owned()], None, Answer::Value),
        Op::Template { path } => {
            let mut p = split(path);
            p.push("api".to_owned());
            (Signal::None, p, None, Answer::Value)
        }
        Op::Read { path } => (Signal::None, split(path), None, Answer::Output),
        Op::Write { path, value } => (Signal::None, split(path), Some(from_json(value)), Answer::Nothing),
        Op::Call { path, input } => (Signal::None, split(path), input.as_ref().map(from_json), Answer::Output),
        Op::Run { path } => (Signal::None, split(path), None, Answer::Nothing),
        Op::StartStream { .. } | Op::StopStream { .. } | Op::SetProperty { .. } => return None,
    })
}

fn split(p: &str) -> Vec<String> {
    p.split('/').filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Writes a request's answer to the link without waiting; a full link queue is waited on
/// by a task of its own.
fn send_reply(replies: &LinkTx, id: u64, result: Result<Option<Json>, RemoteError>, metrics: &Metrics) {
    let reply = match result {
        Ok(value) => Reply {
            id,
            ok: true,
            value,
            error: None,
        },
        Err(error) => Reply {
            id,
            ok: false,
            value: None,
            error: Some(error),
        },
    };
    // Onto the socket from this task if it takes it now; else through the writer task.
    let Err(msg) = replies.try_direct(LinkMsg::Text(encode(&Up::Reply(reply)))) else {
        metrics.link_replies_direct.inc();
        return;
    };
    if let Err(mpsc::error::TrySendError::Full(msg)) = replies.queue.try_send(msg)
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        let queue = replies.queue.clone();
        rt.spawn(async move { queue.send(msg).await });
    }
}

/// A request for a device of another source (MQTT): writes go out through its control;
/// there is nothing to read back from such a device but its twin.
fn foreign(control: &dyn crate::sources::Control, key: &DeviceKey, op: Op) -> Result<Option<Json>, RemoteError> {
    let bad = |message: String| RemoteError {
        kind: ErrorKind::BadRequest,
        message,
    };
    match op {
        Op::Write { path, value } => control
            .write(&key.device, &path, &value)
            .map(|()| None)
            .map_err(|message| RemoteError {
                kind: ErrorKind::Offline,
                message,
            }),
        Op::Run { path } => control
            .write(&key.device, &path, &Json::Null)
            .map(|()| None)
            .map_err(bad),
        Op::Call { path, input } => control
            .write(&key.device, &path, input.as_ref().unwrap_or(&Json::Null))
            .map(|()| None)
            .map_err(bad),
        Op::StartStream { .. } | Op::StopStream { .. } | Op::SetProperty { .. } => Ok(None),
        Op::Describe | Op::Template { .. } | Op::Read { .. } => Err(bad(format!(
            "device {key} publishes over MQTT: it cannot be read on demand; its twin holds what it reported"
        ))),
    }
}

fn refs(p: &[String]) -> Vec<&str> {
    p.iter().map(String::as_str).collect()
}
