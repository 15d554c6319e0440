//! The accept loop every Twinlake HTTP server runs (the agent's metrics, the cloud's API):
//! hyper with upgrades (WebSockets), connections capped in all and per address, and a
//! deadline for a request's headers (and a TLS handshake) so a slowloris client cannot hold
//! a connection. Bodies are the application's to bound. Every request carries its peer's
//! address as axum's `ConnectInfo<SocketAddr>`.

use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::conn_limit::{ConnLimiter, ConnPermit};

/// The caps and deadlines of one HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// For a request's headers, and for a TLS handshake.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` changes. Open connections
/// (streams) end then too: it returns only after every connection task has, so nothing of
/// `app` (its state) outlives it.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let caps = ConnLimiter::new(limits.max_connections, limits.max_connections_per_ip);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(permit) = caps.admit(peer.ip()) else {
            debug!(%peer, "HTTP connection refused: max_connections(_per_ip) reached");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let app = WithPeer { app: app.clone(), peer };
        conns.spawn(connection(sock, tls.clone(), app, limits, permit, stop.clone()));
    }
    drop(app);
    conns.shutdown().await;
}

async fn connection(
    sock: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: WithPeer,
    limits: HttpLimits,
    _permit: ConnPermit,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(app);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    match tls {
        Some(acceptor) => {
            let Ok(Ok(stream)) = tokio::time::timeout(limits.header_timeout, acceptor.accept(sock)).await else {
                return;
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        }
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(sock), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The application with the connection's peer address put on each request.
#[derive(Clone)]
struct WithPeer {
    app: axum::Router,
    peer: SocketAddr,
}

impl<B> tower_service::Service<Request<B>> for WithPeer
where
    axum::Router: tower_service::Service<Request<B>>,
{
    type Response = <axum::Router as tower_service::Service<Request<B>>>::Response;
    type Error = <axum::Router as tower_service::Service<Request<B>>>::Error;
    type Future = <axum::Router as tower_service::Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Request<B>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(req)
    }
}

/// Whether `headers` carry `Authorization: Bearer <t>` with SHA-256(`t`) = `sha256_hex`
/// (compared in constant time). `None`: nothing is required.
pub fn bearer_matches(headers: &axum::http::HeaderMap, sha256_hex: Option<&str>) -> bool {
    let Some(want) = sha256_hex else {
        return true;
    };
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let got = crate::hex::hex(ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes()).as_ref());
    crate::hex::constant_time_eq(got.as_bytes(), want.to_ascii_lowercase().as_bytes())
}
