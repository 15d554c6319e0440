//! JSON ⇄ PSON transcoding, following the reference mapping of device-protocol.md §1.2.
//!
//! | PSON | JSON |
//! |---|---|
//! | null, unset | `null` |
//! | true / false | `true` / `false` |
//! | integers | integers |
//! | float, double | numbers; NaN and ±∞ become `null` (JSON has no such numbers) |
//! | string, empty string | string |
//! | bytes, empty bytes | `{"$bytes": "<standard base64>"}` |
//! | object, array | object, array (key order kept) |
//!
//! **Bytes.** The reference transcoder writes bytes as `""`, which loses them. Twinlake
//! writes `{"$bytes": "<base64>"}` and reads that shape back as bytes, so a value survives
//! PSON → JSON → PSON. An object with the single key `$bytes` whose value is not valid
//! base64 stays an ordinary object.
//!
//! **Numbers from JSON** follow the device's rule (`Value::number`): integers stay integers,
//! `21.5` becomes a float, `123456.789` a double. Floats are written with their shortest
//! `f32` decimal form, so a device's `21.1` reads as `21.1`, not `21.100000381469727`.

use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Number, Value as Json};

use crate::pson::{Value, ValueRef};

/// The key of the object that carries bytes in JSON.
pub const BYTES_KEY: &str = "$bytes";

/// PSON → JSON.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Unset => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => float_json(*f),
        Value::Double(d) => Number::from_f64(*d).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => bytes_json(b),
        Value::Object(pairs) => {
            // serde_json's map dedupes keys; the first one wins, as on the device.
            let mut m = Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                if !m.contains_key(k) {
                    m.insert(k.clone(), to_json(v));
                }
            }
            Json::Object(m)
        }
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
    }
}

/// Borrowed PSON → JSON.
pub fn ref_to_json(v: ValueRef<'_>) -> Json {
    match v {
        ValueRef::Str(s) => Json::String(s.into()),
        ValueRef::Bytes(b) => bytes_json(b),
        ValueRef::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o.iter() {
                if !m.contains_key(k) {
                    m.insert(k.into(), ref_to_json(v));
                }
            }
            Json::Object(m)
        }
        ValueRef::Array(a) => Json::Array(a.iter().map(ref_to_json).collect()),
        scalar => to_json(&Value::from_ref(scalar)),
    }
}

fn float_json(f: f32) -> Json {
    if !f.is_finite() {
        return Json::Null;
    }
    // The shortest decimal that reads back as this f32, as an f64.
    let shortest: f64 = alloc::format!("{f}").parse().unwrap_or(f64::from(f));
    Number::from_f64(shortest).map_or(Json::Null, Json::Number)
}

fn bytes_json(b: &[u8]) -> Json {
    let mut m = Map::with_capacity(1);
    m.insert(BYTES_KEY.into(), Json::String(STANDARD.encode(b)));
    Json::Object(m)
}

/// JSON → PSON.
pub fn from_json(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::number(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::Str(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        Json::Object(m) => {
            if let Some(bytes) = as_bytes(m) {
                return Value::Bytes(bytes);
            }
            Value::Object(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    }
}

fn as_bytes(m: &Map<String, Json>) -> Option<Vec<u8>> {
    if m.len() != 1 {
        return None;
    }
    STANDARD.decode(m.get(BYTES_KEY)?.as_str()?).ok()
}

/// Parses JSON text into PSON.
pub fn from_json_str(s: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Json>(s).map(|j| from_json(&j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reference_mapping() {
        let v = Value::from_pairs([
            ("n", Value::Null),
            ("u", Value::Unset),
            ("t", true.into()),
            ("i", (-3).into()),
            ("big", Value::UInt(u64::MAX)),
            ("f", Value::Float(21.1)),
            ("d", Value::Double(123456.789)),
            ("nan", Value::Double(f64::NAN)),
            ("s", "hi".into()),
            ("e", "".into()),
            ("b", Value::Bytes(vec![1, 2, 3])),
            ("eb", Value::Bytes(vec![])),
            ("a", Value::Array(vec![0.into(), 1.into()])),
        ]);
        assert_eq!(
            to_json(&v),
            json!({"n": null, "u": null, "t": true, "i": -3, "big": u64::MAX, "f": 21.1,
                   "d": 123456.789, "nan": null, "s": "hi", "e": "", "b": {"$bytes": "AQID"},
                   "eb": {"$bytes": ""}, "a": [0, 1]})
        );
    }

    #[test]
    fn json_numbers_follow_the_device_rule() {
        let v = from_json(&json!({"a": 22.0, "b": 21.5, "c": 123456.789, "d": -5, "e": u64::MAX}));
        assert_eq!(v.get("a"), Some(&Value::Int(22)));
        assert_eq!(v.get("b"), Some(&Value::Float(21.5)));
        assert_eq!(v.get("c"), Some(&Value::Double(123456.789)));
        assert_eq!(v.get("d"), Some(&Value::Int(-5)));
        assert_eq!(v.get("e"), Some(&Value::UInt(u64::MAX)));
    }

    #[test]
    fn bytes_round_trip_and_bad_base64_stays_an_object() {
        let v = Value::Bytes(vec![0, 255, 7]);
        assert_eq!(from_json(&to_json(&v)), v);
        let not_bytes = from_json(&json!({"$bytes": "***"}));
        assert_eq!(not_bytes, Value::object().with("$bytes", "***"));
        let ref_json = ref_to_json(ValueRef::decode(&v.to_bytes()).expect("valid"));
        assert_eq!(ref_json, to_json(&v));
    }
}
