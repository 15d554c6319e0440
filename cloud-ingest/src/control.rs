//! Making devices follow their twins, and resource streams for subscribers.
//!
//! **Desired state.** The applier reads the change feed. When a twin's desired state changes,
//! or its device comes online (or describes itself), it writes every desired input that
//! reported does not match to the device, through its gateway. The device's input stream
//! then reports the new value and the delta clears. Nothing is queued per device: the
//! twin is the queue, so a device that was offline gets what is pending when it returns.
//!
//! **Resource streams.** Subscribers to a device resource share one device stream at the
//! fastest interval any of them asked for; the last one to leave stops it (the edge goes
//! back to its own ingest stream for that resource).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};
use twinlake_edge::link::Op;
use twinlake_twin::{EventKind, TwinKey};

use crate::hub::Asked;
pub use crate::hub::{ReadReports, StreamHub};
use crate::state::AppState;

/// Runs the desired-state applier until the cloud stops.
pub async fn apply_desired(state: Arc<AppState>) {
    let mut feed = state.twins.subscribe();
    let mut stop = state.stop.subscribe();
    let busy: Arc<Mutex<HashSet<TwinKey>>> = Arc::default();
    let again: Arc<Mutex<HashSet<TwinKey>>> = Arc::default();
    loop {
        let ev = tokio::select! {
            ev = feed.recv() => ev,
            _ = crate::state::stopped(&mut stop) => return,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(
                    missed = n,
                    "the desired-state applier fell behind; checking every online twin"
                );
                let online: Vec<TwinKey> = state
                    .twins
                    .list(None)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.connection.online && !t.delta().is_empty())
                    .map(|t| t.key())
                    .collect();
                for key in online {
                    spawn_sync(&state, key, &busy, &again);
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let wanted = match ev.kind {
            EventKind::Desired => true,
            EventKind::Connection | EventKind::Described => ev.online == Some(true),
            _ => false,
        };
        if wanted {
            spawn_sync(&state, ev.key, &busy, &again);
        }
    }
}

/// One sync per device at a time; a change during it runs it again after.
fn spawn_sync(
    state: &Arc<AppState>,
    key: TwinKey,
    busy: &Arc<Mutex<HashSet<TwinKey>>>,
    again: &Arc<Mutex<HashSet<TwinKey>>>,
) {
    let first = busy.lock().map(|mut b| b.insert(key.clone())).unwrap_or(false);
    if !first {
        if let Ok(mut a) = again.lock() {
            a.insert(key);
        }
        return;
    }
    let (state, busy, again) = (state.clone(), busy.clone(), again.clone());
    tokio::spawn(async move {
        let mut retries = 0u32;
        loop {
            let transient = sync_device(&state, &key).await;
            let rerun = again.lock().map(|mut a| a.remove(&key)).unwrap_or(false);
            if rerun {
                continue;
            }
            // Offline or silent while its twin says online (a link hiccup, a device busy
            // reconnecting): try again a few times, 1, 2, 4, 8 s apart. A device that
            // refuses the value is not asked again until something changes.
            if !transient || retries >= RETRIES {
                break;
            }
            // A change meanwhile (in `again`) ends the wait early.
            let until = tokio::time::Instant::now() + Duration::from_secs(1 << retries);
            while tokio::time::Instant::now() < until && !again.lock().map(|a| a.contains(&key)).unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            retries += 1;
        }
        if let Ok(mut b) = busy.lock() {
            b.remove(&key);
        }
    });
}

/// How often a write that failed for want of the device is tried again.
const RETRIES: u32 = 4;

/// Writes each desired input that reported does not match. Returns whether a write failed
/// for a reason that may pass (offline, no answer).
async fn sync_device(state: &AppState, key: &TwinKey) -> bool {
    let mut transient = false;
    let Ok(Some(twin)) = state.twins.get(key) else {
        return transient;
    };
    if !twin.connection.online {
        return transient;
    }
    for path in twin.delta().keys() {
        let kind = twin.resource_kind(path);
        if twin.resources.is_some() && !matches!(kind, Some(2 | 4)) {
            debug!(device = %key, %path, "desired field is not an input of the device; left as is");
            continue;
        }
        // The whole desired value: a partial delta of an object input is not a value.
        let Some(value) = twin.desired.get(path).cloned() else {
            continue;
        };
        let op = Op::Write {
            path: path.clone(),
            value: value.clone(),
        };
        match state.gateways.request(key, op, state.cfg.http.request_timeout).await {
            Ok(_) => {
                state.metrics.desired_writes.inc();
                info!(device = %key, %path, %value, "desired value written to the device");
                // Reported follows from the device's input stream. For a device that does
                // not stream its inputs, read the value back if it has not arrived soon.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let arrived = state
                    .twins
                    .get(key)
                    .ok()
                    .flatten()
                    .is_some_and(|t| t.reported.get(path) == Some(&value));
                if !arrived
                    && kind != Some(4)
                    && let Ok(Some(v)) = state
                        .gateways
                        .request(key, Op::Template { path: path.clone() }, state.cfg.http.request_timeout)
                        .await
                {
                    state.read_reports.push(key, path, v, false);
                }
            }
            Err(e) => {
                state.metrics.desired_failures.inc();
                transient |= !matches!(e, crate::gateway::ControlError::Remote(_));
                warn!(device = %key, %path, error = %e, "cannot write the desired value; it stays pending");
            }
        }
    }
    transient
}

/// A subscription; dropping it leaves.
#[derive(Debug)]
pub struct StreamGuard {
    state: Arc<AppState>,
    key: TwinKey,
    path: String,
    id: u64,
}

fn fastest(subs: &[(u64, Option<Duration>)]) -> Option<Duration> {
    subs.iter().filter_map(|(_, iv)| *iv).min()
}

impl StreamHub {
    /// Joins the stream on `key`'s `path` at `interval` (`None`: on change); starts or speeds
    /// up the device stream when needed. The device's answer is returned.
    pub async fn join(
        state: &Arc<AppState>,
        key: &TwinKey,
        path: &str,
        interval: Option<Duration>,
    ) -> Result<StreamGuard, crate::gateway::ControlError> {
        let hub = &state.hub;
        let id = hub.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let Ok(mut subs) = hub.subs.lock() else {
                return Err(crate::gateway::ControlError::Offline("stream hub unavailable".into()));
            };
            let stream = subs.entry((key.clone(), path.to_owned())).or_default();
            stream.subscribers.push((id, interval));
        }
        let guard = StreamGuard {
            state: state.clone(),
            key: key.clone(),
            path: path.to_owned(),
            id,
        };
        sync_stream(state, key, path).await?;
        Ok(guard)
    }
}

/// Brings the device stream on `key`'s `path` to what its subscribers need now. Requests for
/// one stream are ordered by its lock and each is worked out when it is sent, so the stop
/// for a subscriber that left cannot overtake the start for one that joined.
async fn sync_stream(state: &AppState, key: &TwinKey, path: &str) -> Result<(), crate::gateway::ControlError> {
    let hub = &state.hub;
    let k = (key.clone(), path.to_owned());
    let Some(control) = hub.subs.lock().ok().and_then(|s| s.get(&k).map(|s| s.control.clone())) else {
        return Ok(());
    };
    let mut asked = control.lock().await;
    let want: Asked = hub.subs.lock().ok().and_then(|s| {
        let stream = s.get(&k)?;
        (!stream.subscribers.is_empty()).then(|| fastest(&stream.subscribers))
    });
    let mut result = Ok(());
    if *asked != want {
        let op = match want {
            None => Op::StopStream { path: path.to_owned() },
            Some(iv) => Op::StartStream {
                path: path.to_owned(),
                interval_ms: iv.map(|d| d.as_millis() as u64),
            },
        };
        result = state
            .gateways
            .request(key, op, state.cfg.http.request_timeout)
            .await
            .map(drop);
        if result.is_ok() {
            *asked = want;
        }
    }
    // A stream nobody subscribes to, and no other request waits on, is forgotten.
    if want.is_none()
        && let Ok(mut subs) = hub.subs.lock()
        && subs
            .get(&k)
            .is_some_and(|s| s.subscribers.is_empty() && Arc::strong_count(&s.control) == 2)
    {
        subs.remove(&k);
    }
    result
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let k = (self.key.clone(), self.path.clone());
        if let Ok(mut subs) = self.state.hub.subs.lock()
            && let Some(stream) = subs.get_mut(&k)
        {
            stream.subscribers.retain(|(id, _)| *id != self.id);
        }
        let (state, key, path) = (self.state.clone(), self.key.clone(), self.path.clone());
        tokio::spawn(async move {
            if let Err(e) = sync_stream(&state, &key, &path).await {
                debug!(device = %key, error = %e, "cannot change the device stream");
            }
        });
    }
}

/// What a stream subscriber receives for one value.
pub fn stream_message(key: &TwinKey, path: &str, value: &Json, at: u64) -> String {
    serde_json::json!({
        "user": key.user,
        "device": key.device,
        "resource": path,
        "ts": at,
        "value": value,
    })
    .to_string()
}

/// Records queued read values until the cloud stops.
pub async fn record_reads(state: Arc<AppState>) {
    let Some(mut rx) = state.read_reports.rx.lock().ok().and_then(|mut r| r.take()) else {
        return;
    };
    let mut stop = state.stop.subscribe();
    loop {
        let first = tokio::select! {
            v = rx.recv() => match v {
                Some(v) => v,
                None => return,
            },
            _ = crate::state::stopped(&mut stop) => return,
        };
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(v) => batch.push(v),
                Err(_) => break,
            }
        }
        let twins = state.twins.clone();
        let r = tokio::task::spawn_blocking(move || {
            twins.write(|t| {
                for v in batch {
                    let wanted = !v.only_outputs || t.get(&v.key)?.and_then(|tw| tw.resource_kind(&v.path)) == Some(3);
                    if wanted {
                        t.report(&v.key, &v.path, v.value, v.at)?;
                    }
                }
                Ok::<_, twinlake_twin::TwinError>(())
            })
        })
        .await;
        if let Ok(Err(e)) = r {
            debug!(error = %e, "cannot record values read from devices");
        }
    }
}
