//! A blocking TCP/TLS transport that drives a [`Thing`], like `thing.handle()` in a sketch.
//!
//! Call [`Client::handle`] in a loop. It connects when it is time to (with exponential
//! back-off after failures), authenticates, reads what arrived (waiting at most until the
//! next timer), runs the device's timers, and writes each outgoing frame with one write, as
//! stock clients do. Errors drop the connection and schedule a reconnect; they are returned
//! so the application can log them, and the next `handle` carries on.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme, StreamOwned};

use crate::device::{Event, Thing};
use crate::frame::{FrameDecoder, FrameError, FrameLimits};
use crate::pson::Value;

/// The plain TCP port of the classic protocol.
pub const DEFAULT_PORT: u16 = 25200;
/// The TLS port of the classic protocol.
pub const DEFAULT_TLS_PORT: u16 = 25202;

/// How to secure the connection.
#[derive(Debug, Clone, Default)]
pub enum Tls {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS, checking the server certificate against these roots.
    Verify(Arc<RootCertStore>),
    /// TLS without checking the certificate, as the Linux client does
    /// (`THINGER_INSECURE_SSL` in the Arduino library). Only for trusted networks.
    Insecure,
}

impl Tls {
    /// TLS trusting the certificates in a PEM file (a CA or a self-signed server cert).
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::Config(format!("CA PEM: {e}")))?;
            roots.add(cert).map_err(ClientError::Tls)?;
        }
        if roots.is_empty() {
            return Err(ClientError::Config("CA PEM holds no certificate".into()));
        }
        Ok(Tls::Verify(Arc::new(roots)))
    }
}

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub device: String,
    pub credential: String,
    pub tls: Tls,
    /// First reconnect delay (the Arduino library waits 5 s).
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Longest single wait for incoming bytes inside [`Client::handle`].
    pub poll_interval: Duration,
}

impl ClientConfig {
    /// Plain TCP to `host:port` with the usual back-off.
    pub fn new(host: &str, port: u16, user: &str, device: &str, credential: &str) -> Self {
        Self {
            host: host.into(),
            port,
            user: user.into(),
            device: device.into(),
            credential: credential.into(),
            tls: Tls::Off,
            reconnect_min: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// Why a connection attempt or a connection failed.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    Tls(rustls::Error),
    Config(String),
    /// The server refused the credentials.
    AuthRejected,
    /// The server stopped answering keep-alives.
    KeepAliveTimeout,
    /// The server closed the connection.
    Closed,
    /// The server sent bytes that are not a valid frame.
    Frame(FrameError),
    /// A blocking call got no answer in time.
    Timeout,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O: {e}"),
            Self::Tls(e) => write!(f, "TLS: {e}"),
            Self::Config(e) => write!(f, "configuration: {e}"),
            Self::AuthRejected => f.write_str("the server rejected the credentials"),
            Self::KeepAliveTimeout => f.write_str("the server stopped answering keep-alives"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Frame(e) => write!(f, "bad frame from the server: {e}"),
            Self::Timeout => f.write_str("no answer in time"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }

    /// One frame, one write (then flush), so the peer never sees a split frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(frame),
            Conn::Tls(s) => {
                s.write_all(frame)?;
                s.flush()
            }
        }
    }
}

/// Counters a device may want to report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connects: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Drives a [`Thing`] over TCP or TLS.
pub struct Client {
    config: ClientConfig,
    thing: Thing,
    conn: Option<Conn>,
    decoder: FrameDecoder,
    epoch: Instant,
    next_attempt: Instant,
    backoff: Duration,
    events: std::collections::VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.config.host)
            .field("port", &self.config.port)
            .field("device", &self.config.device)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Client {
    /// A client for `thing`; nothing connects until [`Client::handle`].
    pub fn new(config: ClientConfig, thing: Thing) -> Self {
        let now = Instant::now();
        Self {
            backoff: config.reconnect_min,
            config,
            thing,
            conn: None,
            decoder: FrameDecoder::new(FrameLimits::DEFAULT),
            epoch: now,
            next_attempt: now,
            events: Default::default(),
            stats: Stats::default(),
        }
    }

    /// The device, to add resources or send requests.
    pub fn thing(&mut self) -> &mut Thing {
        &mut self.thing
    }

    /// Whether the server has accepted us on a live connection.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some() && self.thing.is_connected()
    }

    /// Traffic counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next event from the device runtime.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// One turn of the loop. Returns the error that dropped the connection, if one did.
    pub fn handle(&mut self) -> Result<(), ClientError> {
        let result = self.turn();
        if result.is_err() {
            self.drop_connection();
        }
        result
    }

    fn turn(&mut self) -> Result<(), ClientError> {
        if self.conn.is_none() {
            let now = Instant::now();
            if now < self.next_attempt {
                std::thread::sleep((self.next_attempt - now).min(self.config.poll_interval));
                return Ok(());
            }
            self.connect()?;
        }
        self.flush()?;
        self.read_once()?;
        let now = self.now_ms();
        self.thing.poll(now);
        self.drain_events()?;
        self.flush()
    }

    fn connect(&mut self) -> Result<(), ClientError> {
        let addr = (self.config.host.as_str(), self.config.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| ClientError::Config(format!("{} does not resolve", self.config.host)))?;
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        sock.set_nodelay(true)?;
        let conn = match &self.config.tls {
            Tls::Off => Conn::Tcp(sock),
            tls => Conn::Tls(Box::new(tls_stream(sock, &self.config.host, tls)?)),
        };
        self.conn = Some(conn);
        self.stats.connects += 1;
        self.decoder = FrameDecoder::new(FrameLimits::DEFAULT);
        let now = self.now_ms();
        let c = &self.config;
        self.thing.connected(&c.user, &c.device, &c.credential, now);
        Ok(())
    }

    fn drop_connection(&mut self) {
        if self.conn.take().is_some() || self.thing.is_connected() {
            self.thing.disconnected();
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
    }

    fn read_once(&mut self) -> Result<(), ClientError> {
        let wait = match self.thing.next_deadline() {
            Some(d) => Duration::from_millis(d.saturating_sub(self.now_ms())).min(self.config.poll_interval),
            None => self.config.poll_interval,
        }
        .max(Duration::from_millis(1));
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.socket().set_read_timeout(Some(wait))?;
        let mut buf = [0u8; 4096];
        let n = match conn.read(&mut buf) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.stats.rx_bytes += n as u64;
        self.decoder.push(buf.get(..n).unwrap_or_default());
        let now = self.now_ms();
        while let Some(frame) = self.decoder.next_frame().map_err(ClientError::Frame)? {
            self.thing.handle_frame(frame, now);
        }
        Ok(())
    }

    fn drain_events(&mut self) -> Result<(), ClientError> {
        while let Some(e) = self.thing.poll_event() {
            match e {
                Event::AuthRejected => return Err(ClientError::AuthRejected),
                Event::KeepAliveTimeout => return Err(ClientError::KeepAliveTimeout),
                Event::Authenticated => self.backoff = self.config.reconnect_min,
                _ => {}
            }
            self.events.push_back(e);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        while let Some(frame) = self.thing.poll_transmit() {
            conn.write_frame(&frame)?;
            self.stats.tx_bytes += frame.len() as u64;
        }
        Ok(())
    }

    /// Runs [`Client::handle`] until `stop` is set, calling `on_error` for each dropped
    /// connection.
    pub fn run(&mut self, stop: &AtomicBool, mut on_error: impl FnMut(&ClientError)) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = self.handle() {
                on_error(&e);
            }
        }
    }

    /// Pumps the loop until an event matches, or `timeout` passes. Other events stay queued.
    pub fn wait_for(&mut self, timeout: Duration, mut pred: impl FnMut(&Event) -> bool) -> Result<Event, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .events
                .iter()
                .position(&mut pred)
                .and_then(|i| self.events.remove(i))
            {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            self.handle()?;
        }
    }

    /// Waits until the server has accepted the device.
    pub fn wait_connected(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while !self.is_connected() {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            self.handle()?;
        }
        Ok(())
    }

    /// Reads a property from the server (blocks, as on the device).
    pub fn get_property(&mut self, name: &str, timeout: Duration) -> Result<Option<Value>, ClientError> {
        self.thing.get_property(name);
        match self.wait_for(timeout, |e| matches!(e, Event::Property { name: n, .. } if n == name))? {
            Event::Property { value, .. } => Ok(value),
            _ => Err(ClientError::Timeout),
        }
    }

    /// Calls an endpoint and waits for the server's confirmation.
    pub fn call_endpoint_confirmed(
        &mut self,
        endpoint: &str,
        payload: Option<Value>,
        timeout: Duration,
    ) -> Result<bool, ClientError> {
        let Some(id) = self.thing.call_endpoint(endpoint, payload, true) else {
            return Err(ClientError::Timeout);
        };
        match self.wait_for(timeout, |e| matches!(e, Event::Ack { request, .. } if *request == id))? {
            Event::Ack { ok, .. } => Ok(ok),
            _ => Err(ClientError::Timeout),
        }
    }
}

fn tls_stream(sock: TcpStream, host: &str, tls: &Tls) -> Result<StreamOwned<ClientConnection, TcpStream>, ClientError> {
    let config = tls
        .client_config()?
        .ok_or_else(|| ClientError::Config("TLS is off".into()))?;
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| ClientError::Config(format!("server name {host}: {e}")))?;
    let conn = ClientConnection::new(config, name).map_err(ClientError::Tls)?;
    Ok(StreamOwned::new(conn, sock))
}

impl Tls {
    /// The rustls client configuration (ring provider) this choice means; `None` when off.
    pub fn client_config(&self) -> Result<Option<Arc<rustls::ClientConfig>>, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Tls)?;
        let config = match self {
            Tls::Off => return Ok(None),
            Tls::Verify(roots) => builder.with_root_certificates(roots.clone()).with_no_client_auth(),
            Tls::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        };
        Ok(Some(Arc::new(config)))
    }
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
