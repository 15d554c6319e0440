//! `[lorawan]`: the LoRaWAN source's section of the agent's configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// `[lorawan]`: the network-server side of the Semtech UDP packet forwarder (GWMP) and
/// LoRaWAN 1.0.x for the devices listed here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LorawanSection {
    /// The UDP address gateways send to (the protocol's port is 1700); `"off"` by default.
    #[serde(with = "crate::values::addr_or_off")]
    pub udp: Option<SocketAddr>,
    /// The account LoRaWAN devices belong to.
    pub user: String,
    /// The network id (3 bytes, hex) in join accepts; 000000 or 000001 are for private networks.
    pub net_id: String,
    /// Copies of one uplink heard by several gateways arrive within this window of the first
    /// and are one uplink. A device's own resend of a confirmed uplink (it missed the ACK)
    /// comes after its ACK timeout (1 s or more): it is ACKed again and not stored twice.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// RX1 delay (seconds) granted in join accepts and used for class A downlinks.
    pub rx1_delay_s: u8,
    /// Transmit power (dBm) for downlinks.
    pub tx_power: i8,
    /// A device not heard from for this long shows offline in its twin ("0s": never).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    pub devices: Vec<LoraDevice>,
    pub profiles: Vec<LoraProfile>,
}

impl Default for LorawanSection {
    fn default() -> Self {
        Self {
            udp: None,
            user: "lorawan".into(),
            net_id: "000013".into(),
            dedup_window: Duration::from_millis(200),
            rx1_delay_s: 1,
            tx_power: 14,
            offline_after: Duration::from_secs(2 * 3600),
            devices: Vec::new(),
            profiles: Vec::new(),
        }
    }
}

/// `[[lorawan.devices]]`: OTAA (`app_key`) or ABP (`dev_addr`, `nwk_skey`, `app_skey`).
/// Keys are hex; they are never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraDevice {
    pub dev_eui: String,
    /// The device id in tables and twins; default the DevEUI in lowercase hex.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub join_eui: Option<String>,
    #[serde(default)]
    pub app_key: Option<crate::sources::lorawan::network::Secret>,
    #[serde(default)]
    pub dev_addr: Option<String>,
    #[serde(default)]
    pub nwk_skey: Option<crate::sources::lorawan::network::Secret>,
    #[serde(default)]
    pub app_skey: Option<crate::sources::lorawan::network::Secret>,
    /// A profile's name; default: Cayenne LPP into the `lorawan` table.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `[[lorawan.profiles]]`: how a kind of device's payload becomes fields, and where.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraProfile {
    pub name: String,
    /// The resource (table) its rows go to.
    #[serde(default = "lorawan_table")]
    pub table: String,
    /// `cayenne` (the default), `layout` (with `fields`) or `raw`.
    #[serde(default)]
    pub codec: CodecKind,
    /// The fields of a `layout`.
    #[serde(default)]
    pub fields: Vec<crate::sources::codec::LayoutField>,
}

/// The codecs a [`LoraProfile`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CodecKind {
    #[default]
    Cayenne,
    Layout,
    Raw,
}

impl LoraProfile {
    /// The profile's codec; the error says what is inconsistent.
    pub fn codec(&self) -> Result<crate::sources::codec::Codec, String> {
        use crate::sources::codec::Codec;
        let codec = match self.codec {
            CodecKind::Cayenne => Codec::Cayenne,
            CodecKind::Raw => Codec::Raw,
            CodecKind::Layout => Codec::Layout {
                fields: self.fields.clone(),
            },
        };
        if self.codec != CodecKind::Layout && !self.fields.is_empty() {
            return Err("fields go with codec = \"layout\"".into());
        }
        codec.validate()?;
        Ok(codec)
    }
}

fn lorawan_table() -> String {
    "lorawan".into()
}

impl LorawanSection {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(format!("lorawan: {msg}")));
        if crate::sources::hex_array::<3>(&self.net_id).is_none() {
            return bad(format!("net_id {:?}: 6 hex digits", self.net_id));
        }
        if !(1..=15).contains(&self.rx1_delay_s) {
            return bad(format!("rx1_delay_s {}: 1..=15", self.rx1_delay_s));
        }
        for p in &self.profiles {
            p.codec()
                .map_err(|e| Error::Config(format!("lorawan profile {:?}: {e}", p.name)))?;
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.devices {
            crate::sources::lorawan::network::DeviceConf::from_config(d, &self.profiles)
                .map_err(|e| Error::Config(format!("lorawan device {}: {e}", d.dev_eui)))?;
            if !seen.insert(d.dev_eui.to_ascii_lowercase()) {
                return bad(format!("device {} is listed twice", d.dev_eui));
            }
        }
        Ok(())
    }
}
