//! Live streams: twin changes and device resource values over Server-Sent Events and
//! WebSocket, and the WebSocket pump of the gateway link.
//!
//! - `GET /v1/events` (SSE, or WebSocket when upgraded): every twin change, optionally
//!   `?user=` / `?device=`.
//! - `GET /v1/users/{u}/devices/{d}/twin/events` (SSE or WebSocket): one device's twin changes.
//! - `GET /v1/users/{u}/devices/{d}/streams/{res…}?interval=1s` (SSE): a resource's values.
//!   The device is asked to stream it at that interval (or on change without one) while
//!   anyone listens.
//! - `GET /v3/users/{u}/devices/{d}/resources` upgraded to a WebSocket: the Thinger console
//!   protocol. The client sends `{"resource":"temp","interval":5,"enabled":true}` (seconds)
//!   and `enabled:false` to stop; every message it gets carries `resource`.
//!
//! A subscriber that falls behind the change feed's capacity skips what it missed (an SSE
//! comment or WebSocket message says how many) rather than slow anyone down.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;
use twinlake_edge::link::{Direct, DirectWrite, LinkIo, LinkMsg, Op, SharedSink, write_queued};
use twinlake_twin::{EventKind, TwinEvent, TwinKey};

use crate::api::control_error;
use crate::auth::{Principal, Scope, url_query};
use crate::control::{StreamGuard, StreamHub, stream_message};
use crate::error::ApiError;
use crate::input::{self, CommandError, StreamCommand};
use crate::state::AppState;

type St = State<Arc<AppState>>;

/// Which twin events a subscriber wants.
#[derive(Debug, Clone, Default)]
struct Filter {
    user: Option<String>,
    device: Option<String>,
}

impl Filter {
    fn wants(&self, e: &TwinEvent) -> bool {
        self.user.as_ref().is_none_or(|u| *u == e.key.user) && self.device.as_ref().is_none_or(|d| *d == e.key.device)
    }
}

/// Counts a subscriber while it lives.
struct Subscriber(Arc<AppState>);

impl Subscriber {
    fn new(s: &Arc<AppState>) -> Self {
        s.metrics.subscribers.inc();
        Self(s.clone())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.metrics.subscribers.dec();
    }
}

fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// The WebSocket upgrade of a request, or 400 saying why it is not one.
pub(crate) async fn ws_upgrade(
    parts: &mut axum::http::request::Parts,
    state: &Arc<AppState>,
) -> Result<WebSocketUpgrade, ApiError> {
    WebSocketUpgrade::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(format!("this route wants a WebSocket: {e}")))
}

/// At most one value per `interval` (none: every value), with a little slack so samples
/// that arrive at exactly the interval are not skipped.
#[derive(Debug, Default)]
struct Throttle {
    interval: Option<Duration>,
    last: Option<tokio::time::Instant>,
}

impl Throttle {
    fn new(interval: Option<Duration>) -> Self {
        Self { interval, last: None }
    }

    /// Whether a value arriving now goes out (and if so, counts it).
    fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if let (Some(iv), Some(last)) = (self.interval, self.last)
            && last.checked_add(iv.mul_f64(0.8)).is_none_or(|next| now < next)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Twin changes as an SSE stream.
fn sse(state: &Arc<AppState>, filter: Filter) -> Response {
    let rx = state.twins.subscribe();
    let guard = Subscriber::new(state);
    let stream = futures_util::stream::unfold((rx, filter, guard), |(mut rx, filter, guard)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if filter.wants(&e) => {
                    let ev = Event::default().event(e.kind.as_str()).data(&*e.json);
                    return Some((Ok::<Event, Infallible>(ev), (rx, filter, guard)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let ev = Event::default().comment(format!("skipped {n} events"));
                    return Some((Ok(ev), (rx, filter, guard)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Twin changes over a WebSocket.
async fn ws_events(state: Arc<AppState>, filter: Filter, socket: WebSocket) {
    let mut rx = state.twins.subscribe();
    let mut stop = state.stop.subscribe();
    let _guard = Subscriber::new(&state);
    let (mut tx, mut incoming) = socket.split();
    loop {
        tokio::select! {
            _ = crate::state::stopped(&mut stop) => break,
            e = rx.recv() => {
                let text = match e {
                    Ok(e) if filter.wants(&e) => e.json.to_string(),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => serde_json::json!({ "skipped": n }).to_string(),
                    Err(RecvError::Closed) => break,
                };
                if tx.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn events_or_ws(state: Arc<AppState>, filter: Filter, req: Request) -> Result<Response, ApiError> {
    if is_upgrade(&req) {
        let (mut parts, _) = req.into_parts();
        let ws = ws_upgrade(&mut parts, &state)
            .await?
            .max_message_size(input::MAX_COMMAND_BYTES);
        return Ok(ws.on_upgrade(move |socket| ws_events(state, filter, socket)));
    }
    Ok(sse(&state, filter))
}

/// `GET /v1/events`
pub async fn all_events(p: Principal, State(s): St, q: RawQuery, req: Request) -> Result<Response, ApiError> {
    p.require(Scope::Read)?;
    let q = q.0.unwrap_or_default();
    let filter = Filter {
        user: p.listing_user(url_query(&q, "user"))?,
        device: url_query(&q, "device"),
    };
    events_or_ws(s, filter, req).await
}

/// `GET /v1/users/{u}/devices/{d}/twin/events`
pub async fn twin_events(
    p: Principal,
    State(s): St,
    Path((u, d)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    p.require(Scope::Read)?;
    if s.twins.get(&TwinKey::new(&u, &d))?.is_none() {
        return Err(ApiError::not_found(format!("no twin for device {u}/{d}")));
    }
    let filter = Filter {
        user: Some(u),
        device: Some(d),
    };
    events_or_ws(s, filter, req).await
}

/// The interval a subscriber's stream asks the device for: what it asked, else the edge's
/// default sampling (a start-stream without one would replace the device's sampling and
/// silence the resource), and for a token without `control` never faster than
/// `http.stream_min_interval`.
fn stream_interval(s: &AppState, may_control: bool, asked: Option<Duration>) -> Duration {
    let asked = asked.unwrap_or(s.cfg.edge.streams.default_interval);
    if may_control {
        asked
    } else {
        asked.max(s.cfg.http.stream_min_interval)
    }
}

fn parse_interval(q: &str) -> Result<Option<Duration>, ApiError> {
    url_query(q, "interval")
        .map(|s| input::interval_param(&s).map_err(ApiError::bad_request))
        .transpose()
}

/// The values of one resource from the change feed, at most one per `interval`.
struct ResourceFeed {
    rx: broadcast::Receiver<TwinEvent>,
    key: TwinKey,
    path: String,
    throttle: Throttle,
}

impl ResourceFeed {
    async fn next(&mut self) -> Option<Result<String, u64>> {
        loop {
            match self.rx.recv().await {
                Ok(e) if e.kind == EventKind::Reported && e.key == self.key => {
                    let Some((path, value)) = &e.reported else { continue };
                    if *path != self.path {
                        continue;
                    }
                    if !self.throttle.due() {
                        continue;
                    }
                    return Some(Ok(stream_message(&self.key, path, value, e.at)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => return Some(Err(n)),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /v1/users/{u}/devices/{d}/streams/{res…}?interval=`
pub async fn resource_sse(
    p: Principal,
    State(s): St,
    Path((u, d, path)): Path<(String, String, String)>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    p.require(Scope::Read)?;
    let asked = parse_interval(&q.0.unwrap_or_default())?;
    let interval = Some(stream_interval(&s, p.require(Scope::Control).is_ok(), asked));
    let key = TwinKey::new(&u, &d);
    let feed = ResourceFeed {
        rx: s.twins.subscribe(),
        key: key.clone(),
        path: path.clone(),
        throttle: Throttle::new(interval),
    };
    let guard = StreamHub::join(&s, &key, &path, interval)
        .await
        .map_err(|e| control_error(&s, &key, &path, e))?;
    let sub = Subscriber::new(&s);
    let stream = futures_util::stream::unfold((feed, guard, sub), |(mut feed, guard, sub)| async move {
        let ev = match feed.next().await? {
            Ok(text) => Event::default().event("value").data(text),
            Err(n) => Event::default().comment(format!("skipped {n} events")),
        };
        Some((Ok::<Event, Infallible>(ev), (feed, guard, sub)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// `GET /v3/users/{u}/devices/{d}/resources`: describe, or the Thinger stream WebSocket.
pub async fn v3_resources(
    p: Principal,
    State(s): St,
    Path((u, d)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    p.require(Scope::Read)?;
    let key = TwinKey::new(&u, &d);
    if is_upgrade(&req) {
        let (mut parts, _) = req.into_parts();
        let ws = ws_upgrade(&mut parts, &s)
            .await?
            .max_message_size(input::MAX_COMMAND_BYTES);
        let may_control = p.require(Scope::Control).is_ok();
        return Ok(ws.on_upgrade(move |socket| thinger_ws(s, key, may_control, socket)));
    }
    match s.gateways.request(&key, Op::Describe, s.cfg.http.request_timeout).await {
        Ok(v) => Ok(axum::Json(v.unwrap_or_default()).into_response()),
        Err(e) => Err(control_error(&s, &key, "", e)),
    }
}

/// The Thinger console stream protocol over one WebSocket.
async fn thinger_ws(state: Arc<AppState>, key: TwinKey, may_control: bool, socket: WebSocket) {
    let _sub = Subscriber::new(&state);
    let (mut tx, mut incoming) = socket.split();
    let mut rx = state.twins.subscribe();
    let mut stop = state.stop.subscribe();
    // resource → (its subscription, what it lets through)
    let mut subs: HashMap<String, (StreamGuard, Throttle)> = HashMap::new();
    loop {
        tokio::select! {
            _ = crate::state::stopped(&mut stop) => break,
            m = incoming.next() => {
                let text = match m {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let reply = match input::stream_command(&text) {
                    Err(CommandError { resource: Some(r), message }) => serde_json::json!({ "resource": r, "error": message }),
                    Err(CommandError { resource: None, message }) => serde_json::json!({ "error": message }),
                    Ok(StreamCommand::Unsubscribe { resource }) => {
                        subs.remove(&resource);
                        serde_json::json!({ "resource": resource, "enabled": false })
                    }
                    Ok(StreamCommand::Subscribe { resource, interval }) => {
                        subs.remove(&resource);
                        let interval = Some(stream_interval(&state, may_control, interval));
                        match StreamHub::join(&state, &key, &resource, interval).await {
                            Ok(g) => {
                                subs.insert(resource.clone(), (g, Throttle::new(interval)));
                                serde_json::json!({ "resource": resource, "enabled": true })
                            }
                            Err(e) => serde_json::json!({ "resource": resource, "error": e.to_string() }),
                        }
                    }
                };
                if tx.send(Message::Text(reply.to_string().into())).await.is_err() {
                    break;
                }
            }
            e = rx.recv() => {
                let e = match e {
                    Ok(e) => e,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                if e.kind != EventKind::Reported || e.key != key {
                    continue;
                }
                let Some((path, value)) = &e.reported else { continue };
                let Some((_, throttle)) = subs.get_mut(path) else { continue };
                if !throttle.due() {
                    continue;
                }
                let msg = stream_message(&key, path, value, e.at);
                if tx.send(Message::Text(msg.into())).await.is_err() {
                    break;
                }
            }
        }
    }
    debug!(device = %key, "stream socket closed");
}

/// Moves the gateway link between its WebSocket and the session task.
pub async fn pump_link(state: Arc<AppState>, gateway: String, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let mut stop = state.stop.subscribe();
    let (edge, cloud) = LinkIo::pair(256);
    let LinkIo {
        tx: to_cloud,
        rx: from_cloud,
    } = edge;
    let sink = SharedSink::new(sink);
    let direct: Arc<dyn DirectWrite> = Arc::new(Direct {
        sink: sink.clone(),
        convert: to_ws,
    });
    let session = tokio::spawn(crate::gateway::serve(
        state.clone(),
        gateway.clone(),
        cloud,
        Some(direct),
    ));
    let writer = tokio::spawn(write_queued(sink, from_cloud, to_ws, None));
    loop {
        let msg = tokio::select! {
            m = stream.next() => match m {
                Some(Ok(m)) => m,
                _ => break,
            },
            _ = crate::state::stopped(&mut stop) => break,
        };
        // Replies go to their waiting request here, not behind batches being applied.
        if let Message::Text(t) = &msg
            && t.as_str().starts_with(r#"{"type":"reply""#)
            && let Ok(twinlake_edge::link::Up::Reply(r)) = serde_json::from_str(t.as_str())
        {
            state.gateways.complete(&gateway, r);
            continue;
        }
        let msg = match msg {
            Message::Text(t) => LinkMsg::Text(t.to_string()),
            Message::Binary(b) => LinkMsg::Binary(b),
            Message::Close(_) => break,
            _ => continue,
        };
        if to_cloud.send(msg).await.is_err() {
            break;
        }
    }
    drop(to_cloud);
    let _ = session.await;
    writer.abort();
}

fn to_ws(msg: LinkMsg) -> Message {
    match msg {
        LinkMsg::Text(text) => Message::Text(text.into()),
        LinkMsg::Binary(bytes) => Message::Binary(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `?interval=` is read by `input::interval_param`, bounded (#13, finding 12); the
    /// throttle takes the longest interval without overflowing an `Instant`.
    #[test]
    fn intervals_from_clients_are_bounded() {
        assert!(parse_interval("interval=10ms").is_err());
        assert_eq!(parse_interval("interval=5").unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(parse_interval("").unwrap(), None);
        let mut t = Throttle::new(Some(Duration::MAX));
        assert!(t.due());
        assert!(!t.due());
    }
}
