//! Value types that configuration sections share, whatever module owns the section.

use serde::Deserialize;

/// An address, or `"off"`.
pub mod addr_or_off {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let raw = String::deserialize(d)?;
        if raw == "off" {
            return Ok(None);
        }
        raw.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{raw:?}: {e} (an address such as 0.0.0.0:25200, or \"off\")"))
        })
    }
}

/// A secret in a configuration (a password): read as text, never shown by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}
