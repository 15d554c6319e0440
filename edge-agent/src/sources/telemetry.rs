//! JSON telemetry shapes more than one source reads: ThingsBoard's device telemetry
//! (`{"k":v}`, `{"ts":ms,"values":{…}}`, or arrays of them), over MQTT, HTTP or CoAP.

use std::time::{Duration, SystemTime};

use serde_json::Value as Json;
use twinlake_sdk::json::from_json;
use twinlake_sdk::pson::{Limits, Value};

use crate::event::SourceRow;

/// The latest time the lake holds (the end of year 9999), in ms.
pub const MAX_MS: u64 = (twinlake_lake::path::END_US as u64 - 1) / 1000;

/// `t` ms after the epoch.
pub fn ms(t: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(t)
}

/// A `ts` in ms; also accepts seconds (< 1e11) as some firmwares send them.
pub fn ts(j: &Json) -> Option<SystemTime> {
    let t = j
        .as_u64()
        .or_else(|| j.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    let t = if t < 100_000_000_000 { t * 1000 } else { t };
    (t <= MAX_MS).then(|| ms(t))
}

/// How deep `v` nests containers (a scalar is 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.iter().map(|(_, v)| depth(v)).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `v` can be stored: the WAL keeps it as PSON, which is read back only within
/// [`Limits::DEFAULT`]'s nesting. JSON and CBOR parsers allow deeper values; a row that
/// could not be read back would be confirmed and then lost, so it is refused here.
pub fn storable(v: Value) -> Result<Value, String> {
    let max = Limits::DEFAULT.max_depth;
    if depth(&v) > max {
        return Err(format!("the value nests deeper than {max} levels"));
    }
    Ok(v)
}

/// ThingsBoard telemetry forms, each value object handed to `emit` with its time (`now`
/// where the form has none).
pub fn thingsboard(j: &Json, now: SystemTime, emit: &mut dyn FnMut(SystemTime, Value)) -> Result<(), String> {
    match j {
        Json::Array(items) => {
            for i in items {
                thingsboard(i, now, emit)?;
            }
            Ok(())
        }
        Json::Object(o) => {
            if let (Some(t), Some(values)) = (o.get("ts"), o.get("values")) {
                let at = ts(t).ok_or("ts must be milliseconds since the epoch")?;
                if !values.is_object() {
                    return Err("values must be an object".into());
                }
                emit(at, storable(from_json(values))?);
            } else {
                emit(now, storable(from_json(j))?);
            }
            Ok(())
        }
        _ => Err("telemetry must be an object or an array of objects".into()),
    }
}

/// A plain-text value: an integer, a finite float, `true`/`false`, or else the text.
pub fn plain(text: &str) -> Value {
    let text = text.trim();
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    if let Ok(f) = text.parse::<f64>()
        && f.is_finite()
    {
        return Value::Double(f);
    }
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        t => Value::Str(t.to_owned()),
    }
}

/// Reads a ThingsBoard telemetry body: the values with their times, in order. Nothing
/// is returned for a body that is wrong anywhere, so a bad request stores nothing.
pub fn decode_thingsboard(bytes: &[u8], now: SystemTime) -> Result<Vec<(SystemTime, Value)>, String> {
    let j: Json = serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let mut out = Vec::new();
    thingsboard(&j, now, &mut |at, v| out.push((at, v)))?;
    Ok(out)
}

/// The rows a telemetry body (ThingsBoard's shapes) makes for `device` in `table`; an
/// error for a body or table wrong anywhere, so a bad request stores nothing.
pub fn telemetry_rows(device: &str, table: &str, body: &[u8], now: SystemTime) -> Result<Vec<SourceRow>, String> {
    twinlake_lake::model::table_name(&[table]).map_err(|e| format!("table {table:?}: {e}"))?;
    let values = decode_thingsboard(body, now)?;
    Ok(values
        .into_iter()
        .map(|(at, payload)| SourceRow {
            device: device.to_owned(),
            resource: table.to_owned(),
            at,
            payload,
        })
        .collect())
}

/// An attributes body: its row in `table` and each attribute as a property.
pub fn attribute_rows(
    device: &str,
    table: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(SourceRow, Vec<(String, twinlake_sdk::pson::Value)>), String> {
    let j: Json = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Json::Object(o) = &j else {
        return Err("attributes are a JSON object".into());
    };
    let props = o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect();
    let row = SourceRow {
        device: device.to_owned(),
        resource: table.to_owned(),
        at: now,
        payload: storable(from_json(&j))?,
    };
    Ok((row, props))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_three_documented_shapes() {
        let now = ms(5);
        let one = decode_thingsboard(br#"{"temperature":42,"humidity":73}"#, now).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, now);
        assert_eq!(one[0].1.get("temperature"), Some(&Value::Int(42)));
        let many = decode_thingsboard(br#"[{"a":1},{"b":2}]"#, now).unwrap();
        assert_eq!(many.len(), 2);
        let timed = decode_thingsboard(br#"{"ts":1451649600512,"values":{"k":"v"}}"#, now).unwrap();
        assert_eq!(timed[0].0, ms(1_451_649_600_512));
        let secs = decode_thingsboard(br#"{"ts":1451649600,"values":{"k":1}}"#, now).unwrap();
        assert_eq!(secs[0].0, ms(1_451_649_600_000), "seconds, as some firmwares send");
    }

    #[test]
    fn a_body_wrong_anywhere_gives_nothing() {
        let now = ms(5);
        for bad in [
            &b"{"[..],
            b"42",
            b"\"x\"",
            br#"[{"a":1},3]"#,
            br#"[{"a":1},{"ts":-1,"values":{}}]"#,
            br#"{"ts":1,"values":7}"#,
            br#"{"ts":99999999999999999999,"values":{}}"#,
        ] {
            assert!(
                decode_thingsboard(bad, now).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by the `coap_message` fuzz target: a value nested deeper than PSON reads back
    /// was confirmed, then skipped as undecodable when the WAL was read.
    #[test]
    fn values_deeper_than_pson_reads_are_refused() {
        let nest = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let ok = decode_thingsboard(nest(31).as_bytes(), ms(5)).unwrap();
        let bytes = ok[0].1.to_bytes();
        assert!(
            twinlake_sdk::pson::ValueRef::decode(&bytes).is_ok(),
            "32 levels read back"
        );
        assert!(
            decode_thingsboard(nest(32).as_bytes(), ms(5))
                .unwrap_err()
                .contains("deeper")
        );
        let deep = format!("{{\"x\":{}}}", nest(40));
        assert!(attribute_rows("d", "attributes", deep.as_bytes(), ms(5)).is_err());
    }

    proptest::proptest! {
        /// Any bytes: an answer, never a panic.
        #[test]
        fn any_body_is_answered(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_thingsboard(&body, ms(5));
        }

        /// Entries written in ThingsBoard's shapes come back in order, with their times
        /// (those without one at `now`) and values.
        #[test]
        fn written_entries_come_back(entries in proptest::collection::vec(
            (proptest::option::of(0u64..=MAX_MS), proptest::collection::btree_map("[a-m]{1,6}", proptest::num::i64::ANY, 1..4)),
            1..8,
        )) {
            let json: Vec<Json> = entries
                .iter()
                .map(|(t, values)| match t {
                    Some(t) => serde_json::json!({"ts": t, "values": values}),
                    None => serde_json::json!(values),
                })
                .collect();
            let now = ms(5);
            let got = decode_thingsboard(serde_json::to_string(&json).unwrap().as_bytes(), now).unwrap();
            proptest::prop_assert_eq!(got.len(), entries.len());
            for ((at, v), (t, values)) in got.iter().zip(&entries) {
                // A ts under 1e11 is read as seconds.
                let want = t.map_or(now, |t| if t < 100_000_000_000 { ms(t * 1000) } else { ms(t) });
                proptest::prop_assert_eq!(*at, want);
                for (k, x) in values {
                    proptest::prop_assert_eq!(v.get(k.as_str()), Some(&Value::Int(*x)));
                }
            }
        }
    }
}
