//! Starting and running the cloud: the database, the in-process edge pipeline, the HTTP(S)
//! server and the background tasks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};
use twinlake_edge::EdgeAgent;
use twinlake_edge::link::{Connector, LinkIo};
use twinlake_twin::{Limits, TwinStore};

use crate::Error;
use crate::auth::{Scope, Tokens, new_token, sha256_hex};
use crate::config::CloudConfig;
use crate::control::{ReadReports, StreamHub};
use crate::gateway::Gateways;
use crate::metrics::CloudMetrics;
pub use crate::state::AppState;
use crate::store::{Db, GATEWAYS, GatewayRecord, TOKENS, TokenRecord};

/// A started cloud: database open, sockets bound. [`Cloud::run`] serves.
pub struct Cloud {
    state: Arc<AppState>,
    http: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The API certificate and key (PEM), for Flight SQL's TLS.
    pem: Option<(Vec<u8>, Vec<u8>)>,
    metrics: Option<TcpListener>,
    edge: Option<EdgeAgent>,
    initial_token: Option<String>,
    postgres: Option<TcpListener>,
    flight: Option<TcpListener>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("http", &self.http_addr())
            .finish_non_exhaustive()
    }
}

/// The in-process pipeline's link: a channel pair instead of a WebSocket.
struct LocalConnector {
    state: Arc<AppState>,
}

impl Connector for LocalConnector {
    fn connect(
        &self,
        _requests: twinlake_edge::link::Requests,
    ) -> Pin<Box<dyn Future<Output = Result<LinkIo, twinlake_edge::Error>> + Send + '_>> {
        Box::pin(async move {
            let (edge, cloud) = LinkIo::pair(256);
            tokio::spawn(crate::gateway::serve(
                self.state.clone(),
                self.state.local_gateway.clone(),
                cloud,
                None,
            ));
            Ok(edge)
        })
    }

    fn target(&self) -> String {
        "in-process".into()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

impl Cloud {
    /// Opens the database, creates configured tokens and gateways, starts the in-process
    /// edge pipeline and binds the sockets.
    pub async fn start(cfg: CloudConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let db = Db::open(&cfg.data_dir.join("cloud.redb"), cfg.db_cache_bytes)?;
        let twins = TwinStore::open(
            db.0.clone(),
            Limits {
                max_doc_bytes: cfg.twins.max_doc_bytes,
                ..Limits::default()
            },
        )?;
        let now = twinlake_twin::now_ms();
        for t in &cfg.tokens {
            let rec = TokenRecord {
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                created: now,
                user: t.user.clone(),
            };
            db.put(TOKENS, &t.sha256.to_ascii_lowercase(), &rec)?;
        }
        for g in &cfg.gateways {
            let rec = GatewayRecord {
                id: g.id.clone(),
                token_sha256: g.token_sha256.to_ascii_lowercase(),
                created: now,
                users: g.users.clone(),
            };
            db.put(GATEWAYS, &g.id, &rec)?;
        }
        let tokens = Tokens::default();
        for (sha, rec) in db.scan::<TokenRecord>(TOKENS, "")? {
            tokens.insert(sha, rec);
        }
        let mut initial_token = None;
        if tokens.is_empty() {
            let token = new_token("tl_");
            let rec = TokenRecord {
                name: "admin".into(),
                scopes: vec![Scope::Admin],
                created: now,
                user: None,
            };
            let sha = sha256_hex(&token);
            db.put(TOKENS, &sha, &rec)?;
            tokens.insert(sha, rec);
            warn!("no API token existed; created an admin token (shown once on stdout)");
            initial_token = Some(token);
        }
        let webhook_policy = crate::egress::Policy::new(cfg.webhooks.allow_networks.clone());
        let http =
            crate::egress::client(webhook_policy.clone()).map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let rules = crate::ruleset::Rules::open(&db, &cfg.rules)?;

        let sql = crate::sql::open(&cfg, &db, &twins)?;
        let edge_enabled = cfg.edge.listener.tcp.is_some()
            || cfg.edge.listener.tls.is_some()
            || cfg.edge.device_http.addr.is_some()
            || cfg.edge.coap.udp.is_some();
        let edge = if edge_enabled {
            Some(EdgeAgent::start(cfg.edge_config()).await?)
        } else {
            None
        };
        // Every twin, read once at start: for the quotas, and below for presence.
        let all_twins = twins.list(None)?;
        let unregistered = crate::quota::Unregistered::load(cfg.link.max_unregistered_devices, &all_twins, &db)?;
        let state = Arc::new(AppState {
            unregistered,
            local_gateway: cfg.edge.gateway.clone(),
            edge_metrics: edge.as_ref().map(EdgeAgent::metrics),
            cfg,
            db,
            twins,
            gateways: Gateways::default(),
            tokens,
            hub: StreamHub::default(),
            read_reports: ReadReports::default(),
            webhook_wake: Notify::new(),
            metrics: CloudMetrics::default(),
            http,
            webhook_policy,
            rules,
            email_wake: Notify::new(),
            mqtt_wake: Notify::new(),
            stop: watch::channel(false).0,
            sql,
            catalog_wake: Notify::new(),
        });
        // Devices of the cloud's own listener are not connected to a process that just
        // started (after a SIGKILL their twins still said online); their next login sets
        // online and connected_at again. Devices at gateways are where their twins last saw
        // them until the gateways report again.
        let local = Some(state.local_gateway.as_str());
        let stale: Vec<_> = all_twins
            .iter()
            .filter(|t| t.connection.online && t.connection.gateway.as_deref() == local)
            .map(|t| (t.key(), t.connection.last_seen.unwrap_or(t.updated)))
            .collect();
        if !stale.is_empty() {
            state.twins.write(|t| {
                // At their last sighting: a restart is no sighting.
                for (key, seen) in &stale {
                    t.set_connection(key, *seen, |c| c.online = false)?;
                }
                Ok::<_, Error>(())
            })?;
        }
        for t in all_twins {
            if t.connection.online && t.connection.gateway.as_deref() != local {
                state.gateways.locate(t.key(), t.connection.gateway.clone());
            }
        }
        let mut edge = edge;
        if let Some(e) = edge.as_mut() {
            e.set_link(Arc::new(LocalConnector { state: state.clone() }));
        }
        let pem = match (&state.cfg.http.tls_cert, &state.cfg.http.tls_key) {
            (Some(c), Some(k)) => {
                let cert = std::fs::read(c).map_err(|e| Error::Config(format!("{}: {e}", c.display())))?;
                let key = std::fs::read(k).map_err(|e| Error::Config(format!("{}: {e}", k.display())))?;
                Some((cert, key))
            }
            _ => None,
        };
        let tls = match &pem {
            Some((cert, key)) => Some(
                twinlake_edge::listener::tls_acceptor(cert, key)
                    .map_err(|e| Error::Tls(e.to_string()))?
                    .0,
            ),
            None => None,
        };
        let http_listener = bind(state.cfg.http.addr).await?;
        let metrics = match state.cfg.metrics.addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let postgres = match state.cfg.sql.postgres_addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let flight = match state.cfg.sql.flight_addr {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        Ok(Self {
            state,
            http: http_listener,
            tls,
            pem,
            metrics,
            edge,
            initial_token,
            postgres,
            flight,
        })
    }

    /// The API address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_addr().ok()
    }

    /// Whether the API is HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The cloud's own device listener (TCP, then TLS).
    pub fn device_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        self.edge
            .as_ref()
            .map_or((None, None), |e| (e.tcp_addr(), e.tls_addr()))
    }

    /// The cloud's own HTTP device API, if it is on (`[edge.device_http]`).
    pub fn device_http_addr(&self) -> Option<SocketAddr> {
        self.edge.as_ref().and_then(EdgeAgent::device_http_addr)
    }

    /// The cloud's own CoAP source, if it is on (`[edge.coap]`).
    pub fn coap_addr(&self) -> Option<SocketAddr> {
        self.edge.as_ref().and_then(EdgeAgent::coap_addr)
    }

    /// The Postgres wire address.
    pub fn postgres_addr(&self) -> Option<SocketAddr> {
        self.postgres.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The Flight SQL address.
    pub fn flight_addr(&self) -> Option<SocketAddr> {
        self.flight.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The admin token made at the first start, if this start made one.
    pub fn initial_token(&self) -> Option<&str> {
        self.initial_token.as_deref()
    }

    /// The shared state (for tests and benchmarks).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes: stop accepting, close the device listener and
    /// flush the in-process pipeline, then return.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
        let state = self.state;
        // Who holds the database before any task starts (the state's own handles): on the
        // way out every other holder (tasks, connections, SQL sessions) is waited for.
        let db = Arc::downgrade(&state.db.0);
        let db_holders = Arc::strong_count(&state.db.0);
        let stop_rx = state.stop.subscribe();
        tokio::spawn(crate::control::apply_desired(state.clone()));
        tokio::spawn(crate::webhook::run(state.clone()));
        tokio::spawn(crate::control::record_reads(state.clone()));
        tokio::spawn(crate::rules::run(state.clone()));
        tokio::spawn(crate::rules::email::run(state.clone()));
        tokio::spawn(crate::rules::mqtt::run(state.clone()));
        // Tasks that hold the database through the SQL engine: awaited on the way out, so a
        // new start in the same process can open it.
        let mut sql_tasks = vec![tokio::spawn(crate::sql::catalogue(state.clone()))];
        let counted = state.clone();
        let expiry = twinlake_query::upkeep::Expiry {
            retention: state.cfg.sql.retention.clone(),
            rollups: state.cfg.sql.rollups.clone(),
            grace: state.cfg.sql.retention_grace(),
            on_expired: Arc::new(move |x: &twinlake_query::retention::Expired| {
                let m = &counted.metrics;
                m.retention_partitions.inc();
                m.retention_files.inc_by(x.files as u64);
                m.retention_rows.inc_by(x.rows);
                m.retention_bytes.inc_by(x.bytes);
            }),
        };
        sql_tasks.push(tokio::spawn(twinlake_query::upkeep::run(
            state.sql.lake().clone(),
            state.cfg.sql.compaction.clone(),
            Some(expiry),
            stop_rx.clone(),
        )));
        if let Some(l) = self.postgres {
            // The API's certificate, so sslmode=require works wherever HTTPS does.
            let pg = twinlake_query::pg::serve(
                state.sql.clone(),
                l,
                self.tls.clone(),
                crate::sql::token_check(&state.tokens),
                stop_rx.clone(),
            )
            .map_err(|e| Error::Config(format!("postgres listener: {e}")))?;
            sql_tasks.push(pg.task);
        }
        if let Some(l) = self.flight {
            let flight = twinlake_query::flight::serve(
                state.sql.clone(),
                l,
                self.pem.clone(),
                crate::sql::token_check(&state.tokens),
                stop_rx.clone(),
            )
            .map_err(|e| Error::Config(format!("Flight SQL listener: {e}")))?;
            sql_tasks.push(flight.task);
        }
        let edge_task = self.edge.map(|e| {
            let mut rx = stop_rx.clone();
            tokio::spawn(e.run(async move {
                crate::state::stopped(&mut rx).await;
            }))
        });
        let metrics_task = self.metrics.map(|l| {
            let app = crate::api::metrics_router(state.clone());
            let limits = state.cfg.metrics.limits();
            tokio::spawn(twinlake_edge::http::serve(l, None, app, limits, stop_rx.clone()))
        });
        let app = crate::api::router(state.clone());
        info!(addr = ?self.http.local_addr().ok(), tls = self.tls.is_some(), "cloud API listening");
        let serve = serve_http(self.http, self.tls, app, state.cfg.http.clone(), stop_rx.clone());
        let server = tokio::spawn(serve);
        shutdown.await;
        info!("shutting down");
        let _ = state.stop.send(true);
        let _ = server.await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        for t in sql_tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        state.sql.close();
        if let Some(t) = edge_task {
            match t.await {
                Ok(Err(e)) => warn!(error = %e, "the in-process edge pipeline stopped with an error"),
                Err(e) => warn!(error = %e, "the in-process edge pipeline failed"),
                Ok(Ok(())) => {}
            }
        }
        // The database closes when the last task holding the state ends: wait for them, so
        // a new start in the same process can open it. Generous: on a loaded machine a
        // blocking task can wait seconds for a thread (5 s was seen to fall short in CI).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let busy = |state: &Arc<AppState>| Arc::strong_count(state) > 1 || db.strong_count() > db_holders;
        while busy(&state) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if busy(&state) {
            warn!(
                state_holders = Arc::strong_count(&state) - 1,
                db_holders = db.strong_count(),
                "tasks still hold the cloud state or its database after shutdown"
            );
        }
        Ok(())
    }
}

/// Accepts HTTP (or HTTPS) connections until `stop`, each served by hyper with upgrades
/// (WebSockets), under `http.max_connections(_per_ip)` and `http.header_timeout`. Open
/// connections (streams) end when the process does.
async fn serve_http(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    cfg: crate::config::HttpSection,
    stop: watch::Receiver<bool>,
) {
    let limits = twinlake_edge::http::HttpLimits {
        max_connections: cfg.max_connections,
        max_connections_per_ip: cfg.max_connections_per_ip,
        header_timeout: cfg.header_timeout,
    };
    let app = app.layer(axum::middleware::from_fn_with_state(
        (cfg.body_timeout, cfg.max_body_bytes),
        body_in_time,
    ));
    twinlake_edge::http::serve(listener, tls, app, limits, stop).await
}

/// Reads a request's body within `http.body_timeout` (408 past it), so a client that sends
/// its body a byte at a time cannot hold a connection and a handler; the body is bounded
/// by `http.max_body_bytes` (413 past it).
async fn body_in_time(
    axum::extract::State((limit, max_bytes)): axum::extract::State<(std::time::Duration, usize)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Upgrades (WebSockets) and bodiless requests go straight on.
    let (parts, body) = req.into_parts();
    if parts.headers.contains_key(axum::http::header::UPGRADE) || parts.method == axum::http::Method::GET {
        return next.run(axum::extract::Request::from_parts(parts, body)).await;
    }
    match tokio::time::timeout(limit, axum::body::to_bytes(body, max_bytes)).await {
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, bytes.into())).await,
        Ok(Err(e)) => {
            crate::error::ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response()
        }
        Err(_) => crate::error::ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within http.body_timeout ({limit:?})"),
        )
        .into_response(),
    }
}
