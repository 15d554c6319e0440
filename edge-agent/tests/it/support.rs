//! Shared test fixtures: a listener on 127.0.0.1:0, the §2.6 exchange, frame I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use twinlake_edge::listener::{DeviceEvent, DeviceEventKind, DeviceListener, Devices, ListenerConfig, tls_acceptor};
use twinlake_edge::registry::DeviceRegistry;
use twinlake_sdk::frame::{Frame, FrameDecoder, FrameLimits, Message};

pub struct Server {
    pub devices: Devices,
    pub events: mpsc::Receiver<DeviceEvent>,
    pub tcp: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub ca_pem: String,
    _stop: oneshot::Sender<()>,
}

pub async fn start(config: ListenerConfig, with_tls: bool) -> Server {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let ca_pem = cert.cert.pem();
    let mut config = ListenerConfig {
        tcp: Some("127.0.0.1:0".parse().expect("addr")),
        ..config
    };
    if with_tls {
        let acceptor = tls_acceptor(ca_pem.as_bytes(), cert.signing_key.serialize_pem().as_bytes()).expect("tls");
        config.tls = Some(("127.0.0.1:0".parse().expect("addr"), acceptor));
    }
    let auth = DeviceRegistry::new()
        .with("alice", "sensor1", "s3cr3t!")
        .with("alice", "devB", "b-secret");
    let (listener, events) = DeviceListener::bind(config, Arc::new(auth)).await.expect("bind");
    let (tcp, tls) = (listener.tcp_addr().expect("tcp"), listener.tls_addr());
    let devices = listener.devices();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(listener.run(async move {
        let _ = stopped.await;
    }));
    Server {
        devices,
        events,
        tcp,
        tls,
        ca_pem,
        _stop: stop,
    }
}

impl Server {
    /// The next event, which must be bucket writes: (bucket, payload, wants a confirmation).
    pub async fn next_buckets(&mut self) -> Vec<(String, Option<Vec<u8>>, bool)> {
        let DeviceEventKind::Buckets(mut rows) = self.next_event().await else {
            panic!("expected bucket writes")
        };
        rows.drain()
            .map(|(w, ack)| (w.bucket.to_owned(), w.payload.map(<[u8]>::to_vec), ack.is_some()))
            .collect()
    }

    /// The next event that is not a connect or disconnect, within 5 s.
    pub async fn next_event(&mut self) -> DeviceEventKind {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
                .await
                .expect("event in time")
                .expect("channel open");
            match ev.kind {
                DeviceEventKind::Connected { .. } | DeviceEventKind::Disconnected { .. } => {
                    continue;
                }
                k => return k,
            }
        }
    }

    /// Drops all queued events.
    pub fn drain(&mut self) {
        while self.events.try_recv().is_ok() {}
    }
}

/// (direction, label, bytes) of the §2.6 exchange.
pub fn exchange() -> Vec<(String, String, Vec<u8>)> {
    include_str!("../../../sdk-firmware/tests/data/exchange-2.6.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (head, bytes) = l.split_once(':').expect("label : bytes");
            let mut w = head.split_whitespace();
            let dir = w.next().expect("dir").to_string();
            let label = w.next().expect("label").to_string();
            (dir, label, hex(bytes))
        })
        .collect()
}

pub fn hex(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in s.split('"').enumerate() {
        if i % 2 == 1 {
            out.extend_from_slice(part.as_bytes());
        } else {
            out.extend(part.split_whitespace().map(|t| u8::from_str_radix(t, 16).expect("hex")));
        }
    }
    out
}

pub fn fixture(label: &str) -> Vec<u8> {
    exchange()
        .into_iter()
        .find(|(_, l, _)| l == label)
        .map(|(_, _, b)| b)
        .expect("label")
}

pub fn fixture_message(label: &str) -> Message {
    let mut d = FrameDecoder::new(FrameLimits::DEFAULT);
    d.push(&fixture(label));
    match d.next_frame().expect("valid").expect("complete") {
        Frame::Message(m) => m,
        Frame::KeepAlive => panic!("{label} is a keep-alive"),
    }
}

/// A raw device socket that reads whole frames.
pub struct RawPeer {
    pub sock: TcpStream,
    dec: FrameDecoder,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            sock: TcpStream::connect(addr).await.expect("connect"),
            dec: FrameDecoder::new(FrameLimits::DEFAULT),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("write");
    }

    /// The next frame's exact bytes, within 5 s.
    pub async fn frame_bytes(&mut self) -> Vec<u8> {
        let f = self.frame().await.expect("a frame");
        f.to_bytes()
    }

    /// The next frame, or None when the server closed.
    pub async fn frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.next_frame().expect("server frames are valid") {
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.sock.read(&mut buf))
                .await
                .expect("frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.dec.push(&buf[..n]);
        }
    }
}
