//! LoRaWAN 1.0.x network-server logic for the devices of one gateway site, without I/O.
//!
//! [`NetworkServer::uplink`] takes a PHYPayload and says what it was: a data uplink
//! (MIC checked, frame counter rebuilt to 32 bits with rollover, replays refused,
//! decrypted and decoded by the device's profile, plus an ACK downlink if it was
//! confirmed), a join request (answered with a join accept; session keys derived), a
//! duplicate heard by another gateway, or a rejection with its reason. Frames and keys
//! come from the `lorawan` crate (lora-rs).
//!
//! Keys never reach a log line: [`Secret`] prints as `***`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use lorawan::creator::{DataPayloadCreator, JoinAcceptCreator};
use lorawan::keys::{AES128, AppKey, AppSKey, NewSKey};
use lorawan::parser::{
    DataHeader, DataPayload, DecryptedJoinAcceptPayload, DevNonce, FCtrl, FRMPayload, PhyPayload, parse,
};
use serde::{Deserialize, Serialize};
use twinlake_sdk::pson::Value;

use crate::sources::codec::Codec;
use crate::sources::lorawan::config::{LoraDevice, LoraProfile};
use crate::sources::{fnv1a, hex, hex_array};

pub use super::secret::Secret;

/// An EUI-64 as written (big-endian).
pub type Eui = [u8; 8];

/// A device as configured.
#[derive(Debug, Clone)]
pub struct DeviceConf {
    pub dev_eui: Eui,
    pub name: String,
    pub join_eui: Option<Eui>,
    pub app_key: Option<Secret>,
    /// ABP: the session it was given.
    pub abp: Option<Session>,
    pub table: String,
    pub codec: Codec,
}

impl DeviceConf {
    /// From `[[lorawan.devices]]`; the error says what is missing or malformed.
    pub fn from_config(d: &LoraDevice, profiles: &[LoraProfile]) -> Result<Self, String> {
        let dev_eui = hex_array::<8>(&d.dev_eui).ok_or("dev_eui: 16 hex digits")?;
        let join_eui = d
            .join_eui
            .as_deref()
            .map(|j| hex_array::<8>(j).ok_or("join_eui: 16 hex digits"))
            .transpose()?;
        let abp = match (&d.dev_addr, d.nwk_skey, d.app_skey) {
            (Some(a), Some(n), Some(s)) => {
                let addr = hex_array::<4>(a).ok_or("dev_addr: 8 hex digits")?;
                Some(Session::new(u32::from_be_bytes(addr), n, s))
            }
            (None, None, None) => None,
            _ => return Err("ABP needs dev_addr, nwk_skey and app_skey".into()),
        };
        if abp.is_none() && d.app_key.is_none() {
            return Err("give app_key (OTAA) or dev_addr, nwk_skey and app_skey (ABP)".into());
        }
        let (table, codec) = match &d.profile {
            None => ("lorawan".to_owned(), Codec::Cayenne),
            Some(name) => {
                let p = profiles
                    .iter()
                    .find(|p| &p.name == name)
                    .ok_or_else(|| format!("profile {name:?} is not defined"))?;
                (p.table.clone(), p.codec()?)
            }
        };
        Ok(Self {
            dev_eui,
            name: d.name.clone().unwrap_or_else(|| hex(&dev_eui)),
            join_eui,
            app_key: d.app_key,
            abp,
            table,
            codec,
        })
    }
}

/// A device's session: its address, keys and counters. Kept durably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub dev_addr: u32,
    pub nwk_skey: Secret,
    pub app_skey: Secret,
    /// The last accepted uplink counter (32 bits); none before the first uplink.
    pub fcnt_up: Option<u32>,
    /// The next downlink counter.
    pub fcnt_down: u32,
    /// DevNonces of the latest join requests (OTAA), newest last.
    #[serde(default)]
    pub dev_nonces: Vec<u16>,
    /// When a resent confirmed uplink was last acknowledged (not kept: a restart may ACK one
    /// resend sooner).
    #[serde(skip)]
    pub resend_acked: Option<Instant>,
}

impl Session {
    fn new(dev_addr: u32, nwk_skey: Secret, app_skey: Secret) -> Self {
        Self {
            dev_addr,
            nwk_skey,
            app_skey,
            fcnt_up: None,
            fcnt_down: 0,
            dev_nonces: Vec::new(),
            resend_acked: None,
        }
    }
}

/// Why a frame was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    Malformed(String),
    /// A downlink, a join accept, or a LoRaWAN version we do not speak.
    NotForUs(&'static str),
    /// No device has this DevAddr or DevEUI.
    UnknownDevice(String),
    /// No device's keys give this MIC at any plausible frame counter.
    BadMic(String),
    /// The MIC is right at a counter already seen.
    Replay {
        device: String,
        fcnt: u32,
        last: u32,
    },
    /// A join request with a DevNonce the device used before.
    JoinReplay {
        device: String,
        dev_nonce: u16,
    },
}

impl Reject {
    /// The metric outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::NotForUs(_) => "undecodable",
            Self::UnknownDevice(_) => "unknown_device",
            Self::BadMic(_) => "bad_mic",
            Self::Replay { .. } | Self::JoinReplay { .. } => "replay",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "malformed frame: {why}"),
            Self::NotForUs(what) => write!(f, "not an uplink for us: {what}"),
            Self::UnknownDevice(who) => write!(f, "unknown device {who}"),
            Self::BadMic(who) => write!(f, "bad MIC ({who})"),
            Self::Replay { device, fcnt, last } => {
                write!(f, "replayed frame counter {fcnt} from {device} (last {last})")
            }
            Self::JoinReplay { device, dev_nonce } => {
                write!(f, "join request from {device} reuses DevNonce {dev_nonce}")
            }
        }
    }
}

/// A data uplink that was taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Uplink {
    pub dev_eui: Eui,
    pub device: String,
    pub table: String,
    /// The decoded fields (or `payload` bytes and `decode_error` when the codec failed).
    pub fields: Value,
    pub dev_addr: u32,
    pub fcnt: u32,
    pub f_port: Option<u8>,
    pub confirmed: bool,
    /// The ACK downlink (PHYPayload) a confirmed uplink is owed.
    pub ack: Option<Vec<u8>>,
}

/// What a frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Uplink(Box<Uplink>),
    /// A join was accepted: `accept` is the join-accept PHYPayload for RX1.
    Joined {
        dev_eui: Eui,
        device: String,
        dev_addr: u32,
        accept: Vec<u8>,
    },
    /// The same frame came through another gateway (or again) within the window.
    Duplicate,
    /// A device sent its last confirmed uplink again (it missed the ACK): nothing is stored,
    /// and `ack` is a new ACK downlink unless one was sent to it within [`RESEND_ACK_EVERY`].
    Resent {
        device: String,
        ack: Option<Vec<u8>>,
    },
    Rejected(Reject),
}

/// The devices, their sessions, and the frames seen lately.
#[derive(Debug)]
pub struct NetworkServer {
    devices: HashMap<Eui, DeviceConf>,
    sessions: HashMap<Eui, Session>,
    by_addr: HashMap<u32, Vec<Eui>>,
    recent: HashMap<u64, Instant>,
    recent_order: VecDeque<(Instant, u64)>,
    window: Duration,
    net_id: [u8; 3],
    rx1_delay_s: u8,
    /// Sessions changed since [`NetworkServer::take_changed`].
    changed: Vec<Eui>,
}

/// MHDR, AppNonce, NetID, DevAddr, DLSettings, RxDelay, MIC.
const JOIN_ACCEPT_LEN: usize = 1 + 3 + 3 + 4 + 1 + 1 + 4;

/// Frames remembered for de-duplication, at most.
const MAX_RECENT: usize = 100_000;

/// A device's resends are ACKed at most this often: each downlink spends the gateway's duty
/// cycle, and a recorded confirmed frame could be replayed to spend it.
pub const RESEND_ACK_EVERY: Duration = Duration::from_secs(1);

/// Only the latest join nonces are kept per device.
const NONCES_KEPT: usize = 64;

impl NetworkServer {
    /// A server for `devices`, resuming `sessions` (OTAA joins and counters kept from before).
    pub fn new(
        devices: Vec<DeviceConf>,
        sessions: HashMap<Eui, Session>,
        net_id: [u8; 3],
        rx1_delay_s: u8,
        window: Duration,
    ) -> Self {
        let mut ns = Self {
            devices: HashMap::new(),
            sessions: HashMap::new(),
            by_addr: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            window,
            net_id,
            rx1_delay_s,
            changed: Vec::new(),
        };
        for d in devices {
            let kept = sessions.get(&d.dev_eui).cloned();
            // A kept session wins over the configured ABP one if it is the same address
            // (it has the counters); a changed ABP configuration starts afresh.
            let session = match (&d.abp, kept) {
                (Some(abp), Some(k)) if k.dev_addr == abp.dev_addr && k.nwk_skey == abp.nwk_skey => Some(k),
                (Some(abp), _) => Some(abp.clone()),
                (None, k) => k,
            };
            if let Some(s) = session {
                ns.set_session(d.dev_eui, s);
            }
            ns.devices.insert(d.dev_eui, d);
        }
        ns
    }

    fn set_session(&mut self, eui: Eui, s: Session) {
        if let Some(old) = self.sessions.get(&eui)
            && let Some(list) = self.by_addr.get_mut(&old.dev_addr)
        {
            list.retain(|e| *e != eui);
        }
        self.by_addr.entry(s.dev_addr).or_default().push(eui);
        self.sessions.insert(eui, s);
    }

    /// The sessions changed since the last call, to be stored.
    pub fn take_changed(&mut self) -> Vec<(Eui, Session)> {
        let mut eui = std::mem::take(&mut self.changed);
        eui.sort_unstable();
        eui.dedup();
        eui.into_iter()
            .filter_map(|e| Some((e, self.sessions.get(&e)?.clone())))
            .collect()
    }

    /// A device's session.
    pub fn session(&self, eui: &Eui) -> Option<&Session> {
        self.sessions.get(eui)
    }

    /// Every session (for storing them all).
    pub fn sessions(&self) -> &HashMap<Eui, Session> {
        &self.sessions
    }

    /// Whether `phy` was seen within the window; remembers it.
    fn seen(&mut self, phy: &[u8], now: Instant) -> bool {
        while let Some((t, h)) = self.recent_order.front().copied() {
            if now.duration_since(t) < self.window {
                break;
            }
            self.recent_order.pop_front();
            if self.recent.get(&h) == Some(&t) {
                self.recent.remove(&h);
            }
        }
        let h = fnv1a(&[phy]);
        if self.recent.contains_key(&h) {
            return true;
        }
        // A flood of distinct frames forgets the oldest early rather than growing without end.
        if self.recent_order.len() >= MAX_RECENT
            && let Some((t, old)) = self.recent_order.pop_front()
            && self.recent.get(&old) == Some(&t)
        {
            self.recent.remove(&old);
        }
        self.recent.insert(h, now);
        self.recent_order.push_back((now, h));
        false
    }

    /// Takes one PHYPayload; `random` fills nonces and addresses.
    pub fn uplink(&mut self, phy: &[u8], now: Instant, random: &mut dyn FnMut(&mut [u8])) -> Outcome {
        if phy.len() < 12 {
            return Outcome::Rejected(Reject::Malformed(format!("{} bytes", phy.len())));
        }
        if self.seen(phy, now) {
            return Outcome::Duplicate;
        }
        let parsed = match parse(phy.to_vec()) {
            Ok(p) => p,
            Err(e) => return Outcome::Rejected(Reject::Malformed(format!("{e:?}"))),
        };
        match parsed {
            PhyPayload::JoinRequest(jr) => {
                let le = |b: &[u8]| -> Eui {
                    let mut e = [0u8; 8];
                    for (o, x) in e.iter_mut().zip(b.iter().rev()) {
                        *o = *x;
                    }
                    e
                };
                let dev_eui = le(jr.dev_eui().as_ref());
                let join_eui = le(jr.app_eui().as_ref());
                let nonce_bytes: [u8; 2] = jr.dev_nonce().as_ref().try_into().unwrap_or_default();
                self.join(dev_eui, join_eui, nonce_bytes, |k| jr.validate_mic(k), random)
            }
            PhyPayload::JoinAccept(_) => Outcome::Rejected(Reject::NotForUs("a join accept")),
            PhyPayload::Data(DataPayload::Encrypted(enc)) => {
                if !enc.is_uplink() {
                    return Outcome::Rejected(Reject::NotForUs("a downlink"));
                }
                let addr_le: [u8; 4] = enc.fhdr().dev_addr().as_ref().try_into().unwrap_or_default();
                let dev_addr = u32::from_le_bytes(addr_le);
                let f16 = u32::from(enc.fhdr().fcnt());
                let candidates = self.by_addr.get(&dev_addr).cloned().unwrap_or_default();
                if candidates.is_empty() {
                    return Outcome::Rejected(Reject::UnknownDevice(format!("DevAddr {dev_addr:08x}")));
                }
                let mut replay = None;
                let mut resent = None;
                for eui in candidates {
                    let Some(s) = self.sessions.get(&eui) else { continue };
                    let nwk = s.nwk_skey.aes();
                    // The counter this frame may carry: the next after the last, with the
                    // low 16 bits rolled over if need be. A MIC that fits an older counter
                    // (the same high bits, or the ones before a rollover) is a replay.
                    let (next, older) = match s.fcnt_up {
                        None => (Some(f16), None),
                        Some(last) => {
                            let same = (last & 0xffff_0000) | f16;
                            if same > last {
                                (Some(same), same.checked_sub(0x1_0000))
                            } else {
                                (same.checked_add(0x1_0000), Some(same))
                            }
                        }
                    };
                    let Some(fcnt) = next.filter(|n| enc.validate_mic(&nwk, *n)) else {
                        if let Some(o) = older.filter(|o| enc.validate_mic(&nwk, *o)) {
                            // The last confirmed uplink again, after the copies' window: the
                            // device missed its ACK (LoRaWAN 1.0.x resends with the same FCnt).
                            if enc.is_confirmed() && s.fcnt_up == Some(o) {
                                resent = Some(eui);
                                break;
                            }
                            replay = Some(Reject::Replay {
                                device: self.name(&eui),
                                fcnt: o,
                                last: s.fcnt_up.unwrap_or_default(),
                            });
                        }
                        continue;
                    };
                    return self.accept(eui, enc, fcnt);
                }
                if let Some(eui) = resent {
                    return self.resent(eui, now);
                }
                Outcome::Rejected(replay.unwrap_or_else(|| Reject::BadMic(format!("DevAddr {dev_addr:08x}"))))
            }
            PhyPayload::Data(DataPayload::Decrypted(_)) => Outcome::Rejected(Reject::NotForUs("a decrypted frame")),
        }
    }

    fn name(&self, eui: &Eui) -> String {
        self.devices.get(eui).map_or_else(|| hex(eui), |d| d.name.clone())
    }

    fn accept(
        &mut self,
        eui: Eui,
        enc: lorawan::parser::EncryptedDataPayload<Vec<u8>, lorawan::default_crypto::DefaultFactory>,
        fcnt: u32,
    ) -> Outcome {
        let (Some(conf), Some(s)) = (self.devices.get(&eui), self.sessions.get_mut(&eui)) else {
            return Outcome::Rejected(Reject::UnknownDevice(hex(&eui)));
        };
        let confirmed = enc.is_confirmed();
        let f_port = enc.f_port();
        let (nwk, app) = (s.nwk_skey.aes(), s.app_skey.aes());
        let dec = match enc.decrypt(Some(&nwk), Some(&app), fcnt) {
            Ok(d) => d,
            Err(e) => return Outcome::Rejected(Reject::Malformed(format!("{e:?}"))),
        };
        s.fcnt_up = Some(fcnt);
        let bytes = match dec.frm_payload() {
            FRMPayload::Data(d) => d.to_vec(),
            _ => Vec::new(),
        };
        let fields = if bytes.is_empty() || f_port == Some(0) {
            Value::object()
        } else {
            match conf.codec.decode(&bytes) {
                Ok(v) => v,
                Err(why) => Value::object()
                    .with("payload", Value::Bytes(bytes))
                    .with("decode_error", Value::Str(why)),
            }
        };
        let ack = if confirmed { ack_downlink(s) } else { None };
        let up = Uplink {
            dev_eui: eui,
            device: conf.name.clone(),
            table: conf.table.clone(),
            fields,
            dev_addr: s.dev_addr,
            fcnt,
            f_port,
            confirmed,
            ack,
        };
        self.changed.push(eui);
        Outcome::Uplink(Box::new(up))
    }

    /// A resent confirmed uplink of `eui`: ACKed again, at most every [`RESEND_ACK_EVERY`].
    fn resent(&mut self, eui: Eui, now: Instant) -> Outcome {
        let device = self.name(&eui);
        let Some(s) = self.sessions.get_mut(&eui) else {
            return Outcome::Rejected(Reject::UnknownDevice(device));
        };
        if s.resend_acked
            .is_some_and(|t| now.saturating_duration_since(t) < RESEND_ACK_EVERY)
        {
            return Outcome::Resent { device, ack: None };
        }
        s.resend_acked = Some(now);
        let ack = ack_downlink(s);
        // FCntDown moved on: kept durably like any counter.
        self.changed.push(eui);
        Outcome::Resent { device, ack }
    }

    fn join(
        &mut self,
        dev_eui: Eui,
        join_eui: Eui,
        nonce: [u8; 2],
        mic_ok: impl Fn(&AES128) -> bool,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Outcome {
        let Some(conf) = self.devices.get(&dev_eui) else {
            return Outcome::Rejected(Reject::UnknownDevice(format!("DevEUI {}", hex(&dev_eui))));
        };
        let Some(app_key) = conf.app_key else {
            return Outcome::Rejected(Reject::NotForUs("a join request from an ABP device"));
        };
        if conf.join_eui.is_some_and(|j| j != join_eui) || !mic_ok(&app_key.aes()) {
            return Outcome::Rejected(Reject::BadMic(format!("join request of {}", conf.name)));
        }
        let dev_nonce = u16::from_le_bytes(nonce);
        let device = conf.name.clone();
        let mut nonces = self
            .sessions
            .get(&dev_eui)
            .map(|s| s.dev_nonces.clone())
            .unwrap_or_default();
        if nonces.contains(&dev_nonce) {
            return Outcome::Rejected(Reject::JoinReplay { device, dev_nonce });
        }
        // A type-0 NetID's 7 low bits are the address prefix (NetID 000013 → 26xxxxxx).
        let mut r = [0u8; 7];
        random(&mut r);
        let nwk_id = u32::from(self.net_id[2] & 0x7f);
        let dev_addr = nwk_id << 25 | u32::from_be_bytes([r[0], r[1], r[2], r[3]]) & 0x01ff_ffff;
        let app_nonce = [r[4], r[5], r[6]];
        let net_id_le = [self.net_id[2], self.net_id[1], self.net_id[0]];
        let mut creator = JoinAcceptCreator::new();
        creator
            .set_app_nonce(&app_nonce)
            .set_net_id(&net_id_le)
            .set_dev_addr(&dev_addr.to_le_bytes())
            .set_dl_settings(0)
            .set_rx_delay(self.rx1_delay_s);
        let key = AppKey::from(app_key.0);
        // Without a CFList the frame is 17 bytes; lorawan 0.9 hands back its whole 33-byte buffer.
        let accept = match creator.build(key.inner()) {
            Ok(b) => b.get(..JOIN_ACCEPT_LEN).unwrap_or(b).to_vec(),
            Err(e) => return Outcome::Rejected(Reject::Malformed(format!("join accept: {e:?}"))),
        };
        let Ok(dec) = DecryptedJoinAcceptPayload::new(accept.clone(), &key) else {
            return Outcome::Rejected(Reject::Malformed("join accept".into()));
        };
        let Some(dn) = DevNonce::new(&nonce[..]) else {
            return Outcome::Rejected(Reject::Malformed("DevNonce".into()));
        };
        let nwk = dec.derive_newskey(&dn, &key);
        let app = dec.derive_appskey(&dn, &key);
        nonces.push(dev_nonce);
        if nonces.len() > NONCES_KEPT {
            nonces.remove(0);
        }
        let mut s = Session::new(dev_addr, Secret(nwk.inner().0), Secret(app.inner().0));
        s.dev_nonces = nonces;
        self.set_session(dev_eui, s);
        self.changed.push(dev_eui);
        Outcome::Joined {
            dev_eui,
            device,
            dev_addr,
            accept,
        }
    }
}

/// An ACK downlink for `s` (unconfirmed data down, the ACK bit, no port), taking the next
/// FCntDown.
fn ack_downlink(s: &mut Session) -> Option<Vec<u8>> {
    let mut fctrl = FCtrl::new(0, false);
    fctrl.set_ack();
    let mut c = DataPayloadCreator::new();
    c.set_uplink(false)
        .set_confirmed(false)
        .set_dev_addr(&s.dev_addr.to_le_bytes())
        .set_fctrl(&fctrl)
        .set_fcnt(s.fcnt_down);
    s.fcnt_down = s.fcnt_down.wrapping_add(1);
    c.build(&[], &[], &NewSKey::from(s.nwk_skey.0), &AppSKey::from(s.app_skey.0))
        .map(<[u8]>::to_vec)
        .ok()
        .filter(|a| !a.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const K1: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const K2: &str = "000102030405060708090a0b0c0d0e0f";

    fn h(s: &str) -> Vec<u8> {
        crate::sources::unhex(s).unwrap()
    }

    fn abp(eui: &str, addr: u32, nwk: &str, app: &str) -> DeviceConf {
        DeviceConf {
            dev_eui: hex_array(eui).unwrap(),
            name: format!("dev-{eui}"),
            join_eui: None,
            app_key: None,
            abp: Some(Session::new(
                addr,
                Secret(hex_array(nwk).unwrap()),
                Secret(hex_array(app).unwrap()),
            )),
            table: "lorawan".into(),
            codec: Codec::Cayenne,
        }
    }

    fn ns(devices: Vec<DeviceConf>) -> NetworkServer {
        NetworkServer::new(devices, HashMap::new(), [0, 0, 0x13], 1, Duration::from_secs(10))
    }

    fn no_random(b: &mut [u8]) {
        b.fill(0);
    }

    #[test]
    fn v2_confirmed_uplink_is_decoded_and_acked() {
        let mut ns = ns(vec![abp("0000000000000002", 0x2601_1bda, K1, K2)]);
        let t = Instant::now();
        let Outcome::Uplink(up) = ns.uplink(&h("80da1b0126002a00023a23613062961739"), t, &mut no_random) else {
            panic!()
        };
        assert_eq!(up.fcnt, 42);
        assert!(up.confirmed);
        assert_eq!(up.fields.get("temperature_3"), Some(&Value::Double(27.2)));
        let ack = up.ack.unwrap();
        // Unconfirmed data down, the ACK bit, FCntDown 0, no port.
        assert_eq!(ack[0], 0x60);
        assert_eq!(&ack[1..5], &[0xda, 0x1b, 0x01, 0x26]);
        assert_eq!(ack[5], 0x20);
        // The same bytes again are a duplicate within the window.
        assert_eq!(
            ns.uplink(&h("80da1b0126002a00023a23613062961739"), t, &mut no_random),
            Outcome::Duplicate
        );
    }

    /// A confirmed uplink sent again after the copies' window (its ACK was lost) gets a new
    /// ACK with the next FCntDown and stores nothing; a third copy within a second gets none.
    #[test]
    fn a_resent_confirmed_uplink_is_acked_again() {
        let devices = vec![abp("0000000000000002", 0x2601_1bda, K1, K2)];
        let mut ns = NetworkServer::new(devices, HashMap::new(), [0, 0, 0x13], 1, Duration::from_millis(200));
        let frame = h("80da1b0126002a00023a23613062961739");
        let t = Instant::now();
        let Outcome::Uplink(up) = ns.uplink(&frame, t, &mut no_random) else {
            panic!()
        };
        assert_eq!(up.ack.as_ref().unwrap()[6..8], [0, 0], "FCntDown 0");
        // Another gateway's copy, within the window: a duplicate.
        assert_eq!(
            ns.uplink(&frame, t + Duration::from_millis(50), &mut no_random),
            Outcome::Duplicate
        );
        let later = t + Duration::from_secs(2);
        let Outcome::Resent { device, ack: Some(ack) } = ns.uplink(&frame, later, &mut no_random) else {
            panic!()
        };
        assert_eq!(device, "dev-0000000000000002");
        assert_eq!(ack[5], 0x20, "the ACK bit");
        assert_eq!(ack[6..8], [1, 0], "FCntDown 1");
        assert_ne!(ack, up.ack.unwrap());
        assert_eq!(
            ns.session(&hex_array("0000000000000002").unwrap()).unwrap().fcnt_down,
            2
        );
        let soon = later + Duration::from_millis(300);
        assert!(matches!(
            ns.uplink(&frame, soon, &mut no_random),
            Outcome::Resent { ack: None, .. }
        ));
        let after = later + RESEND_ACK_EVERY + Duration::from_millis(300);
        assert!(matches!(
            ns.uplink(&frame, after, &mut no_random),
            Outcome::Resent { ack: Some(_), .. }
        ));
    }

    #[test]
    fn v3_needs_the_upper_counter_bits() {
        let mut ns = ns(vec![abp("0000000000000003", 0x2601_1bda, K1, K2)]);
        ns.sessions
            .get_mut(&hex_array("0000000000000003").unwrap())
            .unwrap()
            .fcnt_up = Some(0xffff);
        let Outcome::Uplink(up) = ns.uplink(&h("40da1b0126000500023561e379e395df1e"), Instant::now(), &mut no_random)
        else {
            panic!()
        };
        assert_eq!(up.fcnt, 0x1_0005);
    }

    #[test]
    fn v4_v5_join() {
        let dev = DeviceConf {
            dev_eui: hex_array("0004a30b001c0530").unwrap(),
            name: "j".into(),
            join_eui: hex_array("70b3d57ed0000001"),
            app_key: Some(Secret(hex_array(K1).unwrap())),
            abp: None,
            table: "lorawan".into(),
            codec: Codec::Cayenne,
        };
        let mut ns = ns(vec![dev]);
        // AppNonce 000001 and DevAddr 26011bda from the "random" bytes, as V5 has them.
        let mut random = |b: &mut [u8]| b.copy_from_slice(&[0x00, 0x01, 0x1b, 0xda, 0x01, 0x00, 0x00]);
        let t = Instant::now();
        let got = ns.uplink(&h("00010000d07ed5b37030051c000ba3040034124f5ca349"), t, &mut random);
        let Outcome::Joined { dev_addr, accept, .. } = got else {
            panic!("{got:?}")
        };
        assert_eq!(dev_addr, 0x2601_1bda);
        assert_eq!(hex(&accept), "202e8d09d3771bcd48a803068fb5132f56");
        let s = ns.session(&hex_array("0004a30b001c0530").unwrap()).unwrap();
        assert_eq!(hex(&s.nwk_skey.0), "4e3fef7d8993d07fa7d837ca1b4b0adb");
        assert_eq!(hex(&s.app_skey.0), "b562f1a7e7d2ef8703b82b94d81c6190");
        assert_eq!(format!("{s:?}").matches("***").count(), 2);
        // The same DevNonce again (after the window) is a replayed join.
        let later = t + Duration::from_secs(11);
        assert!(matches!(
            ns.uplink(&h("00010000d07ed5b37030051c000ba3040034124f5ca349"), later, &mut random),
            Outcome::Rejected(Reject::JoinReplay { dev_nonce: 0x1234, .. })
        ));
    }

    #[test]
    fn bad_mic_replay_unknown() {
        let mut ns = ns(vec![abp(
            "0000000000000001",
            0x0102_0304,
            &"02".repeat(16),
            &"01".repeat(16),
        )]);
        let v1 = h("400403020180010001a694642615d6c3b582");
        let t = Instant::now();
        let Outcome::Uplink(up) = ns.uplink(&v1, t, &mut no_random) else {
            panic!()
        };
        assert!(up.fields.get("decode_error").is_some());
        let later = t + Duration::from_secs(11);
        assert!(matches!(
            ns.uplink(&v1, later, &mut no_random),
            Outcome::Rejected(Reject::Replay { fcnt: 1, last: 1, .. })
        ));
        let mut bad = v1.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            ns.uplink(&bad, later, &mut no_random),
            Outcome::Rejected(Reject::BadMic(_))
        ));
        let mut other = v1.clone();
        other[1] = 9;
        assert!(matches!(
            ns.uplink(&other, later, &mut no_random),
            Outcome::Rejected(Reject::UnknownDevice(_))
        ));
        assert!(matches!(
            ns.uplink(&[0x40; 5], later, &mut no_random),
            Outcome::Rejected(Reject::Malformed(_))
        ));
    }
}
