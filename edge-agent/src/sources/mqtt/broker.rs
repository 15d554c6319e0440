//! The embedded MQTT broker (rumqttd) for gateways that have none.
//!
//! Devices connect to `mqtt.embedded.listen` (MQTT 3.1.1) or `listen_v5` (MQTT 5). The
//! MQTT source subscribes to the same broker over a loopback MQTT 5 listener of its own, with
//! credentials made up at start, so everything after the broker (topic templates, formats,
//! acks, the command topic) is the code path an external broker takes.
//!
//! **What a crash can lose.** The broker acknowledges a device's QoS 1 message when its router
//! has it, in memory. The source acknowledges it to the broker after the WAL fsync. A crash
//! loses what is between: messages the broker holds and the WAL does not yet (a few
//! milliseconds of traffic at most, as the source drains the broker continuously). A gateway
//! that needs the at-least-once guarantee across agent crashes runs an external broker with
//! persistence (Mosquitto) instead.
//!
//! rumqttd's threads cannot be stopped: the broker lives as long as the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

use crate::Error;
use crate::sources::mqtt::config::EmbeddedBroker;

/// A running embedded broker: where devices and the agent's own source connect.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// Where devices connect with MQTT 3.1.1.
    pub listen: SocketAddr,
    /// Where devices connect with MQTT 5, if asked for.
    pub listen_v5: Option<SocketAddr>,
    /// The source's loopback listener (MQTT 5) and its account.
    pub internal: SocketAddr,
    pub username: String,
    pub password: String,
}

/// Takes the address now, so a port in use is a clear error and port 0 gets a number.
/// rumqttd binds it again a moment later.
fn claim(addr: SocketAddr) -> Result<SocketAddr, Error> {
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|source| Error::Bind { addr, source })
}

fn server(name: &str, listen: SocketAddr, connections: ConnectionSettings) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    }
}

/// Starts the broker and waits until its listeners take connections.
pub async fn start(cfg: &EmbeddedBroker, source_inflight: u16) -> Result<Embedded, Error> {
    let listen = claim(cfg.listen)?;
    let listen_v5 = cfg.listen_v5.map(claim).transpose()?;
    let internal = claim(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let username = format!("twinlake-{}", crate::sources::random_hex(6));
    let password = crate::sources::random_hex(24);

    let devices = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: cfg.max_payload_bytes,
        max_inflight_count: 100,
        auth: (!cfg.users.is_empty()).then(|| cfg.users.iter().map(|(u, p)| (u.clone(), p.0.clone())).collect()),
        external_auth: None,
        dynamic_filters: true,
    };
    // The source's own connection: only it knows the account; as many unacknowledged
    // messages in flight as its Receive Maximum.
    let agent = ConnectionSettings {
        max_inflight_count: usize::from(source_inflight.max(1)),
        max_payload_size: cfg.max_payload_bytes,
        auth: Some(HashMap::from([(username.clone(), password.clone())])),
        ..devices.clone()
    };
    let mut v5 = HashMap::from([("agent".to_owned(), server("twinlake-agent", internal, agent))]);
    if let Some(addr) = listen_v5 {
        v5.insert("devices-v5".to_owned(), server("mqtt5-devices", addr, devices.clone()));
    }
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections.saturating_add(1),
            max_outgoing_packet_count: 200,
            // The router's in-memory log per subscription filter: 10 segments of 16 MiB.
            max_segment_size: 16 << 20,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([(
            "devices".to_owned(),
            server("mqtt-devices", listen, devices),
        )])),
        v5: Some(v5),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            // Returns only when every listener has failed.
            if let Err(e) = broker.start() {
                error!(error = %e, "the embedded MQTT broker stopped");
            } else {
                error!("the embedded MQTT broker's listeners stopped");
            }
        })
        .map_err(Error::Io)?;

    // rumqttd reports a failed bind only in its log: wait until each listener answers.
    for addr in [Some(listen), listen_v5, Some(internal)].into_iter().flatten() {
        let target = if addr.ip().is_unspecified() {
            SocketAddr::new(
                if addr.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                },
                addr.port(),
            )
        } else {
            addr
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(target).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Bind {
                    addr,
                    source: std::io::Error::other("the embedded MQTT broker did not start listening"),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    info!(%listen, listen_v5 = ?listen_v5, accounts = cfg.users.len(), "embedded MQTT broker listening");
    Ok(Embedded {
        listen,
        listen_v5,
        internal,
        username,
        password,
    })
}
