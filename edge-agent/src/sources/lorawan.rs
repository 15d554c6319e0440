//! The LoRaWAN source: a UDP socket for Semtech packet forwarders ([`gwmp`]) in front of
//! the network-server logic ([`network`]); its `[lorawan]` section is [`config`].
//!
//! PUSH_DATA is acknowledged at once, then each `rxpk` with a good CRC is handed to the
//! network server. Taken uplinks become rows of the device's profile table with the radio
//! metadata as columns (`rssi`, `snr`, `lora_gateway`, `frequency`, `data_rate`, `f_cnt`,
//! `f_port`). Join accepts and ACKs go back as PULL_RESP to the address of the gateway's
//! latest PULL_DATA, timed for RX1 from the uplink's `tmst`.
//!
//! Sessions (OTAA keys, frame counters, join nonces) live in `<data_dir>/lorawan/sessions.json`
//! (mode 0600), written whole and fsynced: before a join accept is sent, and after every
//! batch of uplinks. A crash between an uplink and that write can let a replay of that one
//! uplink in once.

pub mod config;
pub mod gwmp;
pub mod network;
pub mod secret;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use twinlake_sdk::pson::Value;

use self::gwmp::{DataRate, GatewayEui, RxPk, TxPk, Up, Version};
use self::network::{DeviceConf, Eui, NetworkServer, Outcome, Session};
use super::{Heard, Presence, connected, disconnected, hex, hex_array, parse_rfc3339};
use crate::Error;
use crate::event::{DeviceEvent, DeviceEventKind, DeviceKey, SourceRow};
use crate::metrics::Metrics;
use crate::sources::lorawan::config::LorawanSection;

/// Radio metadata kept, in the gateway's units: what a LoRa radio can report, with room.
const RSSI_DBM: std::ops::RangeInclusive<f64> = -200.0..=30.0;
const SNR_DB: std::ops::RangeInclusive<f64> = -50.0..=50.0;
/// Sub-GHz ISM bands, 137 MHz to 1020 MHz, and 2.4 GHz LoRa.
const FREQ_MHZ: std::ops::RangeInclusive<f64> = 100.0..=2600.0;

/// Class A join-accept delay 1 (LoRaWAN 1.0.x: 5 s).
const JOIN_ACCEPT_DELAY1_US: u32 = 5_000_000;

/// A bound, not yet serving LoRaWAN source.
#[derive(Debug)]
pub struct LoraSource {
    socket: UdpSocket,
    ns: NetworkServer,
    store: PathBuf,
    user: String,
    tx_power: i8,
    rx1_delay_us: u32,
    events: mpsc::Sender<DeviceEvent>,
    metrics: Arc<Metrics>,
    /// Where each gateway pulls downlinks from, and the protocol version it speaks.
    pull_addr: HashMap<GatewayEui, (SocketAddr, Version)>,
    presence: Presence,
    token: u16,
}

/// Gateways whose downlink path (PULL_DATA address) is remembered, at most.
const MAX_GATEWAYS: usize = 10_000;

fn load_sessions(path: &Path) -> Result<HashMap<Eui, Session>, Error> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => {
            return Err(Error::ReadFile {
                path: path.to_owned(),
                source,
            });
        }
    };
    let raw: HashMap<String, Session> =
        serde_json::from_slice(&text).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| Some((hex_array::<8>(&k)?, v)))
        .collect())
}

fn save_sessions(path: &Path, sessions: &HashMap<Eui, Session>) -> std::io::Result<()> {
    let raw: std::collections::BTreeMap<String, &Session> = sessions.iter().map(|(k, v)| (hex(k), v)).collect();
    let bytes = serde_json::to_vec(&raw).map_err(std::io::Error::other)?;
    // The keys are in it: readable by the agent's user only.
    crate::wal::write_file_atomic(path, &bytes, 0o600)
}

impl LoraSource {
    /// Binds `lorawan.udp` and loads the devices and their kept sessions.
    pub async fn bind(
        cfg: &LorawanSection,
        addr: SocketAddr,
        data_dir: &Path,
        events: mpsc::Sender<DeviceEvent>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let dir = data_dir.join("lorawan");
        std::fs::create_dir_all(&dir)?;
        let store = dir.join("sessions.json");
        let sessions = load_sessions(&store)?;
        let devices = cfg
            .devices
            .iter()
            .map(|d| {
                DeviceConf::from_config(d, &cfg.profiles)
                    .map_err(|e| Error::Config(format!("lorawan device {}: {e}", d.dev_eui)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let net_id = hex_array::<3>(&cfg.net_id).ok_or_else(|| Error::Config("lorawan.net_id".into()))?;
        let ns = NetworkServer::new(devices, sessions, net_id, cfg.rx1_delay_s, cfg.dedup_window);
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        info!(addr = %socket.local_addr()?, devices = cfg.devices.len(), "LoRaWAN packet-forwarder socket bound");
        Ok(Self {
            socket,
            ns,
            store,
            user: cfg.user.clone(),
            tx_power: cfg.tx_power,
            rx1_delay_us: u32::from(cfg.rx1_delay_s) * 1_000_000,
            events,
            metrics,
            pull_addr: HashMap::new(),
            // Bounded by the devices with session keys, which only the registry gives.
            presence: Presence::new(cfg.offline_after, usize::MAX),
            token: 0,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves until `stop` turns true; then stores the sessions.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut buf = vec![0u8; 65_536];
        let mut check = tokio::time::interval(Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let got = tokio::select! {
                r = self.socket.recv_from(&mut buf) => r,
                _ = stop.changed() => break,
                // Devices silent for `offline_after` go offline.
                _ = check.tick() => {
                    for device in self.presence.expire(Instant::now()) {
                        let key = DeviceKey::new(&self.user, &device);
                        disconnected(&self.events, key, SystemTime::now(), "silent for lorawan.offline_after").await;
                    }
                    continue;
                }
            };
            let mut batch = Vec::new();
            match got {
                Ok((n, from)) => batch.push((buf.get(..n).unwrap_or_default().to_vec(), from)),
                Err(e) => {
                    warn!(error = %e, "UDP receive failed");
                    continue;
                }
            }
            // Whatever else is waiting joins this batch (one session write for all).
            while batch.len() < 256 {
                match self.socket.try_recv_from(&mut buf) {
                    Ok((n, from)) => batch.push((buf.get(..n).unwrap_or_default().to_vec(), from)),
                    Err(_) => break,
                }
            }
            let mut out = Vec::new();
            for (d, from) in batch {
                self.datagram(&d, from, &mut out).await;
            }
            let changed = self.ns.take_changed();
            if !changed.is_empty() {
                self.persist().await;
            }
            // Downlinks only after the sessions they depend on are stored.
            for (bytes, to) in out {
                if let Err(e) = self.socket.send_to(&bytes, to).await {
                    warn!(gateway = %to, error = %e, "cannot send a downlink");
                }
            }
        }
        self.persist().await;
        debug!("LoRaWAN source stopped");
    }

    async fn persist(&self) {
        let path = self.store.clone();
        let sessions = self.ns.sessions().clone();
        match tokio::task::spawn_blocking(move || save_sessions(&path, &sessions)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(path = %self.store.display(), error = %e, "cannot store the LoRaWAN sessions"),
            Err(e) => warn!(error = %e, "the session writer failed"),
        }
    }

    fn next_token(&mut self) -> [u8; 2] {
        self.token = self.token.wrapping_add(1);
        self.token.to_be_bytes()
    }

    async fn datagram(&mut self, d: &[u8], from: SocketAddr, out: &mut Vec<(Vec<u8>, SocketAddr)>) {
        let (up, version) = match gwmp::parse(d).map(|u| (u, Version::of(d))) {
            Ok((u, Some(v))) => (u, v),
            Ok((_, None)) => return,
            Err(e) => {
                self.metrics.source("lorawan", "undecodable");
                debug!(%from, error = %e, "bad GWMP datagram");
                return;
            }
        };
        match up {
            Up::PullData { token, gateway } => {
                // Unauthenticated UDP: the gateways remembered are bounded.
                if !self.pull_addr.contains_key(&gateway) && self.pull_addr.len() >= MAX_GATEWAYS {
                    let gone = self.pull_addr.keys().next().copied();
                    if let Some(g) = gone {
                        self.pull_addr.remove(&g);
                        self.metrics.source("lorawan", "gateway_evicted");
                    }
                }
                if self.pull_addr.insert(gateway, (from, version)) != Some((from, version)) {
                    info!(%gateway, %from, ?version, "gateway downlink path");
                }
                let _ = self.socket.send_to(&gwmp::pull_ack(version, token), from).await;
            }
            Up::TxAck { gateway, error, .. } => match error {
                None => self.metrics.source("lorawan", "downlink"),
                Some(e) => {
                    self.metrics.source("lorawan", "downlink_refused");
                    warn!(%gateway, error = %e, "the gateway did not send a downlink");
                }
            },
            Up::PushData {
                token, gateway, rxpk, ..
            } => {
                let _ = self.socket.send_to(&gwmp::push_ack(version, token), from).await;
                for rx in rxpk {
                    match rx {
                        Ok(rx) => self.rxpk(gateway, &rx, out).await,
                        Err(why) => {
                            self.metrics.source("lorawan", "undecodable");
                            debug!(%gateway, %why, "rxpk skipped");
                        }
                    }
                }
            }
        }
    }

    async fn rxpk(&mut self, gateway: GatewayEui, rx: &RxPk, out: &mut Vec<(Vec<u8>, SocketAddr)>) {
        if !rx.crc_ok() {
            self.metrics.source("lorawan", "bad_crc");
            return;
        }
        let phy = match rx.payload() {
            Ok(p) => p,
            Err(why) => {
                self.metrics.source("lorawan", "undecodable");
                debug!(%gateway, %why, "rxpk skipped");
                return;
            }
        };
        let now = SystemTime::now();
        match self.ns.uplink(&phy, Instant::now(), &mut super::random) {
            Outcome::Uplink(up) => {
                self.metrics.source("lorawan", "accepted");
                let at = rx.time.as_deref().and_then(parse_rfc3339).unwrap_or(now);
                let mut fields = up.fields;
                let (rssi, snr, freq) = self.radio(gateway, rx);
                let meta: [(&str, Option<Value>); 7] = [
                    ("rssi", rssi.map(Value::Double)),
                    ("snr", snr.map(Value::Double)),
                    ("lora_gateway", Some(Value::Str(gateway.to_string()))),
                    ("frequency", freq.map(|f| Value::Int((f * 1e6).round() as i64))),
                    ("data_rate", rx.datr.as_ref().map(|d| Value::Str(d.to_string()))),
                    ("f_cnt", Some(Value::Int(i64::from(up.fcnt)))),
                    ("f_port", up.f_port.map(|p| Value::Int(i64::from(p)))),
                ];
                for (k, v) in meta {
                    if let Some(v) = v {
                        fields = fields.with(k, v);
                    }
                }
                if let Some(ack) = &up.ack {
                    self.downlink(gateway, rx, ack, self.rx1_delay_us, out);
                }
                let key = DeviceKey::new(&self.user, &up.device);
                if self.presence.heard(&up.device, Instant::now()) == Heard::Online {
                    let peer = self
                        .pull_addr
                        .get(&gateway)
                        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(a, _)| *a);
                    connected(&self.events, key.clone(), now, peer, false, "lorawan").await;
                }
                let ev = DeviceEvent {
                    device: key,
                    at: now,
                    kind: DeviceEventKind::Message {
                        rows: vec![SourceRow {
                            device: up.device,
                            resource: up.table,
                            at,
                            payload: fields,
                        }],
                        delivery: None,
                        ack: None,
                    },
                };
                let _ = self.events.send(ev).await;
            }
            Outcome::Joined {
                device,
                dev_addr,
                accept,
                ..
            } => {
                self.metrics.source("lorawan", "join");
                info!(%device, dev_addr = %format!("{dev_addr:08x}"), %gateway, "device joined");
                self.downlink(gateway, rx, &accept, JOIN_ACCEPT_DELAY1_US, out);
            }
            Outcome::Duplicate => self.metrics.source("lorawan", "duplicate"),
            Outcome::Resent { device, ack } => {
                // Stored the first time; only the lost ACK is repaired.
                self.metrics.source("lorawan", "resent");
                match ack {
                    Some(ack) => {
                        debug!(%device, %gateway, "a resent confirmed uplink is ACKed again");
                        self.downlink(gateway, rx, &ack, self.rx1_delay_us, out);
                    }
                    None => self.metrics.source("lorawan", "resend_ack_limited"),
                }
            }
            Outcome::Rejected(why) => {
                self.metrics.source("lorawan", why.outcome());
                debug!(%gateway, reason = %why, "uplink rejected");
            }
        }
    }

    /// The radio metadata of `rx` within physical ranges (rssi in dBm, snr in dB, frequency
    /// in MHz); a value outside is dropped (null) and counted, never clamped.
    fn radio(&self, gateway: GatewayEui, rx: &RxPk) -> (Option<f64>, Option<f64>, Option<f64>) {
        let mut bad = Vec::new();
        let mut keep = |name: &'static str, v: Option<f64>, range: std::ops::RangeInclusive<f64>| {
            v.filter(|x| {
                let ok = range.contains(x);
                if !ok {
                    bad.push((name, *x));
                }
                ok
            })
        };
        let out = (
            keep("rssi", rx.rssi, RSSI_DBM),
            keep("snr", rx.lsnr, SNR_DB),
            keep("frequency", rx.freq, FREQ_MHZ),
        );
        if !bad.is_empty() {
            self.metrics.source("lorawan", "metadata_out_of_range");
            warn!(%gateway, ?bad, "radio metadata out of range stored as null");
        }
        out
    }

    fn downlink(
        &mut self,
        gateway: GatewayEui,
        rx: &RxPk,
        phy: &[u8],
        delay_us: u32,
        out: &mut Vec<(Vec<u8>, SocketAddr)>,
    ) {
        let Some((to, version)) = self.pull_addr.get(&gateway).copied() else {
            warn!(%gateway, "no PULL_DATA from this gateway yet: a downlink cannot be sent");
            return;
        };
        let mut txpk = TxPk::rx1(rx, phy, delay_us, self.tx_power);
        if let DataRate::Fsk(_) = txpk.datr {
            txpk.codr = None;
        }
        let token = self.next_token();
        out.push((gwmp::pull_resp(version, token, &txpk), to));
    }
}
