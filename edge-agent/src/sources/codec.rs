//! Payload codecs for LoRaWAN application payloads: Cayenne LPP and a declarative byte
//! layout, configured per device profile. Each turns bytes into named fields.

use serde::Deserialize;
use twinlake_sdk::pson::Value;

/// How a profile's payload bytes become fields.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "codec", deny_unknown_fields)]
pub enum Codec {
    /// Cayenne LPP: `channel, type, value…` repeated; fields are `<type>_<channel>`.
    #[default]
    Cayenne,
    /// Fixed fields at byte offsets.
    Layout { fields: Vec<LayoutField> },
    /// The bytes as they are, in a `payload` column.
    Raw,
}

/// One field of a [`Codec::Layout`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutField {
    pub name: String,
    /// Byte offset in the payload.
    pub offset: usize,
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Multiplies the number read (0.1 for tenths); an integer field becomes a float.
    #[serde(default)]
    pub scale: Option<f64>,
    /// A bit of a `u8` field (0..=7), read as a boolean.
    #[serde(default)]
    pub bit: Option<u8>,
}

/// The encodings a [`LayoutField`] can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    U8,
    I8,
    U16be,
    U16le,
    I16be,
    I16le,
    U32be,
    U32le,
    I32be,
    I32le,
    F32be,
    F32le,
}

impl FieldKind {
    fn width(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::U16be | Self::U16le | Self::I16be | Self::I16le => 2,
            _ => 4,
        }
    }
}

impl Codec {
    /// Checks a configured codec; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Self::Layout { fields } = self {
            if fields.is_empty() {
                return Err("a layout needs at least one field".into());
            }
            for f in fields {
                if f.bit.is_some_and(|b| b > 7) || f.bit.is_some() && f.kind != FieldKind::U8 {
                    return Err(format!("field {:?}: bit needs type u8 and 0..=7", f.name));
                }
            }
        }
        Ok(())
    }

    /// Decodes `bytes` into an object of fields.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        match self {
            Self::Cayenne => cayenne(bytes),
            Self::Layout { fields } => layout(fields, bytes),
            Self::Raw => Ok(Value::object().with("payload", Value::Bytes(bytes.to_vec()))),
        }
    }
}

fn layout(fields: &[LayoutField], bytes: &[u8]) -> Result<Value, String> {
    let mut out = Value::object();
    for f in fields {
        let raw = bytes.get(f.offset..f.offset + f.kind.width()).ok_or_else(|| {
            format!(
                "field {:?} needs {} bytes at {}; the payload has {}",
                f.name,
                f.kind.width(),
                f.offset,
                bytes.len()
            )
        })?;
        let arr2 = |r: &[u8]| <[u8; 2]>::try_from(r).unwrap_or_default();
        let arr4 = |r: &[u8]| <[u8; 4]>::try_from(r).unwrap_or_default();
        let first = raw.first().copied().unwrap_or_default();
        let n: f64 = match f.kind {
            FieldKind::U8 => {
                if let Some(bit) = f.bit {
                    out = out.with(f.name.as_str(), Value::Bool(first >> bit & 1 == 1));
                    continue;
                }
                f64::from(first)
            }
            FieldKind::I8 => f64::from(first as i8),
            FieldKind::U16be => f64::from(u16::from_be_bytes(arr2(raw))),
            FieldKind::U16le => f64::from(u16::from_le_bytes(arr2(raw))),
            FieldKind::I16be => f64::from(i16::from_be_bytes(arr2(raw))),
            FieldKind::I16le => f64::from(i16::from_le_bytes(arr2(raw))),
            FieldKind::U32be => f64::from(u32::from_be_bytes(arr4(raw))),
            FieldKind::U32le => f64::from(u32::from_le_bytes(arr4(raw))),
            FieldKind::I32be => f64::from(i32::from_be_bytes(arr4(raw))),
            FieldKind::I32le => f64::from(i32::from_le_bytes(arr4(raw))),
            FieldKind::F32be => f64::from(f32::from_be_bytes(arr4(raw))),
            FieldKind::F32le => f64::from(f32::from_le_bytes(arr4(raw))),
        };
        let is_float = matches!(f.kind, FieldKind::F32be | FieldKind::F32le);
        let v = match f.scale {
            Some(s) => Value::Double(round(n * s)),
            None if is_float => Value::Double(n),
            None => Value::Int(n as i64),
        };
        out = out.with(f.name.as_str(), v);
    }
    Ok(out)
}

/// Scaled values print as their decimal (27.2, not 27.200000000000003).
fn round(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// Cayenne LPP (myDevices): the types LoRaWAN devices commonly send.
fn cayenne(mut b: &[u8]) -> Result<Value, String> {
    let mut out = Value::object();
    if b.is_empty() {
        return Err("an empty Cayenne LPP payload".into());
    }
    while let [channel, kind, rest @ ..] = b {
        let (name, width) = match kind {
            0 => ("digital_input", 1),
            1 => ("digital_output", 1),
            2 => ("analog_input", 2),
            3 => ("analog_output", 2),
            100 => ("generic", 4),
            101 => ("illuminance", 2),
            102 => ("presence", 1),
            103 => ("temperature", 2),
            104 => ("humidity", 1),
            113 => ("accelerometer", 6),
            115 => ("barometer", 2),
            116 => ("voltage", 2),
            117 => ("current", 2),
            118 => ("frequency", 4),
            120 => ("percentage", 1),
            121 => ("altitude", 2),
            125 => ("concentration", 2),
            128 => ("power", 2),
            130 => ("distance", 4),
            131 => ("energy", 4),
            132 => ("direction", 2),
            133 => ("unixtime", 4),
            134 => ("gyrometer", 6),
            136 => ("gps", 9),
            142 => ("switch", 1),
            other => return Err(format!("Cayenne LPP type {other} on channel {channel} is not known")),
        };
        let v = rest
            .get(..width)
            .ok_or_else(|| format!("Cayenne LPP {name} on channel {channel} is cut short"))?;
        let be = |i: usize, n: usize, signed: bool| -> f64 {
            let raw = v.get(i..i + n).unwrap_or_default();
            let mut x: i64 = 0;
            for byte in raw {
                x = x << 8 | i64::from(*byte);
            }
            if signed && n < 8 && x >> (8 * n - 1) & 1 == 1 {
                x -= 1 << (8 * n);
            }
            x as f64
        };
        let field = format!("{name}_{channel}");
        let value = match kind {
            0 | 1 | 102 | 142 => Value::Int(be(0, 1, false) as i64),
            2 | 3 => Value::Double(round(be(0, 2, true) / 100.0)),
            101 | 132 => Value::Int(be(0, 2, false) as i64),
            103 => Value::Double(round(be(0, 2, true) / 10.0)),
            104 => Value::Double(be(0, 1, false) / 2.0),
            115 => Value::Double(round(be(0, 2, false) / 10.0)),
            116 => Value::Double(round(be(0, 2, false) / 100.0)),
            117 => Value::Double(round(be(0, 2, false) / 1000.0)),
            120 => Value::Int(be(0, 1, false) as i64),
            121 => Value::Int(be(0, 2, true) as i64),
            100 | 118 | 130 | 131 | 133 => Value::Int(be(0, 4, false) as i64),
            125 | 128 => Value::Int(be(0, 2, false) as i64),
            113 => Value::object()
                .with("x", Value::Double(round(be(0, 2, true) / 1000.0)))
                .with("y", Value::Double(round(be(2, 2, true) / 1000.0)))
                .with("z", Value::Double(round(be(4, 2, true) / 1000.0))),
            134 => Value::object()
                .with("x", Value::Double(round(be(0, 2, true) / 100.0)))
                .with("y", Value::Double(round(be(2, 2, true) / 100.0)))
                .with("z", Value::Double(round(be(4, 2, true) / 100.0))),
            136 => Value::object()
                .with("latitude", Value::Double(round(be(0, 3, true) / 10_000.0)))
                .with("longitude", Value::Double(round(be(3, 3, true) / 10_000.0)))
                .with("altitude", Value::Double(round(be(6, 3, true) / 100.0))),
            _ => Value::Null,
        };
        out = out.with(field.as_str(), value);
        b = rest.get(width..).unwrap_or_default();
    }
    if !b.is_empty() {
        return Err("a Cayenne LPP payload ends in the middle of a value".into());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cayenne_lpp() {
        // The spec's V2 plaintext: channel 3 temperature 27.2 °C.
        let v = Codec::Cayenne.decode(&[0x03, 0x67, 0x01, 0x10]).unwrap();
        assert_eq!(v.get("temperature_3"), Some(&Value::Double(27.2)));
        // Negative temperature, humidity, GPS (the LPP reference example).
        let v = Codec::Cayenne
            .decode(&[
                0x01, 0x67, 0xff, 0xd7, 0x02, 0x68, 0x61, 0x01, 0x88, 0x06, 0x76, 0x5f, 0xf2, 0x96, 0x0a, 0x00, 0x03,
                0xe8,
            ])
            .unwrap();
        assert_eq!(v.get("temperature_1"), Some(&Value::Double(-4.1)));
        assert_eq!(v.get("humidity_2"), Some(&Value::Double(48.5)));
        let gps = v.get("gps_1").unwrap();
        assert_eq!(gps.get("latitude"), Some(&Value::Double(42.3519)));
        assert_eq!(gps.get("longitude"), Some(&Value::Double(-87.9094)));
        assert_eq!(gps.get("altitude"), Some(&Value::Double(10.0)));
        for bad in [&[][..], &[1, 0x67, 1], &[1, 0x99, 0, 0], &[1]] {
            assert!(Codec::Cayenne.decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layouts() {
        let codec: Codec = toml::from_str(
            r#"
            codec = "layout"
            fields = [
              { name = "temp", offset = 0, type = "i16be", scale = 0.1 },
              { name = "battery", offset = 2, type = "u8" },
              { name = "door", offset = 3, type = "u8", bit = 0 },
              { name = "count", offset = 4, type = "u32le" },
            ]"#,
        )
        .unwrap();
        codec.validate().unwrap();
        let v = codec.decode(&[0xff, 0x38, 90, 0b01, 1, 0, 0, 0]).unwrap();
        assert_eq!(v.get("temp"), Some(&Value::Double(-20.0)));
        assert_eq!(v.get("battery"), Some(&Value::Int(90)));
        assert_eq!(v.get("door"), Some(&Value::Bool(true)));
        assert_eq!(v.get("count"), Some(&Value::Int(1)));
        assert!(codec.decode(&[0, 1, 2]).unwrap_err().contains("battery") || codec.decode(&[0, 1, 2]).is_err());
        assert!(codec.decode(&[0, 1, 2, 3]).unwrap_err().contains("count"));
    }
}
