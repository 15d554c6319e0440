//! `[device_http]`: the HTTP device API's section of the agent's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// `[device_http]`: devices POST telemetry and attributes and long-poll for commands
/// (ThingsBoard's device HTTP API, and a Bearer form), with their registry credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceHttpSection {
    /// The address to serve on; `"off"` by default.
    #[serde(with = "crate::values::addr_or_off")]
    pub addr: Option<SocketAddr>,
    /// Serve HTTPS with this certificate chain and key (PEM), both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// A request body larger than this is refused with 413, before it is read whole.
    pub max_body_bytes: usize,
    /// The resource (table) telemetry goes to when the request names none.
    pub resource: String,
    /// The resource (table) attributes are kept in, besides the twin's properties.
    pub attributes_resource: String,
    /// A command long-poll waits this long when the request says nothing (`?timeout=` ms).
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// ...and never longer than this.
    #[serde(with = "humantime_serde")]
    pub max_poll_timeout: Duration,
    /// Commands waiting per device at most; past it a write answers an error at once.
    pub max_commands_per_device: usize,
    /// A device not heard from for this long shows offline ("0s": never).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Devices online through this API at most.
    pub max_devices: usize,
    /// A request's headers (and a TLS handshake) must arrive within this.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections at most...
    pub max_connections: usize,
    /// ...and from one address.
    pub max_connections_per_ip: usize,
}

impl Default for DeviceHttpSection {
    fn default() -> Self {
        Self {
            addr: None,
            tls_cert: None,
            tls_key: None,
            max_body_bytes: 256 << 10,
            resource: "telemetry".into(),
            attributes_resource: "attributes".into(),
            poll_timeout: Duration::from_secs(30),
            max_poll_timeout: Duration::from_secs(120),
            max_commands_per_device: 16,
            offline_after: Duration::from_secs(10 * 60),
            max_devices: 10_000,
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_ip: 64,
        }
    }
}

impl DeviceHttpSection {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Config(format!("device_http.{m}")));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together");
        }
        if self.max_body_bytes < 64 {
            return bad("max_body_bytes must be at least 64");
        }
        if self.max_commands_per_device == 0 || self.max_devices == 0 {
            return bad("max_commands_per_device and max_devices must be at least 1");
        }
        for (k, name) in [
            ("resource", &self.resource),
            ("attributes_resource", &self.attributes_resource),
        ] {
            if twinlake_lake::model::table_name(&[name.as_str()]).is_err() {
                return Err(Error::Config(format!("device_http.{k} {name:?} is not a table name")));
            }
        }
        Ok(())
    }

    /// The HTTP server's caps.
    pub fn limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            header_timeout: self.header_timeout,
        }
    }
}
