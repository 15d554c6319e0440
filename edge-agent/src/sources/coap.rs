//! The CoAP source (RFC 7252 over UDP): constrained devices POST telemetry and attributes
//! and observe their commands (RFC 7641), on ThingsBoard's CoAP device API paths with the
//! token `user:device:credential` as a path segment:
//!
//! | path                           | method                  |                            |
//! |--------------------------------|-------------------------|----------------------------|
//! | `api/v1/{token}/telemetry[/{table}]` | POST              | rows (JSON, CBOR, PSON, text) |
//! | `api/v1/{token}/attributes`    | POST                    | a row and twin properties  |
//! | `api/v1/{token}/rpc`           | GET, with Observe: 0    | commands as notifications  |
//! | `api/v1/{token}/rpc/{id}`      | POST                    | the reply, reported        |
//!
//! **At least once.** A Confirmable request is answered (a piggybacked 2.04) only once its
//! rows are fsynced in the WAL. Its retransmissions (the same Message ID from the same peer
//! within `exchange_lifetime`) are answered from a bounded cache with the first answer,
//! storing nothing again; one that arrives while the first is still being stored is dropped
//! (the answer is on its way). A device that never gets an answer sends again, so a crash
//! between the fsync and the answer stores its rows twice, never loses them.
//!
//! **Commands** wait in the device's queue ([`Gate`]): to a device that observes `rpc` they
//! go out as Confirmable notifications (retransmitted, and the observation dropped if never
//! acknowledged or reset); a device that does not observe gets the oldest in the answer to
//! its next telemetry POST, or on a GET of `rpc`.
//!
//! **Bounds.** Message ids remembered (`max_exchanges`), uploads put together block-wise
//! (`max_transfers`, each within `max_body_bytes`), requests in flight (`max_inflight`), one
//! observation per online device, devices online (`max_devices`). An answer to a request
//! that did not authenticate carries no payload, so it is never larger than the request
//! (no amplification), and nothing is observed before authentication. Tokens are never
//! logged. There is no DTLS: see ARCHITECTURE.md for fronting the port.

pub mod config;
pub mod exchange;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use self::config::CoapSection;
use self::exchange::{Assembled, BadPayload, Block, Dedup, Route, Seen, Transfers, format};
use super::gate::{Denied, Gate, GateLimits, Parts, Phase};
use crate::Error;
use crate::event::{DeviceKey, SourceRow};

/// RFC 7252 ACK_TIMEOUT; a notification is sent at most 1 + MAX_RETRANSMIT times.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

/// A bound, not yet serving CoAP source.
#[derive(Debug)]
pub struct CoapSource {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cfg: CoapSection,
    gate: Gate,
    socket: UdpSocket,
    dedup: Mutex<Dedup>,
    transfers: Mutex<Transfers>,
    inflight: Arc<Semaphore>,
    next_mid: AtomicU16,
    observers: Mutex<HashMap<DeviceKey, Observer>>,
    /// Confirmable notifications waiting for their ACK (true) or RST (false).
    waiting: Mutex<HashMap<(SocketAddr, u16), oneshot::Sender<bool>>>,
}

#[derive(Debug)]
struct Observer {
    peer: SocketAddr,
    token: Vec<u8>,
    task: AbortHandle,
}

/// An answer: its code, options, payload, and an observation to start once it is sent.
struct Answer {
    code: ResponseType,
    options: Vec<(CoapOption, Vec<u8>)>,
    payload: Vec<u8>,
    observe: Option<DeviceKey>,
}

fn answer(code: ResponseType) -> Answer {
    Answer {
        code,
        options: Vec::new(),
        payload: Vec::new(),
        observe: None,
    }
}

impl CoapSource {
    /// Binds `cfg.udp` (which must be set).
    pub async fn bind(cfg: &CoapSection, parts: Parts) -> Result<Self, Error> {
        let addr = cfg.udp.ok_or_else(|| Error::Config("coap.udp is off".into()))?;
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let limits = GateLimits {
            offline_after: cfg.offline_after,
            max_devices: cfg.max_devices,
            max_commands_per_device: cfg.max_commands_per_device,
        };
        let mut seed = [0u8; 2];
        crate::hex::random(&mut seed);
        let shared = Shared {
            gate: Gate::new("coap", parts, false, limits),
            socket,
            dedup: Mutex::new(Dedup::new(cfg.exchange_lifetime, cfg.max_exchanges)),
            transfers: Mutex::new(Transfers::new(
                cfg.max_transfers,
                cfg.max_body_bytes,
                cfg.exchange_lifetime,
            )),
            inflight: Arc::new(Semaphore::new(cfg.max_inflight)),
            next_mid: AtomicU16::new(u16::from_be_bytes(seed)),
            observers: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            cfg: cfg.clone(),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.socket.local_addr().ok()
    }

    /// Serves until `phase` is [`Phase::Done`]; from [`Phase::Draining`] new requests get
    /// 5.03 while those taken wait for their rows to be durable.
    pub async fn run(self, mut phase: watch::Receiver<Phase>) {
        let s = self.shared;
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = s.socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => datagram(&s, buf.get(..n).unwrap_or_default(), peer),
                    Err(e) => {
                        debug!(error = %e, "CoAP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tick.tick() => {
                    for key in s.gate.expire().await {
                        forget_observer(&s, &key);
                    }
                }
                r = phase.changed() => {
                    let now = *phase.borrow();
                    if r.is_err() || now == Phase::Done {
                        break;
                    }
                    if now == Phase::Draining {
                        s.gate.drain();
                    }
                }
            }
        }
        // Wait (a while) for requests being stored to be answered.
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.inflight.available_permits() < s.cfg.max_inflight && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Ok(mut o) = s.observers.lock() {
            for (_, obs) in o.drain() {
                obs.task.abort();
            }
        }
    }
}

/// One datagram from `peer`.
fn datagram(s: &Arc<Shared>, bytes: &[u8], peer: SocketAddr) {
    let Ok(packet) = Packet::from_bytes(bytes) else {
        s.gate.count("malformed");
        return;
    };
    let mid = packet.header.message_id;
    match (packet.header.get_type(), packet.header.code) {
        (MessageType::Acknowledgement | MessageType::Reset, _) => {
            let ack = packet.header.get_type() == MessageType::Acknowledgement;
            if let Some(tx) = s.waiting.lock().ok().and_then(|mut w| w.remove(&(peer, mid))) {
                let _ = tx.send(ack);
            }
        }
        (MessageType::Confirmable, MessageClass::Empty) => {
            // A CoAP ping: RST.
            let mut rst = Packet::new();
            rst.header.set_type(MessageType::Reset);
            rst.header.code = MessageClass::Empty;
            rst.header.message_id = mid;
            send(s, &rst, peer);
        }
        (MessageType::Confirmable | MessageType::NonConfirmable, MessageClass::Request(_)) => {
            let seen = s
                .dedup
                .lock()
                .map_or(Seen::New, |mut d| d.check(peer, mid, Instant::now()));
            match seen {
                Seen::New => {}
                Seen::InProgress => return,
                Seen::Answered(bytes) => {
                    s.gate.count("duplicate");
                    let s = s.clone();
                    tokio::spawn(async move {
                        let _ = s.socket.send_to(&bytes, peer).await;
                    });
                    return;
                }
            }
            match s.inflight.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(request(s.clone(), packet, peer, permit));
                }
                Err(_) => {
                    s.gate.count("busy");
                    reply(s, &packet, peer, answer(ResponseType::ServiceUnavailable));
                }
            }
        }
        _ => s.gate.count("malformed"),
    }
}

/// Handles a request and sends its answer.
async fn request(s: Arc<Shared>, packet: Packet, peer: SocketAddr, _permit: OwnedSemaphorePermit) {
    let mut a = respond(&s, &packet, peer).await;
    let observe = a.observe.take();
    reply(&s, &packet, peer, a);
    // Notifications start after the registration's answer is on its way.
    if let Some(key) = observe {
        let token = packet.get_token().to_vec();
        forget_observer(&s, &key);
        let task = tokio::spawn(notify(s.clone(), key.clone(), peer, token.clone()));
        let obs = Observer {
            peer,
            token,
            task: task.abort_handle(),
        };
        if let Ok(mut o) = s.observers.lock() {
            o.insert(key, obs);
        }
    }
}

/// Sends the answer to `req` (piggybacked on the ACK of a Confirmable request) and keeps
/// it for the request's retransmissions.
fn reply(s: &Arc<Shared>, req: &Packet, peer: SocketAddr, a: Answer) {
    let mut p = Packet::new();
    let mid = req.header.message_id;
    if req.header.get_type() == MessageType::Confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = mid;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = s.next_mid.fetch_add(1, Ordering::Relaxed);
    }
    p.header.code = MessageClass::Response(a.code);
    p.set_token(req.get_token().to_vec());
    for (o, v) in a.options {
        p.add_option(o, v);
    }
    p.payload = a.payload;
    if let Ok(bytes) = p.to_bytes_unlimited() {
        if let Ok(mut d) = s.dedup.lock() {
            d.answered(peer, mid, bytes.clone());
        }
        let s = s.clone();
        tokio::spawn(async move {
            let _ = s.socket.send_to(&bytes, peer).await;
        });
    }
}

fn send(s: &Arc<Shared>, p: &Packet, peer: SocketAddr) {
    if let Ok(bytes) = p.to_bytes_unlimited() {
        let s = s.clone();
        tokio::spawn(async move {
            let _ = s.socket.send_to(&bytes, peer).await;
        });
    }
}

fn content_format(p: &Packet) -> Option<u16> {
    let v = p.get_first_option(CoapOption::ContentFormat)?;
    (v.len() <= 2).then(|| v.iter().fold(0u16, |acc, b| (acc << 8) | u16::from(*b)))
}

fn uint(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    b.get(skip..).unwrap_or_default().to_vec()
}

/// What to answer `p`.
async fn respond(s: &Arc<Shared>, p: &Packet, peer: SocketAddr) -> Answer {
    let segments: Vec<&str> = p
        .get_option(CoapOption::UriPath)
        .map(|l| l.iter().filter_map(|v| std::str::from_utf8(v).ok()).collect())
        .unwrap_or_default();
    let Some(route) = Route::parse(&segments) else {
        s.gate.count("not_found");
        return answer(ResponseType::NotFound);
    };
    let method = match p.header.code {
        MessageClass::Request(m) => m,
        _ => RequestType::UnKnown,
    };
    let key = match s.gate.authenticate(peer, route.token()).await {
        Ok(k) => k,
        Err(d) => {
            return answer(match d {
                Denied::Unauthorized => ResponseType::Unauthorized,
                Denied::RateLimited => ResponseType::TooManyRequests,
                Denied::DeviceCap | Denied::ShuttingDown => ResponseType::ServiceUnavailable,
            });
        }
    };
    match (&route, method) {
        (Route::Rpc { .. }, RequestType::Get) => return rpc(s, p, key),
        (Route::Rpc { .. }, _) => return answer(ResponseType::MethodNotAllowed),
        (_, RequestType::Post | RequestType::Put) => {}
        _ => return answer(ResponseType::MethodNotAllowed),
    }
    let (body, block) = match body(s, p, peer, &segments.join("/")) {
        Ok(Some(b)) => b,
        Ok(None) => {
            // 2.31 Continue: the block is kept.
            let mut a = answer(ResponseType::Continue);
            if let Some(b) = p.get_first_option(CoapOption::Block1) {
                a.options.push((CoapOption::Block1, b.clone()));
            }
            return a;
        }
        Err(a) => return a,
    };
    let mut a = post(s, route, key, content_format(p), &body).await;
    if let Some(b) = block {
        a.options.push((CoapOption::Block1, b.encode()));
    }
    a
}

/// A request's whole body, and the last block's option if it came block-wise.
type Body = (Vec<u8>, Option<Block>);

/// The request's whole body: `Ok(None)` while a block-wise upload goes on.
fn body(s: &Shared, p: &Packet, peer: SocketAddr, path: &str) -> Result<Option<Body>, Answer> {
    let too_large = || {
        s.gate.count("too_large");
        let mut a = answer(ResponseType::RequestEntityTooLarge);
        a.options.push((CoapOption::Size1, uint(s.cfg.max_body_bytes as u32)));
        a
    };
    let Some(opt) = p.get_first_option(CoapOption::Block1) else {
        if p.payload.len() > s.cfg.max_body_bytes {
            return Err(too_large());
        }
        return Ok(Some((p.payload.clone(), None)));
    };
    let Some(block) = Block::parse(opt) else {
        return Err(answer(ResponseType::BadOption));
    };
    let Ok(mut t) = s.transfers.lock() else {
        return Err(answer(ResponseType::InternalServerError));
    };
    match t.add(peer, path, block, &p.payload, Instant::now()) {
        Assembled::Continue(_) => Ok(None),
        Assembled::Done(body) => Ok(Some((body, Some(block)))),
        Assembled::TooLarge => Err(too_large()),
        Assembled::Incomplete => Err(answer(ResponseType::RequestEntityIncomplete)),
        Assembled::Busy => Err(answer(ResponseType::ServiceUnavailable)),
    }
}

/// A POST's rows, stored; the answer says whether they are durable.
async fn post(s: &Shared, route: Route, key: DeviceKey, format: Option<u16>, body: &[u8]) -> Answer {
    let now = SystemTime::now();
    let bad = |why: BadPayload| {
        s.gate.count("bad_request");
        match why {
            BadPayload::Unsupported(_) => answer(ResponseType::UnsupportedContentFormat),
            BadPayload::Malformed(why) => Answer {
                code: ResponseType::BadRequest,
                options: vec![(CoapOption::ContentFormat, uint(u32::from(format::TEXT)))],
                payload: why.into_bytes(),
                observe: None,
            },
        }
    };
    let (rows, props, pending) = match route {
        Route::Telemetry { table, .. } => {
            let table = table.unwrap_or_else(|| s.cfg.resource.clone());
            if twinlake_lake::model::table_name(&[table.as_str()]).is_err() {
                return bad(BadPayload::Malformed(format!("{table:?} is not a table name")));
            }
            let values = match exchange::values(format, body, now) {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            let rows = values
                .into_iter()
                .map(|(at, payload)| SourceRow {
                    device: key.device.clone(),
                    resource: table.clone(),
                    at,
                    payload,
                })
                .collect();
            (rows, Vec::new(), true)
        }
        Route::Attributes { .. } => {
            let j = match exchange::json(format, body) {
                Ok(j) => serde_json::to_vec(&j).unwrap_or_default(),
                Err(e) => return bad(e),
            };
            let attrs = &s.cfg.attributes_resource;
            match super::telemetry::attribute_rows(&key.device, attrs, &j, now) {
                Ok((row, props)) => (vec![row], props, false),
                Err(e) => return bad(BadPayload::Malformed(e)),
            }
        }
        Route::Reply { id, .. } => {
            let j = match exchange::json(format, body) {
                Ok(j) => j,
                Err(e) => return bad(e),
            };
            let payload = match super::telemetry::storable(twinlake_sdk::json::from_json(&j)) {
                Ok(v) => v,
                Err(e) => return bad(BadPayload::Malformed(e)),
            };
            let Some(resource) = s.gate.commands().replied(&key, id) else {
                return answer(ResponseType::NotFound);
            };
            if twinlake_lake::model::table_name(&[resource.as_str()]).is_err() {
                return answer(ResponseType::Changed);
            }
            let row = SourceRow {
                device: key.device.clone(),
                resource,
                at: now,
                payload,
            };
            (vec![row], Vec::new(), false)
        }
        Route::Rpc { .. } => return answer(ResponseType::MethodNotAllowed),
    };
    if s.gate.store(key.clone(), rows, props).await.is_err() {
        return answer(ResponseType::ServiceUnavailable);
    }
    let mut a = answer(ResponseType::Changed);
    // A device that does not observe its commands gets the oldest with its next POST.
    let observed = s.observers.lock().is_ok_and(|o| o.contains_key(&key));
    if pending
        && !observed
        && let Ok(cmd) = s.gate.commands().take(&key)
    {
        a.options
            .push((CoapOption::ContentFormat, uint(u32::from(format::JSON))));
        a.payload = serde_json::to_vec(&cmd).unwrap_or_default();
        s.gate.count("command_sent");
    }
    a
}

/// A GET of `rpc`: with Observe 0, registers the peer for notifications (replacing the
/// device's earlier one); with Observe 1, deregisters. The answer holds the oldest waiting
/// command, if any.
fn rpc(s: &Arc<Shared>, p: &Packet, key: DeviceKey) -> Answer {
    let observe = p.get_observe_value().and_then(Result::ok);
    let mut a = answer(ResponseType::Content);
    a.options
        .push((CoapOption::ContentFormat, uint(u32::from(format::JSON))));
    match observe {
        Some(0) => {
            a.options.push((CoapOption::Observe, uint(1)));
            s.gate.count("observe");
            // Waiting commands go out as notifications, once this answer is sent.
            a.observe = Some(key);
            return a;
        }
        Some(1) => forget_observer(s, &key),
        _ => {}
    }
    if let Ok(cmd) = s.gate.commands().take(&key) {
        a.payload = serde_json::to_vec(&cmd).unwrap_or_default();
        s.gate.count("command_sent");
    }
    a
}

fn forget_observer(s: &Shared, key: &DeviceKey) {
    if let Some(o) = s.observers.lock().ok().and_then(|mut o| o.remove(key)) {
        o.task.abort();
    }
}

/// Sends `key`'s commands to its observer as Confirmable notifications, in order; ends
/// (dropping the observation) when one is reset or never acknowledged.
async fn notify(s: Arc<Shared>, key: DeviceKey, peer: SocketAddr, token: Vec<u8>) {
    let mut seq: u32 = 2;
    loop {
        let cmd = match s.gate.commands().take(&key) {
            Ok(c) => c,
            Err(ready) => {
                ready.notified().await;
                continue;
            }
        };
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Response(ResponseType::Content);
        p.set_token(token.clone());
        p.add_option(CoapOption::Observe, uint(seq & 0xff_ffff));
        p.add_option(CoapOption::ContentFormat, uint(u32::from(format::JSON)));
        p.payload = serde_json::to_vec(&cmd).unwrap_or_default();
        seq = seq.wrapping_add(1);
        if !confirmed(&s, &mut p, peer).await {
            debug!(device = %key, "a CoAP observer did not acknowledge; observation dropped");
            if let Ok(mut o) = s.observers.lock()
                && o.get(&key).is_some_and(|x| x.peer == peer && x.token == token)
            {
                o.remove(&key);
            }
            return;
        }
        s.gate.count("command_sent");
    }
}

/// Sends a Confirmable message until it is acknowledged (true) or reset or never
/// acknowledged (false), with RFC 7252's back-off.
async fn confirmed(s: &Shared, p: &mut Packet, peer: SocketAddr) -> bool {
    let mid = s.next_mid.fetch_add(1, Ordering::Relaxed);
    p.header.message_id = mid;
    let Ok(bytes) = p.to_bytes_unlimited() else {
        return false;
    };
    let (tx, mut rx) = oneshot::channel();
    if let Ok(mut w) = s.waiting.lock() {
        w.insert((peer, mid), tx);
    }
    // Taken out of `waiting` however this ends, an abort of the observer's task included.
    let _entry = Waiting { s, key: (peer, mid) };
    let mut wait = ACK_TIMEOUT;
    for _ in 0..=MAX_RETRANSMIT {
        if let Err(e) = s.socket.send_to(&bytes, peer).await {
            warn!(error = %e, "cannot send a CoAP notification");
        }
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(ack)) => return ack,
            Ok(Err(_)) => return false,
            Err(_) => wait *= 2,
        }
    }
    false
}

/// A notification's entry in [`Shared::waiting`], removed when dropped.
struct Waiting<'a> {
    s: &'a Shared,
    key: (SocketAddr, u16),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.s.waiting.lock() {
            w.remove(&self.key);
        }
    }
}
