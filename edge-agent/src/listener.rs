//! The device listener: Thinger classic protocol over TCP and TLS.
//!
//! One task per connection owns a sans-IO [`Session`] and the socket. The platform reaches a
//! connected device through its [`DeviceHandle`] (bounded command queue; a request waits at
//! most [`ListenerConfig::request_timeout`]). What devices send comes out as
//! [`DeviceEvent`]s on one bounded channel; when it is full, connection tasks wait before
//! reading more, so a slow consumer slows devices down (TCP back-pressure) and nothing is
//! dropped.

mod conn;
use conn::Conn;
mod handle;
mod live;
pub mod session;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twinlake_sdk::frame::{FrameDecoder, FrameLimits, Message, Signal};
use twinlake_sdk::pson::{Value, ValueRef};

pub use handle::{DeviceHandle, Devices};
use session::{Credentials, SessionEvent};
pub use tls::{ServerTls, client_roots, tls_acceptor};

use crate::Error;
use crate::event::{AckTarget, BucketRows};
pub use crate::event::{Acker, Delivery, DeviceEvent, DeviceEventKind, DeviceKey, SourceRow};
use crate::metrics::Metrics;
use crate::queue::{CommandQueue, Reply};
use crate::rate_limit::{AuthSection, RateLimiter};

/// Decides whether a device may connect.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether these credentials are valid. May be slow (a password hash).
    fn authenticate(&self, credentials: &Credentials) -> bool;

    /// A cheap answer when there is one (a credential seen before), without the slow check.
    fn quick_check(&self, _credentials: &Credentials) -> Option<bool> {
        None
    }
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Plain TCP address (the protocol's port is 25200); `None` turns it off.
    pub tcp: Option<SocketAddr>,
    /// TLS address (25202) and the acceptor; `None` turns it off.
    pub tls: Option<(SocketAddr, ServerTls)>,
    /// A device that sends nothing for this long is disconnected. Devices send a keep-alive
    /// every 60 s, so keep it at 120 s or more.
    pub idle_timeout: Duration,
    /// How long a request to a device may take.
    pub request_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long a connection may take to log in (keep-alives before the login do not
    /// extend it).
    pub login_timeout: Duration,
    /// How long one write to a device may take: a device that stops reading is dropped
    /// instead of wedging its connection (and shutdown).
    pub write_timeout: Duration,
    /// Caps on open connections, in all and per address.
    pub conns: Arc<crate::conn_limit::ConnLimiter>,
    /// Per-connection frame limits.
    pub limits: FrameLimits,
    /// Capacity of the device event channel. Under load an event is one read's bucket writes
    /// (sent on past 16 KiB, so up to about 16 KiB and one frame), so this bounds the memory
    /// waiting for the ingest task: 512 events are at most tens of MiB, where 4,096 were
    /// more than a small gateway has for it (BENCHMARKS.md, "Production-shaped ingest").
    pub event_capacity: usize,
    /// Capacity of each device's command queue.
    pub command_capacity: usize,
    /// Failed logins per address, and lockouts; `None` turns rate limiting off.
    pub auth_limiter: Option<Arc<RateLimiter>>,
    /// Where the listener counts logins and connections.
    pub metrics: Arc<Metrics>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], twinlake_sdk::client::DEFAULT_PORT))),
            tls: None,
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            conns: crate::conn_limit::ConnLimiter::new(100_000, 10_000),
            limits: FrameLimits::DEFAULT,
            event_capacity: 512,
            command_capacity: 64,
            auth_limiter: Some(Arc::new(RateLimiter::from_config(&AuthSection::default()))),
            metrics: Arc::default(),
        }
    }
}

struct Shared {
    config: ListenerConfig,
    auth: Arc<dyn Authenticator>,
    /// Connected devices: their connection and its command queue (a handle is made from
    /// these when asked for, so the table holds the key once).
    devices: Mutex<HashMap<DeviceKey, (u64, Arc<CommandQueue>)>>,
    properties: Mutex<HashMap<(DeviceKey, String), Value>>,
    events: mpsc::Sender<DeviceEvent>,
    next_conn: AtomicU64,
    slow_auth: tokio::sync::Semaphore,
    conns: Arc<live::Conns>,
}

/// A bound listener, ready to [`DeviceListener::run`].
pub struct DeviceListener {
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DeviceListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceListener")
            .field("tcp", &self.tcp_addr())
            .field("tls", &self.tls_addr())
            .finish()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl DeviceListener {
    /// Binds the configured addresses. Returns the listener and the device event stream.
    pub async fn bind(
        config: ListenerConfig,
        auth: Arc<dyn Authenticator>,
    ) -> Result<(Self, mpsc::Receiver<DeviceEvent>), Error> {
        let tcp = match config.tcp {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let tls = match &config.tls {
            Some((addr, acceptor)) => Some((bind(*addr).await?, acceptor.0.clone())),
            None => None,
        };
        let (events, rx) = mpsc::channel(config.event_capacity.max(1));
        let shared = Arc::new(Shared {
            config,
            auth,
            devices: Mutex::default(),
            properties: Mutex::default(),
            events,
            next_conn: AtomicU64::new(1),
            conns: Arc::default(),
            slow_auth: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
        });
        Ok((Self { tcp, tls, shared }, rx))
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound TLS address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The connected devices.
    pub fn devices(&self) -> Devices {
        Devices::new(self.shared.clone())
    }

    /// A sender into the same event queue the listener's devices use (for other sources).
    pub fn events(&self) -> mpsc::Sender<DeviceEvent> {
        self.shared.events.clone()
    }

    /// Accepts devices until `shutdown` completes, then closes every connection.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.tcp {
            tasks.spawn(accept_loop(l, None, self.shared.clone(), stop_rx.clone()));
        }
        if let Some((l, acceptor)) = self.tls {
            tasks.spawn(accept_loop(l, Some(acceptor), self.shared.clone(), stop_rx.clone()));
        }
        tasks.spawn(sweep_loop(self.shared.clone(), stop_rx));
        shutdown.await;
        let _ = stop_tx.send(true);
        self.shared.conns.stop();
        self.shared.conns.wait().await;
        while tasks.join_next().await.is_some() {}
    }
}

/// Closes connections past their login or idle deadline, until the listener stops.
async fn sweep_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let cfg = &shared.config;
    let mut every = tokio::time::interval(live::sweep_every(cfg.login_timeout, cfg.idle_timeout));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => shared.conns.sweep(),
            _ = stop.changed() => break,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // Plain tasks counted by a guard, not a JoinSet: its entry per task cost every idle
    // connection 56 bytes more.
    let live = shared.conns.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(permit) = shared.config.conns.admit(peer.ip()) else {
                    debug!(%peer, "connection refused: listener.max_connections(_per_ip) reached");
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let shared = shared.clone();
                let tls = tls.clone();
                // Two task types: a plain connection's task is not sized for TLS's state.
                match tls {
                    None => {
                        let live = live.enter();
                        tokio::spawn(async move {
                            let _live = live;
                            let _permit = permit;
                            conn::serve(sock, peer, false, shared).await;
                        });
                    }
                    Some(acceptor) => {
                        let live = live.enter();
                        tokio::spawn(async move {
                            let _live = live;
                            let _permit = permit;
                            let limit = shared.config.handshake_timeout;
                            match tokio::time::timeout(limit, acceptor.accept(sock)).await {
                                Ok(Ok(stream)) => conn::serve(stream, peer, true, shared).await,
                                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => debug!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
}

/// Decodes and handles every complete frame; `Err` closes the connection with a reason.
async fn handle_frames(
    decoder: &mut FrameDecoder,
    conn: &mut Conn,
    shared: &Arc<Shared>,
    cmd_tx: &Arc<CommandQueue>,
    peer: SocketAddr,
    tls: bool,
) -> Result<(), String> {
    // A read's bucket writes go on as one event, before anything else the device sent.
    let mut buckets = BucketRows::default();
    // What this read brought, for the size of its event(s).
    let room = decoder.buffered().min(2 * MAX_BUCKET_BYTES);
    loop {
        let frame = match decoder.next_ref() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                emit_buckets(shared, conn, &mut buckets).await;
                return Err(format!("bad frame: {e}"));
            }
        };
        let bucket = conn.session.bucket_ref(&frame);
        if let (Ok(Some(b)), Some(_), true) = (&bucket, &conn.key, wal_reads(&shared.config.limits)) {
            let ack = b.ack.map(|stream_id| {
                Acker(AckTarget::Device {
                    acks: cmd_tx.clone(),
                    stream_id,
                })
            });
            if buckets.is_empty() {
                buckets.reserve(room);
            }
            buckets.push(SystemTime::now(), b.bucket, b.payload, ack);
            if buckets.bytes() >= MAX_BUCKET_BYTES {
                emit_buckets(shared, conn, &mut buckets).await;
            }
            continue;
        }
        emit_buckets(shared, conn, &mut buckets).await;
        bucket.map_err(|e| format!("protocol error: {e}"))?;
        let event = conn
            .session
            .handle_ref(frame)
            .map_err(|e| format!("protocol error: {e}"))?;
        let Some(event) = event else { continue };
        match event {
            SessionEvent::Auth(creds) => {
                let key = DeviceKey::new(&creds.user, &creds.device);
                let metrics = &shared.config.metrics;
                if let Some(limiter) = &shared.config.auth_limiter
                    && limiter.is_locked(peer.ip(), &key)
                {
                    metrics.auth_failures.inc();
                    metrics.auth_rate_limited.inc();
                    debug!(device = %key, %peer, "login refused unchecked: the address or the device is locked out");
                    conn.session.reject();
                    return Err("authentication refused (rate limited)".into());
                }
                let ok = match shared.auth.quick_check(&creds) {
                    Some(ok) => ok,
                    None => {
                        // A hash check takes CPU time: off the async threads, and only as
                        // many at once as there are cores, so a login storm neither stalls
                        // connections nor piles up threads.
                        let _permit = shared.slow_auth.acquire().await;
                        let auth = shared.auth.clone();
                        tokio::task::spawn_blocking(move || auth.authenticate(&creds))
                            .await
                            .unwrap_or(false)
                    }
                };
                if !ok {
                    metrics.auth_failures.inc();
                    let locked = shared
                        .config
                        .auth_limiter
                        .as_ref()
                        .is_some_and(|l| l.failure(peer.ip(), &key));
                    warn!(device = %key, %peer, locked_out = locked, "authentication failed");
                    conn.session.reject();
                    return Err("authentication failed".into());
                }
                if let Some(limiter) = &shared.config.auth_limiter {
                    limiter.success(&key);
                }
                conn.session.accept();
                register(shared, conn.id, &key, cmd_tx.clone());
                metrics.devices_connected.inc();
                info!(device = %key, %peer, tls, "device connected");
                emit(
                    shared,
                    &key,
                    DeviceEventKind::Connected {
                        peer,
                        tls,
                        protocol: "thinger",
                    },
                )
                .await;
                // Logged in: the sweep no longer holds it to the login deadline.
                cmd_tx.login_until(0);
                conn.key = Some(key);
            }
            SessionEvent::Reply { stream_id, ok, payload } => {
                if let Some((_, tx)) = session::remove_released(&mut conn.pending, &stream_id) {
                    tx.send(if ok { Reply::Ok(payload) } else { Reply::DeviceError });
                }
            }
            other => {
                let Some(key) = conn.key.clone() else {
                    continue;
                };
                device_request(other, &key, conn, shared, cmd_tx).await;
            }
        }
    }
    emit_buckets(shared, conn, &mut buckets).await;
    Ok(())
}

/// Whether a payload the frame decoder took is one the WAL reads back: the decoder's limits
/// are within the WAL's. Else a bucket write goes the owned way, checked as the WAL reads.
fn wal_reads(limits: &FrameLimits) -> bool {
    let wal = twinlake_sdk::pson::Limits::DEFAULT;
    limits.max_depth <= wal.max_depth && limits.max_body <= wal.max_size
}

/// Bucket writes gathered into one event: past this many bytes it goes, so a full event
/// queue holds about what it held with one write per event (a frame is up to 64 KiB).
const MAX_BUCKET_BYTES: usize = 16 << 10;

/// Sends the bucket writes gathered, if any, as one event.
async fn emit_buckets(shared: &Shared, conn: &Conn, buckets: &mut BucketRows) {
    if let (false, Some(key)) = (buckets.is_empty(), &conn.key) {
        emit(shared, key, DeviceEventKind::Buckets(std::mem::take(buckets))).await;
    }
}

/// Handles what a device asked for or sent; acks once the event is queued.
async fn device_request(
    event: SessionEvent,
    key: &DeviceKey,
    conn: &mut Conn,
    shared: &Arc<Shared>,
    acks: &Arc<CommandQueue>,
) {
    let acker = |ack: Option<u32>| {
        ack.map(|stream_id| {
            Acker(AckTarget::Device {
                acks: acks.clone(),
                stream_id,
            })
        })
    };
    let (kind, ack) = match event {
        SessionEvent::Stream {
            path, payload, sample, ..
        } => (DeviceEventKind::Stream { path, payload, sample }, None),
        // Confirmed by whoever consumes the event, once it is safe (durable).
        SessionEvent::Endpoint { endpoint, payload, ack } => (
            DeviceEventKind::Endpoint {
                endpoint,
                payload,
                ack: acker(ack),
            },
            None,
        ),
        // Bucket writes are taken borrowed in `handle_frames`, but where the frame limits are
        // wider than the WAL's (`wal_reads`): then they come this way, and a payload the WAL
        // could not read back is refused, never confirmed.
        SessionEvent::Bucket { bucket, payload, ack } => {
            let mut rows = BucketRows::default();
            match payload.as_ref().map(|p| ValueRef::decode(p.as_bytes())).transpose() {
                Ok(payload) => rows.push(SystemTime::now(), &bucket, payload, acker(ack)),
                Err(_) => {
                    if let Some(a) = acker(ack) {
                        a.ack(false);
                    }
                    return;
                }
            }
            (DeviceEventKind::Buckets(rows), None)
        }
        SessionEvent::SetProperty { property, payload, ack } => {
            if let Ok(mut props) = shared.properties.lock() {
                props.insert((key.clone(), property.clone()), payload.clone().unwrap_or_default());
            }
            (DeviceEventKind::PropertySet { property, payload }, ack)
        }
        SessionEvent::GetProperty { property } => {
            let value = shared
                .properties
                .lock()
                .ok()
                .and_then(|p| p.get(&(key.clone(), property)).cloned());
            conn.session.property(value);
            return;
        }
        SessionEvent::CallDevice {
            device,
            path,
            payload,
            ack,
        } => {
            route_call(shared, key, &device, &path, payload.clone(), acker(ack));
            emit(
                shared,
                key,
                DeviceEventKind::CallDevice {
                    target: device,
                    path,
                    payload,
                },
            )
            .await;
            return;
        }
        SessionEvent::Auth(_) | SessionEvent::Reply { .. } => return,
    };
    emit(shared, key, kind).await;
    if let Some(sid) = ack {
        conn.session.ack(sid, true);
    }
}

/// CALL_DEVICE: runs `path` on another device of the same user, in the background so the
/// caller's connection keeps flowing; a confirmation reports whether the call succeeded.
fn route_call(
    shared: &Arc<Shared>,
    from: &DeviceKey,
    target: &str,
    path: &[String],
    payload: Option<Value>,
    ack: Option<Acker>,
) {
    let handle = Devices::new(shared.clone()).get(&from.user, target);
    let path = path.to_vec();
    tokio::spawn(async move {
        let ok = match handle {
            Some(h) => {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                h.call(&p, payload).await.is_ok()
            }
            None => false,
        };
        if let Some(a) = ack {
            a.ack(ok);
        }
    });
}

async fn emit(shared: &Shared, key: &DeviceKey, kind: DeviceEventKind) {
    let ev = DeviceEvent {
        device: key.clone(),
        at: SystemTime::now(),
        kind,
    };
    // Waits while the channel is full: back-pressure onto this device's socket.
    let _ = shared.events.send(ev).await;
}

fn register(shared: &Shared, conn_id: u64, key: &DeviceKey, tx: Arc<CommandQueue>) {
    let old = shared
        .devices
        .lock()
        .ok()
        .and_then(|mut d| d.insert(key.clone(), (conn_id, tx)));
    if let Some((_, old)) = old {
        old.close();
    }
}

/// A request to run a resource: the message the handle sends.
fn resource_request(signal: Signal, path: &[&str], payload: Option<Value>) -> Message {
    Message::new(0, signal).with_path(path).with_optional_payload(payload)
}
