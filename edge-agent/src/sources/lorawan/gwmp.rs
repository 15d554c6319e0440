//! The Semtech UDP packet forwarder protocol (GWMP), network-server side, without I/O.
//!
//! Datagrams from gateways ([`parse`]): PUSH_DATA (uplinks `rxpk` and `stat`), PULL_DATA
//! (keepalive; its source address is where downlinks go), TX_ACK. Datagrams to gateways:
//! [`push_ack`], [`pull_ack`], [`pull_resp`]. Versions 1 and 2 are accepted (the layout is
//! the same); tokens are echoed as they came.
//!
//! JSON is read tolerantly: every field but `data` is optional, `datr` is a string (LoRa,
//! `"SF7BW125"`) or a number (FSK bit rate), and one bad `rxpk` does not spoil the others.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A gateway's EUI (8 bytes, shown as 16 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayEui(pub [u8; 8]);

impl fmt::Display for GatewayEui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// What is wrong with a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GwmpError {
    #[error("datagram of {0} bytes is too short")]
    Short(usize),
    #[error("protocol version {0} (1 and 2 are known)")]
    Version(u8),
    #[error("packet type {0:#04x} is not one a gateway sends")]
    Type(u8),
    #[error("JSON: {0}")]
    Json(String),
}

/// A datagram from a gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Up {
    PushData {
        token: [u8; 2],
        gateway: GatewayEui,
        /// Each `rxpk`, parsed on its own.
        rxpk: Vec<Result<RxPk, String>>,
        stat: Option<Json>,
    },
    PullData {
        token: [u8; 2],
        gateway: GatewayEui,
    },
    TxAck {
        token: [u8; 2],
        gateway: GatewayEui,
        /// `txpk_ack.error`, if any other than `NONE`.
        error: Option<String>,
    },
}

/// A data rate: `"SF7BW125"` for LoRa, a bit rate for FSK.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum DataRate {
    Lora(String),
    Fsk(f64),
}

impl fmt::Display for DataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lora(s) => f.write_str(s),
            Self::Fsk(b) => write!(f, "FSK{b}"),
        }
    }
}

/// One received packet (`rxpk`); only `data` is required.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RxPk {
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub tmst: Option<u32>,
    #[serde(default)]
    pub freq: Option<f64>,
    #[serde(default)]
    pub chan: Option<u32>,
    #[serde(default)]
    pub rfch: Option<u32>,
    #[serde(default)]
    pub stat: Option<i32>,
    #[serde(default)]
    pub modu: Option<String>,
    #[serde(default)]
    pub datr: Option<DataRate>,
    #[serde(default)]
    pub codr: Option<String>,
    #[serde(default)]
    pub rssi: Option<f64>,
    #[serde(default)]
    pub lsnr: Option<f64>,
    #[serde(default)]
    pub size: Option<u32>,
    pub data: String,
}

impl RxPk {
    /// The PHYPayload bytes.
    pub fn payload(&self) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(self.data.trim_end_matches('='))
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(self.data.trim_end_matches('=')))
            .map_err(|e| format!("data is not base64: {e}"))
    }

    /// Whether the radio's CRC check passed (or there was none to check).
    pub fn crc_ok(&self) -> bool {
        self.stat.is_none_or(|s| s != -1)
    }
}

/// A packet to transmit (`txpk`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TxPk {
    /// Send at once (class C); else at `tmst`.
    pub imme: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmst: Option<u32>,
    pub freq: f64,
    pub rfch: u32,
    pub powe: i8,
    pub modu: String,
    pub datr: DataRate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codr: Option<String>,
    /// Inverted polarity, as downlinks use.
    pub ipol: bool,
    pub size: usize,
    pub data: String,
}

impl TxPk {
    /// A class A downlink of `phy` answering `rx` after `delay_us`, in its RX1 window
    /// (same frequency and data rate, as EU868's RX1DROffset 0 does).
    pub fn rx1(rx: &RxPk, phy: &[u8], delay_us: u32, power: i8) -> Self {
        Self {
            imme: false,
            tmst: Some(rx.tmst.unwrap_or(0).wrapping_add(delay_us)),
            freq: rx.freq.unwrap_or(868.1),
            rfch: 0,
            powe: power,
            modu: rx.modu.clone().unwrap_or_else(|| "LORA".into()),
            datr: rx.datr.clone().unwrap_or_else(|| DataRate::Lora("SF12BW125".into())),
            codr: rx.codr.clone().or_else(|| Some("4/5".into())),
            ipol: true,
            size: phy.len(),
            data: base64::engine::general_purpose::STANDARD.encode(phy),
        }
    }
}

const PUSH_DATA: u8 = 0x00;
const PUSH_ACK: u8 = 0x01;
const PULL_DATA: u8 = 0x02;
const PULL_RESP: u8 = 0x03;
const PULL_ACK: u8 = 0x04;
const TX_ACK: u8 = 0x05;

/// The protocol version a gateway speaks; it is answered in the same one, since forwarders
/// built on Semtech's reference code drop datagrams of another version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1 = 1,
    V2 = 2,
}

impl Version {
    /// The version of a datagram [`parse`] accepted.
    pub fn of(d: &[u8]) -> Option<Self> {
        match d.first() {
            Some(1) => Some(Self::V1),
            Some(2) => Some(Self::V2),
            _ => None,
        }
    }
}

/// Parses a datagram from a gateway.
pub fn parse(d: &[u8]) -> Result<Up, GwmpError> {
    let [version, t0, t1, kind, rest @ ..] = d else {
        return Err(GwmpError::Short(d.len()));
    };
    if !matches!(version, 1 | 2) {
        return Err(GwmpError::Version(*version));
    }
    let token = [*t0, *t1];
    let eui = |rest: &[u8]| -> Result<(GatewayEui, usize), GwmpError> {
        let e = rest.first_chunk::<8>().ok_or(GwmpError::Short(d.len()))?;
        Ok((GatewayEui(*e), 8))
    };
    match *kind {
        PUSH_DATA => {
            let (gateway, n) = eui(rest)?;
            let json = rest.get(n..).unwrap_or_default();
            let v: Json = serde_json::from_slice(json).map_err(|e| GwmpError::Json(e.to_string()))?;
            let obj = v
                .as_object()
                .ok_or_else(|| GwmpError::Json("PUSH_DATA is not a JSON object".into()))?;
            let rxpk = match obj.get("rxpk") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(items)) => items
                    .iter()
                    .map(|i| RxPk::deserialize(i).map_err(|e| e.to_string()))
                    .collect(),
                Some(_) => return Err(GwmpError::Json("rxpk is not an array".into())),
            };
            Ok(Up::PushData {
                token,
                gateway,
                rxpk,
                stat: obj.get("stat").cloned(),
            })
        }
        PULL_DATA => Ok(Up::PullData {
            token,
            gateway: eui(rest)?.0,
        }),
        TX_ACK => {
            let (gateway, n) = eui(rest)?;
            let json = rest.get(n..).unwrap_or_default();
            // Empty, or {"txpk_ack":{"error":"NONE"}}; anything unreadable counts as no error.
            let error = if json.iter().all(|b| b.is_ascii_whitespace() || *b == 0) {
                None
            } else {
                let v: Json = serde_json::from_slice(json).map_err(|e| GwmpError::Json(e.to_string()))?;
                v.pointer("/txpk_ack/error")
                    .and_then(Json::as_str)
                    .filter(|e| *e != "NONE")
                    .map(str::to_owned)
            };
            Ok(Up::TxAck { token, gateway, error })
        }
        other => Err(GwmpError::Type(other)),
    }
}

/// PUSH_ACK for a PUSH_DATA's token, in the gateway's version.
pub fn push_ack(version: Version, token: [u8; 2]) -> [u8; 4] {
    [version as u8, token[0], token[1], PUSH_ACK]
}

/// PULL_ACK for a PULL_DATA's token, in the gateway's version.
pub fn pull_ack(version: Version, token: [u8; 2]) -> [u8; 4] {
    [version as u8, token[0], token[1], PULL_ACK]
}

/// PULL_RESP carrying `txpk`, in the gateway's version (version 1 has no token there: it
/// is sent all the same, and ignored).
pub fn pull_resp(version: Version, token: [u8; 2], txpk: &TxPk) -> Vec<u8> {
    let mut out = vec![version as u8, token[0], token[1], PULL_RESP];
    // A struct of strings and numbers always serializes.
    let _ = serde_json::to_writer(&mut out, &serde_json::json!({ "txpk": txpk }));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        crate::sources::unhex(s).unwrap()
    }

    /// The spec's datagrams (§3.2, "UDP datagrams").
    #[test]
    fn spec_datagrams() {
        let mut push = hex("02123400aa555a0000000101");
        push.extend_from_slice(br#"{"rxpk":[{"time":"2024-01-01T12:00:00.000000Z","tmst":3512348611,"chan":2,"rfch":0,"freq":868.5,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/5","rssi":-57,"lsnr":9.5,"size":17,"data":"gNobASYAKgACOiNhMGKWFzk="}]}"#);
        let Up::PushData {
            token,
            gateway,
            rxpk,
            stat,
        } = parse(&push).unwrap()
        else {
            panic!()
        };
        assert_eq!(push_ack(Version::of(&push).unwrap(), token), hex("02123401").as_slice());
        assert_eq!(gateway.to_string(), "aa555a0000000101");
        assert!(stat.is_none());
        let rx = rxpk[0].as_ref().unwrap();
        assert_eq!(rx.datr, Some(DataRate::Lora("SF7BW125".into())));
        assert_eq!(rx.payload().unwrap(), hex("80da1b0126002a00023a23613062961739"));
        assert_eq!(rx.tmst, Some(3_512_348_611));

        let Up::PullData { token, gateway } = parse(&hex("02abcd02aa555a0000000101")).unwrap() else {
            panic!()
        };
        assert_eq!(pull_ack(Version::V2, token), hex("02abcd04").as_slice());
        assert_eq!(gateway.0, [0xaa, 0x55, 0x5a, 0, 0, 0, 1, 1]);

        let mut txack = hex("02567805aa555a0000000101");
        txack.extend_from_slice(br#"{"txpk_ack":{"error":"NONE"}}"#);
        assert_eq!(
            parse(&txack).unwrap(),
            Up::TxAck {
                token: [0x56, 0x78],
                gateway,
                error: None
            }
        );
        let mut late = hex("02567805aa555a0000000101");
        late.extend_from_slice(br#"{"txpk_ack":{"error":"TOO_LATE"}}"#);
        assert!(matches!(parse(&late).unwrap(), Up::TxAck { error: Some(e), .. } if e == "TOO_LATE"));
    }

    /// PROTOCOL.TXT's FSK example: no lsnr, datr a number. semtech-udp rejects it.
    #[test]
    fn fsk_rxpk_without_lsnr() {
        let mut push = hex("02000100aa555a0000000101");
        push.extend_from_slice(br#"{"rxpk":[{"time":"2013-03-31T16:21:17.530974Z","tmst":3512348514,"chan":9,"rfch":1,"freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"size":16,"data":"VEVTVF9QQUNLRVRfMTIzNA=="},{"data":7}]}"#);
        let Up::PushData { rxpk, .. } = parse(&push).unwrap() else {
            panic!()
        };
        let rx = rxpk[0].as_ref().unwrap();
        assert_eq!(rx.datr, Some(DataRate::Fsk(50000.0)));
        assert_eq!(rx.lsnr, None);
        assert_eq!(rx.payload().unwrap(), b"TEST_PACKET_1234");
        // The second rxpk is bad on its own.
        assert!(rxpk[1].is_err());
    }

    /// A version-1 forwarder is answered in version 1: it drops datagrams of another.
    #[test]
    fn a_version_1_gateway_is_answered_in_version_1() {
        let pull = hex("01abcd02aa555a0000000101");
        let Up::PullData { token, .. } = parse(&pull).unwrap() else {
            panic!()
        };
        assert_eq!(Version::of(&pull), Some(Version::V1));
        assert_eq!(pull_ack(Version::of(&pull).unwrap(), token), hex("01abcd04").as_slice());
        let mut push = hex("01123400aa555a0000000101");
        push.extend_from_slice(br#"{"stat":{}}"#);
        assert!(matches!(parse(&push), Ok(Up::PushData { .. })));
        assert_eq!(
            push_ack(Version::of(&push).unwrap(), [0x12, 0x34]),
            hex("01123401").as_slice()
        );
        assert_eq!(Version::of(&[3]), None);
    }

    #[test]
    fn bad_datagrams_say_why() {
        assert_eq!(parse(&[2, 0, 0]), Err(GwmpError::Short(3)));
        assert_eq!(parse(&[3, 0, 0, 0]), Err(GwmpError::Version(3)));
        assert_eq!(parse(&[2, 0, 0, 9, 0]), Err(GwmpError::Type(9)));
        assert!(matches!(parse(&[2, 0, 0, 0, 1, 2, 3]), Err(GwmpError::Short(_))));
        assert!(matches!(parse(b"\x02\0\0\0abcdefgh{"), Err(GwmpError::Json(_))));
        assert!(matches!(
            parse(b"\x02\0\0\0abcdefgh{\"rxpk\":1}"),
            Err(GwmpError::Json(_))
        ));
    }

    #[test]
    fn pull_resp_is_json_after_the_header() {
        let rx: RxPk =
            serde_json::from_str(r#"{"tmst":1000,"freq":868.1,"datr":"SF9BW125","codr":"4/5","data":""}"#).unwrap();
        let d = pull_resp(Version::V2, [1, 2], &TxPk::rx1(&rx, &[1, 2, 3], 5_000_000, 14));
        assert_eq!(&d[..4], &[2, 1, 2, 3]);
        let d1 = pull_resp(Version::V1, [1, 2], &TxPk::rx1(&rx, &[1, 2, 3], 5_000_000, 14));
        assert_eq!((&d1[..4], &d1[4..]), (&[1u8, 1, 2, 3][..], &d[4..]));
        let j: Json = serde_json::from_slice(&d[4..]).unwrap();
        assert_eq!(j["txpk"]["tmst"], 5_001_000);
        assert_eq!(j["txpk"]["datr"], "SF9BW125");
        assert_eq!(j["txpk"]["ipol"], true);
        assert_eq!(j["txpk"]["data"], "AQID");
        assert_eq!(j["txpk"]["size"], 3);
    }
}
