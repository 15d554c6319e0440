//! The cloud end of the gateway link (protocol: `twinlake_edge::link`), and routing live
//! requests to devices through the gateway they are connected to.
//!
//! Each linked gateway has one session task. It applies batches in arrival order: the
//! batches waiting are taken together and applied in one redb transaction with the
//! gateway's new sequence number, so a batch is applied exactly once however often it is
//! sent. Replies to requests are matched by id; a request whose gateway or device is gone
//! fails at once (offline), one that gets no answer fails at its deadline.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use twinlake_edge::link::{
    DirectWrite, Down, ErrorKind, Item, LinkIo, LinkMsg, LinkTx, Op, PROTOCOL, RegistryEntry, RemoteError, Reply, Up,
};
use twinlake_twin::TwinKey;

use self::apply::apply;
pub use self::apply::may_speak;
use crate::Error;
use crate::links::Session;
pub use crate::links::{ControlError, Gateways};
use crate::state::AppState;
use crate::store::{self, DeviceRecord, LINK_SEQ, LinkSeq, PROPERTIES};

mod apply;

impl Session {
    /// Stops waiting for request `id`; returns its waiter if it was still waiting.
    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        self.pending.lock().ok().and_then(|mut p| p.remove(&id))
    }

    /// Hands a reply to the request waiting for it. Returns whether one was.
    fn complete(&self, reply: Reply) -> bool {
        match self.take(reply.id) {
            Some(w) => w.send(reply).is_ok(),
            None => false,
        }
    }
}

impl Gateways {
    /// The gateway a device is online at.
    pub fn location(&self, key: &TwinKey) -> Option<String> {
        self.located.lock().ok()?.get(key).cloned()
    }

    /// Where devices are, as the twins say after a restart (until gateways report again).
    pub fn locate(&self, key: TwinKey, gateway: Option<String>) {
        if let Ok(mut l) = self.located.lock() {
            match gateway {
                Some(g) => {
                    l.insert(key, g);
                }
                None => {
                    l.remove(&key);
                }
            }
        }
    }

    /// The linked gateways' ids.
    pub fn linked(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Hands a reply to the request waiting for it. Returns whether one was.
    pub fn complete(&self, gateway: &str, reply: Reply) -> bool {
        let session = self.sessions.lock().ok().and_then(|s| s.get(gateway).cloned());
        session.is_some_and(|s| s.complete(reply))
    }

    /// Tells every session the registry changed.
    pub fn registry_changed(&self) {
        self.registry_version.send_modify(|v| *v += 1);
    }

    /// Sends `op` to a device through its gateway and waits up to `timeout` for the answer.
    pub async fn request(&self, key: &TwinKey, op: Op, timeout: Duration) -> Result<Option<Json>, ControlError> {
        let gateway = self
            .location(key)
            .ok_or_else(|| ControlError::Offline(format!("device {key} is not connected")))?;
        let session = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&gateway).cloned())
            .ok_or_else(|| ControlError::Offline(format!("device {key}'s gateway {gateway} is not linked")))?;
        let deadline = tokio::time::Instant::now() + timeout;
        // Held until the answer (or the timeout): the gateway's waiting map stays bounded.
        let _slot = match tokio::time::timeout_at(deadline, session.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ControlError::Offline(format!("gateway {gateway}'s link closed"))),
            Err(_) => return Err(ControlError::Timeout(timeout)),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = session.pending.lock() {
            p.insert(id, tx);
        }
        let msg = Down::Request {
            id,
            user: key.user.clone(),
            device: key.device.clone(),
            op,
        };
        let forget = || {
            session.take(id);
        };
        // Onto the socket from this task if it takes it now; else through the writer task.
        let sent = match session.tx.try_direct(encode(&msg)) {
            Ok(()) => Ok(Ok(())),
            Err(msg) => tokio::time::timeout_at(deadline, session.tx.queue.send(msg)).await,
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                forget();
                return Err(ControlError::Offline(format!("gateway {gateway}'s link closed")));
            }
            Err(_) => {
                forget();
                return Err(ControlError::Timeout(timeout));
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) if r.ok => Ok(r.value),
            Ok(Ok(r)) => Err(ControlError::Remote(r.error.unwrap_or(RemoteError {
                kind: ErrorKind::DeviceError,
                message: "the request failed".into(),
            }))),
            Ok(Err(_)) => Err(ControlError::Offline(format!("gateway {gateway}'s link closed"))),
            Err(_) => {
                forget();
                Err(ControlError::Timeout(timeout))
            }
        }
    }
}

fn encode(msg: &Down) -> LinkMsg {
    LinkMsg::Text(serde_json::to_string(msg).unwrap_or_default())
}

/// The devices a gateway may accept, with their properties.
pub fn registry_for(state: &AppState, gateway: &str) -> Result<Vec<RegistryEntry>, Error> {
    let devices: Vec<(String, DeviceRecord)> = state.db.scan(store::DEVICES, "")?;
    let mut out = Vec::new();
    for (_, d) in devices {
        let mine = match &d.gateway {
            Some(g) => g == gateway,
            None => gateway == state.local_gateway,
        };
        if !mine || !d.enabled {
            continue;
        }
        let props: Vec<(String, Json)> = state.db.scan(PROPERTIES, &format!("{}/{}/", d.user, d.device))?;
        let properties = props
            .into_iter()
            .filter_map(|(k, v)| Some((k.rsplit_once('/')?.1.to_owned(), v)))
            .collect();
        out.push(RegistryEntry {
            user: d.user,
            device: d.device,
            credential_hash: Some(d.credential_hash),
            properties,
        });
    }
    Ok(out)
}

/// Serves one gateway's link until it closes. `gateway` is the id its token proved.
pub async fn serve(state: Arc<AppState>, gateway: String, mut io: LinkIo, direct: Option<Arc<dyn DirectWrite>>) {
    let hello = match tokio::time::timeout(Duration::from_secs(10), io.rx.recv()).await {
        Ok(Some(LinkMsg::Text(text))) => serde_json::from_str::<Up>(&text),
        Ok(Some(LinkMsg::Binary(_))) => {
            warn!(%gateway, "a binary frame before the hello; closing");
            return;
        }
        _ => {
            warn!(%gateway, "no hello on the link");
            return;
        }
    };
    let session_id = match hello {
        Ok(Up::Hello {
            gateway: g,
            session,
            protocol,
        }) if g == gateway && protocol == PROTOCOL => session,
        Ok(Up::Hello {
            gateway: g, protocol, ..
        }) => {
            let reason = if protocol == PROTOCOL {
                format!("the hello names gateway {g:?}, the token is gateway {gateway:?}")
            } else {
                format!("link protocol {protocol}; this cloud speaks {PROTOCOL}: upgrade the agent or the cloud")
            };
            warn!(%gateway, claimed = %g, protocol, %reason, "link refused");
            let _ = io
                .tx
                .send(encode(&Down::Refused {
                    reason,
                    protocol: PROTOCOL,
                }))
                .await;
            return;
        }
        other => {
            warn!(%gateway, ?other, "expected a hello; closing");
            return;
        }
    };
    let stored: LinkSeq = match state.db.get(LINK_SEQ, &gateway) {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            warn!(%gateway, error = %e, "cannot read the link state; closing");
            return;
        }
    };
    let mut acked = if stored.session == session_id { stored.acked } else { 0 };
    let mut features = vec![
        twinlake_edge::link::FEATURE_STATUS.to_owned(),
        twinlake_edge::link::FEATURE_PSON_ROWS.to_owned(),
    ];
    if state.cfg.link.binary_batches {
        features.push(twinlake_edge::link::FEATURE_BINARY_BATCHES.to_owned());
    }
    if io.tx.send(encode(&Down::Welcome { acked, features })).await.is_err() {
        return;
    }
    let session = Arc::new(Session {
        tx: LinkTx {
            queue: io.tx.clone(),
            direct,
        },
        pending: Mutex::default(),
        epoch: state.gateways.next_epoch.fetch_add(1, Ordering::Relaxed),
        slots: Arc::new(tokio::sync::Semaphore::new(state.cfg.link.max_inflight.max(1))),
    });
    if let Ok(mut s) = state.gateways.sessions.lock() {
        s.insert(gateway.clone(), session.clone());
    }
    state.gateways.note_link(&gateway, true);
    state.metrics.gateways_linked.inc();
    info!(%gateway, session = %session_id, acked, "gateway linked");

    let mut registry = state.gateways.registry_version.subscribe();
    registry.mark_changed();
    let mut stop = state.stop.subscribe();
    // The in-process pipeline flushes after the cloud stops; its session ends with it.
    let remote = gateway != state.local_gateway;
    loop {
        tokio::select! {
            _ = crate::state::stopped(&mut stop), if remote => break,
            msg = io.rx.recv() => {
                let Some(msg) = msg else { break };
                let mut batches = Vec::new();
                handle(&state, &gateway, &session, &msg, &mut batches);
                // Whatever else has arrived joins the same transaction.
                while batches.len() < 64 {
                    let Ok(msg) = io.rx.try_recv() else { break };
                    handle(&state, &gateway, &session, &msg, &mut batches);
                }
                if batches.is_empty() {
                    continue;
                }
                let st = state.clone();
                let (gw, sid) = (gateway.clone(), session_id.clone());
                let applied = tokio::task::spawn_blocking(move || apply(&st, &gw, &sid, acked, batches)).await;
                match applied {
                    Ok(Ok(through)) => {
                        acked = through;
                        if io.tx.send(encode(&Down::Ack { through })).await.is_err() {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        // Not acknowledged: the gateway sends it again after a reconnect.
                        warn!(%gateway, error = %e, "cannot apply a batch; dropping the link");
                        break;
                    }
                    Err(e) => {
                        warn!(%gateway, error = %e, "the apply task failed; dropping the link");
                        break;
                    }
                }
            }
            changed = registry.changed() => {
                if changed.is_err() {
                    break;
                }
                match registry_for(&state, &gateway) {
                    Ok(devices) => {
                        if io.tx.send(encode(&Down::Registry {
                            devices,
                            credential_iterations: Some(state.cfg.registry.credential_iterations),
                        })).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => warn!(%gateway, error = %e, "cannot read the registry"),
                }
                // The rules placed on this gateway, with the registry (both change rarely).
                let rules: Vec<_> = state.rules.current().all().filter(|r| r.gateway.as_deref() == Some(gateway.as_str())).map(|r| (**r).clone()).collect();
                let retention = Some(state.cfg.sql.retention.clone());
                if io.tx.send(encode(&Down::Rules { rules, retention })).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Ok(mut s) = state.gateways.sessions.lock()
        && s.get(&gateway).is_some_and(|cur| cur.epoch == session.epoch)
    {
        s.remove(&gateway);
        drop(s);
        state.gateways.note_link(&gateway, false);
    }
    state.metrics.gateways_linked.dec();
    info!(%gateway, "gateway link closed");
}

/// A message from the gateway: replies are handed over at once, batches collected.
fn handle(state: &AppState, gateway: &str, session: &Session, msg: &LinkMsg, batches: &mut Vec<(u64, Vec<Item>)>) {
    match msg.to_up() {
        Ok(Up::Batch { seq, items }) => {
            let format = match msg {
                LinkMsg::Text(_) => "text",
                LinkMsg::Binary(_) => "binary",
            };
            let format = crate::metrics::label("format", format);
            state.metrics.link_batches.get_or_create(&format).inc();
            batches.push((seq, items));
        }
        Ok(Up::Status(s)) => state.gateways.report(gateway, s),
        Ok(Up::Reply(r)) => {
            session.complete(r);
        }
        Ok(Up::Hello { .. }) => debug!("a second hello; ignored"),
        Err(e) => {
            state.metrics.link_bad_messages.inc();
            warn!(error = %e, "ignored a message that is not the link protocol");
        }
    }
}
