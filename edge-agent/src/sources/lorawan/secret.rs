//! LoRaWAN keys: [`Secret`] never reaches a log line (it prints as `***`) and is read from
//! and written as hex.

use std::fmt;

use lorawan::keys::AES128;
use serde::{Deserialize, Deserializer, Serialize};

use crate::sources::{hex, hex_array};

/// A 128-bit key. Its `Debug` hides it; it is read from hex.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Secret(pub [u8; 16]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<Secret> for String {
    fn from(s: Secret) -> String {
        hex(&s.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex_array::<16>(&s)
            .map(Secret)
            .ok_or_else(|| serde::de::Error::custom("a key is 32 hex digits"))
    }
}

impl Secret {
    pub(super) fn aes(&self) -> AES128 {
        AES128(self.0)
    }
}
