//! The link over WebSocket (`ws://` or `wss://`): dials the cloud with the gateway token as
//! a Bearer header, and moves messages between the socket and a [`LinkIo`], with pings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::client::{Connector, LinkIo};
use super::direct::{Direct, DirectWrite, LinkTx, SharedSink, write_queued};
use super::requests::Requests;
use super::wire::LinkMsg;
use crate::Error;
use crate::config::LinkSection;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The link over WebSocket (`ws://` or `wss://`), with the gateway token as a Bearer header.
#[derive(Clone)]
pub struct WsConnector {
    url: url::Url,
    token: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for WsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnector")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl WsConnector {
    /// From the `[link]` section: `wss://` trusts `ca_file` if given, else the system's roots.
    pub fn from_config(cfg: &LinkSection) -> Result<Self, Error> {
        let url = url::Url::parse(&cfg.url).map_err(|e| Error::Config(format!("link.url {:?}: {e}", cfg.url)))?;
        let tls = match url.scheme() {
            "ws" => None,
            "wss" => {
                let choice = if cfg.insecure {
                    twinlake_sdk::client::Tls::Insecure
                } else {
                    twinlake_sdk::client::Tls::Verify(crate::listener::client_roots(cfg.ca_file.as_deref())?)
                };
                choice.client_config().map_err(|e| Error::Tls(e.to_string()))?
            }
            other => return Err(Error::Config(format!("link.url: scheme {other:?} is not ws or wss"))),
        };
        Ok(Self {
            url,
            token: cfg.token.clone(),
            tls,
        })
    }

    async fn open(&self, requests: Requests) -> Result<LinkIo, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let host = self
            .url
            .host_str()
            .ok_or_else(|| Error::Config("link.url has no host".into()))?
            .to_owned();
        let port = self.url.port_or_known_default().unwrap_or(443);
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| Error::Link(format!("connecting to {host}:{port} timed out")))??;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| Error::Tls(format!("server name {host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone());
                Box::new(tls.connect(name, tcp).await?)
            }
        };
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Link(e.to_string()))?;
        let auth = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| Error::Config("link.token holds characters a header cannot".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(req, stream))
            .await
            .map_err(|_| Error::Link("the WebSocket handshake timed out".into()))?
            .map_err(|e| Error::Link(format!("WebSocket handshake: {e}")))?;
        let (sink, mut stream) = ws.split();
        let (mine, theirs) = LinkIo::pair(256);
        let LinkIo {
            tx: to_edge,
            rx: from_edge,
        } = theirs;
        let sink = SharedSink::new(sink);
        // Writer: frames out, what direct writes left in the socket's buffer, and a ping
        // every 15 s so a dead peer shows up.
        let ping = || Message::Ping(Vec::new().into());
        tokio::spawn(write_queued(
            sink.clone(),
            from_edge,
            to_ws,
            Some((Duration::from_secs(15), ping)),
        ));
        // Reader: text frames in; anything from the cloud (pongs too) shows it is alive. It
        // carries out live requests itself; their answers go onto the socket from the task
        // that has them, or to the writer (held weakly: the link closes when the session
        // drops its end).
        let writer = mine.tx.downgrade();
        let direct: Arc<dyn DirectWrite> = Arc::new(Direct { sink, convert: to_ws });
        tokio::spawn(async move {
            loop {
                let next = tokio::time::timeout(Duration::from_secs(45), stream.next()).await;
                match next {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Some(queue) = writer.upgrade() {
                            let replies = LinkTx {
                                queue,
                                direct: Some(direct.clone()),
                            };
                            if requests.try_text(t.as_str(), &replies) {
                                continue;
                            }
                        }
                        if to_edge.send(LinkMsg::Text(t.to_string())).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => break,
                    Ok(Some(Ok(_))) => {}
                    Err(_) => {
                        warn!("the cloud link was silent for 45 s; reconnecting");
                        break;
                    }
                }
            }
        });
        Ok(mine)
    }
}

fn to_ws(msg: LinkMsg) -> Message {
    match msg {
        LinkMsg::Text(text) => Message::Text(text.into()),
        LinkMsg::Binary(bytes) => Message::Binary(bytes),
    }
}

impl Connector for WsConnector {
    fn connect(&self, requests: Requests) -> Pin<Box<dyn Future<Output = Result<LinkIo, Error>> + Send + '_>> {
        Box::pin(self.open(requests))
    }

    fn target(&self) -> String {
        self.url.to_string()
    }
}
