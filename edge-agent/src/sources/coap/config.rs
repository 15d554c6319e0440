//! `[coap]`: the CoAP source's section of the agent's configuration.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// `[coap]`: devices POST telemetry and attributes over CoAP (RFC 7252) and observe their
/// commands (RFC 7641), with their registry credential as the token in the path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoapSection {
    /// The UDP address (the protocol's port is 5683); `"off"` by default.
    #[serde(with = "crate::values::addr_or_off")]
    pub udp: Option<SocketAddr>,
    /// A request body (whole, after block-wise transfer) larger than this gets 4.13.
    pub max_body_bytes: usize,
    /// The resource (table) telemetry goes to when the path names none.
    pub resource: String,
    /// The resource (table) attributes are kept in, besides the twin's properties.
    pub attributes_resource: String,
    /// Commands waiting per device at most.
    pub max_commands_per_device: usize,
    /// A device not heard from for this long shows offline ("0s": never).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Devices online through CoAP at most.
    pub max_devices: usize,
    /// How long a message id is remembered to answer its retransmissions from the cache
    /// (RFC 7252 EXCHANGE_LIFETIME).
    #[serde(with = "humantime_serde")]
    pub exchange_lifetime: Duration,
    /// Message ids remembered at most (the oldest are forgotten first).
    pub max_exchanges: usize,
    /// Block-wise uploads being put together at most, each within `max_body_bytes`.
    pub max_transfers: usize,
    /// Requests being handled at once at most; past it a request gets 5.03.
    pub max_inflight: usize,
}

impl Default for CoapSection {
    fn default() -> Self {
        Self {
            udp: None,
            max_body_bytes: 64 << 10,
            resource: "telemetry".into(),
            attributes_resource: "attributes".into(),
            max_commands_per_device: 16,
            offline_after: Duration::from_secs(10 * 60),
            max_devices: 10_000,
            exchange_lifetime: Duration::from_secs(247),
            max_exchanges: 20_000,
            max_transfers: 1_000,
            max_inflight: 1_024,
        }
    }
}

impl CoapSection {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(format!("coap.{m}")));
        if self.max_body_bytes < 64 {
            return bad("max_body_bytes must be at least 64");
        }
        if [
            self.max_commands_per_device,
            self.max_devices,
            self.max_exchanges,
            self.max_transfers,
            self.max_inflight,
        ]
        .contains(&0)
        {
            return bad("max_* settings must be at least 1");
        }
        for (k, name) in [
            ("resource", &self.resource),
            ("attributes_resource", &self.attributes_resource),
        ] {
            if twinlake_lake::model::table_name(&[name.as_str()]).is_err() {
                return Err(Error::Config(format!("coap.{k} {name:?} is not a table name")));
            }
        }
        Ok(())
    }
}
